//! `gantry fsck` and `gantry gc`.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use gantry_store::{
    Finding, FsckOptions, FsckReport, GC_PATIENCE, GcOptions, GcReport, Problem, Wait,
};

use crate::Context;

/// Runs `gantry fsck`: the store's blobs, refs and temp files, then the rootfs cache's
/// bookkeeping ([`gantry_unpack::RootfsCache::check`]).
pub fn fsck(ctx: &Context, repair: bool) -> Result<FsckReport> {
    let store = if repair {
        ctx.store()?
    } else {
        ctx.store_for_reading()?
    };
    let mut report = store.fsck(&FsckOptions { repair })?;
    let rootfs_dir = store.root().join(crate::step::ROOTFS_CACHE_DIR);
    for issue in gantry_unpack::RootfsCache::check(&rootfs_dir, repair)? {
        report.findings.push(Finding {
            problem: Problem::Cache {
                path: issue.path,
                reason: issue.problem,
            },
            repaired: issue.repaired,
        });
    }
    Ok(report)
}

/// What `gantry gc` did.
#[derive(Debug, Clone)]
pub struct GcResult {
    /// The store's report.
    pub store: GcReport,
    /// Build-cache entries dropped (or that would be, in a dry run).
    pub cache_entries_dropped: usize,
    /// Unpacked images (rootfs cache entries) removed (or that would be).
    pub rootfs_entries_dropped: usize,
}

/// Runs `gantry gc`: drops build-cache entries and unpacked images unused for
/// `keep_cache_days`, then removes every blob that neither an output nor a remaining cache
/// entry refers to.
pub fn gc(ctx: &Context, dry_run: bool, keep_cache_days: u64) -> Result<GcResult> {
    let mut store = ctx.store()?;
    // Everything gc decides from is read under its exclusive lock: a build that finishes while
    // gc waits roots its new blobs in a cache entry, which must be seen.
    let lock = store.lock_for_gc(GC_PATIENCE, &mut |wait| {
        if let Wait::ForOthers { others, queued } = wait {
            ctx.reporter.event(&if queued {
                format!(
                    "gc: waiting for {others} other gantry process{} to finish; new ones wait \
                     until gc is done",
                    if others == 1 { "" } else { "es" }
                )
            } else {
                format!(
                    "gc: waiting for {others} other gantry process{} to finish…",
                    if others == 1 { "" } else { "es" }
                )
            });
        }
    })?;
    let root = lock.store().root().to_owned();
    let keep = Duration::from_secs(keep_cache_days.saturating_mul(86_400));
    let now = SystemTime::now();
    let mut roots = Vec::new();
    let mut dropped = 0;
    // Opening the cache creates its bucket; a store without one (or a dry run) must not change.
    if root.join(gantry_cache::action::CACHE_BUCKET).is_dir() {
        let cache = gantry_cache::ActionCache::open(&root)?;
        for (_, outputs, last_used) in cache.entries()? {
            if now.duration_since(last_used).unwrap_or_default() <= keep {
                roots.extend(outputs);
            } else {
                dropped += 1;
            }
        }
        if !dry_run {
            let pruned = cache.prune(keep)?;
            dropped = dropped.max(pruned);
        }
    }
    // Unpacked images unused for as long: gc holds the store's exclusive lock, so no step or
    // `gantry run` is using one.
    let rootfs_dir = root.join(crate::step::ROOTFS_CACHE_DIR);
    let rootfs_entries_dropped = if rootfs_dir.is_dir() {
        gantry_unpack::RootfsCache::open(&rootfs_dir)?.prune(keep, dry_run)?
    } else {
        0
    };
    let report = lock.collect(&GcOptions {
        dry_run,
        extra_roots: roots,
    })?;
    Ok(GcResult {
        store: report,
        cache_entries_dropped: dropped,
        rootfs_entries_dropped,
    })
}
