//! `gantry copy`, `gantry export` and `gantry pull`: images between transports, in skopeo's
//! syntax (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REF]`,
//! `docker://REF`). A copy keeps the manifest and config bytes, so every digest stays the same,
//! unless the layers are recompressed on request.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use gantry_image::{Base, BlobSource, Built, Image};
use gantry_layer::{Compressor, TarImport};
use gantry_oci::{
    BlobRead, Descriptor, Digest, ImageManifest, Platform, Reference, annotations, json,
    media_types as mt,
};
use gantry_registry::Client;
use gantry_store::{
    DockerArchive, DockerArchiveWriter, ImageWriter, Layout, LayoutWriter, OciArchiveWriter,
    Selector, Store,
};

use crate::Context;
use crate::push::Pushable;

/// Where an image is, or goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// An OCI layout directory.
    Oci {
        /// The directory.
        dir: PathBuf,
        /// Which image in it.
        selector: Selector,
    },
    /// A tar of an OCI layout.
    OciArchive {
        /// The file.
        file: PathBuf,
        /// Which image in it.
        selector: Selector,
    },
    /// A `docker save` archive.
    DockerArchive {
        /// The file.
        file: PathBuf,
        /// The image's name in it (`name:tag`).
        reference: Option<String>,
    },
    /// A registry.
    Registry(Reference),
}

impl Transport {
    /// Parses skopeo's syntax; a bare existing directory is an OCI layout.
    pub fn parse(ctx: &Context, input: &str) -> Result<Self> {
        let layout = |rest: &str| -> Result<(PathBuf, Selector)> {
            match Base::parse(rest)? {
                Base::Layout { dir, selector } => Ok((ctx.abs(&dir), selector)),
                Base::Scratch => bail!("{input}: scratch is not an image to copy"),
            }
        };
        if let Some(rest) = input.strip_prefix("docker://") {
            return Ok(Transport::Registry(Reference::parse(rest)?));
        }
        if let Some(rest) = input.strip_prefix("oci-archive:") {
            let (file, selector) = layout(rest)?;
            return Ok(Transport::OciArchive { file, selector });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            let (file, reference) = match rest.split_once(':') {
                Some((f, r)) => (f, Some(r.to_owned())),
                None => (rest, None),
            };
            if file.is_empty() {
                bail!("{input}: expected docker-archive:FILE[:REF]");
            }
            return Ok(Transport::DockerArchive {
                file: ctx.abs(file.as_ref()),
                reference,
            });
        }
        let rest = input.strip_prefix("oci:").unwrap_or(input);
        let (dir, selector) = layout(rest)?;
        if !input.starts_with("oci:") && !dir.is_dir() {
            bail!(
                "{input}: not a directory; name the transport: oci:DIR[:TAG], oci-archive:FILE[:TAG], \
                 docker-archive:FILE[:REF] or docker://REF"
            );
        }
        Ok(Transport::Oci { dir, selector })
    }
}

/// An image with its original manifest and config bytes, and where each layer is.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The manifest's bytes.
    pub manifest_bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// The config (in the store).
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<(Descriptor, BlobSource)>,
    /// The platform the image is for.
    pub platform: Option<Platform>,
}

impl SourceImage {
    /// As an image to push.
    pub fn pushable(&self) -> Pushable {
        let mut blobs = vec![(self.config.clone(), BlobSource::Store)];
        blobs.extend(self.layers.iter().cloned());
        Pushable {
            manifest_bytes: self.manifest_bytes.clone(),
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            blobs,
        }
    }

    /// The config of an image to unpack or run, checked as a base image's is
    /// ([`Image::from_manifest`]): an image config (not an artifact's), read strictly (no
    /// duplicate keys, `rootfs.type` `layers`), one diff_id per layer, and every layer a tar
    /// media type. The diff_ids are verified while the layers are unpacked. `what` names the
    /// image in errors.
    pub fn runnable_config(&self, store: &Store, what: &str) -> Result<gantry_oci::ImageConfig> {
        let manifest =
            gantry_oci::parse_manifest(&self.manifest_bytes, Some(&self.media_type), what)?;
        let config_bytes = store.read_blob(&self.config.digest, json::MAX_CONFIG_SIZE)?;
        let image = Image::from_manifest(
            what,
            &manifest,
            &config_bytes,
            BlobSource::Store,
            self.digest.clone(),
        )?;
        Ok(image.config)
    }

