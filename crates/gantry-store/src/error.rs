//! The crate's error type. Every variant names the path, digest or name at fault.

use std::io;
use std::path::PathBuf;

use gantry_oci::Digest;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the store and layout code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("open", "fsync directory", …).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Copying a stream failed on either side.
    #[error("cannot copy {what}: {source}")]
    Copy {
        /// The stream and its destination.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The store root is not a private directory of the current user.
    #[error("store root {} is unsafe: {reason}", path.display())]
    UnsafeRoot {
        /// The root.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A blob that is not in the store.
    #[error("blob {digest} is not in the store (looked for {})", path.display())]
    BlobNotFound {
        /// The blob.
        digest: Digest,
        /// Where it would be.
        path: PathBuf,
    },
    /// A stored file whose content does not hash to its name.
    #[error("blob {digest} in {} hashes to {actual}", path.display())]
    CorruptBlob {
        /// The name of the blob.
        digest: Digest,
        /// Its file.
        path: PathBuf,
        /// What its content hashes to.
        actual: Digest,
    },
    /// Content whose length differs from the expected size.
    #[error("{what} is {}", match actual {
        Some(n) => format!("{n} bytes long, expected {expected}"),
        None => format!("longer than the expected {expected} bytes"),
    })]
    SizeMismatch {
        /// The content (which blob, from where).
        what: String,
        /// The size we were told.
        expected: u64,
        /// The size we saw; `None` when the content was longer than expected.
        actual: Option<u64>,
    },
    /// Content that does not hash to the expected digest.
    #[error("{what} hashes to {actual}, expected {expected}")]
    DigestMismatch {
        /// The content (which blob, from where).
        what: String,
        /// The digest we were told.
        expected: Digest,
        /// The digest of the bytes we saw.
        actual: Digest,
    },
    /// A path read as a file that is something else: a FIFO, a device, a socket, a directory
    /// (see [`crate::open_regular`]).
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegularFile {
        /// The path (as given; a symlink is followed).
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A write to a store that was opened read-only (see [`crate::Store::read_only`]).
    #[error(
        "cannot {action}: the store at {} is read-only ({reason}); this command needs write access to it",
        root.display()
    )]
    ReadOnlyStore {
        /// The store root.
        root: PathBuf,
        /// What needed writing.
        action: &'static str,
        /// Why it is read-only.
        reason: String,
    },
    /// A file larger than the cap for its kind.
    #[error("{} is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// An error from the OCI vocabulary: a document that does not parse or breaks the spec, or
    /// a verified stream whose size or digest did not match (the message names the blob).
    #[error(transparent)]
    Oci(#[from] gantry_oci::Error),
    /// A directory that is not a readable OCI image layout.
    #[error("{} is not an OCI image layout: {reason}", path.display())]
    NotALayout {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob that a layout (directory or archive) does not contain.
    #[error("{what} has no blob {digest} (looked for {looked_for})")]
    LayoutBlobNotFound {
        /// The layout (`layout DIR`, `oci-archive FILE`).
        what: String,
        /// The blob.
        digest: Digest,
        /// Where it would be: a path, or a member of an archive.
        looked_for: String,
    },
    /// A tag that no manifest in a layout carries.
    #[error("{what} has no tag {tag} (tags: {})", list(tags))]
    TagNotFound {
        /// The layout (`layout DIR`, `oci-archive FILE`).
        what: String,
        /// The tag asked for.
        tag: String,
        /// The tags it has.
        tags: Vec<String>,
    },
    /// A layout whose `index.json` lists no manifests.
    #[error("{what} holds no images")]
    EmptyLayout {
        /// The layout (`layout DIR`, `oci-archive FILE`).
        what: String,
    },
    /// No tag or digest was given, and the layout holds more than one manifest.
    #[error(
        "{what} holds {count} manifests; choose one by tag or digest (tags: {})",
        list(tags)
    )]
    AmbiguousLayout {
        /// The layout (`layout DIR`, `oci-archive FILE`).
        what: String,
        /// How many entries its `index.json` has.
        count: usize,
        /// The tags it has.
        tags: Vec<String>,
    },
    /// A blob or document larger than the cap for its kind.
    #[error("{what} is larger than the limit of {limit} bytes")]
    BlobTooLarge {
        /// The blob and where it is.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// A file that is not a tar archive gantry can read: a bad header, no end marker, too many
    /// members, an unsupported extension.
    #[error("{} is not a valid tar archive: {reason}", archive.display())]
    BadArchive {
        /// The archive file.
        archive: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A member of a tar archive that cannot be used: an escaping or duplicate name, data past
    /// the end of the file, a symlink where a file is needed, a digest that does not match.
    #[error("{}: member {member}: {reason}", archive.display())]
    BadArchiveMember {
        /// The archive file.
        archive: PathBuf,
        /// The member's name as stored (lossily decoded).
        member: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A docker-archive whose `manifest.json` cannot be used, or an image not in it.
    #[error("docker-archive {}: {reason}", archive.display())]
    DockerArchive {
        /// The archive file.
        archive: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An archive that cannot be written as asked (a manifest or blob missing from it, an index
    /// where a docker-archive needs an image manifest, a reference it cannot carry).
    #[error("cannot write {what}: {reason}")]
    ArchiveContent {
        /// The archive being written (`docker-archive FILE`).
        what: String,
        /// Why.
        reason: String,
    },
    /// An index without a manifest for the requested platform.
    #[error(
        "{what} has no manifest for platform {wanted} (available: {})",
        list(available)
    )]
    NoMatchingPlatform {
        /// The index (digest and where it is).
        what: String,
        /// The platform asked for (`os/arch[/variant]`).
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// Indexes that refer to each other in a loop.
    #[error("{what}: index {digest} is reached twice; the indexes form a cycle")]
    IndexCycle {
        /// Where the indexes are.
        what: String,
        /// The index seen twice.
        digest: Digest,
    },
    /// Indexes nested deeper than [`crate::MAX_INDEX_DEPTH`].
    #[error("{what}: indexes are nested more than {limit} levels deep")]
    IndexTooDeep {
        /// Where the indexes are.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// An output path that exists and is not something gantry may replace.
    #[error("refusing to replace {}: it is not an OCI image layout", path.display())]
    RefuseToReplace {
        /// The output path.
        path: PathBuf,
    },
    /// An output file path that exists and is not something gantry may replace.
    #[error("refusing to replace {}: {reason}", path.display())]
    RefuseToReplaceFile {
        /// The output path.
        path: PathBuf,
        /// What it is (a directory, a symlink, a file that is not a tar archive).
        reason: &'static str,
    },
    /// An output path that cannot name a directory (such as `/`).
    #[error("invalid output path {}: {reason}", path.display())]
    InvalidOutputPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A ref kind that is not a simple lowercase word.
    #[error("invalid ref kind {kind:?}: use a lowercase word of letters and digits")]
    InvalidRefKind {
        /// The kind.
        kind: String,
    },
    /// A ref name that is empty or too long.
    #[error("invalid ref name {name:?}: {reason}")]
    InvalidRefName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A ref path that cannot be recorded.
    #[error("invalid ref path {}: {reason}", path.display())]
    InvalidRefPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A ref file that cannot be read back.
    #[error("ref file {} is corrupt: {reason}", path.display())]
    CorruptRef {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
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

    /// Turns the error of a copy into ours: a verification failure reported by a
    /// `VerifyingReader` becomes [`Error::Oci`], anything else [`Error::Copy`].
    pub(crate) fn copy(what: impl Into<String>, source: io::Error) -> Self {
        match source.downcast::<gantry_oci::Error>() {
            Ok(verification) => Error::Oci(verification),
            Err(source) => Error::Copy {
                what: what.into(),
                source,
            },
        }
    }
}

/// Formats a list for an error message.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
