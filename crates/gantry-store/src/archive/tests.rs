use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use gantry_oci::annotations::REF_NAME;
use gantry_oci::media_types as mt;
use gantry_oci::{Descriptor, Digest, ImageIndex, Platform, Reference, json};

use super::test_tar::{end_marker, entry, file_entry};
use super::*;
use crate::layout::CONTAINERD_IMAGE_NAME;
use crate::test_support::{config_for, gzip, manifest_for, open_store, put_image, tar_layer};
use crate::{Error, ImageWriter, Layout, LayoutWriter, Selector};

const AMD64: &str = "linux/amd64";
const ARM64: &str = "linux/arm64";

fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn tagged(mut desc: Descriptor, tag: &str) -> Descriptor {
    desc.annotations.insert(REF_NAME.to_owned(), tag.to_owned());
    desc
}

fn with_platform(mut desc: Descriptor, p: &str) -> Descriptor {
    desc.platform = Some(platform(p));
    desc
}

/// Adds an image (layers, config, manifest) to any writer; returns the manifest descriptor.
fn add_image(w: &mut dyn ImageWriter, layers: &[&[u8]]) -> Descriptor {
    for layer in layers {
        w.add_blob_bytes(layer).unwrap();
    }
    w.add_blob_bytes(&config_for(layers)).unwrap();
    let bytes = json::to_canonical_vec(&manifest_for(layers));
    w.add_blob_bytes(&bytes).unwrap();
    Descriptor::of_bytes(mt::OCI_MANIFEST, &bytes)
}

fn add_index(w: &mut dyn ImageWriter, entries: Vec<Descriptor>) -> Descriptor {
    let mut index = ImageIndex::new();
    index.manifests = entries;
    let bytes = json::to_canonical_vec(&index);
    w.add_blob_bytes(&bytes).unwrap();
    Descriptor::of_bytes(mt::OCI_INDEX, &bytes)
}

/// The digests a fixture resolves to.
struct Fixture {
    a: Descriptor,
    amd: Descriptor,
    arm: Descriptor,
}

/// Fills any writer with: image `a` (tag `a`), image `b` (tag `b`), an index of an amd64 and
/// an arm64 image (tag `multi`), and a wrapper index around an index of the arm64 image (tag
/// `nested`).
fn fill(w: &mut dyn ImageWriter) -> Fixture {
    let (fixture, entries) = fill_blobs(w);
    for entry in entries {
        w.add_manifest(entry);
    }
    fixture
}

/// The blobs of [`fill`]; returns the `index.json` entries without adding them.
fn fill_blobs(w: &mut dyn ImageWriter) -> (Fixture, Vec<Descriptor>) {
    let a = add_image(w, &[b"layer a"]);
    let b = add_image(w, &[b"layer b", b"layer a"]);
    let amd = add_image(w, &[b"amd64 layer"]);
    let arm = add_image(w, &[b"arm64 layer"]);
    let multi = add_index(
        w,
        vec![
            with_platform(amd.clone(), AMD64),
            with_platform(arm.clone(), ARM64),
        ],
    );
    let inner = add_index(w, vec![with_platform(arm.clone(), ARM64)]);
    let nested = add_index(w, vec![inner]);
    let entries = vec![
        tagged(a.clone(), "a"),
        tagged(b, "b"),
        tagged(multi, "multi"),
        tagged(nested, "nested"),
    ];
    (Fixture { a, amd, arm }, entries)
}

fn oci_archive(path: &Path) -> Fixture {
    let mut w = OciArchiveWriter::new(path).unwrap();
    let fixture = fill(&mut w);
    w.commit().unwrap();
    fixture
}

/// The member names of a tar file, in order, read with the `tar` crate.
fn member_names(path: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8(e.path_bytes().into_owned()).unwrap()
        })
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn selectors(f: &Fixture) -> Vec<(Selector, &'static str)> {
    vec![
        (Selector::Tag("a".to_owned()), AMD64),
        (Selector::Tag("b".to_owned()), ARM64),
        (Selector::Tag("multi".to_owned()), AMD64),
        (Selector::Tag("multi".to_owned()), ARM64),
        (Selector::Tag("nested".to_owned()), ARM64),
        (Selector::Digest(f.a.digest.clone()), AMD64),
        // Not in index.json: found among the blobs.
        (Selector::Digest(f.arm.digest.clone()), AMD64),
    ]
}

