use std::io;
use std::path::PathBuf;

/// Errors of the layer engine. Every variant names the path, entry or input at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path inside the image that is relative, escapes, or is otherwise unusable.
    #[error("invalid image path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// A source file or directory that cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Source {
        /// The source path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A source of the wrong kind.
    #[error("{} {reason}", path.display())]
    UnsupportedSource {
        /// The source path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A source that changed while the layer was being written.
    #[error("{} changed while the layer was written: {reason}", path.display())]
    SourceChanged {
        /// The source path.
        path: PathBuf,
        /// How.
        reason: String,
    },
    /// The same path twice in one layer.
    #[error("{path} appears twice in the layer (from {first} and from {second})")]
    DuplicatePath {
        /// The image path.
        path: String,
        /// The first source.
        first: String,
        /// The second source.
        second: String,
    },
    /// Metadata with a bad value.
    #[error("invalid {field} {value:?} for {path}: {reason}")]
    InvalidMetadata {
        /// The entry (or "layer defaults").
        path: String,
        /// The field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why.
        reason: String,
    },
    /// Metadata for a path that is not in the layer.
    #[error("metadata is given for {path}, which is not in the layer")]
    UnknownMetadataPath {
        /// The image path.
        path: String,
    },
    /// A hard link whose target is not a regular file of the layer.
    #[error("hard link {path} -> {target}: {reason}")]
    HardlinkTarget {
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// Why.
        reason: String,
    },
    /// An include or exclude pattern that does not parse.
    #[error("invalid glob {pattern:?}: {source}")]
    Glob {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        #[source]
        source: globset::Error,
    },
    /// A tar input that is corrupt, truncated or unsafe.
    #[error("invalid tar {what}{}: {reason}", entry.as_ref().map(|e| format!(" (entry {e:?})")).unwrap_or_default())]
    InvalidTar {
        /// The tar file or layer.
        what: String,
        /// The offending entry, when one is at fault.
        entry: Option<String>,
        /// Why.
        reason: String,
    },
    /// A tar input that decompresses past a cap ([`crate::limits::Limits`]).
    #[error("{what}: {reason}")]
    Limit {
        /// The tar file or layer.
        what: String,
        /// Which cap, and its value.
        reason: String,
    },
    /// An unknown compression or an out-of-range level.
    #[error("invalid compression {name:?}: {reason}")]
    InvalidCompression {
        /// The name (and level) given.
        name: String,
        /// Why.
        reason: String,
    },
    /// A layer spec that is inconsistent.
    #[error("invalid layer spec {what}: {reason}")]
    Spec {
        /// The spec (file name or "command line").
        what: String,
        /// Why.
        reason: String,
    },
    /// A build step's filesystem that cannot be captured as a layer.
    #[error("{what}: {reason}")]
    Capture {
        /// The output or the path in the image at fault (`output /out/app`).
        what: String,
        /// Why.
        reason: String,
    },
    /// Writing the layer failed.
    #[error("writing the layer failed: {0}")]
    Output(#[source] io::Error),
    /// A bug: a worker thread died.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// An OCI vocabulary error.
    #[error(transparent)]
    Oci(#[from] gantry_oci::Error),
}

impl Error {
    /// Wraps an error of the output side, unwrapping an `Error` carried inside an `io::Error`.
    pub(crate) fn output(e: io::Error) -> Self {
        Error::Output(e)
    }
}
