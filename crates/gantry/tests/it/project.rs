//! Projects: `gantry build` with its content-keyed cache, parallelism, auto labels, and the
//! errors of a bad gantry.toml.

use std::fs;

use gantry_test::{CmdExt, TestEnv, assert_mentions, json, sha256_file};

/// A project with two independent images (each on its own ~16 MiB incompressible layer, so
/// building takes long enough to overlap) and a third image on one of them.
fn project(t: &TestEnv) {
    let noise = |seed: u8| -> Vec<u8> {
        // xorshift: incompressible, reproducible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(seed);
        (0..16 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    t.write("src/one/data.bin", noise(1));
    t.write("src/two/data.bin", noise(2));
    t.write("src/app/main.sh", "#!/bin/sh\necho app\n");
    t.chmod("src/app/main.sh", 0o755);
    t.write("src/conf/app.conf", "level = 1\n");
    // Inputs older than the stat cache's racy window, as in a real checkout.
    gantry_test::sh("find src -exec touch -d @1500000000 {} +", &[])
        .current_dir(t.root())
        .ok();
    t.write(
        "gantry.toml",
        r#"[settings]
compression = "gzip"

[layer.one]
dirs = { "/data/one" = "src/one" }

[layer.two]
dirs = { "/data/two" = "src/two" }

[layer.code]
files = { "/app/main.sh" = "src/app/main.sh" }

[layer.conf]
files = { "/etc/app.conf" = "src/conf/app.conf" }

[image.first]
layers = ["one", "conf"]
platform = "linux/amd64"

[image.second]
layers = ["two"]
platform = "linux/amd64"

[image.app]
base = "first"
layers = ["code"]
entrypoint = ["/app/main.sh"]
"#,
    );
}

fn build(t: &TestEnv, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["build", "--json"];
    args.extend(extra);
    json(&t.run(&args))
}

fn digests(r: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn hits(r: &serde_json::Value) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["cacheHit"].as_bool().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
    v.iter().map(|(n, h)| ((*n).to_owned(), *h)).collect()
}

/// Sets a file's mtime (keeping its content).
fn touch(t: &TestEnv, rel: &str, epoch: i64) {
    gantry_test::sh(&format!("touch -d @{epoch} '{rel}'"), &[])
        .current_dir(t.root())
        .ok();
}

#[test]
fn no_op_rebuild_is_all_hits_and_changes_rebuild_only_what_they_touch() {
    let t = crate::env();
    project(&t);
    let cold = build(&t, &[]);
    assert_eq!(cold["cache"]["hits"], 0);
    assert_eq!(cold["cache"]["misses"], 4);

    // Nothing changed: every layer is a hit, the digests are the same, nothing is written.
    let warm = build(&t, &[]);
    assert_eq!(warm["cache"]["misses"], 0, "{warm:#}");
    assert_eq!(digests(&warm), digests(&cold));
    assert!(
        warm["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["upToDate"] == true)
    );

    // A new mtime with the same content: still a hit, same digest.
    touch(&t, "src/one/data.bin", 1_000_000_000);
    let touched = build(&t, &[]);
    assert_eq!(touched["cache"]["misses"], 0, "{touched:#}");
    assert_eq!(digests(&touched), digests(&cold));

    // One byte of one input: only its layer, and the images using it, are rebuilt.
    let mut conf = fs::read(t.path("src/conf/app.conf")).unwrap();
    conf[8] = b'2';
    fs::write(t.path("src/conf/app.conf"), conf).unwrap();
    let changed = build(&t, &[]);
    assert_eq!(
        hits(&changed),
        pairs(&[
            ("code", true),
            ("conf", false),
            ("one", true),
            ("two", true)
        ])
    );
    let before = digests(&cold);
    let after = digests(&changed);
    assert_ne!(before[0], after[0], "app is built on first, which changed");
    assert_ne!(before[1], after[1], "first holds conf");
    assert_eq!(before[2], after[2], "second does not use conf");
    let written: Vec<&str> = changed["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["upToDate"] == false)
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
}

#[test]
fn independent_images_build_in_parallel_with_the_same_digests_as_one_job() {
    let t = crate::env();
    project(&t);
    let parallel = json(
        &t.gantry()
            .env("GANTRY_JOBS", "2")
            .args(["build", "--json", "first", "second"])
            .ok()
            .stdout,
    );
    let span = |name: &str| {
        let l = parallel["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap();
        (
            l["startedMs"].as_u64().unwrap(),
            l["finishedMs"].as_u64().unwrap(),
        )
    };
    let (a0, a1) = span("one");
    let (b0, b1) = span("two");
    assert!(
        a0 < b1 && b0 < a1,
        "layers one {a0}..{a1} and two {b0}..{b1} did not overlap"
    );

    let serial_home = t.path("serial-home");
    let serial = json(
        &t.gantry()
            .env("GANTRY_JOBS", "1")
            .env("GANTRY_HOME", &serial_home)
            .args(["build", "--json", "first", "second"])
            .ok()
            .stdout,
    );
    assert_eq!(
        serial["cache"]["hits"], 0,
        "a fresh store builds everything"
    );
    assert_eq!(digests(&serial), digests(&parallel));
}

#[test]
fn deleting_the_caches_gives_the_same_digests() {
    let t = crate::env();
    project(&t);
    // The stat cache records only files whose last change (mtime or ctime) is older than its
    // 2 s racy window; ctime cannot be set back, so wait it out.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let first = build(&t, &[]);
    assert!(
        t.home().join("stat-v1").is_dir(),
        "the stat cache was saved"
    );
    fs::remove_dir_all(t.home().join("cache-v1")).unwrap();
    let no_action_cache = build(&t, &[]);
    assert_eq!(no_action_cache["cache"]["hits"], 0);
    assert_eq!(digests(&no_action_cache), digests(&first));
    fs::remove_dir_all(t.home().join("stat-v1")).unwrap();
    let no_stat_cache = build(&t, &[]);
    assert_eq!(
        no_stat_cache["cache"]["misses"], 0,
        "the action cache still answers"
    );
    assert!(
        no_stat_cache["cache"]["statMisses"].as_u64().unwrap() >= 4,
        "inputs were rehashed"
    );
    assert_eq!(digests(&no_stat_cache), digests(&first));
}

fn layer_blob(t: &TestEnv, r: &serde_json::Value, name: &str) -> std::path::PathBuf {
    let d = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    t.home()
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"))
}

#[test]
fn a_cache_entry_with_a_missing_blob_is_rebuilt() {
    let t = crate::env();
    project(&t);
    let first = build(&t, &[]);
    let blob = layer_blob(&t, &first, "conf");
    // The image layouts hard-link it too; remove the store's copy only.
    fs::remove_file(&blob).unwrap();
    let out = t.gantry().args(["build", "--json"]).ok();
    assert_mentions(
        &out.stderr,
        &["layer.conf", "missing or damaged blob; rebuilding"],
    );
    let again = json(&out.stdout);
    assert_eq!(hits(&again)[1], ("conf".to_owned(), false));
    assert_eq!(again["cache"]["hits"], 3);
    assert_eq!(digests(&again), digests(&first));
    assert!(blob.is_file());
    assert_eq!(
        sha256_file(&blob),
        format!("sha256:{}", blob.file_name().unwrap().to_str().unwrap())
    );
}

#[test]
fn a_cache_entry_with_a_damaged_blob_is_rebuilt() {
    let t = crate::env();
    project(&t);
    let first = build(&t, &[]);
    let blob = layer_blob(&t, &first, "code");
    // Damage it in place (same size): the store's copy and every hard link to it.
    let mut bytes = fs::read(&blob).unwrap();
    bytes[20] ^= 0xff;
    t.chmod(blob.strip_prefix(t.root()).unwrap(), 0o644);
    fs::write(&blob, &bytes).unwrap();
    let out = t.gantry().args(["build", "--json"]).ok();
    assert_mentions(
        &out.stderr,
        &["layer.code", "missing or damaged blob; rebuilding"],
    );
    let again = json(&out.stdout);
    assert_eq!(hits(&again)[0], ("code".to_owned(), false));
    assert_eq!(digests(&again), digests(&first));
    assert_eq!(
        sha256_file(&blob),
        format!("sha256:{}", blob.file_name().unwrap().to_str().unwrap())
    );
}

#[test]
fn a_tampered_cache_entry_is_not_trusted() {
    let t = crate::env();
    project(&t);
    let first = build(&t, &[]);
    // Point the other entries at code's (intact) blob: they no longer describe their output.
    let entries: Vec<_> = walkdir(&t.home().join("cache-v1"));
    let app = layer_blob(&t, &first, "code");
    let app_digest = format!("sha256:{}", app.file_name().unwrap().to_str().unwrap());
    let mut tampered = 0;
    for e in entries {
        let text = fs::read_to_string(&e).unwrap();
        let mut v = json(&text);
        if v["value"]["digest"] != app_digest.as_str() {
            v["outputs"][0]["digest"] = serde_json::Value::String(app_digest.clone());
            fs::write(&e, serde_json::to_vec(&v).unwrap()).unwrap();
            tampered += 1;
        }
    }
    assert_eq!(tampered, 3);
    let again = build(&t, &[]);
    assert_eq!(again["cache"]["hits"], 1, "{again:#}");
    assert_eq!(digests(&again), digests(&first));
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out
}

/// Bad project files: each error names file:line, the build exits non-zero and writes nothing.
fn bad(t: &TestEnv, toml: &str, needles: &[&str]) {
    t.write("src/a.txt", "a");
    t.write("gantry.toml", toml);
    let err = t.fail(&["build"]);
    assert_mentions(&err, needles);
    assert!(
        !t.path("gantry-out").exists(),
        "output written despite the error"
    );
    assert!(
        !t.home().join("blobs").exists()
            || fs::read_dir(t.home().join("blobs/sha256"))
                .unwrap()
                .next()
                .is_none(),
        "blobs written despite the error"
    );
}

#[test]
fn layer_referenced_but_not_defined() {
    let t = crate::env();
    bad(
        &t,
        "[image.i]\nlayers = [\"ghost\"]\n",
        &["gantry.toml:2:11", "image.i.layers[0]", "ghost"],
    );
}

#[test]
fn cycle_between_images() {
    let t = crate::env();
    bad(
        &t,
        "[image.a]\nbase = \"b\"\n\n[image.b]\nbase = \"a\"\n",
        &["gantry.toml:2:1", "image.a.base", "cycle: a -> b -> a"],
    );
}

#[test]
fn invalid_base() {
    let t = crate::env();
    bad(
        &t,
        "[image.i]\nbase = \"oci:nowhere:v1\"\n",
        &["gantry.toml:2:1", "image.i.base", "nowhere"],
    );
    bad(
        &t,
        "[image.i]\nbase = \"somewhere\"\n",
        &["gantry.toml:2:1", "unknown base \"somewhere\""],
    );
}

#[test]
fn malformed_label_key() {
    let t = crate::env();
    bad(
        &t,
        "[layer.l]\nfiles = { \"/a\" = \"src/a.txt\" }\n\n[image.i]\nlayers = [\"l\"]\nlabels = { \"bad key\" = \"x\" }\n",
        &[
            "gantry.toml:6:12",
            "image.i.labels.\"bad key\"",
            "invalid label key",
        ],
    );
}

#[test]
fn toml_syntax_error() {
    let t = crate::env();
    bad(&t, "[image.i]\nlayers = [\"l\"\n", &["gantry.toml:2:"]);
}

#[test]
fn missing_input_file() {
    let t = crate::env();
    bad(
        &t,
        "[layer.l]\nfiles = { \"/a\" = \"src/a.txt\", \"/b\" = \"src/missing.txt\" }\n\n[image.i]\nlayers = [\"l\"]\n",
        &["gantry.toml:2:", "layer.l.files.\"/b\"", "src/missing.txt"],
    );
}

#[test]
fn unknown_target_on_the_command_line() {
    let t = crate::env();
    t.write("gantry.toml", "[image.i]\n");
    let err = t.fail(&["build", "nope"]);
    assert_mentions(&err, &["nope", "targets: i"]);
}

#[test]
fn a_layer_target_alone_and_clean() {
    let t = crate::env();
    project(&t);
    let r = build(&t, &["conf"]);
    assert_eq!(r["layers"].as_array().unwrap().len(), 1);
    assert!(r["images"].as_array().unwrap().is_empty());
    build(&t, &[]);
    assert!(t.path("gantry-out/app/oci-layout").is_file());
    t.run(&["clean"]);
    assert!(!t.path("gantry-out").exists());
    // clean never removes what is not a layout.
    t.write("gantry-out/first/notes.txt", "mine");
    let err = t.fail(&["clean"]);
    assert_mentions(&err, &["gantry-out/first", "not an OCI image layout"]);
    assert!(t.path("gantry-out/first/notes.txt").is_file());
}

#[test]
fn auto_labels_from_git() {
    let t = crate::env();
    t.write("src/a.txt", "a");
    t.write(
        "gantry.toml",
        r#"[layer.l]
files = { "/a" = "src/a.txt" }

[image.plain]
layers = ["l"]

[image.labelled]
layers = ["l"]
auto-labels = true

[image.custom]
layers = ["l"]
auto-labels = { revision = "pinned", ref-name = "none", created = "git" }

[image.branched]
layers = ["l"]
auto-labels = { ref-name = "git" }
"#,
    );
    let git = |args: &[&str]| {
        gantry_test::tool("git")
            .args(args)
            .current_dir(t.root())
            .env("GIT_AUTHOR_DATE", "@1600000000 +0000")
            .env("GIT_COMMITTER_DATE", "@1600000000 +0000")
            .ok()
            .stdout
    };
    git(&["init", "-q", "-b", "feature"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@e", "add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@e",
        "commit",
        "-q",
        "-m",
        "one",
    ]);
    let head = git(&["rev-parse", "HEAD"]).trim().to_owned();
    t.gantry()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build"])
        .ok();
    let labels = |name: &str| {
        json(&t.run(&["inspect", "--json", &format!("gantry-out/{name}")]))["config"]["config"]
            ["Labels"]
            .clone()
    };
    assert!(labels("plain").is_null());
    let l = labels("labelled");
    assert_eq!(l["org.opencontainers.image.revision"], head.as_str());
    // The branch is opt-in: the default labels depend on the commit only.
    assert!(l.get("org.opencontainers.image.ref.name").is_none(), "{l}");
    assert_eq!(
        labels("branched")["org.opencontainers.image.ref.name"],
        "feature"
    );
    assert_eq!(
        l["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    let c = labels("custom");
    assert_eq!(c["org.opencontainers.image.revision"], "pinned");
    assert!(c.get("org.opencontainers.image.ref.name").is_none());
    assert_eq!(
        c["org.opencontainers.image.created"],
        "2020-09-13T12:26:40Z"
    );
}

/// A project with `auto-labels = true` and `source-date-epoch = "git"`, committed in a git
/// checkout on branch `feature`.
fn labelled_checkout(t: &gantry_test::TestEnv) {
    t.write("src/a.txt", "a");
    t.write(
        "gantry.toml",
        "[settings]\nsource-date-epoch = \"git\"\nauto-labels = true\n\n[layer.l]\nfiles = { \"/a\" = \"src/a.txt\" }\n\n[image.i]\nlayers = [\"l\"]\n",
    );
    for args in [
        &["init", "-q", "-b", "feature"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "one",
        ],
    ] {
        gantry_test::tool("git")
            .args(args)
            .current_dir(t.root())
            .env("GIT_COMMITTER_DATE", "@1600000000 +0000")
            .env("GIT_AUTHOR_DATE", "@1600000000 +0000")
            .ok();
    }
}

fn image_digest(t: &gantry_test::TestEnv, args: &[&str]) -> String {
    let mut a = vec!["build", "--json"];
    a.extend(args);
    let r = json(&t.run(&a));
    r["images"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn regression_a_checkout_owned_by_another_user_lost_its_revision_labels() {
    let t = crate::env();
    labelled_checkout(&t);
    let ours = image_digest(&t, &[]);
    // The checkout now belongs to another uid, as in a CI container: git calls it dubious.
    gantry_test::tool("chown")
        .args(["-R", "65534:65534"])
        .arg(t.root().join(".git"))
        .arg(t.root().join("src"))
        .arg(t.root().join("gantry.toml"))
        .ok();
    gantry_test::tool("chown")
        .args(["65534:65534"])
        .arg(t.root())
        .ok();
    let plain = gantry_test::tool("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(t.root())
        .env("HOME", t.user_home())
        .fails();
    assert_mentions(&plain.stderr, &["dubious ownership"]);
    // Same labels, same epoch, same digest, even with -q.
    t.run(&["clean"]);
    assert_eq!(image_digest(&t, &["-q"]), ours);
    let i = json(&t.run(&["inspect", "--json", "gantry-out/i"]));
    let rev = i["config"]["config"]["Labels"]["org.opencontainers.image.revision"].clone();
    assert_eq!(rev.as_str().map(str::len), Some(40), "{i}");
    assert_eq!(i["config"]["created"], "2020-09-13T12:26:40Z");
}

#[test]
fn regression_the_branch_name_changed_the_digest() {
    let t = crate::env();
    labelled_checkout(&t);
    let on_branch = image_digest(&t, &[]);
    gantry_test::tool("git")
        .args(["checkout", "-q", "--detach"])
        .current_dir(t.root())
        .ok();
    assert_eq!(image_digest(&t, &[]), on_branch, "a detached CI checkout");
    gantry_test::tool("git")
        .args(["checkout", "-q", "-b", "main"])
        .current_dir(t.root())
        .ok();
    assert_eq!(image_digest(&t, &[]), on_branch, "another branch");
}

#[test]
fn regression_auto_labels_outside_git_were_dropped_silently() {
    let t = crate::env();
    t.write("src/a.txt", "a");
    t.write(
        "gantry.toml",
        "[layer.l]\nfiles = { \"/a\" = \"src/a.txt\" }\n\n[image.i]\nlayers = [\"l\"]\nauto-labels = true\n",
    );
    // Not a git checkout: git's own reason, the label and the way out, even with -q.
    let err = t.fail(&["-q", "build"]);
    assert_mentions(
        &err,
        &[
            "image.i",
            "org.opencontainers.image.revision",
            "not a git repository",
            "auto-labels",
        ],
    );
    assert!(!t.path("gantry-out/i").exists());
}

#[test]
fn source_date_epoch_from_git() {
    let t = crate::env();
    t.write("src/a.txt", "a");
    t.write(
        "gantry.toml",
        "[settings]\nsource-date-epoch = \"git\"\n\n[layer.l]\nfiles = { \"/a\" = \"src/a.txt\" }\n\n[image.i]\nlayers = [\"l\"]\n",
    );
    // Not a git checkout: a clear error.
    let err = t.fail(&["build"]);
    assert_mentions(&err, &["source-date-epoch = \"git\""]);
    for args in [
        &["init", "-q"][..],
        &["-c", "user.name=t", "-c", "user.email=t@e", "add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "one",
        ],
    ] {
        gantry_test::tool("git")
            .args(args)
            .current_dir(t.root())
            .env("GIT_COMMITTER_DATE", "@1600000000 +0000")
            .ok();
    }
    t.run(&["build"]);
    let i = json(&t.run(&["inspect", "--json", "gantry-out/i"]));
    assert_eq!(i["config"]["created"], "2020-09-13T12:26:40Z");
    // The environment wins.
    t.gantry()
        .env("SOURCE_DATE_EPOCH", "0")
        .args(["build"])
        .ok();
    let i = json(&t.run(&["inspect", "--json", "gantry-out/i"]));
    assert_eq!(i["config"]["created"], "1970-01-01T00:00:00Z");
}

#[test]
fn gc_keeps_cached_layers_until_the_cache_is_dropped() {
    let t = crate::env();
    project(&t);
    let first = build(&t, &[]);
    t.run(&["clean"]);
    // The outputs are gone, but the cache still refers to every layer blob.
    let gc = t.run(&["gc"]);
    assert_mentions(&gc, &["removed"]);
    let again = build(&t, &[]);
    assert_eq!(again["cache"]["misses"], 0, "{again:#}");
    t.run(&["clean"]);
    let gc = t.run(&["gc", "--keep-cache", "0"]);
    assert_mentions(&gc, &["dropped 4 unused build-cache entries"]);
    assert!(!layer_blob(&t, &first, "one").exists());
    let rebuilt = build(&t, &[]);
    assert_eq!(rebuilt["cache"]["hits"], 0);
    assert_eq!(digests(&rebuilt), digests(&first));
}
