//! OCI image layouts: reading with verification and platform resolution, from a directory or
//! from an archive, and writing directories atomically.
//!
//! Reading trusts nothing: `oci-layout` and `index.json` are size-capped and parsed strictly,
//! and every blob is checked against its descriptor's size and digest as it is read. The
//! resolution logic ([`Layout`]) is written once over a [`LayoutSource`], which only knows how to
//! read a small file and open a blob: [`Layout::open`] reads a directory, [`Layout::open_archive`]
//! an `oci-archive` tar file (see `archive.rs`). Blob files of a directory may be symlinks
//! (Bazel's rules_oci makes them); they are followed, and the digest check keeps that safe.
//!
//! Writing builds the whole layout in a temp directory next to the destination and moves it
//! into place at the end, so a failed build leaves the previous output intact and no half
//! output behind. [`ImageWriter`] is the interface [`LayoutWriter`] shares with the archive
//! writers.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_oci::annotations::REF_NAME;
use gantry_oci::json::{self, MAX_MANIFEST_SIZE};
use gantry_oci::media_types::OCI_LAYOUT_VERSION;
use gantry_oci::{
    Descriptor, Digest, Document, ImageIndex, ImageManifest, Platform, VerifyingReader,
    parse_document, parse_index,
};
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveSource;
use crate::beside::OutputTemp;
use crate::fsutil::{
    exchange, fsync_dir, open_regular, open_regular_if_exists, read_file_capped, rename_noreplace,
    write_new_file,
};
use crate::{Error, Result, Store};

/// How many indexes may be nested inside each other before resolution gives up.
pub const MAX_INDEX_DEPTH: usize = 8;

pub(crate) const OCI_LAYOUT_FILE: &str = "oci-layout";
pub(crate) const INDEX_FILE: &str = "index.json";
/// Cap on the `oci-layout` file.
const MAX_OCI_LAYOUT_FILE: u64 = 64 << 10;
/// The annotation containerd (and `docker save` with the containerd store) puts on entries.
pub(crate) const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// Mode of blob files we write: content-addressed, never modified in place.
const BLOB_MODE: u32 = 0o444;
/// Mode of `oci-layout` and `index.json`.
const METADATA_MODE: u32 = 0o644;
/// The write buffer of a blob copied into a layout.
const COPY_BUFFER: usize = 1 << 20;

/// The content of the `oci-layout` file.
#[derive(Serialize, Deserialize)]
pub(crate) struct LayoutVersion {
    #[serde(rename = "imageLayoutVersion")]
    pub(crate) image_layout_version: String,
}

impl LayoutVersion {
    /// The canonical `oci-layout` file gantry writes.
    pub(crate) fn current_bytes() -> Vec<u8> {
        json::to_canonical_vec(&LayoutVersion {
            image_layout_version: OCI_LAYOUT_VERSION.to_owned(),
        })
    }
}

/// Which image of a layout to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The entry whose `org.opencontainers.image.ref.name` is this tag (or whose
    /// `io.containerd.image.name` ends with `:tag`).
    Tag(String),
    /// The manifest or index with this digest: an entry of `index.json`, or any manifest or
    /// index blob of the layout.
    Digest(Digest),
    /// The only entry of `index.json`; an error if there are several.
    Only,
}

/// The image manifest a selector and platform lead to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The descriptor that pointed to the manifest (from `index.json` or an index).
    pub manifest_descriptor: Descriptor,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// The manifest's bytes, verified against the descriptor.
    pub manifest_bytes: Vec<u8>,
}

