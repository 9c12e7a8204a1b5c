//! `gantry push`: publish images to registries, moving as few bytes as possible.
//!
//! For every blob: a HEAD first (already there: nothing to send); a blob that came from another
//! repository of the same registry is mounted from it; a blob in the store or a layout is
//! uploaded; a blob that is only in another registry is streamed from there to here without
//! being stored. The manifest goes last, once every blob is there.

use anyhow::{Context as _, Result, bail};
use gantry_image::{BlobSource, Built};
use gantry_oci::{Descriptor, Digest, Reference};
use gantry_registry::{Client, Repo};
use gantry_store::Store;
use serde::Serialize;

use crate::Context;
use crate::transfer::SourceImage;
use crate::util::parallel_map;

/// Blob transfers run at most this many at once.
pub const PARALLEL_TRANSFERS: usize = 4;

/// An image ready to push: its manifest and where each blob is.
#[derive(Debug, Clone)]
pub struct Pushable {
    /// The manifest's bytes (pushed as they are, so the digest is kept).
    pub manifest_bytes: Vec<u8>,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// Config and layers, with where their bytes are.
    pub blobs: Vec<(Descriptor, BlobSource)>,
}

impl Pushable {
    /// A built image (its config is in the store; layers are wherever they are).
    pub fn from_built(b: &Built) -> Result<Self> {
        Ok(SourceImage::from_built(b)?.pushable())
    }
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAction {
    /// Already in the destination repository.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Streamed from another registry.
    Streamed,
    /// Uploaded from the store or a layout.
    Uploaded,
}

/// Blob counts of one push.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlobCounts {
    /// Already there.
    pub present: usize,
    /// Mounted.
    pub mounted: usize,
    /// Streamed from another registry.
    pub streamed: usize,
    /// Uploaded.
    pub uploaded: usize,
    /// Bytes sent (streamed or uploaded).
    pub bytes_sent: u64,
}

/// One pushed tag.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushOutcome {
    /// The tag pushed to (`registry/repository:tag`).
    pub reference: String,
    /// Where the manifest is, by digest (`registry/repository@sha256:…`).
    pub pushed: String,
    /// The manifest digest.
    pub digest: Digest,
    /// What happened to the blobs.
    pub blobs: BlobCounts,
}

/// What `gantry push` did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// Every tag pushed.
    pub pushed: Vec<PushOutcome>,
}

/// Pushes `image` to `dest` (which must have a tag).
pub fn push(
    client: &Client,
    store: &Store,
    image: &Pushable,
    dest: &Reference,
) -> Result<PushOutcome> {
    let tag = dest
        .tag_or_latest()
        .with_context(|| format!("{dest}: push to a tag, not a digest"))?;
    if dest.digest().is_some() {
        bail!("{dest}: push to a tag, not a digest");
    }
    let repo = client.repo(dest.registry(), dest.repository(), false);
    let actions = parallel_map(PARALLEL_TRANSFERS, &image.blobs, |(desc, source)| {
        push_blob(client, store, &repo, dest, desc, source)
            .with_context(|| format!("cannot push blob {} to {}", desc.digest, dest.name()))
    })?;
    let mut counts = BlobCounts::default();
    for ((desc, _), action) in image.blobs.iter().zip(&actions) {
        match action {
            BlobAction::Present => counts.present += 1,
            BlobAction::Mounted => counts.mounted += 1,
            BlobAction::Streamed => {
                counts.streamed += 1;
                counts.bytes_sent += desc.size;
            }
            BlobAction::Uploaded => {
                counts.uploaded += 1;
                counts.bytes_sent += desc.size;
            }
        }
    }
    let digest = repo
        .put_manifest(tag, &image.media_type, &image.manifest_bytes)
        .with_context(|| format!("cannot push the manifest to {dest}"))?;
    if digest != image.digest {
        bail!(
            "{dest}: the registry stored the manifest as {digest}, not {}",
            image.digest
        );
    }
    Ok(PushOutcome {
        reference: format!("{}:{tag}", dest.name()),
        pushed: format!("{}@{digest}", dest.name()),
        digest,
        blobs: counts,
    })
}

