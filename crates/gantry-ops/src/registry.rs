//! The registry side of commands: a client configured from the command line and the project,
//! shallow resolution of images in registries (manifest and config only, cached in the store by
//! digest, so rebuilds need no network), and fetching layer blobs when a sink needs them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use gantry_image::{BlobSource, FetchBlob, LayerRef};
use gantry_oci::{Descriptor, Digest, Document, ImageManifest, Platform, Reference, json};
use gantry_project::Project;
use gantry_registry::{AuthFiles, Client, RegistryConfig, Repo};
use gantry_store::Store;

use crate::Context;

/// Nested indexes are followed this deep at most.
const MAX_INDEX_DEPTH: usize = 4;

/// A registry client for the command line's options and, if given, a project's settings.
pub fn client(ctx: &Context, project: Option<&Project>) -> Result<Client> {
    let mut config = RegistryConfig::default();
    config
        .insecure
        .extend(ctx.registry.insecure.iter().cloned());
    config.auth_file.clone_from(&ctx.registry.auth_file);
    for (host, file) in &ctx.registry.ca_files {
        config
            .ca_files
            .entry(host.clone())
            .or_default()
            .push(file.clone());
    }
    if let Some(p) = project {
        config
            .insecure
            .extend(p.settings.insecure_registries.iter().cloned());
        for (host, file) in &p.settings.registry_ca {
            config
                .ca_files
                .entry(host.clone())
                .or_default()
                .push(file.clone());
        }
    }
    let timeout = match ctx.registry.timeout {
        Some(t) if !(1..=gantry_project::MAX_REGISTRY_TIMEOUT).contains(&t) => bail!(
            "--registry-timeout / GANTRY_REGISTRY_TIMEOUT {t}: expected seconds from 1 to {}",
            gantry_project::MAX_REGISTRY_TIMEOUT
        ),
        Some(t) => Some(t),
        None => project.and_then(|p| p.settings.registry_timeout),
    };
    if let Some(t) = timeout {
        config.request_timeout = Duration::from_secs(t);
    }
    let credentials = Arc::new(AuthFiles::new(config.auth_file.clone()));
    Ok(Client::new(config, credentials)?)
}

/// An image in a registry, resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct RemoteImage {
    /// Where it is.
    pub reference: Reference,
    /// The manifest's descriptor (the platform's manifest, not the index).
    pub manifest_descriptor: Descriptor,
    /// The manifest's bytes.
    pub manifest_bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// The config's bytes.
    pub config_bytes: Vec<u8>,
}

/// A manifest or index by digest: from the store if it is there, else from the registry (then
/// kept in the store). Returns the bytes and their media type.
fn manifest_by_digest(
    repo: &Repo,
    store: &Store,
    digest: &Digest,
    media_type: Option<&str>,
) -> Result<(Vec<u8>, Option<String>)> {
    if store.has(digest) {
        return Ok((
            store.read_blob(digest, json::MAX_MANIFEST_SIZE)?,
            media_type.map(str::to_owned),
        ));
    }
    let m = repo.get_manifest(&digest.to_string())?;
    store.put_bytes(&m.bytes)?;
    Ok((m.bytes, Some(m.media_type)))
}

/// Resolves `reference` (a tag or digest) in its registry to the manifest of `platform` and
/// its config, reading no layer. `what` names it in errors.
pub fn resolve(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    anonymous: bool,
    what: &str,
) -> Result<RemoteImage> {
    let repo = client.repo(reference.registry(), reference.repository(), anonymous);
    let (mut bytes, mut media_type, mut digest) = match reference.digest() {
        Some(d) => {
            let (b, m) = manifest_by_digest(&repo, store, d, None)?;
            (b, m, d.clone())
        }
        None => {
            let tag = reference.tag_or_latest().expect("no digest, so a tag");
            let m = repo.get_manifest(tag)?;
            store.put_bytes(&m.bytes)?;
            (m.bytes, Some(m.media_type), m.digest)
        }
    };
    for _ in 0..=MAX_INDEX_DEPTH {
        let doc = gantry_oci::parse_document(&bytes, media_type.as_deref(), what)?;
        match doc {
            Document::Manifest(manifest) => {
                let mt = doc_media_type(&manifest, media_type.as_deref());
                let manifest_descriptor = Descriptor::new(mt, digest, bytes.len() as u64);
                let config_bytes = config_blob(&repo, store, &manifest.config, what)?;
                return Ok(RemoteImage {
                    reference: reference.clone(),
                    manifest_descriptor,
                    manifest_bytes: bytes,
                    manifest,
                    config_bytes,
                });
            }
            Document::Index(index) => {
                let entry = index
                    .select_platform(platform)
                    .map_err(|e| anyhow!("{what}: {e}"))?
                    .clone();
                let (b, m) =
                    manifest_by_digest(&repo, store, &entry.digest, Some(&entry.media_type))?;
                if b.len() as u64 != entry.size {
                    bail!(
                        "{what}: manifest {} is not the size its index says",
                        entry.digest
                    );
                }
                bytes = b;
                media_type = m.or(Some(entry.media_type));
                digest = entry.digest;
            }
        }
    }
    bail!("{what}: indexes are nested more than {MAX_INDEX_DEPTH} levels deep")
}

