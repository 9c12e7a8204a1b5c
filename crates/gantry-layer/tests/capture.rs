//! Tests of `gantry_layer::capture` on real directory trees. They need root: they chown, make
//! device nodes, set `trusted.*` attributes and mount tmpfs and overlayfs. A refused mount
//! fails the test with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_layer::capture::{outputs_recipe, overlay_diff_recipe, tree_diff_recipe};
use gantry_layer::tarread::{ListedEntry, list_layer};
use gantry_layer::{Compressor, Defaults, LayerPlan, LayerSource, NoProgress, Recipe, write_layer};
use gantry_oci::Compression;
use rustix::fs::{CWD, FileType, Mode, XattrFlags, makedev, mknodat};

const MTIME: i64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Helpers

fn layer(r: Recipe) -> Vec<u8> {
    let plan = LayerPlan {
        source: LayerSource::Recipe(r),
        compressor: Compressor::parse("none", None).unwrap(),
        media_type: None,
        annotations: BTreeMap::new(),
        created_by: "test".to_owned(),
        comment: None,
    };
    let (bytes, out) = write_layer(&plan, 1, Vec::new(), &NoProgress, &Default::default()).unwrap();
    assert_eq!(out.uncompressed_size, Some(bytes.len() as u64));
    bytes
}

fn listing(bytes: &[u8]) -> Vec<ListedEntry> {
    let mut v = Vec::new();
    list_layer(bytes, Compression::None, "test", |e| v.push(e)).unwrap();
    v
}

/// One line per entry: path, type, mode, owner, link target, xattrs. Also checks that every
/// entry has the default mtime and no owner names.
fn rows(bytes: &[u8]) -> Vec<String> {
    listing(bytes)
        .into_iter()
        .map(|e| {
            assert_eq!(e.mtime, MTIME, "{}", e.path);
            assert!(e.uname.is_empty() && e.gname.is_empty(), "{}", e.path);
            let mut s = format!("{} {} {} {}:{}", e.path, e.kind, e.mode, e.uid, e.gid);
            if let Some(l) = &e.link {
                s.push_str(&format!(" -> {l}"));
            }
            for (k, v) in &e.xattrs {
                if k.starts_with("security.") {
                    s.push_str(&format!(" [{k}]"));
                } else {
                    s.push_str(&format!(" [{k}={}]", String::from_utf8_lossy(v.as_bytes())));
                }
            }
            s
        })
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn own(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap();
}

fn mknod_char(path: &Path, major: u32, minor: u32) {
    mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::from_bits_truncate(0o600),
        makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

fn set_mtime(path: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cp_a(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A mount that is undone when dropped (lazily, if something still uses it).
struct Mount {
    target: PathBuf,
    mounted: bool,
}

impl Mount {
    fn new(args: &[&str], target: &Path) -> Self {
        let out = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .expect("cannot run mount(8)");
        assert!(
            out.status.success(),
            "mount {args:?} {} was refused: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Mount {
            target: target.to_owned(),
            mounted: true,
        }
    }

    fn unmount(mut self) {
        self.mounted = false;
        run(Command::new("umount").arg(&self.target));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.target)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.target).status();
            }
        }
    }
}

/// A tmpfs in a fresh temp dir (the workspace filesystem may itself be an overlay, which
/// cannot hold an overlay's upper directory).
fn tmpfs() -> (tempfile::TempDir, Mount) {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"],
        t.path(),
    );
    (t, m)
}

