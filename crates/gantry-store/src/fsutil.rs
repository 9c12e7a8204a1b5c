//! Small filesystem helpers shared by the store and the layout code.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use gantry_oci::{Algorithm, Digest, HashingReader};
use rustix::fs::{CWD, OFlags, RenameFlags, fcntl_getfl, fcntl_setfl, renameat_with};
use rustix::io::Errno;

use crate::{Error, Result};

/// Creates the directory `path` with mode 0700 unless it already exists, and fsyncs its parent
/// when it was created so that the new entry survives a crash.
pub(crate) fn ensure_private_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => match path.parent() {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(Error::io("create directory", path, e)),
    }
}

/// Flushes a directory's entries to disk, so that a rename or unlink in it survives a crash.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io("fsync directory", path, e))
}

/// Creates the file `path` (which must not exist) with `bytes` and `mode`, and fsyncs it.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

/// Opens `path` for reading if it is a regular file (symlinks are followed), and never blocks
/// doing so: the file is opened with `O_NONBLOCK | O_NOCTTY`, checked with `fstat`, and only a
/// regular file is kept (with `O_NONBLOCK` cleared again). A FIFO, a device, a socket or a
/// directory is [`Error::NotRegularFile`]; a missing path is [`Error::Io`] with the kind
/// `NotFound`. Every file gantry reads from a layout, an archive or the store is opened this
/// way, so a FIFO planted in their place cannot hang a command and `/dev/zero` cannot feed it
/// endless bytes.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_owned(),
            kind: file_kind(&meta.file_type()),
        });
    }
    let flags = fcntl_getfl(&file).map_err(|e| Error::io("read the flags of", path, e.into()))?;
    fcntl_setfl(&file, flags - OFlags::NONBLOCK)
        .map_err(|e| Error::io("set the flags of", path, e.into()))?;
    Ok(file)
}

/// [`open_regular`], with a missing path (or a symlink to one) as `Ok(None)`.
pub(crate) fn open_regular_if_exists(path: &Path) -> Result<Option<File>> {
    match open_regular(path) {
        Ok(file) => Ok(Some(file)),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a file that is not a regular file is, for messages.
pub(crate) fn file_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Reads a whole regular file (see [`open_regular`]), refusing files larger than `limit`.
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    read_file_capped(file, path, limit)
}

/// Reads the rest of an open file, refusing more than `limit` bytes; `path` names it in errors.
pub(crate) fn read_file_capped(file: File, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Hashes a regular file's content with `algorithm`.
pub(crate) fn hash_file(path: &Path, algorithm: Algorithm) -> Result<Digest> {
    let file = open_regular(path)?;
    let mut reader = HashingReader::new(file, algorithm);
    io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io("read", path, e))?;
    Ok(reader.finish().1)
}

/// Removes a file, symlink or directory tree without following symlinks. A path that is already
/// gone is not an error.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Opens (creating it if needed) a lock file.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("open lock file", path, e))
}

/// Opens a lock file and locks it exclusively, waiting for other holders. The lock is released
/// when the returned file is dropped.
pub(crate) fn lock_exclusive(path: &Path) -> Result<File> {
    let file = open_lock_file(path)?;
    file.lock().map_err(|e| Error::io("lock", path, e))?;
    Ok(file)
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists. Filesystems without
/// `renameat2` flags get a hard link plus unlink, which has the same no-replace guarantee.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if flags_unsupported(e) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Atomically swaps two paths (`renameat2(RENAME_EXCHANGE)`). Reports `Unsupported` on
/// filesystems that cannot do it, so the caller can fall back.
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(e) if flags_unsupported(e) => Err(io::ErrorKind::Unsupported.into()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `renameat2` failed because the filesystem does not support its flags.
fn flags_unsupported(e: Errno) -> bool {
    matches!(e, Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
}

/// Whether a hard link failed because linking is impossible here (other filesystem, not
/// permitted, too many links, unsupported) rather than because of the paths.
pub(crate) fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::XDEV | Errno::PERM | Errno::MLINK | Errno::OPNOTSUPP)
    )
}

/// Whether `path` is a directory itself (not a symlink to one).
pub(crate) fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The entries of a directory, sorted; a missing directory has none.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(|e| Error::io("list", dir, e))?.path());
    }
    paths.sort();
    Ok(paths)
}
