//! Fuzz targets for gantry's readers of hostile input. Each target takes the fuzzer's bytes and
//! must never panic, hang or touch anything outside its temp directory; some also check a
//! property (a round trip, two readers agreeing). `src/bin/*.rs` runs them under AFL++
//! (`cargo afl`); `cargo run --release --bin replay -- TARGET FILE...` runs one on files
//! without AFL (to reproduce a crash). See FUZZING.md.

#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gantry_layer::tarread::{self, TarImport};
use gantry_oci::{Compression, Platform};

pub mod seeds;

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("tar_layer", tar_layer),
    ("tar_archive", tar_archive),
    ("tar_unpack", tar_unpack),
    ("oci_json", oci_json),
    ("reference", reference),
    ("www_authenticate", www_authenticate),
    ("docker_manifest", docker_manifest),
];

/// The directory for scratch files: `$GANTRY_FUZZ_SCRATCH`, else `gantry-fuzz-<program>` in
/// the system temp dir. Emptied when a process starts (AFL starts many in a row and kills them,
/// so nothing removes it at exit); one fuzzer per program at a time.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("GANTRY_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let program = std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "unknown".to_owned());
                std::env::temp_dir().join(format!("gantry-fuzz-{program}"))
            });
        force_remove(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

fn write_scratch(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    let mut f = std::fs::File::create(&path).expect("scratch file");
    f.write_all(data).expect("write scratch file");
    path
}

/// gantry-layer's tar reader (layer import and `gantry ls`): validation with the compression
/// sniffed, then listing. Both walk the same stream, so they must agree.
pub fn tar_layer(data: &[u8]) {
    let imported = tarread::import_tar_from(data, "fuzz", TarImport::Keep, 1, io::sink());
    let compression = Compression::sniff(data);
    let mut listed = 0u64;
    let stats = tarread::list_layer(BufReader::new(data), compression, "fuzz", |_| listed += 1);
    if let Ok((_, imported)) = &imported {
        let stats = stats.unwrap_or_else(|e| panic!("imported, but listing fails: {e}"));
        assert_eq!(stats.entries, imported.entries);
        assert_eq!(stats.size, imported.uncompressed_size);
        assert_eq!(listed, stats.entries);
    }
}

/// gantry-store's archive scanner: the bytes as an oci-archive and as a docker-archive.
pub fn tar_archive(data: &[u8]) {
    let path = write_scratch("archive.tar", data);
    if let Ok(layout) = gantry_store::Layout::open_archive(&path) {
        let _ = layout.tags();
        let platform = Platform::parse("linux/amd64").expect("platform");
        if let Ok(r) = layout.resolve(&gantry_store::Selector::Only, &platform) {
            let _ = layout.read_blob_verified(&r.manifest_descriptor, 1 << 20);
        }
    }
    if let Ok(archive) = gantry_store::DockerArchive::open(&path) {
        let _ = archive.repo_tags();
        let _ = archive.image(None);
        let _ = archive.image(Some("@0"));
    }
}

/// gantry-unpack into a fresh directory, with a sentinel beside it that must be untouched.
/// Devices become placeholders (no `mknod` on the host); owners and xattrs are restored.
pub fn tar_unpack(data: &[u8]) {
    let tmp = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in(scratch())
        .expect("temp dir");
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&root).expect("root");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("sentinel"), b"keep").expect("sentinel");
    let opts = gantry_unpack::UnpackOptions {
        devices: gantry_unpack::DevicePolicy::Placeholder,
        max_size: 64 << 20,
        max_ratio: 1000,
        ratio_floor: 1 << 20,
        max_entries: 10_000,
        max_depth: 64,
        // Owners and xattrs as root would set them (the fuzzer runs as root).
        preserve_ownership: gantry_unpack::UnpackOptions::default().preserve_ownership,
        xattrs: true,
    };
    let _ = gantry_unpack::unpack_layer(&root, "fuzz", data, &opts);
    let mut names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "root"],
        "something was created beside the root"
    );
    let inside: Vec<_> = std::fs::read_dir(&outside)
        .expect("list outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(inside, ["sentinel"], "the sentinel directory changed");
    assert_eq!(
        std::fs::read(outside.join("sentinel")).expect("sentinel"),
        b"keep"
    );
    let meta = std::fs::symlink_metadata(&root).expect("root");
    assert!(meta.is_dir(), "the root is no longer a directory");
    force_remove(&tmp.keep());
}

