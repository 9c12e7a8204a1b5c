//! Garbage collection: removing blobs that no ref (or extra root) reaches.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_oci::json::MAX_MANIFEST_SIZE;
use gantry_oci::{Descriptor, Digest, Document, media_types as mt, parse_document};

use crate::beside::{dead_temps, remove_dead_temps};
use crate::fsutil::{fsync_dir, is_real_dir, list_dir};
use crate::session::remove_leftovers;
use crate::{Error, RefEntry, Result, Store, Wait};

/// What [`Store::gc`] should do.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
    /// Roots to keep besides the refs (for example, images a running command still uses).
    pub extra_roots: Vec<Descriptor>,
}

/// How long a gc lets new processes open the store while it waits for the ones already open,
/// before it takes its turn and makes new ones wait behind it.
pub const GC_PATIENCE: Duration = Duration::from_secs(5);

/// The store locked for collection ([`Store::lock_for_gc`]): no other process has it open, and
/// none can open it, until this is dropped (which trades the lock back for a shared one).
/// Read the roots that live outside the store (caches) now, then [`GcLock::collect`].
#[derive(Debug)]
pub struct GcLock<'s> {
    store: &'s mut Store,
    _intent: Option<File>,
}

impl GcLock<'_> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Removes every blob not reachable from a ref or from `options.extra_roots` (see
    /// [`Store::gc`]), and releases the lock.
    pub fn collect(self, options: &GcOptions) -> Result<GcReport> {
        self.store.collect(options)
    }
}

impl Drop for GcLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.lock_gc_shared() {
            tracing::warn!("cannot take the store's shared lock again: {e}");
        }
    }
}

/// What [`Store::gc`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub removed_blobs: u64,
    /// Bytes freed by removing blobs: only blobs with no other hard link count, since a blob
    /// that an output outside the store still links to keeps its space.
    pub removed_bytes: u64,
    /// Bytes of removed blobs that are still hard-linked from outside the store (an output
    /// layout without a ref, a user's link), so removing them freed nothing.
    pub still_linked_bytes: u64,
    /// Blobs kept.
    pub kept_blobs: u64,
    /// Bytes in the kept blobs.
    pub kept_bytes: u64,
    /// Indirect refs dropped because their path no longer exists.
    pub dropped_refs: Vec<RefEntry>,
    /// Leftover entries removed from `tmp/`.
    pub removed_temp: u64,
    /// Temps beside outputs that dead processes left (in the directories of the outputs that
    /// refs name), removed (or that would be, in a dry run) before the sweep, so the space
    /// their hard links hold is freed with the blobs.
    pub removed_output_temps: Vec<PathBuf>,
}

/// A problem met while walking the blobs reachable from some roots.
#[derive(Debug)]
pub(crate) enum WalkIssue {
    /// The blob is not in the store.
    Missing,
    /// The blob is a manifest or index that cannot be read or parsed.
    Unreadable(Error),
}

impl Store {
    /// Removes every blob not reachable from a ref or from `options.extra_roots`.
    ///
    /// Trades this store's shared `gc.lock` for an exclusive one first, so it waits until every
    /// other open [`Store`] (in this or another process) is dropped, and stores opened meanwhile
    /// wait for it. Taking `&mut self` keeps this store's own writers from running concurrently.
    /// A ref file that cannot be read, or a manifest or index that is present but unreadable,
    /// stops the collection before anything is removed (the roots or children cannot be known);
    /// `fsck` reports both.
    pub fn gc(&mut self, options: &GcOptions) -> Result<GcReport> {
        self.lock_for_gc(GC_PATIENCE, &mut |_| {})?.collect(options)
    }

