//! The stat cache: a file's sha256 without reading it, when nothing about the file changed.
//!
//! An entry maps a path to the [`StatKey`] (device, inode, size, mtime and ctime in
//! nanoseconds) the file had when it was hashed, and to its digest. A lookup hits only when
//! the caller's key equals the recorded one exactly; anything else rehashes. Since the kernel
//! sets ctime on every change to an inode and userspace cannot set it, a file whose key is
//! unchanged has unchanged content, with one exception that the *racy* rule removes: a change
//! within the filesystem's timestamp granularity of the hash leaves the key as it was. Like
//! git's racy-index check, an entry is therefore only recorded when the file's mtime and ctime
//! are both at least [`RACY_WINDOW`] older than the moment hashing started (2 s covers every
//! filesystem's granularity, FAT's included). ctime counts as well as mtime because mtime can
//! be set to any past value (`cp -p`, `tar x`, `touch -d`), which would otherwise let a file
//! rewritten twice within one timestamp tick keep its key.
//!
//! # Files
//!
//! One file per scope (a project directory) in `$GANTRY_HOME/stat-v1/`, named by the hex
//! sha256 of the scope's absolute path; `<name>.lock` next to it serialises saves. Temp files
//! are `.tmp-*`. Deleting the directory at any time only costs rehashing.
//!
//! ```text
//! header   magic "gntstat\0" (8 bytes), version u32 (= 1), entry count u32
//! entries  sorted by path bytes, strictly increasing:
//!            path_len u32, then the path's bytes
//!            dev u64, ino u64, size u64, mtime_ns i64, ctime_ns i64
//!            digest   32 bytes (raw sha256)
//!            day      u32   day (since 1970-01-01, UTC) the entry was last used
//! trailer  checksum u64 of everything before it (see `checksum`)
//! ```
//!
//! Integers are little-endian. A file that is missing, truncated, of another version, fails
//! its checksum, or breaks any rule above (lengths, order, trailing bytes) loads as an empty
//! cache; reads are capped at [`MAX_FILE_SIZE`] and nothing is allocated beyond what the file's
//! real size allows, whatever its counts say.
//!
//! Loading keeps the file's bytes as they are and indexes them (one `u32` offset per entry):
//! no allocation per entry. Lookups check the entry after the previous hit first, since
//! callers walk their files in path order, and binary-search otherwise; once a quarter of
//! the entries were looked up out of order, a hash index is built. Entries this run records
//! or invalidates live in a small overlay map.
//!
//! # Saving
//!
//! [`StatCache::save`] writes only when something changed, under the scope's lock: it re-reads
//! the file (unless it is still the one loaded), keeps the entries of paths this run did not
//! look up, replaces those it did with its own, and renames a fsynced temp file over it. An
//! entry unused for [`STALE_DAYS`] days is dropped; a hit refreshes an entry's day at most once
//! a day, so a no-op build normally writes nothing.
//!
//! # Measurements
//!
//! `cargo test -p gantry-cache --release -- --ignored --nocapture bench_54k` builds a tree of
//! 54,000 files (paths of about 95 bytes) and times load, lookups and save. On the 2-core
//! development VM: a 9.7 MB file (179 bytes an entry); load 6–11 ms; 54,000 hits in path
//! order 8–14 ms (out of order 50–90 ms); a no-op save writes nothing; a save after changes
//! 40–100 ms, most of it the fsync. The caller's own `lstat` of those files took 150–210 ms.

mod format;
mod hash;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_oci::{Algorithm, Digest};

use self::format::{
    MAX_PATH_LEN, Record, Table, digest_from_raw, encode, raw_sha256, read_cache_file,
};
pub use self::hash::hash_file;
use self::hash::{HookRef, hash_with, io_error};
use crate::fsutil::{ensure_dir, replace_file};
use crate::{Error, Result};

/// The stat cache's bucket under the store root.
pub const STAT_BUCKET: &str = "stat-v1";
/// How much older than the start of hashing a file's mtime and ctime must be for its digest
/// to be recorded.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Entries unused for this many days are dropped when the cache is saved.
pub const STALE_DAYS: u32 = 30;
/// Cap on a stat cache file (well over a million entries of typical paths).
pub const MAX_FILE_SIZE: u64 = 256 << 20;

