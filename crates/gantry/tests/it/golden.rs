//! The golden image: a small image whose digests are pinned. If this test fails, the bytes
//! gantry writes have changed: tar headers, compression, JSON or defaults. That breaks every
//! user's cache and reproducibility promise, so it must be a deliberate, reviewed change:
//! update the constants in the same commit and say why in its message.

use gantry_test::json;

const LAYER_GZIP: &str = "sha256:81e60ed8d3abec1e9ac0d931f3ef769ebebdecad7d1b2811cb315c4a961e94d0";
const LAYER_ZSTD: &str = "sha256:c9be53b6f96d860d1566486a260b61350077f12a338ba948656c2953b744e2e0";
const LAYER_TAR: &str = "sha256:af62a07ca3a731f4e9f290078deaa522d4bacc110cd7f2f82702685519b0e7a4";
const DIFF_ID: &str = "sha256:af62a07ca3a731f4e9f290078deaa522d4bacc110cd7f2f82702685519b0e7a4";
const CONFIG: &str = "sha256:3958308a3d9b1d38daad6090647f7d454996cc66bf73399c3f06609864dc677a";
const MANIFEST: &str = "sha256:9a260012a3cc45a0e82647a8229040c889a3aff967536d503023c945acded443";

#[test]
fn golden_image_digests_are_stable() {
    let t = crate::env();
    let layer = |compression: &str| {
        t.run(&[
            "layer",
            "--content",
            "/etc/motd=hello, golden\n",
            "--content",
            "/app/bin/tool=#!/bin/sh\necho golden\n",
            "--metadata",
            r#"/app/bin/tool={"mode":"0755","uid":1000,"gid":1000,"mtime":"2024-01-01T00:00:00Z"}"#,
            "--symlink",
            "/usr/bin/tool=/app/bin/tool",
            "--hardlink",
            "/app/bin/tool2=/app/bin/tool",
            "--empty-dir",
            "/var/empty",
            "--whiteout",
            "/etc/old.conf",
            "--compression",
            compression,
            "--info",
            &format!("{compression}.json"),
        ]);
        json(&std::fs::read_to_string(t.path(format!("{compression}.json"))).unwrap())
    };
    let gz = layer("gzip");
    let zs = layer("zstd");
    let tar = layer("none");
    let got = [
        (
            "gzip layer",
            gz["digest"].as_str().unwrap().to_owned(),
            LAYER_GZIP,
        ),
        (
            "zstd layer",
            zs["digest"].as_str().unwrap().to_owned(),
            LAYER_ZSTD,
        ),
        (
            "tar layer",
            tar["digest"].as_str().unwrap().to_owned(),
            LAYER_TAR,
        ),
        (
            "diff_id",
            gz["diffId"].as_str().unwrap().to_owned(),
            DIFF_ID,
        ),
    ];
    // Every compression wraps the same tar.
    assert_eq!(zs["diffId"], gz["diffId"]);
    assert_eq!(tar["diffId"], gz["diffId"]);
    let meta = json(&t.run(&[
        "image",
        "--platform",
        "linux/amd64",
        "--layer",
        "gzip.json",
        "--layer",
        "zstd.json",
        "--entrypoint",
        "/app/bin/tool",
        "--env",
        "PATH=/usr/bin:/bin",
        "--label",
        "org.opencontainers.image.title=golden",
        "--port",
        "8080",
        "--user",
        "1000:1000",
        "--workdir",
        "/app",
        "-o",
        "out",
        "-t",
        "golden",
    ]));
    let mut all: Vec<(&str, String, &str)> = got.to_vec();
    all.push((
        "config",
        meta["config"]["digest"].as_str().unwrap().to_owned(),
        CONFIG,
    ));
    all.push((
        "manifest",
        meta["manifest"]["digest"].as_str().unwrap().to_owned(),
        MANIFEST,
    ));
    let drift: Vec<String> = all
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: pinned {want}, now {got}"))
        .collect();
    assert!(
        drift.is_empty(),
        "the output format drifted (see the comment at the top of golden.rs):\n{}",
        drift.join("\n")
    );
}
