//! Content descriptors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Digest, Error, Platform};

/// Annotation keys gantry reads or writes.
pub mod annotations {
    /// The tag of a manifest inside an OCI layout's `index.json`.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// A human-readable title; for file artifacts, the file name.
    pub const TITLE: &str = "org.opencontainers.image.title";
    /// The creation time of an image.
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// The source revision an image was built from.
    pub const REVISION: &str = "org.opencontainers.image.revision";
    /// Digest of the base image's manifest.
    pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
    /// Reference of the base image.
    pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
}

/// The largest blob size gantry accepts in a descriptor (the JSON schema's int64 bound).
pub const MAX_DESCRIPTOR_SIZE: u64 = i64::MAX as u64;

/// An OCI content descriptor. Maps are ordered so that serialisation is stable even before
/// canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The size of the referenced content in bytes.
    pub size: u64,
    /// Alternative download locations (never fetched by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest referenced from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type of a referenced artifact manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Embedded content (base64); kept as read, never trusted over the blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor with no annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            data: None,
        }
    }

    /// The descriptor of `bytes` with `media_type`.
    pub fn of_bytes(media_type: impl Into<String>, bytes: &[u8]) -> Self {
        Self::new(media_type, Digest::sha256(bytes), bytes.len() as u64)
    }

    /// Checks the rules a descriptor must satisfy on its own (size bounds, media type syntax).
    pub fn validate(&self, what: &str) -> Result<(), Error> {
        if self.size > MAX_DESCRIPTOR_SIZE {
            return Err(Error::invalid(
                what,
                format!("descriptor size {} is out of range", self.size),
            ));
        }
        validate_media_type(&self.media_type).map_err(|reason| Error::invalid(what, reason))?;
        if let Some(a) = &self.artifact_type {
            validate_media_type(a).map_err(|reason| Error::invalid(what, reason))?;
        }
        Ok(())
    }
}

/// Checks RFC 6838 media type syntax: `type/subtype` with restricted characters.
pub fn validate_media_type(mt: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c);
    let (ty, sub) = mt
        .split_once('/')
        .ok_or_else(|| format!("media type {mt:?} is not of the form type/subtype"))?;
    let good = |s: &str| !s.is_empty() && s.len() <= 127 && s.chars().all(ok_char);
    if !good(ty) || !good(sub) {
        return Err(format!(
            "media type {mt:?} has invalid characters or length"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_omits_empty_fields() {
        let d = Descriptor::of_bytes("application/vnd.oci.empty.v1+json", b"{}");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}"#
        );
        let back: Descriptor = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }

    // T17: negative sizes do not parse, absurd ones do not validate.
    #[test]
    fn rejects_bad_sizes() {
        let neg = r#"{"mediaType":"a/b","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":-1}"#;
        assert!(serde_json::from_str::<Descriptor>(neg).is_err());
        let mut d = Descriptor::of_bytes("a/b", b"{}");
        d.size = u64::MAX;
        assert!(d.validate("x").is_err());
    }

    #[test]
    fn media_type_syntax() {
        assert!(validate_media_type("application/vnd.oci.image.layer.v1.tar+gzip").is_ok());
        assert!(validate_media_type("nope").is_err());
        assert!(validate_media_type("a/b c").is_err());
        assert!(validate_media_type("/b").is_err());
    }
}