fn overlay(base: &Path, lower: &Path, extra: &str) -> (PathBuf, Mount) {
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for d in [&upper, &work, &merged] {
        mkdir(d, 0o755);
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{extra}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let m = Mount::new(&["-t", "overlay", "-o", &opts, "overlay"], &merged);
    (upper, m)
}

/// Applies an uncompressed layer to `root` as an OCI applier would: whiteouts and opaque
/// markers first (they hide what was there before the layer), then the entries in order.
fn apply(root: &Path, bytes: &[u8]) {
    struct E {
        path: PathBuf,
        kind: tar::EntryType,
        mode: u32,
        uid: u32,
        gid: u32,
        link: Option<PathBuf>,
        data: Vec<u8>,
        xattrs: Vec<(String, Vec<u8>)>,
    }
    let mut entries = Vec::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for x in pax {
                let x = x.unwrap();
                if let Some(name) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_owned(), x.value_bytes().to_vec()));
                }
            }
        }
        let raw = e.path_bytes().into_owned();
        let path = PathBuf::from(OsStr::from_bytes(raw.strip_suffix(b"/").unwrap_or(&raw)));
        let link = e
            .link_name_bytes()
            .map(|l| PathBuf::from(OsStr::from_bytes(&l)));
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.push(E {
            path,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap() as u32,
            gid: h.gid().unwrap() as u32,
            link,
            data,
            xattrs,
        });
    }
    let remove = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    };
    for e in &entries {
        let name = e.path.file_name().unwrap().as_bytes();
        let dir = root.join(e.path.parent().unwrap());
        if name == b".wh..wh..opq" {
            // Nothing to hide when the lower entry is not a directory.
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            for c in fs::read_dir(&dir).unwrap() {
                remove(&c.unwrap().path());
            }
        } else if let Some(hidden) = name.strip_prefix(b".wh.") {
            remove(&dir.join(OsStr::from_bytes(hidden)));
        }
    }
    for e in &entries {
        if e.path.file_name().unwrap().as_bytes().starts_with(b".wh.") {
            continue;
        }
        let dst = root.join(&e.path);
        match e.kind {
            tar::EntryType::Directory => {
                if !fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                    remove(&dst);
                    fs::create_dir(&dst).unwrap();
                }
            }
            tar::EntryType::Regular => {
                remove(&dst);
                fs::write(&dst, &e.data).unwrap();
            }
            tar::EntryType::Symlink => {
                remove(&dst);
                symlink(e.link.as_ref().unwrap(), &dst).unwrap();
            }
            tar::EntryType::Link => {
                remove(&dst);
                fs::hard_link(root.join(e.link.as_ref().unwrap()), &dst).unwrap();
                continue;
            }
            tar::EntryType::Fifo => {
                remove(&dst);
                mknodat(CWD, &dst, FileType::Fifo, Mode::empty(), makedev(0, 0)).unwrap();
            }
            other => panic!("unexpected entry type {other:?}"),
        }
        own(&dst, e.uid, e.gid);
        if e.kind != tar::EntryType::Symlink {
            chmod(&dst, e.mode);
        }
        for (k, v) in &e.xattrs {
            set_xattr(&dst, k, v);
        }
    }
}

