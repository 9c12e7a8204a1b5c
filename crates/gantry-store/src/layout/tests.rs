use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::test_support::{config_for, manifest_for, open_store, put_image};
use gantry_oci::media_types as mt;

const AMD64: &str = "linux/amd64";
const ARM64: &str = "linux/arm64";

fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

/// A manifest descriptor tagged `tag` in `index.json`.
fn tagged(mut desc: Descriptor, tag: &str) -> Descriptor {
    desc.annotations.insert(REF_NAME.to_owned(), tag.to_owned());
    desc
}

/// Adds an image (its own copies of every blob) to a layout writer; returns the manifest
/// descriptor.
fn add_image(writer: &mut LayoutWriter, layers: &[&[u8]]) -> Descriptor {
    for layer in layers {
        writer.add_blob_bytes(layer).unwrap();
    }
    writer.add_blob_bytes(&config_for(layers)).unwrap();
    let bytes = json::to_canonical_vec(&manifest_for(layers));
    writer.add_blob_bytes(&bytes).unwrap();
    Descriptor::of_bytes(mt::OCI_MANIFEST, &bytes)
}

/// Adds an index of `entries` to a layout writer; returns its descriptor.
fn add_index(writer: &mut LayoutWriter, entries: Vec<Descriptor>) -> Descriptor {
    let mut index = ImageIndex::new();
    index.manifests = entries;
    let bytes = json::to_canonical_vec(&index);
    writer.add_blob_bytes(&bytes).unwrap();
    Descriptor::of_bytes(mt::OCI_INDEX, &bytes)
}

fn with_platform(mut desc: Descriptor, p: &str) -> Descriptor {
    desc.platform = Some(platform(p));
    desc
}

/// Writes a layout with images tagged `a` and `b`.
fn two_tag_layout(out: &Path) -> (Descriptor, Descriptor) {
    let mut w = LayoutWriter::new(out).unwrap();
    let a = add_image(&mut w, &[b"layer a"]);
    let b = add_image(&mut w, &[b"layer b"]);
    w.add_manifest(tagged(a.clone(), "a"));
    w.add_manifest(tagged(b.clone(), "b"));
    w.commit().unwrap();
    (a, b)
}

/// Writes a layout whose tag `multi` names an index of an amd64 and an arm64 image.
fn multi_platform_layout(out: &Path) -> (Descriptor, Descriptor) {
    let mut w = LayoutWriter::new(out).unwrap();
    let amd = add_image(&mut w, &[b"amd64 layer"]);
    let arm = add_image(&mut w, &[b"arm64 layer"]);
    let index = add_index(
        &mut w,
        vec![
            with_platform(amd.clone(), AMD64),
            with_platform(arm.clone(), ARM64),
        ],
    );
    w.add_manifest(tagged(index, "multi"));
    w.commit().unwrap();
    (amd, arm)
}