#[test]
fn an_oci_archive_resolves_exactly_like_the_same_layout_directory() {
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("layout");
    let mut w = LayoutWriter::new(&layout_dir).unwrap();
    let fixture = fill(&mut w);
    w.commit().unwrap();
    let archive_path = dir.path().join("image.tar");
    oci_archive(&archive_path);

    let from_dir = Layout::open(&layout_dir).unwrap();
    let from_tar = Layout::open_archive(&archive_path).unwrap();
    assert_eq!(from_tar.path(), archive_path);
    assert_eq!(from_tar.tags(), vec!["a", "b", "multi", "nested"]);
    assert_eq!(from_tar.tags(), from_dir.tags());
    assert_eq!(from_tar.index(), from_dir.index());

    for (selector, p) in selectors(&fixture) {
        let want = from_dir.resolve(&selector, &platform(p)).unwrap();
        let got = from_tar.resolve(&selector, &platform(p)).unwrap();
        assert_eq!(
            got.manifest_descriptor, want.manifest_descriptor,
            "{selector:?}"
        );
        assert_eq!(got.manifest_bytes, want.manifest_bytes, "{selector:?}");
        let config = from_tar
            .read_blob_verified(&got.manifest.config, 1 << 20)
            .unwrap();
        assert_eq!(Digest::sha256(&config), got.manifest.config.digest);
        for layer in &got.manifest.layers {
            let mut bytes = Vec::new();
            from_tar
                .open_blob_verified(layer)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            assert_eq!(Digest::sha256(&bytes), layer.digest);
        }
    }
    let multi = Selector::Tag("multi".to_owned());
    let got = from_tar.resolve(&multi, &platform(ARM64)).unwrap();
    assert_eq!(got.manifest_descriptor.digest, fixture.arm.digest);
    let got = from_tar.resolve(&multi, &platform(AMD64)).unwrap();
    assert_eq!(got.manifest_descriptor.digest, fixture.amd.digest);

    // Errors name the archive the way directory errors name the directory.
    let what = format!("oci-archive {}", archive_path.display());
    let err = from_tar
        .resolve(&Selector::Tag("c".to_owned()), &Platform::host())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{what} has no tag c (tags: a, b, multi, nested)")
    );
    let err = from_tar
        .resolve(&Selector::Only, &Platform::host())
        .unwrap_err();
    assert!(
        matches!(err, Error::AmbiguousLayout { count: 4, .. }),
        "{err}"
    );
    let err = from_tar
        .resolve(&multi, &platform("linux/s390x"))
        .unwrap_err();
    assert!(err.to_string().contains(&what), "{err}");
    let missing = Digest::sha256(b"nothing");
    let err = from_tar
        .resolve(&Selector::Digest(missing.clone()), &Platform::host())
        .unwrap_err();
    let expected = format!(
        "{what} has no blob {missing} (looked for member blobs/sha256/{})",
        missing.hex()
    );
    assert_eq!(err.to_string(), expected);
}

#[test]
fn blobs_are_copied_between_layouts_and_archives_verified() {
    let (dir, store) = open_store();
    let image = put_image(&store, &[b"stored layer"]);
    let first = dir.path().join("first.tar");
    let mut w = OciArchiveWriter::new(&first).unwrap();
    // The order the copies below use: config, layers, manifest.
    let mut order = vec![image.config.clone()];
    order.extend(image.layers.iter().cloned());
    order.push(image.manifest.digest.clone());
    for digest in &order {
        w.add_blob_from_store(&store, digest).unwrap();
    }
    w.add_manifest(tagged(image.manifest.clone(), "v1"));
    w.commit().unwrap();

    // archive → directory → archive, through add_blob_from_layout.
    let source = Layout::open_archive(&first).unwrap();
    let resolved = source
        .resolve(&Selector::Tag("v1".to_owned()), &Platform::host())
        .unwrap();
    let mut blobs = vec![resolved.manifest.config.clone()];
    blobs.extend(resolved.manifest.layers.iter().cloned());
    blobs.push(resolved.manifest_descriptor.clone());
    let out_dir = dir.path().join("copy");
    let mut w = LayoutWriter::new(&out_dir).unwrap();
    for desc in &blobs {
        w.add_blob_from_layout(&source, desc).unwrap();
    }
    w.add_manifest(tagged(resolved.manifest_descriptor.clone(), "v1"));
    w.commit().unwrap();
    let copy = Layout::open(&out_dir).unwrap();
    let second = dir.path().join("second.tar");
    let mut w = OciArchiveWriter::new(&second).unwrap();
    for desc in &blobs {
        w.add_blob_from_layout(&copy, desc).unwrap();
    }
    w.add_manifest(tagged(resolved.manifest_descriptor.clone(), "v1"));
    w.commit().unwrap();
    assert!(fs::read(&first).unwrap() == fs::read(&second).unwrap());

    // A descriptor that lies is caught while copying.
    let mut w = OciArchiveWriter::new(&dir.path().join("third.tar")).unwrap();
    let mut short = resolved.manifest.layers[0].clone();
    short.size -= 1;
    let err = w.add_blob_from_layout(&source, &short).unwrap_err();
    assert!(matches!(err, Error::Oci(_)), "{err:?}");
    assert!(
        err.to_string().contains(&first.display().to_string()),
        "{err}"
    );
    let mut unknown = resolved.manifest.layers[0].clone();
    unknown.digest = Digest::sha256(b"another layer");
    let err = w.add_blob_from_layout(&source, &unknown).unwrap_err();
    assert!(matches!(err, Error::LayoutBlobNotFound { .. }), "{err}");
}