/// Everything an applier must reproduce, one line per node under `root` (not `root` itself):
/// type, permission bits, owner, content or link target, kept xattrs.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let r = format!("{rel}/{}", n.to_string_lossy());
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("symlink {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
            } else {
                format!("other {:o}", m.mode())
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            let mut xattrs = Vec::new();
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::llistxattr(&p, &mut buf[..]).unwrap();
            for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
                if name.starts_with(b"user.") && !name.starts_with(b"user.overlay.") {
                    let mut v = vec![0u8; 65536];
                    let k = rustix::fs::lgetxattr(&p, name, &mut v[..]).unwrap();
                    xattrs.push(format!(
                        "{}={}",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(&v[..k])
                    ));
                }
            }
            xattrs.sort();
            out.push(format!(
                "{r} {what} {mode:04o} {}:{} {xattrs:?}",
                m.uid(),
                m.gid()
            ));
            if ft.is_dir() {
                walk(&p, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// outputs

/// /out with an executable, data, a .pyc, an excluded directory, a symlink out of the tree,
/// a hard link pair and xattrs; /usr/local/bin/tool; /etc/passwd (not an output).
fn make_rootfs(root: &Path) {
    mkdir(&root.join("out"), 0o755);
    write(&root.join("out/app"), "app", 0o755);
    own(&root.join("out/app"), 1000, 1000);
    set_xattr(&root.join("out/app"), "user.note", b"hi");
    // A valid v2 file capability: cap_net_bind_service+ep.
    set_xattr(
        &root.join("out/app"),
        "security.capability",
        &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    set_xattr(&root.join("out/app"), "trusted.secret", b"host-only");
    mkdir(&root.join("out/data"), 0o750);
    own(&root.join("out/data"), 1000, 1000);
    write(&root.join("out/data/x"), "x", 0o644);
    write(&root.join("out/data/y.pyc"), "pyc", 0o644);
    write(&root.join("out/skip/inner"), "skipped", 0o644);
    fs::hard_link(root.join("out/data/x"), root.join("out/hl")).unwrap();
    symlink("/etc/passwd", root.join("out/link")).unwrap();
    own(&root.join("out/link"), 7, 7);
    write(&root.join("usr/local/bin/tool"), "tool", 0o700);
    own(&root.join("usr/local/bin/tool"), 5, 5);
    write(
        &root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n",
        0o644,
    );
}

fn outputs_layer(root: &Path) -> (Vec<u8>, Vec<String>) {
    let outputs = strs(&["/out", "/usr/local/bin/tool", "/out/app"]);
    let exclude = strs(&["*.pyc", "/out/skip"]);
    let r = outputs_recipe(root, None, &outputs, &exclude, Defaults::new(MTIME)).unwrap();
    let warnings = r.warnings.clone();
    (layer(r), warnings)
}

#[test]
fn outputs_hold_exactly_the_outputs() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    make_rootfs(&root);
    let (bytes, warnings) = outputs_layer(&root);
    assert_eq!(
        rows(&bytes),
        strs(&[
            "/out dir 0755 0:0",
            "/out/app file 0755 1000:1000 [security.capability] [user.note=hi]",
            "/out/data dir 0750 1000:1000",
            "/out/data/x file 0644 0:0",
            "/out/hl hardlink 0644 0:0 -> /out/data/x",
            "/out/link symlink 0777 7:7 -> /etc/passwd",
            // Parents: without a lower tree, each one as the rootfs has it.
            "/usr dir 0755 0:0",
            "/usr/local dir 0755 0:0",
            "/usr/local/bin dir 0755 0:0",
            "/usr/local/bin/tool file 0700 5:5",
        ])
    );
    let contents: BTreeMap<String, u64> = listing(&bytes)
        .into_iter()
        .map(|e| (e.path, e.size))
        .collect();
    assert_eq!(contents["/out/app"], 3);
    assert_eq!(contents["/usr/local/bin/tool"], 4);
    // The host-only attribute is named in a warning.
    assert!(
        warnings.iter().any(|w| w.contains("trusted.secret")),
        "{warnings:?}"
    );

    // An output that is a symlink is stored as one, never followed.
    symlink("/etc", root.join("evil")).unwrap();
    let r = outputs_recipe(&root, None, &strs(&["/evil"]), &[], Defaults::new(MTIME)).unwrap();
    assert_eq!(rows(&layer(r)), strs(&["/evil symlink 0777 0:0 -> /etc"]));

    // An explicitly named output that matches an exclude is left out, with a warning.
    let r = outputs_recipe(
        &root,
        None,
        &strs(&["/out/data/y.pyc", "/etc/passwd"]),
        &strs(&["*.pyc"]),
        Defaults::new(MTIME),
    )
    .unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("/out/data/y.pyc")));
    assert_eq!(
        rows(&layer(r)),
        strs(&["/etc dir 0755 0:0", "/etc/passwd file 0644 0:0"])
    );
}