/// Where the files of an OCI image layout come from: the only thing [`Layout`] needs from a
/// directory or an archive. Implementations do no verification; [`Layout`] verifies everything
/// it reads.
pub trait LayoutSource: fmt::Debug + Send + Sync {
    /// Reads the whole file `rel` (`oci-layout`, `index.json`) if it exists, refusing more than
    /// `limit` bytes. `Ok(None)` means it does not exist.
    fn read_small(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>>;

    /// Opens the blob `blobs/<alg>/<hex>` for streaming, unverified.
    /// [`Error::LayoutBlobNotFound`] if there is no such blob.
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>>;

    /// Whether the layout holds the blob (a shallow layout leaves out its base's layers).
    fn has_blob(&self, digest: &Digest) -> bool {
        self.open_blob(digest).is_ok()
    }

    /// The layout in messages: `layout DIR`, `oci-archive FILE`.
    fn describe(&self) -> String;

    /// A file of the layout in messages: its path, or the member and the archive.
    fn describe_file(&self, rel: &str) -> String;

    /// The directory or archive file.
    fn path(&self) -> &Path;

    /// A blob of the layout in messages.
    fn describe_blob(&self, digest: &Digest) -> String {
        format!("blob {digest} in {}", self.describe())
    }
}

/// An OCI image layout directory.
#[derive(Debug)]
struct DirSource {
    dir: PathBuf,
}

impl LayoutSource for DirSource {
    fn read_small(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(rel);
        match open_regular_if_exists(&path)? {
            Some(file) => read_file_capped(file, &path, limit).map(Some),
            None if fs::symlink_metadata(&path).is_ok() => Err(Error::NotALayout {
                path: self.dir.clone(),
                reason: format!("its {rel} is a symlink to a missing file"),
            }),
            None => Ok(None),
        }
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let path = self.dir.join(digest.blob_path());
        match open_regular_if_exists(&path)? {
            Some(file) => Ok(Box::new(file)),
            None => Err(Error::LayoutBlobNotFound {
                what: self.describe(),
                digest: digest.clone(),
                looked_for: path.display().to_string(),
            }),
        }
    }

    /// Whether there is anything at the blob's path: a fifo or a dangling symlink there is not
    /// an absent blob (a shallow layout's) but a bad one, which reading reports.
    fn has_blob(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.dir.join(digest.blob_path())).is_ok()
    }

    fn describe(&self) -> String {
        format!("layout {}", self.dir.display())
    }

    fn describe_file(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

/// An OCI image layout opened for reading: a directory ([`Layout::open`]) or an `oci-archive`
/// tar file ([`Layout::open_archive`]). Tags, digests, nested indexes, platforms and
/// verification work the same for both. Cloning is cheap (the source is shared).
#[derive(Debug, Clone)]
pub struct Layout {
    source: Arc<dyn LayoutSource>,
    index: ImageIndex,
}

impl Layout {
    /// Opens the layout at `dir`: checks `oci-layout` and reads `index.json`.
    pub fn open(dir: &Path) -> Result<Layout> {
        if !dir.is_dir() {
            return Err(Error::NotALayout {
                path: dir.to_owned(),
                reason: "it is not a directory".to_owned(),
            });
        }
        Layout::from_source(Arc::new(DirSource {
            dir: dir.to_owned(),
        }))
    }

    /// Opens an `oci-archive` (a plain tar of an OCI layout, as `skopeo copy …
    /// oci-archive:FILE:TAG` writes it): scans its headers once, validating every member name,
    /// then checks `oci-layout` and reads `index.json`. Blobs are read in place, by offset.
    pub fn open_archive(file: &Path) -> Result<Layout> {
        Layout::from_source(Arc::new(ArchiveSource::open(file)?))
    }

    /// Opens a layout over any source: checks `oci-layout` and reads `index.json`.
    pub fn from_source(source: Arc<dyn LayoutSource>) -> Result<Layout> {
        let not_a_layout = |reason: String| Error::NotALayout {
            path: source.path().to_owned(),
            reason,
        };
        let Some(bytes) = source.read_small(OCI_LAYOUT_FILE, MAX_OCI_LAYOUT_FILE)? else {
            return Err(not_a_layout(format!("it has no {OCI_LAYOUT_FILE} file")));
        };
        let what = source.describe_file(OCI_LAYOUT_FILE);
        let version: LayoutVersion = json::parse_strict(&bytes, &what, MAX_OCI_LAYOUT_FILE)?;
        if version.image_layout_version != OCI_LAYOUT_VERSION {
            return Err(not_a_layout(format!(
                "unsupported imageLayoutVersion {:?} (gantry reads {OCI_LAYOUT_VERSION})",
                version.image_layout_version
            )));
        }
        let Some(bytes) = source.read_small(INDEX_FILE, MAX_MANIFEST_SIZE)? else {
            return Err(not_a_layout(format!("it has no {INDEX_FILE} file")));
        };
        let index = parse_index(&bytes, None, &source.describe_file(INDEX_FILE))?;
        Ok(Layout { source, index })
    }

    /// The layout directory, or the archive file.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// The layout in messages: `layout DIR` or `oci-archive FILE`.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// The tags of the entries of `index.json`, in order, without repeats: each entry's
    /// `org.opencontainers.image.ref.name`, or for entries without one, the tag part of its
    /// `io.containerd.image.name`.
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        for entry in &self.index.manifests {
            if let Some(tag) = entry_tag(entry)
                && !tags.iter().any(|t| t == tag)
            {
                tags.push(tag.to_owned());
            }
        }
        tags
    }

    /// The path of a blob of a layout directory. For an archive this names no file on disk
    /// (`FILE/blobs/<alg>/<hex>`); read blobs with [`Layout::open_blob_verified`], which works
    /// for both.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.source.path().join(digest.blob_path())
    }