#[test]
fn archives_have_fixed_entries_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    let mut w = OciArchiveWriter::new(&path).unwrap();
    let layer = w.add_blob_bytes(b"layer").unwrap();
    w.add_blob_bytes(b"layer").unwrap(); // a duplicate: written once
    let config = w.add_blob_bytes(b"{}").unwrap();
    w.add_manifest(Descriptor::new(mt::OCI_MANIFEST, config.clone(), 2));
    w.commit().unwrap();

    let names = member_names(&path);
    assert_eq!(
        names,
        vec![
            "oci-layout".to_owned(),
            "blobs/".to_owned(),
            "blobs/sha256/".to_owned(),
            format!("blobs/sha256/{}", layer.hex()),
            format!("blobs/sha256/{}", config.hex()),
            "index.json".to_owned(),
        ]
    );
    let mut archive = tar::Archive::new(fs::File::open(&path).unwrap());
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert!(h.as_ustar().is_some(), "ustar");
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.gid().unwrap(), 0);
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        let mode = if h.entry_type().is_dir() {
            0o755
        } else {
            0o644
        };
        assert_eq!(h.mode().unwrap(), mode);
    }
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len() % 512, 0);
    assert!(bytes.ends_with(&[0; 1024]), "end-of-archive marker");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(names_in(dir.path()), vec!["image.tar"], "no temp file left");
}

#[test]
fn both_writers_are_deterministic() {
    let (dir, store) = open_store();
    let image = put_image(&store, &[b"stored layer"]);
    let layout_dir = dir.path().join("layout");
    let mut w = LayoutWriter::new(&layout_dir).unwrap();
    let from_layout = add_image(&mut w, &[b"layout layer"]);
    w.add_manifest(from_layout.clone());
    w.commit().unwrap();
    let layout = Layout::open(&layout_dir).unwrap();
    let layout_blobs = {
        let r = layout.resolve(&Selector::Only, &Platform::host()).unwrap();
        let mut v = vec![r.manifest.config.clone(), r.manifest_descriptor.clone()];
        v.extend(r.manifest.layers.iter().cloned());
        v
    };
    let reference = Reference::parse("example.com/team/app:1.0").unwrap();

    let add_all = |w: &mut dyn ImageWriter| {
        let (fixture, entries) = fill_blobs(w);
        for digest in image.all() {
            w.add_blob_from_store(&store, &digest).unwrap();
        }
        for desc in &layout_blobs {
            w.add_blob_from_layout(&layout, desc).unwrap();
        }
        let streamed = b"streamed blob".to_vec();
        let desc = Descriptor::of_bytes(mt::OCI_LAYER_TAR, &streamed);
        w.add_blob_from_reader(&mut &streamed[..], &desc).unwrap();
        (fixture, entries)
    };
    let write = |out: &Path, docker: bool| {
        if docker {
            let mut w = DockerArchiveWriter::new(out).unwrap();
            let (fixture, _) = add_all(&mut w);
            w.add_image(image.manifest.clone(), Some(&reference))
                .unwrap();
            w.add_manifest(fixture.a);
            w.commit().unwrap();
        } else {
            let mut w = OciArchiveWriter::new(out).unwrap();
            let (_, entries) = add_all(&mut w);
            for entry in entries {
                w.add_manifest(entry);
            }
            w.add_manifest(image.manifest.clone());
            w.commit().unwrap();
        }
    };
    for docker in [false, true] {
        // Different directories, so different temp names: nothing of them may leak.
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        write(&one.path().join("x.tar"), docker);
        write(&two.path().join("other-name.tar"), docker);
        let a = fs::read(one.path().join("x.tar")).unwrap();
        let b = fs::read(two.path().join("other-name.tar")).unwrap();
        assert!(a == b, "docker={docker}: two runs differ");
        let c = tempfile::tempdir().unwrap();
        let mut w = OciArchiveWriter::new(&c.path().join("y.tar")).unwrap();
        w.add_blob_bytes(b"something else").unwrap();
        w.commit().unwrap();
        assert_ne!(a, fs::read(c.path().join("y.tar")).unwrap());
    }
}

#[test]
fn a_blob_that_fails_verification_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &Path, with_failures: bool| {
        let mut w = OciArchiveWriter::new(path).unwrap();
        w.add_blob_bytes(b"first").unwrap();
        if with_failures {
            let good = Descriptor::of_bytes(mt::OCI_LAYER_TAR, b"content");
            let mut flipped = good.clone();
            flipped.digest = Digest::sha256(b"contenT");
            let short = Descriptor::new(mt::OCI_LAYER_TAR, good.digest.clone(), 3);
            let long = Descriptor::new(mt::OCI_LAYER_TAR, good.digest.clone(), 30);
            for bad in [&flipped, &short, &long] {
                let err = w.add_blob_from_reader(&b"content"[..], bad).unwrap_err();
                assert!(matches!(err, Error::Oci(_)), "{err}");
                assert!(err.to_string().contains(&bad.digest.to_string()), "{err}");
            }
            // A sha512 blob that fails must not leave its blobs/sha512/ directory behind.
            let mut sha512 = Descriptor::of_bytes(mt::OCI_LAYER_TAR, b"x");
            sha512.digest = Digest::compute(gantry_oci::Algorithm::Sha512, b"y");
            w.add_blob_from_reader(&b"x"[..], &sha512).unwrap_err();
        }
        w.add_blob_bytes(b"second").unwrap();
        w.commit().unwrap();
    };
    write(&dir.path().join("clean.tar"), false);
    write(&dir.path().join("failed.tar"), true);
    assert!(
        fs::read(dir.path().join("clean.tar")).unwrap()
            == fs::read(dir.path().join("failed.tar")).unwrap()
    );
}

