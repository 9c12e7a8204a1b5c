//! Registries: push, pull, shallow bases, lock files, platforms, transports; against the real
//! distribution registry (Debian's docker-registry) on 127.0.0.1.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use gantry_oci::Digest;
use gantry_test::registry::{Registry, RegistryOptions};
use gantry_test::{CmdExt, TestEnv, assert_mentions, json, tool};

/// The registry's access log: (method, path, status) per request.
fn access(reg: &Registry) -> Vec<(String, String, u16)> {
    reg.log()
        .lines()
        .filter_map(|l| {
            let start = l.find("] \"")? + 3;
            let rest = &l[start..];
            let end = rest.find('"')?;
            let mut req = rest[..end].split(' ');
            let (method, path) = (req.next()?.to_owned(), req.next()?.to_owned());
            let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
            Some((method, path, status))
        })
        .collect()
}

/// Blob GETs (downloads) since request number `since`, by digest.
fn blob_gets(reg: &Registry, since: usize) -> Vec<String> {
    access(reg)
        .into_iter()
        .skip(since)
        .filter(|(m, p, _)| m == "GET" && p.contains("/blobs/sha256:"))
        .map(|(_, p, _)| p.rsplit('/').next().unwrap().to_owned())
        .collect()
}

/// Blob uploads (PUT/PATCH of upload sessions) since request number `since`.
fn uploads(reg: &Registry, since: usize) -> usize {
    access(reg)
        .into_iter()
        .skip(since)
        .filter(|(m, p, _)| (m == "PUT" || m == "PATCH") && p.contains("/blobs/uploads/"))
        .count()
}

/// gantry with the registry allowed over plain HTTP.
fn g(t: &TestEnv, reg: &Registry, args: &[&str]) -> String {
    let host = reg.host();
    let mut a = vec!["--insecure-registry", host.as_str()];
    a.extend(args);
    t.run(&a)
}

/// Builds a base image of two layers into layout `base` and pushes it to `dest`.
fn push_base(t: &TestEnv, reg: &Registry, dest: &str, marker: &str) -> String {
    t.run(&[
        "layer",
        "--content",
        &format!("/etc/base-{marker}=1\n"),
        "--info",
        "b1.json",
    ]);
    t.run(&[
        "layer",
        "--content",
        &format!("/usr/lib/base-{marker}=2\n"),
        "--info",
        "b2.json",
    ]);
    t.run(&[
        "image",
        "--platform",
        "linux/amd64",
        "--layer",
        "b1.json",
        "--layer",
        "b2.json",
        "--env",
        "FROM_BASE=1",
        "-o",
        "base",
        "-t",
        "1",
    ]);
    let out = g(
        t,
        reg,
        &["push", "oci:base:1", &format!("{}/{dest}", reg.host())],
    );
    out.trim().rsplit('@').next().unwrap().to_owned()
}

fn layer_digests(layout: &Path) -> BTreeSet<String> {
    fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn push_then_skopeo_and_gantry_pull_agree() {
    let reg = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    t.write("src/app.txt", "app\n");
    t.write(
        "gantry.toml",
        format!(
            "[layer.app-files]\nfiles = {{ \"/app.txt\" = \"src/app.txt\" }}\n\n[image.app]\nplatform = \"linux/amd64\"\nlayers = [\"app-files\"]\ncmd = [\"/app.txt\"]\ntags = [\"{h}/team/app:v1\", \"{h}/team/app:latest\"]\n",
            h = reg.host()
        ),
    );
    let build = json(&t.run(&["build", "--json"]));
    let digest = build["images"][0]["digest"].as_str().unwrap().to_owned();
    let out = g(&t, &reg, &["push"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("{}/team/app@{digest}", reg.host()),
            format!("{}/team/app@{digest}", reg.host())
        ]
    );
    // skopeo sees gantry's digest, and copies the same blobs back.
    let inspect = tool("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/team/app:v1", reg.host()),
        ])
        .ok();
    assert_eq!(json(&inspect.stdout)["Digest"], digest.as_str());
    tool("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            &format!("docker://{}/team/app:v1", reg.host()),
            "oci:back:v1",
        ])
        .current_dir(t.root())
        .ok();
    assert_eq!(
        layer_digests(&t.path("back")),
        layer_digests(&t.path("gantry-out/app"))
    );
    // gantry pulls it by digest into an empty store.
    let empty = t.path("other-home");
    t.gantry()
        .env("GANTRY_HOME", &empty)
        .args([
            "--insecure-registry",
            &reg.host(),
            "pull",
            &format!("{}/team/app@{digest}", reg.host()),
            "-o",
            "oci:pulled:v1",
        ])
        .ok();
    let i = json(&t.run(&["inspect", "--json", "pulled:v1"]));
    assert_eq!(i["digest"], digest.as_str());
    assert_eq!(
        layer_digests(&t.path("pulled")),
        layer_digests(&t.path("gantry-out/app"))
    );
    // Pushing again costs HEADs only.
    let before = access(&reg).len();
    let again = json(&g(&t, &reg, &["push", "--json"]));
    for p in again["pushed"].as_array().unwrap() {
        assert_eq!(p["blobs"]["uploaded"], 0, "{again:#}");
        assert_eq!(p["blobs"]["present"], 2);
    }
    assert_eq!(uploads(&reg, before), 0);
    assert!(blob_gets(&reg, before).is_empty());
}

