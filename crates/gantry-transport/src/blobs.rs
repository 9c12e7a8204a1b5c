//! Reading one blob wherever it is, verified.

use std::io::Read;

use gantry_image::BlobSource;
use gantry_oci::{Descriptor, VerifyingReader};

use crate::error::image_error;
use crate::{Error, Transfer};

impl Transfer<'_> {
    /// Opens a blob for reading, verified against `desc` when read to its end: a layout's or
    /// archive's blob from there, others from the store when it has them. A registry blob is
    /// fetched into the store first (verified), so it is downloaded once; with a read-only
    /// store it is streamed (verified as it streams).
    pub fn open_blob(
        &self,
        desc: &Descriptor,
        source: &BlobSource,
    ) -> Result<Box<dyn Read + Send>, Error> {
        if let BlobSource::Registry {
            registry,
            repository,
        } = source
            && self.store.read_only().is_none()
        {
            self.fetch_blob(registry, repository, desc)?;
        }
        self.stream_blob(desc, source)
    }

    /// Opens a blob like [`Transfer::open_blob`], but a registry blob that the store lacks is
    /// streamed (verified) rather than kept.
    pub fn stream_blob(
        &self,
        desc: &Descriptor,
        source: &BlobSource,
    ) -> Result<Box<dyn Read + Send>, Error> {
        match source {
            BlobSource::Local(place) => Ok(place.open_blob(desc)?),
            _ if self.store.has(&desc.digest) => Ok(Box::new(VerifyingReader::new(
                self.store.open_blob(&desc.digest)?,
                desc.digest.clone(),
                desc.size,
                format!("blob {} in the store", desc.digest),
            ))),
            BlobSource::Store => Err(image_error(
                format!("blob {}", desc.digest),
                "it is not in the store",
            )),
            BlobSource::Registry {
                registry,
                repository,
            } => {
                let what = format!("{registry}/{repository}@{}", desc.digest);
                let blob = self
                    .client(&what)?
                    .repo(registry, repository, false)
                    .get_blob(desc)?;
                Ok(Box::new(blob))
            }
        }
    }
}
