//! Hostile layers: the adversarial cases T1–T12 of research/reliability-security.md §4.
//!
//! Each test unpacks into T/root next to a decoy T/host (and T/root-evil) and asserts, besides
//! the expected error or result, that nothing outside T/root was created, removed or changed
//! (names, types, modes, owners, mtimes, link counts, inodes, contents, xattrs). Tests run as
//! root.

mod common;

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{Fx, Opt, SECRET, Tb, gz, names, opts, stat, zst};
use gantry_unpack::{DevicePolicy, Error, Limits, RootfsCache, UnpackOptions};
use tar::EntryType;

fn abs(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

// ---- T1: traversal names ----

#[test]
fn t1_traversal_names_are_refused() {
    for name in [
        &b"../x"[..],
        b"../../x",
        b"..",
        b"/../x",
        b"a/../../x",
        b"./../x",
        b"a/b/../../../x",
    ] {
        for ty in [EntryType::Regular, EntryType::Directory, EntryType::Symlink] {
            let fx = Fx::new();
            let mut tb = Tb::new();
            tb.file("ok", "fine");
            tb.entry(name, ty, b"", b"target", &Opt::default());
            let err = fx.refuses(&tb.finish(), &["'..'"]);
            assert!(
                err.contains(&*String::from_utf8_lossy(name)),
                "{err} does not name the entry"
            );
            assert!(!fx.t.path().join("x").exists());
            assert!(!fx.t.path().parent().unwrap().join("x").exists());
        }
    }
}

#[test]
fn t1_nul_bytes_in_names_are_refused() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    let o = Opt {
        pax: vec![("path".into(), b"etc/pass\0wd".to_vec())],
        ..Opt::default()
    };
    tb.file_with("placeholder", "x", &o);
    fx.refuses(&tb.finish(), &["NUL"]);
    assert!(names(&fx.root).is_empty());
}

// ---- T2: absolute names ----

#[test]
fn t2_absolute_names_land_inside_the_root() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file("/etc/x", "1")
        .file("./etc/y", "2")
        .file("//etc/z", "3");
    tb.file("/./etc//w", "4");
    fx.unpack(&tb.finish()).unwrap();
    for (n, c) in [("x", "1"), ("y", "2"), ("z", "3"), ("w", "4")] {
        assert_eq!(fs::read_to_string(fx.root.join("etc").join(n)).unwrap(), c);
    }
    assert_eq!(names(&fx.root), vec![b"etc".to_vec()]);
    fx.assert_host_untouched();
}

// ---- T3: symlink escapes ----

#[test]
fn t3_symlinks_out_of_the_root_are_followed_only_inside_it() {
    let marker = format!("gantry-unpack-t3-{}", std::process::id());
    for two_layers in [false, true] {
        let fx = Fx::new();
        let host_abs = abs(&fx.host);
        let mut links = Tb::new();
        // The symlinks' targets exist inside the root (a dangling one is T7's error case).
        links
            .dir("host")
            .dir(&host_abs)
            .symlink("l1", "/")
            .symlink("l2", "../../..")
            .symlink("l3", "/../..")
            .symlink("l4", "../host")
            .symlink("l5", "/../host")
            .symlink("l6", &host_abs);
        let mut files = Tb::new();
        files
            .file(format!("l1/tmp/{marker}"), "1")
            .file(format!("l2/tmp/{marker}-2"), "2")
            .file("l3/pwn3", "3")
            .file("l4/pwn4", "4")
            .file("l5/pwn5", "5")
            .file("l6/pwn6", "6")
            .file("l4/secret", "overwritten?");
        if two_layers {
            fx.unpack(&links.finish()).unwrap();
            fx.unpack(&files.finish()).unwrap();
        } else {
            let mut both = Tb::new();
            both.data(&links.bytes()).data(&files.bytes());
            fx.unpack(&both.finish()).unwrap();
        }
        // Everything landed inside the root ...
        assert_eq!(fs::read(fx.root.join("tmp").join(&marker)).unwrap(), b"1");
        assert_eq!(
            fs::read(fx.root.join("tmp").join(format!("{marker}-2"))).unwrap(),
            b"2"
        );
        assert_eq!(fs::read(fx.root.join("pwn3")).unwrap(), b"3");
        assert_eq!(fs::read(fx.root.join("host/pwn4")).unwrap(), b"4");
        assert_eq!(fs::read(fx.root.join("host/pwn5")).unwrap(), b"5");
        assert_eq!(
            fs::read(fx.root.join("host/secret")).unwrap(),
            b"overwritten?"
        );
        let in_root_host = fx.root.join(fx.host.strip_prefix("/").unwrap());
        assert_eq!(fs::read(in_root_host.join("pwn6")).unwrap(), b"6");
        // ... and the links are stored verbatim.
        assert_eq!(fs::read_link(fx.root.join("l6")).unwrap(), fx.host);
        assert_eq!(
            fs::read_link(fx.root.join("l2")).unwrap(),
            Path::new("../../..")
        );
        // ... never on the host.
        fx.assert_host_untouched();
        assert!(!Path::new("/tmp").join(&marker).exists());
        assert!(!Path::new("/pwn3").exists());
    }
}

// ---- T4: the type of the root ----

#[test]
fn t4_the_root_never_changes_type() {
    let host = Fx::new().host;
    for (name, ty) in [
        (&b"."[..], EntryType::Symlink),
        (b"/", EntryType::Symlink),
        (b"./", EntryType::Regular),
        (b"", EntryType::Regular),
        (b".", EntryType::Link),
        (b"/.", EntryType::Fifo),
    ] {
        let fx = Fx::new();
        let mut l1 = Tb::new();
        l1.entry(name, ty, b"", &abs(&host), &Opt::default());
        let mut l2 = Tb::new();
        l2.file("etc/x", "x");
        let layers = vec![
            common::image_layer("sha256:layer-one", l1.finish()),
            common::image_layer("sha256:layer-two", l2.finish()),
        ];
        let err = gantry_unpack::unpack_image(&fx.root, layers, &opts()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("type of the root"), "{msg}");
        assert!(msg.contains("sha256:layer-one"), "{msg}");
        assert!(fs::symlink_metadata(&fx.root).unwrap().is_dir());
        assert!(names(&fx.root).is_empty(), "layer two was not applied");
        fx.assert_host_untouched_but_t_mtime();
    }
}

