//! The layer info document: what `gantry layer` writes beside a blob and `gantry image` reads.

use std::collections::BTreeMap;

use gantry_oci::{Descriptor, Digest, History};
use serde::{Deserialize, Serialize};

/// A layer's descriptor plus what an image needs to use it: its diff_id and a history line.
/// Serialised as canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerInfo {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// sha256 of the uncompressed tar; absent for non-tar (artifact) blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// Descriptor annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The history entry an image records for this layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

impl LayerInfo {
    /// The OCI descriptor of the blob.
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(self.media_type.clone(), self.digest.clone(), self.size);
        d.annotations = self.annotations.clone();
        d
    }

    /// Canonical JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        gantry_oci::json::to_canonical_vec(self)
    }

    /// Parses a layer info document (small; strict).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, gantry_oci::Error> {
        let info: LayerInfo = gantry_oci::json::parse_strict(bytes, what, 1 << 20)?;
        info.descriptor().validate(what)?;
        Ok(info)
    }
}