    /// Whether the layout holds the blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.source.has_blob(digest)
    }

    /// Opens a blob for streaming. The reader fails with an `InvalidData` error (wrapping a
    /// `gantry_oci::Error` that names the layout and digest) if the blob's size or digest
    /// differs from `desc` when its end is reached.
    pub fn open_blob_verified(
        &self,
        desc: &Descriptor,
    ) -> Result<VerifyingReader<Box<dyn Read + Send>>> {
        let what = self.source.describe_blob(&desc.digest);
        desc.validate(&what)?;
        let reader = self.source.open_blob(&desc.digest)?;
        Ok(VerifyingReader::new(
            reader,
            desc.digest.clone(),
            desc.size,
            what,
        ))
    }

    /// Reads a whole blob of at most `limit` bytes, verified against `desc`.
    pub fn read_blob_verified(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>> {
        if desc.size > limit {
            return Err(Error::BlobTooLarge {
                what: self.source.describe_blob(&desc.digest),
                limit,
            });
        }
        let mut reader = self.open_blob_verified(desc)?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| Error::copy(self.source.describe_blob(&desc.digest), e))?;
        Ok(bytes)
    }

    /// Finds the image manifest that `selector` names, descending through indexes to the entry
    /// for `platform`.
    pub fn resolve(&self, selector: &Selector, platform: &Platform) -> Result<Resolved> {
        let what = self.source.describe();
        let candidates = self.select(selector)?;
        let start = match candidates.as_slice() {
            [only] => only.clone(),
            several => choose_platform(several, platform, &what)?,
        };
        resolve_from(start, platform, &what, |desc| {
            self.read_blob_verified(desc, MAX_MANIFEST_SIZE)
        })
    }

    /// The entries `selector` names: one, or several sharing a tag (one per platform).
    fn select(&self, selector: &Selector) -> Result<Vec<Descriptor>> {
        let entries = &self.index.manifests;
        match selector {
            Selector::Tag(tag) => {
                let found: Vec<Descriptor> = entries
                    .iter()
                    .filter(|e| has_tag(e, tag))
                    .cloned()
                    .collect();
                if found.is_empty() {
                    return Err(Error::TagNotFound {
                        what: self.source.describe(),
                        tag: tag.clone(),
                        tags: self.tags(),
                    });
                }
                Ok(found)
            }
            Selector::Digest(digest) => match entries.iter().find(|e| e.digest == *digest) {
                Some(entry) => Ok(vec![entry.clone()]),
                None => Ok(vec![self.descriptor_of_blob(digest)?]),
            },
            Selector::Only => match entries.as_slice() {
                [only] => Ok(vec![only.clone()]),
                [] => Err(Error::EmptyLayout {
                    what: self.source.describe(),
                }),
                several => Err(Error::AmbiguousLayout {
                    what: self.source.describe(),
                    count: several.len(),
                    tags: self.tags(),
                }),
            },
        }
    }

    /// A descriptor for a manifest or index blob that `index.json` does not list (such as one
    /// platform's manifest inside an index): its media type comes from the document itself.
    fn descriptor_of_blob(&self, digest: &Digest) -> Result<Descriptor> {
        let what = self.source.describe_blob(digest);
        let mut bytes = Vec::new();
        self.source
            .open_blob(digest)?
            .take(MAX_MANIFEST_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::copy(what.clone(), e))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::BlobTooLarge {
                what,
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let actual = Digest::compute(digest.algorithm(), &bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            });
        }
        let document = parse_document(&bytes, None, &what)?;
        Ok(Descriptor::new(
            document.media_type(),
            digest.clone(),
            bytes.len() as u64,
        ))
    }
}

