//! Layers say exactly what their inputs say: extended attributes and file capabilities,
//! names that a layer would read as whiteouts, times before 1970 and after 2038, and names
//! that are not one line of UTF-8. Checked with the real peers: GNU tar, umoci unpack,
//! getcap/getfattr, runc.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine as _;
use gantry_test::{CmdExt, TestEnv, assert_mentions, json, require, store_snapshot, tool};

/// `cap_chown,cap_net_raw=ep` as `getcap` prints it, and its bits in /proc/PID/status.
const CAPS: &str = "cap_chown,cap_net_raw=ep";
const CAP_BITS: u64 = (1 << 0) | (1 << 13);

/// A value with a newline and bytes that are not UTF-8, for `user.bin`.
const BINARY: &[u8] = &[0x00, b'\n', 0xff, b'\n'];

fn sh(t: &TestEnv, script: &str) -> String {
    gantry_test::sh(script, &[])
        .current_dir(t.root())
        .ok()
        .stdout
}

/// A small root filesystem: busybox with file capabilities, a config file with a text and a
/// binary user xattr, a directory with a user xattr.
fn caps_rootfs(t: &TestEnv) {
    for tool in ["setcap", "getcap", "setfattr", "getfattr"] {
        require(tool);
    }
    let busybox = gantry_test::busybox();
    fs::create_dir_all(t.path("rootfs/bin")).unwrap();
    fs::copy(&busybox, t.path("rootfs/bin/busybox")).unwrap();
    t.chmod("rootfs/bin/busybox", 0o755);
    t.write("rootfs/etc/app.conf", "key = value\n");
    fs::create_dir_all(t.path("rootfs/tmp")).unwrap();
    t.chmod("rootfs/tmp", 0o1777);
    let hex: String = BINARY.iter().map(|b| format!("{b:02x}")).collect();
    sh(
        t,
        &format!(
            "setcap {CAPS} rootfs/bin/busybox && \
             setfattr -n user.origin -v ci rootfs/etc/app.conf && \
             setfattr -n user.bin -v 0x{hex} rootfs/etc/app.conf && \
             setfattr -n user.dir -v yes rootfs/etc"
        ),
    );
}

/// `getcap` of a file, and `getfattr -d -m - -e hex` of it, as text.
fn caps_and_xattrs(p: &Path) -> (String, String) {
    let cap = tool("getcap").arg(p).ok().stdout;
    let attrs = tool("getfattr")
        .args(["-d", "-m", "-", "-e", "hex"])
        .arg(p)
        .ok()
        .stdout;
    (cap, attrs)
}

/// Checks a rootfs made from [`caps_rootfs`]'s layer.
fn check_caps_rootfs(root: &Path, who: &str) {
    let (cap, _) = caps_and_xattrs(&root.join("bin/busybox"));
    assert!(cap.contains(CAPS), "{who}: getcap: {cap}");
    let (_, attrs) = caps_and_xattrs(&root.join("etc/app.conf"));
    let hex: String = BINARY.iter().map(|b| format!("{b:02x}")).collect();
    assert_mentions(
        &attrs,
        &["user.origin=0x6369", &format!("user.bin=0x{hex}")],
    );
    let (_, dir) = caps_and_xattrs(&root.join("etc"));
    assert!(dir.contains("user.dir=0x796573"), "{who}: {dir}");
}

fn umoci_unpack(t: &TestEnv, image: &str, bundle: &str) {
    tool("umoci")
        .args(["unpack", "--image", image, bundle])
        .current_dir(t.root())
        .ok();
}