#[test]
fn long_names_and_huge_sizes_use_pax_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sha512.tar");
    let content = b"a blob named by sha512";
    let desc = Descriptor::new(
        mt::OCI_LAYER_TAR,
        Digest::compute(gantry_oci::Algorithm::Sha512, content),
        content.len() as u64,
    );
    let mut w = OciArchiveWriter::new(&path).unwrap();
    w.add_blob_from_reader(&content[..], &desc).unwrap();
    w.commit().unwrap();
    let names = member_names(&path);
    let long = format!("blobs/sha512/{}", desc.digest.hex());
    assert!(long.len() > 100);
    assert_eq!(
        &names[3..],
        ["blobs/sha512/".to_owned(), long, "index.json".to_owned()]
    );
    let layout = Layout::open_archive(&path).unwrap();
    assert_eq!(layout.read_blob_verified(&desc, 100).unwrap(), content);
    // GNU tar reads our PAX headers too.
    let out = gantry_test::tool("tar")
        .arg("-tf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains(&desc.digest.hex().to_string()),
        "{listing}"
    );

    // A member larger than 8 GiB (a sparse file, so nothing is really written).
    let big = dir.path().join("big.tar");
    let size: u64 = (8 << 30) + 3;
    let bytes = tarball::header_blocks(b"huge", size, b'0', 0o644);
    let data_at = bytes.len() as u64;
    fs::write(&big, &bytes).unwrap();
    let f = fs::OpenOptions::new().append(true).open(&big).unwrap();
    let end = data_at + size.div_ceil(512) * 512;
    f.set_len(end + 1024).unwrap();
    let index = TarIndex::open(&big).unwrap();
    let member = index.file_member("huge").unwrap().unwrap();
    assert_eq!((member.offset, member.size), (data_at, size));
}

/// Writes `entries` (raw tar bytes) followed by the end marker.
fn raw_archive(path: &Path, entries: &[Vec<u8>]) {
    let mut bytes: Vec<u8> = entries.concat();
    bytes.extend_from_slice(&end_marker());
    fs::write(path, bytes).unwrap();
}

fn layout_members() -> Vec<Vec<u8>> {
    vec![
        file_entry("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        file_entry("index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
    ]
}

#[test]
fn hostile_members_are_refused_naming_archive_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.tar");
    let cases: Vec<(&str, Vec<Vec<u8>>, &str, &str)> = vec![
        (
            "duplicate",
            [layout_members(), vec![file_entry("./index.json", b"{}")]].concat(),
            "./index.json",
            "more than once",
        ),
        (
            "dot-dot",
            [
                layout_members(),
                vec![file_entry("blobs/../../etc/passwd", b"x")],
            ]
            .concat(),
            "blobs/../../etc/passwd",
            "'..'",
        ),
        (
            "global pax",
            [
                vec![entry(b"pax_global_header", b'g', b"9 a=bcd\n")],
                layout_members(),
            ]
            .concat(),
            "pax_global_header",
            "global PAX",
        ),
    ];
    for (case, entries, member, reason) in cases {
        raw_archive(&path, &entries);
        let err = Layout::open_archive(&path).unwrap_err();
        assert!(
            matches!(err, Error::BadArchiveMember { .. }),
            "{case}: {err:?}"
        );
        let msg = err.to_string();
        let expected = format!("{}: member {member}: ", path.display());
        assert!(msg.starts_with(&expected), "{case}: {msg}");
        assert!(msg.contains(reason), "{case}: {msg}");
        let err = DockerArchive::open(&path).unwrap_err();
        assert!(err.to_string().starts_with(&expected), "{case}: {err}");
    }

    // Absolute and ./ names are normalised, not refused.
    raw_archive(
        &path,
        &[
            file_entry("/oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            file_entry("./index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
        ],
    );
    assert!(Layout::open_archive(&path).unwrap().tags().is_empty());

    // A symlink where a file is needed.
    let blob = b"blob";
    let digest = Digest::sha256(blob);
    let member = blob_member(&digest);
    let mut symlink = layout_members();
    symlink.push(entry(member.as_bytes(), b'2', b""));
    raw_archive(&path, &symlink);
    let layout = Layout::open_archive(&path).unwrap();
    let desc = Descriptor::new(mt::OCI_LAYER_TAR, digest, 4);
    let err = layout.read_blob_verified(&desc, 100).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: member {member}: it is a symlink, not a regular file",
            path.display()
        )
    );
}

