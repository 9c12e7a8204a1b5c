//! What `inspect` and `ls` can look at: an image in a layout, a layer blob, or a layer info.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use gantry_image::Base;
use gantry_store::Selector;

use crate::Context;

/// A thing to inspect or list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An image in an OCI layout.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// Which image.
        selector: Selector,
    },
    /// A layer info JSON file (its blob is looked up in the store).
    LayerInfo(PathBuf),
    /// A layer blob file (tar, gzip or zstd).
    Blob(PathBuf),
}

impl Target {
    /// Resolves a command-line argument: `oci:` prefixes and existing directories are layouts
    /// (with `:TAG` or `@DIGEST`), files are layer blobs or, when they hold JSON, layer infos.
    pub fn resolve(ctx: &Context, arg: &str) -> Result<Self> {
        let direct = ctx.abs(Path::new(arg));
        if !arg.starts_with("oci:") && direct.is_file() {
            let mut head = [0u8; 1];
            let n = std::io::Read::read(&mut std::fs::File::open(&direct)?, &mut head)?;
            return Ok(if n == 1 && head[0] == b'{' {
                Target::LayerInfo(direct)
            } else {
                Target::Blob(direct)
            });
        }
        match Base::parse(arg)? {
            Base::Layout { dir, selector } => {
                let dir = ctx.abs(&dir);
                if !dir.is_dir() {
                    bail!("{arg}: no such layout directory, layer blob or layer info file");
                }
                Ok(Target::Layout { dir, selector })
            }
            Base::Scratch => bail!("scratch has nothing to show"),
        }
    }
}
