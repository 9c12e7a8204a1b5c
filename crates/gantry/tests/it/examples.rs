//! The examples under examples/ build, and the runnable ones run under runc.

use std::fs;
use std::path::Path;

use gantry_test::{CmdExt, TestEnv, json, tool};

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_name() == "gantry-out" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Copies examples/ into the test's directory, so no output lands in the repository.
fn examples(t: &TestEnv) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    copy_tree(&src, &t.path("examples"));
}

fn run_image(t: &TestEnv, layout: &str, bundle: &str) -> String {
    tool("umoci")
        .args(["unpack", "--image", layout])
        .arg(t.path(bundle))
        .current_dir(t.root())
        .ok();
    let config = t.path(bundle).join("config.json");
    let mut c = json(&fs::read_to_string(&config).unwrap());
    c["process"]["terminal"] = serde_json::Value::Bool(false);
    fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let id = format!("gantry-ex-{}-{bundle}", std::process::id());
    tool("runc")
        .args(["run", "-b"])
        .arg(t.path(bundle))
        .arg(id)
        .ok()
        .stdout
}

#[test]
fn examples_build_and_run() {
    gantry_test::busybox();
    let t = crate::env();
    examples(&t);
    for e in ["static-binary", "app", "tar-layer", "build-step"] {
        t.run(&["build", "-C", &format!("examples/{e}")]);
    }
    let out = run_image(&t, "examples/static-binary/gantry-out/busybox:latest", "b1");
    assert_eq!(out.trim(), "hello from busybox");
    let out = run_image(&t, "examples/build-step/gantry-out/app:latest", "b3");
    assert_eq!(
        out,
        "daemonless\ngantry\nreproducible\n3\nready\nmotd removed\n"
    );
    let out = run_image(&t, "examples/app/gantry-out/app:latest", "b2");
    assert_eq!(
        out,
        "hello from the app, running as 1000:1000 in /var/lib/app\ngreeting = \"hi\"\nport = 8080\n"
    );
    // The app's metadata and symlinks.
    let ls = t.run(&["ls", "--json", "examples/app/gantry-out/app"]);
    let row = |p: &str| ls.lines().map(json).find(|r| r["path"] == p).unwrap();
    assert_eq!(row("/etc/app/app.conf")["mode"], "0640");
    assert_eq!(row("/etc/app/app.conf")["gid"], 1000);
    assert_eq!(row("/usr/local/bin/hello")["link"], "/app/bin/hello");
    assert_eq!(row("/tmp")["mode"], "1777");
    // The tar example keeps the file's bytes, and the recompressed one keeps its diff_id.
    let kept = json(&t.run(&["inspect", "--json", "examples/tar-layer/gantry-out/vendor"]));
    let zst = json(&t.run(&[
        "inspect",
        "--json",
        "examples/tar-layer/gantry-out/vendor-zstd",
    ]));
    assert_eq!(
        kept["manifest"]["layers"][0]["digest"],
        gantry_test::sha256_file(&t.path("examples/tar-layer/vendor.tar.gz")).as_str()
    );
    assert_eq!(
        zst["manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        kept["config"]["rootfs"]["diff_ids"],
        zst["config"]["rootfs"]["diff_ids"]
    );
}
