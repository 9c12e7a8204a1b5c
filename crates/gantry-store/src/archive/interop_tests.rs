//! The archives checked against the real peers: skopeo's `oci-archive:` and `docker-archive:`
//! transports and `podman load`. A missing tool fails the test (`gantry_test::require`).

use std::path::Path;
use std::process::{Command, Output};

use gantry_oci::annotations::REF_NAME;
use gantry_oci::media_types as mt;
use gantry_oci::{Descriptor, Digest, Platform, Reference, json};

use super::*;
use crate::test_support::{gzip, tar_layer};
use crate::{ImageWriter, Layout, LayoutWriter, Selector};

/// A small real image: an uncompressed and a gzip layer (valid tars), a config and a manifest.
struct Image {
    layers: Vec<(Vec<u8>, Descriptor)>,
    diff_ids: Vec<Digest>,
    config: (Vec<u8>, Descriptor),
    manifest: (Vec<u8>, Descriptor),
}

fn image() -> Image {
    let plain = tar_layer(&[("etc/gantry-release", b"gantry\n")]);
    let unzipped = tar_layer(&[("usr/share/doc/hello.txt", b"hello from a gzip layer\n")]);
    let zipped = gzip(&unzipped);
    let diff_ids = vec![Digest::sha256(&plain), Digest::sha256(&unzipped)];
    let config = json::to_canonical_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "gantry test"}, {"created_by": "gantry test"}],
    }));
    let config_desc = Descriptor::of_bytes(mt::OCI_CONFIG, &config);
    let layers = vec![
        (
            plain.clone(),
            Descriptor::of_bytes(mt::OCI_LAYER_TAR, &plain),
        ),
        (
            zipped.clone(),
            Descriptor::of_bytes(mt::OCI_LAYER_GZIP, &zipped),
        ),
    ];
    let manifest = json::to_canonical_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": config_desc,
        "layers": layers.iter().map(|(_, d)| d).collect::<Vec<_>>(),
    }));
    let manifest_desc = Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest);
    Image {
        layers,
        diff_ids,
        config: (config, config_desc),
        manifest: (manifest, manifest_desc),
    }
}

impl Image {
    /// Adds every blob to a writer (layers, config, manifest).
    fn add_blobs(&self, w: &mut dyn ImageWriter) {
        for (bytes, _) in &self.layers {
            w.add_blob_bytes(bytes).unwrap();
        }
        w.add_blob_bytes(&self.config.0).unwrap();
        w.add_blob_bytes(&self.manifest.0).unwrap();
    }

    fn tagged(&self, tag: &str) -> Descriptor {
        let mut desc = self.manifest.1.clone();
        desc.annotations.insert(REF_NAME.to_owned(), tag.to_owned());
        desc
    }

    /// Writes it as an OCI layout directory tagged `v1`.
    fn write_layout(&self, dir: &Path) {
        let mut w = LayoutWriter::new(dir).unwrap();
        self.add_blobs(&mut w);
        w.add_manifest(self.tagged("v1"));
        w.commit().unwrap();
    }
}

/// Runs a command, failing the test with its output if it fails.
fn run(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Keeps skopeo from compressing uncompressed layers on their way to an OCI destination.
const KEEP_LAYERS: &str = "--dest-oci-accept-uncompressed-layers";

fn skopeo(args: &[&str]) -> String {
    run(gantry_test::tool("skopeo")
        .args(["--insecure-policy"])
        .args(args))
}

#[test]
fn skopeo_reads_our_oci_archive_and_agrees_on_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let layout_dir = dir.path().join("layout");
    img.write_layout(&layout_dir);
    // Through add_blob_from_layout, as gantry-image will copy base blobs.
    let source = Layout::open(&layout_dir).unwrap();
    let archive = dir.path().join("image.tar");
    let mut w = OciArchiveWriter::new(&archive).unwrap();
    for desc in img
        .layers
        .iter()
        .map(|(_, d)| d)
        .chain([&img.config.1, &img.manifest.1])
    {
        w.add_blob_from_layout(&source, desc).unwrap();
    }
    w.add_manifest(img.tagged("v1"));
    w.commit().unwrap();
    let reference = format!("oci-archive:{}:v1", archive.display());

    let inspect = gantry_test::json(&skopeo(&["inspect", &reference]));
    assert_eq!(inspect["Digest"], img.manifest.1.digest.to_string());
    let layers: Vec<String> = img
        .layers
        .iter()
        .map(|(_, d)| d.digest.to_string())
        .collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    let raw = skopeo(&["inspect", "--raw", &reference]);
    assert_eq!(raw.as_bytes(), img.manifest.0);

    // Without the flag, skopeo would gzip the uncompressed layer and so change the manifest.
    let copy = dir.path().join("copy");
    skopeo(&[
        "copy",
        KEEP_LAYERS,
        &reference,
        &format!("oci:{}:v1", copy.display()),
    ]);
    let copied = Layout::open(&copy)
        .unwrap()
        .resolve(&Selector::Tag("v1".to_owned()), &Platform::host())
        .unwrap();
    assert_eq!(copied.manifest_descriptor.digest, img.manifest.1.digest);
    let ours = Layout::open_archive(&archive)
        .unwrap()
        .resolve(&Selector::Tag("v1".to_owned()), &Platform::host())
        .unwrap();
    assert_eq!(
        ours.manifest_descriptor.digest,
        copied.manifest_descriptor.digest
    );
}

