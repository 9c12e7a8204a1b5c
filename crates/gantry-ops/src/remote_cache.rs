//! The remote cache: action-cache entries kept in a registry repository, so machines that share
//! it reuse each other's layers and steps.
//!
//! An entry is an OCI manifest tagged `sha256-<key hex>`, with artifact type
//! [`ARTIFACT_TYPE`], the empty config, the output blob as its one layer, and the layer info
//! (and the key) in annotations: a lookup is one manifest GET and one blob HEAD, and a hit
//! downloads nothing. The layer keeps the cache repository as its source, so a sink that needs
//! the bytes fetches them (verified) and a push to the same registry mounts them.
//!
//! Entries are checked before use (the layer must be the one the layer info describes, the key
//! must be ours, the blob must exist with its size) and ignored with a warning otherwise. A
//! cache registry that cannot be reached is reported once and then left alone for the rest of
//! the build, which carries on with local work.

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Result, bail};
use gantry_cache::CacheKey;
use gantry_layer::LayerInfo;
use gantry_oci::{Descriptor, Digest, ImageManifest, Reference, json, media_types as mt};
use gantry_registry::{Client, Repo};
use gantry_store::Store;

use crate::Context;

/// The artifact type of remote cache entries.
pub const ARTIFACT_TYPE: &str = "application/vnd.gantry.cache.v1";
/// The annotation holding the entry's cache key.
pub const KEY_ANNOTATION: &str = "dev.gantry.cache.key";
/// The annotation holding the entry's layer info (canonical JSON).
pub const INFO_ANNOTATION: &str = "dev.gantry.cache.layer-info";

/// A remote cache repository for one build.
pub(crate) struct RemoteCache {
    repo: Repo,
    write: bool,
    disabled: AtomicBool,
    bytes: AtomicU64,
}

impl RemoteCache {
    /// The remote cache a build uses: `--cache-to` (read and write) or `--cache-from` (read
    /// only) on the command line, else `cache-to` / `cache-from` in the project's settings.
    pub(crate) fn configured(
        ctx: &Context,
        settings: Option<&gantry_project::Settings>,
        client: &Client,
    ) -> Result<Option<RemoteCache>> {
        let parse = |flag: &str, v: &str| -> Result<Reference> {
            let r = Reference::parse(v)?;
            if r.tag().is_some() || r.digest().is_some() {
                bail!("{flag} {v:?}: give a repository (host/path), without a tag or digest");
            }
            Ok(r)
        };
        let (repo, write) = if let Some(to) = &ctx.cache_to {
            (parse("--cache-to", to)?, true)
        } else if let Some(from) = &ctx.cache_from {
            (parse("--cache-from", from)?, false)
        } else if let Some(to) = settings.and_then(|s| s.cache_to.clone()) {
            (to, true)
        } else if let Some(from) = settings.and_then(|s| s.cache_from.clone()) {
            (from, false)
        } else {
            return Ok(None);
        };
        Ok(Some(RemoteCache {
            repo: client.repo(repo.registry(), repo.repository(), false),
            write,
            disabled: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
        }))
    }

    /// `host[:port]` of the cache registry.
    pub(crate) fn registry(&self) -> &str {
        self.repo.registry()
    }

    /// The cache repository's path.
    pub(crate) fn repository(&self) -> &str {
        self.repo.repository()
    }

