//! Interop: what gantry writes is read correctly by the peers (umoci, skopeo, oci-image-tool,
//! runc, gzip, zstd).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use gantry_test::{CmdExt, TestEnv, json, require, sha256_file, tool};

/// 2024-01-02T03:04:05Z
const DEFAULT_MTIME: i64 = 1_704_164_645;

/// A layer spec with every kind of entry and per-path metadata.
fn write_recipe(t: &TestEnv) {
    t.write("src/tool.sh", "#!/bin/sh\necho tool\n");
    t.chmod("src/tool.sh", 0o755);
    t.write("src/app.conf", "key = value\n");
    t.write("src/share/doc/readme.txt", "read me\n");
    t.write("src/share/data.bin", [0u8, 1, 2, 3, 255]);
    t.write("src/share/run.sh", "#!/bin/sh\n");
    t.chmod("src/share/run.sh", 0o700);
    fs::create_dir_all(t.path("src/share/empty")).unwrap();
    std::os::unix::fs::symlink("doc/readme.txt", t.path("src/share/readme")).unwrap();
    fs::hard_link(
        t.path("src/share/data.bin"),
        t.path("src/share/doc/data-link.bin"),
    )
    .unwrap();
    t.write(
        "layer.toml",
        r#"
files = { "/app/bin/tool" = "src/tool.sh", "/etc/app.conf" = "src/app.conf" }
dirs = { "/app/share" = "src/share" }
content = { "/etc/motd" = "hello\n" }
symlinks = { "/usr/bin/tool" = "/app/bin/tool", "/app/current" = "share" }
hardlinks = { "/app/bin/tool-link" = "/app/bin/tool" }
empty-dirs = ["/var/lib/app"]
defaults = { uid = 1000, gid = 1000, mtime = "2024-01-02T03:04:05Z" }

[metadata."/app/bin/tool"]
mode = "0750"
uid = 0
gid = 50

[metadata."/etc/app.conf"]
mode = "0600"
mtime = 1600000000

[metadata."/var/lib/app"]
mode = "0700"
uid = 33
gid = 33
"#,
    );
}

struct Expect {
    path: &'static str,
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    content: Option<&'static [u8]>,
    link: Option<&'static str>,
}

const fn e(path: &'static str, kind: &'static str, mode: u32, uid: u32, gid: u32) -> Expect {
    Expect {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime: Some(DEFAULT_MTIME),
        content: None,
        link: None,
    }
}

fn check(rootfs: &Path, x: &Expect) {
    let p = rootfs.join(x.path.trim_start_matches('/'));
    let md = fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{}: {err}", x.path));
    let kind = if md.file_type().is_symlink() {
        "symlink"
    } else if md.is_dir() {
        "dir"
    } else if md.is_file() {
        "file"
    } else {
        "other"
    };
    assert_eq!(kind, x.kind, "{}: type", x.path);
    if kind != "symlink" {
        assert_eq!(
            md.mode() & 0o7777,
            x.mode,
            "{}: mode {:o}",
            x.path,
            md.mode() & 0o7777
        );
    }
    assert_eq!((md.uid(), md.gid()), (x.uid, x.gid), "{}: owner", x.path);
    if let Some(t) = x.mtime {
        assert_eq!(md.mtime(), t, "{}: mtime", x.path);
    }
    if let Some(c) = x.content {
        assert_eq!(fs::read(&p).unwrap(), c, "{}: content", x.path);
    }
    if let Some(l) = x.link {
        assert_eq!(
            fs::read_link(&p).unwrap().to_str().unwrap(),
            l,
            "{}: link",
            x.path
        );
    }
}

/// Builds the recipe as a gzip layer, a small uncompressed layer and (with `zstd`) a small
/// zstd layer, assembles an image and returns the image metadata JSON. (umoci 0.4.7, Debian's,
/// cannot unpack zstd layers.)
fn build_image(t: &TestEnv, zstd: bool) -> serde_json::Value {
    write_recipe(t);
    t.run(&["layer", "--spec", "layer.toml", "--info", "main.json"]);
    t.run(&[
        "layer",
        "--content",
        "/extra/n.txt=plain layer\n",
        "--compression",
        "none",
        "--info",
        "n.json",
    ]);
    let mut args = vec!["image", "--layer", "main.json", "--layer", "n.json"];
    if zstd {
        t.run(&[
            "layer",
            "--content",
            "/extra/z.txt=zstd layer\n",
            "--compression",
            "zstd",
            "--info",
            "z.json",
        ]);
        args.extend(["--layer", "z.json"]);
    }
    args.extend(["--cmd", "/app/bin/tool", "-o", "out", "-t", "v1"]);
    json(&t.run(&args))
}