#[test]
fn regression_file_capabilities_were_dropped_from_directory_layers() {
    let t = crate::env();
    caps_rootfs(&t);
    t.run(&[
        "layer",
        "--dir",
        "/=rootfs",
        "--preserve",
        "mode,owner,xattrs",
        "--compression",
        "none",
        "-o",
        "root.tar",
        "--info",
        "root.json",
    ]);
    // GNU tar sees the records and restores them.
    let listing = tool("tar")
        .args(["--xattrs", "--xattrs-include=*", "-tvvf", "root.tar"])
        .current_dir(t.root())
        .ok()
        .stdout;
    assert_mentions(
        &listing,
        &[
            "x: 20 security.capability",
            "x: 2 user.origin",
            "x: 4 user.bin",
            "x: 3 user.dir",
        ],
    );
    fs::create_dir(t.path("tarx")).unwrap();
    tool("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            "root.tar",
            "-C",
            "tarx",
        ])
        .current_dir(t.root())
        .ok();
    check_caps_rootfs(&t.path("tarx"), "GNU tar");

    t.run(&[
        "image",
        "--layer",
        "root.json",
        "--env",
        "PATH=/bin",
        "-o",
        "img",
        "-t",
        "t",
    ]);
    umoci_unpack(&t, "img:t", "bundle");
    check_caps_rootfs(&t.path("bundle/rootfs"), "umoci unpack");
    t.run(&["unpack", "oci:img:t", "unpacked"]);
    check_caps_rootfs(&t.path("unpacked"), "gantry unpack");

    // runc runs the capable busybox as an unprivileged user: the capabilities come from the
    // file alone (no ambient or inherited ones), inside the bounding set given.
    let config = t.path("bundle/config.json");
    let mut c = json(&fs::read_to_string(&config).unwrap());
    let p = &mut c["process"];
    p["terminal"] = false.into();
    p["noNewPrivileges"] = false.into();
    p["user"] = serde_json::json!({ "uid": 1000, "gid": 1000 });
    p["args"] = serde_json::json!(["/bin/busybox", "grep", "Cap", "/proc/self/status"]);
    let bounding = serde_json::json!(["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"]);
    p["capabilities"] = serde_json::json!({
        "bounding": bounding, "effective": [], "permitted": [], "inheritable": [], "ambient": []
    });
    fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let id = format!("gantry-caps-{}", std::process::id());
    let out = tool("runc")
        .args(["run", "-b"])
        .arg(t.path("bundle"))
        .arg(&id)
        .ok()
        .stdout;
    let field = |name: &str| {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(field("CapEff:"), CAP_BITS, "{out}");
    assert_eq!(field("CapPrm:"), CAP_BITS, "{out}");
    assert_eq!(field("CapBnd:") & CAP_BITS, CAP_BITS, "{out}");
}