/// A project on a registry base: the base is pinned with `gantry lock`.
fn project_on_registry_base(
    t: &TestEnv,
    reg: &Registry,
    base_repo: &str,
    tags: &[String],
    extra: &str,
) {
    t.write("src/app.txt", "app\n");
    let tags: Vec<String> = tags.iter().map(|s| format!("{s:?}")).collect();
    t.write(
        "gantry.toml",
        format!(
            "[settings]\ninsecure-registries = [\"{h}\"]\n\n[pull.base]\nrepository = \"{h}/{base_repo}\"\ntag = \"1\"\n{extra}\n[layer.app-files]\nfiles = {{ \"/app.txt\" = \"src/app.txt\" }}\n\n[image.app]\nbase = \"base\"\nplatform = \"linux/amd64\"\nlayers = [\"app-files\"]\ntags = [{}]\n",
            tags.join(", "),
            h = reg.host()
        ),
    );
}

#[test]
fn shallow_builds_fetch_manifest_and_config_only_then_mount_or_stream() {
    let reg = Registry::start(RegistryOptions::plain());
    let other = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    let base_digest = push_base(&t, &reg, "lib/base:1", "a");
    let base = json(&t.run(&["inspect", "--json", "base:1"]));
    let base_layers: Vec<String> = base["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let base_config = base["manifest"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    // A fresh store: nothing of the base is local.
    fs::remove_dir_all(t.home()).unwrap();
    project_on_registry_base(
        &t,
        &reg,
        "lib/base",
        &[format!("{}/team/app:v1", reg.host())],
        "",
    );
    let err = t.fail(&["build"]);
    assert_mentions(&err, &["pull.base", "not pinned", "gantry lock"]);
    let lock = t.run(&["lock"]);
    assert_mentions(&lock, &[&base_digest, "pinned"]);

    let before = access(&reg).len();
    let build = json(&t.run(&["build", "--json", "--shallow"]));
    assert_eq!(
        blob_gets(&reg, before),
        std::slice::from_ref(&base_config),
        "only the config blob is fetched"
    );
    assert_eq!(build["images"][0]["layers"].as_array().unwrap().len(), 3);
    // The output layout is shallow: the base layers stay in the registry.
    for d in &base_layers {
        assert!(
            !t.path("gantry-out/app/blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
                .exists()
        );
    }
    let i = json(&t.run(&["inspect", "--json", "gantry-out/app"]));
    assert_eq!(
        i["manifest"]["annotations"]["org.opencontainers.image.base.digest"],
        base_digest.as_str()
    );
    assert_eq!(i["config"]["config"]["Env"][0], "FROM_BASE=1");
    // A rebuild needs no network at all (manifest and config are in the store).
    let before = access(&reg).len();
    t.run(&["build", "--shallow"]);
    assert_eq!(access(&reg).len(), before);

    // Push to the same registry: the base layers are mounted, not uploaded.
    let before = access(&reg).len();
    let pushed = json(&t.run(&["push", "--json"]));
    let blobs = &pushed["pushed"][0]["blobs"];
    assert_eq!(blobs["mounted"], 2, "{pushed:#}");
    assert_eq!(blobs["uploaded"], 2, "the app layer and the config");
    assert!(blob_gets(&reg, before).is_empty(), "nothing downloaded");
    // Push to a second registry: base layers stream from the first, and are not stored.
    let before_src = access(&reg).len();
    let pushed = json(&g(
        &t,
        &other,
        &[
            "push",
            "--json",
            "app",
            &format!("{}/team/app:v1", other.host()),
        ],
    ));
    let blobs = &pushed["pushed"][0]["blobs"];
    assert_eq!(blobs["streamed"], 2, "{pushed:#}");
    let mut got = blob_gets(&reg, before_src);
    got.sort();
    let mut want = base_layers.clone();
    want.sort();
    assert_eq!(got, want);
    for d in &base_layers {
        assert!(
            !t.home()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
                .exists()
        );
    }
    let inspect = tool("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/team/app:v1", other.host()),
        ])
        .ok();
    assert_eq!(
        json(&inspect.stdout)["Digest"],
        pushed["pushed"][0]["digest"]
    );
    // gantry wrote the shallow layout, so it trusts its base.name annotation, which names the
    // repository of the missing layers: another process can push it (mounting them) or copy it
    // (fetching).
    let elsewhere = t.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let layout = format!("oci:{}", t.path("gantry-out/app").display());
    let o = t
        .gantry()
        .current_dir(&elsewhere)
        .args([
            "--insecure-registry",
            &reg.host(),
            "push",
            &layout,
            &format!("{}/team/copy:v1", reg.host()),
        ])
        .ok();
    assert!(o.stderr.contains("2 mounted"), "{}", o.stderr);
    let o = t
        .gantry()
        .current_dir(&elsewhere)
        .args(["copy", &layout, "oci:plain"])
        .fails();
    assert_mentions(&o.stderr, &[&reg.host(), "--insecure-registry"]);
    // A full export fetches them.
    g(
        &t,
        &reg,
        &["export", "app", "--format", "oci", "-o", "full"],
    );
    for d in &base_layers {
        assert!(
            t.path("full/blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
                .exists()
        );
    }
    tool("oci-image-tool")
        .args([
            "validate",
            "--type",
            "image",
            "--ref",
            "name=latest",
            "full",
        ])
        .current_dir(t.root())
        .ok();
}

/// A base in `reg` at `lib/base:1`, a project on it (locked) in a fresh store; returns the
/// base's layer digests and config digest.
fn registry_base_project(t: &TestEnv, reg: &Registry) -> (Vec<String>, String) {
    push_base(t, reg, "lib/base:1", "a");
    let base = json(&t.run(&["inspect", "--json", "base:1"]));
    let layers = base["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let config = base["manifest"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    fs::remove_dir_all(t.home()).unwrap();
    project_on_registry_base(t, reg, "lib/base", &[], "");
    t.run(&["lock"]);
    (layers, config)
}

#[test]
fn regression_build_on_a_registry_base_wrote_a_layout_other_tools_cannot_read() {
    let reg = Registry::start(RegistryOptions::plain());
    let other = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    let (base_layers, base_config) = registry_base_project(&t, &reg);
    // A fresh store: the build fetches the base's layers and writes a complete layout.
    let before = access(&reg).len();
    t.run(&["build"]);
    let mut got = blob_gets(&reg, before);
    got.sort();
    let mut want = base_layers.clone();
    want.push(base_config);
    want.sort();
    assert_eq!(got, want, "the config and every base layer, once");
    let fresh = layer_digests(&t.path("gantry-out/app"));
    assert_eq!(
        fresh.len(),
        5,
        "manifest, config, 2 base layers, the app layer"
    );
    // Every OCI tool reads it.
    tool("umoci")
        .args(["unpack", "--image", "gantry-out/app:latest", "bundle"])
        .current_dir(t.root())
        .ok();
    assert!(t.path("bundle/rootfs/etc/base-a").is_file());
    assert!(t.path("bundle/rootfs/app.txt").is_file());
    tool("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "oci:gantry-out/app:latest",
            &format!("docker://{}/team/app:v1", other.host()),
        ])
        .current_dir(t.root())
        .ok();
    tool("oci-image-tool")
        .args(["validate", "--type", "image", "--ref", "name=latest"])
        .arg("gantry-out/app")
        .current_dir(t.root())
        .ok();
    // A warm store writes the same layout (and needs no network).
    t.run(&["clean"]);
    let before = access(&reg).len();
    t.run(&["build"]);
    assert_eq!(access(&reg).len(), before);
    assert_eq!(layer_digests(&t.path("gantry-out/app")), fresh);
}

#[test]
fn regression_shallow_layout_content_depended_on_the_store() {
    let reg = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    let (base_layers, _) = registry_base_project(&t, &reg);
    t.run(&["build", "--shallow"]);
    let cold = layer_digests(&t.path("gantry-out/app"));
    assert_eq!(cold.len(), 3, "manifest, config, the app layer: {cold:?}");
    // Now the store holds the base layers (a complete build fetched them); a shallow build
    // still writes exactly the same three blobs.
    t.run(&["clean"]);
    t.run(&["build"]);
    t.run(&["clean"]);
    t.run(&["build", "--shallow"]);
    assert_eq!(layer_digests(&t.path("gantry-out/app")), cold);
    // Switching an existing complete layout to shallow rewrites it.
    t.run(&["clean"]);
    t.run(&["build"]);
    t.run(&["build", "--shallow"]);
    assert_eq!(layer_digests(&t.path("gantry-out/app")), cold);
    for d in &base_layers {
        assert!(!cold.contains(d.trim_start_matches("sha256:")));
    }
}

#[test]
fn regression_an_untrusted_layout_made_gantry_contact_the_host_its_base_name_names() {
    let reg = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    registry_base_project(&t, &reg);
    t.run(&["build", "--shallow"]);
    // The same layout read with another store: gantry did not write it there, so its
    // base.name annotation (which anyone could have written) is not followed.
    let stranger = t.path("stranger-home");
    let before = access(&reg).len();
    let o = t
        .gantry()
        .env("GANTRY_HOME", &stranger)
        .args([
            "--insecure-registry",
            &reg.host(),
            "copy",
            "oci:gantry-out/app",
            "oci:copied",
        ])
        .fails();
    assert_mentions(
        &o.stderr,
        &[
            "gantry-out/app",
            "lacks 2 layer blobs",
            "--follow-base-name",
            "lib/base",
        ],
    );
    assert_eq!(
        access(&reg).len(),
        before,
        "no request to the named registry"
    );
    assert!(!t.path("copied").exists());
    // A project based on the shallow layout, in the stranger's store, is refused the same way.
    t.write(
        "other/gantry.toml",
        format!(
            "[settings]\ninsecure-registries = [\"{}\"]\n[image.x]\nbase = \"oci:../gantry-out/app\"\n",
            reg.host()
        ),
    );
    let o = t
        .gantry()
        .env("GANTRY_HOME", &stranger)
        .current_dir(t.path("other"))
        .args(["build"])
        .fails();
    assert_mentions(&o.stderr, &["image.x", "--follow-base-name"]);
    // Told to follow it, it fetches them (into the stranger's store: now it has them).
    t.gantry()
        .env("GANTRY_HOME", &stranger)
        .args([
            "--insecure-registry",
            &reg.host(),
            "--follow-base-name",
            "copy",
            "oci:gantry-out/app",
            "oci:copied",
        ])
        .ok();
    assert_eq!(layer_digests(&t.path("copied")).len(), 5);
    // In the store that wrote the layout, it is followed (and the output is complete).
    t.gantry().current_dir(t.path("other")).args(["build"]).ok();
    assert_eq!(layer_digests(&t.path("other/gantry-out/x")).len(), 5);
}

#[test]
fn moving_a_tag_changes_nothing_until_lock_update() {
    let reg = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    let first = push_base(&t, &reg, "lib/base:1", "first");
    project_on_registry_base(&t, &reg, "lib/base", &[], "");
    t.run(&["lock"]);
    let lock1 = fs::read_to_string(t.path("gantry.lock")).unwrap();
    assert!(lock1.contains(&first), "{lock1}");
    let built1 = json(&t.run(&["build", "--json"]))["images"][0]["digest"].clone();
    // Move the tag.
    let second = push_base(&t, &reg, "lib/base:1", "second");
    assert_ne!(first, second);
    let built2 = json(&t.run(&["build", "--json"]))["images"][0]["digest"].clone();
    assert_eq!(built1, built2, "the lock still pins the first digest");
    t.run(&["lock"]);
    assert_eq!(fs::read_to_string(t.path("gantry.lock")).unwrap(), lock1);
    let out = t.run(&["lock", "--update"]);
    assert_mentions(&out, &[&second, "moved from"]);
    let built3 = json(&t.run(&["build", "--json"]))["images"][0]["digest"].clone();
    assert_ne!(built3, built1);
    // --allow-unpinned resolves the tag without a lock.
    fs::remove_file(t.path("gantry.lock")).unwrap();
    let built4 =
        json(&t.run(&["build", "--json", "--allow-unpinned"]))["images"][0]["digest"].clone();
    assert_eq!(built4, built3);
}

#[test]
fn a_platform_is_picked_from_a_registry_index() {
    let reg = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    // Two images in one OCI index, pushed with skopeo --all.
    let mut manifests = Vec::new();
    for (p, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        t.run(&[
            "layer",
            "--content",
            &format!("/platform={p}\n"),
            "--info",
            "l.json",
        ]);
        let m = json(&t.run(&["image", "--platform", p, "--layer", "l.json", "-o", arch]));
        manifests.push((m, arch));
    }
    fs::create_dir_all(t.path("multi/blobs/sha256")).unwrap();
    for (_, arch) in &manifests {
        for e in fs::read_dir(t.path(arch).join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let _ = fs::copy(e.path(), t.path("multi/blobs/sha256").join(e.file_name()));
        }
    }
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|(m, arch)| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": m["manifest"]["digest"], "size": m["manifest"]["size"],
                "platform": {"os": "linux", "architecture": arch}})
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}))
    .unwrap();
    let d = Digest::sha256(&index);
    fs::write(t.path("multi/blobs/sha256").join(d.hex()), &index).unwrap();
    fs::write(
        t.path("multi/index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d.to_string(),
            "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
        .unwrap(),
    )
    .unwrap();
    fs::write(
        t.path("multi/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    tool("skopeo")
        .args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "oci:multi:1",
            &format!("docker://{}/lib/multi:1", reg.host()),
        ])
        .current_dir(t.root())
        .ok();
    let arm_layer = manifests[1].0["layers"][0]["digest"].clone();
    project_on_registry_base(&t, &reg, "lib/multi", &[], "platform = \"linux/arm64\"\n");
    // The image asks for amd64 but the pull target for arm64: the image's platform wins.
    let toml = fs::read_to_string(t.path("gantry.toml")).unwrap().replace(
        "platform = \"linux/amd64\"\nlayers",
        "platform = \"linux/arm64\"\nlayers",
    );
    t.write("gantry.toml", toml);
    t.run(&["lock"]);
    let b = json(&t.run(&["build", "--json"]));
    assert_eq!(b["images"][0]["layers"][0]["digest"], arm_layer);
    assert_eq!(b["images"][0]["platform"], "linux/arm64");
    let toml = fs::read_to_string(t.path("gantry.toml")).unwrap().replace(
        "platform = \"linux/arm64\"\nlayers",
        "platform = \"linux/s390x\"\nlayers",
    );
    t.write("gantry.toml", toml);
    let err = t.fail(&["build"]);
    assert_mentions(&err, &["linux/s390x", "linux/amd64", "linux/arm64"]);
    // The earlier output is untouched.
    let kept = json(&t.run(&["inspect", "--json", "gantry-out/app"]));
    assert_eq!(kept["digest"], b["images"][0]["digest"]);
}