    /// Bytes moved to and from the cache registry so far (manifests and uploaded blobs).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn tag(key: &CacheKey) -> String {
        format!("sha256-{}", key.hex())
    }

    /// Reports a failure to reach the cache registry, once, and stops using it.
    fn unavailable(&self, ctx: &Context, e: &dyn std::fmt::Display) {
        if !self.disabled.swap(true, Ordering::Relaxed) {
            ctx.reporter.warn(&format!(
                "remote cache {}: {e}; building locally without it",
                self.repo.name()
            ));
        }
    }

    /// The layer info of the entry for `key`, if the cache has a valid one.
    pub(crate) fn lookup(&self, ctx: &Context, key: &CacheKey, label: &str) -> Option<LayerInfo> {
        if self.disabled.load(Ordering::Relaxed) {
            return None;
        }
        let tag = Self::tag(key);
        let m = match self.repo.get_manifest(&tag) {
            Ok(m) => m,
            Err(gantry_registry::Error::NotFound { .. }) => return None,
            Err(e) => {
                self.unavailable(ctx, &e);
                return None;
            }
        };
        self.bytes
            .fetch_add(m.bytes.len() as u64, Ordering::Relaxed);
        let entry = format!("{}:{tag}", self.repo.name());
        let info = match check_entry(&m.bytes, &m.media_type, key) {
            Ok(info) => info,
            Err(reason) => {
                ctx.reporter.warn(&format!(
                    "{label}: remote cache entry {entry} ignored: {reason}"
                ));
                return None;
            }
        };
        match self.repo.head_blob(&info.digest) {
            Ok(Some(size)) if size == info.size => {}
            Ok(Some(size)) => {
                ctx.reporter.warn(&format!(
                    "{label}: remote cache entry {entry} ignored: its blob {} has {size} bytes, not {}",
                    info.digest, info.size
                ));
                return None;
            }
            Ok(None) => {
                ctx.reporter.warn(&format!(
                    "{label}: remote cache entry {entry} ignored: its blob {} is missing",
                    info.digest
                ));
                return None;
            }
            Err(e) => {
                self.unavailable(ctx, &e);
                return None;
            }
        }
        Some(info)
    }

    /// Writes the entry for `key` (whose output blob is in `store`) unless this cache is
    /// read-only or already has it.
    pub(crate) fn write_back(
        &self,
        ctx: &Context,
        store: &Store,
        key: &CacheKey,
        info: &LayerInfo,
    ) {
        if !self.write || self.disabled.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.put(store, key, info) {
            self.unavailable(ctx, &e);
        }
    }

    fn put(&self, store: &Store, key: &CacheKey, info: &LayerInfo) -> Result<()> {
        let tag = Self::tag(key);
        if self.repo.head_manifest(&tag)?.is_some() {
            return Ok(());
        }
        let layer = info.descriptor();
        if self.repo.head_blob(&layer.digest)?.is_none() {
            let digest = layer.digest.clone();
            self.repo.upload_blob_reopen(&layer, || {
                store.open_blob(&digest).map_err(std::io::Error::other)
            })?;
            self.bytes.fetch_add(layer.size, Ordering::Relaxed);
        }
        let config = empty_descriptor();
        if self.repo.head_blob(&config.digest)?.is_none() {
            self.repo
                .upload_blob(&config, Cursor::new(EMPTY_JSON.to_vec()))?;
            self.bytes.fetch_add(config.size, Ordering::Relaxed);
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.to_owned()),
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            config,
            layers: vec![layer],
            subject: None,
            annotations: [
                (KEY_ANNOTATION.to_owned(), key.to_string()),
                (
                    INFO_ANNOTATION.to_owned(),
                    String::from_utf8(info.to_json()).unwrap_or_default(),
                ),
            ]
            .into_iter()
            .collect(),
        };
        let bytes = json::to_canonical_vec(&manifest);
        self.repo.put_manifest(&tag, mt::OCI_MANIFEST, &bytes)?;
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

const EMPTY_JSON: &[u8] = b"{}";

fn empty_descriptor() -> Descriptor {
    Descriptor::new(mt::OCI_EMPTY.to_owned(), Digest::sha256(EMPTY_JSON), 2)
}

/// Checks a remote entry's manifest against `key` and returns its layer info.
fn check_entry(bytes: &[u8], media_type: &str, key: &CacheKey) -> Result<LayerInfo, String> {
    let m: ImageManifest = gantry_oci::parse_manifest(bytes, Some(media_type), "cache entry")
        .map_err(|e| e.to_string())?;
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(format!(
            "its artifact type is {:?}, not {ARTIFACT_TYPE}",
            m.artifact_type
        ));
    }
    if m.annotations.get(KEY_ANNOTATION) != Some(&key.to_string()) {
        return Err("it was written for another key".to_owned());
    }
    let info_json = m
        .annotations
        .get(INFO_ANNOTATION)
        .ok_or_else(|| "it has no layer info".to_owned())?;
    let info: LayerInfo = json::parse_strict(info_json.as_bytes(), "layer info", 1 << 20)
        .map_err(|e| e.to_string())?;
    if m.layers.len() != 1 || m.layers[0] != info.descriptor() {
        return Err(format!(
            "its layer is not the blob its layer info names ({})",
            info.digest
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> LayerInfo {
        LayerInfo {
            media_type: mt::OCI_LAYER_GZIP.to_owned(),
            digest: Digest::sha256(b"layer"),
            size: 5,
            diff_id: Some(Digest::sha256(b"tar")),
            annotations: Default::default(),
            history: None,
        }
    }

    fn entry(key: &CacheKey, info: &LayerInfo, layer: Descriptor) -> Vec<u8> {
        let m = ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.to_owned()),
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            config: empty_descriptor(),
            layers: vec![layer],
            subject: None,
            annotations: [
                (KEY_ANNOTATION.to_owned(), key.to_string()),
                (
                    INFO_ANNOTATION.to_owned(),
                    String::from_utf8(info.to_json()).unwrap(),
                ),
            ]
            .into_iter()
            .collect(),
        };
        json::to_canonical_vec(&m)
    }

    #[test]
    fn entries_are_checked_against_key_and_layer() {
        let key = gantry_cache::KeyHasher::new("test").finish();
        let other = {
            let mut k = gantry_cache::KeyHasher::new("test");
            k.str("other");
            k.finish()
        };
        let i = info();
        let good = entry(&key, &i, i.descriptor());
        assert_eq!(check_entry(&good, mt::OCI_MANIFEST, &key).unwrap(), i);
        let e = check_entry(&good, mt::OCI_MANIFEST, &other).unwrap_err();
        assert!(e.contains("another key"), "{e}");
        let mut wrong = i.descriptor();
        wrong.digest = Digest::sha256(b"evil");
        let e = check_entry(&entry(&key, &i, wrong), mt::OCI_MANIFEST, &key).unwrap_err();
        assert!(e.contains("not the blob"), "{e}");
    }
}