    /// Reads an image config strictly (as [`gantry_oci::ImageConfig::parse`] does), so that
    /// no command passes on a config that tools would read differently (duplicate keys).
    /// Other configs (artifacts) are opaque.
    fn check_config(&self, store: &Store, what: &str) -> Result<()> {
        if mt::is_image_config(&self.config.media_type) {
            let bytes = store.read_blob(&self.config.digest, json::MAX_CONFIG_SIZE)?;
            gantry_oci::ImageConfig::parse(
                &bytes,
                &format!("{what}: config {}", self.config.digest),
            )?;
        }
        Ok(())
    }

    /// A built image (its config and manifest are in the store).
    pub fn from_built(b: &Built) -> Result<Self> {
        Ok(SourceImage {
            manifest_bytes: b.manifest_bytes.clone(),
            media_type: b.manifest.media_type.clone(),
            digest: b.manifest.digest.clone(),
            config: b.config.clone(),
            layers: b
                .layers
                .iter()
                .map(|l| (l.descriptor.clone(), l.source.clone()))
                .collect(),
            platform: Some(b.platform.clone()),
        })
    }

    fn from_layout(
        ctx: &Context,
        store: &Store,
        layout: Layout,
        selector: &Selector,
        platform: &Platform,
    ) -> Result<Self> {
        let r = layout.resolve(selector, platform)?;
        let config_bytes = layout.read_blob_verified(&r.manifest.config, json::MAX_CONFIG_SIZE)?;
        // Kept for whatever reads the config from the store; a read-only store (gantry unpack
        // reads only layers) cannot keep it.
        if store.read_only().is_none() {
            store.put_bytes(&config_bytes)?;
        }
        let layout = Arc::new(layout);
        // A shallow layout leaves out its base's layers; what its base.name annotation names
        // holds them, if that may be trusted.
        let missing: Vec<&Digest> = r
            .manifest
            .layers
            .iter()
            .map(|d| &d.digest)
            .filter(|d| !layout.has_blob(d) && !store.has(d))
            .collect();
        let base = crate::registry::shallow_source(
            ctx,
            store,
            &layout.describe(),
            &r.manifest_descriptor,
            &r.manifest.annotations,
            &missing,
        )?;
        let layers = r
            .manifest
            .layers
            .iter()
            .map(|d| {
                let from = match &base {
                    Some(b) if missing.contains(&&d.digest) => BlobSource::Registry {
                        registry: b.registry().to_owned(),
                        repository: b.repository().to_owned(),
                    },
                    _ => BlobSource::Local(Arc::clone(&layout) as Arc<dyn BlobRead>),
                };
                (d.clone(), from)
            })
            .collect();
        Ok(SourceImage {
            manifest_bytes: r.manifest_bytes,
            media_type: r.manifest_descriptor.media_type.clone(),
            digest: r.manifest_descriptor.digest.clone(),
            config: r.manifest.config.clone(),
            layers,
            platform: r.manifest_descriptor.platform.clone(),
        })
    }
}

/// Opens an image at a transport reference, reading only its manifest and config (an image
/// config is read strictly).
pub fn open_source(
    ctx: &Context,
    store: &Store,
    client: &Client,
    input: &str,
    platform: Option<&Platform>,
) -> Result<SourceImage> {
    let image = open_unchecked(ctx, store, client, input, platform)?;
    image.check_config(store, input)?;
    Ok(image)
}

