//! Images are faithful to their base and inputs: a directory nobody described keeps the
//! base's metadata. Checked through `umoci unpack`, `gantry unpack` and `tar -tv`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gantry_test::{CmdExt, TestEnv, json, tool};

/// A busybox base with a sticky, world-writable `/tmp` and a private home owned by 1000.
const BASE: &str = r#"
[layer.busybox]
files = { "/bin/busybox" = "BUSYBOX" }
symlinks = { "/bin/sh" = "busybox", "/bin/mkdir" = "busybox", "/bin/echo" = "busybox" }
empty-dirs = ["/tmp", "/home/app", "/etc"]
content = { "/etc/passwd" = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n" }
metadata."/tmp" = { mode = "1777" }
metadata."/home/app" = { mode = "0700", uid = 1000, gid = 1000 }

[image.base]
layers = ["busybox"]
platform = "linux/amd64"
env = { PATH = "/bin" }
"#;

fn project(t: &TestEnv, extra: &str) {
    let busybox = gantry_test::busybox();
    t.write("x.txt", "x\n");
    t.write(
        "gantry.toml",
        format!(
            "{}{extra}",
            BASE.replace("BUSYBOX", &busybox.display().to_string())
        ),
    );
}

/// Mode (with the sticky bit), uid and gid of `path`.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn umoci_unpack(t: &TestEnv, image: &str, bundle: &str) -> PathBuf {
    tool("umoci")
        .args(["unpack", "--image", image])
        .arg(t.path(bundle))
        .current_dir(t.root())
        .ok();
    t.path(bundle).join("rootfs")
}

/// `tar -tv` of the blob of layer `digest` in the store.
fn tar_listing(t: &TestEnv, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    let blob = t.home().join("blobs/sha256").join(hex);
    tool("tar").arg("-tvzf").arg(blob).ok().stdout
}

fn layer_digest(build: &serde_json::Value, name: &str) -> String {
    build["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {build}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn regression_implicit_parents_replaced_the_bases_directories() {
    let t = crate::env();
    project(
        &t,
        r#"
[layer.files]
files = { "/tmp/x" = "x.txt", "/home/app/.profile" = "x.txt" }

[step.out]
base = "base"
script = "mkdir -p /tmp/out /home/app/.cache/d && echo o > /tmp/out/f && echo c > /home/app/.cache/d/f"
outputs = ["/tmp/out", "/home/app/.cache/d/f"]

[layer.opq]
opaque = ["/tmp"]
content = { "/tmp/new" = "n\n" }

[image.app]
base = "base"
layers = ["files", "out", "opq"]

[layer.solo]
files = { "/app/bin/x" = "x.txt" }

[image.alone]
layers = ["solo"]
platform = "linux/amd64"
"#,
    );
    let build = json(
        &t.gantry()
            .args(["--runtime", "runc", "build", "--json"])
            .ok()
            .stdout,
    );

    // The layers on the base describe neither /tmp nor /home/app.
    let files = tar_listing(&t, &layer_digest(&build, "files"));
    assert!(!files.lines().any(|l| l.starts_with('d')), "{files}");
    let opq = tar_listing(&t, &layer_digest(&build, "opq"));
    assert!(
        opq.contains("tmp/.wh..wh..opq") && !opq.lines().any(|l| l.starts_with('d')),
        "{opq}"
    );
    // The first layer of a scratch image still stands alone: root 0755 parents.
    let solo = tar_listing(&t, &layer_digest(&build, "solo"));
    assert!(
        solo.contains("drwxr-xr-x 0/0") && solo.contains(" app/\n") && solo.contains(" app/bin/\n"),
        "{solo}"
    );

    // Through umoci and through gantry, /tmp and /home/app are still the base's.
    let rootfs = umoci_unpack(&t, "gantry-out/app:latest", "bundle");
    t.run(&["unpack", "oci:gantry-out/app:latest", "unpacked"]);
    for root in [rootfs, t.path("unpacked")] {
        assert_eq!(
            owner_mode(&root.join("tmp")),
            (0o1777, 0, 0),
            "{}",
            root.display()
        );
        assert_eq!(
            owner_mode(&root.join("home/app")),
            (0o700, 1000, 1000),
            "{}",
            root.display()
        );
        // What the layers and the step did describe is there.
        assert!(root.join("home/app/.profile").is_file());
        assert_eq!(owner_mode(&root.join("home/app/.cache")).0, 0o755);
        assert!(root.join("home/app/.cache/d/f").is_file());
        // The opaque /tmp hid the lower layers' files and kept its own.
        assert!(!root.join("tmp/x").exists() && !root.join("tmp/out").exists());
        assert!(root.join("tmp/new").is_file());
    }

    // A build system gets the same layer from the primitive, told it goes on a base.
    let info = json(&t.run(&[
        "layer",
        "--on-base",
        "--file",
        "/tmp/x=x.txt",
        "--file",
        "/home/app/.profile=x.txt",
    ]));
    assert_eq!(
        info["digest"].as_str().unwrap(),
        layer_digest(&build, "files")
    );
    // Without --on-base it is a layer for scratch, with root 0755 parents.
    let info = json(&t.run(&["layer", "--file", "/tmp/x=x.txt"]));
    assert_ne!(
        info["digest"].as_str().unwrap(),
        layer_digest(&build, "files")
    );
}

#[test]
fn explicit_parents_setting_wins() {
    let t = crate::env();
    project(
        &t,
        r#"
[layer.forced]
files = { "/tmp/y" = "x.txt" }
parents = true

[image.app]
base = "base"
layers = ["forced"]
"#,
    );
    let build = json(&t.run(&["build", "--json"]));
    // The user asked for parents: /tmp is a root 0755 entry, and so the image's /tmp.
    let listing = tar_listing(&t, &layer_digest(&build, "forced"));
    assert!(
        listing.contains("drwxr-xr-x 0/0") && listing.contains(" tmp/\n"),
        "{listing}"
    );
    let rootfs = umoci_unpack(&t, "gantry-out/app:latest", "bundle");
    assert_eq!(owner_mode(&rootfs.join("tmp")), (0o755, 0, 0));
}