#[test]
fn regression_output_parents_replaced_the_images_directories() {
    let t = tempfile::tempdir().unwrap();
    // The image: a sticky, world-writable /tmp and a private home owned by 1000.
    let lower = t.path().join("lower");
    mkdir(&lower.join("tmp"), 0o1777);
    mkdir(&lower.join("home/app"), 0o700);
    own(&lower.join("home/app"), 1000, 1000);
    // The step's view: the same, plus what the step made.
    let root = t.path().join("rootfs");
    mkdir(&root.join("tmp"), 0o1777);
    write(&root.join("tmp/x"), "x", 0o644);
    mkdir(&root.join("home/app"), 0o700);
    own(&root.join("home/app"), 1000, 1000);
    mkdir(&root.join("home/app/cache"), 0o750);
    own(&root.join("home/app/cache"), 1000, 1000);
    write(&root.join("home/app/cache/data/out"), "o", 0o600);
    chmod(&root.join("home/app/cache/data"), 0o711);
    let r = outputs_recipe(
        &root,
        Some(&lower),
        &strs(&["/tmp/x", "/home/app/cache/data/out"]),
        &[],
        Defaults::new(MTIME),
    )
    .unwrap();
    assert_eq!(
        rows(&layer(r)),
        strs(&[
            // /home and /home/app are the image's: left out, so they keep their metadata.
            "/home/app/cache dir 0750 1000:1000",
            "/home/app/cache/data dir 0711 0:0",
            "/home/app/cache/data/out file 0600 0:0",
            "/tmp/x file 0644 0:0",
        ])
    );
    // A component that is a symlink in the image does not count as its directory.
    let lower2 = t.path().join("lower2");
    mkdir(&lower2.join("real"), 0o755);
    symlink("real", lower2.join("tmp")).unwrap();
    let r = outputs_recipe(
        &root,
        Some(&lower2),
        &strs(&["/tmp/x"]),
        &[],
        Defaults::new(MTIME),
    )
    .unwrap();
    assert_eq!(
        rows(&layer(r)),
        strs(&["/tmp dir 1777 0:0", "/tmp/x file 0644 0:0"])
    );
}

#[test]
fn outputs_never_follow_a_symlinked_component() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    let outside = t.path().join("outside");
    write(&outside.join("x"), "secret", 0o600);
    mkdir(&root, 0o755);
    // Absolute and relative links out of the rootfs, and one that stays inside.
    symlink(&outside, root.join("evil")).unwrap();
    symlink("../outside", root.join("rel")).unwrap();
    write(&root.join("real/x"), "inside", 0o644);
    symlink("real", root.join("inner")).unwrap();
    for (out, comp) in [
        ("/evil/x", "/evil"),
        ("/rel/x", "/rel"),
        ("/inner/x", "/inner"),
    ] {
        let e = outputs_recipe(&root, None, &strs(&[out]), &[], Defaults::new(MTIME))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("output {out}: {comp} is a symlink in the step's filesystem")
        );
    }
    // A file used as a directory.
    let e = outputs_recipe(
        &root,
        None,
        &strs(&["/real/x/y"]),
        &[],
        Defaults::new(MTIME),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/real/x is not a directory"), "{e}");
}

#[test]
fn missing_outputs_are_named() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    write(&root.join("out/a"), "a", 0o644);
    let e = outputs_recipe(
        &root,
        None,
        &strs(&["/out/nope"]),
        &[],
        Defaults::new(MTIME),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "output /out/nope: /out/nope does not exist in the step's filesystem"
    );
    let e = outputs_recipe(
        &root,
        None,
        &strs(&["/gone/deeper/x"]),
        &[],
        Defaults::new(MTIME),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("output /gone/deeper/x: /gone does not exist"),
        "{e}"
    );
    let e = outputs_recipe(&root, None, &strs(&["out/a"]), &[], Defaults::new(MTIME))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absolute"), "{e}");
}