/// Follows `start` through indexes to an image manifest. `load` returns a blob's verified
/// bytes. Stops at cycles and at more than [`MAX_INDEX_DEPTH`] nested indexes.
fn resolve_from(
    start: Descriptor,
    platform: &Platform,
    what: &str,
    mut load: impl FnMut(&Descriptor) -> Result<Vec<u8>>,
) -> Result<Resolved> {
    let mut seen = HashSet::new();
    let mut current = start;
    for _ in 0..=MAX_INDEX_DEPTH {
        if !seen.insert(current.digest.clone()) {
            return Err(Error::IndexCycle {
                what: what.to_owned(),
                digest: current.digest,
            });
        }
        let bytes = load(&current)?;
        let doc_what = format!("{} in {what}", current.digest);
        match parse_document(&bytes, Some(&current.media_type), &doc_what)? {
            Document::Manifest(manifest) => {
                return Ok(Resolved {
                    manifest_descriptor: current,
                    manifest,
                    manifest_bytes: bytes,
                });
            }
            Document::Index(index) => {
                current = choose_platform(&index.manifests, platform, &doc_what)?;
            }
        }
    }
    Err(Error::IndexTooDeep {
        what: what.to_owned(),
        limit: MAX_INDEX_DEPTH,
    })
}

/// The first entry whose platform matches `platform`. An index with a single entry that has
/// no platform at all is a wrapper, and that entry is taken.
fn choose_platform(entries: &[Descriptor], platform: &Platform, what: &str) -> Result<Descriptor> {
    let matching = entries
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| platform.matches(p)));
    if let Some(entry) = matching {
        return Ok(entry.clone());
    }
    if let [only] = entries
        && only.platform.is_none()
    {
        return Ok(only.clone());
    }
    Err(Error::NoMatchingPlatform {
        what: what.to_owned(),
        wanted: platform.to_string(),
        available: entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(Platform::to_string))
            .collect(),
    })
}

/// The tag of an `index.json` entry (see [`Layout::tags`]).
fn entry_tag(entry: &Descriptor) -> Option<&str> {
    if let Some(name) = entry.annotations.get(REF_NAME) {
        return Some(name);
    }
    let full = entry.annotations.get(CONTAINERD_IMAGE_NAME)?;
    let (_, tag) = full.rsplit_once(':')?;
    (!tag.contains('/')).then_some(tag)
}

/// Whether an `index.json` entry carries `tag`.
fn has_tag(entry: &Descriptor, tag: &str) -> bool {
    let ref_name = entry.annotations.get(REF_NAME);
    let containerd = entry.annotations.get(CONTAINERD_IMAGE_NAME);
    ref_name.is_some_and(|n| n == tag)
        || containerd.is_some_and(|n| n.strip_suffix(tag).is_some_and(|r| r.ends_with(':')))
}

/// What every image output writer offers: [`LayoutWriter`] (a directory),
/// [`crate::OciArchiveWriter`] and [`crate::DockerArchiveWriter`] (single tar files). Blobs
/// added twice are written once; each writer also has these as inherent methods, plus its own
/// `commit`.
pub trait ImageWriter {
    /// Adds a blob from memory (sha256). Returns its digest.
    fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest>;
    /// Adds a blob of the store, verified as it is read (a writer may hard-link instead).
    fn add_blob_from_store(&mut self, store: &Store, digest: &Digest) -> Result<()>;
    /// Adds a blob read from `reader`, verified against `desc` (at most `size + 1` bytes are
    /// read).
    fn add_blob_from_reader(&mut self, reader: &mut dyn Read, desc: &Descriptor) -> Result<()>;
    /// Adds a blob of a layout (directory or archive), verified against `desc` once.
    fn add_blob_from_layout(&mut self, layout: &Layout, desc: &Descriptor) -> Result<()>;
    /// Adds an entry to `index.json`; the caller sets its annotations (such as the
    /// `org.opencontainers.image.ref.name` tag) and platform.
    fn add_manifest(&mut self, desc: Descriptor);
}

/// Writes an OCI image layout into a temp directory next to its destination, then moves it
/// into place with [`LayoutWriter::commit`]. Dropping it without committing removes the temp
/// directory and leaves the destination untouched.
#[derive(Debug)]
pub struct LayoutWriter {
    final_dir: PathBuf,
    temp: OutputTemp,
    blobs: HashSet<Digest>,
    manifests: Vec<Descriptor>,
}

