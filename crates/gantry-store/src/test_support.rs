//! Helpers shared by the unit tests.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use gantry_oci::{Descriptor, Digest, ImageManifest, json, media_types as mt};
use tempfile::TempDir;
use walkdir::WalkDir;

use crate::Store;

/// A store in a fresh temp dir (the temp dir itself is the root).
pub(crate) fn open_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Every file under `blobs/`.
pub(crate) fn blob_files(store: &Store) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = WalkDir::new(store.root().join("blobs"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

/// The digests of an image stored by [`put_image`].
pub(crate) struct StoredImage {
    pub(crate) manifest: Descriptor,
    pub(crate) config: Digest,
    pub(crate) layers: Vec<Digest>,
}

impl StoredImage {
    /// Manifest, config and layers.
    pub(crate) fn all(&self) -> Vec<Digest> {
        let mut all = vec![self.manifest.digest.clone(), self.config.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }
}

/// Stores an image: one config (unique per layer set), the layers, and the manifest.
pub(crate) fn put_image(store: &Store, layers: &[&[u8]]) -> StoredImage {
    let manifest = manifest_for(layers);
    for layer in layers {
        store.put_bytes(layer).unwrap();
    }
    store.put_bytes(&config_for(layers)).unwrap();
    let bytes = json::to_canonical_vec(&manifest);
    store.put_bytes(&bytes).unwrap();
    StoredImage {
        manifest: Descriptor::of_bytes(mt::OCI_MANIFEST, &bytes),
        config: manifest.config.digest.clone(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
    }
}

/// A config blob that differs for each set of layers.
pub(crate) fn config_for(layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| Digest::sha256(l).to_string())
        .collect();
    json::to_canonical_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
}

/// The manifest of an image made of `layers` and [`config_for`] them.
pub(crate) fn manifest_for(layers: &[&[u8]]) -> ImageManifest {
    ImageManifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.to_owned()),
        artifact_type: None,
        config: Descriptor::of_bytes(mt::OCI_CONFIG, &config_for(layers)),
        layers: layers
            .iter()
            .map(|l| Descriptor::of_bytes(mt::OCI_LAYER_TAR, l))
            .collect(),
        subject: None,
        annotations: Default::default(),
    }
}

/// Flips the first byte of a stored blob (making it writable first). Returns the new digest.
pub(crate) fn corrupt_blob(store: &Store, digest: &Digest) -> Digest {
    let path = store.blob_path(digest);
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o444)).unwrap();
    Digest::sha256(&bytes)
}

/// A tar stream of regular files (ustar, root-owned, mtime 0), as a layer.
pub(crate) fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    use crate::archive::test_tar::{end_marker, file_entry};
    let mut out = Vec::new();
    for (name, content) in files {
        out.extend_from_slice(&file_entry(name, content));
    }
    out.extend_from_slice(&end_marker());
    out
}

/// `bytes` gzip-compressed.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Makes a FIFO (named pipe) at `path`.
pub(crate) fn mkfifo(path: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// Runs `f` on another thread and returns its result, failing the test if it takes longer
/// than `secs` seconds (a call that would block forever must not hang the test suite).
pub(crate) fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the call blocked (or panicked) instead of returning")
}
