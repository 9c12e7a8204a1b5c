//! [`BlobRead`]: a place outside gantry's store that holds blobs by digest.

use std::any::Any;
use std::fmt;
use std::io::Read;

use crate::{Descriptor, Digest, Error};

/// A place that holds an image's blobs by digest: an OCI layout directory, an oci-archive, a
/// docker-archive. Such places are attacker input, so every read is verified: the reader that
/// [`BlobRead::open_blob`] returns checks the digest and size of what it reads against the
/// descriptor and fails at its end (and on every later read) when they differ.
pub trait BlobRead: fmt::Debug + Send + Sync {
    /// Opens the blob `desc` describes for streaming, verified against it as it is read.
    /// An error names the place and the blob.
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error>;

    /// Whether the place holds the blob (a shallow layout leaves out its base's layers).
    fn has_blob(&self, digest: &Digest) -> bool;

    /// The place in messages: `layout DIR`, `oci-archive FILE`, `docker-archive FILE`.
    fn describe(&self) -> String;

    /// The concrete type, for a writer that copies from its own format without hashing twice.
    fn as_any(&self) -> &dyn Any;
}