#[test]
fn tampered_and_truncated_archives_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    let fixture = oci_archive(&path);
    let pristine = fs::read(&path).unwrap();
    let layer = Digest::sha256(b"layer a");
    let layer_member = blob_member(&layer);
    let find = |needle: &[u8]| {
        pristine
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let layer_data = find(b"layer a");
    let archive = path.display().to_string();

    // A flipped byte in a layer: caught when the layer is read, naming archive and member.
    let mut bytes = pristine.clone();
    bytes[layer_data] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let layout = Layout::open_archive(&path).unwrap();
    let resolved = layout
        .resolve(&Selector::Tag("a".to_owned()), &Platform::host())
        .unwrap();
    let err = layout
        .read_blob_verified(&resolved.manifest.layers[0], 1 << 20)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Oci(_)), "{err:?}");
    for part in [&archive, &layer_member, &layer.to_string()] {
        assert!(msg.contains(part.as_str()), "{msg}");
    }

    // A flipped byte in the manifest: resolution fails, naming archive and member.
    let manifest_bytes = json::to_canonical_vec(&manifest_for(&[b"layer a"]));
    let mut bytes = pristine.clone();
    bytes[find(&manifest_bytes) + 5] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let err = Layout::open_archive(&path)
        .unwrap()
        .resolve(&Selector::Tag("a".to_owned()), &Platform::host())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&archive), "{msg}");
    assert!(msg.contains(&blob_member(&fixture.a.digest)), "{msg}");

    // A flipped byte in a header: its checksum no longer matches.
    let mut bytes = pristine.clone();
    bytes[layer_data - 512 + 3] ^= 0x01; // inside the member's name
    fs::write(&path, &bytes).unwrap();
    let err = Layout::open_archive(&path).unwrap_err();
    assert!(matches!(err, Error::BadArchive { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&archive) && msg.contains("bad checksum"),
        "{msg}"
    );

    // Truncated inside a member's data: that member runs past the end.
    fs::write(&path, &pristine[..layer_data + 3]).unwrap();
    let err = Layout::open_archive(&path).unwrap_err();
    let msg = err.to_string();
    let expected = format!(
        "{archive}: member {layer_member}: its 7 bytes of data run past the end of the file (is it truncated?)"
    );
    assert_eq!(msg, expected);

    // Truncated between members: no end-of-archive marker.
    let index_header = find(b"index.json\0");
    fs::write(&path, &pristine[..index_header]).unwrap();
    let err = Layout::open_archive(&path).unwrap_err();
    assert!(matches!(err, Error::BadArchive { .. }), "{err:?}");
    assert!(err.to_string().contains("end-of-archive marker"), "{err}");

    // Empty, and not a tar at all.
    fs::write(&path, b"").unwrap();
    assert!(
        Layout::open_archive(&path)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    fs::write(&path, vec![b'x'; 2048]).unwrap();
    let err = Layout::open_archive(&path).unwrap_err();
    assert!(matches!(err, Error::BadArchive { .. }), "{err:?}");

    // A docker-archive only is no oci-archive.
    raw_archive(&path, &[file_entry("manifest.json", b"[]")]);
    let err = Layout::open_archive(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{archive} is not an OCI image layout: it has no oci-layout file")
    );
}

#[test]
fn commit_replaces_only_archives() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tar");
    oci_archive(&out);
    let mut w = OciArchiveWriter::new(&out).unwrap();
    w.add_blob_bytes(b"new").unwrap();
    assert_eq!(
        names_in(dir.path()).len(),
        2,
        "the temp file exists while writing"
    );
    w.commit().unwrap();
    assert_eq!(names_in(dir.path()), vec!["out.tar"]);
    assert!(Layout::open_archive(&out).unwrap().tags().is_empty());

    let precious = dir.path().join("notes.txt");
    fs::write(&precious, b"keep me").unwrap();
    let a_dir = dir.path().join("a-dir");
    fs::create_dir(&a_dir).unwrap();
    for (target, reason) in [
        (&precious, "it is not a tar archive"),
        (&a_dir, "it is a directory"),
    ] {
        let mut w = OciArchiveWriter::new(target).unwrap();
        w.add_blob_bytes(b"x").unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, Error::RefuseToReplaceFile { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("refusing to replace {}: {reason}", target.display())
        );
    }
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
    assert_eq!(names_in(dir.path()), vec!["a-dir", "notes.txt", "out.tar"]);

    // A dropped writer leaves the old archive and no temp file.
    let before = fs::read(&out).unwrap();
    let mut w = OciArchiveWriter::new(&out).unwrap();
    w.add_blob_bytes(b"abandoned").unwrap();
    drop(w);
    assert_eq!(fs::read(&out).unwrap(), before);
    assert_eq!(names_in(dir.path()), vec!["a-dir", "notes.txt", "out.tar"]);
}

/// A docker-archive written by [`DockerArchiveWriter`] with a gzip and a plain layer.
struct DockerFixture {
    manifest: Descriptor,
    config: Digest,
    layers: Vec<(Vec<u8>, Digest)>,
}

