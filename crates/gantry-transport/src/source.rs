//! Image sources: one [`ImageSource`] per transport, and [`Transfer::image`], which opens any
//! of them as a [`SourceImage`].

use std::io::Read as _;
use std::sync::Arc;

use gantry_image::{BlobSource, SourceImage};
use gantry_oci::media_types as mt;
use gantry_oci::{BlobRead, Descriptor, Digest, ImageConfig, Platform, Reference, json};
use gantry_store::{DockerArchive, Layout, Resolved, Selector, Store};

use crate::error::Context as _;
use crate::registry::RegistryImages;
use crate::{Error, ImageRef, Transfer};

/// Where images are: a layout directory, an oci-archive, a docker-archive or a registry
/// repository, with one image (or one per platform) selected. Everything read is verified.
pub trait ImageSource {
    /// The image in messages (its canonical reference).
    fn describe(&self) -> String;

    /// The names the source gives its images (layout tags, an archive's image names); empty
    /// for a registry, which is not asked.
    fn tags(&self) -> Vec<String>;

    /// The image manifest for `platform` (indexes followed, at most a few deep), verified. The
    /// descriptor carries the platform the source recorded for it, if any.
    fn manifest(&self, platform: &Platform) -> Result<Resolved, Error>;

    /// A blob of at most `limit` bytes (the config), verified.
    fn read_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, Error>;

    /// Where the blob of each layer of `resolved` is.
    fn layer_sources(&self, resolved: &Resolved) -> Result<Vec<BlobSource>, Error>;
}

impl<'a> Transfer<'a> {
    /// The source of the images at `r`. Opening a layout or an archive reads its index (an
    /// archive's headers are scanned); a registry is not contacted yet.
    pub fn source(&self, r: &ImageRef) -> Result<Box<dyn ImageSource + 'a>, Error> {
        Ok(match r {
            ImageRef::Layout { dir, selector } => Box::new(LayoutImages {
                layout: Arc::new(Layout::open(dir)?),
                selector: selector.clone(),
                what: r.to_string(),
                store: self.store,
                follow_base_name: self.follow_base_name,
            }),
            ImageRef::OciArchive { file, selector } => Box::new(LayoutImages {
                layout: Arc::new(Layout::open_archive(file)?),
                selector: selector.clone(),
                what: r.to_string(),
                store: self.store,
                follow_base_name: self.follow_base_name,
            }),
            ImageRef::DockerArchive { file, reference } => Box::new(DockerImages {
                archive: Arc::new(DockerArchive::open(file)?),
                reference: reference.clone(),
                what: r.to_string(),
            }),
            ImageRef::Registry(reference) => {
                self.registry_source(reference, false, &r.to_string())?
            }
        })
    }

    /// The source of an image in a registry; `anonymous` sends no credentials (a pull target's
    /// `anonymous = true`); `what` names it in errors.
    pub fn registry_source(
        &self,
        reference: &Reference,
        anonymous: bool,
        what: &str,
    ) -> Result<Box<dyn ImageSource + 'a>, Error> {
        Ok(Box::new(RegistryImages {
            reference: reference.clone(),
            repo: self
                .client(what)?
                .repo(reference.registry(), reference.repository(), anonymous),
            store: self.store,
            what: what.to_owned(),
        }))
    }

    /// Opens the image at `r` for `platform`, reading only its manifest and config.
    pub fn open(&self, r: &ImageRef, platform: &Platform) -> Result<SourceImage, Error> {
        self.image(self.source(r)?.as_ref(), platform)
    }

    /// Opens the image of `source` for `platform`: its manifest (indexes followed), its config
    /// (an image config read strictly: no duplicate keys, as tools would read it differently)
    /// and where each layer's blob is. No layer is read.
    pub fn image(
        &self,
        source: &dyn ImageSource,
        platform: &Platform,
    ) -> Result<SourceImage, Error> {
        let name = source.describe();
        let resolved = source.manifest(platform)?;
        let config = &resolved.manifest.config;
        let config_bytes = source.read_blob(config, json::MAX_CONFIG_SIZE)?;
        if mt::is_image_config(&config.media_type) {
            ImageConfig::parse(&config_bytes, &format!("{name}: config {}", config.digest))?;
        }
        let sources = source.layer_sources(&resolved)?;
        let found = &resolved.manifest_descriptor;
        let mut descriptor = Descriptor::new(
            found.media_type.clone(),
            found.digest.clone(),
            resolved.manifest_bytes.len() as u64,
        );
        descriptor.platform.clone_from(&found.platform);
        Ok(SourceImage {
            name,
            descriptor,
            layers: resolved
                .manifest
                .layers
                .iter()
                .cloned()
                .zip(sources)
                .collect(),
            manifest_bytes: resolved.manifest_bytes,
            manifest: resolved.manifest,
            config_bytes,
        })
    }
}

