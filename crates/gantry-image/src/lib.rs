//! gantry's lazy image model.
//!
//! An [`Image`] is a config plus a list of [`LayerRef`]s: each layer's descriptor, diff_id and
//! the place its blob can be read from ([`BlobSource`]). It starts from scratch or from a
//! [`SourceImage`] (an image a transport opened, or one built before): building on a base
//! reads only the base's manifest and config; layer bytes move only when a sink (a layout, an
//! archive, a registry push; all in gantry-transport) needs them, and bytes from outside the
//! store are verified as they move.

mod edits;
mod error;
mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_layer::LayerInfo;
use gantry_oci::media_types as mt;
use gantry_oci::{
    BlobRead, Descriptor, Digest, History, ImageConfig, ImageManifest, Platform, annotations, json,
};
use serde::Serialize;

pub use edits::{ConfigEdits, normalize_port, parse_env, validate_label_key};
pub use error::Error;
pub use source::SourceImage;

/// Where a blob can be read: the one answer for every image, built or opened from any
/// transport. Pushing mounts `Registry` blobs and uploads the others; sinks link or copy
/// `Store` blobs, read `Local` ones (verified) and fetch `Registry` ones (verified, into the
/// store).
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// gantry's blob store (already verified when it was written).
    Store,
    /// A layout directory, an oci-archive or a docker-archive (verified when read).
    Local(Arc<dyn BlobRead>),
    /// A repository of a registry (fetched, verified, only when a sink needs the bytes). Also
    /// where a push to the same registry can mount it from.
    Registry {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
    },
}

impl PartialEq for BlobSource {
    /// `Local` sources are equal when they are the same opened place.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BlobSource::Store, BlobSource::Store) => true,
            (BlobSource::Local(a), BlobSource::Local(b)) => {
                std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
            }
            (
                BlobSource::Registry {
                    registry: r1,
                    repository: p1,
                },
                BlobSource::Registry {
                    registry: r2,
                    repository: p2,
                },
            ) => r1 == r2 && p1 == p2,
            _ => false,
        }
    }
}

impl Eq for BlobSource {}

/// A layer of an image: what the manifest and config say about it, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// The manifest's descriptor.
    pub descriptor: Descriptor,
    /// The uncompressed digest (`None` for artifact blobs).
    pub diff_id: Option<Digest>,
    /// Where the blob is.
    pub source: BlobSource,
}

/// An image being assembled.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config (base's, then edited).
    pub config: ImageConfig,
    /// Layers, base first.
    pub layers: Vec<LayerRef>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Set for OCI artifacts: the manifest gets this `artifactType` and an empty config.
    pub artifact_type: Option<String>,
    base_digest: Option<Digest>,
    base_name: Option<String>,
}

impl Image {
    /// An empty image for `platform`.
    pub fn scratch(platform: &Platform) -> Self {
        let mut config = ImageConfig::new(&platform.os, &platform.architecture);
        config.variant.clone_from(&platform.variant);
        Image {
            config,
            layers: Vec::new(),
            annotations: BTreeMap::new(),
            artifact_type: None,
            base_digest: None,
            base_name: None,
        }
    }

    /// An image opened from a transport, to build on or run: its config and layers (each
    /// with where its blob is), with the base annotation pointing at it. Checks that it is a
    /// runnable image: an image config (read strictly), tar layers, one diff_id each; and,
    /// given a `platform`, that the image is of it.
    pub fn from_source(src: &SourceImage, platform: Option<&Platform>) -> Result<Self, Error> {
        let name = &src.name;
        let bad = |reason: String| Error::BadBase {
            base: name.clone(),
            reason,
        };
        let m = &src.manifest;
        if !mt::is_image_config(&m.config.media_type) {
            return Err(bad(format!(
                "config media type {:?} is not an image config (is it an artifact?)",
                m.config.media_type
            )));
        }
        let config = ImageConfig::parse(&src.config_bytes, &format!("{name}: config"))?;
        if config.rootfs.diff_ids.len() != src.layers.len() {
            return Err(bad(format!(
                "its config lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                src.layers.len()
            )));
        }
        let mut layers = Vec::with_capacity(src.layers.len());
        for ((desc, source), diff_id) in src.layers.iter().zip(&config.rootfs.diff_ids) {
            if mt::layer_compression(&desc.media_type).is_none() {
                return Err(bad(format!(
                    "layer {} has media type {:?}, which is not a tar layer",
                    desc.digest, desc.media_type
                )));
            }
            layers.push(LayerRef {
                descriptor: desc.clone(),
                diff_id: Some(diff_id.clone()),
                source: source.clone(),
            });
        }
        let image = Image {
            config,
            layers,
            annotations: BTreeMap::new(),
            artifact_type: None,
            base_digest: Some(src.digest().clone()),
            base_name: None,
        };
        if let Some(wanted) = platform {
            let actual = image.platform();
            if !wanted.matches(&actual) {
                return Err(bad(format!("it is {actual}, not {wanted}")));
            }
        }
        Ok(image)
    }