#[test]
fn umoci_unpack_sees_every_path_type_mode_owner_mtime_content_and_link() {
    let t = crate::env();
    build_image(&t, false);
    tool("umoci")
        .args(["unpack", "--image", "out:v1"])
        .arg(t.path("bundle"))
        .current_dir(t.root())
        .ok();
    let rootfs = t.path("bundle/rootfs");
    let parent = |p| e(p, "dir", 0o755, 0, 0);
    let expect = [
        parent("/app"),
        parent("/app/bin"),
        Expect {
            content: Some(b"#!/bin/sh\necho tool\n"),
            ..e("/app/bin/tool", "file", 0o750, 0, 50)
        },
        Expect {
            content: Some(b"#!/bin/sh\necho tool\n"),
            ..e("/app/bin/tool-link", "file", 0o750, 0, 50)
        },
        Expect {
            link: Some("share"),
            mtime: None,
            ..e("/app/current", "symlink", 0, 1000, 1000)
        },
        e("/app/share", "dir", 0o755, 1000, 1000),
        Expect {
            content: Some(&[0, 1, 2, 3, 255]),
            ..e("/app/share/data.bin", "file", 0o644, 1000, 1000)
        },
        e("/app/share/doc", "dir", 0o755, 1000, 1000),
        Expect {
            content: Some(&[0, 1, 2, 3, 255]),
            ..e("/app/share/doc/data-link.bin", "file", 0o644, 1000, 1000)
        },
        Expect {
            content: Some(b"read me\n"),
            ..e("/app/share/doc/readme.txt", "file", 0o644, 1000, 1000)
        },
        e("/app/share/empty", "dir", 0o755, 1000, 1000),
        Expect {
            link: Some("doc/readme.txt"),
            mtime: None,
            ..e("/app/share/readme", "symlink", 0, 1000, 1000)
        },
        // Executable at the source (0700 there) → 0755: only the exec bit is taken.
        e("/app/share/run.sh", "file", 0o755, 1000, 1000),
        parent("/etc"),
        Expect {
            content: Some(b"key = value\n"),
            mtime: Some(1_600_000_000),
            ..e("/etc/app.conf", "file", 0o600, 1000, 1000)
        },
        Expect {
            content: Some(b"hello\n"),
            ..e("/etc/motd", "file", 0o644, 1000, 1000)
        },
        parent("/usr"),
        parent("/usr/bin"),
        Expect {
            link: Some("/app/bin/tool"),
            mtime: None,
            ..e("/usr/bin/tool", "symlink", 0, 1000, 1000)
        },
        parent("/var"),
        parent("/var/lib"),
        e("/var/lib/app", "dir", 0o700, 33, 33),
        Expect {
            content: Some(b"plain layer\n"),
            mtime: Some(0),
            ..e("/extra/n.txt", "file", 0o644, 0, 0)
        },
    ];
    for x in &expect {
        check(&rootfs, x);
    }
    // Hard links share one inode after extraction.
    let ino = |p: &str| fs::metadata(rootfs.join(p)).unwrap().ino();
    assert_eq!(ino("app/bin/tool"), ino("app/bin/tool-link"));
    assert_eq!(
        ino("app/share/data.bin"),
        ino("app/share/doc/data-link.bin")
    );
    // Nothing else is in the image.
    let mut found: Vec<String> = walk(&rootfs);
    found.sort();
    let mut want: Vec<String> = expect.iter().map(|x| x.path.to_owned()).collect();
    want.push("/extra".to_owned());
    want.sort();
    assert_eq!(found, want);
}

fn walk(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            v.push(format!("/{}", p.strip_prefix(root).unwrap().display()));
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    v
}

#[test]
fn skopeo_agrees_on_the_digest_and_copies_without_change() {
    let t = crate::env();
    let meta = build_image(&t, true);
    let digest = meta["manifest"]["digest"].as_str().unwrap().to_owned();
    let out = tool("skopeo")
        .args(["inspect", "oci:out:v1"])
        .current_dir(t.root())
        .ok();
    assert_eq!(json(&out.stdout)["Digest"], digest.as_str());
    // skopeo copies it to another layout without changing a blob. (Without
    // --preserve-digests, skopeo 1.9 gzips uncompressed layers on the way.)
    tool("skopeo")
        .args(["copy", "--preserve-digests", "oci:out:v1", "oci:copy:v1"])
        .current_dir(t.root())
        .ok();
    let out = tool("skopeo")
        .args(["inspect", "oci:copy:v1"])
        .current_dir(t.root())
        .ok();
    assert_eq!(json(&out.stdout)["Digest"], digest.as_str());
}

#[test]
fn oci_image_tool_validates_the_layout() {
    let t = crate::env();
    // oci-image-tool 1.0.0-rc1 (Debian's) predates the zstd layer media type, so this image
    // has gzip and uncompressed layers only.
    build_image(&t, false);
    // rc1 names the layout check `--type image` (it autodetects imageLayout); it validates
    // index, manifest, config and every layer.
    let out = tool("oci-image-tool")
        .args(["validate", "--type", "image", "--ref", "name=v1", "out"])
        .current_dir(t.root())
        .ok();
    assert!(
        out.stdout.contains("Validation succeeded"),
        "{}",
        out.stdout
    );
}