fn doc_media_type(m: &ImageManifest, declared: Option<&str>) -> String {
    m.media_type
        .clone()
        .or_else(|| declared.map(str::to_owned))
        .unwrap_or_else(|| gantry_oci::media_types::OCI_MANIFEST.to_owned())
}

/// The config blob: from the store, or fetched (capped, verified) into it.
fn config_blob(repo: &Repo, store: &Store, desc: &Descriptor, what: &str) -> Result<Vec<u8>> {
    if desc.size > json::MAX_CONFIG_SIZE {
        bail!(
            "{what}: its config is {} bytes, over the {} limit",
            desc.size,
            json::MAX_CONFIG_SIZE
        );
    }
    if !store.has(&desc.digest) {
        let reader = repo.get_blob(desc)?;
        store
            .import(reader, (&desc.digest, desc.size), what)
            .with_context(|| format!("{what}: cannot fetch its config"))?;
    }
    Ok(store.read_blob(&desc.digest, json::MAX_CONFIG_SIZE)?)
}

/// A blob that lives in a registry repository.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteBlob<'a> {
    /// `host[:port]`.
    pub(crate) registry: &'a str,
    /// Repository path.
    pub(crate) repository: &'a str,
    /// The blob.
    pub(crate) descriptor: &'a Descriptor,
}

/// Counts bytes read into a progress bar.
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

/// Fetches one registry blob into the store (verified against its digest and size), with a
/// progress bar; nothing to do when the store has it.
pub(crate) fn fetch_blob(
    client: &Client,
    store: &Store,
    reporter: &dyn crate::Reporter,
    blob: RemoteBlob<'_>,
) -> Result<(), gantry_image::Error> {
    let desc = blob.descriptor;
    if store.has(&desc.digest) {
        return Ok(());
    }
    let what = format!("{}/{}@{}", blob.registry, blob.repository, desc.digest);
    let fetch_error = |reason: String| gantry_image::Error::Fetch {
        what: what.clone(),
        reason,
    };
    let reader = client
        .repo(blob.registry, blob.repository, false)
        .get_blob(desc)
        .map_err(|e| fetch_error(e.to_string()))?;
    let progress = reporter.layer_progress(&format!("fetch {}", desc.digest.short()), desc.size);
    let counted = Counted {
        inner: reader,
        progress: progress.as_ref(),
    };
    store.import(counted, (&desc.digest, desc.size), &what)?;
    Ok(())
}

/// Fetches every blob of `blobs` that the store lacks, [`crate::push::PARALLEL_TRANSFERS`] at
/// once, verified, into the store (where the next build or export finds them).
pub(crate) fn fetch_blobs(
    ctx: &Context,
    client: &Client,
    store: &Store,
    blobs: &[RemoteBlob<'_>],
) -> Result<()> {
    let missing: Vec<&RemoteBlob<'_>> = blobs
        .iter()
        .filter(|b| !store.has(&b.descriptor.digest))
        .collect();
    crate::util::parallel_map(crate::push::PARALLEL_TRANSFERS, &missing, |b| {
        fetch_blob(client, store, ctx.reporter.as_ref(), **b).map_err(Into::into)
    })?;
    Ok(())
}

/// Fetches registry blobs into the store for sinks that need their bytes.
pub struct Fetcher<'a> {
    /// The client.
    pub client: &'a Client,
    /// Where progress goes.
    pub reporter: &'a dyn crate::Reporter,
}

impl FetchBlob for Fetcher<'_> {
    fn fetch_into_store(&self, store: &Store, layer: &LayerRef) -> Result<(), gantry_image::Error> {
        let BlobSource::Registry {
            registry,
            repository,
        } = &layer.source
        else {
            return Ok(());
        };
        fetch_blob(
            self.client,
            store,
            self.reporter,
            RemoteBlob {
                registry,
                repository,
                descriptor: &layer.descriptor,
            },
        )
    }
}

/// The store's ref kind that records manifests gantry wrote into shallow layouts.
const SHALLOW_REF: &str = "shallow";

