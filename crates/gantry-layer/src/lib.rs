//! gantry's layer engine.
//!
//! A layer is described by a [`LayerSpec`] (files, directory trees, inline content, links,
//! whiteouts, metadata; or an existing tar; or an arbitrary file), resolved into a
//! [`LayerPlan`], and written by [`write_layer`] in one streaming pass: the deterministic tar
//! writer ([`tarwriter`]) feeds a sha256 (the diff_id) and the compressor ([`Compressor`]),
//! whose output goes to a sink the caller owns (normally a store blob writer that computes the
//! digest and size). Memory stays bounded whatever the layer size.
//!
//! [`capture`] turns what a build step left behind (chosen output paths, an overlayfs upper
//! directory, or two trees to compare) into a recipe, treating that filesystem as hostile.
//!
//! [`tarread`] holds the hostile-input side: validation of tar members, import of existing
//! tars, and listing of a layer's files.

pub mod capture;
mod compress;
mod error;
mod fingerprint;
mod info;
pub mod limits;
pub mod meta;
mod path;
pub mod pax;
pub mod recipe;
pub mod spec;
pub mod stack;
pub mod tarread;
pub mod tarwriter;
mod xattr;

use std::fs::File;
use std::io::{self, Write};

use gantry_oci::{Digest, HashingWriter, History, annotations};

pub use compress::{Compressor, GZIP_BLOCK_SIZE};
pub use error::Error;
pub use fingerprint::FINGERPRINT_VERSION;
pub use info::LayerInfo;
pub use limits::Limits;
pub use meta::Defaults;
pub use path::ImagePath;
pub use recipe::{
    Entry, EntryKind, FileSource, FileStamp, Preserve, Recipe, RecipeBuilder, TreeFilter,
};
pub use spec::{LayerPlan, LayerSource, LayerSpec};
pub use tarread::{ImportedTar, ListedEntry, TarImport};

/// Receives progress while a layer is written. Implemented by the CLI with progress bars.
pub trait Progress: Send + Sync {
    /// `bytes` more input bytes were consumed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What writing a layer produced, besides the blob bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOutput {
    /// The blob's media type.
    pub media_type: String,
    /// sha256 of the uncompressed tar (`None` for artifact blobs).
    pub diff_id: Option<Digest>,
    /// Size of the uncompressed tar (`None` for artifact blobs).
    pub uncompressed_size: Option<u64>,
    /// Things the user should know about the layer just written (extended attributes left
    /// out). Recipe warnings known from planning are in [`Recipe::warnings`].
    pub warnings: Vec<String>,
}

/// Writes the layer described by `plan` into `sink`. `jobs` bounds compression threads and
/// never changes the bytes. An imported tar is decompressed within `limits`.
pub fn write_layer<W: Write + Send>(
    plan: &LayerPlan,
    jobs: usize,
    sink: W,
    progress: &dyn Progress,
    limits: &Limits,
) -> Result<(W, LayerOutput), Error> {
    match &plan.source {
        LayerSource::Recipe(recipe) => {
            let (sink, (diff_id, size, report)) = plan.compressor.compress(jobs, sink, |w| {
                let mut hashing = HashingWriter::new(w);
                let report = tarwriter::write_tar(recipe, &mut hashing, progress)?;
                let (_, d, n) = hashing.finish();
                Ok((d, n, report))
            })?;
            Ok((
                sink,
                LayerOutput {
                    media_type: plan
                        .media_type
                        .clone()
                        .unwrap_or_else(|| plan.compressor.media_type().to_owned()),
                    diff_id: Some(diff_id),
                    uncompressed_size: Some(size),
                    warnings: report.warning().into_iter().collect(),
                },
            ))
        }
        LayerSource::Tar { path, how } => {
            let (sink, imported) = tarread::import_tar(path, *how, jobs, sink, limits)?;
            progress.advance(imported.uncompressed_size);
            Ok((
                sink,
                LayerOutput {
                    media_type: plan
                        .media_type
                        .clone()
                        .unwrap_or_else(|| imported.compression.oci_layer_media_type().to_owned()),
                    diff_id: Some(imported.diff_id),
                    uncompressed_size: Some(imported.uncompressed_size),
                    warnings: Vec::new(),
                },
            ))
        }
        LayerSource::Artifact { path, media_type } => {
            let mut sink = sink;
            let mut f = File::open(path).map_err(|source| Error::Source {
                path: path.clone(),
                source,
            })?;
            let n = io::copy(&mut f, &mut sink).map_err(Error::Output)?;
            progress.advance(n);
            Ok((
                sink,
                LayerOutput {
                    media_type: media_type.clone(),
                    diff_id: None,
                    uncompressed_size: None,
                    warnings: Vec::new(),
                },
            ))
        }
    }
}

/// Builds the [`LayerInfo`] of a written layer. `created` is the history time (RFC 3339).
pub fn layer_info(
    plan: &LayerPlan,
    out: &LayerOutput,
    digest: Digest,
    size: u64,
    created: Option<String>,
) -> LayerInfo {
    let mut annotations = plan.annotations.clone();
    let history = match &plan.source {
        LayerSource::Artifact { path, .. } => {
            if let Some(name) = path.file_name() {
                annotations
                    .entry(annotations::TITLE.to_owned())
                    .or_insert_with(|| name.to_string_lossy().into_owned());
            }
            None
        }
        _ => Some(History {
            created,
            created_by: Some(plan.created_by.clone()),
            author: None,
            comment: plan.comment.clone(),
            empty_layer: None,
        }),
    };
    LayerInfo {
        media_type: out.media_type.clone(),
        digest,
        size,
        diff_id: out.diff_id.clone(),
        annotations,
        history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn one_pass_gives_consistent_digests() {
        let spec: LayerSpec = toml::from_str(
            r#"content = { "/etc/motd" = "hi\n", "/app/a" = "a" }
symlinks = { "/bin" = "usr/bin" }"#,
        )
        .unwrap();
        for compression in ["gzip", "zstd", "none"] {
            let mut spec = spec.clone();
            spec.compression = Some(compression.to_owned());
            let plan = spec.plan(std::path::Path::new("."), 0, "test").unwrap();
            let (hw, out) = write_layer(
                &plan,
                2,
                HashingWriter::new(Vec::new()),
                &NoProgress,
                &Limits::default(),
            )
            .unwrap();
            let (blob, digest, size) = hw.finish();
            assert_eq!(digest, Digest::sha256(&blob));
            assert_eq!(size, blob.len() as u64);
            let mut plain = Vec::new();
            let meter = limits::Meter::new();
            let c = gantry_oci::Compression::sniff(&blob);
            tarread::decoder(&blob[..], c, &Limits::default(), &meter)
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(
                out.diff_id.unwrap(),
                Digest::sha256(&plain),
                "{compression}"
            );
            assert_eq!(out.uncompressed_size.unwrap(), plain.len() as u64);
        }
    }
}