fn open_unchecked(
    ctx: &Context,
    store: &Store,
    client: &Client,
    input: &str,
    platform: Option<&Platform>,
) -> Result<SourceImage> {
    let platform = platform.cloned().unwrap_or_else(Platform::host);
    match Transport::parse(ctx, input)? {
        Transport::Oci { dir, selector } => {
            SourceImage::from_layout(ctx, store, Layout::open(&dir)?, &selector, &platform)
        }
        Transport::OciArchive { file, selector } => SourceImage::from_layout(
            ctx,
            store,
            Layout::open_archive(&file)?,
            &selector,
            &platform,
        ),
        Transport::DockerArchive { file, reference } => {
            let archive = Arc::new(DockerArchive::open(&file)?);
            let image = archive.image(reference.as_deref())?;
            if store.read_only().is_none() {
                store.put_bytes(&image.config_bytes)?;
            }
            let manifest = image.manifest();
            let manifest_bytes = json::to_canonical_vec(&manifest);
            Ok(SourceImage {
                digest: Digest::sha256(&manifest_bytes),
                manifest_bytes,
                media_type: mt::OCI_MANIFEST.to_owned(),
                config: image.config.clone(),
                layers: image
                    .layers
                    .iter()
                    .map(|l| {
                        (
                            l.descriptor.clone(),
                            BlobSource::Local(Arc::clone(&archive) as Arc<dyn BlobRead>),
                        )
                    })
                    .collect(),
                platform: None,
            })
        }
        Transport::Registry(reference) => {
            let remote =
                crate::registry::resolve(client, store, &reference, &platform, false, input)?;
            Ok(SourceImage {
                media_type: remote.manifest_descriptor.media_type.clone(),
                digest: remote.manifest_descriptor.digest.clone(),
                config: remote.manifest.config.clone(),
                layers: remote
                    .manifest
                    .layers
                    .iter()
                    .map(|d| {
                        (
                            d.clone(),
                            BlobSource::Registry {
                                registry: reference.registry().to_owned(),
                                repository: reference.repository().to_owned(),
                            },
                        )
                    })
                    .collect(),
                manifest_bytes: remote.manifest_bytes,
                platform: Some(platform),
            })
        }
    }
}

/// Adds every blob of `img` to `w`: from the store, a layout, an archive, or streamed from a
/// registry straight into the writer (not stored).
fn fill(
    ctx: &Context,
    w: &mut dyn ImageWriter,
    store: &Store,
    client: &Client,
    img: &SourceImage,
) -> Result<()> {
    w.add_blob_from_store(store, &img.config.digest)?;
    // Registry layers are fetched first, concurrently and verified, into the store (where a
    // later build on the same base finds them); the writer then links or copies them from there.
    let remote: Vec<crate::registry::RemoteBlob<'_>> = img
        .layers
        .iter()
        .filter_map(|(descriptor, from)| match from {
            BlobSource::Registry {
                registry,
                repository,
            } => Some(crate::registry::RemoteBlob {
                registry,
                repository,
                descriptor,
            }),
            _ => None,
        })
        .collect();
    crate::registry::fetch_blobs(ctx, client, store, &remote)?;
    for (desc, from) in &img.layers {
        match from {
            _ if store.has(&desc.digest) => w.add_blob_from_store(store, &desc.digest)?,
            BlobSource::Store => bail!("blob {} is not in the store", desc.digest),
            BlobSource::Local(src) => match src.as_any().downcast_ref::<Layout>() {
                Some(l) => w.add_blob_from_layout(l, desc)?,
                None => w.add_blob_from_reader(&mut src.open_blob(desc)?, desc)?,
            },
            BlobSource::Registry { .. } => bail!("blob {} was not fetched", desc.digest),
        }
    }
    w.add_blob_bytes(&img.manifest_bytes)?;
    Ok(())
}

fn manifest_descriptor(img: &SourceImage, tag: Option<&str>) -> Descriptor {
    let mut d = Descriptor::new(
        img.media_type.clone(),
        img.digest.clone(),
        img.manifest_bytes.len() as u64,
    );
    if let Some(t) = tag {
        d.annotations
            .insert(annotations::REF_NAME.to_owned(), t.to_owned());
    }
    d.platform.clone_from(&img.platform);
    d
}