fn push_blob(
    client: &Client,
    store: &Store,
    repo: &Repo,
    dest: &Reference,
    desc: &Descriptor,
    source: &BlobSource,
) -> Result<BlobAction> {
    if repo.head_blob(&desc.digest)?.is_some() {
        return Ok(BlobAction::Present);
    }
    if let BlobSource::Registry {
        registry,
        repository,
    } = source
        && registry == dest.registry()
        && repository != dest.repository()
        && repo.mount_blob(desc, repository)?
    {
        return Ok(BlobAction::Mounted);
    }
    // Uploads reopen their source for each attempt, so a broken large upload can restart.
    let io = |e: gantry_store::Error| std::io::Error::other(e);
    if store.has(&desc.digest) {
        repo.upload_blob_reopen(desc, || store.open_blob(&desc.digest).map_err(io))?;
        return Ok(BlobAction::Uploaded);
    }
    match source {
        BlobSource::Store => bail!("blob {} is not in the store", desc.digest),
        BlobSource::Local(src) => {
            repo.upload_blob_reopen(desc, || src.open_blob(desc).map_err(std::io::Error::other))?;
            Ok(BlobAction::Uploaded)
        }
        BlobSource::Registry {
            registry,
            repository,
        } => {
            let from = client.repo(registry, repository, false);
            repo.upload_blob_reopen(desc, || from.get_blob(desc).map_err(std::io::Error::other))?;
            Ok(BlobAction::Streamed)
        }
    }
}

/// Runs `gantry push`.
pub fn run(ctx: &Context, args: &gantry_cli::PushArgs) -> Result<PushReport> {
    let project = crate::build::load_project(ctx, &args.project).ok();
    let is_image = |n: &str| project.as_ref().is_some_and(|p| p.images.contains_key(n));
    // (source, destinations): project images to their tags, or one source to the references.
    let jobs: Vec<(String, Vec<Reference>)> = if args.args.is_empty()
        || args.args.iter().all(|a| is_image(a))
    {
        let p = project.as_ref().context(
            "no gantry.toml here: give an image and the references to push it to \
             (gantry push oci:DIR:TAG REGISTRY/REPO:TAG)",
        )?;
        let names: Vec<&String> = if args.args.is_empty() {
            p.images
                .iter()
                .filter(|(_, i)| !i.tags.is_empty())
                .map(|(n, _)| n)
                .collect()
        } else {
            args.args.iter().collect()
        };
        if names.is_empty() {
            bail!("{}: no image has `tags` to push to", p.file.display());
        }
        names
            .into_iter()
            .map(|n| {
                let tags = p.images[n].tags.clone();
                if tags.is_empty() {
                    bail!("image.{n} has no `tags`; give them: gantry push {n} REGISTRY/REPO:TAG…");
                }
                Ok((n.clone(), tags))
            })
            .collect::<Result<_>>()?
    } else {
        let (source, dests) = args.args.split_first().expect("not empty");
        if dests.is_empty() {
            bail!("{source} is not an image of the project; give references to push it to");
        }
        let dests = dests
            .iter()
            .map(|d| Reference::parse(d.strip_prefix("docker://").unwrap_or(d)).map_err(Into::into))
            .collect::<Result<Vec<_>>>()?;
        vec![(source.clone(), dests)]
    };

    let store = ctx.store()?;
    let client = crate::registry::client(ctx, project.as_ref())?;
    // Project images are built first (a no-op when nothing changed) to know where every blob is.
    let names: Vec<String> = jobs
        .iter()
        .map(|(s, _)| s.clone())
        .filter(|s| is_image(s))
        .collect();
    let built = match (&project, names.is_empty()) {
        (Some(p), false) => {
            // The layouts a push writes on the way are shallow: it never needs base layer bytes.
            let opts = crate::build::BuildOptions {
                allow_unpinned: args.allow_unpinned,
                shallow: true,
            };
            crate::build::build(ctx, p, &names, opts)?.built
        }
        _ => Default::default(),
    };
    let mut pushed = Vec::new();
    for (source, dests) in &jobs {
        let image = match built.get(source) {
            Some(b) => Pushable::from_built(b)?,
            None => crate::transfer::open_source(ctx, &store, &client, source, None)?.pushable(),
        };
        for dest in dests {
            let outcome = push(&client, &store, &image, dest)?;
            ctx.reporter.event(&format!(
                "{}: {} blobs present, {} mounted, {} streamed, {} uploaded",
                outcome.reference,
                outcome.blobs.present,
                outcome.blobs.mounted,
                outcome.blobs.streamed,
                outcome.blobs.uploaded
            ));
            pushed.push(outcome);
        }
    }
    Ok(PushReport { pushed })
}
