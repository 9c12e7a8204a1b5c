//! The crate's error type. Every variant names the path or cache key at fault.

use std::io;
use std::path::PathBuf;

use crate::CacheKey;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the stat and action caches.
///
/// A cache never fails a build by itself being damaged: unreadable or corrupt cache files are
/// misses. These errors come from the files being hashed and from writing cache files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("open", "rename", …).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file whose metadata changed between the stat the caller made and the end of hashing
    /// it, so its digest cannot be trusted. Returned inside an `io::Error` by
    /// [`crate::StatCache::digest`].
    #[error(
        "{} changed while it was being read; make sure nothing writes to the inputs during a build and retry",
        path.display()
    )]
    ChangedWhileReading {
        /// The file.
        path: PathBuf,
    },
    /// A path given to the stat cache that does not lead to a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A value that cannot be stored in an action-cache entry.
    #[error("cannot serialise the value of cache entry {key}: {source}")]
    Serialize {
        /// The entry's key.
        key: CacheKey,
        /// Why serde failed.
        #[source]
        source: serde_json::Error,
    },
    /// An output descriptor that breaks the OCI rules (it could never be read back).
    #[error("output {index} of cache entry {key} is invalid: {reason}")]
    InvalidOutput {
        /// The entry's key.
        key: CacheKey,
        /// The output's position.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An action-cache entry larger than entries may be.
    #[error("cache entry {key} would be {size} bytes, over the limit of {limit}")]
    EntryTooLarge {
        /// The entry's key.
        key: CacheKey,
        /// Its serialised size.
        size: usize,
        /// The cap.
        limit: u64,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Wraps this error in an `io::Error` of `kind`, for APIs that return `io::Result`.
    pub(crate) fn into_io(self, kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, self)
    }
}
