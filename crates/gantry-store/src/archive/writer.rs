//! Writing image archives: the part shared by the `oci-archive` and `docker-archive` writers,
//! and [`OciArchiveWriter`].
//!
//! An archive is written entry by entry into a temp file next to its destination:
//! `oci-layout`, `blobs/`, `blobs/sha256/`, the blobs in the order they were added (each once),
//! any extra files of the format, and `index.json` last, then the end-of-archive marker. Every
//! header is ustar with uid/gid 0, empty user and group names, mtime 0, mode 0644 for files
//! and 0755 for directories, so two writers given the same blobs and manifests in the same
//! order produce the same bytes. Blobs stream from their source straight into the file, each
//! read once and verified on the way; a blob that fails verification is cut off again and
//! leaves no trace. `commit` fsyncs the file and renames it into place.

use std::collections::{HashMap, HashSet};
use std::fs::{self, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gantry_oci::{Algorithm, Descriptor, Digest, ImageIndex, VerifyingReader, json};

use super::blob_member;
use super::tarball::{BLOCK, TarBuilder};
use crate::beside::OutputTemp;
use crate::layout::{INDEX_FILE, ImageWriter, Layout, LayoutVersion, OCI_LAYOUT_FILE};
use crate::{Error, Result, Store};

/// Where a blob's data is in the archive being written.
#[derive(Debug, Clone, Copy)]
struct Placed {
    offset: u64,
    size: u64,
}

/// The state shared by the archive writers: the temp file, the blobs written so far and the
/// `index.json` entries.
#[derive(Debug)]
pub(crate) struct ArchiveCore {
    dest: PathBuf,
    label: &'static str,
    temp: OutputTemp,
    tar: TarBuilder,
    blobs: HashMap<Digest, Placed>,
    algorithms: HashSet<Algorithm>,
    manifests: Vec<Descriptor>,
}

impl ArchiveCore {
    /// Starts an archive that [`ArchiveCore::commit`] will put at `dest`; `label` names the
    /// format in messages (`oci-archive`). The temp file is an [`OutputTemp`]
    /// (`.{basename}.gantry-tmp-<owner>-<random>` in the same directory, locked while it
    /// lives), so the final rename stays on one filesystem and a killed writer's temp is
    /// recognised and removed later.
    pub(crate) fn new(dest: &Path, label: &'static str) -> Result<ArchiveCore> {
        let dest = std::path::absolute(dest).map_err(|e| Error::io("resolve", dest, e))?;
        let (temp, file) = OutputTemp::file(&dest, 0o600)?;
        let mut core = ArchiveCore {
            dest,
            label,
            temp,
            tar: TarBuilder::new(file),
            blobs: HashMap::new(),
            algorithms: HashSet::new(),
            manifests: Vec::new(),
        };
        let start = core
            .tar
            .file_bytes(OCI_LAYOUT_FILE, &LayoutVersion::current_bytes())
            .and_then(|_| core.tar.dir("blobs/"));
        start.map_err(|e| core.write_error(e))?;
        core.ensure_algorithm_dir(Algorithm::Sha256)?;
        Ok(core)
    }

    /// `oci-archive /path/to/file.tar`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.label, self.dest.display())
    }

    /// Whether the blob was added.
    pub(crate) fn has(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }

    /// See [`ImageWriter::add_blob_bytes`].
    pub(crate) fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        if !self.has(&digest) {
            let offset = self
                .tar
                .file_bytes(&blob_member(&digest), bytes)
                .map_err(|e| self.write_error(e))?;
            let size = bytes.len() as u64;
            self.blobs.insert(digest.clone(), Placed { offset, size });
        }
        Ok(digest)
    }

    /// See [`ImageWriter::add_blob_from_store`]: the stored file is read once and verified
    /// against its name while it is copied.
    pub(crate) fn add_blob_from_store(&mut self, store: &Store, digest: &Digest) -> Result<()> {
        if self.has(digest) {
            return Ok(());
        }
        let path = store.blob_path(digest);
        let file = store.open_blob(digest)?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let what = format!("blob {digest} at {}", path.display());
        let reader = VerifyingReader::new(file, digest.clone(), size, what.clone());
        self.add_stream(digest, size, reader, &what)
    }

    /// See [`ImageWriter::add_blob_from_reader`].
    pub(crate) fn add_blob_from_reader(
        &mut self,
        reader: impl Read,
        desc: &Descriptor,
    ) -> Result<()> {
        if self.has(&desc.digest) {
            return Ok(());
        }
        let what = format!("blob {}", desc.digest);
        desc.validate(&what)?;
        let verified = VerifyingReader::new(reader, desc.digest.clone(), desc.size, what.clone());
        self.add_stream(&desc.digest, desc.size, verified, &what)
    }

    /// See [`ImageWriter::add_blob_from_layout`].
    pub(crate) fn add_blob_from_layout(
        &mut self,
        layout: &Layout,
        desc: &Descriptor,
    ) -> Result<()> {
        if self.has(&desc.digest) {
            return Ok(());
        }
        let verified = layout.open_blob_verified(desc)?;
        let what = format!("blob {} of {}", desc.digest, layout.describe());
        self.add_stream(&desc.digest, desc.size, verified, &what)
    }

    /// See [`ImageWriter::add_manifest`].
    pub(crate) fn add_manifest(&mut self, desc: Descriptor) {
        self.manifests.push(desc);
    }

    /// The `index.json` entries so far.
    pub(crate) fn manifests(&self) -> &[Descriptor] {
        &self.manifests
    }

    /// Reads back a blob written earlier, if it is at most `limit` bytes (`Ok(None)` if it
    /// was not added).
    pub(crate) fn read_back(&self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(placed) = self.blobs.get(digest) else {
            return Ok(None);
        };
        if placed.size > limit {
            return Err(Error::BlobTooLarge {
                what: format!("blob {digest} of {}", self.describe()),
                limit,
            });
        }
        let mut bytes = vec![0; usize::try_from(placed.size).unwrap_or(usize::MAX)];
        self.tar
            .file()
            .read_exact_at(&mut bytes, placed.offset)
            .map_err(|e| Error::io("read", self.temp.path(), e))?;
        Ok(Some(bytes))
    }

    /// Writes the `extra` files and `index.json`, ends the archive, fsyncs it and renames it
    /// to the destination. An existing destination is replaced only if it is a regular file
    /// that is empty or a tar archive.
    pub(crate) fn commit(mut self, extra: &[(&str, Vec<u8>)]) -> Result<()> {
        let mut index = ImageIndex::new();
        index.manifests = std::mem::take(&mut self.manifests);
        let index_bytes = json::to_canonical_vec(&index);
        let mut written = Ok(());
        for (name, bytes) in extra.iter().map(|(n, b)| (*n, b.as_slice())) {
            written = written.and_then(|()| self.tar.file_bytes(name, bytes).map(drop));
        }
        written
            .and_then(|()| self.tar.file_bytes(INDEX_FILE, &index_bytes).map(drop))
            .and_then(|()| self.tar.finish())
            .and_then(|()| {
                let file = self.tar.file();
                file.set_permissions(Permissions::from_mode(super::tarball::FILE_MODE))?;
                file.sync_all()
            })
            .map_err(|e| self.write_error(e))?;
        check_replaceable(&self.dest)?;
        let ArchiveCore { dest, temp, .. } = self;
        temp.persist(&dest)
    }

    /// Writes `blobs/<alg>/` the first time a blob of that algorithm is added.
    fn ensure_algorithm_dir(&mut self, algorithm: Algorithm) -> Result<()> {
        if self.algorithms.insert(algorithm) {
            let dir = format!("blobs/{}/", algorithm.name());
            if let Err(e) = self.tar.dir(&dir) {
                self.algorithms.remove(&algorithm);
                return Err(self.write_error(e));
            }
        }
        Ok(())
    }

    /// Streams a blob of `size` bytes into the archive. `reader` must verify the content (it
    /// is a [`VerifyingReader`]); on any failure the archive is cut back to where it was.
    fn add_stream(
        &mut self,
        digest: &Digest,
        size: u64,
        mut reader: impl Read,
        what: &str,
    ) -> Result<()> {
        let mark = self.tar.mark();
        let new_algorithm = !self.algorithms.contains(&digest.algorithm());
        if let Err(e) = self.ensure_algorithm_dir(digest.algorithm()) {
            self.tar.rewind(mark).map_err(|e| self.write_error(e))?;
            return Err(e);
        }
        match self
            .tar
            .file_stream(&blob_member(digest), size, &mut reader)
        {
            Ok(offset) => {
                self.blobs.insert(digest.clone(), Placed { offset, size });
                Ok(())
            }
            Err(e) => {
                if new_algorithm {
                    self.algorithms.remove(&digest.algorithm());
                }
                self.tar.rewind(mark).map_err(|e| self.write_error(e))?;
                Err(Error::copy(format!("{what} into {}", self.describe()), e))
            }
        }
    }

    /// An error writing the temp file.
    fn write_error(&self, e: io::Error) -> Error {
        Error::io("write", self.temp.path(), e)
    }
}

