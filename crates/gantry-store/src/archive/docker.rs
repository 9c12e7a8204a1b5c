//! `docker-archive`: what `docker save` writes and `docker load` / `podman load` read.
//!
//! Its index is `manifest.json`: `[{"Config": "<member>", "RepoTags": ["name:tag"], "Layers":
//! ["<member>", …]}]`. Before Docker 25 the members were `<hex>.json` (the config, named by its
//! digest) and `<id>/layer.tar` (uncompressed layers); skopeo writes `<hex>.json` and
//! `<hex>.tar`. Docker 25 writes an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) and a `manifest.json` whose members are those blobs, so that one file
//! is both a docker-archive and an oci-archive.
//!
//! [`DockerArchive`] reads any of these through `manifest.json`; [`DockerArchiveWriter`] writes
//! the combined format, keeping layers as they are (gzip layers keep their digest: `docker
//! load` and `podman load` decompress them).

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use gantry_oci::annotations::REF_NAME;
use gantry_oci::json::{self, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use gantry_oci::media_types as mt;
use gantry_oci::{
    Algorithm, Compression, DEFAULT_REGISTRY, Descriptor, Digest, Document, HashingReader,
    ImageConfig, ImageManifest, Reference, VerifyingReader, parse_document,
};
use serde::{Deserialize, Deserializer, Serialize};

use super::blob_member;
use super::tarball::{Member, TarIndex, normalize_member_name};
use super::writer::ArchiveCore;
use crate::layout::{CONTAINERD_IMAGE_NAME, ImageWriter, Layout};
use crate::{Error, Result, Store};

/// The index of a docker-archive.
const MANIFEST_JSON: &str = "manifest.json";

/// One image of a docker-archive's `manifest.json`. Fields Docker also writes (`Parent`,
/// `LayerSources`) are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerManifestEntry {
    /// The config's member.
    #[serde(rename = "Config")]
    pub config: String,
    /// The image's names (`name:tag`); Docker writes `null` for an untagged image.
    #[serde(rename = "RepoTags", default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    /// The layers' members, base first.
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// Reads `null` (Docker's untagged image) as an empty list.
fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// A docker-archive opened for reading: the tar headers scanned once (names validated, members
/// recorded by offset) and `manifest.json` parsed. Images are read in place.
#[derive(Debug)]
pub struct DockerArchive {
    tar: TarIndex,
    entries: Vec<DockerManifestEntry>,
    /// Members hashed so far: member → digest, and digest → member for
    /// [`DockerArchive::open_blob_verified`].
    hashed: Mutex<Hashed>,
}

/// The members [`DockerArchive`] has hashed.
#[derive(Debug, Default)]
struct Hashed {
    by_member: HashMap<String, Digest>,
    by_digest: HashMap<Digest, String>,
}

/// One image of a docker-archive, with descriptors computed from its members.
#[derive(Debug, Clone)]
pub struct DockerImage {
    /// Its names in `manifest.json`.
    pub repo_tags: Vec<String>,
    /// The config's descriptor (OCI config media type).
    pub config: Descriptor,
    /// The config's bytes.
    pub config_bytes: Vec<u8>,
    /// The parsed config.
    pub image_config: ImageConfig,
    /// The layers, base first.
    pub layers: Vec<DockerLayer>,
}

/// A layer of a [`DockerImage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerLayer {
    /// Media type (OCI tar, tar+gzip or tar+zstd, sniffed from the first bytes), digest and
    /// size of the member as stored.
    pub descriptor: Descriptor,
    /// The uncompressed digest, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// The member holding it.
    pub member: String,
}

impl DockerImage {
    /// An OCI image manifest of the config and layers. Its digest is gantry's, not one that
    /// the archive records (old-style docker-archives record none).
    pub fn manifest(&self) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config: self.config.clone(),
            layers: self.layers.iter().map(|l| l.descriptor.clone()).collect(),
            subject: None,
            annotations: Default::default(),
        }
    }
}

impl DockerArchive {
    /// Opens a docker-archive: scans the tar headers and reads `manifest.json` (capped at
    /// 4 MiB, parsed strictly).
    pub fn open(file: &Path) -> Result<DockerArchive> {
        let tar = TarIndex::open(file)?;
        let what = format!(
            "member {MANIFEST_JSON} of docker-archive {}",
            file.display()
        );
        let Some(bytes) = tar.read_member(MANIFEST_JSON, MAX_MANIFEST_SIZE)? else {
            return Err(Error::DockerArchive {
                archive: file.to_owned(),
                reason: format!("it has no {MANIFEST_JSON} (is it a docker-archive?)"),
            });
        };
        let entries: Vec<DockerManifestEntry> =
            json::parse_strict(&bytes, &what, MAX_MANIFEST_SIZE)?;
        Ok(DockerArchive {
            tar,
            entries,
            hashed: Mutex::new(Hashed::default()),
        })
    }