fn docker_fixture(path: &Path, reference: Option<&str>) -> DockerFixture {
    let plain = tar_layer(&[("etc/hello", b"hello\n")]);
    let zipped = gzip(&tar_layer(&[("etc/world", b"world\n")]));
    let diff_ids = [
        Digest::sha256(&plain),
        Digest::sha256(&flate2_decode(&zipped)),
    ];
    let config = json::to_canonical_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": Descriptor::of_bytes(mt::OCI_CONFIG, &config),
        "layers": [
            Descriptor::of_bytes(mt::OCI_LAYER_TAR, &plain),
            Descriptor::of_bytes(mt::OCI_LAYER_GZIP, &zipped),
        ],
    });
    let manifest_bytes = json::to_canonical_vec(&manifest);
    let mut w = DockerArchiveWriter::new(path).unwrap();
    w.add_blob_bytes(&plain).unwrap();
    w.add_blob_bytes(&zipped).unwrap();
    let config_digest = w.add_blob_bytes(&config).unwrap();
    w.add_blob_bytes(&manifest_bytes).unwrap();
    let desc = with_platform(
        Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest_bytes),
        AMD64,
    );
    let reference = reference.map(|r| Reference::parse(r).unwrap());
    w.add_image(desc.clone(), reference.as_ref()).unwrap();
    w.commit().unwrap();
    DockerFixture {
        manifest: desc,
        config: config_digest,
        layers: vec![(plain, diff_ids[0].clone()), (zipped, diff_ids[1].clone())],
    }
}

fn flate2_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn a_docker_archive_is_also_an_oci_archive_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.tar");
    let f = docker_fixture(&path, Some("example.com/team/app:1.0"));

    let names = member_names(&path);
    let n = names.len();
    assert_eq!(&names[n - 2..], ["manifest.json", "index.json"]);
    let archive = DockerArchive::open(&path).unwrap();
    let hex = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let layer_digests: Vec<Digest> = f.layers.iter().map(|(b, _)| Digest::sha256(b)).collect();
    assert_eq!(
        archive.entries(),
        [DockerManifestEntry {
            config: hex(&f.config),
            repo_tags: vec!["example.com/team/app:1.0".to_owned()],
            layers: layer_digests.iter().map(hex).collect(),
        }]
    );
    for reference in [None, Some("example.com/team/app:1.0"), Some("@0")] {
        let image = archive.image(reference).unwrap();
        assert_eq!(image.config.digest, f.config);
        assert_eq!(image.image_config.rootfs.diff_ids.len(), 2);
        let media_types: Vec<&str> = image
            .layers
            .iter()
            .map(|l| l.descriptor.media_type.as_str())
            .collect();
        assert_eq!(media_types, [mt::OCI_LAYER_TAR, mt::OCI_LAYER_GZIP]);
        for (layer, (bytes, diff_id)) in image.layers.iter().zip(&f.layers) {
            assert_eq!(
                layer.descriptor,
                Descriptor::of_bytes(&layer.descriptor.media_type, bytes)
            );
            assert_eq!(&layer.diff_id, diff_id);
            assert_eq!(
                archive
                    .read_blob_verified(&layer.descriptor, 1 << 20)
                    .unwrap(),
                *bytes
            );
        }
        assert_eq!(image.manifest().layers.len(), 2);
    }
    let err = archive.image(Some("example.com/team/app:2.0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "docker-archive {}: it has no image named example.com/team/app:2.0 (names: example.com/team/app:1.0)",
            path.display()
        )
    );

    // The same file as an oci-archive: Docker 25's annotations, resolvable by tag.
    let layout = Layout::open_archive(&path).unwrap();
    assert_eq!(layout.tags(), vec!["1.0"]);
    let entry = &layout.index().manifests[0];
    assert_eq!(
        entry
            .annotations
            .get(CONTAINERD_IMAGE_NAME)
            .map(String::as_str),
        Some("example.com/team/app:1.0")
    );
    let resolved = layout
        .resolve(&Selector::Tag("1.0".to_owned()), &platform(AMD64))
        .unwrap();
    assert_eq!(resolved.manifest_descriptor.digest, f.manifest.digest);
}

#[test]
fn docker_names_are_written_the_way_docker_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.tar");
    for (given, repo_tag, full) in [
        (
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        ("docker.io/team/app:2", "team/app:2", "docker.io/team/app:2"),
        (
            "localhost:5000/app:x",
            "localhost:5000/app:x",
            "localhost:5000/app:x",
        ),
    ] {
        docker_fixture(&path, Some(given));
        let archive = DockerArchive::open(&path).unwrap();
        assert_eq!(archive.repo_tags(), vec![repo_tag]);
        archive.image(Some(given)).unwrap();
        archive.image(Some(full)).unwrap();
        let layout = Layout::open_archive(&path).unwrap();
        let entry = &layout.index().manifests[0];
        assert_eq!(entry.annotations[CONTAINERD_IMAGE_NAME], full);
    }
    docker_fixture(&path, None);
    let archive = DockerArchive::open(&path).unwrap();
    assert!(archive.repo_tags().is_empty());
    archive.image(None).unwrap();

    let mut w = DockerArchiveWriter::new(&path).unwrap();
    let digest_ref = Reference::parse(&format!("app@{}", Digest::sha256(b"x"))).unwrap();
    let err = w
        .add_image(
            Descriptor::of_bytes(mt::OCI_MANIFEST, b"{}"),
            Some(&digest_ref),
        )
        .unwrap_err();
    assert!(err.to_string().contains("has a digest"), "{err}");
}