/// Removes a tree, giving its directories `u+rwx` first if that is what it takes (an entry may
/// have left one without permissions; root does not need it).
fn force_remove(dir: &Path) {
    fn open_up(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::symlink_metadata(p)
            && m.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    if std::fs::remove_dir_all(dir).is_err() {
        open_up(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// gantry-oci's strict JSON: manifests, indexes and configs. The first byte picks the media
/// type declared by the "parent descriptor".
pub fn oci_json(data: &[u8]) {
    use gantry_oci::media_types as mt;
    let Some((&first, doc)) = data.split_first() else {
        return;
    };
    let declared = match first % 6 {
        0 => None,
        1 => Some(mt::OCI_MANIFEST),
        2 => Some(mt::OCI_INDEX),
        3 => Some(mt::DOCKER_MANIFEST),
        4 => Some(mt::DOCKER_MANIFEST_LIST),
        _ => Some("application/json"),
    };
    if let Ok(d) = gantry_oci::parse_document(doc, declared, "fuzz") {
        // A document that parsed serialises, and reads back as the same kind.
        let again = match &d {
            gantry_oci::Document::Manifest(m) => serde_json::to_vec(m).expect("serialise"),
            gantry_oci::Document::Index(i) => serde_json::to_vec(i).expect("serialise"),
        };
        let back = gantry_oci::parse_document(&again, None, "fuzz again")
            .unwrap_or_else(|e| panic!("a parsed document does not read back: {e}"));
        assert_eq!(
            matches!(back, gantry_oci::Document::Manifest(_)),
            matches!(d, gantry_oci::Document::Manifest(_))
        );
    }
    let _ = gantry_oci::parse_manifest(doc, declared, "fuzz");
    let _ = gantry_oci::parse_index(doc, declared, "fuzz");
    if let Ok(c) = gantry_oci::ImageConfig::parse(doc, "fuzz") {
        let again = serde_json::to_vec(&c).expect("serialise");
        gantry_oci::ImageConfig::parse(&again, "fuzz again")
            .unwrap_or_else(|e| panic!("a parsed config does not read back: {e}"));
    }
}

fn context() -> &'static gantry_ops::Context {
    static CTX: OnceLock<gantry_ops::Context> = OnceLock::new();
    CTX.get_or_init(|| {
        gantry_ops::Context::new(
            Some(scratch().join("home")),
            Some(1),
            std::sync::Arc::new(gantry_ops::NoReporter),
        )
        .expect("context")
    })
}

/// Image references (gantry-oci), digests, platforms, bases and the transports of
/// `gantry copy` (gantry-ops). A parsed reference prints as text that parses to itself.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = gantry_oci::Reference::parse(s) {
        let text = r.to_string();
        let back = gantry_oci::Reference::parse(&text)
            .unwrap_or_else(|e| panic!("{s:?} parsed, printed as {text:?}, which fails: {e}"));
        assert_eq!(back, r, "{s:?} → {text:?}");
        let _ = r.name();
        let _ = r.tag_or_latest();
    }
    if let Ok(d) = gantry_oci::Digest::parse(s) {
        assert_eq!(gantry_oci::Digest::parse(&d.to_string()).ok(), Some(d));
    }
    let _ = Platform::parse(s);
    let _ = gantry_image::Base::parse(s);
    let _ = gantry_oci::validate_tag(s);
    let ctx = context();
    let _ = gantry_ops::transfer::Transport::parse(ctx, s);
    let _ = gantry_ops::transfer::Transport::parse_destination(ctx, s);
}

/// `WWW-Authenticate` (gantry-registry). Challenges written back as a header read back the
/// same; `Retry-After` never exceeds its cap.
pub fn www_authenticate(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let challenges = gantry_registry::parse_challenges(s);
    for c in &challenges {
        assert!(!c.scheme.is_empty(), "{s:?}: empty scheme");
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase(), "{s:?}");
        for k in c.params.keys() {
            assert_eq!(*k, k.to_ascii_lowercase(), "{s:?}");
        }
    }
    let plain: Vec<_> = challenges
        .iter()
        .filter(|c| !c.params.contains_key("token68"))
        .cloned()
        .collect();
    let header: Vec<String> = plain
        .iter()
        .map(|c| {
            let params: Vec<String> = c
                .params
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{} {}", c.scheme, params.join(", "))
        })
        .collect();
    let header = header.join(", ");
    assert_eq!(
        gantry_registry::parse_challenges(&header),
        plain,
        "{s:?} written back as {header:?}"
    );
    if let Some(d) = gantry_registry::parse_retry_after(s, std::time::SystemTime::now()) {
        assert!(d <= gantry_registry::MAX_DELAY);
    }
}