    /// The archive file.
    pub fn path(&self) -> &Path {
        self.tar.path()
    }

    /// The entries of `manifest.json`, in order.
    pub fn entries(&self) -> &[DockerManifestEntry] {
        &self.entries
    }

    /// Every name of every image, in order.
    pub fn repo_tags(&self) -> Vec<String> {
        self.entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().cloned())
            .collect()
    }

    /// Reads one image. `reference` picks the `manifest.json` entry: a name from its
    /// `RepoTags` (`busybox:latest` and `docker.io/library/busybox:latest` are the same), or
    /// `@N` for the N-th entry (as skopeo's `docker-archive:FILE:@N`); `None` takes the only
    /// one. The config is read (capped at 8 MiB) and parsed; the layers must be as many as its
    /// `diff_ids`.
    ///
    /// Cost: to give each layer a descriptor, every layer member is read once and hashed here
    /// (the archive records no layer digests it could be trusted for). Hashes are kept, so
    /// asking again costs nothing; reading a layer later verifies it again as it streams. An
    /// uncompressed layer must hash to its `diff_id`.
    pub fn image(&self, reference: Option<&str>) -> Result<DockerImage> {
        let entry = self.select(reference)?;
        let config_member = self.member_name(&entry.config)?;
        let Some(member) = self.tar.file_member(&config_member)? else {
            return Err(self.error(format!(
                "its {MANIFEST_JSON} names the config {config_member}, which is not in the archive"
            )));
        };
        let config_bytes = self
            .tar
            .read_member(&config_member, MAX_CONFIG_SIZE)?
            .unwrap_or_default();
        let config_digest = Digest::sha256(&config_bytes);
        self.check_claim(&config_member, &config_digest)?;
        self.remember(&config_member, &config_digest);
        let what = format!(
            "config {config_member} of docker-archive {}",
            self.path().display()
        );
        let image_config = ImageConfig::parse(&config_bytes, &what)?;
        let diff_ids = &image_config.rootfs.diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(self.error(format!(
                "its config {config_member} lists {} diff_ids for {} layers",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (layer, diff_id) in entry.layers.iter().zip(diff_ids) {
            layers.push(self.layer(layer, diff_id)?);
        }
        Ok(DockerImage {
            repo_tags: entry.repo_tags.clone(),
            config: Descriptor::new(mt::OCI_CONFIG, config_digest, member.size),
            config_bytes,
            image_config,
            layers,
        })
    }

    /// Opens a blob of an image read by [`DockerArchive::image`] (config or layer, by digest),
    /// or a `blobs/<alg>/<hex>` member, verified against `desc` as it streams.
    pub fn open_blob_verified(
        &self,
        desc: &Descriptor,
    ) -> Result<VerifyingReader<Box<dyn Read + Send>>> {
        let name = {
            let hashed = self.hashed.lock().unwrap_or_else(PoisonError::into_inner);
            hashed.by_digest.get(&desc.digest).cloned()
        };
        let name = name.unwrap_or_else(|| blob_member(&desc.digest));
        let what = format!(
            "blob {} (member {name}) in docker-archive {}",
            desc.digest,
            self.path().display()
        );
        desc.validate(&what)?;
        let Some(member) = self.tar.file_member(&name)? else {
            return Err(Error::LayoutBlobNotFound {
                what: format!("docker-archive {}", self.path().display()),
                digest: desc.digest.clone(),
                looked_for: "the members of the images read so far".to_owned(),
            });
        };
        let reader: Box<dyn Read + Send> = Box::new(self.tar.open_member(&member));
        Ok(VerifyingReader::new(
            reader,
            desc.digest.clone(),
            desc.size,
            what,
        ))
    }

    /// Reads a whole blob of at most `limit` bytes (see [`DockerArchive::open_blob_verified`]).
    pub fn read_blob_verified(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>> {
        if desc.size > limit {
            return Err(Error::BlobTooLarge {
                what: format!(
                    "blob {} in docker-archive {}",
                    desc.digest,
                    self.path().display()
                ),
                limit,
            });
        }
        let mut bytes = Vec::new();
        self.open_blob_verified(desc)?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::copy(format!("blob {}", desc.digest), e))?;
        Ok(bytes)
    }

    /// The entry `reference` names (see [`DockerArchive::image`]).
    fn select(&self, reference: Option<&str>) -> Result<&DockerManifestEntry> {
        let tags = || list(&self.repo_tags());
        match reference {
            None => match self.entries.as_slice() {
                [only] => Ok(only),
                [] => Err(self.error(format!("its {MANIFEST_JSON} lists no images"))),
                several => Err(self.error(format!(
                    "it holds {} images; choose one by name or @index (names: {})",
                    several.len(),
                    tags()
                ))),
            },
            Some(r) => {
                if let Some(n) = r.strip_prefix('@') {
                    let n: usize = n
                        .parse()
                        .map_err(|_| self.error(format!("{r:?} is not @<index>")))?;
                    return self.entries.get(n).ok_or_else(|| {
                        self.error(format!(
                            "it holds {} images, so there is no @{n}",
                            self.entries.len()
                        ))
                    });
                }
                self.entries
                    .iter()
                    .find(|e| e.repo_tags.iter().any(|t| same_reference(t, r)))
                    .ok_or_else(|| {
                        self.error(format!("it has no image named {r} (names: {})", tags()))
                    })
            }
        }
    }

    /// A layer's descriptor, from hashing its member (once).
    fn layer(&self, layer: &str, diff_id: &Digest) -> Result<DockerLayer> {
        let name = self.member_name(layer)?;
        let Some(member) = self.tar.file_member(&name)? else {
            return Err(self.error(format!(
                "its {MANIFEST_JSON} names the layer {name}, which is not in the archive"
            )));
        };
        let digest = self.hash_member(&name, &member)?;
        let compression = Compression::sniff(&self.tar.head(&member, 4)?);
        if compression == Compression::None && digest != *diff_id {
            return Err(self.tar.member_error(
                &name,
                format!("this uncompressed layer hashes to {digest}, but the config's diff_id is {diff_id}"),
            ));
        }
        Ok(DockerLayer {
            descriptor: Descriptor::new(compression.oci_layer_media_type(), digest, member.size),
            diff_id: diff_id.clone(),
            member: name,
        })
    }

    /// The digest of a member, hashing it unless it was hashed before. A member named
    /// `blobs/<alg>/<hex>` is hashed with that algorithm and must match its name.
    fn hash_member(&self, name: &str, member: &Member) -> Result<Digest> {
        {
            let hashed = self.hashed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(digest) = hashed.by_member.get(name) {
                return Ok(digest.clone());
            }
        }
        let algorithm = claimed_digest(name).map_or(Algorithm::Sha256, |d| d.algorithm());
        let mut reader = HashingReader::new(self.tar.open_member(member), algorithm);
        io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io("read", self.path(), e))?;
        let (_, digest, read) = reader.finish();
        if read != member.size {
            return Err(self.tar.member_error(
                name,
                format!("only {read} of its {} bytes could be read", member.size),
            ));
        }
        self.check_claim(name, &digest)?;
        self.remember(name, &digest);
        Ok(digest)
    }

    /// Records a member's digest, so it is not hashed again and can be opened by digest.
    fn remember(&self, name: &str, digest: &Digest) {
        let mut hashed = self.hashed.lock().unwrap_or_else(PoisonError::into_inner);
        hashed.by_member.insert(name.to_owned(), digest.clone());
        hashed
            .by_digest
            .entry(digest.clone())
            .or_insert_with(|| name.to_owned());
    }

    /// A member whose name states a digest (`blobs/<alg>/<hex>`, `<hex>.json`) must have it.
    fn check_claim(&self, name: &str, actual: &Digest) -> Result<()> {
        match claimed_digest(name) {
            Some(claimed) if claimed != *actual => Err(self.tar.member_error(
                name,
                format!("it hashes to {actual}, but its name says {claimed}"),
            )),
            _ => Ok(()),
        }
    }

    /// A `manifest.json` path, normalised like the members (no `..`).
    fn member_name(&self, raw: &str) -> Result<String> {
        let normalized = normalize_member_name(raw.as_bytes())
            .map_err(|reason| self.error(format!("its {MANIFEST_JSON} names {raw:?}: {reason}")))?;
        // Normalising valid UTF-8 at '/' boundaries keeps it valid.
        Ok(String::from_utf8_lossy(&normalized).into_owned())
    }

    /// An error about this archive's `manifest.json` or images.
    fn error(&self, reason: String) -> Error {
        Error::DockerArchive {
            archive: self.path().to_owned(),
            reason,
        }
    }
}

/// The digest a member's name states: `blobs/<alg>/<hex>`, or a config named `<hex>.json`.
fn claimed_digest(name: &str) -> Option<Digest> {
    if let Some((alg, hex)) = name.strip_prefix("blobs/").and_then(|r| r.split_once('/')) {
        return Digest::parse(&format!("{alg}:{hex}")).ok();
    }
    let hex = name.strip_suffix(".json")?;
    if hex.contains('/') {
        return None;
    }
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// Whether two image names are the same, after normalisation (`busybox` is
/// `docker.io/library/busybox:latest`).
fn same_reference(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Reference::parse(a), Reference::parse(b)) {
        (Ok(x), Ok(y)) => {
            x.digest().is_none()
                && y.digest().is_none()
                && x.name() == y.name()
                && x.tag_or_latest() == y.tag_or_latest()
        }
        _ => false,
    }
}

/// The name Docker shows and writes in `RepoTags`: `busybox:latest` for
/// `docker.io/library/busybox:latest`, `example.com/app:1` otherwise.
fn familiar_name(reference: &Reference, tag: &str) -> String {
    let repository = reference.repository();
    if reference.registry() == DEFAULT_REGISTRY {
        let short = repository
            .strip_prefix("library/")
            .filter(|r| !r.contains('/'))
            .unwrap_or(repository);
        format!("{short}:{tag}")
    } else {
        format!("{}/{repository}:{tag}", reference.registry())
    }
}

/// Formats a list for an error message.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Writes a `docker-archive` in Docker 25's combined format: an OCI image layout (`oci-layout`,
/// `index.json`, `blobs/sha256/…`) plus `manifest.json` naming the same blobs, as one
/// deterministic tar (the same entry rules as [`crate::OciArchiveWriter`]; `manifest.json`
/// comes just before `index.json`). `docker load`, `podman load` and skopeo's
/// `docker-archive:` and `oci-archive:` transports read it.
///
/// Layers are written as they are: a gzip layer keeps its digest, and the loaders decompress
/// it. Every image must be complete: [`DockerArchiveWriter::commit`] reads each manifest back
/// from the archive and refuses one whose config or layers were not added.
#[derive(Debug)]
pub struct DockerArchiveWriter {
    core: ArchiveCore,
}

impl DockerArchiveWriter {
    /// Starts an archive that [`DockerArchiveWriter::commit`] will put at `dest`.
    pub fn new(dest: &Path) -> Result<DockerArchiveWriter> {
        Ok(DockerArchiveWriter {
            core: ArchiveCore::new(dest, "docker-archive")?,
        })
    }

    /// Adds a blob from memory (sha256). Returns its digest.
    pub fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        self.core.add_blob_bytes(bytes)
    }

    /// Adds a blob of the store, verified against its digest while it is copied.
    pub fn add_blob_from_store(&mut self, store: &Store, digest: &Digest) -> Result<()> {
        self.core.add_blob_from_store(store, digest)
    }

    /// Adds a blob by copying `reader`, verified against `desc`.
    pub fn add_blob_from_reader(&mut self, reader: impl Read, desc: &Descriptor) -> Result<()> {
        self.core.add_blob_from_reader(reader, desc)
    }

    /// Adds a blob of a layout (directory or archive), verified against `desc`.
    pub fn add_blob_from_layout(&mut self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        self.core.add_blob_from_layout(layout, desc)
    }

    /// Adds an image whose manifest blob (and config and layers) are added to the archive.
    /// With a `reference` (`docker-archive:FILE:REF`), `manifest.json` lists it in `RepoTags`
    /// (Docker's short form, `busybox:latest`) and the `index.json` entry gets the full name
    /// as `io.containerd.image.name` and the tag as `org.opencontainers.image.ref.name`, as
    /// Docker 25 writes them (podman names the image it loads from these). A reference without
    /// a tag means `latest`; one with a digest is refused.
    pub fn add_image(&mut self, mut desc: Descriptor, reference: Option<&Reference>) -> Result<()> {
        if let Some(reference) = reference {
            if reference.digest().is_some() {
                return Err(Error::ArchiveContent {
                    what: self.core.describe(),
                    reason: format!(
                        "a docker-archive names images by tag, and {reference} has a digest"
                    ),
                });
            }
            let tag = reference.tag_or_latest().unwrap_or("latest");
            desc.annotations.insert(
                CONTAINERD_IMAGE_NAME.to_owned(),
                format!("{}:{tag}", reference.name()),
            );
            desc.annotations.insert(REF_NAME.to_owned(), tag.to_owned());
        }
        self.core.add_manifest(desc);
        Ok(())
    }

    /// Adds an entry to `index.json` (and so an image to `manifest.json`). Its
    /// `io.containerd.image.name` annotation, if any, becomes its `RepoTags` entry; see
    /// [`DockerArchiveWriter::add_image`].
    pub fn add_manifest(&mut self, desc: Descriptor) {
        self.core.add_manifest(desc);
    }

    /// Writes `manifest.json`, `index.json` and the end of the archive, fsyncs, and renames
    /// the file to the destination (replacing only an empty file or a tar archive). Fails,
    /// writing nothing, if an image's manifest, config or a layer was not added, or if an
    /// entry is an index (a docker-archive holds image manifests only).
    pub fn commit(self) -> Result<()> {
        let manifest_json = self.manifest_json()?;
        self.core.commit(&[(MANIFEST_JSON, manifest_json)])
    }

    /// `manifest.json`: one entry per manifest, with the names of every `index.json` entry
    /// pointing to it.
    fn manifest_json(&self) -> Result<Vec<u8>> {
        let what = self.core.describe();
        let missing = |reason: String| Error::ArchiveContent {
            what: what.clone(),
            reason,
        };
        let mut order: Vec<Digest> = Vec::new();
        let mut entries: HashMap<Digest, DockerManifestEntry> = HashMap::new();
        for desc in self.core.manifests() {
            if !entries.contains_key(&desc.digest) {
                let Some(bytes) = self.core.read_back(&desc.digest, MAX_MANIFEST_SIZE)? else {
                    return Err(missing(format!(
                        "the manifest {} was not added to the archive",
                        desc.digest
                    )));
                };
                let doc_what = format!("manifest {} in {what}", desc.digest);
                let manifest = match parse_document(&bytes, Some(&desc.media_type), &doc_what)? {
                    Document::Manifest(m) => m,
                    Document::Index(_) => {
                        return Err(missing(format!(
                            "{} is an index; a docker-archive holds image manifests only",
                            desc.digest
                        )));
                    }
                };
                for (kind, blob) in std::iter::once(("config", &manifest.config))
                    .chain(manifest.layers.iter().map(|l| ("layer", l)))
                {
                    if !self.core.has(&blob.digest) {
                        return Err(missing(format!(
                            "the {kind} {} of manifest {} was not added to the archive",
                            blob.digest, desc.digest
                        )));
                    }
                }
                order.push(desc.digest.clone());
                entries.insert(
                    desc.digest.clone(),
                    DockerManifestEntry {
                        config: blob_member(&manifest.config.digest),
                        repo_tags: Vec::new(),
                        layers: manifest
                            .layers
                            .iter()
                            .map(|l| blob_member(&l.digest))
                            .collect(),
                    },
                );
            }
            if let Some(name) = desc.annotations.get(CONTAINERD_IMAGE_NAME) {
                let reference = Reference::parse(name).map_err(|e| {
                    missing(format!("the image name of manifest {}: {e}", desc.digest))
                })?;
                let tag = reference.tag_or_latest().ok_or_else(|| {
                    missing(format!(
                        "the image name {name} of manifest {} has no tag",
                        desc.digest
                    ))
                })?;
                let familiar = familiar_name(&reference, tag);
                if let Some(entry) = entries.get_mut(&desc.digest)
                    && !entry.repo_tags.contains(&familiar)
                {
                    entry.repo_tags.push(familiar);
                }
            }
        }
        let list: Vec<&DockerManifestEntry> = order.iter().map(|d| &entries[d]).collect();
        Ok(json::to_canonical_vec(&list))
    }
}

impl ImageWriter for DockerArchiveWriter {
    fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        self.core.add_blob_bytes(bytes)
    }
    fn add_blob_from_store(&mut self, store: &Store, digest: &Digest) -> Result<()> {
        self.core.add_blob_from_store(store, digest)
    }
    fn add_blob_from_reader(&mut self, reader: &mut dyn Read, desc: &Descriptor) -> Result<()> {
        self.core.add_blob_from_reader(reader, desc)
    }
    fn add_blob_from_layout(&mut self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        self.core.add_blob_from_layout(layout, desc)
    }
    fn add_manifest(&mut self, desc: Descriptor) {
        self.core.add_manifest(desc);
    }
}
