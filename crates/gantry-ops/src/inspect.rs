//! `gantry inspect`: describe an image, a layer blob or a layer info.

use std::collections::BTreeMap;
use std::io;

use anyhow::{Context as _, Result};
use gantry_cli::InspectArgs;
use gantry_layer::{LayerInfo, TarImport};
use gantry_oci::media_types as mt;
use gantry_oci::{Digest, HashingWriter, History, ImageConfig, ImageManifest, Platform, json};
use gantry_store::Layout;
use serde::Serialize;

use crate::{Context, Target};

/// What `gantry inspect` found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum InspectReport {
    /// An image of a layout.
    Image(Box<ImageReport>),
    /// A layer blob or layer info.
    Layer(Box<LayerReport>),
}

/// An image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// The layout directory.
    pub layout: String,
    /// Tags in the layout.
    pub tags: Vec<String>,
    /// Manifest digest.
    pub digest: Digest,
    /// Manifest media type.
    pub media_type: String,
    /// Manifest size.
    pub size: u64,
    /// Platform from the config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config (absent for artifacts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ImageConfig>,
}

/// A layer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    /// Media type (from the info, or detected for a blob).
    pub media_type: String,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Uncompressed digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// Uncompressed size (blobs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
    /// Number of tar entries (blobs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Annotations (infos only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// History line (infos only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// Whether the store holds the blob (infos only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_store: Option<bool>,
}

/// Runs `gantry inspect`.
pub fn run(ctx: &Context, args: &InspectArgs) -> Result<InspectReport> {
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    match Target::resolve(ctx, &args.target)? {
        Target::Layout { dir, selector } => {
            let layout = Layout::open(&dir)?;
            let r = layout.resolve(&selector, &platform)?;
            let config = if mt::is_image_config(&r.manifest.config.media_type) {
                let bytes = layout.read_blob_verified(&r.manifest.config, json::MAX_CONFIG_SIZE)?;
                Some(ImageConfig::parse(
                    &bytes,
                    &format!("{}: config", args.target),
                )?)
            } else {
                None
            };
            Ok(InspectReport::Image(Box::new(ImageReport {
                layout: dir.display().to_string(),
                tags: layout.tags(),
                digest: r.manifest_descriptor.digest.clone(),
                media_type: r.manifest_descriptor.media_type.clone(),
                size: r.manifest_descriptor.size,
                platform: config.as_ref().map(|c| {
                    Platform::new(&c.os, &c.architecture, c.variant.as_deref()).to_string()
                }),
                manifest: r.manifest,
                config,
            })))
        }
        Target::LayerInfo(path) => {
            let bytes = std::fs::read(&path)?;
            let info = LayerInfo::parse(&bytes, &path.display().to_string())?;
            let in_store = ctx.store_for_reading()?.has(&info.digest);
            Ok(InspectReport::Layer(Box::new(LayerReport {
                media_type: info.media_type,
                digest: info.digest,
                size: info.size,
                diff_id: info.diff_id,
                uncompressed_size: None,
                entries: None,
                annotations: info.annotations,
                history: info.history,
                in_store: Some(in_store),
            })))
        }
        Target::Blob(path) => {
            let (hw, t) = gantry_layer::tarread::import_tar(
                &path,
                TarImport::Keep,
                1,
                HashingWriter::new(io::sink()),
                &ctx.limits,
            )
            .with_context(|| format!("cannot read {}", path.display()))?;
            let (_, digest, size) = hw.finish();
            Ok(InspectReport::Layer(Box::new(LayerReport {
                media_type: t.compression.oci_layer_media_type().to_owned(),
                digest,
                size,
                diff_id: Some(t.diff_id),
                uncompressed_size: Some(t.uncompressed_size),
                entries: Some(t.entries),
                annotations: BTreeMap::new(),
                history: None,
                in_store: None,
            })))
        }
    }
}
