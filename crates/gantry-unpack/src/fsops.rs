//! fd-relative filesystem primitives: resolving directories inside a root with `openat2`,
//! creating missing parents, and removing trees without following symlinks or leaving the
//! tree (`..` steps are checked against the device and inode they came from).

use std::io;
use std::path::Path;
use std::rc::Rc;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec};
use rustix::io::Errno;

/// How every path inside the root is resolved.
pub(crate) const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` (trusted: the caller's own directory) as a directory fd that can be read.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, retrying on `EAGAIN`
/// (which the kernel returns when a rename raced with the lookup).
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
) -> io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), IN_ROOT) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            Err(Errno::NOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "openat2 is not available (Linux 5.6 or later is required)",
                ));
            }
            r => return Ok(r?),
        }
    }
}

/// Opens the directory `name` in `dir` without following a symlink there.
pub(crate) fn open_child_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    flags: OFlags,
) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The type of `name` in `dir`, not following a symlink; `None` when it does not exist.
pub(crate) fn type_of(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory (without `.` and `..`), with their types when the filesystem
/// reports them.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), e.file_type()));
    }
    Ok(out)
}

/// Removes `name` in `dir` whatever it is (a directory with everything in it); symlinks are
/// removed, never followed. Returns whether something was there.
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(Errno::ISDIR) => {
            remove_tree(dir, name)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the directory `name` in `parent` and everything under it, with a constant number
/// of open fds whatever the depth: it descends one directory at a time and climbs back with
/// `..`, checking that `..` is the directory it came from.
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let mut cur = match open_child_dir(parent, name, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTDIR | Errno::LOOP)) => {
            // Not a directory (any more): a plain unlink does.
            rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // The names descended into, with the (dev, ino) of the directory that holds each.
    let mut stack: Vec<(Vec<u8>, (u64, u64))> = Vec::new();
    loop {
        let mut descend = None;
        for (child, ft) in list_dir(cur.as_fd())? {
            let is_dir = match ft {
                FileType::Directory => true,
                FileType::Unknown => type_of(cur.as_fd(), &child)? == Some(FileType::Directory),
                _ => false,
            };
            if is_dir {
                descend = Some(child);
                break;
            }
            match rustix::fs::unlinkat(cur.as_fd(), &child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    descend = Some(child);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(child) = descend {
            match open_child_dir(cur.as_fd(), &child, OFlags::RDONLY) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&cur)?;
                    stack.push((child, (st.st_dev, st.st_ino)));
                    cur = fd;
                }
                Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTDIR | Errno::LOOP)) => {
                    rustix::fs::unlinkat(cur.as_fd(), &child, AtFlags::empty())?;
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        // `cur` is empty.
        let Some((child, (dev, ino))) = stack.pop() else {
            drop(cur);
            rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
            return Ok(());
        };
        let up = rustix::fs::openat(
            &cur,
            "..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&up)?;
        if (st.st_dev, st.st_ino) != (dev, ino) {
            return Err(io::Error::other(
                "a directory was moved while its tree was being removed",
            ));
        }
        cur = up;
        rustix::fs::unlinkat(&cur, &child, AtFlags::REMOVEDIR)?;
    }
}

/// Splits a normalised path into its parent and final component.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// Resolves parent directories inside a root, creating missing ones (0755), and remembers the
/// last one (tars are mostly sorted, so consecutive entries share it). The memory is dropped
/// whenever anything is removed, since a removal can change what a path resolves to.
pub(crate) struct Resolver {
    root: Rc<OwnedFd>,
    last: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Existing directories that missing parents were created in, with their mtimes from
    /// before (for the caller to restore).
    pub(crate) grown: Vec<(Vec<u8>, Timespec)>,
}

/// The mtime of an open file.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn mtime_of(fd: BorrowedFd<'_>) -> io::Result<Timespec> {
    let st = rustix::fs::fstat(fd)?;
    Ok(Timespec {
        tv_sec: st.st_mtime as i64,
        tv_nsec: st.st_mtime_nsec as i64,
    })
}

impl Resolver {
    pub(crate) fn new(root: Rc<OwnedFd>) -> Self {
        Resolver {
            root,
            last: None,
            grown: Vec::new(),
        }
    }

    /// The root directory (opened for reading).
    pub(crate) fn root(&self) -> &Rc<OwnedFd> {
        &self.root
    }

    /// Forgets the remembered directory.
    pub(crate) fn invalidate(&mut self) {
        self.last = None;
    }

    /// The directory `dir` (a normalised path, empty for the root), resolved inside the root.
    /// With `create`, missing directories are created with mode 0755; otherwise a missing one
    /// is `ENOENT`.
    pub(crate) fn dir(&mut self, dir: &[u8], create: bool) -> io::Result<Rc<OwnedFd>> {
        if dir.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((p, fd)) = &self.last
            && p == dir
        {
            return Ok(fd.clone());
        }
        let fd = match open_in_root(self.root.as_fd(), dir, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if create && Errno::from_io_error(&e) == Some(Errno::NOENT) => {
                self.create_dirs(dir)?
            }
            Err(e) => return Err(e),
        };
        let fd = Rc::new(fd);
        self.last = Some((dir.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Walks `dir` one component at a time, creating what is missing.
    fn create_dirs(&mut self, dir: &[u8]) -> io::Result<OwnedFd> {
        let mut cur: Option<OwnedFd> = None;
        let mut creating = false;
        let mut grew = false;
        let mut end = 0;
        while end < dir.len() {
            let next = dir[end..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(dir.len(), |i| end + i);
            let prefix = &dir[..next];
            let comp = &dir[end..next];
            end = next + 1;
            if !creating {
                match open_in_root(self.root.as_fd(), prefix, OFlags::PATH | OFlags::DIRECTORY) {
                    Ok(fd) => {
                        cur = Some(fd);
                        continue;
                    }
                    Err(e) if Errno::from_io_error(&e) == Some(Errno::NOENT) => creating = true,
                    Err(e) => return Err(e),
                }
            }
            let parent = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            if !grew {
                // The first directory made goes into an existing one, whose mtime changes.
                grew = true;
                let parent_path = prefix[..prefix.len() - comp.len()]
                    .strip_suffix(b"/")
                    .unwrap_or(b"");
                self.grown.push((parent_path.to_vec(), mtime_of(parent)?));
            }
            match rustix::fs::mkdirat(parent, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{:?} exists but does not resolve to a directory (a dangling symlink?)",
                            String::from_utf8_lossy(prefix)
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            let fd = open_child_dir(parent, comp, OFlags::RDONLY)?;
            // mkdir applies the umask; implicit parents are 0755 whatever it is.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
            cur = Some(fd);
        }
        cur.ok_or_else(|| io::Error::other("empty directory path"))
    }
}
