//! Building on an OCI layout base: layers and config are kept, env merges, history appends,
//! and a platform is picked from an index.

use std::fs;

use gantry_oci::Digest;
use gantry_test::{TestEnv, assert_mentions, json};

fn inspect(t: &TestEnv, target: &str) -> serde_json::Value {
    json(&t.run(&["inspect", "--json", target]))
}

#[test]
fn base_layers_and_config_are_kept_env_merges_history_appends() {
    let t = crate::env();
    t.run(&[
        "layer",
        "--content",
        "/base.txt=base\n",
        "--info",
        "base.json",
    ]);
    let base = json(&t.run(&[
        "image",
        "--layer",
        "base.json",
        "--env",
        "PATH=/bin",
        "--env",
        "KEEP=1",
        "--env",
        "OVERRIDE=old",
        "--label",
        "from.base=yes",
        "--cmd",
        "/bin/sh",
        "--workdir",
        "/srv",
        "--user",
        "10",
        "-o",
        "base",
        "-t",
        "v1",
    ]));
    t.run(&["layer", "--content", "/app.txt=app\n", "--info", "app.json"]);
    let img = json(&t.run(&[
        "image",
        "--base",
        "base:v1",
        "--layer",
        "app.json",
        "--env",
        "OVERRIDE=new",
        "--env",
        "ADDED=2",
        "--label",
        "from.app=yes",
        "-o",
        "out",
        "-t",
        "v2",
    ]));

    // Layers: the base's, then ours, with the same digests.
    let layers: Vec<&str> = img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0], base["layers"][0]["digest"].as_str().unwrap());

    let i = inspect(&t, "out:v2");
    let c = &i["config"];
    let env: Vec<&str> = c["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(env, ["PATH=/bin", "KEEP=1", "OVERRIDE=new", "ADDED=2"]);
    assert_eq!(c["config"]["Labels"]["from.base"], "yes");
    assert_eq!(c["config"]["Labels"]["from.app"], "yes");
    assert_eq!(c["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(c["config"]["WorkingDir"], "/srv");
    assert_eq!(c["config"]["User"], "10");
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(c["history"].as_array().unwrap().len(), 2);
    assert_eq!(
        i["manifest"]["annotations"]["org.opencontainers.image.base.digest"],
        base["manifest"]["digest"]
    );
    // The base layout is untouched and the merged filesystem has both files.
    let ls = t.run(&["ls", "out:v2"]);
    assert_mentions(&ls, &["/base.txt", "/app.txt"]);
    assert_eq!(inspect(&t, "base:v1")["digest"], base["manifest"]["digest"]);
}

#[test]
fn base_by_digest_and_only_entry() {
    let t = crate::env();
    t.run(&["layer", "--content", "/a=1", "--info", "a.json"]);
    let base = json(&t.run(&["image", "--layer", "a.json", "-o", "base", "-t", "x"]));
    let d = base["manifest"]["digest"].as_str().unwrap();
    for b in [
        format!("base@{d}"),
        "base".to_owned(),
        "oci:base:x".to_owned(),
    ] {
        let img = json(&t.run(&["image", "--base", &b, "-o", "out"]));
        assert_eq!(
            img["layers"][0]["digest"], base["layers"][0]["digest"],
            "{b}"
        );
    }
}

/// Builds one image per platform and a layout whose `index.json` points at a nested index
/// of both (as Yocto's multiarch class and `docker buildx` write them).
fn multi_platform_layout(t: &TestEnv) -> (serde_json::Value, serde_json::Value) {
    let mut metas = Vec::new();
    for (p, dir) in [("linux/amd64", "amd"), ("linux/arm64", "arm")] {
        t.run(&[
            "layer",
            "--content",
            &format!("/platform={p}\n"),
            "--info",
            "l.json",
        ]);
        metas.push(json(&t.run(&[
            "image",
            "--platform",
            p,
            "--layer",
            "l.json",
            "-o",
            dir,
        ])));
    }
    fs::create_dir_all(t.path("multi/blobs/sha256")).unwrap();
    for dir in ["amd", "arm"] {
        for e in fs::read_dir(t.path(dir).join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let dest = t.path("multi/blobs/sha256").join(e.file_name());
            if !dest.exists() {
                fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    let entry = |m: &serde_json::Value, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m["manifest"]["digest"],
            "size": m["manifest"]["size"],
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&metas[0], "amd64"), entry(&metas[1], "arm64")],
    });
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_digest = Digest::sha256(&nested_bytes);
    fs::write(
        t.path("multi/blobs/sha256").join(nested_digest.hex()),
        &nested_bytes,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested_digest.to_string(),
            "size": nested_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    fs::write(
        t.path("multi/index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs::write(
        t.path("multi/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let arm = metas.pop().unwrap();
    let amd = metas.pop().unwrap();
    (amd, arm)
}

#[test]
fn platform_is_picked_from_a_nested_index() {
    let t = crate::env();
    let (amd, arm) = multi_platform_layout(&t);
    for (p, m, arch) in [
        ("linux/arm64", &arm, "arm64"),
        ("linux/amd64", &amd, "amd64"),
    ] {
        let img = json(&t.run(&[
            "image",
            "--base",
            "multi:multi",
            "--platform",
            p,
            "-o",
            "out",
        ]));
        assert_eq!(img["layers"][0]["digest"], m["layers"][0]["digest"], "{p}");
        assert_eq!(img["platform"], p);
        assert_eq!(inspect(&t, "out")["config"]["architecture"], arch);
    }
    // ls and inspect resolve the same way.
    let ls = t.run(&["ls", "--platform", "linux/arm64", "--json", "multi:multi"]);
    assert!(ls.contains(r#""path":"/platform""#), "{ls}");
}

#[test]
fn no_matching_platform_is_a_clear_error() {
    let t = crate::env();
    multi_platform_layout(&t);
    let err = t.fail(&[
        "image",
        "--base",
        "multi:multi",
        "--platform",
        "linux/s390x",
        "-o",
        "out",
    ]);
    assert_mentions(&err, &["linux/s390x", "linux/amd64", "linux/arm64"]);
    assert!(!t.path("out").exists());
}

#[test]
fn artifact_manifest_with_an_empty_config() {
    let t = crate::env();
    t.write("sbom.spdx.json", r#"{"spdxVersion":"SPDX-2.3"}"#);
    t.run(&[
        "layer",
        "--artifact",
        "sbom.spdx.json",
        "--media-type",
        "application/spdx+json",
        "--info",
        "sbom.json",
    ]);
    let info = json(&fs::read_to_string(t.path("sbom.json")).unwrap());
    assert_eq!(
        info["annotations"]["org.opencontainers.image.title"],
        "sbom.spdx.json"
    );
    assert!(info.get("diffId").is_none());
    // Without an artifact type it cannot go into an image.
    let err = t.fail(&["image", "--layer", "sbom.json", "-o", "img"]);
    assert_mentions(&err, &["sbom.json", "application/spdx+json", "artifact"]);
    let meta = json(&t.run(&[
        "image",
        "--artifact-type",
        "application/vnd.example.sbom",
        "--layer",
        "sbom.json",
        "-o",
        "art",
    ]));
    assert_eq!(
        meta["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let i = inspect(&t, "art");
    assert_eq!(
        i["manifest"]["artifactType"],
        "application/vnd.example.sbom"
    );
    assert_eq!(
        i["manifest"]["layers"][0]["digest"],
        gantry_test::sha256_file(&t.path("sbom.spdx.json")).as_str()
    );
}

/// A layout holding a Docker schema 2 manifest (as `docker save`-derived tools and older
/// registries produce) works as a base; the new manifest uses OCI media types for the same
/// blobs.
#[test]
fn docker_schema2_base_is_read_and_converted() {
    let t = crate::env();
    t.run(&["layer", "--content", "/d=docker\n", "--info", "l.json"]);
    let oci = json(&t.run(&[
        "image",
        "--layer",
        "l.json",
        "--env",
        "FROM=docker",
        "-o",
        "base",
    ]));
    let blobs = t.path("base/blobs/sha256");
    let docker = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": oci["config"]["digest"],
            "size": oci["config"]["size"],
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": oci["layers"][0]["digest"],
            "size": oci["layers"][0]["size"],
        }],
    });
    let bytes = serde_json::to_vec(&docker).unwrap();
    let d = Digest::sha256(&bytes);
    fs::write(blobs.join(d.hex()), &bytes).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": d.to_string(),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "docker"},
        }],
    });
    fs::write(
        t.path("base/index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    t.run(&["layer", "--content", "/o=oci\n", "--info", "o.json"]);
    let img = json(&t.run(&[
        "image",
        "--base",
        "base:docker",
        "--layer",
        "o.json",
        "-o",
        "out",
    ]));
    assert_eq!(img["layers"][0]["digest"], oci["layers"][0]["digest"]);
    assert_eq!(
        img["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let i = inspect(&t, "out");
    assert_eq!(i["config"]["config"]["Env"][0], "FROM=docker");
    assert_eq!(
        i["manifest"]["annotations"]["org.opencontainers.image.base.digest"],
        d.to_string().as_str()
    );
}