/// What the stat cache compares to decide that a file is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    /// Device of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch (saturating).
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch (saturating).
    pub ctime_ns: i64,
}

impl StatKey {
    /// The key of a file's metadata. Pass the metadata of the file that opening the path
    /// reaches (`fs::metadata`, or `fs::symlink_metadata` of a path that is not a symlink).
    pub fn of(meta: &fs::Metadata) -> StatKey {
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether a timestamp did not fit and was saturated (such a file is never recorded, since
    /// two different times would share the saturated value).
    fn saturated(&self) -> bool {
        [self.mtime_ns, self.ctime_ns]
            .iter()
            .any(|&t| t == i64::MIN || t == i64::MAX)
    }
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Identity of the cache file as loaded, to skip re-reading it at save time.
type FileId = Option<StatKey>;

/// Called after every read while hashing, so tests can change a file under the reader.
#[cfg(test)]
type ReadHook = Box<dyn FnMut(&Path) + Send + Sync>;

/// The stat cache of one scope. See the module documentation.
pub struct StatCache {
    scope: PathBuf,
    bucket: PathBuf,
    file: PathBuf,
    lock: PathBuf,
    /// The entries loaded.
    base: Table,
    /// Which loaded entries this run looked up; those override what other processes saved.
    touched: Vec<bool>,
    /// Paths this run hashed: the new entry, or `None` when the file was racy, changed or
    /// gone. Shadows `base`; every path in it counts as looked up.
    overlay: HashMap<Box<[u8]>, Option<Record>>,
    /// The loaded entry after the last one found.
    hint: usize,
    loaded_from: FileId,
    dirty: bool,
    today: u32,
    hits: u64,
    misses: u64,
    buf: Vec<u8>,
    racy_window_ns: i64,
    #[cfg(test)]
    read_hook: Option<ReadHook>,
}

impl fmt::Debug for StatCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatCache")
            .field("scope", &self.scope)
            .field("file", &self.file)
            .field("loaded", &self.base.len())
            .field("hashed", &self.overlay.len())
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish_non_exhaustive()
    }
}

impl StatCache {
    /// Loads the cache of `scope` (a project directory, made absolute) from the store at
    /// `store_root`. Never fails: a missing or damaged file gives an empty cache (logged at
    /// debug level).
    pub fn load(store_root: &Path, scope: &Path) -> StatCache {
        // Components drop `.` and trailing slashes, so spellings of one directory agree
        // (symlinks are not resolved).
        let scope: PathBuf = std::path::absolute(scope)
            .unwrap_or_else(|_| scope.to_owned())
            .components()
            .collect();
        let bucket = store_root.join(STAT_BUCKET);
        let name = Digest::sha256(scope.as_os_str().as_bytes())
            .hex()
            .to_owned();
        let file = bucket.join(&name);
        let lock = bucket.join(format!("{name}.lock"));
        let (loaded_from, base) = read_cache_file(&file);
        tracing::debug!(
            scope = %scope.display(),
            file = %file.display(),
            entries = base.len(),
            "loaded stat cache"
        );
        StatCache {
            scope,
            bucket,
            file,
            lock,
            touched: vec![false; base.len()],
            base,
            overlay: HashMap::new(),
            hint: 0,
            loaded_from,
            dirty: false,
            today: today(),
            hits: 0,
            misses: 0,
            buf: Vec::new(),
            racy_window_ns: i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX),
            #[cfg(test)]
            read_hook: None,
        }
    }

    /// The sha256 of the regular file at `path`, whose metadata the caller read as `key`.
    ///
    /// A hit (an entry for `path` with exactly `key`) does not touch the file. Otherwise the
    /// file is hashed and the entry recorded, unless the file is racy (see the module
    /// documentation). Errors name the path; if the file's metadata differs from `key` when
    /// opened or after hashing, or `path` names another file by then, the error (of kind
    /// `Other`, wrapping [`Error::ChangedWhileReading`]) says the file changed while being
    /// read. A path that does not lead to a regular file is an `InvalidInput` error wrapping
    /// [`Error::NotAFile`].
    ///
    /// Lookups are fastest in path-byte order, the order of the cache file.
    pub fn digest(&mut self, path: &Path, key: StatKey) -> io::Result<Digest> {
        if let Some(d) = self.lookup(path, key) {
            return Ok(d);
        }
        let started = SystemTime::now();
        #[cfg(test)]
        let mut hook: HookRef<'_> = self
            .read_hook
            .as_deref_mut()
            .map(|h| h as &mut (dyn FnMut(&Path) + Send + Sync));
        #[cfg(not(test))]
        let mut hook: HookRef<'_> = None;
        let result = hash_with(path, key, Algorithm::Sha256, &mut self.buf, &mut hook);
        match &result {
            Ok(d) => self.record(path, key, d, started),
            Err(_) => self.forget(path),
        }
        result
    }