#[test]
fn we_read_skopeos_oci_archive() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let layout_dir = dir.path().join("layout");
    img.write_layout(&layout_dir);
    let archive = dir.path().join("skopeo.tar");
    skopeo(&[
        "copy",
        KEEP_LAYERS,
        &format!("oci:{}:v1", layout_dir.display()),
        &format!("oci-archive:{}:v1", archive.display()),
    ]);
    let layout = Layout::open_archive(&archive).unwrap();
    assert_eq!(layout.tags(), vec!["v1"]);
    for selector in [
        Selector::Tag("v1".to_owned()),
        Selector::Digest(img.manifest.1.digest.clone()),
        Selector::Only,
    ] {
        let resolved = layout.resolve(&selector, &Platform::host()).unwrap();
        assert_eq!(resolved.manifest_bytes, img.manifest.0);
        let config = layout
            .read_blob_verified(&resolved.manifest.config, 1 << 20)
            .unwrap();
        assert_eq!(config, img.config.0);
        for ((bytes, _), desc) in img.layers.iter().zip(&resolved.manifest.layers) {
            assert_eq!(&layout.read_blob_verified(desc, 1 << 20).unwrap(), bytes);
        }
    }
}

#[test]
fn we_read_skopeos_docker_archive() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let layout_dir = dir.path().join("layout");
    img.write_layout(&layout_dir);
    let archive = dir.path().join("docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", layout_dir.display()),
        &format!(
            "docker-archive:{}:example.com/gantry/test:v1",
            archive.display()
        ),
    ]);
    let docker = DockerArchive::open(&archive).unwrap();
    assert_eq!(docker.repo_tags(), vec!["example.com/gantry/test:v1"]);
    for reference in [None, Some("example.com/gantry/test:v1")] {
        let image = docker.image(reference).unwrap();
        assert_eq!(image.config.digest, img.config.1.digest);
        assert_eq!(image.config_bytes, img.config.0);
        let diff_ids: Vec<&Digest> = image.layers.iter().map(|l| &l.diff_id).collect();
        assert_eq!(diff_ids, img.diff_ids.iter().collect::<Vec<_>>());
        for layer in &image.layers {
            // skopeo stores docker-archive layers uncompressed.
            assert_eq!(layer.descriptor.media_type, mt::OCI_LAYER_TAR);
            assert_eq!(layer.descriptor.digest, layer.diff_id);
            let bytes = docker
                .read_blob_verified(&layer.descriptor, 1 << 20)
                .unwrap();
            assert_eq!(Digest::sha256(&bytes), layer.diff_id);
        }
    }
}

/// `podman` with its own storage in `root`, so that the test touches nothing of the host.
fn podman(root: &Path) -> Command {
    let mut cmd = Command::new(gantry_test::require("podman"));
    cmd.arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    cmd
}

#[test]
fn podman_loads_our_docker_archive() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let archive = dir.path().join("docker.tar");
    let mut w = DockerArchiveWriter::new(&archive).unwrap();
    img.add_blobs(&mut w);
    let reference = Reference::parse("example.com/gantry/test:v1").unwrap();
    let mut desc = img.manifest.1.clone();
    desc.platform = Some(Platform::parse("linux/amd64").unwrap());
    w.add_image(desc, Some(&reference)).unwrap();
    w.commit().unwrap();

    // podman load: the gzip layer is decompressed, the config kept, the name taken.
    let root = dir.path().join("podman");
    let loaded = run(podman(&root).arg("load").arg("-i").arg(&archive));
    assert!(loaded.contains("example.com/gantry/test:v1"), "{loaded}");
    let id = run(podman(&root).args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "example.com/gantry/test:v1",
    ]));
    assert_eq!(id.trim(), img.config.1.digest.hex());
    let layers = run(podman(&root).args([
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        "example.com/gantry/test:v1",
    ]));
    let diff_ids: Vec<String> = img.diff_ids.iter().map(Digest::to_string).collect();
    assert_eq!(gantry_test::json(&layers), serde_json::json!(diff_ids));

    // skopeo's docker-archive transport reads it through manifest.json alone.
    let docker_ref = format!("docker-archive:{}", archive.display());
    let raw = gantry_test::json(&skopeo(&["inspect", "--raw", &docker_ref]));
    assert_eq!(raw["config"]["digest"], img.config.1.digest.to_string());
    // Converting to OCI makes skopeo rewrite the config, but not the layers' content.
    let copy = dir.path().join("copy");
    skopeo(&["copy", &docker_ref, &format!("oci:{}:x", copy.display())]);
    let copied = Layout::open(&copy).unwrap();
    let resolved = copied.resolve(&Selector::Only, &Platform::host()).unwrap();
    let config = copied
        .read_blob_verified(&resolved.manifest.config, 1 << 20)
        .unwrap();
    let config = gantry_oci::ImageConfig::parse(&config, "copied config").unwrap();
    assert_eq!(config.rootfs.diff_ids, img.diff_ids);
    // And our own reader.
    let ours = DockerArchive::open(&archive).unwrap().image(None).unwrap();
    assert_eq!(ours.config.digest, img.config.1.digest);
    let digests: Vec<&Digest> = ours.layers.iter().map(|l| &l.descriptor.digest).collect();
    let expected: Vec<&Digest> = img.layers.iter().map(|(_, d)| &d.digest).collect();
    assert_eq!(digests, expected);
}
