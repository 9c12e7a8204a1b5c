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

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_oci::{Algorithm, Digest, Hasher};

use crate::fsutil::{ensure_dir, read_capped, replace_file};
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

const MAGIC: [u8; 8] = *b"gntstat\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const CHECKSUM_LEN: usize = 8;
/// Bytes of an entry after its path.
const RECORD_LEN: usize = 5 * 8 + 32 + 4;
/// Bytes of an entry besides its path.
const ENTRY_FIXED_LEN: usize = 4 + RECORD_LEN;
/// Longest path recorded (longer ones are hashed every time; Linux cannot open them anyway).
const MAX_PATH_LEN: usize = 64 << 10;
/// Read buffer for hashing.
const HASH_BUFFER: usize = 256 << 10;

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

/// A recorded digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    key: StatKey,
    digest: [u8; 32],
    /// Day the entry was last used.
    day: u32,
}

/// A loaded cache file: its bytes, validated, and the offsets of its entries in path order.
#[derive(Default)]
struct Table {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// Lookups that missed their hint; after a quarter of `len()`, `index` is built.
    searches: usize,
    /// Open-addressing hash index of the paths, for callers that do not look paths up in
    /// order: (entry index + 1, offset), with 0 marking an empty slot; the offset saves a
    /// random memory access per lookup. Empty until built.
    index: Vec<(u32, u32)>,
    hasher: RandomState,
}

impl Table {
    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// The path of entry `i`.
    fn path(&self, i: usize) -> &[u8] {
        self.path_at(self.offsets[i] as usize)
    }

    /// The path of the entry at byte offset `off`.
    fn path_at(&self, off: usize) -> &[u8] {
        let len = le_u32(&self.bytes[off..]) as usize;
        &self.bytes[off + 4..off + 4 + len]
    }

    /// The record of entry `i`.
    fn record(&self, i: usize) -> Record {
        let off = self.offsets[i] as usize;
        let len = le_u32(&self.bytes[off..]) as usize;
        let r = &self.bytes[off + 4 + len..off + ENTRY_FIXED_LEN + len];
        Record {
            key: StatKey {
                dev: le_u64(&r[0..]),
                ino: le_u64(&r[8..]),
                size: le_u64(&r[16..]),
                mtime_ns: le_u64(&r[24..]) as i64,
                ctime_ns: le_u64(&r[32..]) as i64,
            },
            digest: r[40..72].try_into().expect("32 bytes"),
            day: le_u32(&r[72..]),
        }
    }

    /// The index of `path`, trying `hint` first (callers mostly walk paths in order), then
    /// the hash index if built, else a binary search; builds the hash index once lookups
    /// out of order become common.
    fn find(&mut self, path: &[u8], hint: usize) -> Option<usize> {
        if self.offsets.is_empty() {
            return None;
        }
        if hint < self.len() && self.path(hint) == path {
            return Some(hint);
        }
        if self.index.is_empty() {
            self.searches += 1;
            // Building costs about as much as len / 5 binary searches (hashing every path):
            // build once the searches have cost about as much, at most twice the best choice.
            if self.searches > self.len() / 4 {
                self.build_index();
            }
        }
        self.search(path)
    }