#[test]
fn regression_unpreserved_xattrs_were_dropped_without_a_warning() {
    let t = crate::env();
    caps_rootfs(&t);
    // Host-only attributes: never carried, never warned about.
    sh(
        &t,
        "setfattr -n trusted.overlay.opaque -v y rootfs/etc && \
         setfattr -n trusted.admin -v x rootfs/etc/app.conf",
    );
    let out = t
        .gantry()
        .args([
            "layer",
            "--dir",
            "/=rootfs",
            "--preserve",
            "mode",
            "-o",
            "a.tar",
        ])
        .ok();
    assert_mentions(
        &out.stderr,
        &[
            "2 source files with extended attributes",
            "security.capability",
            "user.origin",
            "--preserve xattrs",
        ],
    );
    assert!(!out.stderr.contains("trusted."), "{}", out.stderr);
    let ls = t.run(&["ls", "--json", "a.tar"]);
    assert!(!ls.contains("xattrs"), "{ls}");

    // Preserved: no warning, except for attributes the policy leaves out (named).
    sh(&t, "setfattr -n security.ima -v 0x0401 rootfs/etc/app.conf");
    let out = t
        .gantry()
        .args([
            "layer",
            "--dir",
            "/=rootfs",
            "--preserve",
            "xattrs",
            "-o",
            "b.tar",
        ])
        .ok();
    assert!(!out.stderr.contains("source files"), "{}", out.stderr);
    assert_mentions(&out.stderr, &["left out", "security.ima (1 entry)"]);
    assert!(!out.stderr.contains("trusted."), "{}", out.stderr);
    let ls = t.run(&["ls", "--json", "b.tar"]);
    let rows: Vec<serde_json::Value> = ls.lines().map(json).collect();
    let conf = rows.iter().find(|r| r["path"] == "/etc/app.conf").unwrap();
    let x = &conf["xattrs"];
    assert_eq!(x["user.origin"], "ci", "{conf}");
    let bin = base64::engine::general_purpose::STANDARD
        .decode(x["user.bin"]["base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bin, BINARY);
    assert!(x.get("trusted.admin").is_none() && x.get("security.ima").is_none());
    let etc = rows.iter().find(|r| r["path"] == "/etc").unwrap();
    assert_eq!(etc["xattrs"], serde_json::json!({ "user.dir": "yes" }));
}

fn build_json(t: &TestEnv) -> serde_json::Value {
    let out = t.gantry().args(["build", "--json"]).ok();
    json(&out.stdout)
}

#[test]
fn regression_a_new_capability_kept_the_cached_layer() {
    let t = crate::env();
    caps_rootfs(&t);
    t.write(
        "gantry.toml",
        r#"
[layer.root]
dirs = { "/" = "rootfs" }
preserve = ["mode", "owner", "xattrs"]
compression = "none"

[image.app]
layers = ["root"]
platform = "linux/amd64"
"#,
    );
    let first = build_json(&t);
    let digest = |r: &serde_json::Value| r["layers"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(first["layers"][0]["cacheHit"], false);
    let again = build_json(&t);
    assert_eq!(again["layers"][0]["cacheHit"], true, "{again}");
    assert_eq!(digest(&again), digest(&first));

    sh(&t, "setcap cap_net_bind_service=ep rootfs/bin/busybox");
    let changed = build_json(&t);
    assert_eq!(changed["layers"][0]["cacheHit"], false, "{changed}");
    assert_ne!(digest(&changed), digest(&first));
    let ls = t.run(&["ls", "--json", "gantry-out/app"]);
    let row = ls
        .lines()
        .map(json)
        .find(|r| r["path"] == "/bin/busybox")
        .unwrap();
    let cap = base64::engine::general_purpose::STANDARD
        .decode(
            row["xattrs"]["security.capability"]["base64"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    // VFS_CAP_REVISION_2, effective; permitted = CAP_NET_BIND_SERVICE (10).
    assert_eq!(&cap[..8], &[1, 0, 0, 2, 0, 4, 0, 0], "{cap:?}");
}

#[test]
fn metadata_xattrs_take_binary_values_in_base64() {
    let t = crate::env();
    require("getcap");
    let busybox = gantry_test::busybox();
    // cap_chown,cap_net_raw=ep, as getfattr -e base64 prints it.
    let mut cap = vec![1, 0, 0, 2];
    cap.extend_from_slice(&(CAP_BITS as u32).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&cap);
    t.write(
        "layer.toml",
        format!(
            r#"
files = {{ "/bin/busybox" = "{busybox}" }}
metadata."/bin/busybox" = {{ mode = "0755", xattrs = {{ "security.capability" = {{ base64 = "{b64}" }}, "user.note" = "plain text" }} }}
"#,
            busybox = busybox.display()
        ),
    );
    t.run(&["layer", "--spec", "layer.toml", "--info", "l.json"]);
    t.run(&["image", "--layer", "l.json", "-o", "img", "-t", "t"]);
    umoci_unpack(&t, "img:t", "bundle");
    let (got, attrs) = caps_and_xattrs(&t.path("bundle/rootfs/bin/busybox"));
    assert!(got.contains(CAPS), "{got}");
    assert!(
        attrs.contains("user.note=0x706c61696e2074657874"),
        "{attrs}"
    );

    // The same on the command line (JSON), and the errors.
    t.run(&[
        "layer",
        "--content",
        "/x=1",
        "--metadata",
        &format!(r#"/x={{"xattrs":{{"user.b":{{"base64":"{b64}"}}}}}}"#),
        "-o",
        "x.tar",
    ]);
    let before = store_snapshot(&t.home());
    for (meta, needles) in [
        (
            r#"{"xattrs":{"user.b":{"base64":"not base64!"}}}"#,
            &["/x", "base64"][..],
        ),
        (r#"{"xattrs":{"user.b":{"hex":"00"}}}"#, &["/x", "hex"][..]),
        (
            r#"{"xattrs":{"trusted.overlay.opaque":"y"}}"#,
            &["/x", "trusted.overlay.opaque", "host data"][..],
        ),
        (
            r#"{"xattrs":{"nonamespace":"y"}}"#,
            &["/x", "namespace"][..],
        ),
        (
            r#"{"pax-records":{"SCHILY.xattr.user.a":"y"}}"#,
            &["/x", "xattrs"][..],
        ),
    ] {
        let e = t.fail(&[
            "layer",
            "--content",
            "/x=1",
            "--metadata",
            &format!("/x={meta}"),
            "-o",
            "bad.tar",
        ]);
        assert_mentions(&e, needles);
    }
    assert_eq!(store_snapshot(&t.home()), before);
    assert!(!t.path("bad.tar").exists());
}

/// One crafted tar member: name bytes, PAX records, content.
type Member<'a> = (&'a [u8], Vec<(&'a str, &'a [u8])>, &'a [u8]);

/// A tar built by hand with the `tar` crate.
fn craft_tar(entries: &[Member<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, pax, data) in entries {
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in pax {
                let body = k.len() + v.len() + 3;
                let mut len = body + body.to_string().len();
                if len.to_string().len() > body.to_string().len() {
                    len += 1;
                }
                data.extend_from_slice(format!("{len} {k}=").as_bytes());
                data.extend_from_slice(v);
                data.push(b'\n');
            }
            let mut h = tar::Header::new_ustar();
            h.set_path("PaxHeaders/x").unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn regression_trusted_overlay_xattrs_in_images_were_unpacked_quietly() {
    let t = crate::env();
    t.write(
        "evil.tar",
        craft_tar(&[
            (b"ok", vec![], b"x"),
            (
                b"etc",
                vec![("SCHILY.xattr.trusted.overlay.redirect", &b"/secret"[..])],
                b"y",
            ),
        ]),
    );
    t.run(&["layer", "--tar", "evil.tar", "--info", "evil.json"]);
    t.run(&["image", "--layer", "evil.json", "-o", "img", "-t", "t"]);
    let info = json(&fs::read_to_string(t.path("evil.json")).unwrap());
    let e = t.fail(&["unpack", "oci:img:t", "out"]);
    assert_mentions(
        &e,
        &[
            info["digest"].as_str().unwrap(),
            "\"etc\"",
            "trusted.overlay.redirect",
        ],
    );
}

#[test]
fn regression_wh_names_in_inputs_became_whiteouts() {
    let t = crate::env();
    t.write("tree/etc/.wh.config", "not a whiteout\n");
    t.write("tree/ok", "ok\n");
    t.write("deep/.wh.d/file", "x\n");
    t.write("file", "x\n");
    let before = store_snapshot(&t.home());
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--dir", "/=tree"],
            &["/etc/.wh.config", "tree/etc/.wh.config", "whiteout"],
        ),
        (
            &["--dir", "/x=deep"],
            &["/x/.wh.d", "deep/.wh.d", "whiteout"],
        ),
        (
            &["--content", "/etc/.wh.passwd=x"],
            &["/etc/.wh.passwd", "content"],
        ),
        (
            &["--file", "/etc/.wh..wh..opq=file"],
            &["/etc/.wh..wh..opq", "files"],
        ),
        (
            &["--symlink", "/.wh.bin=usr/bin"],
            &["/.wh.bin", "symlinks"],
        ),
        (&["--empty-dir", "/.wh.var/lib"], &[".wh.var", "empty-dirs"]),
        (
            &["--file", "/a=file", "--hardlink", "/.wh.a=/a"],
            &["/.wh.a", "hardlinks"],
        ),
        (
            &[
                "--whiteout",
                "/etc/passwd",
                "--metadata",
                r#"/etc/.wh.passwd={"uid":1}"#,
            ],
            &["/etc/.wh.passwd", "metadata"],
        ),
    ];
    for (args, needles) in cases {
        let mut a = vec!["layer"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "l.tar"]);
        let e = t.fail(&a);
        assert_mentions(&e, needles);
    }
    assert_eq!(store_snapshot(&t.home()), before);
    assert!(!t.path("l.tar").exists());

    // The same in a project: reported at the key, before any work.
    t.write(
        "gantry.toml",
        "[layer.a]\ncontent = { \"/etc/.wh.passwd\" = \"x\" }\n",
    );
    let e = t.fail(&["build"]);
    assert_mentions(&e, &["gantry.toml:2", "/etc/.wh.passwd", "whiteout"]);

    // The explicit options still make whiteouts, and an imported tar keeps its own.
    t.run(&[
        "layer",
        "--whiteout",
        "/etc/passwd",
        "--opaque",
        "/var/cache",
        "--compression",
        "none",
        "-o",
        "w.tar",
    ]);
    let names = tool("tar")
        .args(["-tf", "w.tar"])
        .current_dir(t.root())
        .ok()
        .stdout;
    assert_mentions(&names, &["etc/.wh.passwd", "var/cache/.wh..wh..opq"]);
    t.run(&["layer", "--tar", "w.tar", "-o", "kept.tar"]);
    assert_eq!(
        fs::read(t.path("kept.tar")).unwrap(),
        fs::read(t.path("w.tar")).unwrap()
    );
}

#[test]
fn regression_whiteouts_under_symlinks_went_unnoticed() {
    let t = crate::env();
    // The base: merged /usr.
    t.run(&[
        "layer",
        "--symlink",
        "/bin=usr/bin",
        "--content",
        "/usr/bin/foo=foo",
        "--info",
        "base.json",
    ]);
    // A tar made on a system where /bin is a directory, deleting /bin/foo.
    fs::create_dir_all(t.path("old/bin")).unwrap();
    t.write("old/bin/.wh.foo", "");
    t.write("old/etc/new.conf", "x\n");
    tool("tar")
        .args(["-cf", "old.tar", "-C", "old", "bin", "etc"])
        .current_dir(t.root())
        .ok();
    t.run(&["layer", "--tar", "old.tar", "--info", "old.json"]);
    let out = t
        .gantry()
        .args([
            "image",
            "--layer",
            "base.json",
            "--layer",
            "old.json",
            "-o",
            "img",
            "-t",
            "t",
        ])
        .ok();
    assert_mentions(
        &out.stderr,
        &[
            "warning",
            "/bin/.wh.foo",
            "symlink to usr/bin",
            "/usr/bin/.wh.foo",
        ],
    );
    // A whiteout where it belongs is no warning.
    t.run(&["layer", "--whiteout", "/usr/bin/foo", "--info", "good.json"]);
    let out = t
        .gantry()
        .args([
            "image",
            "--layer",
            "base.json",
            "--layer",
            "good.json",
            "-o",
            "img2",
            "-t",
            "t",
        ])
        .ok();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // In a project, on a base from an OCI layout (read locally for the check).
    t.write(
        "gantry.toml",
        r#"
[layer.old]
tar = "old.tar"

[image.app]
base = "oci:img2:t"
layers = ["old"]
"#,
    );
    let out = t.gantry().args(["build"]).ok();
    assert_mentions(
        &out.stderr,
        &["image.app", "/bin/.wh.foo", "/usr/bin/.wh.foo"],
    );
}

/// GNU tar's view of a tar file, with full UTC times.
fn gnu_listing(t: &TestEnv, tar: &str) -> String {
    tool("tar")
        .args(["--full-time", "-tvf", tar])
        .env("TZ", "UTC")
        .current_dir(t.root())
        .ok()
        .stdout
}

const TIMES: &[(&str, i64, &str)] = &[
    ("/t/minus-one", -1, "1969-12-31 23:59:59"),
    ("/t/y1950", -631_152_000, "1950-01-01 00:00:00"),
    ("/t/y2038", 2_147_483_648, "2038-01-19 03:14:08"),
    ("/t/y2300", 10_413_792_000, "2300-01-01 00:00:00"),
];

/// Checks the mtimes of [`TIMES`] under `root`; `past_2262`: also the one after 2262 (Go
/// tools such as umoci set times through nanoseconds in an `int64`, which ends in 2262).
fn check_times(root: &Path, who: &str, past_2262: bool) {
    for (path, secs, _) in TIMES {
        if !past_2262 && *secs > i64::MAX / 1_000_000_000 {
            continue;
        }
        let md = fs::symlink_metadata(root.join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(md.mtime(), *secs, "{who}: {path}");
    }
}

#[test]
fn times_before_1970_and_after_2038_round_trip() {
    let t = crate::env();
    let mut args: Vec<String> = vec!["layer".into()];
    for (path, secs, _) in TIMES {
        args.extend([
            "--content".into(),
            format!("{path}=x"),
            "--metadata".into(),
            format!(r#"{path}={{"mtime":{secs}}}"#),
        ]);
    }
    args.extend(
        [
            "--compression",
            "none",
            "-o",
            "times.tar",
            "--info",
            "times.json",
        ]
        .map(String::from),
    );
    t.gantry().args(&args).ok();
    let listing = gnu_listing(&t, "times.tar");
    for (path, _, shown) in TIMES {
        let line = listing
            .lines()
            .find(|l| l.ends_with(path.trim_start_matches('/')))
            .unwrap_or_else(|| panic!("{path} in {listing}"));
        assert!(line.contains(shown), "GNU tar: {line}, want {shown}");
    }
    fs::create_dir(t.path("tarx")).unwrap();
    tool("tar")
        .args(["-xf", "times.tar", "-C", "tarx"])
        .current_dir(t.root())
        .ok();
    check_times(&t.path("tarx"), "GNU tar", true);
    t.run(&["image", "--layer", "times.json", "-o", "img", "-t", "t"]);
    t.run(&["unpack", "oci:img:t", "unpacked"]);
    check_times(&t.path("unpacked"), "gantry unpack", true);
    umoci_unpack(&t, "img:t", "bundle");
    check_times(&t.path("bundle/rootfs"), "umoci unpack", false);
    let ls = t.run(&["ls", "--json", "img:t"]);
    for (path, secs, _) in TIMES {
        let row = ls.lines().map(json).find(|r| r["path"] == *path).unwrap();
        assert_eq!(row["mtime"], *secs, "gantry ls {path}");
    }
}

#[test]
fn regression_gnu_base256_times_before_1970_unpacked_as_the_year_2446() {
    let t = crate::env();
    t.write("src/old", "old\n");
    // GNU tar writes times before 1970 in base-256 in its own format.
    tool("touch")
        .args(["-d", "@-631152000", "src/old"])
        .current_dir(t.root())
        .ok();
    tool("tar")
        .args(["--format=gnu", "-cf", "gnu.tar", "-C", "src", "old"])
        .current_dir(t.root())
        .ok();
    let raw = fs::read(t.path("gnu.tar")).unwrap();
    assert_eq!(raw[136] & 0x80, 0x80, "GNU tar used base-256 for the mtime");
    assert!(gnu_listing(&t, "gnu.tar").contains("1950-01-01 00:00:00"));
    t.run(&["layer", "--tar", "gnu.tar", "--info", "gnu.json"]);
    t.run(&["image", "--layer", "gnu.json", "-o", "img", "-t", "t"]);
    t.run(&["unpack", "oci:img:t", "unpacked"]);
    assert_eq!(
        fs::metadata(t.path("unpacked/old")).unwrap().mtime(),
        -631_152_000
    );
    umoci_unpack(&t, "img:t", "bundle");
    assert_eq!(
        fs::metadata(t.path("bundle/rootfs/old")).unwrap().mtime(),
        -631_152_000
    );
    let ls = t.run(&["ls", "--json", "gnu.json"]);
    assert_eq!(json(ls.lines().next().unwrap())["mtime"], -631_152_000);
}

/// 35 names a listing must keep apart: control characters, escapes, bytes that are not
/// UTF-8 (which all look like U+FFFD as text), and a name that fakes a second line.
fn crafted_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = vec![
        b"fake\n-rw-r--r--  root root  1 sha256:000000000000 passwd".to_vec(),
        b"tab\there".to_vec(),
        b"back\\slash".to_vec(),
        b"back\\134slash".to_vec(),
        b"cr\rname".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        "line\u{2028}sep".as_bytes().to_vec(),
    ];
    for c in [1u8, 7, 8, 11, 12, 27, 127] {
        names.push(vec![b'c', c]);
    }
    for b in 0x80u8..0x95 {
        names.push(vec![b'u', b]);
    }
    assert_eq!(names.len(), 35);
    names
}

#[test]
fn regression_ls_printed_crafted_names_raw_and_merged_them() {
    let t = crate::env();
    let names = crafted_names();
    let entries: Vec<Member<'_>> = names
        .iter()
        .map(|n| (n.as_slice(), vec![], &b"x"[..]))
        .collect();
    t.write("names.tar", craft_tar(&entries));
    // GNU tar: one line per entry.
    assert_eq!(gnu_listing(&t, "names.tar").lines().count(), 35);

    let text = t.run(&["ls", "names.tar"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 35, "{text}");
    let shown: BTreeSet<&str> = lines
        .iter()
        .map(|l| l.rsplit_once(" /").unwrap().1)
        .collect();
    assert_eq!(shown.len(), 35, "{text}");
    assert!(shown.contains("fake\\n-rw-r--r--  root root  1 sha256:000000000000 passwd"));
    for want in [
        "tab\\there",
        "back\\\\slash",
        "back\\\\134slash",
        "cr\\rname",
        "u\\200",
        "u\\224",
        "c\\001",
        "c\\177",
        "café",
        "line\\342\\200\\250sep",
    ] {
        assert!(shown.contains(want), "{want} in {shown:?}");
    }

    let exact = |ls: &str| -> BTreeSet<Vec<u8>> {
        ls.lines()
            .map(json)
            .map(|r| match r.get("pathBase64") {
                Some(b) => base64::engine::general_purpose::STANDARD
                    .decode(b.as_str().unwrap())
                    .unwrap(),
                None => r["path"].as_str().unwrap().as_bytes().to_vec(),
            })
            .collect()
    };
    let want: BTreeSet<Vec<u8>> = names
        .iter()
        .map(|n| [b"/".as_slice(), n].concat())
        .collect();
    let json_ls = t.run(&["ls", "--json", "names.tar"]);
    assert_eq!(json_ls.lines().count(), 35);
    assert_eq!(exact(&json_ls), want);

    // A second layer whites out one name that is not UTF-8: exactly that one goes.
    t.write("wh.tar", craft_tar(&[(b".wh.u\x85", vec![], b"")]));
    t.run(&["layer", "--tar", "names.tar", "--info", "names.json"]);
    t.run(&["layer", "--tar", "wh.tar", "--info", "wh.json"]);
    t.run(&[
        "image",
        "--layer",
        "names.json",
        "--layer",
        "wh.json",
        "-o",
        "img",
        "-t",
        "t",
    ]);
    let merged = exact(&t.run(&["ls", "--json", "img:t"]));
    let mut expected = want.clone();
    assert!(expected.remove(b"/u\x85".as_slice()));
    assert_eq!(merged, expected);
    // umoci agrees.
    umoci_unpack(&t, "img:t", "bundle");
    let on_disk: BTreeSet<Vec<u8>> = fs::read_dir(t.path("bundle/rootfs"))
        .unwrap()
        .map(|e| [b"/".as_slice(), e.unwrap().file_name().as_bytes()].concat())
        .collect();
    assert_eq!(on_disk, expected);
}

#[test]
fn steps_that_make_files_named_like_whiteouts_fail_naming_them() {
    let t = crate::env();
    let runc = require("runc");
    let busybox = gantry_test::busybox();
    let project = |step: &str| {
        t.write(
            "gantry.toml",
            format!(
                r#"
[layer.busybox]
files = {{ "/bin/busybox" = "{busybox}" }}
symlinks = {{ "/bin/sh" = "busybox", "/bin/touch" = "busybox", "/bin/mkdir" = "busybox", "/bin/rm" = "busybox" }}
content = {{ "/etc/keep" = "x\n", "/etc/gone" = "x\n" }}

[image.base]
layers = ["busybox"]
platform = "linux/amd64"
env = {{ PATH = "/bin" }}

[step.s]
base = "base"
{step}
"#,
                busybox = busybox.display()
            ),
        );
    };
    let build = || {
        let mut c = t.gantry();
        c.arg("--runtime").arg(&runc).args(["build", "s"]);
        c
    };
    // A diff with a real deletion is fine: that whiteout comes from the deletion.
    project("capture = \"diff\"\nscript = \"rm /etc/gone && touch /etc/new\"");
    let out = build().ok();
    assert_mentions(&out.stderr, &["step.s", "built"]);
    for (step, needle) in [
        (
            "capture = \"diff\"\nscript = \"touch /etc/.wh.keep\"",
            "/etc/.wh.keep",
        ),
        (
            "outputs = [\"/out\"]\nscript = \"mkdir -p /out/.wh.d && touch /out/.wh.d/f\"",
            "/out/.wh.d",
        ),
    ] {
        project(step);
        let e = build().fails().stderr;
        assert_mentions(&e, &["step.s", needle, "whiteout"]);
    }
}
