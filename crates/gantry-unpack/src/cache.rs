//! The rootfs cache: unpacked images keyed by chain id.
//!
//! ```text
//! DIR/                    0700
//!   v2/                   0700 (a format change gets a new bucket)
//!     sha256-<hex>/rootfs   a complete rootfs: only ever renamed into place whole, after every
//!                           layer hashed to its diff_id
//!     sha256-<hex>/diff_ids the diff_ids it was verified against, one a line; their chain id
//!                           is the entry's name
//!     sha256-<hex>.lock     serialises unpacking one chain id across threads and processes;
//!                           its mtime is the entry's last use
//!     tmp-<unique>/rootfs   being unpacked (or left by a crash)
//!     tmp-<unique>.lock     held by the live process unpacking into tmp-<unique>
//! ```
//!
//! Leftovers of crashed runs (temp dirs whose lock nobody holds) are removed at open;
//! [`RootfsCache::check`] reports (and repairs) everything else the cache relies on.
//! Bucket `v1` (gantry before diff_id verification) is never used: its trees were not verified;
//! [`RootfsCache::prune`] (gantry gc) removes it, like any older bucket.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_oci::Digest;
use rustix::fd::AsFd;

use crate::fsops::{list_dir, open_dir_path, remove_any};
use crate::unpack::{ImageLayer, ROOTFS};
use crate::{Error, Result, UnpackOptions};

/// The bucket version: bumped when the layout or the meaning of a cached rootfs changes.
const BUCKET: &str = "v2";
const TMP_PREFIX: &str = "tmp-";
const LOCK_SUFFIX: &str = ".lock";
/// The record of the diff_ids an entry was verified against.
const DIFF_IDS: &str = "diff_ids";
/// The largest `diff_ids` record read (thousands of layers).
const MAX_DIFF_IDS: u64 = 1 << 20;

/// The chain id of a stack of layers (image-spec `config.md`): `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0|…|Ln) = sha256(ChainID(L0|…|Ln-1) + " " + DiffID(Ln))`. An image without
/// layers (for which the spec defines none) gets the sha256 of the empty string, the key of
/// an empty rootfs.
pub fn chain_id(diff_ids: &[Digest]) -> Digest {
    let mut it = diff_ids.iter();
    let Some(first) = it.next() else {
        return Digest::sha256(b"");
    };
    let mut chain = first.clone();
    for d in it {
        chain = Digest::sha256(format!("{chain} {d}").as_bytes());
    }
    chain
}

/// A directory of unpacked rootfs trees keyed by chain id, shared by concurrent threads and
/// processes.
#[derive(Debug, Clone)]
pub struct RootfsCache {
    dir: PathBuf,
}

/// Something [`RootfsCache::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheIssue {
    /// The entry at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
    /// Whether it was repaired.
    pub repaired: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The entry name of a chain id.
fn key(chain_id: &Digest) -> String {
    format!("{}-{}", chain_id.algorithm(), chain_id.hex())
}

/// The chain id an entry name stands for.
fn chain_of_key(key: &str) -> Option<Digest> {
    let (alg, hex) = key.split_once('-')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// The `diff_ids` record of an entry.
fn read_diff_ids(entry: &Path) -> std::result::Result<Vec<Digest>, String> {
    let path = entry.join(DIFF_IDS);
    let mut text = String::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_DIFF_IDS).read_to_string(&mut text))
        .map_err(|e| format!("cannot read its {DIFF_IDS} record: {e}"))?;
    text.lines()
        .map(|l| Digest::parse(l).map_err(|e| format!("its {DIFF_IDS} record is invalid: {e}")))
        .collect()
}