impl LayoutWriter {
    /// Starts a layout that [`LayoutWriter::commit`] will put at `final_dir`. The temp
    /// directory is an [`OutputTemp`] (`.{basename}.gantry-tmp-<owner>-<random>` in the same
    /// parent, locked while it lives), so the final move is a rename on one filesystem and a
    /// temp left by a killed writer is recognised and removed later.
    pub fn new(final_dir: &Path) -> Result<LayoutWriter> {
        let final_dir =
            std::path::absolute(final_dir).map_err(|e| Error::io("resolve", final_dir, e))?;
        let temp = OutputTemp::dir(&final_dir, 0o700)?;
        fs::set_permissions(temp.path(), Permissions::from_mode(0o755))
            .map_err(|e| Error::io("chmod", temp.path(), e))?;
        let version_path = temp.path().join(OCI_LAYOUT_FILE);
        write_new_file(
            &version_path,
            &LayoutVersion::current_bytes(),
            METADATA_MODE,
        )?;
        Ok(LayoutWriter {
            final_dir,
            temp,
            blobs: HashSet::new(),
            manifests: Vec::new(),
        })
    }

    /// Adds a blob from memory (sha256). Returns its digest.
    pub fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        if !self.blobs.contains(&digest) {
            let path = self.prepare_blob_path(&digest)?;
            write_new_file(&path, bytes, BLOB_MODE)?;
            self.blobs.insert(digest.clone());
        }
        Ok(digest)
    }

    /// Adds a blob from the store: a hard link when possible, else a verified copy.
    pub fn add_blob_from_store(&mut self, store: &Store, digest: &Digest) -> Result<()> {
        if !self.blobs.contains(digest) {
            let path = self.prepare_blob_path(digest)?;
            store.link_or_copy_out(digest, &path)?;
            self.blobs.insert(digest.clone());
        }
        Ok(())
    }

    /// Adds a blob by copying the file at `path`, verified against `desc`.
    pub fn add_blob_from_file(&mut self, path: &Path, desc: &Descriptor) -> Result<()> {
        if self.blobs.contains(&desc.digest) {
            return Ok(());
        }
        let file = open_regular(path)?;
        // Name the digest too: a size mismatch error names only this source.
        let source = format!("blob {} at {}", desc.digest, path.display());
        self.copy_blob(file, desc, &source)
    }

    /// Adds a blob by copying `reader`, verified against `desc` (at most `size + 1` bytes are
    /// read).
    pub fn add_blob_from_reader(&mut self, reader: impl Read, desc: &Descriptor) -> Result<()> {
        if self.blobs.contains(&desc.digest) {
            return Ok(());
        }
        self.copy_blob(reader, desc, &format!("blob {}", desc.digest))
    }

    /// Adds a blob of a layout (directory or archive), verified against `desc` while it is
    /// copied. Nothing is read if the blob was already added.
    pub fn add_blob_from_layout(&mut self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        if self.blobs.contains(&desc.digest) {
            return Ok(());
        }
        let what = layout.source.describe_blob(&desc.digest);
        desc.validate(&what)?;
        let reader = layout.source.open_blob(&desc.digest)?;
        self.copy_blob(reader, desc, &what)
    }

    /// Adds an entry to `index.json`. The caller sets its annotations (such as the
    /// `org.opencontainers.image.ref.name` tag).
    pub fn add_manifest(&mut self, desc: Descriptor) {
        self.manifests.push(desc);
    }

    /// Writes `index.json`, fsyncs, and moves the layout into place. An existing destination
    /// is replaced only if it is an OCI layout (it has an `oci-layout` file) or an empty
    /// directory; the swap is atomic and the old tree is deleted afterwards.
    pub fn commit(self) -> Result<()> {
        let mut index = ImageIndex::new();
        index.manifests = self.manifests.clone();
        let index_path = self.temp.path().join(INDEX_FILE);
        write_new_file(&index_path, &json::to_canonical_vec(&index), METADATA_MODE)?;
        self.fsync_dirs()?;
        self.move_into_place()
    }

    /// Copies a verified stream into the layout; a failed copy leaves no file.
    fn copy_blob(&mut self, reader: impl Read, desc: &Descriptor, source: &str) -> Result<()> {
        desc.validate(source)?;
        let path = self.prepare_blob_path(&desc.digest)?;
        let mut verified = VerifyingReader::new(reader, desc.digest.clone(), desc.size, source);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(BLOB_MODE)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        // io::copy reads straight into a BufWriter's buffer: 1 MiB writes rather than 8 KiB.
        let copied = {
            let mut buffered = io::BufWriter::with_capacity(COPY_BUFFER, &mut out);
            io::copy(&mut verified, &mut buffered).and_then(|_| buffered.flush())
        }
        .and_then(|_| out.sync_all());
        if let Err(e) = copied {
            let _ = fs::remove_file(&path);
            return Err(Error::copy(format!("{source} to {}", path.display()), e));
        }
        self.blobs.insert(desc.digest.clone());
        Ok(())
    }

    /// Creates `blobs/<alg>` in the temp directory if needed and returns the blob's path.
    fn prepare_blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        let path = self.temp.path().join(digest.blob_path());
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        Ok(path)
    }

    /// Fsyncs the directories of the temp layout (files were fsynced as they were written).
    fn fsync_dirs(&self) -> Result<()> {
        let blobs = self.temp.path().join("blobs");
        if blobs.is_dir() {
            for entry in fs::read_dir(&blobs).map_err(|e| Error::io("list", &blobs, e))? {
                let entry = entry.map_err(|e| Error::io("list", &blobs, e))?;
                fsync_dir(&entry.path())?;
            }
            fsync_dir(&blobs)?;
        }
        fsync_dir(self.temp.path())
    }

    /// Moves the finished temp directory to the destination (see [`LayoutWriter::commit`]).
    ///
    /// Other writers of the same output may create, replace or remove it at any moment, so
    /// nothing is decided from a look beforehand: the move is tried without replacing, and a
    /// destination that exists then (`EEXIST`, also when it appeared a moment ago) is swapped
    /// with atomically, as an earlier output is. One that vanishes before the swap is moved to
    /// again.
    fn move_into_place(self) -> Result<()> {
        let LayoutWriter {
            final_dir, temp, ..
        } = self;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match rename_noreplace(temp.path(), &final_dir) {
                Ok(()) => {
                    let _ = temp.keep();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("move the new layout to", &final_dir, e)),
            }
            let meta = match fs::symlink_metadata(&final_dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 10 => continue,
                Err(e) => return Err(Error::io("stat", &final_dir, e)),
                Ok(meta) => meta,
            };
            if !(meta.is_dir() && may_replace(&final_dir)?) {
                return Err(Error::RefuseToReplace { path: final_dir });
            }
            match swap(temp.path(), &final_dir) {
                Ok(()) => {
                    // The temp path now holds the old layout.
                    let old = temp.keep();
                    fs::remove_dir_all(&old)
                        .map_err(|e| Error::io("remove the replaced layout at", &old, e))?;
                    break;
                }
                Err(Error::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempts < 10 =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        match final_dir.parent() {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        }
    }
}

impl ImageWriter for LayoutWriter {
    fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        LayoutWriter::add_blob_bytes(self, bytes)
    }
    fn add_blob_from_store(&mut self, store: &Store, digest: &Digest) -> Result<()> {
        LayoutWriter::add_blob_from_store(self, store, digest)
    }
    fn add_blob_from_reader(&mut self, reader: &mut dyn Read, desc: &Descriptor) -> Result<()> {
        LayoutWriter::add_blob_from_reader(self, reader, desc)
    }
    fn add_blob_from_layout(&mut self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        LayoutWriter::add_blob_from_layout(self, layout, desc)
    }
    fn add_manifest(&mut self, desc: Descriptor) {
        LayoutWriter::add_manifest(self, desc);
    }
}

