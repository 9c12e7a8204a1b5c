//! [`SourceImage`]: an image as a transport holds it (the `v1.Image` of go-containerregistry):
//! its manifest and config exactly as they are, and where each layer's blob is.

use gantry_oci::media_types as mt;
use gantry_oci::{Descriptor, Digest, ImageConfig, ImageManifest, Platform};

use crate::{BlobSource, Built, Error, Image};

/// An image opened from a transport (gantry-transport opens them), or built. The manifest and
/// config bytes are kept as they are, so a copy keeps every digest. Only the manifest and
/// config have been read; layer bytes move when a sink needs them.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The image in messages (its reference).
    pub name: String,
    /// The manifest, as an index entry lists it: media type, digest, size, the platform the
    /// source recorded for it (if any) and, for a built artifact, its artifact type.
    pub descriptor: Descriptor,
    /// The manifest's bytes (verified against `descriptor`).
    pub manifest_bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// The config's bytes (verified against `manifest.config`; an image config was read
    /// strictly).
    pub config_bytes: Vec<u8>,
    /// The layers (the manifest's descriptors), with where their blobs are.
    pub layers: Vec<(Descriptor, BlobSource)>,
}

impl SourceImage {
    /// A built image (its layers are wherever the build left them). `name` names it in
    /// messages. An image gets its platform in the index entry; an artifact gets its type.
    pub fn from_built(built: &Built, name: &str) -> Result<Self, Error> {
        let mut descriptor = built.manifest.clone();
        if built.config.media_type == mt::OCI_CONFIG {
            descriptor.platform = Some(built.platform.clone());
        }
        let manifest = gantry_oci::parse_manifest(
            &built.manifest_bytes,
            Some(&built.manifest.media_type),
            name,
        )?;
        Ok(SourceImage {
            name: name.to_owned(),
            descriptor,
            manifest_bytes: built.manifest_bytes.clone(),
            manifest,
            config_bytes: built.config_bytes.clone(),
            layers: built
                .layers
                .iter()
                .map(|l| (l.descriptor.clone(), l.source.clone()))
                .collect(),
        })
    }

    /// The manifest's digest.
    pub fn digest(&self) -> &Digest {
        &self.descriptor.digest
    }

    /// The platform the source recorded for the manifest, if any.
    pub fn platform(&self) -> Option<&Platform> {
        self.descriptor.platform.as_ref()
    }

    /// The config of an image to run or unpack, checked as a base image's is
    /// ([`Image::from_source`]): an image config (not an artifact's), read strictly, one
    /// diff_id per layer, every layer a tar media type. The diff_ids are verified while the
    /// layers are unpacked.
    pub fn runnable_config(&self) -> Result<ImageConfig, Error> {
        Ok(Image::from_source(self, None)?.config)
    }
}