    /// Records the base's name (a registry reference) in the `base.name` annotation of images
    /// built on this one.
    pub fn set_base_name(&mut self, name: &str) {
        self.base_name = Some(name.to_owned());
    }

    /// An image built on `parent`, whose manifest has `manifest_digest`: the parent's config
    /// and layers, with the base annotation pointing at the parent; manifest annotations and
    /// the artifact type are not inherited.
    pub fn on_top_of(parent: &Image, manifest_digest: Digest) -> Self {
        Image {
            config: parent.config.clone(),
            layers: parent.layers.clone(),
            annotations: BTreeMap::new(),
            artifact_type: None,
            base_digest: Some(manifest_digest),
            base_name: None,
        }
    }

    /// Appends a layer and its history line. `created` (RFC 3339) fills the history time when
    /// the layer info has none. `what` names the layer in errors.
    pub fn push_layer(
        &mut self,
        info: &LayerInfo,
        source: BlobSource,
        created: &str,
        what: &str,
    ) -> Result<(), Error> {
        let bad = |reason: String| Error::BadLayer {
            layer: what.to_owned(),
            reason,
        };
        let is_tar = mt::layer_compression(&info.media_type).is_some();
        if self.artifact_type.is_none() {
            if !is_tar {
                return Err(bad(format!(
                    "media type {:?} is not a tar layer; to package files as an OCI artifact, \
                     set an artifact type",
                    info.media_type
                )));
            }
            let diff_id = info
                .diff_id
                .clone()
                .ok_or_else(|| bad("a tar layer needs a diff_id".to_owned()))?;
            self.config.rootfs.diff_ids.push(diff_id);
            let mut h = info.history.clone().unwrap_or_else(|| History {
                created_by: Some("gantry image".to_owned()),
                ..History::default()
            });
            if h.created.is_none() {
                h.created = Some(created.to_owned());
            }
            self.config.history.push(h);
        }
        self.layers.push(LayerRef {
            descriptor: info.descriptor(),
            diff_id: info.diff_id.clone(),
            source,
        });
        Ok(())
    }

    /// The platform the config describes.
    pub fn platform(&self) -> Platform {
        Platform::new(
            &self.config.os,
            &self.config.architecture,
            self.config.variant.as_deref(),
        )
    }

    /// Serialises config and manifest (canonical JSON). `created` (RFC 3339) is the image's
    /// creation time.
    pub fn build(&self, created: &str) -> Result<Built, Error> {
        let layers: Vec<LayerRef> = self
            .layers
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.descriptor.media_type = oci_layer_media_type(&l.descriptor.media_type);
                l
            })
            .collect();
        let (config_desc, config_bytes) = if let Some(_at) = &self.artifact_type {
            let bytes = b"{}".to_vec();
            (Descriptor::of_bytes(mt::OCI_EMPTY, &bytes), bytes)
        } else {
            let mut config = self.config.clone();
            config.created = Some(created.to_owned());
            let bytes = json::to_canonical_vec(&config);
            (Descriptor::of_bytes(mt::OCI_CONFIG, &bytes), bytes)
        };
        let mut annotations = self.annotations.clone();
        if let Some(d) = &self.base_digest {
            annotations.insert(annotations::BASE_DIGEST.to_owned(), d.to_string());
        }
        if let Some(n) = &self.base_name {
            annotations.insert(annotations::BASE_NAME.to_owned(), n.clone());
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.to_owned()),
            artifact_type: self.artifact_type.clone(),
            config: config_desc.clone(),
            layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
            subject: None,
            annotations,
        };
        let manifest_bytes = json::to_canonical_vec(&manifest);
        let mut manifest_desc = Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest_bytes);
        manifest_desc.artifact_type.clone_from(&self.artifact_type);
        Ok(Built {
            manifest: manifest_desc,
            manifest_bytes,
            config: config_desc,
            config_bytes,
            layers,
            platform: self.platform(),
        })
    }
}

