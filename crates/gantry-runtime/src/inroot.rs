//! Reading a file of an untrusted root filesystem, resolved inside it by the kernel.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::{Error, Result};

/// `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, retrying on `EAGAIN`
/// (which the kernel returns when a rename raced with the lookup).
fn open_in_root(root: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
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

/// Reads the regular file `rel` of the rootfs at `rootfs`, resolved inside it (symlinks are
/// followed, but never out of the root), up to `max` bytes. `Ok(None)` when it does not exist;
/// an error when it is not a regular file (a device, a fifo, a directory) or is larger than
/// `max`. Nothing of the image is executed and no name service is asked.
pub fn read_in_root(rootfs: &Path, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let io_err = |source: io::Error| {
        Error::io(
            format!(
                "read {}",
                rootfs.join(rel.trim_start_matches('/')).display()
            ),
            source,
        )
    };
    let bad = |reason: &str| Error::InRoot {
        path: format!("/{}", rel.trim_start_matches('/')),
        reason: reason.to_owned(),
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("open {}", rootfs.display()), e.into()))?;
    let rel_bytes = OsStr::new(rel).as_bytes();
    if rel_bytes.contains(&0) {
        return Err(bad("the path contains a NUL byte"));
    }
    // Look first without opening for reading: opening a device can have side effects.
    let probe = match open_in_root(root.as_fd(), rel_bytes, OFlags::PATH) {
        Ok(fd) => fd,
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let st = rustix::fs::fstat(&probe).map_err(|e| io_err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad("not a regular file"));
    }
    if st.st_size as u64 > max {
        return Err(bad(&format!("larger than {max} bytes")));
    }
    let fd = open_in_root(
        root.as_fd(),
        rel_bytes,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
    )
    .map_err(io_err)?;
    let st2 = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Err(bad("the file changed while it was opened"));
    }
    let mut out = Vec::new();
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(io_err)?;
    if out.len() as u64 > max {
        return Err(bad(&format!("larger than {max} bytes")));
    }
    Ok(Some(out))
}