#[test]
fn device_nodes_and_whiteout_names_in_outputs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    mkdir(&root.join("out/dev"), 0o755);
    mknod_char(&root.join("out/dev/null"), 1, 3);
    for outputs in [&["/out"][..], &["/out/dev/null"]] {
        let e = outputs_recipe(&root, None, &strs(outputs), &[], Defaults::new(MTIME))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/out/dev/null is a character device (1, 3)") && e.contains("not captured"),
            "{e}"
        );
    }
    // Excluded, it is fine.
    outputs_recipe(
        &root,
        None,
        &strs(&["/out"]),
        &strs(&["/out/dev"]),
        Defaults::new(MTIME),
    )
    .unwrap();

    let root = t.path().join("rootfs2");
    write(&root.join("out/.wh.passwd"), "", 0o644);
    let e = outputs_recipe(&root, None, &strs(&["/out"]), &[], Defaults::new(MTIME))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/out/.wh.passwd") && e.contains("whiteout"),
        "{e}"
    );
}

#[test]
fn outputs_are_reproducible_whatever_the_mtimes() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    make_rootfs(&a);
    let (first, _) = outputs_layer(&a);
    // Another copy, elsewhere, with every mtime changed.
    let b = t.path().join("b");
    cp_a(&a, &b);
    let mut n = 0;
    for p in [
        "out",
        "out/app",
        "out/data",
        "out/data/x",
        "usr/local/bin",
        "usr/local/bin/tool",
    ] {
        n += 1000;
        set_mtime(&b.join(p), 1_000_000 + n);
    }
    assert_ne!(
        fs::metadata(a.join("out/app")).unwrap().mtime(),
        fs::metadata(b.join("out/app")).unwrap().mtime()
    );
    let (second, _) = outputs_layer(&b);
    assert!(first == second, "same rootfs state, different bytes");
    // The same tree again gives the same bytes too.
    assert!(outputs_layer(&a).0 == first);
}

// ---------------------------------------------------------------------------------------------
// overlay upper directories built by hand

#[test]
fn overlay_upper_by_hand() {
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    mkdir(&upper, 0o755);
    mknod_char(&upper.join("gone"), 0, 0);
    mkdir(&upper.join("dir"), 0o755);
    set_xattr(&upper.join("dir"), "trusted.overlay.opaque", b"y");
    write(&upper.join("dir/new"), "new", 0o644);
    mkdir(&upper.join("udir"), 0o700);
    set_xattr(&upper.join("udir"), "user.overlay.opaque", b"y");
    mkdir(&upper.join("xdir"), 0o755);
    set_xattr(&upper.join("xdir"), "trusted.overlay.opaque", b"x");
    write(&upper.join("changed"), "changed", 0o600);
    own(&upper.join("changed"), 3, 3);
    set_xattr(
        &upper.join("changed"),
        "trusted.overlay.origin",
        b"\x00junk",
    );
    set_xattr(&upper.join("changed"), "user.k", b"v");
    // A copied-up parent with its own metadata and a whiteout in it.
    mkdir(&upper.join("sub"), 0o750);
    own(&upper.join("sub"), 4, 4);
    set_xattr(&upper.join("sub"), "trusted.overlay.impure", b"y");
    mknod_char(&upper.join("sub/old"), 0, 0);
    mknodat(
        CWD,
        upper.join("fifo"),
        FileType::Fifo,
        Mode::from_bits_truncate(0o640),
        makedev(0, 0),
    )
    .unwrap();
    symlink("dir/new", upper.join("link")).unwrap();

    let r = overlay_diff_recipe(&upper, Defaults::new(MTIME)).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(
        rows(&layer(r)),
        strs(&[
            "/.wh.gone file 0644 0:0",
            "/changed file 0600 3:3 [user.k=v]",
            "/dir dir 0755 0:0",
            "/dir/.wh..wh..opq file 0644 0:0",
            "/dir/new file 0644 0:0",
            "/fifo fifo 0640 0:0",
            "/link symlink 0777 0:0 -> dir/new",
            "/sub dir 0750 4:4",
            "/sub/.wh.old file 0644 0:0",
            "/udir dir 0700 0:0",
            "/udir/.wh..wh..opq file 0644 0:0",
            "/xdir dir 0755 0:0",
        ])
    );

    // redirect and metacopy are refused, naming the path.
    for (name, attr, is_dir) in [
        ("moved", "trusted.overlay.redirect", true),
        ("meta", "trusted.overlay.metacopy", false),
        ("umoved", "user.overlay.redirect", true),
    ] {
        let up = t.path().join(format!("upper-{name}"));
        mkdir(&up, 0o755);
        let p = up.join("a").join(name);
        if is_dir {
            mkdir(&p, 0o755);
        } else {
            write(&p, "", 0o644);
        }
        set_xattr(&p, attr, b"x");
        let e = overlay_diff_recipe(&up, Defaults::new(MTIME))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("/a/{name}"))
                && e.contains(attr)
                && e.contains("overlay redirect_dir/metacopy are not supported"),
            "{e}"
        );
    }

    // Device nodes other than whiteouts are refused.
    let up = t.path().join("upper-dev");
    mkdir(&up.join("dev"), 0o755);
    mknod_char(&up.join("dev/tty"), 5, 0);
    let e = overlay_diff_recipe(&up, Defaults::new(MTIME))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/dev/tty is a character device (5, 0)"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The same changes, through a real overlay mount and through a copy