#[test]
fn compressed_layers_pass_gzip_t_and_zstd_t_and_diff_ids_match() {
    let t = crate::env();
    let meta = build_image(&t, true);
    let blob = |d: &str| {
        t.path("out/blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let layers = meta["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for l in layers {
        let mt = l["mediaType"].as_str().unwrap();
        let path = blob(l["digest"].as_str().unwrap());
        assert_eq!(sha256_file(&path), l["digest"].as_str().unwrap());
        let plain = t.path("plain.tar");
        if mt.ends_with("+gzip") {
            tool("gzip").arg("-t").arg(&path).ok();
            gantry_test::sh("gzip -dc \"$1\" > \"$2\"", &[])
                .arg("sh")
                .arg(&path)
                .arg(&plain)
                .ok();
        } else if mt.ends_with("+zstd") {
            tool("zstd").arg("-t").arg("-q").arg(&path).ok();
            tool("zstd")
                .args(["-d", "-q", "-f"])
                .arg(&path)
                .arg("-o")
                .arg(&plain)
                .ok();
        } else {
            assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar");
            fs::copy(&path, &plain).unwrap();
        }
        assert_eq!(sha256_file(&plain), l["diffId"].as_str().unwrap(), "{mt}");
        // GNU tar reads it too.
        tool("tar").arg("-tf").arg(&plain).ok();
    }
}

#[test]
fn busybox_image_runs_under_runc() {
    let t = crate::env();
    let busybox = gantry_test::busybox();
    require("runc");
    t.run(&[
        "layer",
        "--file",
        &format!("/bin/busybox={}", busybox.display()),
        "--symlink",
        "/bin/sh=busybox",
        "--empty-dir",
        "/tmp",
        "--info",
        "bb.json",
    ]);
    t.run(&[
        "image",
        "--layer",
        "bb.json",
        "--entrypoint",
        "/bin/busybox",
        "--cmd",
        "echo",
        "--cmd",
        "hello from a gantry image",
        "--env",
        "PATH=/bin",
        "-o",
        "out",
        "-t",
        "bb",
    ]);
    tool("umoci")
        .args(["unpack", "--image", "out:bb"])
        .arg(t.path("bundle"))
        .current_dir(t.root())
        .ok();
    // umoci writes an interactive config; run detached from any terminal.
    let config = t.path("bundle/config.json");
    let mut c = json(&fs::read_to_string(&config).unwrap());
    c["process"]["terminal"] = serde_json::Value::Bool(false);
    fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let id = format!("gantry-it-{}", std::process::id());
    let out = tool("runc")
        .args(["run", "-b"])
        .arg(t.path("bundle"))
        .arg(&id)
        .ok();
    assert_eq!(out.stdout.trim(), "hello from a gantry image");
}

/// Packaging a prepared root filesystem: `--preserve mode,owner,mtime` keeps setuid bits, the
/// sticky /tmp, owners and times, and umoci unpacks them as they were.
#[test]
fn preserved_rootfs_metadata_survives_umoci_unpack() {
    let t = crate::env();
    t.write("rootfs/usr/bin/su", "#!/bin/sh\n");
    t.chmod("rootfs/usr/bin/su", 0o4755);
    fs::create_dir_all(t.path("rootfs/tmp")).unwrap();
    t.chmod("rootfs/tmp", 0o1777);
    t.write("rootfs/home/alice/.profile", "export A=1\n");
    t.chmod("rootfs/home/alice/.profile", 0o600);
    std::os::unix::fs::chown(t.path("rootfs/home/alice"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::chown(t.path("rootfs/home/alice/.profile"), Some(1234), Some(1234)).unwrap();
    gantry_test::sh("touch -d @1500000000 rootfs/home/alice/.profile", &[])
        .current_dir(t.root())
        .ok();
    t.run(&[
        "layer",
        "--dir",
        "/=rootfs",
        "--preserve",
        "mode,owner,mtime",
        "--info",
        "root.json",
    ]);
    t.run(&["image", "--layer", "root.json", "-o", "out", "-t", "v1"]);
    tool("umoci")
        .args(["unpack", "--image", "out:v1"])
        .arg(t.path("bundle"))
        .current_dir(t.root())
        .ok();
    let rootfs = t.path("bundle/rootfs");
    let md = |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap();
    assert_eq!(md("usr/bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    let profile = md("home/alice/.profile");
    assert_eq!(
        (profile.mode() & 0o7777, profile.uid(), profile.gid()),
        (0o600, 1234, 1234)
    );
    assert_eq!(profile.mtime(), 1_500_000_000);
    assert_eq!(md("home/alice").uid(), 1234);
    // Without --preserve the same tree gives the reproducible defaults.
    let plain = t.run(&[
        "layer",
        "--dir",
        "/=rootfs",
        "--compression",
        "none",
        "-o",
        "p.tar",
    ]);
    let _ = plain;
    let ls = t.run(&["ls", "--json", "p.tar"]);
    let su = ls
        .lines()
        .map(json)
        .find(|r| r["path"] == "/usr/bin/su")
        .unwrap();
    assert_eq!(su["mode"], "0755");
    assert_eq!(su["uid"], 0);
}