    /// The index of `path`.
    fn search(&self, path: &[u8]) -> Option<usize> {
        if self.index.is_empty() {
            return self
                .offsets
                .binary_search_by(|&off| self.path_at(off as usize).cmp(path))
                .ok();
        }
        let mask = self.index.len() - 1;
        let mut slot = self.hasher.hash_one(path) as usize & mask;
        loop {
            match self.index[slot] {
                (0, _) => return None,
                (n, off) if self.path_at(off as usize) == path => return Some(n as usize - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Builds the hash index: a power-of-two table at most half full, linear probing.
    fn build_index(&mut self) {
        let mut index = vec![(0u32, 0u32); (self.len() * 2).next_power_of_two().max(2)];
        let mask = index.len() - 1;
        for i in 0..self.len() {
            let mut slot = self.hasher.hash_one(self.path(i)) as usize & mask;
            while index[slot].0 != 0 {
                slot = (slot + 1) & mask;
            }
            // Tables have fewer than 2^32 - 1 entries: files are capped far below 4 GiB.
            index[slot] = (i as u32 + 1, self.offsets[i]);
        }
        self.index = index;
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
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

/// Hashes the regular file at `path` (sha256), checking that it is in the state `key` before
/// and after: if not, the error (of kind `Other`, wrapping [`Error::ChangedWhileReading`])
/// says the file changed while being read. A path that does not lead to a regular file is an
/// `InvalidInput` error wrapping [`Error::NotAFile`].
pub fn hash_file(path: &Path, key: StatKey) -> io::Result<Digest> {
    hash_with(path, key, Algorithm::Sha256, &mut Vec::new(), &mut None)
}

/// A hook called after every read while hashing (tests change files mid-read with it).
type HookRef<'a> = Option<&'a mut (dyn FnMut(&Path) + Send + Sync)>;

fn hash_with(
    path: &Path,
    key: StatKey,
    algorithm: Algorithm,
    buf: &mut Vec<u8>,
    hook: &mut HookRef<'_>,
) -> io::Result<Digest> {
    // O_NONBLOCK: opening a FIFO must not hang; reads of regular files ignore the flag.
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    let meta = file.metadata().map_err(|e| io_error("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        }
        .into_io(io::ErrorKind::InvalidInput));
    }
    if StatKey::of(&meta) != key {
        return Err(changed(path));
    }
    if buf.is_empty() {
        *buf = vec![0; HASH_BUFFER];
    }
    let mut hasher = Hasher::new(algorithm);
    let mut total = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("read", path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        if let Some(h) = hook {
            h(path);
        }
    }
    let after = file.metadata().map_err(|e| io_error("stat", path, e))?;
    let now_at_path = fs::metadata(path).map(|m| StatKey::of(&m));
    if total != key.size || StatKey::of(&after) != key || now_at_path.ok() != Some(key) {
        return Err(changed(path));
    }
    Ok(hasher.finish())
}

/// An `io::Error` of the same kind as `source` that names the path.
fn io_error(action: &'static str, path: &Path, source: io::Error) -> io::Error {
    let kind = source.kind();
    Error::io(action, path, source).into_io(kind)
}

fn changed(path: &Path) -> io::Error {
    Error::ChangedWhileReading {
        path: path.to_owned(),
    }
    .into_io(io::ErrorKind::Other)
}

fn raw_sha256(digest: &Digest) -> [u8; 32] {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(digest.hex(), &mut raw).expect("a sha256 digest has 64 hex digits");
    raw
}

/// `Digest::from_sha256_bytes`, several times faster (it is on the path of every hit).
fn digest_from_raw(raw: &[u8; 32]) -> Digest {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = *b"sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for (i, b) in raw.iter().enumerate() {
        text[7 + 2 * i] = HEX[usize::from(b >> 4)];
        text[8 + 2 * i] = HEX[usize::from(b & 15)];
    }
    let text = std::str::from_utf8(&text).expect("ASCII");
    Digest::parse(text).expect("a well-formed sha256 digest")
}

/// Days since the epoch, now.
fn today() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u32::try_from(d.as_secs() / 86_400).unwrap_or(u32::MAX)
    })
}

/// Reads a cache file: its identity (if it exists) and its entries (empty if unusable).
fn read_cache_file(path: &Path) -> (FileId, Table) {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(file = %path.display(), error = %e, "cannot open the stat cache; starting empty");
            }
            return (None, Table::default());
        }
    };
    let id = file.metadata().ok().map(|m| StatKey::of(&m));
    let parsed = read_capped(file, MAX_FILE_SIZE)
        .map_err(|e| e.to_string())
        .and_then(decode);
    match parsed {
        Ok(table) => (id, table),
        Err(reason) => {
            tracing::debug!(file = %path.display(), %reason, "ignoring an unusable stat cache");
            (id, Table::default())
        }
    }
}