    /// Locks the store for collection: trades this store's shared `gc.lock` for an exclusive
    /// one, so it waits until every other open [`Store`] (in any process) is dropped, and
    /// stores opened meanwhile wait for it. For `patience` it lets new processes in while it
    /// waits; then it takes its turn (`locks/gc-intent.lock`), so that a steady stream of new
    /// processes cannot starve it. `on_wait` hears whenever the number of processes it waits
    /// for changes. Everything a collection decides from (refs, and roots outside the store
    /// such as cache entries) must be read under this lock, or a process that finishes
    /// meanwhile could root a blob the collection then removes.
    pub fn lock_for_gc(
        &mut self,
        patience: Duration,
        on_wait: &mut dyn FnMut(Wait),
    ) -> Result<GcLock<'_>> {
        let intent = match self.lock_gc_exclusive(patience, on_wait) {
            Ok(intent) => intent,
            Err(e) => {
                // Whatever happened, hold the shared lock again, as an open store must.
                let _ = self.lock_gc_shared();
                return Err(e);
            }
        };
        Ok(GcLock {
            store: self,
            _intent: intent,
        })
    }

    /// The collection proper. Call with `gc.lock` held exclusively.
    fn collect(&self, options: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport::default();
        let (live_roots, stale, output_dirs) = self.read_roots(options.dry_run)?;
        report.dropped_refs = stale;
        for dir in output_dirs {
            report.removed_output_temps.extend(if options.dry_run {
                dead_temps(&dir)?
            } else {
                remove_dead_temps(&dir)?
            });
        }
        let mut roots = options.extra_roots.clone();
        roots.extend(live_roots);

        let reachable = self.walk(&roots, |_, issue| match issue {
            WalkIssue::Missing => Ok(()),
            WalkIssue::Unreadable(e) => Err(e),
        })?;
        self.sweep(&reachable, options.dry_run, &mut report)?;

        if !options.dry_run {
            let _lock = self.lock_tmp()?;
            report.removed_temp =
                remove_leftovers(&self.tmp_dir(), self.session_dir()?, self.reaper())?;
        }
        Ok(report)
    }

    /// Reads every ref under `refs.lock`. Returns the descriptors of the live ones, the
    /// indirect refs whose path is gone (removed unless `dry_run`), and the directories that
    /// hold the paths of indirect refs, live or not (where outputs are written). Nothing is
    /// removed if any ref file is unreadable.
    #[allow(clippy::type_complexity)]
    fn read_roots(
        &self,
        dry_run: bool,
    ) -> Result<(Vec<Descriptor>, Vec<RefEntry>, BTreeSet<PathBuf>)> {
        let _lock = self.lock_refs()?;
        let mut live = Vec::new();
        let mut stale = Vec::new();
        let mut dirs = BTreeSet::new();
        for (path, entry) in self.ref_files()? {
            let entry = entry?;
            if let Some(dir) = entry.path.as_deref().and_then(Path::parent) {
                dirs.insert(dir.to_owned());
            }
            if entry.is_stale() {
                stale.push((path, entry));
            } else {
                live.push(entry.descriptor);
            }
        }
        let mut dropped = Vec::new();
        for (path, entry) in stale {
            tracing::debug!(kind = entry.kind, name = entry.name, "dropping stale ref");
            if !dry_run {
                self.remove_ref_file(&path)?;
            }
            dropped.push(entry);
        }
        Ok((live, dropped, dirs))
    }

    /// Removes (unless `dry_run`) the blobs not in `reachable`, counting both sides. Files
    /// under `blobs/` that are not named like blobs are left for `fsck`.
    fn sweep(
        &self,
        reachable: &HashSet<Digest>,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        for alg_dir in list_dir(&self.blobs_dir())? {
            if !is_real_dir(&alg_dir) {
                continue;
            }
            let mut removed_any = false;
            for path in list_dir(&alg_dir)? {
                let Some(digest) = digest_of_path(&path) else {
                    continue;
                };
                let meta = fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
                if reachable.contains(&digest) {
                    report.kept_blobs += 1;
                    report.kept_bytes += meta.len();
                    continue;
                }
                tracing::debug!(%digest, "removing unreachable blob");
                if !dry_run {
                    fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                    removed_any = true;
                }
                report.removed_blobs += 1;
                if meta.nlink() > 1 {
                    report.still_linked_bytes += meta.len();
                } else {
                    report.removed_bytes += meta.len();
                }
            }
            if removed_any {
                fsync_dir(&alg_dir)?;
            }
        }
        Ok(())
    }

    /// Every digest reachable from `roots`: a manifest leads to its config, layers and subject,
    /// an index to its manifests and subject. Blobs that are missing, and manifests or indexes
    /// that cannot be read, are handed to `on_issue`, which may stop the walk with an error.
    pub(crate) fn walk(
        &self,
        roots: &[Descriptor],
        mut on_issue: impl FnMut(&Descriptor, WalkIssue) -> Result<()>,
    ) -> Result<HashSet<Digest>> {
        let mut seen = HashSet::new();
        let mut pending = roots.to_vec();
        while let Some(desc) = pending.pop() {
            if !seen.insert(desc.digest.clone()) {
                continue;
            }
            if !self.has(&desc.digest) {
                on_issue(&desc, WalkIssue::Missing)?;
                continue;
            }
            if !(mt::is_manifest(&desc.media_type) || mt::is_index(&desc.media_type)) {
                continue;
            }
            match self.read_document(&desc) {
                Ok(document) => pending.extend(children(document)),
                Err(e) => on_issue(&desc, WalkIssue::Unreadable(e))?,
            }
        }
        Ok(seen)
    }

    /// Reads and parses a stored manifest or index.
    fn read_document(&self, desc: &Descriptor) -> Result<Document> {
        let bytes = self.read_blob(&desc.digest, MAX_MANIFEST_SIZE)?;
        let what = format!(
            "{} {}",
            desc.media_type,
            self.blob_path(&desc.digest).display()
        );
        Ok(parse_document(&bytes, Some(&desc.media_type), &what)?)
    }
}