#[test]
fn docker_archive_commit_refuses_incomplete_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.tar");
    let layers: &[&[u8]] = &[b"layer a"];
    let manifest = json::to_canonical_vec(&manifest_for(layers));
    let desc = Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest);

    // No manifest blob.
    let mut w = DockerArchiveWriter::new(&path).unwrap();
    w.add_manifest(desc.clone());
    let err = w.commit().unwrap_err();
    assert!(err.to_string().contains("was not added"), "{err}");
    // No layer.
    let mut w = DockerArchiveWriter::new(&path).unwrap();
    w.add_blob_bytes(&config_for(layers)).unwrap();
    w.add_blob_bytes(&manifest).unwrap();
    w.add_manifest(desc.clone());
    let err = w.commit().unwrap_err();
    let layer = Digest::sha256(b"layer a");
    assert!(
        err.to_string()
            .contains(&format!("the layer {layer} of manifest {}", desc.digest)),
        "{err}"
    );
    // An index.
    let mut w = DockerArchiveWriter::new(&path).unwrap();
    let index = add_index(&mut w, vec![desc]);
    w.add_manifest(index);
    let err = w.commit().unwrap_err();
    assert!(err.to_string().contains("is an index"), "{err}");
    assert!(!path.exists());
    assert!(names_in(dir.path()).is_empty(), "no temp file left");
}

/// A docker-archive in the pre-25 layout (`<hex>.json`, `<id>/layer.tar`), built by hand.
fn old_style_archive(path: &Path, tamper: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Digest {
    let layer = tar_layer(&[("bin/tool", b"#!/bin/sh\n")]);
    let config = json::to_canonical_vec(&serde_json::json!({
        "architecture": "arm64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::sha256(&layer)]},
    }));
    let config_digest = Digest::sha256(&config);
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let manifest = format!(
        r#"[{{"Config":"{}.json","RepoTags":["busybox:latest","busybox:1"],"Layers":["{id}/layer.tar"]}}]"#,
        config_digest.hex()
    );
    let mut files = vec![
        (format!("{id}/VERSION"), b"1.0".to_vec()),
        (format!("{id}/json"), b"{}".to_vec()),
        (format!("{id}/layer.tar"), layer),
        (format!("{}.json", config_digest.hex()), config),
        ("manifest.json".to_owned(), manifest.into_bytes()),
        ("repositories".to_owned(), b"{}".to_vec()),
    ];
    tamper(&mut files);
    let entries: Vec<Vec<u8>> = [entry(format!("{id}/").as_bytes(), b'5', b"")]
        .into_iter()
        .chain(files.iter().map(|(n, c)| file_entry(n, c)))
        .collect();
    raw_archive(path, &entries);
    config_digest
}

#[test]
fn old_style_docker_archives_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.tar");
    let config = old_style_archive(&path, |_| {});
    let archive = DockerArchive::open(&path).unwrap();
    assert_eq!(archive.repo_tags(), vec!["busybox:latest", "busybox:1"]);
    for reference in [
        None,
        Some("busybox"),
        Some("docker.io/library/busybox:1"),
        Some("@0"),
    ] {
        let image = archive.image(reference).unwrap();
        assert_eq!(image.config.digest, config);
        assert_eq!(image.image_config.architecture, "arm64");
        let layer = &image.layers[0];
        assert_eq!(layer.descriptor.media_type, mt::OCI_LAYER_TAR);
        assert_eq!(layer.descriptor.digest, layer.diff_id);
        assert!(layer.member.ends_with("/layer.tar"));
        let mut bytes = Vec::new();
        archive
            .open_blob_verified(&layer.descriptor)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(Digest::sha256(&bytes), layer.diff_id);
        assert_eq!(
            archive.read_blob_verified(&image.config, 1 << 20).unwrap(),
            image.config_bytes
        );
    }
    let err = archive.image(Some("@1")).unwrap_err();
    assert!(err.to_string().contains("no @1"), "{err}");
    // Not an oci-archive.
    let err = Layout::open_archive(&path).unwrap_err();
    assert!(matches!(err, Error::NotALayout { .. }), "{err}");
}

