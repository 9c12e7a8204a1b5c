//! `gantry inspect`: describe an image (at any transport reference), a layer blob or a layer
//! info.

use std::collections::BTreeMap;
use std::io;

use anyhow::{Context as _, Result};
use gantry_cli::InspectArgs;
use gantry_layer::{LayerInfo, TarImport};
use gantry_oci::media_types as mt;
use gantry_oci::{Digest, HashingWriter, History, ImageConfig, ImageManifest, Platform, json};
use gantry_transport::ImageRef;
use serde::Serialize;

use crate::{Context, Target};

/// What `gantry inspect` found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum InspectReport {
    /// An image (of a layout, an archive or a registry).
    Image(Box<ImageReport>),
    /// A layer blob or layer info.
    Layer(Box<LayerReport>),
}

/// An image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// Where the image is: its canonical reference (`oci:DIR:TAG`, `docker://REF`, …).
    pub source: String,
    /// The layout directory, for an image in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// The names the layout or archive gives its images (none for a registry).
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
        Target::Image(r) => Ok(InspectReport::Image(Box::new(inspect_image(
            ctx,
            &r,
            &platform,
            &args.target,
        )?))),
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

/// The manifest and config of the image at `r` (no layer is read). `arg` names it in errors.
fn inspect_image(
    ctx: &Context,
    r: &ImageRef,
    platform: &Platform,
    arg: &str,
) -> Result<ImageReport> {
    let store = ctx.store_for_reading()?;
    let client = match r {
        ImageRef::Registry(_) => Some(crate::registry::client(ctx, None)?),
        _ => None,
    };
    let source = ctx.transfer(&store, client.as_ref()).source(r)?;
    let resolved = source.manifest(platform)?;
    let config_desc = &resolved.manifest.config;
    let config = if mt::is_image_config(&config_desc.media_type) {
        let bytes = source.read_blob(config_desc, json::MAX_CONFIG_SIZE)?;
        Some(ImageConfig::parse(&bytes, &format!("{arg}: config"))?)
    } else {
        None
    };
    Ok(ImageReport {
        source: r.to_string(),
        layout: match r {
            ImageRef::Layout { dir, .. } => Some(dir.display().to_string()),
            _ => None,
        },
        tags: source.tags(),
        digest: resolved.manifest_descriptor.digest.clone(),
        media_type: resolved.manifest_descriptor.media_type.clone(),
        size: resolved.manifest_descriptor.size,
        platform: config
            .as_ref()
            .map(|c| Platform::new(&c.os, &c.architecture, c.variant.as_deref()).to_string()),
        manifest: resolved.manifest,
        config,
    })
}