#[test]
fn t4_a_root_directory_entry_updates_the_root() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    let o = Opt {
        mode: 0o750,
        uid: 7,
        gid: 8,
        mtime: 1234,
        ..Opt::default()
    };
    tb.dir_with("./", &o).file("a", "a");
    fx.unpack(&tb.finish()).unwrap();
    let st = stat(&fx.root);
    assert_eq!((st.mode, st.uid, st.gid, st.mtime.0), (0o750, 7, 8, 1234));
    fx.assert_host_untouched();
}

// ---- T5: hard-link escapes ----

#[test]
fn t5_hard_links_cannot_reach_outside_the_root() {
    let fx0 = Fx::new();
    let host_abs = abs(&fx0.host);
    let cases: Vec<(Tb, &str)> = vec![
        (
            {
                let mut t = Tb::new();
                t.hardlink("h", "../../host/secret");
                t
            },
            "'..'",
        ),
        (
            {
                let mut t = Tb::new();
                t.hardlink("h", "../host/secret");
                t
            },
            "'..'",
        ),
        (
            {
                let mut t = Tb::new();
                t.hardlink("h", "/host/secret");
                t
            },
            "does not exist",
        ),
        (
            {
                let mut t = Tb::new();
                let mut target = host_abs.clone();
                target.extend_from_slice(b"/secret");
                t.hardlink("h", target);
                t
            },
            "does not exist",
        ),
        (
            {
                let mut t = Tb::new();
                t.symlink("l", &host_abs).hardlink("h", "l/secret");
                t
            },
            "does not exist",
        ),
        (
            {
                let mut t = Tb::new();
                t.symlink("l", "../host").hardlink("h", "l/secret");
                t
            },
            "does not exist",
        ),
        // The sibling-prefix case: T/root-evil starts like T/root.
        (
            {
                let mut t = Tb::new();
                t.symlink("s", "../root-evil").hardlink("h", "s/secret");
                t
            },
            "does not exist",
        ),
        (
            {
                let mut t = Tb::new();
                t.dir("d").hardlink("h", "d");
                t
            },
            "is a directory",
        ),
        (
            {
                let mut t = Tb::new();
                t.hardlink("h", "/");
                t
            },
            "root directory",
        ),
        (
            {
                let mut t = Tb::new();
                t.file("h", "x").hardlink("h", "h");
                t
            },
            "itself",
        ),
    ];
    drop(fx0);
    for (tb, needle) in cases {
        let fx = Fx::new();
        // The decoys are at the same place in every fixture.
        fx.refuses(&tb.finish(), &[needle, "\"h\""]);
        assert_eq!(fs::metadata(fx.host.join("secret")).unwrap().nlink(), 1);
        if needle != "itself" {
            assert!(!fx.root.join("h").exists(), "{needle}");
        }
    }
}

#[test]
fn t5_a_hard_link_to_a_symlink_links_the_symlink_and_later_writes_stay_inside() {
    let fx = Fx::new();
    let mut secret = abs(&fx.host);
    secret.extend_from_slice(b"/secret");
    let mut tb = Tb::new();
    tb.symlink("lsec", &secret)
        .hardlink("h", "lsec")
        .file("h", "written through the link?")
        .file("lsec", "or this one?");
    fx.unpack(&tb.finish()).unwrap();
    assert_eq!(
        fs::read(fx.root.join("h")).unwrap(),
        b"written through the link?"
    );
    assert_eq!(fs::read(fx.root.join("lsec")).unwrap(), b"or this one?");
    assert_eq!(fs::read(fx.host.join("secret")).unwrap(), SECRET);
    assert_eq!(fs::metadata(fx.host.join("secret")).unwrap().nlink(), 1);
    fx.assert_host_untouched();

    // And in a layer on its own: the hard link is the symlink itself.
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.symlink("lsec", &secret).hardlink("h", "lsec");
    fx.unpack(&tb.finish()).unwrap();
    let (a, b) = (stat(&fx.root.join("lsec")), stat(&fx.root.join("h")));
    assert_eq!((a.kind, a.ino, a.nlink), ('l', b.ino, 2));
    fx.assert_host_untouched();
}

// ---- T6: metadata through symlinks ----