/// Records that gantry wrote the image `manifest` into the shallow layout `dir`: its
/// `base.name` annotation is gantry's own, so readers of the layout may fetch what it leaves out
/// from there. The record lasts while `dir` exists.
pub(crate) fn mark_shallow(store: &Store, manifest: &Descriptor, dir: &Path) -> Result<()> {
    store.set_ref(
        SHALLOW_REF,
        &manifest.digest.to_string(),
        manifest,
        Some(dir),
    )?;
    Ok(())
}

/// Where the layer blobs that a layout lacks can be read: the repository that the image's
/// `base.name` annotation names. That annotation is attacker-controlled in a layout from
/// elsewhere, so it is followed only when gantry wrote this image into a shallow layout itself
/// (see [`mark_shallow`]) or the user said `--follow-base-name`. `missing` are the digests the
/// layout lacks (none: `Ok(None)`); `what` names the layout in errors.
pub(crate) fn shallow_source(
    ctx: &Context,
    store: &Store,
    what: &str,
    manifest: &Descriptor,
    annotations: &std::collections::BTreeMap<String, String>,
    missing: &[&Digest],
) -> Result<Option<Reference>> {
    let Some(first) = missing.first() else {
        return Ok(None);
    };
    let n = missing.len();
    let blobs = if n == 1 { "blob" } else { "blobs" };
    let Some(name) = annotations.get(gantry_oci::annotations::BASE_NAME) else {
        bail!(
            "{what} lacks {n} layer {blobs} ({first}…) and does not name a base to read them from"
        );
    };
    let base = Reference::parse(name)
        .with_context(|| format!("{what}: its base.name annotation {name:?}"))?;
    let ours = store
        .get_ref(SHALLOW_REF, &manifest.digest.to_string())?
        .is_some_and(|r| r.descriptor.digest == manifest.digest);
    if !(ours || ctx.registry.follow_base_name) {
        bail!(
            "{what} lacks {n} layer {blobs} ({first}…) of its base {base}; gantry did not write \
             this layout, so it does not contact that registry on the layout's word. Pass \
             --follow-base-name to fetch them from {}/{}, or use a complete layout",
            base.registry(),
            base.repository()
        );
    }
    tracing::debug!("{what}: {n} layer {blobs} come from its base {base}");
    Ok(Some(base))
}

/// Finds the layer blobs of `image`, loaded from `base`, that the base's layout lacks (a
/// shallow layout) and points them at the store when it has them all, else at the registry
/// the layout's `base.name` names, when that may be followed (see [`shallow_source`]).
pub(crate) fn find_absent_layers(
    ctx: &Context,
    store: &Store,
    image: &mut gantry_image::Image,
    base: &gantry_image::Base,
    platform: &Platform,
) -> Result<()> {
    let gantry_image::Base::Layout { dir, selector } = base else {
        return Ok(());
    };
    let layout = gantry_store::Layout::open(dir)?;
    let absent: Vec<usize> = (0..image.layers.len())
        .filter(|&i| !layout.has_blob(&image.layers[i].descriptor.digest))
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    let unfetched: Vec<&Digest> = absent
        .iter()
        .map(|&i| &image.layers[i].descriptor.digest)
        .filter(|d| !store.has(d))
        .collect();
    let r = layout.resolve(selector, platform)?;
    let source = match shallow_source(
        ctx,
        store,
        &layout.describe(),
        &r.manifest_descriptor,
        &r.manifest.annotations,
        &unfetched,
    )? {
        Some(b) => BlobSource::Registry {
            registry: b.registry().to_owned(),
            repository: b.repository().to_owned(),
        },
        None => BlobSource::Store,
    };
    for i in absent {
        image.layers[i].source = source.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoReporter;

    #[test]
    fn registry_timeout_comes_from_the_flag_then_the_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("gantry.toml");
        std::fs::write(&file, "[settings]\nregistry-timeout = 300\n").unwrap();
        let project = Project::load(&file).unwrap();
        let mut ctx =
            Context::new(Some(tmp.path().join("home")), Some(1), Arc::new(NoReporter)).unwrap();
        let timeout =
            |ctx: &Context, p: Option<&Project>| client(ctx, p).unwrap().config().request_timeout;
        assert_eq!(
            timeout(&ctx, None),
            gantry_registry::DEFAULT_REQUEST_TIMEOUT
        );
        assert_eq!(timeout(&ctx, Some(&project)), Duration::from_secs(300));
        ctx.registry.timeout = Some(7);
        assert_eq!(timeout(&ctx, Some(&project)), Duration::from_secs(7));
        ctx.registry.timeout = Some(0);
        let e = client(&ctx, None).unwrap_err().to_string();
        assert!(e.contains("--registry-timeout"), "{e}");
    }
}
