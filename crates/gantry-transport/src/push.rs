//! Pushing an image to a registry, moving as few bytes as possible.
//!
//! For every blob: a HEAD first (already there: nothing to send); a blob that came from another
//! repository of the same registry is mounted from it; a blob in the store, a layout or an
//! archive is uploaded; a blob that is only in another registry is streamed from there to here
//! without being stored. The manifest goes last, once every blob is there.

use gantry_image::{BlobSource, SourceImage};
use gantry_oci::{Descriptor, Digest, Reference};
use gantry_registry::Repo;
use serde::Serialize;

use crate::error::{Context as _, image_error};
use crate::parallel::parallel_map;
use crate::{Error, Transfer};

/// Blob transfers (pushes, fetches) run at most this many at once.
pub const PARALLEL_TRANSFERS: usize = 4;

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobAction {
    /// Already in the destination repository.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Streamed from another registry.
    Streamed,
    /// Uploaded from the store, a layout or an archive.
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

/// A blob to push: the config (in memory) or a layer (wherever it is).
enum Blob<'a> {
    Config(&'a [u8]),
    Layer(&'a BlobSource),
}

impl Transfer<'_> {
    /// Pushes `img` to `dest` (which must name a tag, not a digest).
    pub fn push(&self, img: &SourceImage, dest: &Reference) -> Result<PushOutcome, Error> {
        let not_a_tag = || image_error(dest.to_string(), "push to a tag, not a digest");
        let tag = dest.tag_or_latest().ok_or_else(not_a_tag)?;
        if dest.digest().is_some() {
            return Err(not_a_tag());
        }
        let client = self.client(&dest.to_string())?;
        let repo = client.repo(dest.registry(), dest.repository(), false);
        let mut blobs = vec![(&img.manifest.config, Blob::Config(&img.config_bytes))];
        blobs.extend(img.layers.iter().map(|(d, s)| (d, Blob::Layer(s))));
        let actions = parallel_map(PARALLEL_TRANSFERS, &blobs, |(desc, blob)| {
            self.push_blob(&repo, dest, desc, blob)
                .context_with(|| format!("cannot push blob {} to {}", desc.digest, dest.name()))
        })?;
        let mut counts = BlobCounts::default();
        for ((desc, _), action) in blobs.iter().zip(&actions) {
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
            .put_manifest(tag, &img.descriptor.media_type, &img.manifest_bytes)
            .context_with(|| format!("cannot push the manifest to {dest}"))?;
        if digest != *img.digest() {
            return Err(image_error(
                dest.to_string(),
                format!(
                    "the registry stored the manifest as {digest}, not {}",
                    img.digest()
                ),
            ));
        }
        Ok(PushOutcome {
            reference: format!("{}:{tag}", dest.name()),
            pushed: format!("{}@{digest}", dest.name()),
            digest,
            blobs: counts,
        })
    }

    fn push_blob(
        &self,
        repo: &Repo,
        dest: &Reference,
        desc: &Descriptor,
        blob: &Blob<'_>,
    ) -> Result<BlobAction, Error> {
        if repo.head_blob(&desc.digest)?.is_some() {
            return Ok(BlobAction::Present);
        }
        let source = match blob {
            Blob::Config(bytes) => {
                repo.upload_blob_reopen(desc, || Ok(std::io::Cursor::new(bytes.to_vec())))?;
                return Ok(BlobAction::Uploaded);
            }
            Blob::Layer(source) => *source,
        };
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
        // The store's copy goes when it has one (the registry checks the digest of every
        // upload); blobs from elsewhere are verified as they are read, too.
        if self.store.has(&desc.digest) {
            let open = || self.store.open_blob(&desc.digest);
            repo.upload_blob_reopen(desc, || open().map_err(std::io::Error::other))?;
            return Ok(BlobAction::Uploaded);
        }
        if let BlobSource::Store = source {
            return Err(image_error(
                format!("blob {}", desc.digest),
                "it is not in the store",
            ));
        }
        let open = || self.stream_blob(desc, source);
        repo.upload_blob_reopen(desc, || open().map_err(std::io::Error::other))?;
        Ok(match source {
            BlobSource::Registry { .. } => BlobAction::Streamed,
            _ => BlobAction::Uploaded,
        })
    }
}