#[test]
fn t6_metadata_is_never_applied_through_symlinks() {
    let fx = Fx::new();
    let mut secret = abs(&fx.host);
    secret.extend_from_slice(b"/secret");
    let meta = Opt {
        mode: 0o4777,
        uid: 1234,
        gid: 4321,
        mtime: 42,
        pax: vec![("SCHILY.xattr.user.pwn".into(), b"yes".to_vec())],
        ..Opt::default()
    };
    let mut l1 = Tb::new();
    l1.symlink("f", &secret)
        .symlink("d", abs(&fx.host))
        .symlink("d2", "../host")
        .symlink("rel", "../host/secret");
    fx.unpack(&l1.finish()).unwrap();
    let mut l2 = Tb::new();
    l2.file_with("f", "new content", &meta)
        .dir_with("d", &meta)
        .dir_with("d2/.", &meta)
        .entry(b"rel", EntryType::Fifo, b"", b"", &meta);
    fx.unpack(&l2.finish()).unwrap();
    fx.assert_host_untouched();
    let f = stat(&fx.root.join("f"));
    assert_eq!(
        (f.kind, f.mode, f.uid, f.gid, f.mtime.0),
        ('f', 0o4777, 1234, 4321, 42)
    );
    assert_eq!(
        f.xattrs.get("user.pwn").map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    for d in ["d", "d2"] {
        let s = stat(&fx.root.join(d));
        assert_eq!(
            (s.kind, s.mode, s.uid, s.mtime.0),
            ('d', 0o4777, 1234, 42),
            "{d}"
        );
    }
    assert!(
        fs::symlink_metadata(fx.root.join("rel"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

// ---- T7: parents through `..` symlinks ----

#[test]
fn t7_missing_parents_are_created_inside_the_root() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.symlink("s", "..")
        .file("s/a/b/c/file", "x")
        .symlink("s2", "../../../..")
        .file("s2/a2/file", "y");
    fx.unpack(&tb.finish()).unwrap();
    assert!(!fx.t.path().join("a").exists());
    assert!(!fx.t.path().join("a2").exists());
    assert_eq!(fs::read(fx.root.join("a/b/c/file")).unwrap(), b"x");
    assert_eq!(fs::read(fx.root.join("a2/file")).unwrap(), b"y");
    let st = stat(&fx.root.join("a/b"));
    assert_eq!(st.mode, 0o755, "implicit parents are 0755");
    fx.assert_host_untouched();
}

#[test]
fn t7_a_dangling_symlink_parent_is_an_error_and_creates_nothing_outside() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.symlink("d", "/nonexistent-gantry-t7/x")
        .file("d/y/file", "x");
    fx.refuses(&tb.finish(), &["\"d/y/file\"", "parent directory"]);
    assert!(!Path::new("/nonexistent-gantry-t7").exists());
}

// ---- T8: whiteouts ----

#[test]
fn t8_invalid_whiteouts_are_refused() {
    for (name, needle) in [
        (&b".wh."[..], "invalid whiteout"),
        (b".wh..", "invalid whiteout"),
        (b".wh...", "invalid whiteout"),
        (b"etc/.wh..", "invalid whiteout"),
        (b"etc/.wh.", "invalid whiteout"),
        (b".wh.etc/x", "cannot have children"),
        (b"dne/../.wh.etc", "'..'"),
    ] {
        let fx = Fx::new();
        let mut lower = Tb::new();
        lower.file("etc/passwd", "root").file("keep", "k");
        fx.unpack(&lower.finish()).unwrap();
        let mut tb = Tb::new();
        tb.file(name, "");
        fx.refuses(&tb.finish(), &[needle]);
        assert_eq!(fs::read(fx.root.join("etc/passwd")).unwrap(), b"root");
        assert_eq!(fs::read(fx.root.join("keep")).unwrap(), b"k");
    }
}

#[test]
fn t8_whiteouts_through_symlinks_remove_only_inside_the_root() {
    let fx = Fx::new();
    let host = abs(&fx.host);
    let mut lower = Tb::new();
    lower
        .symlink("l", &host)
        .symlink("l2", "../host")
        .symlink("l3", &host)
        .file("etc/x", "x")
        .symlink("localetc", "/etc");
    fx.unpack(&lower.finish()).unwrap();
    let mut upper = Tb::new();
    upper
        .file("l/.wh.secret", "")
        .file("l2/.wh.secret", "")
        .file("l2/.wh.sub", "")
        .file("l3/.wh..wh..opq", "")
        .file(".wh.l", "")
        .file("localetc/.wh.x", "");
    let stats = fx.unpack(&upper.finish()).unwrap();
    assert_eq!(stats.whiteouts, 6);
    fx.assert_host_untouched();
    assert!(
        fs::symlink_metadata(fx.root.join("l")).is_err(),
        "the symlink itself went"
    );
    assert!(
        fs::symlink_metadata(fx.root.join("l2"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(fx.root.join("l3"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        !fx.root.join("etc/x").exists(),
        "localetc/.wh.x removed $root/etc/x"
    );
}

fn opaque_case(opaque_first: bool) {
    let fx = Fx::new();
    let mut lower = Tb::new();
    lower
        .file("d/old", "old")
        .file("d/sub/old2", "old2")
        .file("d/same", "lower")
        .file("other/keep", "k");
    fx.unpack(&lower.finish()).unwrap();
    let mut upper = Tb::new();
    if opaque_first {
        upper.file("d/.wh..wh..opq", "");
    }
    upper
        .file("d/new", "new")
        .file("d/sub/new2", "new2")
        .file("d/same", "upper")
        .file("d/.wh.gone", "");
    if !opaque_first {
        upper.file("d/.wh..wh..opq", "");
    }
    fx.unpack(&upper.finish()).unwrap();
    let d = fx.root.join("d");
    assert_eq!(
        names(&d),
        vec![b"new".to_vec(), b"same".to_vec(), b"sub".to_vec()]
    );
    assert_eq!(names(&d.join("sub")), vec![b"new2".to_vec()]);
    assert_eq!(fs::read(d.join("same")).unwrap(), b"upper");
    assert_eq!(fs::read(fx.root.join("other/keep")).unwrap(), b"k");
    // No whiteout file is ever extracted.
    let out = Command::new("find")
        .arg(&fx.root)
        .arg("-name")
        .arg(".wh.*")
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    fx.assert_host_untouched();
}

#[test]
fn t8_opaque_whiteout_first_hides_only_lower_layers() {
    opaque_case(true);
}

#[test]
fn t8_opaque_whiteout_last_hides_only_lower_layers() {
    opaque_case(false);
}

#[test]
fn t8_a_whiteout_spares_what_its_own_layer_made() {
    let fx = Fx::new();
    let mut lower = Tb::new();
    lower.file("x/old", "o").file("y", "lower y");
    fx.unpack(&lower.finish()).unwrap();
    let mut upper = Tb::new();
    upper
        .file("x/new", "n")
        .file(".wh.x", "")
        .file("y", "upper y")
        .file(".wh.y", "");
    fx.unpack(&upper.finish()).unwrap();
    assert_eq!(names(&fx.root.join("x")), vec![b"new".to_vec()]);
    assert_eq!(fs::read(fx.root.join("y")).unwrap(), b"upper y");
}

// ---- T9: devices ----

fn device_layer() -> Vec<u8> {
    let mut tb = Tb::new();
    let cap = {
        // VFS_CAP_REVISION_2: magic | effective, then permitted/inheritable pairs.
        let mut v = Vec::new();
        v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // CAP_NET_BIND_SERVICE
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    };
    tb.device("dev/sda", EntryType::Block, 8, 0)
        .device("dev/null", EntryType::Char, 1, 3)
        .entry(b"dev/fifo", EntryType::Fifo, b"", b"", &Opt::default())
        .file_with(
            "bin/su",
            "#!suid",
            &Opt {
                mode: 0o4755,
                ..Opt::default()
            },
        )
        .file_with(
            "bin/ping",
            "ping",
            &Opt {
                mode: 0o755,
                pax: vec![("SCHILY.xattr.security.capability".into(), cap)],
                ..Opt::default()
            },
        );
    tb.finish()
}

#[test]
fn t9_devices_are_created_as_root_inside_a_private_cache() {
    let fx = Fx::new();
    fs::set_permissions(fx.t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let cache = RootfsCache::open(&fx.t.path().join("cache")).unwrap();
    let layer = device_layer();
    let rootfs = cache
        .get_or_unpack(
            &[gantry_oci::Digest::sha256(&layer)],
            || {
                Ok(vec![(
                    "dev-layer".to_owned(),
                    Box::new(io::Cursor::new(layer)) as Box<dyn Read>,
                )])
            },
            &opts(),
        )
        .unwrap();
    let sda = fs::symlink_metadata(rootfs.join("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));
    assert_eq!(sda.mode() & 0o7777, 0o660);
    let null = fs::symlink_metadata(rootfs.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(
        fs::symlink_metadata(rootfs.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(stat(&rootfs.join("bin/su")).mode, 0o4755);
    let ping = stat(&rootfs.join("bin/ping"));
    assert_eq!(
        ping.xattrs.get("security.capability").map(Vec::len),
        Some(20),
        "{ping:?}"
    );
    // The cache is private: an unprivileged user cannot reach the setuid file or devices.
    for d in [fx.t.path().join("cache"), cache.dir().to_owned()] {
        assert_eq!(
            fs::metadata(&d).unwrap().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
    }
    let public = fx.t.path().join("public");
    fs::create_dir(&public).unwrap();
    fs::write(public.join("x"), "x").unwrap();
    let as_nobody = |p: &Path| {
        gantry_test::tool("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "stat"])
            .arg(p)
            .output()
            .unwrap()
    };
    assert!(
        as_nobody(&public.join("x")).status.success(),
        "control: nobody can stat a public file"
    );
    for p in ["bin/su", "dev/sda"] {
        let out = as_nobody(&rootfs.join(p));
        assert!(!out.status.success(), "nobody reached {p}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    }
}

#[test]
fn t9_device_policies_skip_and_placeholder() {
    for policy in [DevicePolicy::Skip, DevicePolicy::Placeholder] {
        let fx = Fx::new();
        let mut lower = Tb::new();
        lower.file("dev/null", "a lower file");
        fx.unpack(&lower.finish()).unwrap();
        let o = UnpackOptions {
            devices: policy,
            ..opts()
        };
        let stats = fx.unpack_with(&device_layer(), &o).unwrap();
        assert_eq!(stats.skipped_devices, 2, "{policy:?}");
        assert_eq!(stats.devices, 1, "the fifo is created whatever the policy");
        for dev in ["dev/sda", "dev/null"] {
            let p = fx.root.join(dev);
            match policy {
                DevicePolicy::Skip => assert!(fs::symlink_metadata(&p).is_err(), "{dev}"),
                _ => {
                    let st = stat(&p);
                    assert_eq!((st.kind, st.mode), ('f', 0), "{dev}");
                    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
                }
            }
        }
        assert!(
            fs::symlink_metadata(fx.root.join("dev/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        fx.assert_host_untouched();
    }
}

#[test]
fn t9_out_of_range_device_numbers_are_refused() {
    for (major, minor) in [(4096, 0), (0o7777777, 1), (1, 1 << 20)] {
        for policy in [DevicePolicy::Create, DevicePolicy::Skip] {
            let fx = Fx::new();
            let mut tb = Tb::new();
            tb.device("dev/evil", EntryType::Block, major, minor);
            let o = UnpackOptions {
                devices: policy,
                ..opts()
            };
            let err = fx.unpack_with(&tb.finish(), &o).unwrap_err().to_string();
            assert!(
                err.contains("out of range") && err.contains("dev/evil"),
                "{err}"
            );
            assert!(!fx.root.join("dev/evil").exists());
            fx.assert_host_untouched();
        }
    }
    // A negative (base-256) major.
    let fx = Fx::new();
    let mut h = common::header(false, b"dev/neg", EntryType::Char, 0);
    h.as_ustar_mut().unwrap().dev_major = [0xff; 8];
    let mut tb = Tb::new();
    tb.raw(h, b"");
    fx.refuses(&tb.finish(), &["device major", "dev/neg"]);
}

// ---- T10: bombs ----

/// A reader producing a tar header for a file of `size` bytes and then zeros, generated on
/// the fly (nothing of that size is ever in memory).
fn zeros_after(head: Vec<u8>, size: u64) -> impl Read {
    io::Cursor::new(head).chain(io::repeat(0).take(size))
}

fn big_file_header(size: u64) -> Vec<u8> {
    let mut h = common::header(false, b"bomb", EntryType::Regular, size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn t10_gzip_bomb_hits_the_size_cap_while_streaming() {
    let fx = Fx::new();
    let size = 2u64 << 30;
    let bomb = flate2::read::GzEncoder::new(
        zeros_after(big_file_header(size), size),
        flate2::Compression::fast(),
    );
    let o = UnpackOptions {
        limits: Limits {
            max_layer_size: 64 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    let start = Instant::now();
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:bomb", bomb, &o).unwrap_err();
    assert!(matches!(err, Error::Limit { .. }), "{err}");
    assert!(err.to_string().contains("size limit"), "{err}");
    assert!(
        start.elapsed().as_secs() < 30,
        "aborted early, not after 2 GiB"
    );
    assert!(fs::metadata(fx.root.join("bomb")).unwrap().len() <= 64 << 20);
    fx.assert_host_untouched();
}

#[test]
fn t10_gzip_bomb_hits_the_ratio_cap() {
    let fx = Fx::new();
    let size = 2u64 << 30;
    let bomb = flate2::read::GzEncoder::new(
        zeros_after(big_file_header(size), size),
        flate2::Compression::best(),
    );
    let o = UnpackOptions {
        limits: Limits {
            max_ratio: 100,
            ratio_floor: 1 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:bomb", bomb, &o).unwrap_err();
    assert!(err.to_string().contains("ratio limit"), "{err}");
    assert!(fs::metadata(fx.root.join("bomb")).unwrap().len() < 8 << 20);
    fx.assert_host_untouched();
}

#[test]
fn t10_small_compressible_layers_pass_under_the_floor() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file("zeros", vec![0u8; 4 << 20]);
    let layer = gz(&tb.finish());
    assert!(layer.len() < 64 << 10, "ratio is over 60");
    let o = UnpackOptions {
        limits: Limits {
            max_ratio: 10,
            ratio_floor: 8 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    fx.unpack_with(&layer, &o).unwrap();
}

#[test]
fn t10_zstd_windows_over_128_mib_are_refused() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file("f", vec![7u8; 1 << 20]);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.window_log(31).unwrap();
    enc.long_distance_matching(true).unwrap();
    io::Write::write_all(&mut enc, &tb.finish()).unwrap();
    let layer = enc.finish().unwrap();
    // The frame really declares a 2 GiB window: a plain decoder refuses it too.
    assert!(zstd::decode_all(&layer[..]).is_err());
    let err = fx.refuses(&layer, &["memory"]);
    assert!(!fx.root.join("f").exists(), "{err}");
}

#[test]
fn t10_trailing_zeros_after_an_empty_tar_count_toward_the_cap() {
    let fx = Fx::new();
    let o = UnpackOptions {
        limits: Limits {
            max_layer_size: 64 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    // Plain and gzip: an empty archive (all zero blocks) of 2 GiB.
    let plain = io::repeat(0).take(2 << 30);
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:zeros", plain, &o).unwrap_err();
    assert!(err.to_string().contains("size limit"), "{err}");
    let gzipped =
        flate2::read::GzEncoder::new(io::repeat(0).take(2 << 30), flate2::Compression::fast());
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:zeros", gzipped, &o).unwrap_err();
    assert!(err.to_string().contains("size limit"), "{err}");
    assert!(names(&fx.root).is_empty());
    fx.assert_host_untouched();
    // Zeros within the cap are fine; anything else after the end is not.
    let mut tb = Tb::new();
    tb.file("a", "a");
    let mut padded = tb.finish();
    padded.extend(vec![0u8; 1 << 20]);
    fx.unpack(&padded).unwrap();
    padded.push(1);
    fx.refuses(&padded, &["data follows the end of the archive"]);
}

#[test]
fn t10_truncated_and_corrupt_streams_are_refused() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file("a", vec![b'a'; 2000]);
    fx.refuses(&tb.bytes(), &["end-of-archive marker"]);
    let full = tb.finish();
    fx.refuses(&full[..1000], &["truncated"]);
    let mut g = gz(&full);
    g.extend_from_slice(b"garbage after the gzip stream");
    fx.refuses(&g, &["layer"]);
    let g = gz(&full);
    fx.refuses(&g[..g.len() - 10], &["truncated"]);
    fx.refuses(b"", &["empty"]);
    fx.refuses(&[b'x'; 2048], &["corrupt"]);
}

#[test]
fn t10_multi_member_gzip_and_zstd_are_read_whole() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file("a", vec![b'a'; 300_000]).file("b", "b");
    let tar = tb.finish();
    let mut two = gz(&tar[..100_000]);
    two.extend(gz(&tar[100_000..]));
    fx.unpack(&two).unwrap();
    assert_eq!(fs::read(fx.root.join("a")).unwrap().len(), 300_000);
    assert_eq!(fs::read(fx.root.join("b")).unwrap(), b"b");
    let fx = Fx::new();
    let stats = fx.unpack(&zst(&tar)).unwrap();
    assert_eq!(stats.files, 2);
    assert_eq!(stats.bytes, tar.len() as u64);
}

#[test]
fn t10_entry_count_cap() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    for i in 0..20 {
        tb.file(format!("f{i}"), "");
    }
    let o = UnpackOptions {
        max_entries: 10,
        ..opts()
    };
    let err = fx.unpack_with(&tb.finish(), &o).unwrap_err();
    assert!(err.to_string().contains("entry limit"), "{err}");
}

#[test]
fn t10_oversized_pax_headers_are_refused_before_they_are_buffered() {
    let fx = Fx::new();
    let mut h = common::header(false, b"././@PaxHeader", EntryType::XHeader, 1 << 30);
    h.set_cksum();
    let head = h.as_bytes().to_vec();
    let layer = zeros_after(head, 1 << 30);
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:pax", layer, &opts()).unwrap_err();
    assert!(err.to_string().contains("PAX extended header"), "{err}");
}

// ---- T11: parser differentials, duplicates, sparse ----

#[test]
fn t11_duplicates_last_one_wins() {
    let fx = Fx::new();
    let mut secret = abs(&fx.host);
    secret.extend_from_slice(b"/secret");
    let mut tb = Tb::new();
    tb.file("a", "one")
        .file("a", "two")
        .symlink("b", &secret)
        .file("b", "replaces the link")
        .file("c", "file")
        .dir("c")
        .file("c/x", "in dir");
    let stats = fx.unpack(&tb.finish()).unwrap();
    assert_eq!(stats.duplicates, 3);
    assert_eq!(fs::read(fx.root.join("a")).unwrap(), b"two");
    assert_eq!(fs::read(fx.root.join("b")).unwrap(), b"replaces the link");
    assert_eq!(fs::read(fx.root.join("c/x")).unwrap(), b"in dir");
    fx.assert_host_untouched();
}

#[test]
fn t11_gnu_sparse_entries_are_refused() {
    let fx = Fx::new();
    let h = common::header(true, b"sparse", EntryType::GNUSparse, 0);
    let mut tb = Tb::new();
    tb.file("before", "b").raw(h, b"");
    fx.refuses(&tb.finish(), &["sparse files are not supported", "sparse"]);
    // PAX (GNU 1.0) sparse files too.
    let fx = Fx::new();
    let mut tb = Tb::new();
    let o = Opt {
        pax: vec![
            ("GNU.sparse.major".into(), b"1".to_vec()),
            ("GNU.sparse.minor".into(), b"0".to_vec()),
        ],
        ..Opt::default()
    };
    tb.file_with("GNUSparseFile.0/f", "x", &o);
    fx.refuses(&tb.finish(), &["sparse files are not supported"]);
}

#[test]
fn t11_global_pax_headers_are_refused() {
    let fx = Fx::new();
    let body = common::pax_record("path", b"x");
    let h = common::header(
        false,
        b"global",
        EntryType::XGlobalHeader,
        body.len() as u64,
    );
    let mut tb = Tb::new();
    tb.raw(h, &body).file("a", "a");
    fx.refuses(&tb.finish(), &["global PAX headers"]);
}

/// The entry names GNU tar lists for a tar.
fn gnu_tar_list(tar: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.tar");
    fs::write(&p, tar).unwrap();
    let out = gantry_test::tool("tar")
        .arg("-tf")
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn t11_pax_size_overrides_the_ustar_size_like_gnu_tar() {
    // TARmageddon: the ustar header says 0 bytes, PAX says 1536; the data is an inner tar.
    let mut inner = Tb::new();
    inner.file("smuggled", vec![b's'; 512]);
    let inner = inner.bytes();
    let mut padded = inner.clone();
    padded.resize(1536, 0);
    let mut tb = Tb::new();
    tb.pax(&[("size".into(), b"1536".to_vec())]);
    let h = common::header(false, b"outer", EntryType::Regular, 0);
    tb.raw(h, b"").data(&padded);
    let tar = tb.finish();
    assert_eq!(gnu_tar_list(&tar), vec!["outer".to_owned()]);
    let fx = Fx::new();
    fx.unpack(&tar).unwrap();
    assert_eq!(names(&fx.root), vec![b"outer".to_vec()]);
    assert_eq!(fs::read(fx.root.join("outer")).unwrap(), padded);
}

#[test]
fn t11_pax_path_and_gnu_long_name_must_agree() {
    // A PAX `x` record, then a GNU `L` long name, then the file: parsers disagree on which
    // name wins, so the layer is refused.
    let mut tb = Tb::new();
    tb.pax(&[("path".into(), b"pax-name".to_vec())]);
    let l = common::header(true, b"././@LongLink", EntryType::GNULongName, 9);
    tb.raw(l, b"gnu-name\0");
    let h = common::header(false, b"header-name", EntryType::Regular, 0);
    tb.raw(h, b"");
    let tar = tb.finish();
    let gnu = gnu_tar_list(&tar);
    let fx = Fx::new();
    let err = fx.refuses(&tar, &["disagree"]);
    // GNU tar takes the PAX name; the tar crate the GNU one.
    assert_eq!(gnu, vec!["pax-name".to_owned()], "{err}");
    assert!(names(&fx.root).is_empty());
}

// ---- T12: size and shape ----

#[test]
fn t12_deep_and_wide_trees_unpack_in_linear_time() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    let mut path = String::new();
    for i in 0..200 {
        if i > 0 {
            path.push('/');
        }
        path.push('d');
        tb.dir(&path);
        tb.file(format!("{path}/f"), "deep");
    }
    for d in 0..100 {
        for f in 0..196 {
            tb.file(format!("wide/{d}/{f}"), "w");
        }
    }
    let tar = gz(&tb.finish());
    let start = Instant::now();
    let stats = fx.unpack(&tar).unwrap();
    let took = start.elapsed();
    assert_eq!(stats.entries, 400 + 19_600);
    assert!(took.as_secs() < 60, "took {took:?}");
    assert_eq!(
        fs::read(fx.root.join(format!("{path}/f"))).unwrap(),
        b"deep"
    );
    assert_eq!(names(&fx.root.join("wide/99")).len(), 196);
    // Depth beyond the cap is refused.
    let mut deep = Tb::new();
    deep.file(vec!["x"; 40].join("/"), "");
    let o = UnpackOptions {
        max_depth: 32,
        ..opts()
    };
    let err = fx.unpack_with(&deep.finish(), &o).unwrap_err();
    assert!(err.to_string().contains("depth limit"), "{err}");
}

#[test]
fn t12_overlong_names_error_clearly() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file(vec![b'a'; 5000], "x");
    fx.refuses(&tb.finish(), &["5000 bytes", "4096"]);
    let mut tb = Tb::new();
    tb.file(format!("ok/{}", "b".repeat(300)), "x");
    fx.refuses(&tb.finish(), &["longer than 255"]);
    let mut tb = Tb::new();
    tb.symlink("l", vec![b'c'; 5000]);
    fx.refuses(&tb.finish(), &["symlink target"]);
}

#[test]
fn t12_names_are_unpacked_byte_exact() {
    let fx = Fx::new();
    let mut tb = Tb::new();
    tb.file(b"caf\xe9", "latin-1")
        .file(b"\xff\xfe/x", "not utf-8")
        .file("colon:name", ":")
        .file("back\\slash", "\\")
        .file("sp ace\ttab\nnewline", "ws")
        .symlink("bad-link", b"\xff-target");
    fx.unpack(&tb.finish()).unwrap();
    assert_eq!(
        names(&fx.root),
        vec![
            b"back\\slash".to_vec(),
            b"bad-link".to_vec(),
            b"caf\xe9".to_vec(),
            b"colon:name".to_vec(),
            b"sp ace\ttab\nnewline".to_vec(),
            b"\xff\xfe".to_vec(),
        ]
    );
    assert_eq!(fs::read(fx.r(b"caf\xe9")).unwrap(), b"latin-1");
    assert_eq!(fs::read(fx.r(b"\xff\xfe/x")).unwrap(), b"not utf-8");
    assert_eq!(
        fs::read_link(fx.r("bad-link"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"\xff-target"
    );
}

// ---- Issue 11: layers verified against their diff_ids, caps on consumed bytes, atomic and
// private destinations, a checked rootfs cache ----

fn motd_layer(text: &str) -> Vec<u8> {
    let mut tb = Tb::new();
    tb.dir("etc").file("etc/motd", text);
    gz(&tb.finish())
}

fn boxed(blob: Vec<u8>) -> Box<dyn Read> {
    Box::new(io::Cursor::new(blob))
}

/// The names in T (next to T/root) that are gantry's temporary directories.
fn temp_dirs(fx: &Fx) -> Vec<String> {
    names(fx.t.path())
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .filter(|n| n.starts_with(".gantry-unpack-"))
        .collect()
}

#[test]
fn regression_cache_poisoning_every_layer_must_match_its_diff_id() {
    let fx = Fx::new();
    let cache = RootfsCache::open(&fx.t.path().join("cache")).unwrap();
    let trusted = motd_layer("trusted\n");
    let evil = motd_layer("attacker\n");
    let a_ids = vec![gantry_oci::Digest::sha256(&common::decompress(&trusted))];
    // Image B's config copies image A's diff_ids; its layer differs.
    let err = cache
        .get_or_unpack(
            &a_ids,
            || Ok(vec![("sha256:evil-layer".to_owned(), boxed(evil.clone()))]),
            &opts(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    let msg = err.to_string();
    for needle in [
        "sha256:evil-layer",
        "diff_id mismatch",
        &a_ids[0].to_string(),
    ] {
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }
    assert_eq!(
        cache.get(&a_ids),
        None,
        "nothing is cached under A's chain id"
    );
    let left: Vec<String> = names(cache.dir())
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    assert_eq!(left.len(), 1, "only the entry's lock: {left:?}");
    assert!(left[0].ends_with(".lock"), "{left:?}");
    // A later use of A sees A's files.
    let rootfs = cache
        .get_or_unpack(
            &a_ids,
            || Ok(vec![("sha256:trusted".to_owned(), boxed(trusted.clone()))]),
            &opts(),
        )
        .unwrap();
    assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"trusted\n");
    // The second layer of two lying: nothing becomes visible either.
    let base = motd_layer("base\n");
    let ids2 = vec![
        gantry_oci::Digest::sha256(&common::decompress(&base)),
        a_ids[0].clone(),
    ];
    let err = cache
        .get_or_unpack(
            &ids2,
            || {
                Ok(vec![
                    ("sha256:base".to_owned(), boxed(base.clone())),
                    ("sha256:evil-layer".to_owned(), boxed(evil.clone())),
                ])
            },
            &opts(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("sha256:evil-layer"), "{err}");
    assert_eq!(cache.get(&ids2), None);
    // An entry planted under A's chain id without a matching record is not served: it is
    // replaced by a verified unpack.
    let other = tempfile::tempdir().unwrap();
    let cache2 = RootfsCache::open(other.path()).unwrap();
    let key = format!("sha256-{}", gantry_unpack::chain_id(&a_ids).hex());
    fs::create_dir_all(cache2.dir().join(&key).join("rootfs/etc")).unwrap();
    fs::write(cache2.dir().join(&key).join("rootfs/etc/motd"), "planted\n").unwrap();
    assert_eq!(cache2.get(&a_ids), None);
    let rootfs = cache2
        .get_or_unpack(
            &a_ids,
            || Ok(vec![("sha256:trusted".to_owned(), boxed(trusted.clone()))]),
            &opts(),
        )
        .unwrap();
    assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"trusted\n");
    assert!(RootfsCache::check(other.path(), false).unwrap().is_empty());
    assert_eq!(
        names(&fx.root),
        Vec::<Vec<u8>>::new(),
        "nothing went elsewhere"
    );
}

#[test]
fn regression_the_diff_id_covers_the_whole_stream_trailing_zeros_included() {
    let mut tb = Tb::new();
    tb.file("a", "a");
    let tar = tb.finish();
    let mut padded = tar.clone();
    padded.extend_from_slice(&[0u8; 8192]);
    for (blob, name) in [
        (padded.clone(), "plain"),
        (gz(&padded), "gzip"),
        (common::zst(&padded), "zstd"),
    ] {
        let fx = Fx::new();
        let dest = fx.t.path().join("dest");
        // The diff_id of the tar without its trailing zeros is not this layer's.
        let layer = gantry_unpack::ImageLayer {
            label: "sha256:padded".to_owned(),
            diff_id: gantry_oci::Digest::sha256(&tar),
            blob: boxed(blob.clone()),
        };
        let err = gantry_unpack::unpack_image(&dest, [layer], &opts()).unwrap_err();
        assert!(matches!(err, Error::DiffIdMismatch { .. }), "{name}: {err}");
        assert!(!dest.exists(), "{name}");
        let layer = gantry_unpack::ImageLayer {
            label: "sha256:padded".to_owned(),
            diff_id: gantry_oci::Digest::sha256(&padded),
            blob: boxed(blob),
        };
        gantry_unpack::unpack_image(&dest, [layer], &opts()).unwrap();
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"a", "{name}");
    }
}

#[test]
fn regression_a_gzip_bomb_is_stopped_by_the_ratio_on_consumed_bytes() {
    // 2 GiB of zeros in 2 MB of gzip, all of it readable at once: the ratio must be measured
    // against what the decompressor consumed, not what was read ahead into buffers.
    let bomb = common::zeros_bomb(2 << 30, false);
    assert!(bomb.len() < 3 << 20, "{}", bomb.len());
    let fx = Fx::new();
    let start = Instant::now();
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:bomb", &bomb[..], &opts()).unwrap_err();
    assert!(matches!(err, Error::Limit { .. }), "{err}");
    assert!(err.to_string().contains("ratio limit"), "{err}");
    let written = fs::metadata(fx.root.join("bomb")).unwrap().len();
    assert!(
        written <= Limits::default().ratio_floor + (4 << 20),
        "{written} bytes written before the cap"
    );
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    fx.assert_host_untouched();
}

#[test]
fn regression_a_zstd_bomb_is_stopped_within_seconds() {
    // 10 GiB of zeros in a few kB of zstd.
    let bomb = common::zeros_bomb(10 << 30, true);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let fx = Fx::new();
    let start = Instant::now();
    let err = gantry_unpack::unpack_layer(&fx.root, "sha256:bomb", &bomb[..], &opts()).unwrap_err();
    assert!(err.to_string().contains("ratio limit"), "{err}");
    assert!(fs::metadata(fx.root.join("bomb")).unwrap().len() <= 68 << 20);
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}

#[test]
fn regression_the_image_size_cap_counts_every_layer() {
    let layer = |name: &str| {
        let mut tb = Tb::new();
        tb.file(name, vec![7u8; 3 << 20]);
        gz(&tb.finish())
    };
    let o = UnpackOptions {
        limits: Limits {
            max_image_size: 5 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    let fx = Fx::new();
    let dest = fx.t.path().join("dest");
    let layers = [
        common::image_layer("sha256:one", layer("one")),
        common::image_layer("sha256:two", layer("two")),
    ];
    let err = gantry_unpack::unpack_image(&dest, layers, &o).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("sha256:two") && msg.contains("image size limit"),
        "{msg}"
    );
    assert!(msg.contains("5 MiB"), "{msg}");
    assert!(!dest.exists());
    // Each layer alone is within the layer cap.
    let o = UnpackOptions {
        limits: Limits {
            max_layer_size: 3 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    let err =
        gantry_unpack::unpack_image(&dest, [common::image_layer("sha256:one", layer("one"))], &o)
            .unwrap_err();
    assert!(err.to_string().contains("layer size limit"), "{err}");
    assert!(temp_dirs(&fx).is_empty());
}

#[test]
fn regression_a_failed_unpack_leaves_the_destination_unchanged() {
    let mut tb = Tb::new();
    tb.file("etc/motd", "the attacker's content");
    let tar = tb.finish();
    let digest = gantry_oci::Digest::sha256(&tar);
    let mut flipped = tar.clone();
    let at = flipped.windows(9).position(|w| w == b"attacker'").unwrap();
    flipped[at] ^= 1;
    let verified = |blob: Vec<u8>| -> Box<dyn Read> {
        Box::new(gantry_oci::VerifyingReader::new(
            io::Cursor::new(blob),
            digest.clone(),
            tar.len() as u64,
            "blob sha256:motd",
        ))
    };
    type Case<'a> = (
        &'static str,
        Box<dyn Fn() -> gantry_unpack::ImageLayer + 'a>,
        &'static str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "a flipped byte",
            Box::new(|| gantry_unpack::ImageLayer {
                label: "sha256:motd".into(),
                diff_id: digest.clone(),
                blob: verified(flipped.clone()),
            }),
            "digest",
        ),
        (
            "a bomb",
            Box::new(|| gantry_unpack::ImageLayer {
                label: "sha256:bomb".into(),
                // Never reached: the cap trips first.
                diff_id: digest.clone(),
                blob: boxed(common::zeros_bomb(1 << 30, true)),
            }),
            "ratio limit",
        ),
        (
            "a diff_id mismatch",
            Box::new(|| gantry_unpack::ImageLayer {
                label: "sha256:motd".into(),
                diff_id: gantry_oci::Digest::sha256(b"another layer"),
                blob: boxed(tar.clone()),
            }),
            "diff_id mismatch",
        ),
    ];
    for (what, layer, needle) in &cases {
        // DEST absent stays absent; an empty DEST stays as it was.
        let fx = Fx::new();
        let absent = fx.t.path().join("absent");
        let err = gantry_unpack::unpack_image(&absent, [layer()], &opts()).unwrap_err();
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert!(!absent.exists(), "{what}");
        fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o751)).unwrap();
        let before = stat(&fx.root);
        let err = gantry_unpack::unpack_image(&fx.root, [layer()], &opts()).unwrap_err();
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert_eq!(stat(&fx.root), before, "{what}");
        assert!(names(&fx.root).is_empty(), "{what}");
        assert!(temp_dirs(&fx).is_empty(), "{what}: {:?}", temp_dirs(&fx));
        fx.assert_host_untouched_but_t_mtime();
    }
    // The intact layer replaces the empty directory, which ends up private and the caller's.
    let fx = Fx::new();
    let o = Opt {
        mode: 0o777,
        uid: 4242,
        ..Opt::default()
    };
    let mut tb = Tb::new();
    tb.dir_with("./", &o).file("etc/motd", "hello");
    let blob = tb.finish();
    gantry_unpack::unpack_image(&fx.root, [common::image_layer("l", blob.clone())], &opts())
        .unwrap();
    let root = stat(&fx.root);
    assert_eq!((root.mode, root.uid), (0o700, 0), "whatever the image says");
    assert_eq!(fs::read(fx.root.join("etc/motd")).unwrap(), b"hello");
    // A non-empty destination is refused, a symlink is not followed.
    let err =
        gantry_unpack::unpack_image(&fx.root, [common::image_layer("l", blob.clone())], &opts())
            .unwrap_err();
    assert!(matches!(err, Error::RootNotEmpty(_)), "{err}");
    let empty = fx.t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let link = fx.t.path().join("link");
    std::os::unix::fs::symlink(&empty, &link).unwrap();
    let err =
        gantry_unpack::unpack_image(&link, [common::image_layer("l", blob)], &opts()).unwrap_err();
    assert!(matches!(err, Error::RootNotDir(_)), "{err}");
    assert!(names(&empty).is_empty());
    assert!(temp_dirs(&fx).is_empty());
}

#[test]
fn regression_temp_dirs_of_dead_unpacks_are_removed_and_live_ones_kept() {
    let fx = Fx::new();
    // pid_max is at most 2^22: this process cannot exist.
    let dead = fx.t.path().join(".gantry-unpack-999999999-0-0");
    fs::create_dir_all(dead.join("rootfs/etc")).unwrap();
    std::os::unix::fs::symlink(&fx.host, dead.join("rootfs/escape")).unwrap();
    let live =
        fx.t.path()
            .join(format!(".gantry-unpack-{}-99-0", std::process::id()));
    fs::create_dir(&live).unwrap();
    let dest = fx.t.path().join("dest");
    gantry_unpack::unpack_image(&dest, [common::image_layer("l", motd_layer("x"))], &opts())
        .unwrap();
    assert!(!dead.exists(), "a dead process's leftover is removed");
    assert!(live.exists(), "a live process's directory is kept");
    fs::remove_dir(&live).unwrap();
    fs::remove_dir_all(&dest).unwrap();
    fx.assert_host_untouched_but_t_mtime();
}

#[test]
fn regression_fsck_checks_the_rootfs_cache_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("rootfs");
    let cache = RootfsCache::open(&top).unwrap();
    let good = motd_layer("good\n");
    let ids = vec![gantry_oci::Digest::sha256(&common::decompress(&good))];
    let rootfs = cache
        .get_or_unpack(
            &ids,
            || Ok(vec![("l".to_owned(), boxed(good.clone()))]),
            &opts(),
        )
        .unwrap();
    assert!(RootfsCache::check(&top, false).unwrap().is_empty());
    let v2 = cache.dir().to_owned();
    let entry = rootfs.parent().unwrap().to_owned();
    let copy = |to: &str| {
        let out = Command::new("cp")
            .arg("-a")
            .arg(&entry)
            .arg(v2.join(to))
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    // An old bucket, stray files, a name that is no chain id, an entry without its rootfs, one
    // whose record does not chain to its name, one without a lock, a crashed unpack, modes.
    fs::create_dir_all(top.join("v1/sha256-00/rootfs")).unwrap();
    fs::write(v2.join("stray"), "x").unwrap();
    copy("sha256-not-a-chain-id");
    let other = format!("sha256-{}", "1".repeat(64));
    copy(&other);
    fs::write(v2.join(format!("{other}.lock")), "").unwrap();
    let norootfs = format!("sha256-{}", "2".repeat(64));
    fs::create_dir(v2.join(&norootfs)).unwrap();
    fs::write(v2.join(&norootfs).join("diff_ids"), "").unwrap();
    fs::remove_file(v2.join(format!(
        "{}.lock",
        entry.file_name().unwrap().to_str().unwrap()
    )))
    .unwrap();
    fs::create_dir_all(v2.join("tmp-crashed/rootfs")).unwrap();
    fs::set_permissions(&v2, fs::Permissions::from_mode(0o755)).unwrap();
    let before = common::snap(dir.path(), Path::new("/nonexistent"));

    let found = RootfsCache::check(&top, false).unwrap();
    let text: Vec<String> = found
        .iter()
        .map(|i| format!("{}: {}", i.path.display(), i.problem))
        .collect();
    assert_eq!(found.len(), 8, "{text:#?}");
    assert!(found.iter().all(|i| !i.repaired));
    for needle in [
        "v1: not part of this version's cache",
        "stray: not a cache entry: its name is not a chain id",
        "sha256-not-a-chain-id: not a cache entry",
        &format!("{other}: a broken entry: its recorded diff_ids chain to"),
        &format!("{norootfs}: a broken entry: it has no rootfs"),
        "no .lock file",
        "tmp-crashed: left by a crashed unpack",
        "mode 0755",
    ] {
        assert!(
            text.iter().any(|t| t.contains(needle)),
            "{needle:?} in {text:#?}"
        );
    }
    assert_eq!(
        common::snap(dir.path(), Path::new("/nonexistent")),
        before,
        "checking changes nothing"
    );

    let repaired = RootfsCache::check(&top, true).unwrap();
    assert_eq!(repaired.len(), 8);
    assert!(repaired.iter().all(|i| i.repaired), "{repaired:?}");
    assert!(RootfsCache::check(&top, false).unwrap().is_empty());
    assert_eq!(
        cache.get(&ids),
        Some(rootfs.clone()),
        "the good entry stays"
    );
    assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"good\n");
    // A missing cache is fine.
    assert!(
        RootfsCache::check(&dir.path().join("none"), false)
            .unwrap()
            .is_empty()
    );
}