/// Whether an existing directory may be replaced: it is an OCI layout or empty.
fn may_replace(dir: &Path) -> Result<bool> {
    let is_layout = fs::symlink_metadata(dir.join(OCI_LAYOUT_FILE)).is_ok_and(|m| m.is_file());
    if is_layout {
        return Ok(true);
    }
    let mut entries = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    Ok(entries.next().is_none())
}

/// Atomically exchanges the directories `new` and `old`. Where the filesystem cannot exchange,
/// falls back to three renames (`old` aside, `new` into place, the aside copy to `new`'s path):
/// the same end state, but for a moment nothing is at `old`.
fn swap(new: &Path, old: &Path) -> Result<()> {
    match exchange(new, old) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
        Err(e) => return Err(Error::io("swap the new layout with", old, e)),
    }
    let mut aside = new.as_os_str().to_owned();
    aside.push("-old");
    let aside = PathBuf::from(aside);
    fs::rename(old, &aside).map_err(|e| Error::io("move aside", old, e))?;
    if let Err(e) = fs::rename(new, old) {
        let _ = fs::rename(&aside, old);
        return Err(Error::io("move the new layout to", old, e));
    }
    fs::rename(&aside, new).map_err(|e| Error::io("move", &aside, e))
}

#[cfg(test)]
mod tests;