/// Checks that an output file may be replaced: it does not exist, or it is a regular file
/// (not a symlink) that is empty or starts with a tar header.
fn check_replaceable(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path, e)),
        Ok(meta) => meta,
    };
    let refuse = |reason| {
        Err(Error::RefuseToReplaceFile {
            path: path.to_owned(),
            reason,
        })
    };
    if meta.is_dir() {
        return refuse("it is a directory");
    }
    if !meta.is_file() {
        return refuse("it is not a regular file");
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut head = [0u8; BLOCK as usize];
    let file = crate::fsutil::open_regular(path)?;
    let is_tar = meta.len() >= BLOCK
        && file.read_exact_at(&mut head, 0).is_ok()
        && head[257..262] == *b"ustar";
    if is_tar {
        Ok(())
    } else {
        refuse("it is not a tar archive")
    }
}

/// Writes an `oci-archive`: a single deterministic tar of an OCI image layout (see the module
/// docs for the entry order and headers), built in a temp file next to the destination and
/// renamed into place by [`OciArchiveWriter::commit`]. Dropping it without committing removes
/// the temp file and leaves the destination untouched.
#[derive(Debug)]
pub struct OciArchiveWriter {
    core: ArchiveCore,
}

impl OciArchiveWriter {
    /// Starts an archive that [`OciArchiveWriter::commit`] will put at `dest`.
    pub fn new(dest: &Path) -> Result<OciArchiveWriter> {
        Ok(OciArchiveWriter {
            core: ArchiveCore::new(dest, "oci-archive")?,
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

    /// Adds a blob by copying `reader`, verified against `desc` (at most `size + 1` bytes are
    /// read). A blob that fails verification is not added.
    pub fn add_blob_from_reader(&mut self, reader: impl Read, desc: &Descriptor) -> Result<()> {
        self.core.add_blob_from_reader(reader, desc)
    }

    /// Adds a blob of a layout (directory or archive), verified against `desc`.
    pub fn add_blob_from_layout(&mut self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        self.core.add_blob_from_layout(layout, desc)
    }

    /// Adds an entry to `index.json`. The caller sets its annotations (such as the
    /// `org.opencontainers.image.ref.name` tag).
    pub fn add_manifest(&mut self, desc: Descriptor) {
        self.core.add_manifest(desc);
    }

    /// Writes `index.json` and the end of the archive, fsyncs, and renames the file to the
    /// destination. An existing destination is replaced only if it is a regular file that is
    /// empty or a tar archive.
    pub fn commit(self) -> Result<()> {
        self.core.commit(&[])
    }
}

impl ImageWriter for OciArchiveWriter {
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