#[test]
fn transports_keep_digests_and_archives_load() {
    let reg = Registry::start(RegistryOptions::plain());
    let t = crate::env();
    t.write("src/a.txt", "a\n");
    t.write(
        "gantry.toml",
        "[layer.a]\nfiles = { \"/a.txt\" = \"src/a.txt\" }\n\n[image.img]\nplatform = \"linux/amd64\"\nlayers = [\"a\"]\ntag = \"v2\"\ntags = [\"example.com/team/img:v2\"]\n",
    );
    let digest = json(&t.run(&["build", "--json"]))["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    // oci-archive: skopeo reads gantry's digest.
    t.run(&["export", "img", "--format", "oci-archive", "-o", "img.tar"]);
    let i = tool("skopeo")
        .args(["inspect", "oci-archive:img.tar:v2"])
        .current_dir(t.root())
        .ok();
    assert_eq!(json(&i.stdout)["Digest"], digest.as_str());
    // copy between transports keeps the digest: oci -> oci-archive -> oci has every blob of
    // the original, byte for byte.
    t.run(&["copy", "oci-archive:img.tar:v2", "oci:copied:v2"]);
    assert_eq!(
        json(&t.run(&["inspect", "--json", "copied:v2"]))["digest"],
        digest.as_str()
    );
    assert_eq!(
        layer_digests(&t.path("copied")),
        layer_digests(&t.path("gantry-out/img"))
    );
    for d in layer_digests(&t.path("copied")) {
        assert_eq!(
            fs::read(t.path("copied/blobs/sha256").join(&d)).unwrap(),
            fs::read(t.path("gantry-out/img/blobs/sha256").join(&d)).unwrap()
        );
    }
    g(
        &t,
        &reg,
        &[
            "copy",
            "oci:copied:v2",
            &format!("docker://{}/team/img:v2", reg.host()),
        ],
    );
    let i = tool("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/team/img:v2", reg.host()),
        ])
        .ok();
    assert_eq!(json(&i.stdout)["Digest"], digest.as_str());
    // docker-archive: podman loads it (into its own temporary storage).
    t.run(&[
        "export",
        "img",
        "--format",
        "docker-archive",
        "-o",
        "img-docker.tar",
    ]);
    let config =
        json(&t.run(&["inspect", "--json", "gantry-out/img"]))["manifest"]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
    let root = t.path("podman-root");
    let runroot = t.path("podman-run");
    let podman = |args: &[&str]| {
        tool("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .current_dir(t.root())
            .ok()
    };
    // skopeo reads it: same config, same layers (docker-archive carries no manifest digest, and
    // skopeo names its layers by their uncompressed digests).
    let i = tool("skopeo")
        .args(["inspect", "docker-archive:img-docker.tar"])
        .current_dir(t.root())
        .ok();
    let i = json(&i.stdout);
    let built = json(&t.run(&["inspect", "--json", "gantry-out/img"]));
    assert_eq!(i["Layers"], built["config"]["rootfs"]["diff_ids"]);
    let raw = tool("skopeo")
        .args([
            "inspect",
            "--raw",
            "--config",
            "docker-archive:img-docker.tar",
        ])
        .current_dir(t.root())
        .ok();
    assert_eq!(
        Digest::sha256(raw.stdout.as_bytes()).to_string(),
        config,
        "same config bytes"
    );
    podman(&["load", "-i", "img-docker.tar"]);
    let inspect = podman(&["image", "inspect", "example.com/team/img:v2"]);
    assert_eq!(
        json(&inspect.stdout)[0]["Id"],
        config.trim_start_matches("sha256:")
    );
    // Recompression is on request, and keeps the diff_ids.
    t.run(&[
        "copy",
        "--recompress",
        "zstd",
        "oci:copied:v2",
        "oci:zstd:v2",
    ]);
    let z = json(&t.run(&["inspect", "--json", "zstd:v2"]));
    assert_ne!(z["digest"], digest.as_str());
    assert_eq!(
        z["manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let orig = json(&t.run(&["inspect", "--json", "copied:v2"]));
    assert_eq!(z["config"]["rootfs"], orig["config"]["rootfs"]);
}
