//! The commands' own behaviour: output formats of layer, image, inspect and ls; tar import.

use std::fs;
use std::os::unix::fs::MetadataExt;

use gantry_test::{CmdExt, assert_mentions, json, sha256_file, tool};

#[test]
fn layer_prints_info_json_and_exports_the_blob() {
    let t = crate::env();
    let out = t.run(&["layer", "--content", "/a=1", "-o", "a.tar.gz"]);
    let info = json(&out);
    assert_eq!(
        info["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        info["digest"].as_str().unwrap(),
        sha256_file(&t.path("a.tar.gz"))
    );
    assert_eq!(info["history"]["created_by"], "gantry layer");
    // Canonical JSON: sorted keys, no spaces.
    assert!(out.starts_with(r#"{"diffId":"sha256:"#), "{out}");
    // The export is a hard link into the store (same filesystem), read-only.
    let md = fs::metadata(t.path("a.tar.gz")).unwrap();
    assert_eq!(md.nlink(), 2);
    assert_eq!(md.mode() & 0o777, 0o444);
    // Running again replaces the output.
    t.run(&[
        "layer",
        "--content",
        "/a=2",
        "-o",
        "a.tar.gz",
        "--info",
        "a.json",
    ]);
    let info2 = json(&fs::read_to_string(t.path("a.json")).unwrap());
    assert_eq!(
        info2["digest"].as_str().unwrap(),
        sha256_file(&t.path("a.tar.gz"))
    );
    assert_ne!(info2["digest"], info["digest"]);
}

#[test]
fn tar_layers_are_kept_or_recompressed() {
    let t = crate::env();
    t.write("src/x/y.txt", "yes\n");
    tool("tar")
        .args(["-C", "src", "-czf", "in.tar.gz", "x"])
        .current_dir(t.root())
        .ok();
    let kept = json(&t.run(&["layer", "--tar", "in.tar.gz"]));
    assert_eq!(
        kept["digest"].as_str().unwrap(),
        sha256_file(&t.path("in.tar.gz"))
    );
    assert_eq!(
        kept["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let re = json(&t.run(&[
        "layer",
        "--tar",
        "in.tar.gz",
        "--recompress",
        "--compression",
        "zstd",
    ]));
    assert_eq!(
        re["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(re["diffId"], kept["diffId"]);
    assert_ne!(re["digest"], kept["digest"]);
    let ls = t.run(&["ls", "in.tar.gz"]);
    assert_mentions(&ls, &["/x/y.txt", "/x"]);
}

#[test]
fn inspect_describes_images_blobs_and_infos() {
    let t = crate::env();
    t.run(&[
        "layer",
        "--content",
        "/a=1",
        "-o",
        "l.tgz",
        "--info",
        "l.json",
        "--comment",
        "why",
    ]);
    t.run(&[
        "image",
        "--layer",
        "l.json",
        "--entrypoint",
        r#"["/bin/sh","-c"]"#,
        "--cmd",
        "echo hi",
        "--env",
        "A=1",
        "--port",
        "80",
        "--volume",
        "/data",
        "--label",
        "k=v",
        "--stop-signal",
        "SIGINT",
        "--author",
        "me",
        "--annotation",
        "note=yes",
        "-o",
        "out",
        "-t",
        "v1",
    ]);
    let human = t.run(&["inspect", "out:v1"]);
    assert_mentions(
        &human,
        &[
            "Tags         v1",
            r#"Entrypoint   ["/bin/sh","-c"]"#,
            r#"Cmd          ["echo hi"]"#,
            "Env          A=1",
            "Port         80/tcp",
            "Volume       /data",
            "Label        k=v",
            "StopSignal   SIGINT",
            "Annotation   note=yes",
            "gantry layer",
        ],
    );
    let blob = json(&t.run(&["inspect", "--json", "l.tgz"]));
    let info = json(&t.run(&["inspect", "--json", "l.json"]));
    assert_eq!(blob["kind"], "layer");
    assert_eq!(blob["digest"], info["digest"]);
    assert_eq!(blob["diffId"], info["diffId"]);
    assert_eq!(blob["entries"], 1);
    assert_eq!(info["inStore"], true);
    assert_eq!(info["history"]["comment"], "why");
}

#[test]
fn ls_merges_layers_and_applies_whiteouts() {
    let t = crate::env();
    t.run(&[
        "layer",
        "--content",
        "/etc/keep=1",
        "--content",
        "/etc/gone=2",
        "--content",
        "/var/cache/old=3",
        "--content",
        "/var/cache/sub/old=4",
        "--info",
        "l1.json",
    ]);
    t.run(&[
        "layer",
        "--whiteout",
        "/etc/gone",
        "--opaque",
        "/var/cache",
        "--content",
        "/var/cache/new=5",
        "--info",
        "l2.json",
    ]);
    t.run(&[
        "image", "--layer", "l1.json", "--layer", "l2.json", "-o", "out",
    ]);
    let merged: Vec<serde_json::Value> =
        t.run(&["ls", "--json", "out"]).lines().map(json).collect();
    let paths: Vec<&str> = merged.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/etc", "/etc/keep", "/var", "/var/cache", "/var/cache/new"],
        "{merged:?}"
    );
    let new = merged
        .iter()
        .find(|r| r["path"] == "/var/cache/new")
        .unwrap();
    assert_eq!(new["layer"], 1);
    assert_eq!(
        new["digest"],
        gantry_oci::Digest::sha256(b"5").to_string().as_str()
    );
    // Layer by layer, whiteouts are visible as entries.
    let raw = t.run(&["ls", "--layers", "out"]);
    assert_mentions(
        &raw,
        &[
            "/etc/.wh.gone",
            "/var/cache/.wh..wh..opq",
            "/var/cache/sub/old",
        ],
    );
    // A piped reader that stops early is not an error.
    gantry_test::sh(
        &format!("'{}' ls --layers out | head -1", crate::GANTRY),
        &[("GANTRY_HOME", t.home().as_os_str())],
    )
    .current_dir(t.root())
    .ok();
}

#[test]
fn gc_and_fsck_report() {
    let t = crate::env();
    t.run(&["layer", "--content", "/a=1", "--info", "keep.json"]);
    t.run(&["layer", "--content", "/b=2"]);
    let fsck = t.run(&["fsck"]);
    assert_mentions(&fsck, &["checked 2 blobs: no problems"]);
    let gc = t.run(&["gc", "--dry-run"]);
    assert_mentions(&gc, &["would remove 1 blobs"]);
    let gc = t.run(&["gc"]);
    assert_mentions(&gc, &["removed 1 blobs", "kept 1"]);
    assert_mentions(&t.run(&["fsck"]), &["checked 1 blobs: no problems"]);
}