/// The names in `dir` (to check that no temp directory is left next to an output).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn make_writable(path: &Path) {
    fs::set_permissions(path, Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn write_from_store_then_read_back() {
    let (dir, store) = open_store();
    let image = put_image(&store, &[b"layer one", b"layer two"]);
    let out = dir.path().join("out");
    let mut w = LayoutWriter::new(&out).unwrap();
    for digest in image.all() {
        w.add_blob_from_store(&store, &digest).unwrap();
        w.add_blob_from_store(&store, &digest).unwrap(); // added twice: skipped
    }
    w.add_manifest(tagged(image.manifest.clone(), "v1"));
    w.commit().unwrap();

    let layout = Layout::open(&out).unwrap();
    assert_eq!(layout.tags(), vec!["v1"]);
    assert_eq!(layout.index().manifests.len(), 1);
    let layer_path = layout.blob_path(&image.layers[0]);
    assert_eq!(fs::metadata(&layer_path).unwrap().nlink(), 2, "hard link");
    assert_eq!(fs::metadata(&out).unwrap().mode() & 0o777, 0o755);
    let index_json = fs::read_to_string(out.join("index.json")).unwrap();
    assert!(index_json.contains(r#""schemaVersion":2"#), "{index_json}");
    assert!(index_json.contains(mt::OCI_INDEX), "{index_json}");

    let host = Platform::host();
    for selector in [
        Selector::Tag("v1".to_owned()),
        Selector::Digest(image.manifest.digest.clone()),
        Selector::Only,
    ] {
        let resolved = layout.resolve(&selector, &host).unwrap();
        assert_eq!(resolved.manifest_descriptor.digest, image.manifest.digest);
        assert_eq!(resolved.manifest.layers.len(), 2);
        assert_eq!(
            Digest::sha256(&resolved.manifest_bytes),
            image.manifest.digest
        );
    }
    let config = &layout
        .resolve(&Selector::Only, &host)
        .unwrap()
        .manifest
        .config;
    assert_eq!(
        layout.read_blob_verified(config, 1 << 20).unwrap(),
        store.read_blob(&image.config, 1 << 20).unwrap()
    );
    assert_eq!(
        names_in(dir.path())
            .iter()
            .filter(|n| n.contains("gantry-tmp"))
            .count(),
        0
    );
}

#[test]
fn missing_tag_and_ambiguous_layout_errors_list_tags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    two_tag_layout(&out);
    let layout = Layout::open(&out).unwrap();
    let host = Platform::host();

    let err = layout
        .resolve(&Selector::Tag("c".to_owned()), &host)
        .unwrap_err();
    let expected = format!("layout {} has no tag c (tags: a, b)", out.display());
    assert_eq!(err.to_string(), expected);

    let err = layout.resolve(&Selector::Only, &host).unwrap_err();
    assert!(
        matches!(err, Error::AmbiguousLayout { count: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("(tags: a, b)"), "{err}");

    let b = layout
        .resolve(&Selector::Tag("b".to_owned()), &host)
        .unwrap();
    assert_eq!(b.manifest.layers[0].digest, Digest::sha256(b"layer b"));
    let unknown = Digest::sha256(b"nothing");
    let err = layout
        .resolve(&Selector::Digest(unknown.clone()), &host)
        .unwrap_err();
    assert!(err.to_string().contains(&unknown.to_string()), "{err}");
}

#[test]
fn an_index_resolves_to_the_requested_platform() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (amd, arm) = multi_platform_layout(&out);
    let layout = Layout::open(&out).unwrap();
    let multi = Selector::Tag("multi".to_owned());

    let got = layout.resolve(&multi, &platform(ARM64)).unwrap();
    assert_eq!(got.manifest_descriptor.digest, arm.digest);
    assert_eq!(got.manifest_descriptor.platform, Some(platform(ARM64)));
    let got = layout.resolve(&multi, &platform(AMD64)).unwrap();
    assert_eq!(got.manifest_descriptor.digest, amd.digest);
    // A platform manifest can be named by digest although index.json does not list it.
    let got = layout
        .resolve(&Selector::Digest(arm.digest.clone()), &platform(AMD64))
        .unwrap();
    assert_eq!(got.manifest_descriptor.digest, arm.digest);

    let err = layout
        .resolve(&multi, &platform("linux/s390x"))
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("linux/s390x"), "{msg}");
    assert!(
        msg.contains("(available: linux/amd64, linux/arm64)"),
        "{msg}"
    );
}

#[test]
fn nested_indexes_and_shared_tags_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut w = LayoutWriter::new(&out).unwrap();
    let amd = add_image(&mut w, &[b"amd64 layer"]);
    let arm = add_image(&mut w, &[b"arm64 layer"]);
    let inner = add_index(&mut w, vec![with_platform(arm.clone(), ARM64)]);
    let outer = add_index(&mut w, vec![inner]); // a wrapper: one entry, no platform
    w.add_manifest(tagged(outer, "nested"));
    // Two entries sharing one tag act like an index.
    w.add_manifest(tagged(with_platform(amd.clone(), AMD64), "shared"));
    w.add_manifest(tagged(with_platform(arm.clone(), ARM64), "shared"));
    w.commit().unwrap();

    let layout = Layout::open(&out).unwrap();
    let got = layout
        .resolve(&Selector::Tag("nested".to_owned()), &platform(ARM64))
        .unwrap();
    assert_eq!(got.manifest_descriptor.digest, arm.digest);
    let shared = Selector::Tag("shared".to_owned());
    let got = layout.resolve(&shared, &platform(AMD64)).unwrap();
    assert_eq!(got.manifest_descriptor.digest, amd.digest);
    assert_eq!(layout.tags(), vec!["nested", "shared"]);
}

#[test]
fn containerd_image_names_count_as_tags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut w = LayoutWriter::new(&out).unwrap();
    let mut desc = add_image(&mut w, &[b"layer"]);
    desc.annotations.insert(
        CONTAINERD_IMAGE_NAME.to_owned(),
        "registry.example:5000/team/app:1.2".to_owned(),
    );
    w.add_manifest(desc.clone());
    w.commit().unwrap();

    let layout = Layout::open(&out).unwrap();
    assert_eq!(layout.tags(), vec!["1.2"]);
    let got = layout
        .resolve(&Selector::Tag("1.2".to_owned()), &Platform::host())
        .unwrap();
    assert_eq!(got.manifest_descriptor.digest, desc.digest);
    assert!(
        layout
            .resolve(&Selector::Tag("2".to_owned()), &Platform::host())
            .is_err()
    );
}

