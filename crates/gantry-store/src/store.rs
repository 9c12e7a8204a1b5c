//! The content-addressed blob store.
//!
//! Layout under the root (every directory mode 0700):
//!
//! ```text
//! blobs/<alg>/<hex>   blobs, mode 0444, named by their digest
//! tmp/s-<random>/     one directory per open Store, holding its locked `lock` file and temp files
//! refs-v1/<kind>/     named GC roots (see `refs.rs`)
//! locks/              gc.lock, gc-intent.lock, refs.lock, tmp.lock
//! ```
//!
//! Other top-level directories belong to other crates (`cache-v1/` and `stat-v1/` to
//! gantry-cache, `rootfs/` to gantry-unpack's rootfs cache) and are left alone.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions, TryLockError};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gantry_oci::{Algorithm, Digest, HashingReader, HashingWriter};
use rustix::io::Errno;
use tempfile::TempPath;

use crate::fsutil::{
    ensure_private_dir, fsync_dir, link_unsupported, lock_exclusive, open_lock_file, open_regular,
    rename_noreplace,
};
use crate::session::{Session, remove_leftovers};
use crate::{Error, Result};

const BLOBS_DIR: &str = "blobs";
const TMP_DIR: &str = "tmp";
const REFS_DIR: &str = "refs-v1";
const LOCKS_DIR: &str = "locks";
const GC_LOCK: &str = "gc.lock";
/// Taken exclusively by a gc that has waited long enough for its turn; every open passes
/// through it (shared, briefly), so new stores queue behind that gc instead of starving it.
const GC_INTENT_LOCK: &str = "gc-intent.lock";
const REFS_LOCK: &str = "refs.lock";
const TMP_LOCK: &str = "tmp.lock";

/// Mode of stored blobs: content-addressed files are never modified in place.
const BLOB_MODE: u32 = 0o444;
/// Buffer size of blob writers.
const WRITE_BUFFER: usize = 128 << 10;

/// An open blob store. Holds a shared lock on `locks/gc.lock` and a session directory for its
/// lifetime; dropping it removes the session directory.
///
/// A `Store` is `Sync`: threads may share one to write blobs concurrently.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// `None` for a read-only store.
    session: Option<Session>,
    /// `None` for a read-only store without a `locks/gc.lock` (nobody has written to it).
    gc_lock: Option<File>,
    /// Why the store is read-only, if it is.
    read_only: Option<String>,
    /// Called with each dead session's directory before it is removed.
    reaper: ReaperSlot,
    /// The root's (device, inode), the key of [`OPEN_STORES`].
    identity: (u64, u64),
}

/// Something a store waits for, reported so that the user knows why nothing happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// [`Store::open`] waits for a gc that runs or is queued for its turn.
    ForGc,
    /// A gc waits for the other processes that have the store open (about `others` of them)
    /// to finish. `queued`: new processes now wait behind the gc rather than start.
    ForOthers {
        /// How many other open stores (one per gantry process, usually) there are.
        others: usize,
        /// Whether the gc has taken its turn, so that new processes queue behind it.
        queued: bool,
    },
}

/// How many stores this process has open, by root (device, inode). A process that already has
/// the store open does not queue behind a waiting gc when it opens it again: that gc waits for
/// the store it already has, so queueing would deadlock.
static OPEN_STORES: std::sync::Mutex<BTreeMap<(u64, u64), usize>> =
    std::sync::Mutex::new(BTreeMap::new());

fn open_stores() -> std::sync::MutexGuard<'static, BTreeMap<(u64, u64), usize>> {
    OPEN_STORES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Store {
    fn drop(&mut self) {
        let mut open = open_stores();
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// Called with the directory of a dead process's session before it is removed, to stop what
/// that process left running there (the containers of its build steps). It must not fail;
/// it may log.
pub type Reaper = std::sync::Arc<dyn Fn(&Path) + Send + Sync>;

/// A [`Reaper`], if any (printable, for `Store`'s `Debug`).
#[derive(Clone, Default)]
pub(crate) struct ReaperSlot(pub(crate) Option<Reaper>);

impl std::fmt::Debug for ReaperSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// Options of [`Store::open_with`].
#[derive(Default)]
pub struct StoreOptions<'a> {
    /// Hears when opening has to wait (for a gc).
    pub on_wait: Option<&'a dyn Fn(Wait)>,
    /// Runs before a dead session's directory is removed (by this open, gc or fsck).
    pub reaper: Option<Reaper>,
}

impl std::fmt::Debug for StoreOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions").finish_non_exhaustive()
    }
}

