//! Reproducibility: the same recipe gives the same digests whatever the machine state.

use std::path::Path;

use gantry_test::{CmdExt, TestEnv, json, sh};

/// Creates the same source tree under `dir`, under `umask`, with every mtime set to `mtime`.
/// Files are created in a different order each time (`reverse`) so that directory order on
/// disk differs too.
fn make_tree(dir: &Path, umask: &str, mtime: &str, reverse: bool) {
    let long = "l".repeat(120);
    let mut steps = vec![
        "mkdir -p src/sub/deeper src/empty".to_owned(),
        "printf 'text\\n' > src/a.txt".to_owned(),
        "printf 'bin\\000\\001\\002' > src/sub/b.bin".to_owned(),
        "printf '#!/bin/sh\\necho hi\\n' > src/run.sh && chmod +x src/run.sh".to_owned(),
        format!("printf long > src/sub/deeper/{long}.txt"),
        "printf 'ü' > 'src/sub/ünïcødé.txt'".to_owned(),
        "ln -s ../a.txt src/sub/link".to_owned(),
        "printf 'spec' > layer-extra.txt".to_owned(),
    ];
    if reverse {
        // Keep the mkdir first; create everything else in the opposite order.
        steps[1..].reverse();
    }
    steps.push("ln src/a.txt src/sub/hard.txt".to_owned());
    steps.push(format!("find . -exec touch -h -d @{mtime} {{}} +"));
    let script = format!(
        "umask {umask} && mkdir -p '{}' && cd '{}' && {}",
        dir.display(),
        dir.display(),
        steps.join(" && ")
    );
    sh(&script, &[]).ok();
    std::fs::write(
        dir.join("layer.toml"),
        r#"dirs = { "/app" = "src" }
files = { "/etc/extra" = "layer-extra.txt" }
symlinks = { "/usr/bin/run" = "/app/run.sh" }
metadata."/app/sub/b.bin" = { mode = "0600", uid = 7 }
"#,
    )
    .unwrap();
}

struct Variant {
    dir: &'static str,
    umask: &'static str,
    mtime: &'static str,
    jobs: &'static str,
    tz: &'static str,
    lang: &'static str,
    reverse: bool,
}

/// Builds a gzip and a zstd layer of the tree and an image; returns the image metadata.
fn build(t: &TestEnv, v: &Variant) -> serde_json::Value {
    let dir = t.path(v.dir);
    make_tree(&dir, v.umask, v.mtime, v.reverse);
    let home = t.path(format!("{}-home", v.dir.replace('/', "-")));
    let run = |args: &[&str]| {
        t.gantry_with_umask(v.umask)
            .current_dir(&dir)
            .env("GANTRY_HOME", &home)
            .env("GANTRY_JOBS", v.jobs)
            .env("TZ", v.tz)
            .env("LANG", v.lang)
            .env("LC_ALL", v.lang)
            .args(args)
            .ok()
            .stdout
    };
    run(&["layer", "--spec", "layer.toml", "--info", "gz.json"]);
    run(&[
        "layer",
        "--spec",
        "layer.toml",
        "--compression",
        "zstd",
        "--info",
        "zst.json",
    ]);
    json(&run(&[
        "image",
        "--layer",
        "gz.json",
        "--layer",
        "zst.json",
        "--entrypoint",
        "/app/run.sh",
        "--env",
        "A=1",
        "--label",
        "org.example=x",
        "-o",
        "out",
        "-t",
        "t",
    ]))
}

#[test]
fn same_recipe_same_digests_whatever_path_mtime_umask_jobs_tz_and_lang() {
    let t = crate::env();
    let a = build(
        &t,
        &Variant {
            dir: "one",
            umask: "022",
            mtime: "1000000000",
            jobs: "1",
            tz: "UTC",
            lang: "C",
            reverse: false,
        },
    );
    let b = build(
        &t,
        &Variant {
            dir: "second/copy/elsewhere",
            umask: "077",
            mtime: "1700000000",
            jobs: "2",
            tz: "Pacific/Kiritimati",
            lang: "de_DE.UTF-8",
            reverse: true,
        },
    );
    assert_eq!(a, b, "image metadata differs between the two builds");
    // And the trees really were different on disk.
    let mode = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(t.path(p)).unwrap().mode() & 0o777
    };
    assert_eq!(mode("one/src/a.txt"), 0o644);
    assert_eq!(mode("second/copy/elsewhere/src/a.txt"), 0o600);
}

#[test]
fn rebuilding_into_a_fresh_store_gives_the_same_bytes() {
    let t = crate::env();
    let v = Variant {
        dir: "tree",
        umask: "022",
        mtime: "1000000000",
        jobs: "2",
        tz: "UTC",
        lang: "C",
        reverse: false,
    };
    let first = build(&t, &v);
    std::fs::remove_dir_all(t.path("tree-home")).unwrap();
    std::fs::remove_dir_all(t.path("tree")).unwrap();
    let second = build(&t, &v);
    assert_eq!(first, second);
}

#[test]
fn source_date_epoch_sets_created_and_default_mtimes() {
    let t = crate::env();
    let run = |sde: &str| {
        t.gantry()
            .env("SOURCE_DATE_EPOCH", sde)
            .args(["layer", "--content", "/f=x", "--info", "l.json"])
            .ok();
        let meta = json(
            &t.gantry()
                .env("SOURCE_DATE_EPOCH", sde)
                .args(["image", "--layer", "l.json", "-o", "out"])
                .ok()
                .stdout,
        );
        let inspect = json(&t.run(&["inspect", "--json", "out"]));
        let ls = t.run(&["ls", "--json", "out"]);
        (meta, inspect, ls)
    };
    let (m0, i0, ls0) = run("0");
    let (m1, i1, ls1) = run("1700000000");
    assert_ne!(m0["manifest"]["digest"], m1["manifest"]["digest"]);
    assert_eq!(i0["config"]["created"], "1970-01-01T00:00:00Z");
    assert_eq!(i1["config"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        i1["config"]["history"][0]["created"],
        "2023-11-14T22:13:20Z"
    );
    assert!(ls0.contains(r#""mtime":0"#), "{ls0}");
    assert!(ls1.contains(r#""mtime":1700000000"#), "{ls1}");
}