    /// The digest of `path` if the cache has an entry with exactly `key` (a hit); `None`
    /// otherwise, without touching the file. For callers that hash misses themselves (in
    /// parallel, outside a lock) and then [`Self::record`] them.
    pub fn lookup(&mut self, path: &Path, key: StatKey) -> Option<Digest> {
        let name = path.as_os_str().as_bytes();
        match self.overlay.get(name) {
            Some(Some(record)) if record.key == key => {
                self.hits += 1;
                return Some(digest_from_raw(&record.digest));
            }
            Some(_) => return None,
            None => {}
        }
        let i = self.base.find(name, self.hint)?;
        self.hint = i + 1;
        self.touched[i] = true;
        let record = self.base.record(i);
        if record.key != key {
            return None;
        }
        self.hits += 1;
        // Refreshed at save time, so at most one rewrite a day.
        self.dirty |= record.day != self.today;
        Some(digest_from_raw(&record.digest))
    }

    /// Records that `path`, in the state `key`, hashed to `digest` when hashing began at
    /// `hashed_at` (from [`hash_file`]); counts a miss. A racy file (see the module
    /// documentation) is not recorded, and any outdated entry for it is dropped.
    pub fn record(&mut self, path: &Path, key: StatKey, digest: &Digest, hashed_at: SystemTime) {
        self.misses += 1;
        let name = path.as_os_str().as_bytes();
        let record =
            (!self.is_racy(&key, hashed_at) && name.len() <= MAX_PATH_LEN).then(|| Record {
                key,
                digest: raw_sha256(digest),
                day: self.today,
            });
        self.set(name, record);
    }

    fn forget(&mut self, path: &Path) {
        self.misses += 1;
        self.set(path.as_os_str().as_bytes(), None);
    }

    /// Stores `record` for `name` in the overlay when it records something or hides an
    /// outdated entry.
    fn set(&mut self, name: &[u8], record: Option<Record>) {
        let had_entry = self.overlay.get(name).is_some_and(Option::is_some)
            || self.base.search(name).is_some_and(|i| {
                self.touched[i] = true;
                true
            });
        if record.is_some() || had_entry {
            self.dirty = true;
            self.overlay.insert(name.into(), record);
        }
    }

