//! Per-process session directories under `tmp/`.
//!
//! Every open store creates `tmp/s-<random>/` and keeps its `lock` file locked exclusively, so
//! any session directory whose lock can be taken belongs to a process that has died. Sessions
//! are created, and leftovers found, only while holding `locks/tmp.lock`, so a session directory
//! without a lock file is one whose creator died half-way, never one being created right now.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::fsutil::{open_regular_if_exists, remove_any};
use crate::store::Reaper;
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
pub(crate) fn leftovers(tmp: &Path, own: Option<&Path>) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(tmp).map_err(|e| Error::io("list", tmp, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io("list", tmp, e))?.path();
        if Some(path.as_path()) != own && !is_live_session(&path)? {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Removes what [`leftovers`] found (see [`remove_leftover`]). Returns how many entries were
/// removed.
pub(crate) fn remove_leftovers(tmp: &Path, own: &Path, reaper: Option<&Reaper>) -> Result<u64> {
    let mut removed = 0;
    for path in leftovers(tmp, Some(own))? {
        // A leftover that cannot be removed must not stop the store from opening.
        match remove_leftover(&path, reaper) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove the leftover {}: {e}", path.display()),
        }
    }
    Ok(removed)
}

/// Removes one leftover of `tmp/`: first `reaper` stops what the dead process left running
/// there (its containers), then its mounts are detached, then it is deleted.
pub(crate) fn remove_leftover(path: &Path, reaper: Option<&Reaper>) -> Result<()> {
    tracing::debug!(path = %path.display(), "removing leftover temp entry");
    if let Some(reap) = reaper
        && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    {
        reap(path);
    }
    // A process killed during a build step can leave its overlay mounted here: detach it
    // first, or the removal would walk into the mount and then fail on the busy mount point.
    unmount_under(path);
    remove_any(path)
}

/// Lazily unmounts every mount at or below `dir` (deepest first), as far as this process is
/// allowed to; mounts are read from `/proc/self/mountinfo`.
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        match rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => tracing::debug!(mount = %p.display(), "unmounted a leftover mount"),
            Err(e) => tracing::debug!(mount = %p.display(), error = %e, "cannot unmount"),
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)))
        .then(|| {
            b[i + 1..i + 4]
                .iter()
                .fold(0u16, |n, c| n * 8 + u16::from(c - b'0'))
        })
        .and_then(|n| u8::try_from(n).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The session directories in `tmp` whose lock is held by a live store (for reports: the
/// answer may change at once).
pub(crate) fn live_sessions(tmp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(tmp) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_live_session(p).unwrap_or(false))
        .collect()
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
    // Opened without blocking: a FIFO planted as the lock marks a broken session, not a live one.
    let lock = match open_regular_if_exists(&lock_path) {
        Ok(Some(file)) => file,
        Ok(None) | Err(Error::NotRegularFile { .. }) => return Ok(false),
        Err(e) => return Err(e),
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
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path(r"/x\134y"), "/x\\y");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
        assert_eq!(unescape_mount_path(r"/big\777"), r"/big\777");
    }

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

        let found = leftovers(tmp.path(), Some(live.path())).unwrap();
        assert_eq!(found, vec![dead, half_created, stray]);
        assert!(!found.iter().any(|p| p == other_live.path()));

        let dir = other_live.path().to_owned();
        drop(other_live);
        assert!(!dir.exists(), "a dropped session removes its directory");
    }
}