/// Serialises entries sorted by path (see the module documentation).
fn encode(entries: &[(&[u8], Record)]) -> Vec<u8> {
    let paths: usize = entries.iter().map(|(p, _)| p.len()).sum();
    let mut out =
        Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_FIXED_LEN + paths + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let count = u32::try_from(entries.len()).expect("fewer than 4 billion entries");
    out.extend_from_slice(&count.to_le_bytes());
    for (path, record) in entries {
        // Paths are capped at MAX_PATH_LEN.
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        let k = &record.key;
        out.extend_from_slice(&k.dev.to_le_bytes());
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.size.to_le_bytes());
        out.extend_from_slice(&k.mtime_ns.to_le_bytes());
        out.extend_from_slice(&k.ctime_ns.to_le_bytes());
        out.extend_from_slice(&record.digest);
        out.extend_from_slice(&record.day.to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Validates a cache file and indexes its entries, or says why it is unusable.
fn decode(mut bytes: Vec<u8>) -> std::result::Result<Table, String> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(format!("only {} bytes long", bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err("not a stat cache file (bad magic)".to_owned());
    }
    let version = le_u32(&bytes[8..]);
    if version != VERSION {
        return Err(format!("version {version}, expected {VERSION}"));
    }
    let end = bytes.len() - CHECKSUM_LEN;
    if checksum(&bytes[..end]) != le_u64(&bytes[end..]) {
        return Err("checksum mismatch".to_owned());
    }
    let count = le_u32(&bytes[12..]) as usize;
    // Every entry takes at least ENTRY_FIXED_LEN bytes, whatever the count claims.
    if count > (end - HEADER_LEN) / ENTRY_FIXED_LEN {
        return Err(format!(
            "claims {count} entries in {} bytes",
            end - HEADER_LEN
        ));
    }
    let mut offsets = Vec::with_capacity(count);
    let mut off = HEADER_LEN;
    let mut previous: &[u8] = &[];
    for i in 0..count {
        if end - off < ENTRY_FIXED_LEN {
            return Err(format!("entry {i} is truncated"));
        }
        let len = le_u32(&bytes[off..]) as usize;
        if len > MAX_PATH_LEN || end - off - ENTRY_FIXED_LEN < len {
            return Err(format!("entry {i} has a bad path length"));
        }
        let path = &bytes[off + 4..off + 4 + len];
        if i > 0 && path <= previous {
            return Err(format!("entry {i} is out of order"));
        }
        previous = path;
        offsets.push(u32::try_from(off).expect("files are capped far below 4 GiB"));
        off += ENTRY_FIXED_LEN + len;
    }
    if off != end {
        return Err(format!("{} bytes after the last entry", end - off));
    }
    bytes.truncate(end);
    Ok(Table {
        bytes,
        offsets,
        ..Table::default()
    })
}

/// A fast non-cryptographic 64-bit checksum (xxHash64's round and avalanche over four lanes of
/// little-endian words; not xxHash64 itself). It only detects damage: anyone who can write
/// the file can write any content, and a wrong digest could then be planted anyway.
fn checksum(bytes: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    fn round(acc: u64, word: u64) -> u64 {
        acc.wrapping_add(word.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    let mut lanes = [P1.wrapping_add(P2), P2, 0, P1.wrapping_neg()];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = round(*lane, le_u64(word));
        }
    }
    let mut h = lanes
        .iter()
        .enumerate()
        .fold(bytes.len() as u64, |h, (i, &lane)| {
            (h ^ round(0, lane))
                .rotate_left(27 + i as u32)
                .wrapping_mul(P1)
        });
    let mut rest = blocks.remainder();
    while rest.len() >= 8 {
        h = (h ^ round(0, le_u64(rest)))
            .rotate_left(27)
            .wrapping_mul(P1);
        rest = &rest[8..];
    }
    for &b in rest {
        h = (h ^ u64::from(b).wrapping_mul(P3))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use std::fs::Permissions;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use filetime::FileTime;
    use tempfile::TempDir;

    use super::*;

    /// A store root and a project directory inside a temp dir.
    fn setup() -> (TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let project = dir.path().join("project");
        fs::create_dir_all(&project).unwrap();
        (dir, root, project)
    }

    /// A cache that records files however recently they changed, so tests need not wait out
    /// the racy window. Tests of the racy rule itself use [`StatCache::load`].
    fn eager(root: &Path, scope: &Path) -> StatCache {
        let mut cache = StatCache::load(root, scope);
        cache.racy_window_ns = 0;
        cache
    }

    fn key_of(path: &Path) -> StatKey {
        StatKey::of(&fs::metadata(path).unwrap())
    }

    fn write(path: &Path, content: &[u8]) -> StatKey {
        fs::write(path, content).unwrap();
        key_of(path)
    }

    fn changed_error(err: &io::Error) -> bool {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<Error>())
            .is_some_and(|e| matches!(e, Error::ChangedWhileReading { .. }))
    }

    #[test]
    fn a_hit_does_not_touch_the_file() {
        let (_dir, root, project) = setup();
        let path = project.join("a.txt");
        let key = write(&path, b"first");
        let mut cache = eager(&root, &project);
        assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"first"));
        assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 1, 1));

        // Same size, other content, written in place: with the key as it was, the cached
        // digest comes back. Had the file been read, it would be the new content's digest
        // (or an error, since the file no longer has that key).
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"FIRST")
            .unwrap();
        assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"first"));
        // Not even there: a hit never opens the file.
        fs::remove_file(&path).unwrap();
        assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"first"));
        assert_eq!((cache.hits(), cache.misses()), (2, 1));
    }

    #[test]
    fn lookup_hash_file_and_record_split_a_digest() {
        let (_t, root, scope) = setup();
        let file = scope.join("f");
        let key = write(&file, b"split");
        let mut cache = eager(&root, &scope);
        assert_eq!(cache.lookup(&file, key), None);
        let started = SystemTime::now();
        let d = hash_file(&file, key).unwrap();
        assert_eq!(d, Digest::sha256(b"split"));
        cache.record(&file, key, &d, started);
        assert_eq!(cache.lookup(&file, key), Some(d.clone()));
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        // Another key for the same path is a miss, and hash_file refuses it.
        let other = StatKey {
            size: key.size + 1,
            ..key
        };
        assert_eq!(cache.lookup(&file, other), None);
        assert!(changed_error(&hash_file(&file, other).unwrap_err()));
        // With the real racy window, a file changed just now is not recorded.
        let mut strict = StatCache::load(&root, &scope);
        let racy = scope.join("racy");
        let rkey = write(&racy, b"now");
        strict.record(&racy, rkey, &Digest::sha256(b"now"), SystemTime::now());
        assert_eq!(strict.lookup(&racy, rkey), None);
    }

    #[test]
    fn every_key_field_takes_part_in_a_hit() {
        let (_dir, root, project) = setup();
        let path = project.join("a");
        let key = write(&path, b"content");
        let mut cache = eager(&root, &project);
        cache.digest(&path, key).unwrap();
        let tweaks: [fn(&mut StatKey); 5] = [
            |k| k.dev += 1,
            |k| k.ino += 1,
            |k| k.size += 1,
            |k| k.mtime_ns += 1,
            |k| k.ctime_ns += 1,
        ];
        for (i, tweak) in tweaks.iter().enumerate() {
            let mut other = key;
            tweak(&mut other);
            // Not a hit, so the file is opened, and it does not have that key.
            let err = cache.digest(&path, other).unwrap_err();
            assert!(changed_error(&err), "tweak {i}: {err}");
            assert_eq!(cache.hits(), 0, "tweak {i}");
            assert_eq!(cache.misses(), i as u64 + 2, "tweak {i}");
        }
    }

    #[test]
    fn changed_mtime_size_or_inode_rehashes() {
        let (_dir, root, project) = setup();
        let path = project.join("a");
        let mut cache = eager(&root, &project);
        let key = write(&path, b"one");
        cache.digest(&path, key).unwrap();

        // mtime only (content unchanged): a miss, same digest, new key recorded.
        filetime::set_file_mtime(&path, FileTime::from_unix_time(1_000_000, 5)).unwrap();
        let key = key_of(&path);
        assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"one"));
        assert_eq!((cache.hits(), cache.misses()), (0, 2));
        cache.digest(&path, key).unwrap();
        assert_eq!((cache.hits(), cache.misses()), (1, 2));

        // Size: appended in place.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"!")
            .unwrap();
        let key = key_of(&path);
        assert_eq!(cache.digest(&path, key).unwrap(), Digest::sha256(b"one!"));
        assert_eq!((cache.hits(), cache.misses()), (1, 3));

        // Inode: replaced by rename with content of the same size.
        let other = project.join("b");
        fs::write(&other, b"two!").unwrap();
        fs::rename(&other, &path).unwrap();
        let new_key = key_of(&path);
        assert_ne!(new_key.ino, key.ino);
        assert_eq!(
            cache.digest(&path, new_key).unwrap(),
            Digest::sha256(b"two!")
        );
        assert_eq!((cache.hits(), cache.misses(), cache.len()), (1, 4, 1));
    }

    #[test]
    fn racy_files_are_hashed_but_not_recorded() {
        let (_dir, root, project) = setup();
        let path = project.join("fresh");
        let key = write(&path, b"just written");
        let mut cache = StatCache::load(&root, &project);
        for _ in 0..2 {
            assert_eq!(
                cache.digest(&path, key).unwrap(),
                Digest::sha256(b"just written")
            );
        }
        assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 2, 0));
        cache.save().unwrap();
        assert!(!cache.file().exists(), "nothing to save");

        // A future mtime is racy even without a window, and so is a saturated one.
        let mut cache = eager(&root, &project);
        let future = SystemTime::now() + Duration::from_secs(3600);
        filetime::set_file_mtime(&path, FileTime::from_system_time(future)).unwrap();
        cache.digest(&path, key_of(&path)).unwrap();
        assert!(cache.is_empty());
        assert!(cache.is_racy(
            &StatKey {
                mtime_ns: i64::MIN,
                ctime_ns: 0,
                ..key
            },
            SystemTime::now()
        ));

        // The same file, old enough, is recorded by a cache with the default window.
        let mut cache = StatCache::load(&root, &project);
        filetime::set_file_mtime(&path, FileTime::from_unix_time(1_000_000, 0)).unwrap();
        let old_key = key_of(&path);
        let started = SystemTime::now() + RACY_WINDOW + Duration::from_millis(10);
        assert!(!cache.is_racy(&old_key, started));
        assert!(
            cache.is_racy(&old_key, SystemTime::now()),
            "ctime is recent"
        );
        cache.racy_window_ns = 0;
        cache.digest(&path, old_key).unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_stale_key_is_a_changed_file_error() {
        let (_dir, root, project) = setup();
        let path = project.join("a");
        let mut cache = eager(&root, &project);
        let before = write(&path, b"old");
        cache.digest(&path, before).unwrap();
        fs::write(&path, b"newer content").unwrap();
        let mut stale = before;
        stale.mtime_ns -= 1; // no entry has this key: the file is hashed and checked
        let err = cache.digest(&path, stale).unwrap_err();
        assert!(changed_error(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("changed while"), "{err}");
        // The outdated entry is dropped.
        assert!(cache.is_empty());
    }

    #[test]
    fn a_file_changing_while_hashed_is_an_error() {
        let (_dir, root, project) = setup();
        let path = project.join("big");
        let key = write(&path, &vec![b'x'; HASH_BUFFER * 2 + 7]);
        let mut cache = eager(&root, &project);
        let mut fired = false;
        cache.read_hook = Some(Box::new(move |p: &Path| {
            if !fired {
                fired = true;
                let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all(b"y").unwrap(); // same size, content changed under the reader
            }
        }));
        let err = cache.digest(&path, key).unwrap_err();
        assert!(changed_error(&err), "{err}");
        assert!(cache.is_empty());

        // Replaced by another file (by rename) while hashed: also refused.
        let key = write(&path, b"contents");
        let other = project.join("other");
        let moved = other.clone();
        cache.read_hook = Some(Box::new(move |p: &Path| {
            if fs::write(&moved, b"CONTENTS").is_ok() {
                fs::rename(&moved, p).unwrap();
            }
        }));
        let err = cache.digest(&path, key).unwrap_err();
        assert!(changed_error(&err), "{err}");
        assert!(cache.is_empty());
    }

    #[test]
    fn only_regular_files_are_hashed() {
        let (_dir, root, project) = setup();
        let mut cache = eager(&root, &project);
        let fifo = project.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        for path in [&project, &fifo] {
            let err = cache.digest(path, key_of(path)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let missing = project.join("missing");
        let key = key_of(&project);
        let err = cache.digest(&missing, key).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn save_and_load_roundtrip() {
        let (_dir, root, project) = setup();
        let mut cache = eager(&root, &project);
        let mut files = Vec::new();
        for name in ["a", "ab", "abc", "b/c", "b/d/e", "z"] {
            let path = project.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let key = write(&path, name.as_bytes());
            cache.digest(&path, key).unwrap();
            files.push((path, key, Digest::sha256(name.as_bytes())));
        }
        cache.save().unwrap();
        let saved = fs::metadata(cache.file()).unwrap();
        assert_eq!(saved.mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(root.join(STAT_BUCKET)).unwrap().mode() & 0o777,
            0o700
        );

        // Other spellings of the scope share the file.
        let mut loaded = StatCache::load(&root, &project.join("./"));
        assert_eq!(loaded.file(), cache.file());
        assert_eq!(loaded.len(), files.len());
        // In path order (the fast way) and in reverse.
        for (path, key, digest) in files.iter().chain(files.iter().rev()) {
            assert_eq!(loaded.digest(path, *key).unwrap(), *digest);
        }
        assert_eq!((loaded.hits(), loaded.misses()), (12, 0));
        // Nothing changed: saving writes nothing.
        loaded.save().unwrap();
        assert_eq!(fs::metadata(cache.file()).unwrap().ino(), saved.ino());

        // Another scope has its own file.
        let other = StatCache::load(&root, &project.join("b"));
        assert_ne!(other.file(), cache.file());
        assert!(other.is_empty());
    }

    /// Recomputes the checksum of an edited cache file.
    fn reseal(bytes: &mut Vec<u8>) {
        bytes.truncate(bytes.len() - CHECKSUM_LEN);
        let sum = checksum(bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn damaged_files_load_empty() {
        let (_dir, root, project) = setup();
        let mut cache = eager(&root, &project);
        for name in ["one", "two"] {
            let path = project.join(name);
            cache.digest(&path, write(&path, b"x")).unwrap();
        }
        cache.save().unwrap();
        let file = cache.file().to_owned();
        let good = fs::read(&file).unwrap();
        assert_eq!(decode(good.clone()).unwrap().len(), 2);
        let entry_at = HEADER_LEN;

        let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
        cases.push(("empty", Vec::new(), "bytes long"));
        cases.push((
            "garbage",
            b"not a stat cache at all, not at all!!!!!!!!!!!!!".to_vec(),
            "magic",
        ));
        let mut flipped = good.clone();
        flipped[entry_at + 20] ^= 1;
        cases.push(("flipped byte", flipped, "checksum"));
        let mut version = good.clone();
        version[8] = 2;
        reseal(&mut version);
        cases.push(("other version", version, "version 2"));
        let mut count = good.clone();
        count[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut count);
        cases.push(("huge count", count, "claims"));
        let mut path_len = good.clone();
        path_len[entry_at..entry_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut path_len);
        cases.push(("huge path length", path_len, "bad path length"));
        let mut path_len = good.clone();
        let past_the_end = (good.len() - CHECKSUM_LEN - entry_at - ENTRY_FIXED_LEN + 1) as u32;
        path_len[entry_at..entry_at + 4].copy_from_slice(&past_the_end.to_le_bytes());
        reseal(&mut path_len);
        cases.push(("path past the end", path_len, "bad path length"));
        // Long paths, so that a third entry fits the size check but is missing.
        let record = decode(good.clone()).unwrap().record(0);
        let long = [vec![b'a'; 300], vec![b'b'; 300]];
        let mut high_count = encode(&[(&long[0], record), (&long[1], record)]);
        high_count[12..16].copy_from_slice(&3u32.to_le_bytes());
        reseal(&mut high_count);
        cases.push((
            "count higher than the entries",
            high_count,
            "entry 2 is truncated",
        ));
        let mut trailing = good.clone();
        trailing.splice(good.len() - CHECKSUM_LEN..good.len() - CHECKSUM_LEN, [0u8]);
        reseal(&mut trailing);
        cases.push(("trailing bytes", trailing, "after the last entry"));
        let mut short_count = good.clone();
        short_count[12..16].copy_from_slice(&1u32.to_le_bytes());
        reseal(&mut short_count);
        cases.push((
            "count lower than the entries",
            short_count,
            "after the last entry",
        ));
        for len in [
            HEADER_LEN + CHECKSUM_LEN - 1,
            HEADER_LEN + CHECKSUM_LEN,
            good.len() - 1,
        ] {
            cases.push(("truncated", good[..len].to_vec(), ""));
        }

        for (what, bytes, reason) in &cases {
            let err = decode(bytes.clone()).unwrap_err();
            assert!(err.contains(reason), "{what}: {err}");
            fs::write(&file, bytes).unwrap();
            let mut cache = eager(&root, &project);
            assert!(cache.is_empty(), "{what}");
            // Still usable, and saving replaces the damaged file.
            let path = project.join("one");
            cache.digest(&path, key_of(&path)).unwrap();
            cache.save().unwrap();
            assert_eq!(StatCache::load(&root, &project).len(), 1, "{what}");
        }

        // Out of order entries (sorted input reversed, then resealed) are refused.
        let a = Record {
            key: key_of(&project.join("one")),
            digest: [1; 32],
            day: 0,
        };
        let mut unsorted = encode(&[(b"/b".as_slice(), a), (b"/c".as_slice(), a)]);
        let pos = HEADER_LEN + ENTRY_FIXED_LEN + 2 + 4 + 1;
        assert_eq!(unsorted[pos], b'c');
        unsorted[pos] = b'a';
        reseal(&mut unsorted);
        assert!(decode(unsorted).unwrap_err().contains("out of order"));

        // A file over the cap, and a directory in the file's place.
        fs::remove_file(&file).unwrap();
        fs::File::create(&file)
            .unwrap()
            .set_len(MAX_FILE_SIZE + 1)
            .unwrap();
        assert!(StatCache::load(&root, &project).is_empty());
        fs::remove_file(&file).unwrap();
        fs::create_dir(&file).unwrap();
        assert!(StatCache::load(&root, &project).is_empty());
    }

    #[test]
    fn out_of_order_lookups_build_an_index() {
        let record = Record {
            key: StatKey {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
                ctime_ns: 5,
            },
            digest: [6; 32],
            day: 7,
        };
        let paths: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("/p/{i:03}").into_bytes())
            .collect();
        let entries: Vec<(&[u8], Record)> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    p.as_slice(),
                    Record {
                        day: i as u32,
                        ..record
                    },
                )
            })
            .collect();
        let mut table = decode(encode(&entries)).unwrap();
        // In order, the hint answers and no index is built.
        for (i, path) in paths.iter().enumerate() {
            assert_eq!(table.find(path, i), Some(i));
        }
        assert!(table.index.is_empty());
        // Out of order: binary searches, then (past a quarter of the entries) the index.
        for round in 0..2 {
            for i in (0..200).map(|i| i * 7 % 200) {
                let found = table.find(&paths[i], 0).map(|j| table.record(j).day);
                assert_eq!(found, Some(i as u32), "round {round}");
            }
            assert_eq!(table.find(b"/p/999", 0), None);
            assert_eq!(table.find(b"/p/", 0), None);
            assert!(!table.index.is_empty(), "built during the first round");
        }
        assert!(table.index.len() >= 400 && table.index.len().is_power_of_two());
    }

    #[test]
    fn concurrent_saves_merge() {
        let (_dir, root, project) = setup();
        // Four processes' worth of caches, each with its own files, saving at once.
        let caches: Vec<(StatCache, Vec<(PathBuf, StatKey)>)> = (0..4)
            .map(|c| {
                let mut cache = eager(&root, &project);
                let mut files = Vec::new();
                for i in 0..50 {
                    let path = project.join(format!("c{c}-f{i}"));
                    let key = write(&path, path.to_str().unwrap().as_bytes());
                    cache.digest(&path, key).unwrap();
                    files.push((path, key));
                }
                (cache, files)
            })
            .collect();
        let all: Vec<_> = caches.iter().flat_map(|(_, f)| f.clone()).collect();
        std::thread::scope(|s| {
            for (cache, _) in &caches {
                s.spawn(move || cache.save().unwrap());
            }
        });
        let mut merged = eager(&root, &project);
        assert_eq!(merged.len(), all.len());
        for (path, key) in &all {
            merged.digest(path, *key).unwrap();
        }
        assert_eq!((merged.hits(), merged.misses()), (200, 0));
    }

    #[test]
    fn looked_up_entries_win_and_others_are_kept() {
        let (_dir, root, project) = setup();
        let (f, g, h) = (project.join("f"), project.join("g"), project.join("h"));
        let mut first = eager(&root, &project);
        for path in [&f, &g] {
            first.digest(path, write(path, b"v1")).unwrap();
        }
        first.save().unwrap();

        // Two processes load the same state; f changes; the second sees it, the first
        // records only h and saves last, without looking at f.
        let mut a = eager(&root, &project);
        let mut b = eager(&root, &project);
        let f2 = write(&f, b"version 2");
        assert_eq!(b.digest(&f, f2).unwrap(), Digest::sha256(b"version 2"));
        b.save().unwrap();
        a.digest(&h, write(&h, b"h")).unwrap();
        a.save().unwrap();

        let mut c = eager(&root, &project);
        assert_eq!(c.len(), 3);
        c.digest(&f, f2).unwrap();
        c.digest(&g, key_of(&g)).unwrap();
        c.digest(&h, key_of(&h)).unwrap();
        assert_eq!((c.hits(), c.misses()), (3, 0));

        // A lookup that finds the file changed drops the entry even if another process
        // still has it: the first process saves f's old entry (which it did not look up)
        // along with a new one, then the second merges its drop into that.
        let mut a = eager(&root, &project);
        let mut b = eager(&root, &project);
        let f3 = write(&f, b"version three, now");
        b.racy_window_ns = i64::MAX; // everything racy: hashed, not recorded
        b.digest(&f, f3).unwrap();
        let i = project.join("i");
        a.digest(&i, write(&i, b"i")).unwrap();
        a.save().unwrap();
        assert!(eager(&root, &project).record_of(&f).is_some());
        b.save().unwrap();
        let c = eager(&root, &project);
        assert_eq!(c.len(), 3, "g, h and i");
        assert!(c.record_of(&f).is_none());
    }

    #[test]
    fn unused_entries_expire() {
        let (_dir, root, project) = setup();
        let (used, unused) = (project.join("used"), project.join("unused"));
        let mut cache = eager(&root, &project);
        for path in [&used, &unused] {
            cache.digest(path, write(path, b"x")).unwrap();
        }
        cache.save().unwrap();

        // Within the limit a hit on another day refreshes the entry and keeps the others.
        let mut later = eager(&root, &project);
        later.today += STALE_DAYS;
        later.digest(&used, key_of(&used)).unwrap();
        later.save().unwrap();
        assert_eq!(StatCache::load(&root, &project).len(), 2);

        // One day later, the entry not used since the first day is gone.
        let mut later = eager(&root, &project);
        later.today += STALE_DAYS + 1;
        later.digest(&used, key_of(&used)).unwrap();
        later.save().unwrap();
        let loaded = StatCache::load(&root, &project);
        assert_eq!(loaded.len(), 1);
        assert!(loaded.record_of(&used).is_some());
    }

    #[test]
    fn verify_detects_a_tampered_read_only_file() {
        let (_dir, root, _project) = setup();
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let content = b"a blob in the store".to_vec();
        let digest = Digest::sha256(&content);
        let path = blobs.join(digest.hex());
        fs::write(&path, &content).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o444)).unwrap();

        let mut cache = eager(&root, &root);
        assert!(cache.verify(&path, &digest).unwrap());
        assert!(cache.verify(&path, &digest).unwrap());
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        assert!(!cache.verify(&path, &Digest::sha256(b"other")).unwrap());
        let recorded = key_of(&path);

        // Let the filesystem's (possibly coarse) clock move on, so the write below gets a new
        // ctime. In real use the racy window guarantees this.
        std::thread::sleep(Duration::from_millis(50));
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let mut flipped = content.clone();
        flipped[3] ^= 0x20;
        fs::write(&path, &flipped).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o444)).unwrap();
        // Put mtime back: only ctime tells.
        let mtime = FileTime::from_unix_time(
            recorded.mtime_ns.div_euclid(1_000_000_000),
            recorded.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        filetime::set_file_mtime(&path, mtime).unwrap();
        let now = key_of(&path);
        assert_eq!(
            (now.ino, now.size, now.mtime_ns),
            (recorded.ino, recorded.size, recorded.mtime_ns)
        );
        assert_ne!(now.ctime_ns, recorded.ctime_ns);

        let misses = cache.misses();
        assert!(!cache.verify(&path, &digest).unwrap());
        assert_eq!(cache.misses(), misses + 1);

        // Other algorithms are hashed every time.
        let sha512 = Digest::compute(Algorithm::Sha512, &flipped);
        assert!(cache.verify(&path, &sha512).unwrap());
        assert!(cache.verify(&path, &sha512).unwrap());
        assert_eq!(cache.misses(), misses + 3);

        let err = cache.verify(&root.join("missing"), &digest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn deleting_the_bucket_is_safe() {
        let (_dir, root, project) = setup();
        let path = project.join("a");
        let key = write(&path, b"a");
        let mut cache = eager(&root, &project);
        cache.digest(&path, key).unwrap();
        cache.save().unwrap();
        let mut loaded = eager(&root, &project);
        fs::remove_dir_all(root.join(STAT_BUCKET)).unwrap();
        let other = project.join("b");
        loaded.digest(&other, write(&other, b"b")).unwrap();
        loaded.save().unwrap();
        // The deletion is respected: only what this run looked up is saved again.
        let mut again = eager(&root, &project);
        assert_eq!(again.len(), 1);
        again.digest(&path, key).unwrap();
        assert_eq!((again.hits(), again.misses()), (0, 1));
        fs::remove_dir_all(root.join(STAT_BUCKET)).unwrap();
        assert!(StatCache::load(&root, &project).is_empty());
    }

    /// Measures a no-op rebuild's use of the cache over 54,000 files:
    /// `cargo test -p gantry-cache --release -- --ignored --nocapture bench_54k`.
    #[test]
    #[ignore = "a measurement, not a check; run it by hand in release mode"]
    #[allow(clippy::print_stderr)]
    fn bench_54k() {
        use std::time::Instant;
        const FILES: usize = 54_000;
        let (_dir, root, project) = setup();
        let mut paths = Vec::with_capacity(FILES);
        for i in 0..FILES {
            let dir = project.join(format!(
                "node_modules/@scope/package-name-{:03}/lib/internal",
                i / 100
            ));
            if i % 100 == 0 {
                fs::create_dir_all(&dir).unwrap();
            }
            let path = dir.join(format!("some-module-file-{i:05}.js"));
            fs::write(&path, format!("module.exports = {i};\n")).unwrap();
            paths.push(path);
        }
        let keys: Vec<StatKey> = paths.iter().map(|p| key_of(p)).collect();

        let t = Instant::now();
        let mut cache = eager(&root, &project);
        for (path, key) in paths.iter().zip(&keys) {
            cache.digest(path, *key).unwrap();
        }
        let first_hash = t.elapsed();
        let t = Instant::now();
        cache.save().unwrap();
        let first_save = t.elapsed();
        let size = fs::metadata(cache.file()).unwrap().len();

        let t = Instant::now();
        let mut cache = StatCache::load(&root, &project);
        let load = t.elapsed();
        let t = Instant::now();
        for (path, key) in paths.iter().zip(&keys) {
            cache.digest(path, *key).unwrap();
        }
        let lookups = t.elapsed();
        let t = Instant::now();
        for path in &paths {
            let key = StatKey::of(&fs::symlink_metadata(path).unwrap());
            cache.digest(path, key).unwrap();
        }
        let stat_lookups = t.elapsed();
        // Out of order (binary search for every lookup): a stride coprime to FILES.
        let t = Instant::now();
        for i in (0..FILES).map(|i| i * 7919 % FILES) {
            cache.digest(&paths[i], keys[i]).unwrap();
        }
        let shuffled = t.elapsed();
        assert_eq!(cache.hits(), 3 * FILES as u64);
        let t = Instant::now();
        cache.save().unwrap();
        let noop_save = t.elapsed();
        cache.dirty = true;
        let t = Instant::now();
        cache.save().unwrap();
        let full_save = t.elapsed();
        cache.loaded_from = None;
        let t = Instant::now();
        cache.save().unwrap();
        let merging_save = t.elapsed();
        eprintln!(
            "{FILES} files, cache file {size} bytes ({} per entry)\n\
             first run: hash all {first_hash:?}, save {first_save:?}\n\
             no-op run: load {load:?}, {FILES} lookups {lookups:?} \
             (with the caller's lstat: {stat_lookups:?}, out of order: {shuffled:?}), \
             save {noop_save:?}\n\
             save when dirty {full_save:?}, save merging with a changed file {merging_save:?}",
            size / FILES as u64
        );
    }
}
