//! The rootfs cache: unpacked images keyed by chain id.
//!
//! ```text
//! DIR/                    0700
//!   v1/                   0700 (a format change gets a new bucket)
//!     sha256-<hex>/rootfs   a complete rootfs: only ever renamed into place whole
//!     sha256-<hex>.lock     serialises unpacking one chain id across threads and processes
//!     tmp-<unique>/rootfs   being unpacked (or left by a crash)
//!     tmp-<unique>.lock     held by the live process unpacking into tmp-<unique>
//! ```
//!
//! Leftovers of crashed runs (temp dirs whose lock nobody holds) are removed at open.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_oci::Digest;
use rustix::fd::AsFd;

use crate::fsops::{list_dir, open_dir_path, remove_any};
use crate::{Error, Result, UnpackOptions};

/// The bucket version: bumped when the layout or the meaning of a cached rootfs changes.
const BUCKET: &str = "v1";
const TMP_PREFIX: &str = "tmp-";
const LOCK_SUFFIX: &str = ".lock";

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

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
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

    /// The rootfs of `chain_id` if it is cached.
    pub fn get(&self, chain_id: &Digest) -> Option<PathBuf> {
        let p = self.rootfs_path(chain_id);
        p.is_dir().then_some(p)
    }

    fn key(chain_id: &Digest) -> String {
        format!("{}-{}", chain_id.algorithm(), chain_id.hex())
    }

    fn rootfs_path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(Self::key(chain_id)).join("rootfs")
    }

    /// The rootfs of `chain_id` (`sha256:…`), unpacked on first use from the layers `layers`
    /// returns (called only then). The tree is unpacked into a temp directory, synced, then
    /// renamed into place, so a cached rootfs is always complete. Concurrent callers for the
    /// same chain id (threads or processes) wait for the one that unpacks, then share its
    /// result.
    pub fn get_or_unpack<F>(
        &self,
        chain_id: &str,
        layers: F,
        opts: &UnpackOptions,
    ) -> Result<PathBuf>
    where
        F: FnOnce() -> Result<Vec<(String, Box<dyn Read>)>>,
    {
        let digest = Digest::parse(chain_id).map_err(|e| Error::InvalidChainId {
            chain_id: chain_id.chars().take(160).collect(),
            reason: e.to_string(),
        })?;
        let rootfs = self.rootfs_path(&digest);
        let key = Self::key(&digest);
        if rootfs.is_dir() {
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
        if rootfs.is_dir() {
            tracing::debug!(%digest, "rootfs unpacked by another caller");
            return Ok(rootfs);
        }
        let (tmp, tmp_lock_path, tmp_lock) = self.new_temp()?;
        let result = self.fill(&tmp, &self.dir.join(&key), layers, opts);
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

    fn fill<F>(&self, tmp: &Path, dest: &Path, layers: F, opts: &UnpackOptions) -> Result<()>
    where
        F: FnOnce() -> Result<Vec<(String, Box<dyn Read>)>>,
    {
        let root = tmp.join("rootfs");
        let layers = layers()?;
        crate::unpack_image(&root, layers, opts)?;
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
}