#[test]
fn tampered_docker_archives_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.tar");
    type Tamper = fn(&mut Vec<(String, Vec<u8>)>);
    let cases: [(&str, Tamper, &str); 5] = [
        (
            "layer flipped",
            |files| files[2].1[600] ^= 1,
            "layer.tar: this uncompressed layer hashes to",
        ),
        (
            "config flipped",
            |files| files[3].1[3] ^= 1,
            ".json: it hashes to",
        ),
        (
            "escaping layer path",
            |files| {
                let m = String::from_utf8(files[4].1.clone()).unwrap();
                files[4].1 = m.replace("/layer.tar", "/../../layer.tar").into_bytes();
            },
            "'..'",
        ),
        (
            "missing layer",
            |files| {
                files.remove(2);
            },
            "which is not in the archive",
        ),
        (
            "too few diff_ids",
            |files| {
                let m = String::from_utf8(files[4].1.clone()).unwrap();
                let layers = r#""Layers":["#;
                let at = m.find(layers).unwrap() + layers.len();
                let first = &m[at..at + m[at..].find(']').unwrap()];
                let doubled = format!("{}{first},{}", &m[..at], &m[at..]);
                files[4].1 = doubled.into_bytes();
            },
            "lists 1 diff_ids for 2 layers",
        ),
    ];
    for (case, tamper, expected) in cases {
        old_style_archive(&path, tamper);
        let err = DockerArchive::open(&path)
            .and_then(|a| a.image(None))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{case}: {msg}");
        assert!(msg.contains(expected), "{case}: {msg}");
    }
}

#[test]
fn member_reader_and_names() {
    assert_eq!(
        tarball::normalize_member_name(b"/./a//b/./c/").unwrap(),
        b"a/b/c"
    );
    assert!(tarball::normalize_member_name(b"a/../b").is_err());
    assert!(tarball::normalize_member_name(b"a\0b").is_err());
    assert_eq!(tarball::normalize_member_name(b"./").unwrap(), b"");
}

#[test]
fn archives_made_by_gnu_tar_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("layout");
    let mut w = LayoutWriter::new(&layout_dir).unwrap();
    let fixture = fill(&mut w);
    w.commit().unwrap();
    // A long name, which GNU tar stores as a GNU long name or a PAX path record.
    let long = "x".repeat(150);
    fs::write(layout_dir.join(&long), b"long").unwrap();
    for format in ["gnu", "pax", "ustar"] {
        let path = dir.path().join(format!("{format}.tar"));
        let mut tar = gantry_test::tool("tar");
        tar.arg(format!("--format={format}"))
            .arg("-C")
            .arg(&layout_dir)
            .arg("-cf")
            .arg(&path)
            .arg(".");
        if format == "ustar" {
            fs::remove_file(layout_dir.join(&long)).unwrap(); // ustar cannot hold it
        }
        let out = tar.output().unwrap();
        assert!(out.status.success(), "{format}: {out:?}");
        let layout = Layout::open_archive(&path).unwrap();
        let got = layout
            .resolve(&Selector::Tag("nested".to_owned()), &platform(ARM64))
            .unwrap();
        assert_eq!(
            got.manifest_descriptor.digest, fixture.arm.digest,
            "{format}"
        );
        if format != "ustar" {
            let index = TarIndex::open(&path).unwrap();
            assert_eq!(index.read_member(&long, 10).unwrap().unwrap(), b"long");
        }
    }
}

#[test]
fn the_number_of_members_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.tar");
    let entries: Vec<Vec<u8>> = (0..4).map(|i| file_entry(&format!("f{i}"), b"x")).collect();
    raw_archive(&path, &entries);
    let file = fs::File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    assert_eq!(tarball::scan(&file, len, &path, 4).unwrap().len(), 4);
    let err = tarball::scan(&file, len, &path, 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a valid tar archive: it has more than 3 members",
            path.display()
        )
    );
}

#[test]
fn archive_blobs_are_read_from_several_threads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let other: Vec<u8> = (0..2_000_000u32).map(|i| (i % 239) as u8).collect();
    let mut w = OciArchiveWriter::new(&path).unwrap();
    w.add_blob_bytes(&big).unwrap();
    w.add_blob_bytes(&other).unwrap();
    w.commit().unwrap();
    let layout = Layout::open_archive(&path).unwrap();
    std::thread::scope(|s| {
        for blob in [&big, &other, &big, &other] {
            let layout = layout.clone();
            s.spawn(move || {
                let desc = Descriptor::of_bytes(mt::OCI_LAYER_TAR, blob);
                let mut reader = layout.open_blob_verified(&desc).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = reader.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    std::thread::yield_now();
                }
                assert!(got == *blob);
            });
        }
    });
}

/// An archive path that is a FIFO hung `open` forever.
#[test]
fn regression_a_fifo_as_archive_hung() {
    use crate::test_support::{mkfifo, within};
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("image.tar");
    mkfifo(&fifo);
    let path = fifo.clone();
    let (oci, docker) = within(20, move || {
        (
            Layout::open_archive(&path).unwrap_err().to_string(),
            DockerArchive::open(&path).unwrap_err().to_string(),
        )
    });
    for e in [oci, docker] {
        assert!(e.contains(&fifo.display().to_string()), "{e}");
        assert!(e.contains("FIFO"), "{e}");
    }
}