/// The images of an OCI layout directory or an oci-archive.
struct LayoutImages<'a> {
    layout: Arc<Layout>,
    selector: Selector,
    what: String,
    store: &'a Store,
    follow_base_name: bool,
}

impl ImageSource for LayoutImages<'_> {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn tags(&self) -> Vec<String> {
        self.layout.tags()
    }

    fn manifest(&self, platform: &Platform) -> Result<Resolved, Error> {
        Ok(self.layout.resolve(&self.selector, platform)?)
    }

    fn read_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, Error> {
        Ok(self.layout.read_blob_verified(desc, limit)?)
    }

    /// The layout's own blobs are read from it. A shallow layout leaves out its base's layers:
    /// they come from the store when it has them all, else from the registry that the image's
    /// `base.name` annotation names, when that may be followed ([`crate::shallow`]).
    fn layer_sources(&self, resolved: &Resolved) -> Result<Vec<BlobSource>, Error> {
        let layers = &resolved.manifest.layers;
        let local = BlobSource::Local(Arc::clone(&self.layout) as Arc<dyn BlobRead>);
        let absent: Vec<bool> = layers
            .iter()
            .map(|d| !self.layout.has_blob(&d.digest))
            .collect();
        if !absent.contains(&true) {
            return Ok(vec![local; layers.len()]);
        }
        let unfetched: Vec<&Digest> = layers
            .iter()
            .zip(&absent)
            .filter(|(d, absent)| **absent && !self.store.has(&d.digest))
            .map(|(d, _)| &d.digest)
            .collect();
        let base = crate::shallow::shallow_base(
            self.store,
            self.follow_base_name,
            &self.layout.describe(),
            &resolved.manifest_descriptor,
            &resolved.manifest.annotations,
            &unfetched,
        )?;
        let elsewhere = match base {
            Some(b) => BlobSource::Registry {
                registry: b.registry().to_owned(),
                repository: b.repository().to_owned(),
            },
            None => BlobSource::Store,
        };
        Ok(absent
            .into_iter()
            .map(|a| if a { elsewhere.clone() } else { local.clone() })
            .collect())
    }
}

/// The images of a docker-archive (`docker save`). The manifest is gantry's (canonical OCI),
/// as old-style archives record none.
struct DockerImages {
    archive: Arc<DockerArchive>,
    reference: Option<String>,
    what: String,
}

impl ImageSource for DockerImages {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn tags(&self) -> Vec<String> {
        self.archive.repo_tags()
    }

    fn manifest(&self, _platform: &Platform) -> Result<Resolved, Error> {
        let image = self.archive.image(self.reference.as_deref())?;
        let manifest = image.manifest();
        let manifest_bytes = json::to_canonical_vec(&manifest);
        Ok(Resolved {
            manifest_descriptor: Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest_bytes),
            manifest,
            manifest_bytes,
        })
    }

    fn read_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, Error> {
        Ok(self.archive.read_blob_verified(desc, limit)?)
    }

    fn layer_sources(&self, resolved: &Resolved) -> Result<Vec<BlobSource>, Error> {
        let local = BlobSource::Local(Arc::clone(&self.archive) as Arc<dyn BlobRead>);
        Ok(vec![local; resolved.manifest.layers.len()])
    }
}

/// The config blob of an image in a registry repository: from the store when it has it, else
/// fetched (capped, verified) and kept there when the store can be written.
pub(crate) fn config_blob(
    repo: &gantry_registry::Repo,
    store: &Store,
    desc: &Descriptor,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, Error> {
    if desc.size > limit {
        return Err(crate::error::image_error(
            what,
            format!("its config is {} bytes, over the {limit} limit", desc.size),
        ));
    }
    let cannot = || format!("{what}: cannot fetch its config");
    if !store.has(&desc.digest) {
        let reader = repo.get_blob(desc).context_with(cannot)?;
        if store.read_only().is_some() {
            // Read to its end, so the reader checks the digest and size.
            let mut bytes = Vec::new();
            reader
                .take(limit + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| crate::error::image_error(cannot(), e.to_string()))?;
            return Ok(bytes);
        }
        store
            .import(reader, (&desc.digest, desc.size), what)
            .context_with(cannot)?;
    }
    Ok(store.read_blob(&desc.digest, limit)?)
}