#[test]
fn symlinked_blobs_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    two_tag_layout(&out);
    let layout = Layout::open(&out).unwrap();
    let resolved = layout
        .resolve(&Selector::Tag("a".to_owned()), &Platform::host())
        .unwrap();
    let layer = &resolved.manifest.layers[0];
    let path = layout.blob_path(&layer.digest);
    let elsewhere = dir.path().join("elsewhere");
    fs::rename(&path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    assert_eq!(layout.read_blob_verified(layer, 100).unwrap(), b"layer a");
}

// T14: one byte flipped, truncated, or a NUL appended.
#[test]
fn tampered_blobs_are_rejected_naming_layout_and_digest() {
    type Tamper = fn(&mut Vec<u8>);
    let tampers: [(&str, Tamper); 3] = [
        ("flipped", |b| b[0] ^= 0x20),
        ("truncated", |b| {
            b.pop();
        }),
        ("appended NUL", |b| b.push(0)),
    ];
    for (how, tamper) in tampers {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (a, _) = two_tag_layout(&out);
        let layout = Layout::open(&out).unwrap();
        let resolved = layout
            .resolve(&Selector::Tag("a".to_owned()), &Platform::host())
            .unwrap();
        let layer = resolved.manifest.layers[0].clone();

        for digest in [&a.digest, &layer.digest] {
            let path = layout.blob_path(digest);
            make_writable(&path);
            let mut bytes = fs::read(&path).unwrap();
            tamper(&mut bytes);
            fs::write(&path, bytes).unwrap();
        }

        let err = layout
            .resolve(&Selector::Tag("a".to_owned()), &Platform::host())
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&a.digest.to_string()), "{how}: {msg}");
        assert!(msg.contains(&out.display().to_string()), "{how}: {msg}");
        assert!(matches!(err, Error::Oci(_)), "{how}: {err:?}");

        let err = layout.read_blob_verified(&layer, 1 << 20).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&layer.digest.to_string()), "{how}: {msg}");
        assert!(msg.contains(&out.display().to_string()), "{how}: {msg}");

        let mut streamed = Vec::new();
        let result = layout
            .open_blob_verified(&layer)
            .unwrap()
            .read_to_end(&mut streamed);
        assert_eq!(
            result.unwrap_err().kind(),
            io::ErrorKind::InvalidData,
            "{how}"
        );
    }
}

#[test]
fn index_cycles_are_detected() {
    // A real cycle needs a hash collision, so the resolver is fed blobs without verification.
    let a_digest = Digest::sha256(b"index a");
    let b_digest = Digest::sha256(b"index b");
    let wrapper = |target: &Digest| {
        let mut index = ImageIndex::new();
        index.manifests = vec![Descriptor::new(mt::OCI_INDEX, target.clone(), 1)];
        json::to_canonical_vec(&index)
    };
    let blobs = HashMap::from([
        (a_digest.clone(), wrapper(&b_digest)),
        (b_digest.clone(), wrapper(&a_digest)),
    ]);
    let start = Descriptor::new(mt::OCI_INDEX, a_digest.clone(), 1);
    let err = resolve_from(start, &Platform::host(), "test", |d| {
        Ok(blobs[&d.digest].clone())
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::IndexCycle { ref digest, .. } if *digest == a_digest),
        "{err}"
    );
}