fn selector_tag(selector: &Selector) -> Option<&str> {
    match selector {
        Selector::Tag(t) => Some(t),
        _ => None,
    }
}

/// Writes `img` to `dest` completely (every blob). Returns where it went, for messages.
pub fn write(
    ctx: &Context,
    store: &Store,
    client: &Client,
    img: &SourceImage,
    dest: &Transport,
) -> Result<String> {
    match dest {
        Transport::Oci { dir, selector } => {
            let mut w = LayoutWriter::new(dir)?;
            fill(ctx, &mut w, store, client, img)?;
            w.add_manifest(manifest_descriptor(
                img,
                Some(selector_tag(selector).unwrap_or("latest")),
            ));
            w.commit()?;
            Ok(format!("oci:{}", dir.display()))
        }
        Transport::OciArchive { file, selector } => {
            let mut w = OciArchiveWriter::new(file)?;
            fill(ctx, &mut w, store, client, img)?;
            w.add_manifest(manifest_descriptor(
                img,
                Some(selector_tag(selector).unwrap_or("latest")),
            ));
            w.commit()?;
            Ok(format!("oci-archive:{}", file.display()))
        }
        Transport::DockerArchive { file, reference } => {
            let reference = reference.as_deref().map(Reference::parse).transpose()?;
            let mut w = DockerArchiveWriter::new(file)?;
            fill(ctx, &mut w, store, client, img)?;
            w.add_image(manifest_descriptor(img, None), reference.as_ref())?;
            w.commit()?;
            Ok(format!("docker-archive:{}", file.display()))
        }
        Transport::Registry(reference) => {
            let out = crate::push::push(client, store, &img.pushable(), reference)?;
            ctx.reporter.event(&format!("pushed {}", out.pushed));
            Ok(out.pushed)
        }
    }
}

/// Recompresses every layer (a new manifest with the same config and diff_ids).
pub fn recompress(
    ctx: &Context,
    store: &Store,
    client: &Client,
    img: &SourceImage,
    compressor: Compressor,
) -> Result<SourceImage> {
    let mut manifest: ImageManifest = gantry_oci::parse_manifest(
        &img.manifest_bytes,
        Some(&img.media_type),
        "source manifest",
    )?;
    let config = gantry_oci::ImageConfig::parse(
        &store.read_blob(&img.config.digest, json::MAX_CONFIG_SIZE)?,
        "source config",
    )?;
    let mut layers = Vec::new();
    for (i, (desc, from)) in img.layers.iter().enumerate() {
        let what = format!("layer {i} ({})", desc.digest);
        let reader: Box<dyn std::io::Read + Send> = match from {
            _ if store.has(&desc.digest) => Box::new(store.open_blob(&desc.digest)?),
            BlobSource::Store => bail!("{what} is not in the store"),
            BlobSource::Local(src) => src.open_blob(desc)?,
            BlobSource::Registry {
                registry,
                repository,
            } => Box::new(client.repo(registry, repository, false).get_blob(desc)?),
        };
        let writer = store.blob_writer()?;
        let (writer, imported) = gantry_layer::tarread::import_tar_from(
            reader,
            &what,
            TarImport::Recompress(compressor),
            ctx.jobs,
            writer,
            &ctx.limits,
        )?;
        let (digest, size) = writer.commit(None)?;
        if config.rootfs.diff_ids.get(i) != Some(&imported.diff_id) {
            bail!("{what}: its content does not match the config's diff_id");
        }
        let new = Descriptor::new(compressor.media_type(), digest, size);
        layers.push((new, BlobSource::Store));
    }
    manifest.media_type = Some(mt::OCI_MANIFEST.to_owned());
    manifest.config.media_type = mt::OCI_CONFIG.to_owned();
    manifest.layers = layers.iter().map(|(d, _)| d.clone()).collect();
    let manifest_bytes = json::to_canonical_vec(&manifest);
    Ok(SourceImage {
        digest: Digest::sha256(&manifest_bytes),
        manifest_bytes,
        media_type: mt::OCI_MANIFEST.to_owned(),
        config: manifest.config.clone(),
        layers,
        platform: img.platform.clone(),
    })
}

