//! Image manifests and indexes, and reading them with the semantic checks the JSON schemas miss.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::{self, MAX_MANIFEST_SIZE};
use crate::media_types::{self as mt};
use crate::{Descriptor, Error};

/// An image manifest (OCI, or Docker schema 2 when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI, or a Docker manifest list when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifests (or nested indexes).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// An empty OCI index.
    pub fn new() -> Self {
        ImageIndex {
            schema_version: 2,
            media_type: Some(mt::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
        }
    }
}

impl ImageIndex {
    /// The entry for `want` among this index's manifests: the first whose platform matches
    /// (entries without a platform never match). The error lists the platforms available.
    pub fn select_platform(&self, want: &crate::Platform) -> Result<&Descriptor, String> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
            .ok_or_else(|| {
                let available: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                    .collect();
                format!(
                    "no image for {want} (available: {})",
                    if available.is_empty() {
                        "none with a platform".to_owned()
                    } else {
                        available.join(", ")
                    }
                )
            })
    }
}

impl Default for ImageIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// A manifest or an index, as read from a blob whose kind may not be known in advance.
// Documents are few and short-lived; boxing would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An image manifest.
    Manifest(ImageManifest),
    /// An index or manifest list.
    Index(ImageIndex),
}

impl Document {
    /// The effective media type of the document.
    pub fn media_type(&self) -> &str {
        match self {
            Document::Manifest(m) => m.media_type.as_deref().unwrap_or(mt::OCI_MANIFEST),
            Document::Index(i) => i.media_type.as_deref().unwrap_or(mt::OCI_INDEX),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
}

fn kind_of(media_type: &str, what: &str) -> Result<Kind, Error> {
    if mt::is_manifest(media_type) {
        Ok(Kind::Manifest)
    } else if mt::is_index(media_type) {
        Ok(Kind::Index)
    } else if media_type == mt::DOCKER_MANIFEST_V1 || media_type == mt::DOCKER_MANIFEST_V1_SIGNED {
        Err(Error::invalid(
            what,
            "Docker schema 1 manifests are not supported; re-push the image with a current tool",
        ))
    } else {
        Err(Error::invalid(
            what,
            format!("media type {media_type:?} is neither an image manifest nor an index"),
        ))
    }
}

/// Parses a manifest or index.
///
/// `declared` is the media type the parent descriptor (or HTTP Content-Type) claimed. The checks:
/// size cap; strict JSON; `schemaVersion` 2; the document's `mediaType`, if any, equal to the
/// declared one; a manifest must not carry `manifests`, an index must not carry `layers` or
/// `config` (CVE-2021-41190); every descriptor well formed.
pub fn parse_document(bytes: &[u8], declared: Option<&str>, what: &str) -> Result<Document, Error> {
    let value: serde_json::Value = json::parse_strict(bytes, what, MAX_MANIFEST_SIZE)?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::invalid(what, "not a JSON object"))?;

    match obj.get("schemaVersion").and_then(serde_json::Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(Error::invalid(
                what,
                "Docker schema 1 manifests are not supported; re-push the image with a current tool",
            ));
        }
        _ => return Err(Error::invalid(what, "schemaVersion must be 2")),
    }

    let own = match obj.get("mediaType") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Error::invalid(what, "mediaType must be a string")),
    };
    if let (Some(own), Some(declared)) = (own, declared)
        && own != declared
    {
        return Err(Error::invalid(
            what,
            format!("its mediaType {own:?} differs from the declared {declared:?}"),
        ));
    }

    let has = |k: &str| obj.contains_key(k);
    let kind = match own.or(declared) {
        Some(m) => kind_of(m, what)?,
        None if has("manifests") && !has("layers") && !has("config") => Kind::Index,
        None if has("config") && !has("manifests") => Kind::Manifest,
        None => {
            return Err(Error::invalid(
                what,
                "cannot tell whether this is a manifest or an index (no mediaType)",
            ));
        }
    };

    let to_err = |source| Error::Json {
        what: what.to_owned(),
        source,
    };
    match kind {
        Kind::Manifest => {
            if has("manifests") {
                return Err(Error::invalid(
                    what,
                    "an image manifest must not contain `manifests`",
                ));
            }
            let m: ImageManifest = serde_json::from_value(value).map_err(to_err)?;
            m.config.validate(&format!("{what}: config descriptor"))?;
            for (i, l) in m.layers.iter().enumerate() {
                l.validate(&format!("{what}: layer {i}"))?;
            }
            Ok(Document::Manifest(m))
        }
        Kind::Index => {
            if has("layers") || has("config") {
                return Err(Error::invalid(
                    what,
                    "an image index must not contain `layers` or `config`",
                ));
            }
            let i: ImageIndex = serde_json::from_value(value).map_err(to_err)?;
            for (n, d) in i.manifests.iter().enumerate() {
                d.validate(&format!("{what}: manifest {n}"))?;
            }
            Ok(Document::Index(i))
        }
    }
}

