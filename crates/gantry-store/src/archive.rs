//! Image archives, as skopeo's transports name them: single tar files holding images.
//!
//! - `oci-archive:FILE[:TAG]`: a plain, uncompressed tar of an OCI image layout. Read through
//!   [`crate::Layout::open_archive`] (the same resolution as for directories, over
//!   [`ArchiveSource`]); written by [`OciArchiveWriter`].
//! - `docker-archive:FILE[:REF]`: what `docker save` writes and `docker load` / `podman load`
//!   read. Read by [`DockerArchive`] (the old layout with `<hex>.json` configs and
//!   `<id>/layer.tar` layers, and Docker 25's combined one); written by [`DockerArchiveWriter`]
//!   in Docker 25's combined format: an OCI layout plus `manifest.json`.
//!
//! Reading scans the tar headers once (`tarball.rs`), validating every member name, and then
//! reads members in place by offset: nothing is unpacked. Writing streams each blob once from
//! its source into a temp file next to the destination, verifying it on the way; the file is
//! fsynced and renamed into place, and its bytes depend only on what was added, in which order.

mod docker;
mod tarball;
mod writer;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod tests;

/// Raw tar entries for tests that build archives by hand (including broken ones).
#[cfg(test)]
pub(crate) mod test_tar {
    use super::tarball::{BLOCK, header_blocks};

    /// A regular file entry: headers, data and padding.
    pub(crate) fn file_entry(name: &str, content: &[u8]) -> Vec<u8> {
        entry(name.as_bytes(), b'0', content)
    }

    /// An entry of any type with `content` as its data.
    pub(crate) fn entry(name: &[u8], typeflag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = header_blocks(name, content.len() as u64, typeflag, 0o644);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        out
    }

    /// The end-of-archive marker.
    pub(crate) fn end_marker() -> Vec<u8> {
        vec![0; 2 * BLOCK as usize]
    }
}

use std::io::Read;
use std::path::Path;

use gantry_oci::Digest;

pub use docker::{
    DockerArchive, DockerArchiveWriter, DockerImage, DockerLayer, DockerManifestEntry,
};
pub use writer::OciArchiveWriter;

use crate::layout::LayoutSource;
use crate::{Error, Result};
use tarball::TarIndex;

/// The member name of a blob: `blobs/<alg>/<hex>`.
pub(crate) fn blob_member(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// An `oci-archive` file as a [`LayoutSource`]: `oci-layout`, `index.json` and
/// `blobs/<alg>/<hex>` are served from the members found by one scan of the tar headers.
#[derive(Debug)]
pub(crate) struct ArchiveSource {
    tar: TarIndex,
}

impl ArchiveSource {
    /// Opens and scans the archive at `path`.
    pub(crate) fn open(path: &Path) -> Result<ArchiveSource> {
        Ok(ArchiveSource {
            tar: TarIndex::open(path)?,
        })
    }
}

impl LayoutSource for ArchiveSource {
    fn read_small(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        self.tar.read_member(rel, limit)
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let name = blob_member(digest);
        match self.tar.file_member(&name)? {
            Some(member) => Ok(Box::new(self.tar.open_member(&member))),
            None => Err(Error::LayoutBlobNotFound {
                what: self.describe(),
                digest: digest.clone(),
                looked_for: format!("member {name}"),
            }),
        }
    }

    fn describe(&self) -> String {
        format!("oci-archive {}", self.tar.path().display())
    }

    fn describe_file(&self, rel: &str) -> String {
        format!("member {rel} of {}", self.describe())
    }

    fn path(&self) -> &Path {
        self.tar.path()
    }

    fn describe_blob(&self, digest: &Digest) -> String {
        format!(
            "blob {digest} (member {}) in {}",
            blob_member(digest),
            self.describe()
        )
    }
}