/// A docker-archive whose `manifest.json` is the fuzzer's bytes, with a config and a layer
/// that a valid manifest can name (see [`seeds::docker_archive`]).
pub fn docker_manifest(data: &[u8]) {
    let tar = seeds::docker_archive(data);
    let path = write_scratch("docker.tar", &tar);
    if let Ok(archive) = gantry_store::DockerArchive::open(&path) {
        let _ = archive.repo_tags();
        for reference in [None, Some("@0"), Some("@1"), Some("busybox"), Some("app:1")] {
            if let Ok(img) = archive.image(reference) {
                for layer in &img.layers {
                    let _ = archive.read_blob_verified(&layer.descriptor, 1 << 20);
                }
            }
        }
    }
}

/// Runs `target` on `data` (for the replay binary).
pub fn run(target: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == target) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds are valid input, so fuzzing starts from the accepting paths.
    #[test]
    fn seeds_are_accepted() {
        for (name, tar) in seeds::layer_tars() {
            tarread::import_tar_from(&tar[..], &name, TarImport::Keep, 1, io::sink())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let tmp = tempfile::tempdir().unwrap();
            let opts = gantry_unpack::UnpackOptions {
                devices: gantry_unpack::DevicePolicy::Placeholder,
                preserve_ownership: false,
                xattrs: false,
                ..Default::default()
            };
            gantry_unpack::unpack_layer(tmp.path(), &name, &tar[..], &opts)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let path = write_scratch("seed-oci.tar", &seeds::oci_archive());
        let layout = gantry_store::Layout::open_archive(&path).unwrap();
        let platform = Platform::parse("linux/amd64").unwrap();
        layout
            .resolve(&gantry_store::Selector::Only, &platform)
            .unwrap();
        for (target, name, bytes) in seeds::all() {
            match target {
                "docker_manifest" => {
                    let path = write_scratch("seed-docker.tar", &seeds::docker_archive(&bytes));
                    let a = gantry_store::DockerArchive::open(&path)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    a.image(Some("@0"))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                "oci_json" if name != "config" => {
                    let declared = match bytes[0] {
                        1 => Some(gantry_oci::media_types::OCI_MANIFEST),
                        2 => Some(gantry_oci::media_types::OCI_INDEX),
                        3 => Some(gantry_oci::media_types::DOCKER_MANIFEST),
                        _ => None,
                    };
                    gantry_oci::parse_document(&bytes[1..], declared, &name)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                "oci_json" => {
                    gantry_oci::ImageConfig::parse(&bytes[1..], &name)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                "www_authenticate" if name == "challenge-0" => {
                    let c = gantry_registry::parse_challenges(std::str::from_utf8(&bytes).unwrap());
                    assert_eq!(c[0].realm(), Some("https://auth.docker.io/token"));
                }
                _ => {}
            }
        }
        // And every target runs on every seed.
        for (target, _, bytes) in seeds::all() {
            assert!(run(target, &bytes));
        }
    }
}
