//! `gantry ls`: the files of a layer, or of an image at any transport reference (merged, or
//! layer by layer).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};

use anyhow::{Context as _, Result};
use gantry_cli::LsArgs;
use gantry_layer::ListedEntry;
use gantry_layer::recipe::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use gantry_layer::tarread::list_layer;
use gantry_oci::{Compression, media_types as mt};
use serde::Serialize;

use crate::transfer::platform_or_host;
use crate::{Context, Target};

/// One row of output.
#[derive(Debug, Clone, Serialize)]
pub struct LsRow {
    /// The layer index (base first) the entry comes from, for images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// The entry.
    #[serde(flatten)]
    pub entry: ListedEntry,
}

fn compression_of(media_type: Option<&str>, r: &mut impl BufRead) -> Result<Compression> {
    if let Some(c) = media_type.and_then(mt::layer_compression) {
        return Ok(c);
    }
    Ok(Compression::sniff(r.fill_buf()?))
}

/// Runs `gantry ls`, calling `each` for every row in path order.
pub fn run(ctx: &Context, args: &LsArgs, each: &mut dyn FnMut(LsRow)) -> Result<()> {
    match Target::resolve(ctx, &args.target)? {
        Target::Blob(path) => {
            let mut r = BufReader::new(File::open(&path)?);
            let c = compression_of(None, &mut r)?;
            list_layer(r, c, &path.display().to_string(), |entry| {
                each(LsRow { layer: None, entry });
            })?;
        }
        Target::LayerInfo(path) => {
            let info = gantry_layer::LayerInfo::parse(
                &std::fs::read(&path)?,
                &path.display().to_string(),
            )?;
            let store = ctx.store_for_reading()?;
            let mut r = BufReader::new(store.open_blob(&info.digest)?);
            let c = compression_of(Some(&info.media_type), &mut r)?;
            list_layer(r, c, &info.digest.to_string(), |entry| {
                each(LsRow { layer: None, entry });
            })?;
        }
        Target::Image(r) => {
            let platform = platform_or_host(args.platform.as_deref())?;
            let store = ctx.store_for_reading()?;
            let client = crate::registry::client(ctx, None)?;
            let t = ctx.transfer(&store, Some(&client));
            let image = t.open(&r, &platform)?;
            let mut merged = Merged::default();
            for (i, (desc, source)) in image.layers.iter().enumerate() {
                let what = format!("layer {i} ({})", desc.digest);
                // Registry layers are streamed (verified), not kept: listing changes nothing.
                let mut r = BufReader::new(t.stream_blob(desc, source)?);
                let c = compression_of(Some(&desc.media_type), &mut r)?;
                let mut rows = Vec::new();
                list_layer(r, c, &what, |entry| rows.push(entry))
                    .with_context(|| format!("cannot read {what}"))?;
                if args.layers {
                    for entry in rows {
                        each(LsRow {
                            layer: Some(i),
                            entry,
                        });
                    }
                } else {
                    merged.apply(i, rows);
                }
            }
            for (_, row) in merged.files {
                each(row);
            }
        }
    }
    Ok(())
}

/// The merged filesystem of an image, applying whiteouts layer by layer. Paths are compared
/// as bytes: names that are not UTF-8 are distinct even when they look the same as text.
#[derive(Default)]
struct Merged {
    files: BTreeMap<Vec<u8>, LsRow>,
}

impl Merged {
    /// Removes everything under the `/`-rooted `path` and, unless `keep_self`, `path` itself.
    fn remove_tree(&mut self, path: &[u8], keep_self: bool) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let doomed: Vec<Vec<u8>> = self
            .files
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.files.remove(&k);
        }
        if !keep_self {
            self.files.remove(path);
        }
    }

    /// Applies one layer: its whiteouts hide lower entries, then its entries are added.
    fn apply(&mut self, layer: usize, rows: Vec<ListedEntry>) {
        let mut additions = Vec::new();
        for e in rows {
            let raw = &e.raw_path;
            let cut = raw.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let (dir, name) = (&raw[..cut], &raw[cut + 1..]);
            if name == OPAQUE_WHITEOUT {
                self.remove_tree(dir, true);
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let mut target = dir.to_vec();
                target.push(b'/');
                target.extend_from_slice(hidden);
                self.remove_tree(&target, false);
            } else {
                additions.push(e);
            }
        }
        for e in additions {
            if e.kind != "dir" {
                self.remove_tree(&e.raw_path, true);
            }
            self.files.insert(
                e.raw_path.clone(),
                LsRow {
                    layer: Some(layer),
                    entry: e,
                },
            );
        }
    }
}
