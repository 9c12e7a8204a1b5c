//! Images in registries: manifests resolved by tag or digest for a platform (kept in the store
//! by digest, so a rebuild needs no network), and blobs fetched into the store when a sink
//! needs their bytes.

use gantry_image::BlobSource;
use gantry_oci::{Descriptor, Digest, Document, ImageManifest, Platform, Reference, json};
use gantry_registry::Repo;
use gantry_store::{Resolved, Store};

use crate::error::image_error;
use crate::parallel::parallel_map;
use crate::source::{ImageSource, config_blob};
use crate::{Error, PARALLEL_TRANSFERS, Transfer};

/// Nested indexes are followed this deep at most.
const MAX_INDEX_DEPTH: usize = 4;

/// The images of one registry repository, by tag or digest.
pub(crate) struct RegistryImages<'a> {
    pub(crate) reference: Reference,
    pub(crate) repo: Repo,
    pub(crate) store: &'a Store,
    pub(crate) what: String,
}

impl RegistryImages<'_> {
    /// Keeps a manifest or config in the store (by digest), when the store can be written.
    fn keep(&self, bytes: &[u8]) -> Result<(), Error> {
        if self.store.read_only().is_none() {
            self.store.put_bytes(bytes)?;
        }
        Ok(())
    }

    /// A manifest or index by digest: from the store if it is there, else from the registry
    /// (then kept in the store). Returns the bytes and their media type.
    fn by_digest(
        &self,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), Error> {
        if self.store.has(digest) {
            return Ok((
                self.store.read_blob(digest, json::MAX_MANIFEST_SIZE)?,
                media_type.map(str::to_owned),
            ));
        }
        let m = self.repo.get_manifest(&digest.to_string())?;
        self.keep(&m.bytes)?;
        Ok((m.bytes, Some(m.media_type)))
    }
}

impl ImageSource for RegistryImages<'_> {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn tags(&self) -> Vec<String> {
        Vec::new()
    }

    /// GETs the manifest by tag (or takes it from the store by digest), then follows indexes
    /// to `platform`'s manifest, verified by digest and size. The descriptor records the
    /// platform asked for.
    fn manifest(&self, platform: &Platform) -> Result<Resolved, Error> {
        let what = &self.what;
        let (mut bytes, mut media_type, mut digest) = match self.reference.digest() {
            Some(d) => {
                let (b, m) = self.by_digest(d, None)?;
                (b, m, d.clone())
            }
            None => {
                let tag = self.reference.tag_or_latest().expect("no digest, so a tag");
                let m = self.repo.get_manifest(tag)?;
                self.keep(&m.bytes)?;
                (m.bytes, Some(m.media_type), m.digest)
            }
        };
        for _ in 0..=MAX_INDEX_DEPTH {
            let doc = gantry_oci::parse_document(&bytes, media_type.as_deref(), what)?;
            match doc {
                Document::Manifest(manifest) => {
                    let mt = doc_media_type(&manifest, media_type.as_deref());
                    let mut manifest_descriptor = Descriptor::new(mt, digest, bytes.len() as u64);
                    manifest_descriptor.platform = Some(platform.clone());
                    return Ok(Resolved {
                        manifest_descriptor,
                        manifest,
                        manifest_bytes: bytes,
                    });
                }
                Document::Index(index) => {
                    let entry = index
                        .select_platform(platform)
                        .map_err(|e| image_error(what, e.to_string()))?
                        .clone();
                    let (b, m) = self.by_digest(&entry.digest, Some(&entry.media_type))?;
                    if b.len() as u64 != entry.size {
                        return Err(image_error(
                            what,
                            format!("manifest {} is not the size its index says", entry.digest),
                        ));
                    }
                    bytes = b;
                    media_type = m.or(Some(entry.media_type));
                    digest = entry.digest;
                }
            }
        }
        Err(image_error(
            what,
            format!("indexes are nested more than {MAX_INDEX_DEPTH} levels deep"),
        ))
    }

    fn read_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, Error> {
        config_blob(&self.repo, self.store, desc, limit, &self.what)
    }

    fn layer_sources(&self, resolved: &Resolved) -> Result<Vec<BlobSource>, Error> {
        let here = BlobSource::Registry {
            registry: self.reference.registry().to_owned(),
            repository: self.reference.repository().to_owned(),
        };
        Ok(vec![here; resolved.manifest.layers.len()])
    }
}

fn doc_media_type(m: &ImageManifest, declared: Option<&str>) -> String {
    m.media_type
        .clone()
        .or_else(|| declared.map(str::to_owned))
        .unwrap_or_else(|| gantry_oci::media_types::OCI_MANIFEST.to_owned())
}

/// Counts bytes read into a progress sink.
struct Counted<'a, R> {
    inner: R,
    progress: &'a dyn gantry_layer::Progress,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl Transfer<'_> {
    /// Fetches one blob of `registry`/`repository` into the store (verified against its digest
    /// and size), with progress; nothing to do when the store has it.
    pub fn fetch_blob(
        &self,
        registry: &str,
        repository: &str,
        desc: &Descriptor,
    ) -> Result<(), Error> {
        if self.store.has(&desc.digest) {
            return Ok(());
        }
        let what = format!("{registry}/{repository}@{}", desc.digest);
        let fetch_error = |reason: String| Error::Fetch {
            what: what.clone(),
            reason,
        };
        let reader = self
            .client(&what)?
            .repo(registry, repository, false)
            .get_blob(desc)
            .map_err(|e| fetch_error(e.to_string()))?;
        let progress = self
            .reporter
            .blob_progress(&format!("fetch {}", desc.digest.short()), desc.size);
        let counted = Counted {
            inner: reader,
            progress: progress.as_ref(),
        };
        self.store
            .import(counted, (&desc.digest, desc.size), &what)?;
        Ok(())
    }

    /// Fetches every registry blob of `blobs` that the store lacks, [`PARALLEL_TRANSFERS`] at
    /// once, verified, into the store (where the next build or export finds them).
    pub fn fetch_blobs<'b>(
        &self,
        blobs: impl IntoIterator<Item = (&'b Descriptor, &'b BlobSource)>,
    ) -> Result<(), Error> {
        let missing: Vec<(&str, &str, &Descriptor)> = blobs
            .into_iter()
            .filter_map(|(desc, source)| match source {
                BlobSource::Registry {
                    registry,
                    repository,
                } if !self.store.has(&desc.digest) => {
                    Some((registry.as_str(), repository.as_str(), desc))
                }
                _ => None,
            })
            .collect();
        parallel_map(
            PARALLEL_TRANSFERS,
            &missing,
            |(registry, repository, desc)| self.fetch_blob(registry, repository, desc),
        )?;
        Ok(())
    }
}
