//! `gantry fsck` and `gantry gc`.

use anyhow::Result;
use gantry_store::{FsckOptions, FsckReport, GcOptions, GcReport};

use crate::Context;

/// Runs `gantry fsck`.
pub fn fsck(ctx: &Context, repair: bool) -> Result<FsckReport> {
    Ok(ctx.store()?.fsck(&FsckOptions { repair })?)
}

/// Runs `gantry gc`.
pub fn gc(ctx: &Context, dry_run: bool) -> Result<GcReport> {
    let mut store = ctx.store()?;
    Ok(store.gc(&GcOptions {
        dry_run,
        extra_roots: Vec::new(),
    })?)
}