fn make_lower(root: &Path) {
    mkdir(root, 0o755);
    write(&root.join("changed.txt"), "abc", 0o644);
    write(&root.join("grown.txt"), "abc", 0o644);
    write(&root.join("chmod.txt"), "m", 0o644);
    write(&root.join("chown.txt"), "o", 0o644);
    write(&root.join("touched.txt"), "t", 0o644);
    write(&root.join("gone.txt"), "g", 0o644);
    write(&root.join("gonedir/a"), "a", 0o644);
    write(&root.join("gonedir/b/c"), "c", 0o644);
    write(&root.join("replaced/old1"), "1", 0o644);
    write(&root.join("replaced/old2"), "2", 0o644);
    write(&root.join("replaced/sub/x"), "x", 0o644);
    write(&root.join("sub/deep/file"), "1", 0o644);
    write(&root.join("sub/unchanged"), "u", 0o644);
    symlink("target-old", root.join("link")).unwrap();
    write(&root.join("d2f/child"), "c", 0o644);
    write(&root.join("f2d"), "f", 0o644);
    write(&root.join("xattr.txt"), "x", 0o644);
    write(&root.join("keep/file"), "k", 0o644);
    mkdir(&root.join("home/user"), 0o700);
    own(&root.join("home/user"), 1000, 1000);
    for d in [
        "gonedir",
        "gonedir/b",
        "replaced",
        "replaced/sub",
        "sub",
        "sub/deep",
        "d2f",
        "keep",
        "home",
    ] {
        chmod(&root.join(d), 0o755);
    }
}