/// How [`Store::link_or_copy_out`] placed a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A hard link to the stored blob (shares its inode and read-only mode).
    Hardlink,
    /// A verified copy (the destination is on another filesystem or links are not allowed).
    Copy,
}

impl Store {
    /// Opens the store at `root`, creating its directories if needed, and removes the leftovers
    /// of dead processes from `tmp/`.
    ///
    /// An existing root must be a directory owned by the current user and not writable by
    /// group or others. Blocks while another process runs [`Store::gc`].
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, &StoreOptions::default())
    }

    /// [`Store::open`] with options: `on_wait` hears when opening waits for a gc.
    pub fn open_with(root: &Path, options: &StoreOptions<'_>) -> Result<Store> {
        let root = std::path::absolute(root).map_err(|e| Error::io("resolve", root, e))?;
        let read_only = read_only_reason(&root);
        if read_only.is_none() {
            create_root(&root)?;
        }
        let identity = check_root_is_private(&root)?;
        if read_only.is_none() {
            for dir in [BLOBS_DIR, TMP_DIR, REFS_DIR, LOCKS_DIR] {
                ensure_private_dir(&root.join(dir))?;
            }
            ensure_private_dir(&root.join(BLOBS_DIR).join(Algorithm::Sha256.name()))?;
        }
        // A read-only store's lock files are taken if they exist (flock needs no write
        // access): whoever can still write to it (its owner, root) respects them.
        let lock_file = |name: &str| {
            let path = root.join(LOCKS_DIR).join(name);
            let file = match read_only {
                None => Some(open_lock_file(&path)?),
                Some(_) => open_existing_lock_file(&path)?,
            };
            Ok::<_, Error>((path, file))
        };
        let (gc_lock_path, gc_lock) = lock_file(GC_LOCK)?;
        let report_wait = || {
            if let Some(f) = options.on_wait {
                f(Wait::ForGc);
            }
        };
        // Pass through the gc-intent lock (unless this process has the store open already),
        // then take gc.lock shared: a gc that took its turn goes first.
        let mut open = open_stores();
        let nested = open.get(&identity).is_some_and(|&n| n > 0);
        *open.entry(identity).or_insert(0) += 1;
        drop(open);
        let registered = Registered(identity);
        let intent = if nested {
            None
        } else {
            let (path, intent) = lock_file(GC_INTENT_LOCK)?;
            if let Some(f) = &intent {
                lock_shared_reporting(f, &path, report_wait)?;
            }
            intent
        };
        if let Some(f) = &gc_lock {
            lock_shared_reporting(f, &gc_lock_path, report_wait)?;
        }
        drop(intent);

        let session = match &read_only {
            Some(reason) => {
                tracing::debug!(root = %root.display(), reason, "opened a read-only store");
                None
            }
            None => {
                // Sessions are created, and dead ones recognised, only under tmp.lock (see
                // session.rs).
                let tmp = root.join(TMP_DIR);
                let _tmp_lock = lock_exclusive(&root.join(LOCKS_DIR).join(TMP_LOCK))?;
                let session = Session::create(&tmp)?;
                let removed = remove_leftovers(&tmp, session.path(), options.reaper.as_ref())?;
                tracing::debug!(root = %root.display(), removed, "opened store");
                Some(session)
            }
        };
        std::mem::forget(registered);
        Ok(Store {
            root,
            session,
            gc_lock,
            read_only,
            reaper: ReaperSlot(options.reaper.clone()),
            identity,
        })
    }

    /// Why the store was opened read-only (its directory cannot be written: a read-only
    /// mount, or no write permission), or `None` if it is writable. A read-only store reads
    /// blobs, refs and layouts; anything that would write to it fails with
    /// [`Error::ReadOnlyStore`].
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Fails with [`Error::ReadOnlyStore`] (saying that `action` needs write access) if the
    /// store is read-only.
    pub fn require_writable(&self, action: &'static str) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(reason) => Err(Error::ReadOnlyStore {
                root: self.root.clone(),
                action,
                reason: reason.clone(),
            }),
        }
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path a blob has (or would have) in the store: `<root>/blobs/<alg>/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.blob_path())
    }

    /// Whether the store holds the blob.
    pub fn has(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(digest)).is_ok()
    }

    /// Starts writing a sha256 blob.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        self.blob_writer_with(Algorithm::Sha256)
    }

    /// Starts writing a blob hashed with `algorithm`.
    pub fn blob_writer_with(&self, algorithm: Algorithm) -> Result<BlobWriter<'_>> {
        let (file, temp) = self.temp_file("blob-")?.into_parts();
        let buffered = BufWriter::with_capacity(WRITE_BUFFER, Writeback::new(file));
        Ok(BlobWriter {
            store: self,
            out: HashingWriter::with_algorithm(buffered, algorithm),
            temp,
        })
    }

    /// Stores `bytes` as a sha256 blob and returns its digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        if self.has(&digest) {
            return Ok(digest);
        }
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(|e| Error::io("write", &*writer.temp, e))?;
        writer.commit(Some((&digest, bytes.len() as u64)))?;
        Ok(digest)
    }

    /// Copies `reader` into the store, checking it against `expected` (digest and size). Reads
    /// at most `size + 1` bytes, so a source longer than announced is caught without reading it
    /// all. `what` names the source in errors. Does nothing if the blob is already stored.
    pub fn import(&self, reader: impl Read, expected: (&Digest, u64), what: &str) -> Result<()> {
        let (digest, size) = expected;
        if self.has(digest) {
            return Ok(());
        }
        let mut writer = self.blob_writer_with(digest.algorithm())?;
        let mut limited = reader.take(size.saturating_add(1));
        let copied = io::copy(&mut limited, &mut writer)
            .map_err(|e| Error::copy(format!("{what} into the store"), e))?;
        if copied > size {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual: None,
            });
        }
        writer.commit_as(Some((digest, size)), what)?;
        Ok(())
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        open_regular(&path).map_err(|e| match e {
            Error::Io { source, .. } => self.open_error(digest, path, source),
            e => e,
        })
    }

    /// Reads a whole blob of at most `limit` bytes and checks that it hashes to its digest.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &path, e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge { path, limit });
        }
        let actual = Digest::compute(digest.algorithm(), &bytes);
        if actual != *digest {
            return Err(corrupt(digest, path, actual));
        }
        Ok(bytes)
    }

    /// Rehashes a stored blob and checks that it matches its name.
    pub fn verify_blob(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        let mut reader = HashingReader::new(self.open_blob(digest)?, digest.algorithm());
        io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io("read", &path, e))?;
        let actual = reader.finish().1;
        if actual != *digest {
            return Err(corrupt(digest, path, actual));
        }
        Ok(())
    }

    /// Removes the blob if its content does not match its digest, so that it can be written
    /// again (a commit keeps an existing blob). Returns whether it was removed. A missing blob
    /// is not an error.
    pub fn remove_corrupt_blob(&self, digest: &Digest) -> Result<bool> {
        self.require_writable("remove a corrupt blob")?;
        match self.verify_blob(digest) {
            Ok(()) | Err(Error::BlobNotFound { .. }) => Ok(false),
            Err(Error::CorruptBlob { path, .. }) => {
                fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                fsync_dir(&self.blobs_dir().join(digest.algorithm().name()))?;
                tracing::debug!(%digest, "removed a corrupt blob");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Places a blob at `dest`, which must not exist: a hard link when possible, otherwise
    /// (other filesystem, links not permitted, too many links) a copy that is verified while
    /// written. Either way the result is read-only.
    pub fn link_or_copy_out(&self, digest: &Digest, dest: &Path) -> Result<LinkKind> {
        let src = self.blob_path(digest);
        if !self.has(digest) {
            return Err(Error::BlobNotFound {
                digest: digest.clone(),
                path: src,
            });
        }
        match fs::hard_link(&src, dest) {
            Ok(()) => Ok(LinkKind::Hardlink),
            Err(e) if link_unsupported(&e) => {
                tracing::debug!(%digest, dest = %dest.display(), error = %e, "copying instead of linking");
                self.copy_out(digest, dest)?;
                Ok(LinkKind::Copy)
            }
            Err(e) => Err(Error::io("link a blob to", dest, e)),
        }
    }

    /// Puts a blob at `dest`, replacing what is there atomically: a hard link when possible,
    /// otherwise a verified copy (see [`Store::link_or_copy_out`]), made as an
    /// [`crate::OutputTemp`] beside `dest` and renamed over it.
    pub fn export_blob(&self, digest: &Digest, dest: &Path) -> Result<LinkKind> {
        let mut kind = LinkKind::Hardlink;
        let temp = crate::OutputTemp::fill(dest, |tmp| {
            kind = self.link_or_copy_out(digest, tmp)?;
            Ok::<(), Error>(())
        })?;
        temp.persist(dest)?;
        Ok(kind)
    }

    /// Copies a blob to `dest` (which must not exist), verifying it on the way.
    fn copy_out(&self, digest: &Digest, dest: &Path) -> Result<()> {
        let mut input = HashingReader::new(self.open_blob(digest)?, digest.algorithm());
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(BLOB_MODE)
            .open(dest)
            .map_err(|e| Error::io("create", dest, e))?;
        let copied = io::copy(&mut input, &mut output).and_then(|_| output.sync_all());
        let actual = input.finish().1;
        let result = match copied {
            Err(e) => Err(Error::copy(
                format!("blob {digest} to {}", dest.display()),
                e,
            )),
            Ok(()) if actual != *digest => Err(corrupt(digest, self.blob_path(digest), actual)),
            Ok(()) => Ok(()),
        };
        if result.is_err() {
            let _ = fs::remove_file(dest);
        }
        result
    }

    /// A directory private to this open store for scratch work: removed when the store is
    /// dropped, and by the next open if this process dies.
    pub fn session_dir(&self) -> Result<&Path> {
        self.require_writable("make scratch space in it")?;
        self.own_session()
            .ok_or_else(|| Error::io("use", &self.root, io::ErrorKind::NotFound.into()))
    }

    /// This store's session directory (`None` if it is read-only).
    pub(crate) fn own_session(&self) -> Option<&Path> {
        self.session.as_ref().map(Session::path)
    }

    /// Creates a temp file in this store's session directory.
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<tempfile::NamedTempFile> {
        self.require_writable("write a blob")?;
        let dir = self.session_dir()?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(dir)
            .map_err(|e| Error::io("create a temp file in", dir, e))
    }

    /// The reaper this store was opened with.
    pub(crate) fn reaper(&self) -> Option<&Reaper> {
        self.reaper.0.as_ref()
    }

    /// The `refs-v1` directory.
    pub(crate) fn refs_dir(&self) -> PathBuf {
        self.root.join(REFS_DIR)
    }

    /// The `blobs` directory.
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join(BLOBS_DIR)
    }

    /// The `tmp` directory.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    /// Takes `locks/refs.lock` exclusively until the returned file is dropped (to change
    /// refs: fails on a read-only store).
    pub(crate) fn lock_refs(&self) -> Result<File> {
        self.require_writable("change refs")?;
        lock_exclusive(&self.root.join(LOCKS_DIR).join(REFS_LOCK))
    }

    /// Takes `locks/tmp.lock` exclusively until the returned file is dropped. On a read-only
    /// store, takes it if it exists (`None` otherwise): nothing there can change but by a
    /// writer that respects it.
    pub(crate) fn lock_tmp(&self) -> Result<Option<File>> {
        let path = self.root.join(LOCKS_DIR).join(TMP_LOCK);
        if self.read_only.is_none() {
            return lock_exclusive(&path).map(Some);
        }
        let Some(file) = open_existing_lock_file(&path)? else {
            return Ok(None);
        };
        file.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(Some(file))
    }

    /// The open `gc.lock` of a writable store.
    fn gc_lock_file(&self) -> Result<&File> {
        self.require_writable("collect garbage")?;
        self.gc_lock
            .as_ref()
            .ok_or_else(|| Error::io("use", &self.root, io::ErrorKind::NotFound.into()))
    }

    /// Trades this store's shared `gc.lock` for an exclusive one, waiting until every other
    /// open store is dropped. For `patience` it only tries now and then, letting new
    /// processes in; then it takes `gc-intent.lock` exclusively, so that new opens queue
    /// behind it, and waits for the stores already open. `on_wait` hears how many others it
    /// waits for, whenever that changes. Returns the intent lock if it was taken (hold it until
    /// the collection is done).
    pub(crate) fn lock_gc_exclusive(
        &self,
        patience: Duration,
        on_wait: &mut dyn FnMut(Wait),
    ) -> Result<Option<File>> {
        let path = self.root.join(LOCKS_DIR).join(GC_LOCK);
        let gc_lock = self.gc_lock_file()?;
        gc_lock
            .unlock()
            .map_err(|e| Error::io("unlock", &path, e))?;
        let started = Instant::now();
        let mut reported = None;
        let mut intent: Option<File> = None;
        loop {
            match gc_lock.try_lock() {
                Ok(()) => return Ok(intent),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
            }
            if intent.is_none() && started.elapsed() >= patience {
                // Our turn: new opens wait behind us from now on. Nothing else is held here,
                // so waiting for the intent lock (another gc's) cannot deadlock.
                let intent_path = self.root.join(LOCKS_DIR).join(GC_INTENT_LOCK);
                let file = open_lock_file(&intent_path)?;
                file.lock()
                    .map_err(|e| Error::io("lock", &intent_path, e))?;
                intent = Some(file);
            }
            let now = (self.other_sessions(), intent.is_some());
            if reported != Some(now) {
                on_wait(Wait::ForOthers {
                    others: now.0,
                    queued: now.1,
                });
                reported = Some(now);
            }
            std::thread::sleep(GC_POLL);
        }
    }

    /// How many other stores are open now (live sessions besides this one's).
    fn other_sessions(&self) -> usize {
        crate::session::live_sessions(&self.tmp_dir())
            .into_iter()
            .filter(|p| Some(p.as_path()) != self.own_session())
            .count()
    }

    /// Trades the exclusive `gc.lock` back for a shared one.
    pub(crate) fn lock_gc_shared(&self) -> Result<()> {
        let path = self.root.join(LOCKS_DIR).join(GC_LOCK);
        let gc_lock = self.gc_lock_file()?;
        gc_lock
            .unlock()
            .and_then(|()| gc_lock.lock_shared())
            .map_err(|e| Error::io("lock", path, e))
    }

    /// Moves a finished, fsynced temp file to `blobs/<alg>/<hex>` without replacing anything.
    /// If the blob already exists (another writer won the race) the existing file is kept and
    /// the temp file removed.
    fn install(&self, temp: TempPath, digest: &Digest) -> Result<()> {
        let dir = self.blobs_dir().join(digest.algorithm().name());
        ensure_private_dir(&dir)?;
        let target = self.blob_path(digest);
        match rename_noreplace(&temp, &target) {
            Ok(()) => {
                temp.keep()
                    .map_err(|e| Error::io("keep", &target, e.error))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::debug!(%digest, "blob already stored; keeping the existing file");
            }
            Err(e) => return Err(Error::io("move a blob to", &target, e)),
        }
        fsync_dir(&dir)
    }

    fn open_error(&self, digest: &Digest, path: PathBuf, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            Error::BlobNotFound {
                digest: digest.clone(),
                path,
            }
        } else {
            Error::io("open", path, e)
        }
    }
}

/// A blob being written into the store: bytes go to a temp file in the session directory while
/// they are hashed and counted. Nothing is visible under `blobs/` until [`BlobWriter::commit`];
/// dropping the writer (or [`BlobWriter::abort`]) removes the temp file.
pub struct BlobWriter<'s> {
    store: &'s Store,
    out: HashingWriter<BufWriter<Writeback>>,
    temp: TempPath,
}

/// Bytes after which a blob writer asks the kernel to start writing back what it has so far.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// A file that starts asynchronous writeback of every full chunk as it is written, so the
/// fsync in [`BlobWriter::commit`] has little left to flush: the disk works while we compress
/// (git and PostgreSQL do the same).
struct Writeback {
    file: File,
    written: u64,
    submitted: u64,
}

impl Writeback {
    fn new(file: File) -> Self {
        Writeback {
            file,
            written: 0,
            submitted: 0,
        }
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.submitted >= WRITEBACK_CHUNK {
            start_writeback(&self.file, self.submitted, self.written - self.submitted);
            self.submitted = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writeback of a range without waiting for
/// it. Only a hint; durability still comes from the fsync at commit, so errors are ignored.
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open and owned by `file` for the duration of the call; the
    // syscall only reads its integer arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl std::fmt::Debug for BlobWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("temp", &self.temp)
            .field("written", &self.out.written())
            .finish()
    }
}

impl BlobWriter<'_> {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// Finishes the blob. If `expected` (digest, size) is given, the size and then the digest
    /// must match, otherwise nothing becomes visible. The file is fsynced, made read-only and
    /// moved to `blobs/<alg>/<hex>`; if that blob already exists the existing one is kept.
    /// Returns the digest and size.
    pub fn commit(self, expected: Option<(&Digest, u64)>) -> Result<(Digest, u64)> {
        self.commit_as(expected, "new blob")
    }

    /// Discards the blob.
    pub fn abort(self) {}

    /// [`BlobWriter::commit`] with `what` naming the content in errors.
    fn commit_as(self, expected: Option<(&Digest, u64)>, what: &str) -> Result<(Digest, u64)> {
        let BlobWriter { store, out, temp } = self;
        let (buffered, digest, size) = out.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io("write", &*temp, e.into_error()))?
            .file;
        if let Some((want, want_size)) = expected {
            check_content(what, (want, want_size), (&digest, size))?;
        }
        file.sync_all().map_err(|e| Error::io("fsync", &*temp, e))?;
        file.set_permissions(Permissions::from_mode(BLOB_MODE))
            .map_err(|e| Error::io("chmod", &*temp, e))?;
        drop(file);
        store.install(temp, &digest)?;
        tracing::debug!(%digest, size, "committed blob");
        Ok((digest, size))
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Checks the size, then the digest, of written content against what was expected.
fn check_content(what: &str, expected: (&Digest, u64), actual: (&Digest, u64)) -> Result<()> {
    if actual.1 != expected.1 {
        return Err(Error::SizeMismatch {
            what: format!("{what} (expected {})", expected.0),
            expected: expected.1,
            actual: Some(actual.1),
        });
    }
    if actual.0 != expected.0 {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: expected.0.clone(),
            actual: actual.0.clone(),
        });
    }
    Ok(())
}

fn corrupt(digest: &Digest, path: PathBuf, actual: Digest) -> Error {
    Error::CorruptBlob {
        digest: digest.clone(),
        path,
        actual,
    }
}

/// Creates the root directory (mode 0700) and any missing parents.
fn create_root(root: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(root)
        .map_err(|e| Error::io("create directory", root, e))
}

/// Why a store root that exists cannot be written (`EROFS`, `EACCES`, `EPERM` from
/// `access(W_OK)`), or `None` if it can, or does not exist yet.
fn read_only_reason(root: &Path) -> Option<String> {
    match rustix::fs::access(root, rustix::fs::Access::WRITE_OK) {
        Ok(()) => None,
        Err(e) if matches!(e, Errno::ROFS | Errno::ACCESS | Errno::PERM) => {
            Some(io::Error::from(e).to_string())
        }
        Err(_) => None,
    }
}

/// Opens an existing lock file read-only (enough for `flock`); `None` if it does not exist.
fn open_existing_lock_file(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("open lock file", path, e)),
    }
}

/// A registration in [`OPEN_STORES`] that is undone if opening fails.
struct Registered((u64, u64));

impl Drop for Registered {
    fn drop(&mut self) {
        let mut open = open_stores();
        if let Some(n) = open.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.0);
            }
        }
    }
}

/// How often a waiting gc looks again.
const GC_POLL: Duration = Duration::from_millis(100);

/// Takes `file`'s lock shared, calling `on_wait` once first if that has to wait.
fn lock_shared_reporting(file: &File, path: &Path, on_wait: impl FnOnce()) -> Result<()> {
    match file.try_lock_shared() {
        Ok(()) => return Ok(()),
        Err(TryLockError::WouldBlock) => on_wait(),
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    file.lock_shared().map_err(|e| Error::io("lock", path, e))
}

/// Refuses a root that other users could tamper with: it must be a directory (possibly behind
/// a symlink) owned by the current user and not writable by group or others. Returns its
/// (device, inode).
fn check_root_is_private(root: &Path) -> Result<(u64, u64)> {
    let meta = fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
    let unsafe_root = |reason: String| Error::UnsafeRoot {
        path: root.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_root("it is not a directory".to_owned()));
    }
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(unsafe_root(format!(
            "it is owned by uid {}, not by the current user (uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_root(format!(
            "its mode {:o} lets other users write to it; run chmod go-w on it",
            meta.mode() & 0o7777
        )));
    }
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{blob_files, open_store};

    #[test]
    fn remove_corrupt_blob_removes_only_corrupt_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = store.put_bytes(b"good").unwrap();
        let bad = store.put_bytes(b"bad!").unwrap();
        let p = store.blob_path(&bad);
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"BAD!").unwrap();
        assert!(!store.remove_corrupt_blob(&good).unwrap());
        assert!(store.remove_corrupt_blob(&bad).unwrap());
        assert!(!store.has(&bad));
        assert!(store.has(&good));
        assert!(!store.remove_corrupt_blob(&bad).unwrap());
        // Written again, it is stored fresh.
        assert_eq!(store.put_bytes(b"bad!").unwrap(), bad);
        store.verify_blob(&bad).unwrap();
    }

    #[test]
    fn commit_with_right_expectation_stores_a_read_only_blob() {
        let (_dir, store) = open_store();
        let digest = Digest::sha256(b"hello");
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        assert_eq!(w.written(), 5);
        let (got, size) = w.commit(Some((&digest, 5))).unwrap();
        assert_eq!((got.clone(), size), (digest.clone(), 5));
        let path = store.blob_path(&digest);
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
        assert!(store.has(&digest));
        store.verify_blob(&digest).unwrap();
        assert_session_empty(&store);
    }

    #[test]
    fn commit_with_wrong_digest_or_size_stores_nothing() {
        let (_dir, store) = open_store();
        let wrong = Digest::sha256(b"other");
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"hello").unwrap();
        let err = w.commit(Some((&wrong, 5))).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&wrong.to_string()), "{msg}");
        assert!(msg.contains(&Digest::sha256(b"hello").to_string()), "{msg}");

        let right = Digest::sha256(b"hello");
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"hello").unwrap();
        let err = w.commit(Some((&right, 6))).unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&right.to_string()), "{err}");

        assert!(blob_files(&store).is_empty());
        assert_session_empty(&store);
    }

    #[test]
    fn abort_and_drop_remove_the_temp_file() {
        let (_dir, store) = open_store();
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        w.abort();
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_session_empty(&store);
        assert!(blob_files(&store).is_empty());
    }

    #[test]
    fn concurrent_writers_of_the_same_content_all_succeed() {
        let (dir, first) = open_store();
        let second = Store::open(dir.path()).unwrap();
        let content = vec![7u8; 300_000];
        let digest = Digest::sha256(&content);
        std::thread::scope(|s| {
            for store in [&first, &first, &second, &second] {
                let (content, digest) = (&content, &digest);
                s.spawn(move || {
                    let mut w = store.blob_writer().unwrap();
                    for chunk in content.chunks(4096) {
                        w.write_all(chunk).unwrap();
                    }
                    let got = w.commit(Some((digest, content.len() as u64))).unwrap();
                    assert_eq!(got.0, *digest);
                });
            }
        });
        let path = first.blob_path(&digest);
        assert_eq!(fs::read(&path).unwrap(), content);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
        assert_eq!(blob_files(&first), vec![path]);
        assert_session_empty(&first);
        assert_session_empty(&second);
    }

    #[test]
    fn put_bytes_and_read_blob() {
        let (_dir, store) = open_store();
        let digest = store.put_bytes(b"{}").unwrap();
        assert_eq!(store.put_bytes(b"{}").unwrap(), digest);
        assert_eq!(store.read_blob(&digest, 2).unwrap(), b"{}");
        let err = store.read_blob(&digest, 1).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 1, .. }), "{err}");
        let missing = Digest::sha256(b"missing");
        let err = store.open_blob(&missing).unwrap_err();
        assert!(matches!(err, Error::BlobNotFound { .. }), "{err}");
        assert!(err.to_string().contains(&missing.to_string()), "{err}");
    }

    #[test]
    fn read_and_verify_catch_a_corrupt_blob() {
        let (_dir, store) = open_store();
        let digest = store.put_bytes(b"hello").unwrap();
        let path = store.blob_path(&digest);
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"hellO").unwrap();
        let err = store.verify_blob(&digest).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&digest.to_string()), "{msg}");
        assert!(msg.contains(&Digest::sha256(b"hellO").to_string()), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(matches!(
            store.read_blob(&digest, 100),
            Err(Error::CorruptBlob { .. })
        ));
    }

    // T17: a source longer than announced is cut off at size + 1 and rejected.
    #[test]
    fn import_verifies_size_and_digest() {
        let (_dir, store) = open_store();
        let digest = Digest::sha256(b"hello");
        store
            .import(&b"hello"[..], (&digest, 5), "test source")
            .unwrap();
        assert_eq!(store.read_blob(&digest, 5).unwrap(), b"hello");

        let digest = Digest::sha256(b"abc");
        let endless = io::repeat(b'a');
        let err = store
            .import(endless, (&digest, 3), "endless source")
            .unwrap_err();
        assert!(
            matches!(err, Error::SizeMismatch { actual: None, .. }),
            "{err}"
        );
        let err = store
            .import(&b"ab"[..], (&digest, 3), "short source")
            .unwrap_err();
        assert!(err.to_string().contains("short source"), "{err}");
        let err = store
            .import(&b"abd"[..], (&digest, 3), "bad source")
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.has(&digest));
        assert_session_empty(&store);
    }

    #[test]
    fn link_or_copy_out_links_and_copy_verifies() {
        let (dir, store) = open_store();
        let digest = store.put_bytes(b"layer").unwrap();
        let dest = dir.path().join("out-link");
        assert_eq!(
            store.link_or_copy_out(&digest, &dest).unwrap(),
            LinkKind::Hardlink
        );
        assert_eq!(fs::read(&dest).unwrap(), b"layer");
        assert!(
            store.link_or_copy_out(&digest, &dest).is_err(),
            "dest exists"
        );

        let copy = dir.path().join("out-copy");
        store.copy_out(&digest, &copy).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), b"layer");
        assert_eq!(fs::metadata(&copy).unwrap().mode() & 0o777, 0o444);

        let path = store.blob_path(&digest);
        fs::remove_file(&dest).unwrap(); // drop the second link before editing
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"LAYER").unwrap();
        let bad = dir.path().join("out-bad");
        let err = store.copy_out(&digest, &bad).unwrap_err();
        assert!(matches!(err, Error::CorruptBlob { .. }), "{err}");
        assert!(!bad.exists(), "a failed copy leaves nothing behind");
    }

    #[test]
    fn dead_sessions_are_cleaned_live_ones_kept() {
        let (dir, store) = open_store();
        let live_session = store.session_dir().unwrap().to_owned();
        let dead = dir.path().join("tmp/s-x");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        fs::write(dead.join("blob-junk"), b"junk").unwrap();
        let stray = dir.path().join("tmp/stray-file");
        fs::write(&stray, b"x").unwrap();

        let second = Store::open(dir.path()).unwrap();
        assert!(!dead.exists(), "dead session removed");
        assert!(!stray.exists(), "stray entry removed");
        assert!(live_session.join("lock").exists(), "live session kept");
        assert!(second.session_dir().unwrap().exists());

        drop(store);
        assert!(!live_session.exists(), "drop removes the session dir");
    }

    #[test]
    fn the_reaper_sees_each_dead_session_before_it_is_removed() {
        let (dir, store) = open_store();
        let dead = dir.path().join("tmp/s-dead");
        fs::create_dir_all(dead.join("runtime-state/c1")).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let reaper: Reaper = std::sync::Arc::new(move |p: &Path| {
            // Called while the session is still whole.
            log.lock()
                .unwrap()
                .push((p.to_owned(), p.join("runtime-state/c1").is_dir()));
        });
        let options = StoreOptions {
            on_wait: None,
            reaper: Some(reaper),
        };
        let second = Store::open_with(dir.path(), &options).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(dead.clone(), true)]);
        assert!(!dead.exists());
        // Live sessions are never reaped; a later leftover is, by gc's cleanup too.
        let own = store.session_dir().unwrap().to_owned();
        assert!(!seen.lock().unwrap().iter().any(|(p, _)| *p == own));
        let dead2 = dir.path().join("tmp/s-dead2");
        fs::create_dir(&dead2).unwrap();
        let report = second.fsck(&crate::FsckOptions { repair: true }).unwrap();
        assert_eq!(report.unrepaired(), 0);
        assert_eq!(seen.lock().unwrap().last(), Some(&(dead2, false)));
    }

    #[test]
    fn unknown_top_level_dirs_are_left_alone() {
        let (dir, store) = open_store();
        drop(store);
        fs::create_dir(dir.path().join("cache-v1")).unwrap();
        fs::write(dir.path().join("cache-v1/entry"), b"x").unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert!(dir.path().join("cache-v1/entry").exists());
    }

    #[test]
    fn root_is_private() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("home");
        let store = Store::open(&root).unwrap();
        for sub in ["", "blobs", "blobs/sha256", "tmp", "refs-v1", "locks"] {
            let mode = fs::metadata(root.join(sub)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{sub}");
        }
        drop(store);
        fs::set_permissions(&root, Permissions::from_mode(0o777)).unwrap();
        let err = Store::open(&root).unwrap_err();
        assert!(matches!(err, Error::UnsafeRoot { .. }), "{err}");
    }

    /// A FIFO in place of a blob hung every reader of the store.
    #[test]
    fn regression_a_fifo_in_place_of_a_blob_hung_readers() {
        use crate::test_support::{mkfifo, within};
        let (dir, store) = open_store();
        let digest = store.put_bytes(b"blob").unwrap();
        let path = store.blob_path(&digest);
        fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let root = dir.path().to_owned();
        let (open, verify, fsck) = within(20, move || {
            let store = Store::open(&root).unwrap();
            let fsck = store.fsck(&crate::FsckOptions::default()).unwrap();
            (
                store.open_blob(&digest).unwrap_err().to_string(),
                store.verify_blob(&digest).unwrap_err().to_string(),
                fsck.findings
                    .iter()
                    .map(|f| f.problem.to_string())
                    .collect::<Vec<_>>(),
            )
        });
        for e in [open, verify] {
            assert!(
                e.contains(&path.display().to_string()) && e.contains("FIFO"),
                "{e}"
            );
        }
        assert_eq!(fsck, vec![format!("stray file {}", path.display())]);
        drop(store);
    }

    fn assert_session_empty(store: &Store) {
        let names: Vec<_> = fs::read_dir(store.session_dir().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "lock")
            .collect();
        assert!(names.is_empty(), "leftover temp files: {names:?}");
    }
}
