//! Container preparation (`prepare_container`, shared by `gantry run` and build steps) and the
//! in-root reading of the image's account files, against the real runc with a rootfs made of
//! Debian's static busybox.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_runtime::{
    ContainerRequest, ImageProcess, Purpose, RUNTIME_STATE_DIR, Runtime, Stream, prepare_container,
    read_in_root,
};
use gantry_test::{CmdExt, require};
use rustix::fs::{FileType, Mode};

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gantry-rt-")
        .tempdir()
        .unwrap()
}

/// `root/lower`: busybox with every applet, /etc/passwd and /etc/group with `user` (1000),
/// /tmp (1777).
fn busybox_rootfs(root: &Path) -> PathBuf {
    let rootfs = root.join("lower");
    let bb = gantry_test::busybox();
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(&bb, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(&bb).arg("--list").ok().stdout;
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nwheel:x:10:user\n",
    )
    .unwrap();
    rootfs
}

fn request<'a>(
    purpose: Purpose<'a>,
    session: &'a Path,
    lower: &'a Path,
    image: ImageProcess<'a>,
    inputs: &'a BTreeMap<String, PathBuf>,
) -> ContainerRequest<'a> {
    ContainerRequest {
        purpose,
        session,
        lower,
        image,
        args: vec!["true".into()],
        env: &[],
        user: None,
        workdir: None,
        network: false,
        inputs,
        terminal: false,
    }
}

#[test]
fn read_in_root_stays_inside_and_refuses_special_files() {
    let dir = tmp();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::write(dir.path().join("outside"), "outside").unwrap();
    fs::write(root.join("etc/real"), "inside").unwrap();
    symlink("../../../etc/real", root.join("etc/passwd")).unwrap();
    symlink("../../outside", root.join("etc/escape")).unwrap();
    symlink("/dev/zero", root.join("etc/zero")).unwrap();
    symlink("/dev/fifo", root.join("etc/fifo")).unwrap();
    // /dev/zero's device numbers (1, 5); a fifo would block a plain open.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("dev/zero"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .expect("mknod (tests run as root)");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("dev/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    fs::write(root.join("etc/big"), vec![b'x'; 1000]).unwrap();
    let read = |p| read_in_root(&root, p, 100);
    assert_eq!(read("etc/passwd").unwrap().unwrap(), b"inside");
    assert_eq!(read("/etc/passwd").unwrap().unwrap(), b"inside");
    assert!(
        read("etc/escape").unwrap().is_none(),
        "resolved in the root, where it is absent"
    );
    assert!(read("etc/missing").unwrap().is_none());
    for special in ["etc/zero", "etc/fifo", "etc"] {
        let err = read(special).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{special}: {err}");
    }
    let err = read("etc/big").unwrap_err().to_string();
    assert_eq!(err, "/etc/big: larger than 100 bytes");
}

#[test]
fn a_prepared_step_runs_with_its_user_env_workdir_and_read_only_inputs() {
    require("runc");
    let runtime = Runtime::detect(Some("runc")).expect("runc");
    let t = tmp();
    let lower = busybox_rootfs(t.path());
    let session = t.path().join("session");
    fs::create_dir(&session).unwrap();
    let input = t.path().join("input");
    fs::create_dir(&input).unwrap();
    fs::write(input.join("f"), "from the project").unwrap();
    let inputs = BTreeMap::from([("/in".to_owned(), input.clone())]);
    let image_env = vec![
        "A=image".to_owned(),
        "PATH=/bin".to_owned(),
        "B=image".to_owned(),
    ];
    let overrides = [("B".to_owned(), "step".to_owned())];
    let mut req = request(
        Purpose::Step { name: "make it" },
        &session,
        &lower,
        ImageProcess {
            user: Some("user"),
            env: &image_env,
            working_dir: Some("/tmp"),
        },
        &inputs,
    );
    req.env = &overrides;
    req.args = vec![
        "sh".into(),
        "-c".into(),
        "id -u; id -g; id -G; pwd; echo $A-$B; cat /in/f; echo; \
         touch /in/x 2>/dev/null && echo writable || echo read-only; echo made > /tmp/made"
            .into(),
    ];
    let container = prepare_container(runtime, &req).unwrap();
    assert!(
        container.id.starts_with("gantry-make-it-"),
        "{}",
        container.id
    );
    assert_eq!(
        container.runtime.state_root(&container.bundle),
        session.join(RUNTIME_STATE_DIR)
    );
    assert!(container.scratch.path().starts_with(&session));
    let mut out = Vec::new();
    let status = container
        .runtime
        .run_captured(&container.bundle, &container.id, &mut |s, l| {
            if s == Stream::Stdout {
                out.push(l.to_owned());
            }
        })
        .unwrap();
    assert!(status.success(), "{status}: {out:?}");
    assert_eq!(
        out,
        [
            "1000",
            "1000",
            "1000 10",
            "/tmp",
            "image-step",
            "from the project",
            "read-only"
        ]
    );
    let upper = container.rootfs.upper.clone();
    let copy = container.rootfs.path.clone();
    container.rootfs.release().unwrap();
    let changed = upper.unwrap_or(copy);
    assert_eq!(
        fs::read_to_string(changed.join("tmp/made")).unwrap(),
        "made\n"
    );
    assert!(
        !lower.join("tmp/made").exists(),
        "the lower rootfs is never written"
    );
    assert!(!input.join("x").exists());
    let scratch = container.scratch.path().to_owned();
    drop(container.scratch);
    assert!(
        !scratch.exists(),
        "the scratch directory goes with the container"
    );
}

#[test]
fn a_bad_user_names_where_it_came_from_and_prepares_nothing() {
    let runtime = Runtime::new(gantry_runtime::RuntimeKind::Runc, "/nonexistent/runc");
    let t = tmp();
    let lower = busybox_rootfs(t.path());
    let session = t.path().join("session");
    fs::create_dir(&session).unwrap();
    let inputs = BTreeMap::new();
    let nobody = ImageProcess {
        user: Some("nobody"),
        ..ImageProcess::default()
    };
    let cases = [
        (
            Purpose::Run { image: "oci:x" },
            Some("ghost"),
            "--user \"ghost\"",
            "user \"ghost\" is not in the image's /etc/passwd",
        ),
        (
            Purpose::Run { image: "oci:x" },
            None,
            "oci:x: the image config's User \"nobody\"",
            "user \"nobody\" is not in the image's /etc/passwd",
        ),
        (
            Purpose::Step { name: "s" },
            Some("user:staff"),
            "step.s: user \"user:staff\"",
            "group \"staff\" is not in the image's /etc/group",
        ),
        (
            Purpose::Step { name: "s" },
            None,
            "step.s: the base image config's User \"nobody\"",
            "user \"nobody\" is not in the image's /etc/passwd",
        ),
    ];
    for (purpose, user, what, why) in cases {
        let mut req = request(purpose, &session, &lower, nobody, &inputs);
        req.user = user;
        let err = prepare_container(runtime.clone(), &req).unwrap_err();
        assert_eq!(err.to_string(), what);
        assert_eq!(err.source().unwrap().to_string(), why);
        assert_eq!(
            fs::read_dir(&session).unwrap().count(),
            0,
            "nothing prepared for {what}"
        );
    }
}