#[test]
fn index_nesting_is_limited() {
    fn chain(levels: usize) -> (Descriptor, HashMap<Digest, Vec<u8>>) {
        let manifest = json::to_canonical_vec(&manifest_for(&[b"x"]));
        let mut current = Descriptor::of_bytes(mt::OCI_MANIFEST, &manifest);
        let mut blobs = HashMap::from([(current.digest.clone(), manifest)]);
        for _ in 0..levels {
            let mut index = ImageIndex::new();
            index.manifests = vec![current];
            let bytes = json::to_canonical_vec(&index);
            current = Descriptor::of_bytes(mt::OCI_INDEX, &bytes);
            blobs.insert(current.digest.clone(), bytes);
        }
        (current, blobs)
    }
    let (start, blobs) = chain(MAX_INDEX_DEPTH);
    let load = |d: &Descriptor| Ok(blobs[&d.digest].clone());
    resolve_from(start, &Platform::host(), "test", load).unwrap();

    let (start, blobs) = chain(MAX_INDEX_DEPTH + 1);
    let load = |d: &Descriptor| Ok(blobs[&d.digest].clone());
    let err = resolve_from(start, &Platform::host(), "test", load).unwrap_err();
    assert!(matches!(err, Error::IndexTooDeep { .. }), "{err}");
}

#[test]
fn commit_swaps_an_existing_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    two_tag_layout(&out);
    let old_layer = Layout::open(&out)
        .unwrap()
        .blob_path(&Digest::sha256(b"layer a"));
    assert!(old_layer.exists());

    multi_platform_layout(&out);
    let layout = Layout::open(&out).unwrap();
    assert_eq!(layout.tags(), vec!["multi"]);
    assert!(!old_layer.exists(), "the old tree is gone");
    assert_eq!(names_in(dir.path()), vec!["out"]);
}

#[test]
fn commit_into_an_empty_dir_or_a_new_path() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    two_tag_layout(&empty);
    assert_eq!(Layout::open(&empty).unwrap().tags(), vec!["a", "b"]);
    let nested_new = dir.path().join("new");
    two_tag_layout(&nested_new);
    assert_eq!(names_in(dir.path()), vec!["empty", "new"]);
}

#[test]
fn commit_refuses_to_replace_other_things() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("precious.txt"), b"keep me").unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"a file").unwrap();

    for target in [&out, &file] {
        let mut w = LayoutWriter::new(target).unwrap();
        add_image(&mut w, &[b"layer"]);
        let err = w.commit().unwrap_err();
        assert!(matches!(err, Error::RefuseToReplace { .. }), "{err}");
        let expected = format!(
            "refusing to replace {}: it is not an OCI image layout",
            target.display()
        );
        assert_eq!(err.to_string(), expected);
    }
    assert_eq!(fs::read(out.join("precious.txt")).unwrap(), b"keep me");
    assert_eq!(names_in(&out), vec!["precious.txt"]);
    assert_eq!(fs::read(&file).unwrap(), b"a file");
    assert_eq!(names_in(dir.path()), vec!["file", "out"]);
}

#[test]
fn a_dropped_writer_leaves_the_old_layout_and_no_temp_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    two_tag_layout(&out);
    let before = fs::read(out.join("index.json")).unwrap();

    let mut w = LayoutWriter::new(&out).unwrap();
    let desc = add_image(&mut w, &[b"new layer"]);
    w.add_manifest(tagged(desc, "new"));
    assert_eq!(
        names_in(dir.path()).len(),
        2,
        "the temp dir exists while writing"
    );
    drop(w);

    assert_eq!(names_in(dir.path()), vec!["out"]);
    assert_eq!(fs::read(out.join("index.json")).unwrap(), before);
    assert_eq!(Layout::open(&out).unwrap().tags(), vec!["a", "b"]);
}

#[test]
fn blobs_from_files_and_readers_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source-blob");
    fs::write(&source, b"content").unwrap();
    let good = Descriptor::of_bytes(mt::OCI_LAYER_TAR, b"content");
    let wrong = Descriptor::of_bytes(mt::OCI_LAYER_TAR, b"contenT");
    let short = Descriptor::new(mt::OCI_LAYER_TAR, good.digest.clone(), 3);

    let out = dir.path().join("out");
    let mut w = LayoutWriter::new(&out).unwrap();
    for bad in [&wrong, &short] {
        let err = w.add_blob_from_file(&source, bad).unwrap_err().to_string();
        assert!(err.contains(&source.display().to_string()), "{err}");
        assert!(err.contains(&bad.digest.to_string()), "{err}");
        let err = w.add_blob_from_reader(&b"content"[..], bad).unwrap_err();
        assert!(matches!(err, Error::Oci(_)), "{err}");
    }
    w.add_blob_from_file(&source, &good).unwrap();
    w.add_blob_from_reader(&b"ignored: already added"[..], &good)
        .unwrap();
    w.add_manifest(tagged(good.clone(), "blob"));
    w.commit().unwrap();
    let blobs: Vec<String> = names_in(&out.join("blobs/sha256"));
    assert_eq!(blobs, vec![good.digest.hex().to_owned()]);
    assert_eq!(
        fs::read(out.join(good.digest.blob_path())).unwrap(),
        b"content"
    );
}

