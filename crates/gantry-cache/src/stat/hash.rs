//! Hashing a file that must stay in the state its key describes.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use gantry_oci::{Algorithm, Digest, Hasher};

use super::StatKey;
use crate::Error;

/// Read buffer for hashing.
pub(super) const HASH_BUFFER: usize = 256 << 10;

/// Hashes the regular file at `path` (sha256), checking that it is in the state `key` before
/// and after: if not, the error (of kind `Other`, wrapping [`Error::ChangedWhileReading`])
/// says the file changed while being read. A path that does not lead to a regular file is an
/// `InvalidInput` error wrapping [`Error::NotAFile`].
pub fn hash_file(path: &Path, key: StatKey) -> io::Result<Digest> {
    hash_with(path, key, Algorithm::Sha256, &mut Vec::new(), &mut None)
}

/// A hook called after every read while hashing (tests change files mid-read with it).
pub(super) type HookRef<'a> = Option<&'a mut (dyn FnMut(&Path) + Send + Sync)>;

pub(super) fn hash_with(
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
pub(super) fn io_error(action: &'static str, path: &Path, source: io::Error) -> io::Error {
    let kind = source.kind();
    Error::io(action, path, source).into_io(kind)
}

fn changed(path: &Path) -> io::Error {
    Error::ChangedWhileReading {
        path: path.to_owned(),
    }
    .into_io(io::ErrorKind::Other)
}
