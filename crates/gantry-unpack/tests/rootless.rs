//! Unpacking without root: this test binary re-runs itself as uid 65534 through `setpriv`
//! to unpack with the default options. Devices become placeholders, files belong to the caller, privileged xattrs are
//! skipped, and directories stay writable by their owner so later layers can change them.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use common::{Opt, Tb, gz, stat};
use tar::EntryType;

const NOBODY: u32 = 65534;

const CHILD_ENV: &str = "GANTRY_UNPACK_TEST_CHILD";

/// In the child (run as nobody): unpack the layers named in the environment with the default
/// options. In a normal test run this does nothing.
#[test]
fn child_unpack() {
    let Some(args) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let args: Vec<PathBuf> = std::env::split_paths(&args).collect();
    let layers: Vec<_> = args[1..]
        .iter()
        .map(|p| common::image_layer(&p.display().to_string(), fs::read(p).unwrap()))
        .collect();
    gantry_unpack::unpack_image(&args[0], layers, &gantry_unpack::UnpackOptions::default())
        .unwrap();
}

#[test]
fn an_unprivileged_user_can_unpack_an_image() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    rustix::fs::chown(
        &work,
        Some(rustix::fs::Uid::from_raw(NOBODY)),
        Some(rustix::fs::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let mut l1 = Tb::new();
    l1.dir_with(
        "ro",
        &Opt {
            mode: 0o555,
            ..Opt::default()
        },
    )
    .file("ro/a", "a")
    .file_with(
        "root-owned",
        "x",
        &Opt {
            uid: 0,
            gid: 0,
            mode: 0o4755,
            pax: vec![
                ("SCHILY.xattr.security.capability".into(), vec![1, 0, 0, 2]),
                ("SCHILY.xattr.user.ok".into(), b"yes".to_vec()),
            ],
            ..Opt::default()
        },
    )
    .device("dev/null", EntryType::Char, 1, 3)
    .entry(b"fifo", EntryType::Fifo, b"", b"", &Opt::default());
    let mut l2 = Tb::new();
    l2.file("ro/b", "added by a later layer")
        .file("ro/.wh.a", "");
    let (p1, p2) = (dir.path().join("l1.tar.gz"), dir.path().join("l2.tar"));
    fs::write(&p1, gz(&l1.finish())).unwrap();
    fs::write(&p2, l2.finish()).unwrap();
    let rootfs = work.join("rootfs");
    let out = gantry_test::tool("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "child_unpack", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            std::env::join_paths([&rootfs, &p1, &p2]).unwrap(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "the child ran: {text}");
    let f = stat(&rootfs.join("root-owned"));
    assert_eq!((f.uid, f.mode), (NOBODY, 0o4755));
    assert_eq!(
        f.xattrs.get("user.ok").map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    assert!(!f.xattrs.contains_key("security.capability"), "{f:?}");
    let null = stat(&rootfs.join("dev/null"));
    assert_eq!((null.kind, null.mode), ('f', 0), "a placeholder");
    assert!(
        fs::symlink_metadata(rootfs.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let ro = stat(&rootfs.join("ro"));
    assert_eq!(ro.mode, 0o755, "0555 plus owner rwx");
    assert!(!rootfs.join("ro/a").exists());
    assert_eq!(
        fs::read(rootfs.join("ro/b")).unwrap(),
        b"added by a later layer"
    );
    assert_eq!(fs::metadata(rootfs.join("ro/b")).unwrap().uid(), NOBODY);
}