#[test]
fn open_checks_the_layout_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = Layout::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("has no oci-layout file"), "{err}");

    fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    fs::write(
        dir.path().join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let err = Layout::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("2.0.0"), "{err}");

    fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let err = layout
        .resolve(&Selector::Only, &Platform::host())
        .unwrap_err();
    assert!(matches!(err, Error::EmptyLayout { .. }), "{err}");

    fs::write(
        dir.path().join("index.json"),
        br#"{"schemaVersion":2,"manifests":[],"manifests":[]}"#,
    )
    .unwrap();
    assert!(
        Layout::open(dir.path()).is_err(),
        "duplicate keys are rejected"
    );
}

/// A FIFO in place of a blob hung every reader forever (`open` waits for a writer), and
/// `index.json` symlinked to `/dev/zero` was reported as "has no index.json".
#[test]
fn regression_special_files_in_a_layout_hung_or_were_misreported() {
    use crate::test_support::{mkfifo, within};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layout");
    two_tag_layout(&out);
    let desc = Descriptor::of_bytes(mt::OCI_LAYER_TAR, b"layer a");
    let blob = out.join(desc.digest.blob_path());
    fs::remove_file(&blob).unwrap();
    mkfifo(&blob);

    let (layout_dir, fifo_blob) = (out.clone(), blob.clone());
    let err = within(20, move || {
        let layout = Layout::open(&layout_dir).unwrap();
        // Something is there: a bad blob (reading says what it is), not an absent one.
        assert!(layout.has_blob(&Digest::sha256(b"layer a")));
        let d = Descriptor::of_bytes(mt::OCI_LAYER_TAR, b"layer a");
        let from_layout = layout.open_blob_verified(&d).err().unwrap().to_string();
        let copy_dir = tempfile::tempdir().unwrap();
        let mut w = LayoutWriter::new(&copy_dir.path().join("copy")).unwrap();
        let from_file = w
            .add_blob_from_file(&fifo_blob, &d)
            .unwrap_err()
            .to_string();
        let from_copy = w.add_blob_from_layout(&layout, &d).unwrap_err().to_string();
        [from_layout, from_file, from_copy]
    });
    for e in &err {
        assert!(e.contains(&blob.display().to_string()), "{e}");
        assert!(e.contains("FIFO"), "{e}");
    }

    for (name, make) in [
        ("index.json", "fifo"),
        ("oci-layout", "fifo"),
        ("index.json", "/dev/zero"),
    ] {
        let broken = dir.path().join(format!("broken-{name}-{}", make.len()));
        two_tag_layout(&broken);
        let file = broken.join(name);
        fs::remove_file(&file).unwrap();
        if make == "fifo" {
            mkfifo(&file);
        } else {
            std::os::unix::fs::symlink(make, &file).unwrap();
        }
        let open_dir = broken.clone();
        let err = within(20, move || Layout::open(&open_dir).unwrap_err()).to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        let kind = if make == "fifo" {
            "is a FIFO"
        } else {
            "is a character device"
        };
        assert!(err.contains(kind), "{err}");
        assert!(!err.contains("has no"), "{err}");
    }
}

/// Concurrent first writes of one output failed now and then with "cannot move the new layout
/// to …: File exists": the output appeared between the writer's look and its rename.
#[test]
fn regression_concurrent_first_writes_failed_with_file_exists() {
    const WRITERS: usize = 8;
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let barrier = std::sync::Barrier::new(WRITERS);
        std::thread::scope(|s| {
            for i in 0..WRITERS {
                let (out, barrier) = (&out, &barrier);
                s.spawn(move || {
                    let mut w = LayoutWriter::new(out).unwrap();
                    let m = add_image(&mut w, &[format!("layer {i}").as_bytes()]);
                    w.add_manifest(tagged(m, "latest"));
                    barrier.wait();
                    w.commit()
                        .unwrap_or_else(|e| panic!("round {round}, writer {i}: {e}"));
                });
            }
        });
        // One of the writers won; the layout is whole and nothing is left beside it.
        let layout = Layout::open(&out).unwrap();
        layout
            .resolve(&Selector::Tag("latest".into()), &Platform::host())
            .unwrap();
        assert_eq!(names_in(dir.path()), vec!["out".to_owned()]);
    }
}