/// Runs `gantry copy`.
pub fn copy(ctx: &Context, args: &gantry_cli::CopyArgs) -> Result<String> {
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let dest = Transport::parse_destination(ctx, &args.destination)?;
    let compressor = args
        .recompress
        .as_deref()
        .map(|c| Compressor::parse(c, None))
        .transpose()?;
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, None)?;
    let mut img = open_source(ctx, &store, &client, &args.source, platform.as_ref())?;
    if let Some(c) = compressor {
        img = recompress(ctx, &store, &client, &img, c)?;
    }
    write(ctx, &store, &client, &img, &dest)
}

impl Transport {
    /// Parses a destination: like [`Transport::parse`], but a bare path that does not exist yet
    /// is an OCI layout to create.
    pub fn parse_destination(ctx: &Context, input: &str) -> Result<Self> {
        let known = ["oci:", "oci-archive:", "docker-archive:", "docker://"];
        if known.iter().any(|p| input.starts_with(p)) {
            return Transport::parse(ctx, input);
        }
        Transport::parse(ctx, &format!("oci:{input}"))
    }
}

/// Runs `gantry export`: a project image (built first, a no-op when nothing changed) or any
/// transport reference, written completely in the given format.
pub fn export(ctx: &Context, args: &gantry_cli::ExportArgs) -> Result<String> {
    let out = ctx.abs(&args.output);
    let project = crate::build::load_project(ctx, &args.project).ok();
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, project.as_ref())?;
    let (img, default_tag, default_ref) = match project
        .as_ref()
        .filter(|p| p.images.contains_key(&args.image))
    {
        Some(p) => {
            let report = crate::build::build(
                ctx,
                p,
                std::slice::from_ref(&args.image),
                crate::build::BuildOptions {
                    allow_unpinned: args.allow_unpinned,
                    ..Default::default()
                },
            )?;
            let built = report
                .built
                .get(&args.image)
                .ok_or_else(|| anyhow!("image.{} was not built", args.image))?;
            let target = &p.images[&args.image];
            (
                SourceImage::from_built(built)?,
                target.layout_tag.clone(),
                target.tags.first().map(ToString::to_string),
            )
        }
        None => (
            open_source(ctx, &store, &client, &args.image, None)?,
            "latest".to_owned(),
            None,
        ),
    };
    let tag = args.tag.clone().unwrap_or(default_tag);
    let dest = match args.format.as_str() {
        "oci" => Transport::Oci {
            dir: out,
            selector: Selector::Tag(tag),
        },
        "oci-archive" => Transport::OciArchive {
            file: out,
            selector: Selector::Tag(tag),
        },
        "docker-archive" => Transport::DockerArchive {
            file: out,
            reference: args.tag.clone().or(default_ref),
        },
        other => bail!("--format {other:?}: expected oci, oci-archive or docker-archive"),
    };
    write(ctx, &store, &client, &img, &dest)
        .with_context(|| format!("cannot export {}", args.image))
}

/// Runs `gantry pull`: a registry image into a transport (default: an OCI layout named after
/// the repository, in the current directory).
pub fn pull(ctx: &Context, args: &gantry_cli::PullArgs) -> Result<String> {
    let reference = Reference::parse(
        args.reference
            .strip_prefix("docker://")
            .unwrap_or(&args.reference),
    )?;
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let dest = match &args.output {
        Some(o) => Transport::parse_destination(ctx, o)?,
        None => {
            let name = reference.repository().rsplit('/').next().unwrap_or("image");
            Transport::Oci {
                dir: ctx.abs(name.as_ref()),
                selector: Selector::Tag(reference.tag_or_latest().unwrap_or("latest").to_owned()),
            }
        }
    };
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, None)?;
    let img = open_source(
        ctx,
        &store,
        &client,
        &format!("docker://{reference}"),
        platform.as_ref(),
    )?;
    write(ctx, &store, &client, &img, &dest)
}