/// Parses a document that must be an image manifest.
pub fn parse_manifest(
    bytes: &[u8],
    declared: Option<&str>,
    what: &str,
) -> Result<ImageManifest, Error> {
    match parse_document(bytes, declared, what)? {
        Document::Manifest(m) => Ok(m),
        Document::Index(_) => Err(Error::invalid(
            what,
            "expected an image manifest, found an index",
        )),
    }
}

/// Parses a document that must be an index (used for a layout's `index.json`).
pub fn parse_index(bytes: &[u8], declared: Option<&str>, what: &str) -> Result<ImageIndex, Error> {
    match parse_document(bytes, declared, what)? {
        Document::Index(i) => Ok(i),
        Document::Manifest(_) => Err(Error::invalid(what, "expected an index, found a manifest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn manifest_json(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{D}","size":2}},"layers":[]{extra}}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG
        )
    }

    #[test]
    fn parses_manifest_and_index() {
        let m = parse_manifest(manifest_json("").as_bytes(), Some(mt::OCI_MANIFEST), "m").unwrap();
        assert_eq!(m.config.size, 2);
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            mt::OCI_MANIFEST
        );
        let i = parse_index(idx.as_bytes(), None, "index.json").unwrap();
        assert_eq!(i.manifests[0].platform.as_ref().unwrap().os, "linux");
    }

    #[test]
    fn selects_a_platform_or_lists_what_there_is() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{m}","digest":"{D}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{m}","digest":"{D}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            m = mt::OCI_MANIFEST
        );
        let i = parse_index(idx.as_bytes(), None, "i").unwrap();
        let want = crate::Platform::parse("linux/arm64").unwrap();
        assert_eq!(i.select_platform(&want).unwrap().size, 3);
        let e = i
            .select_platform(&crate::Platform::parse("linux/s390x").unwrap())
            .unwrap_err();
        assert!(
            e.contains("linux/amd64") && e.contains("linux/arm64/v8"),
            "{e}"
        );
    }

    // T18: type confusion between manifests and indexes.
    #[test]
    fn rejects_confused_documents() {
        let with_manifests = manifest_json(r#","manifests":[]"#);
        assert!(parse_document(with_manifests.as_bytes(), None, "m").is_err());
        let idx_with_layers = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[],"layers":[]}}"#,
            mt::OCI_INDEX
        );
        assert!(parse_document(idx_with_layers.as_bytes(), None, "i").is_err());
        // The declared type disagrees with the document.
        assert!(parse_document(manifest_json("").as_bytes(), Some(mt::OCI_INDEX), "m").is_err());
        // Schema 1 is named as such.
        let v1 = r#"{"schemaVersion":1,"name":"x"}"#;
        let e = parse_document(v1.as_bytes(), None, "m").unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Arbitrary bytes and mutated manifests are parsed or refused, never a panic.
        #[test]
        fn documents_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_document(&bytes, None, "fuzz");
            let _ = crate::ImageConfig::parse(&bytes, "fuzz");
        }

        #[test]
        fn mutated_manifests_never_panic(i in 0usize..400, b in any::<u8>()) {
            let d = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
            let m = format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":-0}}]}}"#);
            let mut bytes = m.into_bytes();
            let n = bytes.len();
            bytes[i % n] = b;
            let _ = parse_document(&bytes, Some(crate::media_types::OCI_MANIFEST), "fuzz");
        }
    }
}