/// The step: add, change (same size and not), chmod, chown, delete files and directories,
/// replace a directory, retarget a symlink, swap a directory and a file, hard links, xattrs.
fn change(root: &Path) {
    write(&root.join("added.txt"), "new", 0o640);
    own(&root.join("added.txt"), 1000, 1000);
    fs::write(root.join("changed.txt"), "xyz").unwrap();
    fs::write(root.join("grown.txt"), "abcdef").unwrap();
    chmod(&root.join("chmod.txt"), 0o600);
    own(&root.join("chown.txt"), 1234, 1234);
    fs::remove_file(root.join("gone.txt")).unwrap();
    fs::remove_dir_all(root.join("gonedir")).unwrap();
    mkdir(&root.join("newdir/sub"), 0o755);
    chmod(&root.join("newdir"), 0o755);
    write(&root.join("newdir/sub/f"), "f", 0o644);
    fs::remove_dir_all(root.join("replaced")).unwrap();
    mkdir(&root.join("replaced"), 0o755);
    write(&root.join("replaced/new"), "n", 0o644);
    fs::write(root.join("sub/deep/file"), "2").unwrap();
    fs::remove_file(root.join("link")).unwrap();
    symlink("target-new", root.join("link")).unwrap();
    fs::remove_dir_all(root.join("d2f")).unwrap();
    write(&root.join("d2f"), "now a file", 0o644);
    fs::remove_file(root.join("f2d")).unwrap();
    mkdir(&root.join("f2d"), 0o755);
    write(&root.join("f2d/inner"), "i", 0o644);
    write(&root.join("hl1"), "h", 0o644);
    fs::hard_link(root.join("hl1"), root.join("hl2")).unwrap();
    set_xattr(&root.join("xattr.txt"), "user.test", b"1");
    write(&root.join("home/user/new.txt"), "u", 0o644);
}

/// The entries both diffs share.
fn common_rows() -> Vec<&'static str> {
    vec![
        "/.wh.gone.txt file 0644 0:0",
        "/.wh.gonedir file 0644 0:0",
        "/added.txt file 0640 1000:1000",
        "/changed.txt file 0644 0:0",
        "/chmod.txt file 0600 0:0",
        "/chown.txt file 0644 1234:1234",
        "/d2f file 0644 0:0",
        "/f2d dir 0755 0:0",
        "/f2d/inner file 0644 0:0",
        "/grown.txt file 0644 0:0",
        "/hl1 file 0644 0:0",
        "/hl2 hardlink 0644 0:0 -> /hl1",
        // Parents of a change keep their own metadata (not the implicit root 0755).
        "/home dir 0755 0:0",
        "/home/user dir 0700 1000:1000",
        "/home/user/new.txt file 0644 0:0",
        "/link symlink 0777 0:0 -> target-new",
        "/newdir dir 0755 0:0",
        "/newdir/sub dir 0755 0:0",
        "/newdir/sub/f file 0644 0:0",
        "/replaced dir 0755 0:0",
        "/replaced/new file 0644 0:0",
        "/sub dir 0755 0:0",
        "/sub/deep dir 0755 0:0",
        "/sub/deep/file file 0644 0:0",
        "/xattr.txt file 0644 0:0 [user.test=1]",
    ]
}

/// What only a tree diff gives: a whiteout per entry of a replaced directory.
const TREE_ONLY: &[&str] = &[
    "/replaced/.wh.old1 file 0644 0:0",
    "/replaced/.wh.old2 file 0644 0:0",
    "/replaced/.wh.sub file 0644 0:0",
];
/// What only an overlay diff gives: opaque markers on directories made over a whiteout.
const OVERLAY_ONLY: &[&str] = &[
    "/f2d/.wh..wh..opq file 0644 0:0",
    "/replaced/.wh..wh..opq file 0644 0:0",
];

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_by(|a, b| {
        let key = |s: &str| s.split(' ').next().unwrap().as_bytes().to_vec();
        key(a).cmp(&key(b))
    });
    v
}

fn expected(extra: &[&str]) -> Vec<String> {
    let mut v = strs(&common_rows());
    v.extend(strs(extra));
    sorted(v)
}

