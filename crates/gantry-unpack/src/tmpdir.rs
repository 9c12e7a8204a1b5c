//! Private temporary directories next to an unpack destination: `.gantry-unpack-<pid>-<n>-<t>`,
//! mode 0700, on the destination's filesystem (so the tree is renamed into place), and locked
//! (`flock` on the directory) for as long as their owner lives. A directory whose lock is free
//! and whose owner process is gone is a leftover of a crash, which the next unpack next to it
//! removes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::fsops::{list_dir, open_child_dir, remove_any};
use crate::{Error, Result};

/// The start of the names of gantry's temporary directories.
pub(crate) const PREFIX: &str = ".gantry-unpack-";

/// A temporary directory, removed with [`TempDir::remove`] (or left for the next unpack to
/// clean if the process dies).
pub(crate) struct TempDir {
    parent: OwnedFd,
    path: PathBuf,
    name: String,
    /// The directory, open and locked.
    lock: Option<OwnedFd>,
}

impl TempDir {
    /// Creates (mode 0700) and locks a new temporary directory in `parent` (open as
    /// `parent_fd`).
    pub(crate) fn create(parent_fd: BorrowedFd<'_>, parent: &Path) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let io_err = |op: &'static str, path: PathBuf| {
            move |e: Errno| Error::Io {
                op,
                path,
                source: e.into(),
            }
        };
        let dup = rustix::io::fcntl_dupfd_cloexec(parent_fd, 0)
            .map_err(io_err("open", parent.to_owned()))?;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                "{PREFIX}{}-{}-{nanos:x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = parent.join(&name);
            match rustix::fs::mkdirat(parent_fd, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(io_err("create", path)(e)),
            }
            let dir = TempDir {
                parent: dup,
                path,
                name,
                lock: None,
            };
            let locked = (|| {
                let fd = open_child_dir(parent_fd, dir.name.as_bytes(), OFlags::RDONLY)?;
                rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
                // mkdir applied the umask; make sure of the mode whatever it was.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
                Ok::<_, std::io::Error>(fd)
            })();
            let mut dir = dir;
            match locked {
                Ok(fd) => dir.lock = Some(fd),
                Err(source) => {
                    let path = dir.path.clone();
                    dir.remove();
                    return Err(Error::Io {
                        op: "lock",
                        path,
                        source,
                    });
                }
            }
            return Ok(dir);
        }
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Its name in the parent directory.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Removes it and everything in it.
    pub(crate) fn remove(self) {
        if let Err(e) = remove_any(self.parent.as_fd(), self.name.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a temporary directory");
        }
    }
}

/// Whether process `pid` exists (in this pid namespace).
fn alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// Removes the temporary directories in `parent` (open as `parent_fd`) left by dead processes:
/// the lock is free and the process named in the directory's name is gone. Best effort: what
/// cannot be removed (another user's) is left alone.
pub(crate) fn clean_beside(parent_fd: BorrowedFd<'_>, parent: &Path) {
    let Ok(names) = list_dir(parent_fd) else {
        return;
    };
    for (name, _) in names {
        let Some(rest) = name.strip_prefix(PREFIX.as_bytes()) else {
            continue;
        };
        let pid = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        let Some(pid) = pid else { continue };
        if alive(pid) {
            continue;
        }
        // Only directories, never followed through a symlink, and only unlocked ones.
        let Ok(fd) = open_child_dir(parent_fd, &name, OFlags::RDONLY) else {
            continue;
        };
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        let path = parent.join(std::ffi::OsStr::new(
            std::str::from_utf8(&name).unwrap_or_default(),
        ));
        match remove_any(parent_fd, &name) {
            Ok(_) => {
                tracing::info!(path = %path.display(), "removed a temporary directory left by a dead gantry process")
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove a leftover temporary directory")
            }
        }
    }
}