    /// Whether the file at `path` has the content `expected`, checked through [`Self::digest`]
    /// with the file's current metadata: cheap for unchanged read-only files such as store
    /// blobs, where any write changes ctime and forces a rehash. Digests of other algorithms
    /// than sha256 are computed every time. `Ok(false)` on a mismatch.
    pub fn verify(&mut self, path: &Path, expected: &Digest) -> io::Result<bool> {
        let meta = fs::metadata(path).map_err(|e| io_error("stat", path, e))?;
        let key = StatKey::of(&meta);
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => self.digest(path, key)?,
            other => {
                self.misses += 1;
                hash_with(path, key, other, &mut self.buf, &mut None)?
            }
        };
        Ok(actual == *expected)
    }

    /// Writes the cache back if anything changed, merging with what other processes saved
    /// since it was loaded (see the module documentation).
    pub fn save(&self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        ensure_dir(&self.bucket)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| Error::io("open lock file", &self.lock, e))?;
        lock.lock().map_err(|e| Error::io("lock", &self.lock, e))?;

        let current = fs::metadata(&self.file).ok().map(|m| StatKey::of(&m));
        let disk = (current != self.loaded_from).then(|| read_cache_file(&self.file).1);
        let merged = self.merge(disk.as_ref());
        let bytes = encode(&merged);
        replace_file(&self.bucket, &self.file, &bytes)?;
        tracing::debug!(
            file = %self.file.display(),
            entries = merged.len(),
            bytes = bytes.len(),
            merged = disk.is_some(),
            "saved stat cache"
        );
        drop(lock);
        Ok(())
    }

    /// The entries to save, sorted by path: the looked-up paths' entries from this run;
    /// for the other paths, the entries of `disk` (the file as another process saved it) or,
    /// if the file did not change since it was loaded, the loaded ones. Unused entries older
    /// than [`STALE_DAYS`] are dropped.
    fn merge<'a>(&'a self, disk: Option<&'a Table>) -> Vec<(&'a [u8], Record)> {
        // This run's view, in path order, with whether each path was looked up.
        let mut ours: Vec<(&[u8], Record, bool)> = Vec::with_capacity(self.base.len());
        for i in 0..self.base.len() {
            let path = self.base.path(i);
            if !self.overlay.contains_key(path) {
                let mut record = self.base.record(i);
                if self.touched[i] {
                    record.day = self.today;
                }
                ours.push((path, record, self.touched[i]));
            }
        }
        if !self.overlay.is_empty() {
            for (path, record) in &self.overlay {
                if let Some(record) = record {
                    ours.push((path, *record, true));
                }
            }
            ours.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }

        let fresh = |record: &Record| record.day.saturating_add(STALE_DAYS) >= self.today;
        let Some(disk) = disk else {
            return ours
                .into_iter()
                .filter(|(_, record, looked_up)| *looked_up || fresh(record))
                .map(|(path, record, _)| (path, record))
                .collect();
        };

        let mut merged = Vec::with_capacity(ours.len().max(disk.len()));
        let (mut a, mut b) = (ours.into_iter().peekable(), 0..disk.len());
        let mut next_disk = b.next();
        loop {
            let order = match (a.peek(), next_disk) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(ours), Some(j)) => ours.0.cmp(disk.path(j)),
            };
            match order {
                Ordering::Less => {
                    // Only ours: an entry the other process dropped, kept if we used it.
                    let (path, record, looked_up) = a.next().expect("peeked");
                    if looked_up {
                        merged.push((path, record));
                    }
                }
                Ordering::Greater => {
                    let j = next_disk.expect("compared");
                    let (path, record) = (disk.path(j), disk.record(j));
                    // A path we found outdated and could not record is dropped.
                    let invalidated = self.overlay.get(path).is_some_and(Option::is_none);
                    if !invalidated && fresh(&record) {
                        merged.push((path, record));
                    }
                    next_disk = b.next();
                }
                Ordering::Equal => {
                    let (path, record, looked_up) = a.next().expect("peeked");
                    let j = next_disk.expect("compared");
                    if looked_up {
                        merged.push((path, record));
                    } else if fresh(&disk.record(j)) {
                        merged.push((path, disk.record(j)));
                    }
                    next_disk = b.next();
                }
            }
        }
        merged
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that hashed the file (including racy files and failures).
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Number of entries in memory (loaded and not invalidated, plus recorded).
    pub fn len(&self) -> usize {
        let shadowed = self
            .overlay
            .keys()
            .filter(|p| self.base.search(p).is_some())
            .count();
        let recorded = self.overlay.values().filter(|r| r.is_some()).count();
        self.base.len() - shadowed + recorded
    }

    /// Whether no entry is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scope's cache file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether a file with `key` may still change without its key changing, judged against
    /// the moment hashing started.
    fn is_racy(&self, key: &StatKey, started: SystemTime) -> bool {
        let Ok(since_epoch) = started.duration_since(UNIX_EPOCH) else {
            return true;
        };
        let started_ns = i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX);
        let limit = started_ns.saturating_sub(self.racy_window_ns);
        key.saturated() || key.mtime_ns.max(key.ctime_ns) > limit
    }

    /// The entry `path` would be saved with, if any (for tests).
    #[cfg(test)]
    fn record_of(&self, path: &Path) -> Option<Record> {
        let name = path.as_os_str().as_bytes();
        match self.overlay.get(name) {
            Some(record) => *record,
            None => self.base.search(name).map(|i| self.base.record(i)),
        }
    }
}

/// Days since the epoch, now.
fn today() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u32::try_from(d.as_secs() / 86_400).unwrap_or(u32::MAX)
    })
}

#[cfg(test)]
mod tests;