#[test]
fn tree_diff_finds_every_change_and_applies_back() {
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    make_lower(&lower);
    let upper = t.path().join("upper");
    cp_a(&lower, &upper);
    change(&upper);
    // Same size, same mtime, other bytes: still a change.
    let old = fs::metadata(lower.join("changed.txt")).unwrap().mtime();
    set_mtime(&upper.join("changed.txt"), old as u64);
    assert_eq!(
        fs::metadata(upper.join("changed.txt")).unwrap().mtime(),
        old
    );
    // Only touched: not a change.
    set_mtime(&upper.join("touched.txt"), 1_000_000);

    let r = tree_diff_recipe(&lower, &upper, Defaults::new(MTIME)).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let bytes = layer(r);
    assert_eq!(rows(&bytes), expected(TREE_ONLY));

    // lower + diff == upper.
    let applied = t.path().join("applied");
    cp_a(&lower, &applied);
    apply(&applied, &bytes);
    assert_eq!(snapshot(&applied), snapshot(&upper));
    assert_ne!(snapshot(&lower), snapshot(&upper));

    // No change, no entries; and the same states give the same bytes.
    let same = t.path().join("same");
    cp_a(&lower, &same);
    let r = tree_diff_recipe(&lower, &same, Defaults::new(MTIME)).unwrap();
    assert!(r.entries.is_empty(), "{:?}", r.entries);
    let again = tree_diff_recipe(&lower, &upper, Defaults::new(MTIME)).unwrap();
    assert!(layer(again) == bytes);
}

#[test]
fn tree_diff_refuses_new_device_nodes_and_keeps_old_ones_quiet() {
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    mkdir(&lower.join("dev"), 0o755);
    mknod_char(&lower.join("dev/null"), 1, 3);
    let upper = t.path().join("upper");
    cp_a(&lower, &upper);
    // An unchanged device node is not in the diff.
    let r = tree_diff_recipe(&lower, &upper, Defaults::new(MTIME)).unwrap();
    assert!(r.entries.is_empty());
    mknod_char(&upper.join("dev/zero"), 1, 5);
    let e = tree_diff_recipe(&lower, &upper, Defaults::new(MTIME))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/dev/zero is a character device (1, 5)"), "{e}");
}

#[test]
fn real_overlay_diff_matches_the_tree_diff() {
    let (t, _tmpfs) = tmpfs();
    let base = t.path();
    let lower = base.join("lower");
    make_lower(&lower);
    let (upper, merged) = overlay(base, &lower, "redirect_dir=off,metacopy=off,index=off");
    change(&base.join("merged"));
    merged.unmount();

    let r = overlay_diff_recipe(&upper, Defaults::new(MTIME)).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let overlay_bytes = layer(r);
    let overlay_rows = rows(&overlay_bytes);
    assert_eq!(overlay_rows, expected(OVERLAY_ONLY));

    // The same step on a copy, captured by the tree diff.
    let copy = base.join("copy");
    cp_a(&lower, &copy);
    change(&copy);
    let tree_bytes = layer(tree_diff_recipe(&lower, &copy, Defaults::new(MTIME)).unwrap());
    let tree_rows = rows(&tree_bytes);
    let without = |rows: &[String], skip: &[&str]| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| !skip.contains(&r.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(
        without(&overlay_rows, OVERLAY_ONLY),
        without(&tree_rows, TREE_ONLY)
    );

    // Both layers, applied to the lower tree, give the step's result.
    let want = snapshot(&copy);
    for (name, bytes) in [("o", &overlay_bytes), ("t", &tree_bytes)] {
        let applied = base.join(format!("applied-{name}"));
        cp_a(&lower, &applied);
        apply(&applied, bytes);
        assert_eq!(snapshot(&applied), want, "{name}");
    }
}

#[test]
fn real_overlay_redirects_are_refused() {
    let (t, _tmpfs) = tmpfs();
    let base = t.path();
    let lower = base.join("lower");
    make_lower(&lower);
    let (upper, merged) = overlay(base, &lower, "redirect_dir=on,metacopy=off,index=off");
    fs::rename(base.join("merged/replaced"), base.join("merged/moved")).unwrap();
    merged.unmount();
    let e = overlay_diff_recipe(&upper, Defaults::new(MTIME))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/moved") && e.contains("overlay redirect_dir/metacopy are not supported"),
        "{e}"
    );
}