/// What is wrong with a complete-looking entry `dir` named `key`, if anything: its rootfs
/// must be a directory and its recorded diff_ids must chain to its name.
fn entry_problem(dir: &Path, key: &str) -> Option<String> {
    let Some(chain) = chain_of_key(key) else {
        return Some("its name is not a chain id".to_owned());
    };
    match std::fs::symlink_metadata(dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Some("it is not a directory".to_owned()),
        Err(e) => return Some(format!("cannot stat it: {e}")),
    }
    match std::fs::symlink_metadata(dir.join(ROOTFS)) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Some(format!("its {ROOTFS} is not a directory")),
        Err(_) => return Some(format!("it has no {ROOTFS}")),
    }
    let diff_ids = match read_diff_ids(dir) {
        Ok(d) => d,
        Err(e) => return Some(e),
    };
    let actual = crate::chain_id(&diff_ids);
    if actual != chain {
        return Some(format!(
            "its recorded diff_ids chain to {actual}, not to its name"
        ));
    }
    let extra: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ROOTFS && n != DIFF_IDS)
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() {
        return Some(format!("it holds unexpected entries: {}", extra.join(", ")));
    }
    None
}

impl RootfsCache {
    /// Opens (creating, mode 0700) the cache in `dir` and removes what crashed runs left:
    /// temp directories whose lock no live process holds.
    pub fn open(dir: &Path) -> Result<Self> {
        let bucket = dir.join(BUCKET);
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(&bucket).map_err(io_err("create", &bucket))?;
        for d in [dir, &bucket] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("chmod", d))?;
        }
        let cache = RootfsCache { dir: bucket };
        cache.clean()?;
        Ok(cache)
    }

    /// The versioned directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rootfs of the image with these `diff_ids` if it is cached.
    pub fn get(&self, diff_ids: &[Digest]) -> Option<PathBuf> {
        let k = key(&chain_id(diff_ids));
        let entry = self.dir.join(&k);
        entry_problem(&entry, &k)
            .is_none()
            .then(|| entry.join(ROOTFS))
    }

    /// The rootfs of the image whose layers have `diff_ids`, unpacked on first use from the
    /// layers `layers` returns (called only then; one per diff_id, in order). Each layer must
    /// decompress to its diff_id: the tree is unpacked into a temp directory, verified, synced,
    /// then renamed into place under the chain id of `diff_ids`, so a cached rootfs is always
    /// complete and what those diff_ids say. Concurrent callers for the same chain id (threads
    /// or processes) wait for the one that unpacks, then share its result.
    pub fn get_or_unpack<F>(
        &self,
        diff_ids: &[Digest],
        layers: F,
        opts: &UnpackOptions,
    ) -> Result<PathBuf>
    where
        F: FnOnce() -> Result<Vec<(String, Box<dyn Read>)>>,
    {
        let digest = chain_id(diff_ids);
        let key = key(&digest);
        let entry = self.dir.join(&key);
        let rootfs = entry.join(ROOTFS);
        if entry_problem(&entry, &key).is_none() {
            self.touch(&key);
            return Ok(rootfs);
        }
        let lock_path = self.dir.join(format!("{key}{LOCK_SUFFIX}"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        match entry_problem(&entry, &key) {
            None => {
                tracing::debug!(%digest, "rootfs unpacked by another caller");
                return Ok(rootfs);
            }
            Some(problem) if entry.symlink_metadata().is_ok() => {
                tracing::warn!(path = %entry.display(), %problem, "replacing a broken rootfs cache entry");
                let dir = open_dir_path(&self.dir).map_err(io_err("open", &self.dir))?;
                remove_any(dir.as_fd(), key.as_bytes()).map_err(io_err("remove", &entry))?;
            }
            Some(_) => {}
        }
        let (tmp, tmp_lock_path, tmp_lock) = self.new_temp()?;
        let result = self.fill(&tmp, &entry, diff_ids, layers, opts);
        if result.is_err() {
            self.discard(&tmp);
        }
        // The temp lock goes only once the temp dir is gone (renamed or removed).
        let _ = std::fs::remove_file(&tmp_lock_path);
        drop(tmp_lock);
        drop(lock);
        result?;
        Ok(rootfs)
    }

    fn fill<F>(
        &self,
        tmp: &Path,
        dest: &Path,
        diff_ids: &[Digest],
        layers: F,
        opts: &UnpackOptions,
    ) -> Result<()>
    where
        F: FnOnce() -> Result<Vec<(String, Box<dyn Read>)>>,
    {
        let root = tmp.join(ROOTFS);
        let layers = layers()?;
        if layers.len() != diff_ids.len() {
            return Err(Error::LayerCount {
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let layers = layers
            .into_iter()
            .zip(diff_ids)
            .map(|((label, blob), diff_id)| ImageLayer {
                label,
                diff_id: diff_id.clone(),
                blob,
            });
        crate::unpack::unpack_into(&root, layers, opts)?;
        let record: String = diff_ids.iter().map(|d| format!("{d}\n")).collect();
        let record_path = tmp.join(DIFF_IDS);
        std::fs::write(&record_path, record).map_err(io_err("write", &record_path))?;
        // Durable before it becomes visible: a crash must not leave a half-written rootfs
        // under its final name.
        let fd = open_dir_path(&root).map_err(io_err("open", &root))?;
        rustix::fs::syncfs(&fd).map_err(|e| Error::Io {
            op: "sync",
            path: root.clone(),
            source: e.into(),
        })?;
        std::fs::rename(tmp, dest).map_err(io_err("rename into place", dest))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Creates `tmp-<unique>.lock` (locked: the lock lives as long as the returned file) and
    /// then `tmp-<unique>/`.
    fn new_temp(&self) -> Result<(PathBuf, PathBuf, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                "{TMP_PREFIX}{}-{}-{nanos:x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let lock_path = self.dir.join(format!("{name}{LOCK_SUFFIX}"));
            let lock = match OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&lock_path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &lock_path)(e)),
            };
            lock.lock().map_err(io_err("lock", &lock_path))?;
            let tmp = self.dir.join(&name);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(io_err("create", &tmp))?;
            return Ok((tmp, lock_path, lock));
        }
    }

    /// Records a use of entry `key` (the mtime of its lock file), for [`RootfsCache::prune`].
    fn touch(&self, key: &str) {
        let lock_path = self.dir.join(format!("{key}{LOCK_SUFFIX}"));
        if let Ok(f) = OpenOptions::new().write(true).open(&lock_path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Removes the entries not used for `unused_for` (by the mtime of their lock file, which
    /// each use refreshes) and returns how many there were; with `dry_run`, only counts them.
    /// An entry being unpacked (its lock held) is left alone.
    pub fn prune(&self, unused_for: std::time::Duration, dry_run: bool) -> Result<usize> {
        let now = std::time::SystemTime::now();
        let dir = open_dir_path(&self.dir).map_err(io_err("open", &self.dir))?;
        let names = list_dir(dir.as_fd()).map_err(io_err("list", &self.dir))?;
        let mut pruned = 0;
        for (name, _) in names {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let Some(key) = name.strip_suffix(LOCK_SUFFIX) else {
                continue;
            };
            let lock_path = self.dir.join(&name);
            let Ok(lock) = OpenOptions::new().write(true).open(&lock_path) else {
                continue;
            };
            let last_used = lock.metadata().and_then(|m| m.modified());
            let Ok(last_used) = last_used else { continue };
            if now.duration_since(last_used).unwrap_or_default() <= unused_for {
                continue;
            }
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
            }
            pruned += 1;
            if dry_run {
                continue;
            }
            let entry = self.dir.join(key);
            remove_any(dir.as_fd(), key.as_bytes()).map_err(io_err("remove", &entry))?;
            let _ = std::fs::remove_file(&lock_path);
            tracing::debug!(path = %entry.display(), "pruned an unused rootfs");
        }
        pruned += self.prune_old_buckets(dry_run)?;
        Ok(pruned)
    }

    /// Removes the buckets of older cache versions (`v1` beside `v2`): nothing reads them any
    /// more. Counted as one pruned entry each.
    fn prune_old_buckets(&self, dry_run: bool) -> Result<usize> {
        let Some(parent) = self.dir.parent() else {
            return Ok(0);
        };
        let top = open_dir_path(parent).map_err(io_err("open", parent))?;
        let mut pruned = 0;
        for (name, _) in list_dir(top.as_fd()).map_err(io_err("list", parent))? {
            let old_bucket = name.len() > 1
                && name[0] == b'v'
                && name[1..].iter().all(u8::is_ascii_digit)
                && name != BUCKET.as_bytes();
            if !old_bucket {
                continue;
            }
            pruned += 1;
            let path = parent.join(String::from_utf8_lossy(&name).as_ref());
            if !dry_run {
                remove_any(top.as_fd(), &name).map_err(io_err("remove", &path))?;
                tracing::debug!(path = %path.display(), "removed an old rootfs cache bucket");
            }
        }
        Ok(pruned)
    }

    fn discard(&self, tmp: &Path) {
        let Some(name) = tmp.file_name() else { return };
        if let Ok(dir) = open_dir_path(&self.dir)
            && let Err(e) = remove_any(dir.as_fd(), name.as_encoded_bytes())
        {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a temp rootfs");
        }
    }

    /// Removes temp dirs and temp locks of dead runs.
    fn clean(&self) -> Result<()> {
        let dir = open_dir_path(&self.dir).map_err(io_err("open", &self.dir))?;
        let names = list_dir(dir.as_fd()).map_err(io_err("list", &self.dir))?;
        for (name, _) in names {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            let (tmp_name, lock_name) = match rest.strip_suffix(LOCK_SUFFIX) {
                Some(base) => (format!("{TMP_PREFIX}{base}"), name.clone()),
                None => (name.clone(), format!("{name}{LOCK_SUFFIX}")),
            };
            let lock_path = self.dir.join(&lock_name);
            let lock = match OpenOptions::new().write(true).open(&lock_path) {
                Ok(f) => match f.try_lock() {
                    Ok(()) => Some(f),
                    // A live process is unpacking there.
                    Err(TryLockError::WouldBlock) => continue,
                    Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
                },
                // The lock is made before the dir and removed after it: a dir without one
                // belongs to nobody.
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("open", &lock_path)(e)),
            };
            let tmp_path = self.dir.join(&tmp_name);
            match remove_any(dir.as_fd(), tmp_name.as_bytes()) {
                Ok(true) => {
                    tracing::info!(path = %tmp_path.display(), "removed an incomplete rootfs left by a crashed run")
                }
                Ok(false) => {}
                Err(e) => return Err(io_err("remove", &tmp_path)(e)),
            }
            if lock.is_some() {
                let _ = std::fs::remove_file(&lock_path);
            }
        }
        Ok(())
    }

    /// Checks the cache in `dir` (as given to [`RootfsCache::open`]) without changing it, or
    /// with `repair`, fixing what it can: the directories must be private (0700) and owned by
    /// the caller, the only bucket the current one; every entry must be named by a chain id,
    /// hold a `rootfs` directory and a `diff_ids` record that chains to its name, and have a
    /// lock file (gc prunes by them); temp directories and locks must belong to live runs.
    /// Broken entries, old buckets and leftovers are removed, modes fixed, missing locks made.
    /// A missing cache is fine (nothing has been unpacked yet).
    pub fn check(dir: &Path, repair: bool) -> Result<Vec<CacheIssue>> {
        let mut issues = Vec::new();
        if std::fs::symlink_metadata(dir).is_err() {
            return Ok(issues);
        }
        let mut found = |path: &Path, problem: String, repaired: bool| {
            issues.push(CacheIssue {
                path: path.to_owned(),
                problem,
                repaired,
            });
        };
        let bucket = dir.join(BUCKET);
        for d in [dir, &bucket] {
            let Ok(md) = std::fs::symlink_metadata(d) else {
                continue;
            };
            if !md.is_dir() {
                // Nothing under it can be trusted; open() would fail on it.
                let fixed = repair && std::fs::remove_file(d).is_ok();
                found(d, "it is not a directory".to_owned(), fixed);
                continue;
            }
            if md.uid() != rustix::process::geteuid().as_raw() {
                found(
                    d,
                    format!("it is owned by uid {}, not by this user", md.uid()),
                    false,
                );
            }
            if md.mode() & 0o077 != 0 {
                let fixed = repair
                    && std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).is_ok();
                found(
                    d,
                    format!(
                        "mode {:04o} lets other users in (0700 expected)",
                        md.mode() & 0o7777
                    ),
                    fixed,
                );
            }
        }
        let remove = |parent: &Path, name: &str| -> bool {
            open_dir_path(parent)
                .and_then(|fd| remove_any(fd.as_fd(), name.as_bytes()))
                .is_ok()
        };
        let Ok(top) = open_dir_path(dir) else {
            return Ok(issues);
        };
        for (name, _) in list_dir(top.as_fd()).map_err(io_err("list", dir))? {
            let shown = String::from_utf8_lossy(&name).into_owned();
            if shown == BUCKET {
                continue;
            }
            let fixed = repair && remove(dir, &shown);
            found(
                &dir.join(&shown),
                "not part of this version's cache (an older bucket or a stray file)".to_owned(),
                fixed,
            );
        }
        let Ok(fd) = open_dir_path(&bucket) else {
            return Ok(issues);
        };
        let names: Vec<String> = list_dir(fd.as_fd())
            .map_err(io_err("list", &bucket))?
            .into_iter()
            .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
            .collect();
        for name in &names {
            let path = bucket.join(name);
            if let Some(rest) = name.strip_prefix(TMP_PREFIX) {
                // A temp dir or its lock: a leftover unless the lock is held.
                let lock_name = match rest.strip_suffix(LOCK_SUFFIX) {
                    Some(_) => name.clone(),
                    None => format!("{name}{LOCK_SUFFIX}"),
                };
                let held = OpenOptions::new()
                    .write(true)
                    .open(bucket.join(&lock_name))
                    .is_ok_and(|f| matches!(f.try_lock(), Err(TryLockError::WouldBlock)));
                if !held {
                    let fixed = repair && remove(&bucket, name);
                    found(&path, "left by a crashed unpack".to_owned(), fixed);
                }
                continue;
            }
            if let Some(key) = name.strip_suffix(LOCK_SUFFIX) {
                // A lock without its entry is normal (a failed or pruned unpack).
                let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
                if chain_of_key(key).is_none() || !is_file {
                    let fixed = repair && remove(&bucket, name);
                    found(&path, "a stray lock file".to_owned(), fixed);
                }
                continue;
            }
            if chain_of_key(name).is_none() {
                let fixed = repair && remove(&bucket, name);
                found(
                    &path,
                    "not a cache entry: its name is not a chain id".to_owned(),
                    fixed,
                );
                continue;
            }
            let lock_path = bucket.join(format!("{name}{LOCK_SUFFIX}"));
            if let Some(problem) = entry_problem(&path, name) {
                // Never remove an entry someone is unpacking or replacing right now.
                let lock = OpenOptions::new().write(true).open(&lock_path);
                let free = lock.as_ref().is_ok_and(|f| f.try_lock().is_ok());
                let fixed = repair && (free || lock.is_err()) && remove(&bucket, name);
                found(&path, format!("a broken entry: {problem}"), fixed);
                continue;
            }
            if !lock_path.is_file() {
                let fixed = repair && File::create(&lock_path).is_ok();
                found(
                    &path,
                    format!("it has no {LOCK_SUFFIX} file, so gc would never prune it"),
                    fixed,
                );
            }
        }
        Ok(issues)
    }
}
