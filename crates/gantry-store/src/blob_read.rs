//! [`gantry_oci::BlobRead`] for the places outside the store that hold blobs: OCI layouts
//! (directories and oci-archives) and docker-archives. Every read is verified.

use std::any::Any;
use std::io::Read;

use gantry_oci::{BlobRead, Descriptor, Digest, media_types as mt};

use crate::{DockerArchive, Error, Layout};

/// A store error as the vocabulary crate's: unwrapped when it is one already.
fn to_oci(e: Error) -> gantry_oci::Error {
    match e {
        Error::Oci(e) => e,
        other => gantry_oci::Error::Blob(Box::new(other)),
    }
}

impl BlobRead for Layout {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, gantry_oci::Error> {
        Ok(Box::new(self.open_blob_verified(desc).map_err(to_oci)?))
    }

    fn has_blob(&self, digest: &Digest) -> bool {
        Layout::has_blob(self, digest)
    }

    fn describe(&self) -> String {
        Layout::describe(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl BlobRead for DockerArchive {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, gantry_oci::Error> {
        Ok(Box::new(self.open_blob_verified(desc).map_err(to_oci)?))
    }

    /// A member the images read so far hold, or a `blobs/<alg>/<hex>` member. Opening reads
    /// nothing, and the size is not checked until a reader reaches its end.
    fn has_blob(&self, digest: &Digest) -> bool {
        let probe = Descriptor::new(mt::OCI_LAYER_TAR, digest.clone(), 0);
        self.open_blob_verified(&probe).is_ok()
    }

    fn describe(&self) -> String {
        format!("docker-archive {}", self.path().display())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