/// Docker layer media types map to their OCI equivalents (same bytes) in OCI manifests.
fn oci_layer_media_type(m: &str) -> String {
    match m {
        mt::DOCKER_LAYER_GZIP => mt::OCI_LAYER_GZIP,
        mt::DOCKER_LAYER_TAR => mt::OCI_LAYER_TAR,
        other => other,
    }
    .to_owned()
}

/// A serialised image: manifest and config bytes plus the layers to copy.
#[derive(Debug, Clone)]
pub struct Built {
    /// The manifest's descriptor.
    pub manifest: Descriptor,
    /// The manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// The config's descriptor.
    pub config: Descriptor,
    /// The config bytes.
    pub config_bytes: Vec<u8>,
    /// The layers, with OCI media types.
    pub layers: Vec<LayerRef>,
    /// The image's platform.
    pub platform: Platform,
}

impl Built {
    /// The metadata document build systems read.
    pub fn metadata(&self, tag: Option<&str>) -> ImageMetadata {
        ImageMetadata {
            manifest: strip(&self.manifest),
            config: strip(&self.config),
            layers: self
                .layers
                .iter()
                .map(|l| LayerSummary {
                    media_type: l.descriptor.media_type.clone(),
                    digest: l.descriptor.digest.clone(),
                    size: l.descriptor.size,
                    diff_id: l.diff_id.clone(),
                })
                .collect(),
            platform: self.platform.to_string(),
            tag: tag.map(str::to_owned),
        }
    }
}

fn strip(d: &Descriptor) -> Descriptor {
    Descriptor::new(d.media_type.clone(), d.digest.clone(), d.size)
}

/// The image descriptor JSON of `gantry image --metadata`: digests of everything, no paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMetadata {
    /// The manifest.
    pub manifest: Descriptor,
    /// The config.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<LayerSummary>,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The tag in the layout, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// One layer in [`ImageMetadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSummary {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// Uncompressed digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(media_type: &str, diff: bool) -> LayerInfo {
        LayerInfo {
            media_type: media_type.to_owned(),
            digest: Digest::sha256(b"blob"),
            size: 4,
            diff_id: diff.then(|| Digest::sha256(b"tar")),
            annotations: BTreeMap::new(),
            history: None,
        }
    }

    #[test]
    fn image_tracks_diff_ids_and_history() {
        let mut img = Image::scratch(&Platform::parse("linux/arm64").unwrap());
        img.push_layer(
            &info(mt::OCI_LAYER_GZIP, true),
            BlobSource::Store,
            "T",
            "l1",
        )
        .unwrap();
        let built = img.build("1970-01-01T00:00:00Z").unwrap();
        let cfg = ImageConfig::parse(&built.config_bytes, "c").unwrap();
        assert_eq!(cfg.rootfs.diff_ids, [Digest::sha256(b"tar")]);
        assert_eq!(cfg.history[0].created.as_deref(), Some("T"));
        assert_eq!(cfg.architecture, "arm64");
        assert_eq!(cfg.created.as_deref(), Some("1970-01-01T00:00:00Z"));
        let m =
            gantry_oci::parse_manifest(&built.manifest_bytes, Some(mt::OCI_MANIFEST), "m").unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(built.manifest.digest, Digest::sha256(&built.manifest_bytes));
    }

    #[test]
    fn artifact_blobs_need_an_artifact_type() {
        let mut img = Image::scratch(&Platform::host());
        let e = img
            .push_layer(
                &info("application/json", false),
                BlobSource::Store,
                "T",
                "sbom",
            )
            .unwrap_err();
        assert!(e.to_string().contains("sbom"));
        img.artifact_type = Some("application/vnd.example+type".into());
        img.push_layer(
            &info("application/json", false),
            BlobSource::Store,
            "T",
            "sbom",
        )
        .unwrap();
        let b = img.build("T").unwrap();
        assert_eq!(b.config.media_type, mt::OCI_EMPTY);
        assert_eq!(b.config_bytes, b"{}");
    }
}
