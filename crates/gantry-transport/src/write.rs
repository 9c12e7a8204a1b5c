//! Writing an image to any destination: an OCI layout directory, an oci-archive, a
//! docker-archive (through `gantry_store::ImageWriter`), or a registry (a push).

use std::os::unix::fs::MetadataExt as _;

use gantry_image::{BlobSource, SourceImage};
use gantry_oci::{BlobRead, Descriptor, Reference, annotations};
use gantry_store::{DockerArchiveWriter, ImageWriter, Layout, LayoutWriter, OciArchiveWriter};

use crate::error::image_error;
use crate::{Error, ImageRef, Transfer, mark_shallow};

/// Which blobs a layout gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// Every blob: registry blobs are fetched into the store first (concurrently, verified),
    /// then linked or copied from there. What the output holds never depends on what the store
    /// held.
    Complete,
    /// A shallow layout: blobs that are only in a registry are left out, even when the store
    /// has them. The store records that gantry wrote it ([`mark_shallow`]), so that gantry's
    /// readers may fetch what it lacks from the image's `base.name`. Layouts only.
    Shallow,
}

impl Transfer<'_> {
    /// Writes `img` to `dest`: every destination but a shallow layout gets every blob, and
    /// the manifest and config bytes as they are (so every digest stays the same). A layout or
    /// archive is written beside its destination and moved into place at the end; a registry
    /// gets the manifest last. Returns where the image went, for messages (for a registry, the
    /// pushed reference by digest).
    pub fn write(
        &self,
        img: &SourceImage,
        dest: &ImageRef,
        completeness: Completeness,
    ) -> Result<String, Error> {
        if completeness == Completeness::Shallow && !matches!(dest, ImageRef::Layout { .. }) {
            return Err(image_error(
                dest.to_string(),
                "only a layout directory can be written shallow",
            ));
        }
        let tag = dest.destination_tag()?;
        match dest {
            ImageRef::Layout { dir, .. } => {
                let mut w = LayoutWriter::new(dir)?;
                let omitted = self.fill(&mut w, img, completeness)?;
                w.add_manifest(index_entry(img, Some(tag.unwrap_or("latest"))));
                w.commit()?;
                if omitted {
                    mark_shallow(self.store, &img.descriptor, dir)?;
                }
                Ok(format!("oci:{}", dir.display()))
            }
            ImageRef::OciArchive { file, .. } => {
                let mut w = OciArchiveWriter::new(file)?;
                self.fill(&mut w, img, completeness)?;
                w.add_manifest(index_entry(img, Some(tag.unwrap_or("latest"))));
                w.commit()?;
                Ok(format!("oci-archive:{}", file.display()))
            }
            ImageRef::DockerArchive { file, .. } => {
                let reference = tag.map(Reference::parse).transpose()?;
                let mut w = DockerArchiveWriter::new(file)?;
                self.fill(&mut w, img, completeness)?;
                w.add_image(index_entry(img, None), reference.as_ref())?;
                w.commit()?;
                Ok(format!("docker-archive:{}", file.display()))
            }
            ImageRef::Registry(reference) => Ok(self.push(img, reference)?.pushed),
        }
    }

    /// Adds every blob of `img` to `w`; returns whether a registry blob was left out (a
    /// shallow layout).
    fn fill(
        &self,
        w: &mut dyn ImageWriter,
        img: &SourceImage,
        completeness: Completeness,
    ) -> Result<bool, Error> {
        if completeness == Completeness::Complete {
            self.fetch_blobs(img.layers.iter().map(|(d, s)| (d, s)))?;
        }
        w.add_blob_from_reader(&mut img.config_bytes.as_slice(), &img.manifest.config)?;
        let mut omitted = false;
        for (desc, source) in &img.layers {
            match source {
                BlobSource::Registry { .. } if completeness == Completeness::Shallow => {
                    omitted = true;
                }
                // A layout's or archive's own blob is verified even when the store has the
                // same digest (a corrupt input is an error, not masked), unless it is the
                // store's file itself (gantry's layouts link them); the output then links the
                // store's copy rather than writing the bytes again.
                BlobSource::Local(place) if self.store.has(&desc.digest) => {
                    if !self.is_store_file(place.as_ref(), desc) {
                        verify(place.as_ref(), desc)?;
                    }
                    w.add_blob_from_store(self.store, &desc.digest)?;
                }
                BlobSource::Local(place) => add_local(w, place.as_ref(), desc)?,
                _ if self.store.has(&desc.digest) => {
                    w.add_blob_from_store(self.store, &desc.digest)?;
                }
                BlobSource::Store => {
                    return Err(image_error(
                        format!("blob {}", desc.digest),
                        "it is not in the store",
                    ));
                }
                BlobSource::Registry { .. } => {
                    return Err(image_error(
                        format!("blob {}", desc.digest),
                        "it was not fetched",
                    ));
                }
            }
        }
        w.add_blob_from_reader(&mut img.manifest_bytes.as_slice(), &img.descriptor)?;
        Ok(omitted)
    }

    /// Whether the blob of a layout directory is the store's own file (a hard link, or a
    /// symlink to it), which the store verified when it wrote it.
    fn is_store_file(&self, place: &dyn BlobRead, desc: &Descriptor) -> bool {
        let Some(layout) = place.as_any().downcast_ref::<Layout>() else {
            return false;
        };
        let id = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        matches!(
            (id(&layout.blob_path(&desc.digest)), id(&self.store.blob_path(&desc.digest))),
            (Ok(a), Ok(b)) if a == b
        )
    }
}

/// Reads a blob of a layout or archive to its end, which verifies it.
fn verify(place: &dyn BlobRead, desc: &Descriptor) -> Result<(), Error> {
    let mut reader = place.open_blob(desc)?;
    let Err(e) = std::io::copy(&mut reader, &mut std::io::sink()) else {
        return Ok(());
    };
    // A verification failure names the blob and the place already.
    if e.get_ref().is_some_and(|r| r.is::<gantry_oci::Error>()) {
        let inner = e
            .into_inner()
            .and_then(|i| i.downcast::<gantry_oci::Error>().ok());
        return Err(Error::Oci(*inner.expect("checked above")));
    }
    Err(image_error(
        place.describe(),
        format!("cannot read blob {}: {e}", desc.digest),
    ))
}

/// Adds a blob of a layout or archive to `w`, verified. A layout's blob is copied by the
/// writer itself, which verifies it once as it copies.
fn add_local(
    w: &mut dyn ImageWriter,
    place: &dyn BlobRead,
    desc: &Descriptor,
) -> Result<(), Error> {
    match place.as_any().downcast_ref::<Layout>() {
        Some(layout) => w.add_blob_from_layout(layout, desc)?,
        None => w.add_blob_from_reader(&mut place.open_blob(desc)?, desc)?,
    }
    Ok(())
}

/// The `index.json` entry of `img`, tagged `tag`.
fn index_entry(img: &SourceImage, tag: Option<&str>) -> Descriptor {
    let mut d = img.descriptor.clone();
    if let Some(t) = tag {
        d.annotations
            .insert(annotations::REF_NAME.to_owned(), t.to_owned());
    }
    d
}
