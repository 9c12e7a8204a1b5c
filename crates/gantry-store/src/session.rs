//! Per-process session directories under `tmp/`.
//!
//! Every open store creates `tmp/s-<random>/` and keeps its `lock` file locked exclusively, so
//! any session directory whose lock can be taken belongs to a process that has died. Sessions
//! are created, and leftovers found, only while holding `locks/tmp.lock`, so a session directory
//! without a lock file is one whose creator died half-way, never one being created right now.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::fsutil::remove_any;
use crate::{Error, Result};

/// Prefix of session directory names.
const SESSION_PREFIX: &str = "s-";
/// The lock file inside a session directory.
const SESSION_LOCK: &str = "lock";

/// A live session: its directory is removed when this is dropped, then its lock is released.
#[derive(Debug)]
pub(crate) struct Session {
    dir: TempDir,
    _lock: File,
}

impl Session {
    /// Creates a new session directory in `tmp` and locks it. Call with `tmp.lock` held.
    pub(crate) fn create(tmp: &Path) -> Result<Session> {
        let dir = tempfile::Builder::new()
            .prefix(SESSION_PREFIX)
            .tempdir_in(tmp)
            .map_err(|e| Error::io("create a session directory in", tmp, e))?;
        let lock_path = dir.path().join(SESSION_LOCK);
        let lock = File::create_new(&lock_path).map_err(|e| Error::io("create", &lock_path, e))?;
        lock.lock().map_err(|e| Error::io("lock", &lock_path, e))?;
        Ok(Session { dir, _lock: lock })
    }

    /// The session directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The entries of `tmp` that belong to no live session: the directories of dead sessions and
/// anything else that is not a session directory. `own` is never listed. Call with `tmp.lock`
/// held.
pub(crate) fn leftovers(tmp: &Path, own: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(tmp).map_err(|e| Error::io("list", tmp, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io("list", tmp, e))?.path();
        if path != own && !is_live_session(&path)? {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Removes what [`leftovers`] found. Returns how many entries were removed.
pub(crate) fn remove_leftovers(tmp: &Path, own: &Path) -> Result<u64> {
    let mut removed = 0;
    for path in leftovers(tmp, own)? {
        tracing::debug!(path = %path.display(), "removing leftover temp entry");
        remove_any(&path)?;
        removed += 1;
    }
    Ok(removed)
}

/// Whether `path` is a session directory whose lock is held by a live store.
fn is_live_session(path: &Path) -> Result<bool> {
    let is_session_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(SESSION_PREFIX));
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if !is_session_name || !is_dir {
        return Ok(false);
    }
    let lock_path = path.join(SESSION_LOCK);
    let lock = match File::open(&lock_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("open", &lock_path, e)),
    };
    match lock.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", &lock_path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sessions_are_kept_dead_ones_and_strays_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let live = Session::create(tmp.path()).unwrap();
        let other_live = Session::create(tmp.path()).unwrap();
        let dead = tmp.path().join("s-dead");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(SESSION_LOCK), b"").unwrap();
        let half_created = tmp.path().join("s-nolock");
        fs::create_dir(&half_created).unwrap();
        let stray = tmp.path().join("stray");
        fs::write(&stray, b"x").unwrap();

        let found = leftovers(tmp.path(), live.path()).unwrap();
        assert_eq!(found, vec![dead, half_created, stray]);
        assert!(!found.iter().any(|p| p == other_live.path()));

        let dir = other_live.path().to_owned();
        drop(other_live);
        assert!(!dir.exists(), "a dropped session removes its directory");
    }
}