/// The descriptors a document refers to.
fn children(document: Document) -> Vec<Descriptor> {
    match document {
        Document::Manifest(m) => {
            let mut children = vec![m.config];
            children.extend(m.layers);
            children.extend(m.subject);
            children
        }
        Document::Index(i) => {
            let mut children = i.manifests;
            children.extend(i.subject);
            children
        }
    }
}

/// The digest a path `…/<alg>/<hex>` names, if it names one.
pub(crate) fn digest_of_path(path: &Path) -> Option<Digest> {
    let hex = path.file_name()?.to_str()?;
    let alg = path.parent()?.file_name()?.to_str()?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{blob_files, open_store, put_image};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn keeps_what_refs_reach_and_removes_the_rest() {
        let (_dir, mut store) = open_store();
        let kept = put_image(&store, &[b"layer one", b"layer two"]);
        let dropped = put_image(&store, &[b"other layer"]);
        let loose = store.put_bytes(b"loose").unwrap();
        store.set_ref("tag", "app", &kept.manifest, None).unwrap();

        let report = store.gc(&GcOptions::default()).unwrap();
        for d in kept.all() {
            assert!(store.has(&d), "{d} kept");
        }
        for d in dropped.all().into_iter().chain([loose]) {
            assert!(!store.has(&d), "{d} removed");
        }
        assert_eq!(report.kept_blobs, 4);
        assert_eq!(report.removed_blobs, 4);
        assert_eq!(blob_files(&store).len(), 4);
        assert!(report.dropped_refs.is_empty());
    }

    #[test]
    fn index_children_and_extra_roots_are_kept() {
        let (_dir, mut store) = open_store();
        let image = put_image(&store, &[b"layer"]);
        let mut index = gantry_oci::ImageIndex::new();
        index.manifests.push(image.manifest.clone());
        let bytes = gantry_oci::json::to_canonical_vec(&index);
        store.put_bytes(&bytes).unwrap();
        let index_desc = Descriptor::of_bytes(mt::OCI_INDEX, &bytes);
        let extra = put_image(&store, &[b"extra"]);
        store.set_ref("tag", "multi", &index_desc, None).unwrap();

        let options = GcOptions {
            dry_run: false,
            extra_roots: vec![extra.manifest.clone()],
        };
        let report = store.gc(&options).unwrap();
        assert_eq!(report.removed_blobs, 0);
        assert!(image.all().iter().chain(&extra.all()).all(|d| store.has(d)));
    }

    #[test]
    fn stale_indirect_refs_are_dropped_and_collected() {
        let (dir, mut store) = open_store();
        let image = put_image(&store, &[b"layer"]);
        let out = dir.path().join("output-layout");
        fs::create_dir(&out).unwrap();
        store
            .set_ref("output", "out", &image.manifest, Some(&out))
            .unwrap();

        let report = store.gc(&GcOptions::default()).unwrap();
        assert_eq!(report.removed_blobs, 0, "the path exists, so the ref holds");

        fs::remove_dir(&out).unwrap();
        let report = store.gc(&GcOptions::default()).unwrap();
        assert_eq!(report.dropped_refs.len(), 1);
        assert_eq!(report.dropped_refs[0].name, "out");
        assert_eq!(report.removed_blobs, 3);
        assert!(store.refs().unwrap().is_empty());
        assert!(blob_files(&store).is_empty());
    }

    #[test]
    fn dry_run_removes_nothing() {
        let (dir, mut store) = open_store();
        let image = put_image(&store, &[b"layer"]);
        store
            .set_ref(
                "output",
                "gone",
                &image.manifest,
                Some(&dir.path().join("nope")),
            )
            .unwrap();
        let junk = dir.path().join("tmp/junk");
        fs::write(&junk, b"x").unwrap();

        let report = store
            .gc(&GcOptions {
                dry_run: true,
                extra_roots: Vec::new(),
            })
            .unwrap();
        assert_eq!(report.removed_blobs, 3);
        assert_eq!(report.dropped_refs.len(), 1);
        assert!(image.all().iter().all(|d| store.has(d)));
        assert_eq!(store.refs().unwrap().len(), 1);
        assert!(junk.exists());

        let report = store.gc(&GcOptions::default()).unwrap();
        assert_eq!(report.removed_blobs, 3);
        assert_eq!(report.removed_temp, 1);
        assert!(!junk.exists());
    }

    #[test]
    fn a_corrupt_manifest_stops_gc() {
        let (_dir, mut store) = open_store();
        let image = put_image(&store, &[b"layer"]);
        store.set_ref("tag", "app", &image.manifest, None).unwrap();
        crate::test_support::corrupt_blob(&store, &image.manifest.digest);
        let err = store.gc(&GcOptions::default()).unwrap_err();
        assert!(matches!(err, Error::CorruptBlob { .. }), "{err}");
        assert!(image.all().iter().all(|d| store.has(d)), "nothing removed");
    }

    #[test]
    fn gc_waits_for_other_stores() {
        let (dir, mut store) = open_store();
        let other = Store::open(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        let gc_thread = std::thread::spawn(move || {
            let report = store.gc(&GcOptions::default());
            tx.send(report.is_ok()).unwrap();
            store
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "gc must wait while another store is open"
        );
        drop(other);
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(true));
        let store = gc_thread.join().unwrap();
        // The shared lock is back, so a new store opens without waiting.
        let _again = Store::open(store.root()).unwrap();
    }

    /// gc reported blobs as freed that a dead writer's leftover temp (beside an output) or
    /// another hard link still held.
    #[test]
    fn regression_gc_counted_hard_linked_blobs_as_freed() {
        let (dir, mut store) = open_store();
        let outputs = tempfile::tempdir().unwrap();
        let out = outputs.path().join("out");
        fs::create_dir(&out).unwrap();
        let kept = put_image(&store, &[b"kept layer"]);
        store
            .set_ref("image", "out", &kept.manifest, Some(&out))
            .unwrap();
        // A layout write killed half-way: its temp hard-links a blob no ref reaches.
        let in_temp = store.put_bytes(&[1u8; 1000]).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let leftover = outputs
            .path()
            .join(format!(".out.gantry-tmp-{dead_pid}-7-abcdefgh"));
        fs::create_dir_all(leftover.join("blobs/sha256")).unwrap();
        fs::hard_link(
            store.blob_path(&in_temp),
            leftover.join("blobs/sha256").join(in_temp.hex()),
        )
        .unwrap();
        // Another unreachable blob that a user linked elsewhere.
        let linked = store.put_bytes(&[2u8; 300]).unwrap();
        let user_link = dir.path().join("user-link");
        fs::hard_link(store.blob_path(&linked), &user_link).unwrap();

        let dry = store
            .gc(&GcOptions {
                dry_run: true,
                extra_roots: Vec::new(),
            })
            .unwrap();
        assert_eq!(dry.removed_output_temps, vec![leftover.clone()]);
        assert!(leftover.exists(), "a dry run removes nothing");

        let report = store.gc(&GcOptions::default()).unwrap();
        assert_eq!(report.removed_output_temps, vec![leftover.clone()]);
        assert!(!leftover.exists());
        assert_eq!(report.removed_blobs, 2);
        assert_eq!(report.removed_bytes, 1000, "only the temp's blob is freed");
        assert_eq!(report.still_linked_bytes, 300);
        assert!(user_link.exists(), "a user's link is not gc's to remove");
        assert!(kept.all().iter().all(|d| store.has(d)));
    }

    #[test]
    fn a_process_that_has_the_store_open_does_not_queue_behind_a_gc() {
        let (dir, mut store) = open_store();
        let root = dir.path().to_owned();
        let open_here = Store::open(&root).unwrap();
        let (tx, rx) = mpsc::channel();
        let waits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&waits);
        let gc_thread = std::thread::spawn(move || {
            // No patience: it takes its turn at once.
            let lock = store
                .lock_for_gc(Duration::ZERO, &mut |w| seen.lock().unwrap().push(w))
                .unwrap();
            let report = lock.collect(&GcOptions::default()).is_ok();
            tx.send(report).unwrap();
            store
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            waits.lock().unwrap().as_slice(),
            [Wait::ForOthers {
                others: 1,
                queued: true
            }]
        );
        // This process has the store open (gc waits for it): opening it again must not queue
        // behind gc, or nothing could ever finish.
        let nested = crate::test_support::within(20, {
            let root = root.clone();
            move || Store::open(&root).map(drop).is_ok()
        });
        assert!(nested);
        assert!(rx.try_recv().is_err(), "gc still waits for the open store");
        drop(open_here);
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(true));
        let _store = gc_thread.join().unwrap();
    }

    #[test]
    fn digest_of_path_accepts_only_blob_names() {
        let d = Digest::sha256(b"x");
        let path = Path::new("/s/blobs/sha256").join(d.hex());
        assert_eq!(digest_of_path(&path), Some(d));
        assert_eq!(digest_of_path(Path::new("/s/blobs/sha256/ABC")), None);
        assert_eq!(digest_of_path(Path::new("/s/blobs/md5/abc")), None);
    }
}
