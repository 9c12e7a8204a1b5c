//! Small filesystem helpers shared by both caches.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::{Error, Result};

/// Prefix of temp files in a bucket; never a valid entry name.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Creates `dir` and its missing parents with mode 0700.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Atomically replaces `target` (in directory `dir`) with `bytes`: a temp file in `dir`,
/// written, fsynced and renamed over `target`. Creates `dir` if needed, and tries once more if
/// the directory vanished meanwhile (caches may be deleted at any time).
///
/// The directory itself is not fsynced: after a crash a cache may have lost the rename, which
/// only loses entries.
pub(crate) fn replace_file(dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_replace_file(dir, target, bytes) {
            Err(Error::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempt < 3 => {}
            other => return other,
        }
    }
}

fn try_replace_file(dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    ensure_dir(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| Error::io("create a temp file in", dir, e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| Error::io("write", temp.path(), e))?;
    temp.persist(target)
        .map_err(|e| Error::io("rename a temp file to", target, e.error))?;
    Ok(())
}

/// Reads a whole file of at most `limit` bytes; a larger one is an `InvalidData` error.
pub(crate) fn read_capped(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    if len > limit {
        return Err(too_large(limit));
    }
    // The size is only a hint (the file may grow); `take` enforces the cap.
    let mut bytes = Vec::with_capacity(usize::try_from(len).map_or(0, |n| n + 1));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than the limit of {limit} bytes"),
    )
}

/// Removes a file; one that is already gone is not an error.
pub(crate) fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}
