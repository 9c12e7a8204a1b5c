//! gantry-runtime against the real runc (and crun where this host lets it run), with a
//! rootfs made of Debian's static busybox.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gantry_runtime::{
    BindMount, Error, ExitStatus, IdMaps, RootfsKind, RunSpec, Runtime, RuntimeKind, Stdio, Stream,
    container_id, copy_rootfs, prepare_rootfs, write_bundle,
};
use gantry_test::{CmdExt, require, snapshot};

/// Docker's default capability set as /proc/self/status prints it.
const DEFAULT_CAPS_HEX: &str = "00000000a80425fb";

fn runc() -> Runtime {
    require("runc");
    Runtime::detect(Some("runc")).expect("runc")
}

/// `root/rootfs`: /bin/busybox, a link for every applet, /etc/passwd, empty /proc /dev /sys
/// (so the runtime creates no mount points in it) and /tmp.
fn busybox_rootfs(root: &Path) -> PathBuf {
    let rootfs = root.join("rootfs");
    let bb = gantry_test::busybox();
    for d in ["bin", "etc", "proc", "dev", "sys", "root"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::create_dir(rootfs.join("tmp")).unwrap();
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
    fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    rootfs
}

fn spec(rootfs: &Path, script: &str) -> RunSpec {
    let mut s = RunSpec::new(rootfs, vec!["sh".into(), "-c".into(), script.into()]);
    s.env = vec!["PATH=/bin".into()];
    s
}

struct Out {
    status: Result<ExitStatus, Error>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Out {
    fn ok(&self) -> &Self {
        match &self.status {
            Ok(s) if s.success() => self,
            other => panic!(
                "container failed: {other:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout.join("\n"),
                self.stderr.join("\n")
            ),
        }
    }

    fn code(&self) -> ExitStatus {
        match &self.status {
            Ok(s) => *s,
            Err(e) => panic!("runtime error: {e}\n{}", self.stderr.join("\n")),
        }
    }
}

fn run_in(rt: &Runtime, bundle: &Path, spec: &RunSpec) -> Out {
    write_bundle(bundle, spec).unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = rt.run(
        bundle,
        &container_id("test"),
        Stdio::Lines(&mut |s, l: &str| match s {
            Stream::Stdout => stdout.push(l.to_owned()),
            Stream::Stderr => stderr.push(l.to_owned()),
        }),
    );
    Out {
        status,
        stdout,
        stderr,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gantry-rt-")
        .tempdir()
        .unwrap()
}

#[test]
fn args_and_output_are_captured() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let mut s = spec(&rootfs, "");
    s.args = vec!["echo".into(), "hello  world".into(), "a'b\"c".into()];
    let out = run_in(&rt, &t.path().join("b"), &s);
    out.ok();
    assert_eq!(out.stdout, ["hello  world a'b\"c"]);
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);

    let out = run_in(
        &rt,
        &t.path().join("b"),
        &spec(&rootfs, "echo out1; echo err1 >&2; printf 'no newline'"),
    );
    out.ok();
    assert_eq!(out.stdout, ["out1", "no newline"]);
    assert_eq!(out.stderr, ["err1"]);
    // The bundle's run files are gone and the container deleted.
    let mut left: Vec<_> = fs::read_dir(t.path().join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    // state.runtime names the runtime that uses `state`, for reap_state_root.
    assert_eq!(left, ["config.json", "state", "state.runtime"]);
}

#[test]
fn exit_codes_signals_and_start_failures() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let b = t.path().join("b");
    assert_eq!(
        run_in(&rt, &b, &spec(&rootfs, "echo before; exit 7")).code(),
        ExitStatus::Exited(7)
    );
    // The container's init killed by a signal (from outside: pid 1 of a pid namespace
    // cannot be killed from inside).
    write_bundle(&b, &spec(&rootfs, "echo started; sleep 60")).unwrap();
    let id = container_id("kill");
    let state = rt.state_root(&b);
    let status = rt
        .run_captured(&b, &id, &mut |_, l| {
            if l == "started" {
                Command::new(rt.path())
                    .arg("--root")
                    .arg(&state)
                    .args(["kill", &id, "KILL"])
                    .ok();
            }
        })
        .unwrap();
    assert_eq!(status, ExitStatus::Signaled(9));
    // The runtime cannot start a missing program: an error, not an exit status.
    let mut s = spec(&rootfs, "");
    s.args = vec!["/no/such/program".into()];
    let out = run_in(&rt, &b, &s);
    match &out.status {
        Err(Error::Start { message, .. }) => {
            assert!(message.contains("/no/such/program"), "{message}")
        }
        other => panic!("expected a start error, got {other:?}"),
    }
    assert!(rt.list(&b).unwrap().is_empty());
}

#[test]
fn env_cwd_user_and_capabilities() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let mut s = spec(
        &rootfs,
        "id -u; id -g; id -G; pwd; echo \"$FOO\"; hostname; \
         grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status | tr -s '\\t' ' '",
    );
    s.env.push("FOO=bar baz".into());
    s.cwd = "/tmp".into();
    s.hostname = "step-host".into();
    s.user.uid = 1000;
    s.user.gid = 1000;
    s.user.additional_gids = vec![2000, 3000];
    let out = run_in(&rt, &t.path().join("b"), &s);
    out.ok();
    assert_eq!(
        out.stdout,
        [
            "1000",
            "1000",
            "1000 2000 3000",
            "/tmp",
            "bar baz",
            "step-host",
            "CapEff: 0000000000000000",
            &format!("CapBnd: {DEFAULT_CAPS_HEX}"),
            "NoNewPrivs: 1",
        ]
    );

    // Root gets Docker's default set, nothing more.
    let out = run_in(
        &rt,
        &t.path().join("b"),
        &spec(
            &rootfs,
            "id -u; grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status | tr -s '\\t' ' '",
        ),
    );
    out.ok();
    assert_eq!(
        out.stdout,
        [
            "0".to_owned(),
            format!("CapPrm: {DEFAULT_CAPS_HEX}"),
            format!("CapEff: {DEFAULT_CAPS_HEX}"),
            format!("CapBnd: {DEFAULT_CAPS_HEX}"),
        ]
    );
}

/// A TCP listener on the host's 127.0.0.1 that answers "pong" to one line; the received
/// lines arrive on the channel.
fn pong_server() -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    let mut line = String::new();
                    BufReader::new(&c).read_line(&mut line).unwrap();
                    c.write_all(b"pong\n").unwrap();
                    let _ = tx.send(line.trim().to_owned());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, rx)
}

#[test]
fn network_is_off_by_default_with_loopback_up() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let (port, received) = pong_server();
    let b = t.path().join("b");

    // Off: a new network namespace; the host's 127.0.0.1 listener is unreachable.
    let out = run_in(
        &rt,
        &b,
        &spec(
            &rootfs,
            &format!("echo ping | nc -w 3 127.0.0.1 {port}; echo nc=$?; ls /sys/class/net"),
        ),
    );
    out.ok();
    assert_eq!(out.stdout, ["nc=1", "lo"], "stderr: {:?}", out.stderr);
    assert!(
        out.stderr.iter().any(|l| l.contains("Connection refused")),
        "{:?}",
        out.stderr
    );
    assert!(received.try_recv().is_err());

    // Inside, loopback is up (runc brings `lo` up in a new network namespace): a server and a
    // client in the container talk over 127.0.0.1.
    let out = run_in(
        &rt,
        &b,
        &spec(
            &rootfs,
            "ip -o addr show lo | grep -o 'inet 127.0.0.1'; \
             nc -l -p 7777 -e echo inner & \
             for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
               nc 127.0.0.1 7777 </dev/null 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
        ),
    );
    out.ok();
    assert_eq!(out.stdout, ["inet 127.0.0.1", "inner"]);

    // On: the host's network namespace, and its resolv.conf.
    let mut s = spec(
        &rootfs,
        &format!("echo ping | nc -w 5 127.0.0.1 {port}; echo nc=$?; cat /etc/resolv.conf"),
    );
    s.network = true;
    let out = run_in(&rt, &b, &s);
    out.ok();
    assert_eq!(
        out.stdout[..2],
        ["pong", "nc=0"],
        "stderr: {:?}",
        out.stderr
    );
    assert_eq!(
        received.recv_timeout(Duration::from_secs(5)).unwrap(),
        "ping"
    );
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap();
    assert_eq!(out.stdout[2..].join("\n"), host_resolv.trim_end());
    // The bind mount point in the rootfs is the only trace the runtime left.
    assert_eq!(fs::read(rootfs.join("etc/resolv.conf")).unwrap(), b"");
}

#[test]
fn bind_mounts_and_readonly_rootfs() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let ro = t.path().join("ro");
    let rw = t.path().join("rw");
    fs::create_dir_all(&ro).unwrap();
    fs::create_dir_all(&rw).unwrap();
    fs::write(ro.join("file"), "read me\n").unwrap();
    let mut s = spec(
        &rootfs,
        "cat /data/ro/file; touch /data/ro/new 2>&1; echo ro=$?; \
         echo written > /data/rw/out; echo rw=$?",
    );
    s.mounts = vec![
        BindMount {
            source: ro.clone(),
            destination: "/data/ro".into(),
            readonly: true,
        },
        BindMount {
            source: rw.clone(),
            destination: "/data/rw".into(),
            readonly: false,
        },
    ];
    let out = run_in(&rt, &t.path().join("b"), &s);
    out.ok();
    assert_eq!(
        out.stdout,
        [
            "read me",
            "touch: /data/ro/new: Read-only file system",
            "ro=1",
            "rw=0"
        ]
    );
    assert!(!ro.join("new").exists());
    assert_eq!(fs::read_to_string(rw.join("out")).unwrap(), "written\n");

    let mut s = spec(&rootfs, "touch /tmp/x 2>&1; echo $?; ls /tmp");
    s.readonly_rootfs = true;
    let out = run_in(&rt, &t.path().join("b"), &s);
    out.ok();
    assert_eq!(out.stdout, ["touch: /tmp/x: Read-only file system", "1"]);
}

#[test]
fn containers_are_always_deleted() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let b = t.path().join("b");
    run_in(&rt, &b, &spec(&rootfs, "true")).ok();
    assert!(rt.list(&b).unwrap().is_empty());
    let state = rt.state_root(&b);
    let list = Command::new(rt.path())
        .arg("--root")
        .arg(&state)
        .args(["list", "-q"])
        .ok()
        .stdout;
    assert_eq!(list.trim(), "");

    // A caller whose output callback panics mid-run: the container (sleeping) is killed and
    // deleted while unwinding.
    write_bundle(&b, &spec(&rootfs, "echo started; sleep 60")).unwrap();
    let started = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.run(
            &b,
            &container_id("panic"),
            Stdio::Lines(&mut |_, l: &str| panic!("callback gave up at {l:?}")),
        )
    }));
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(rt.list(&b).unwrap().is_empty());
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
}

#[test]
fn terminal_needs_inherited_stdio() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let mut s = spec(&rootfs, "true");
    s.terminal = true;
    let out = run_in(&rt, &t.path().join("b"), &s);
    assert!(
        matches!(&out.status, Err(Error::InvalidSpec(m)) if m.contains("Stdio::Inherit")),
        "{:?}",
        out.status
    );
}

#[test]
fn missing_runtime_gives_the_install_hint() {
    let hint = "install crun or runc (apt-get install crun / runc), or set --runtime PATH";
    let e = Runtime::detect(Some("/nonexistent/bin/runc")).unwrap_err();
    assert!(matches!(e, Error::RuntimeNotFound { .. }));
    assert!(e.to_string().contains(hint), "{e}");
    let e = Runtime::detect_in(Some("runc"), &OsString::from("/nonexistent")).unwrap_err();
    assert!(e.to_string().contains(hint), "{e}");
    let e = Runtime::detect_in(None, &OsString::from("/nonexistent")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("no OCI runtime found: {hint}")),
        "{msg}"
    );
    assert!(msg.contains("crun: not installed"), "{msg}");
}

fn search_path() -> OsString {
    let mut p = std::env::var_os("PATH").unwrap_or_default();
    p.push(":/usr/local/sbin:/usr/sbin:/sbin");
    p
}

/// cgroup v1 hierarchies next to a cgroup v2 one whose root has controllers: crun 1.8
/// refuses to create containers there.
fn hybrid_with_v2_controllers() -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mut v1 = false;
    let mut v2_controllers = false;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        match f.get(2) {
            Some(&"cgroup") => v1 = true,
            Some(&"cgroup2") => {
                v2_controllers = fs::read_to_string(Path::new(f[1]).join("cgroup.controllers"))
                    .is_ok_and(|c| !c.trim().is_empty())
            }
            _ => {}
        }
    }
    v1 && v2_controllers
}

#[test]
fn auto_detection_uses_what_runs() {
    require("runc");
    require("crun");
    let d = Runtime::detect_in(None, &search_path()).unwrap();
    if hybrid_with_v2_controllers() {
        // This host: crun is installed but refuses; detection must say so and pick runc.
        assert_eq!(d.runtime.kind(), RuntimeKind::Runc);
        let crun = d
            .skipped
            .iter()
            .find(|s| s.kind == RuntimeKind::Crun)
            .expect("crun reported as skipped");
        assert!(crun.path.is_some());
        assert!(
            crun.reason.contains("cgroups in hybrid mode not supported"),
            "{}",
            crun.reason
        );
        // Asked for by name, crun is used as is, and its refusal is a start error.
        let crun = Runtime::detect(Some("crun")).unwrap();
        assert_eq!(crun.kind(), RuntimeKind::Crun);
        let t = tmp();
        let rootfs = busybox_rootfs(t.path());
        let out = run_in(&crun, &t.path().join("b"), &spec(&rootfs, "true"));
        assert!(
            matches!(&out.status, Err(Error::Start { message, .. }) if message.contains("hybrid")),
            "{:?}",
            out.status
        );
        assert!(crun.list(&t.path().join("b")).unwrap().is_empty());
    } else {
        // crun is tried first; where it runs, it wins.
        assert_eq!(
            d.runtime.kind(),
            RuntimeKind::Crun,
            "crun skipped: {:?}",
            d.skipped
        );
    }
    // Whatever was picked runs containers.
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let out = run_in(&d.runtime, &t.path().join("b"), &spec(&rootfs, "echo ok"));
    out.ok();
    assert_eq!(out.stdout, ["ok"]);
}

fn nofile_line(lines: &[String]) -> (u64, u64) {
    let l = lines
        .iter()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/self/limits");
    let f: Vec<&str> = l.split_whitespace().collect();
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

#[test]
fn rlimits_do_not_exceed_the_callers() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let mine = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = mine.maximum.unwrap_or(u64::MAX);
    let soft = mine.current.unwrap_or(u64::MAX).min(1 << 20);
    for uid in [0, 1000] {
        let mut s = spec(&rootfs, "cat /proc/self/limits");
        s.user.uid = uid;
        s.user.gid = uid;
        let out = run_in(&rt, &t.path().join("b"), &s);
        out.ok();
        assert_eq!(nofile_line(&out.stdout), (soft, hard));
        // Everything else is inherited from the caller unchanged.
        let host = fs::read_to_string("/proc/self/limits").unwrap();
        let host_nproc = host
            .lines()
            .find(|l| l.starts_with("Max processes"))
            .unwrap();
        let c_nproc = out
            .stdout
            .iter()
            .find(|l| l.starts_with("Max processes"))
            .unwrap();
        assert_eq!(c_nproc.trim(), host_nproc.trim());
    }
}

fn step_script() -> &'static str {
    "echo new > /new; echo changed > /etc/change; rm /etc/gone; mkdir /d; echo f > /d/f; \
     cat /etc/keep"
}

fn lower_tree(t: &Path) -> PathBuf {
    let lower = busybox_rootfs(t);
    fs::write(lower.join("etc/keep"), "keep\n").unwrap();
    fs::write(lower.join("etc/change"), "original\n").unwrap();
    fs::write(lower.join("etc/gone"), "gone\n").unwrap();
    lower
}

#[test]
fn overlay_rootfs_puts_changes_in_upper() {
    let rt = runc();
    let t = tmp();
    let lower = lower_tree(t.path());
    // The cache keeps lowers read-only; a step must not need write access to it.
    let before = snapshot(&lower);
    let prepared = prepare_rootfs(&lower, &t.path().join("scratch")).unwrap();
    assert_eq!(
        prepared.kind,
        RootfsKind::Overlay,
        "as root on {} overlayfs must work here",
        t.path().display()
    );
    let out = run_in(
        &rt,
        &t.path().join("b"),
        &spec(&prepared.path, step_script()),
    );
    out.ok();
    assert_eq!(out.stdout, ["keep"]);
    let upper = prepared.upper.clone().unwrap();
    prepared.release().unwrap();

    let mut found = BTreeSet::new();
    for e in walk(&upper) {
        found.insert(
            e.strip_prefix(&upper)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let expected: BTreeSet<String> = ["new", "etc", "etc/change", "etc/gone", "d", "d/f"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected, "the upper dir is exactly the step's diff");
    assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/change")).unwrap(),
        "changed\n"
    );
    let wh = fs::symlink_metadata(upper.join("etc/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout"
    );
    assert_eq!(snapshot(&lower), before, "lower changed");
    assert!(
        !t.path().join("scratch/merged/bin").exists(),
        "still mounted"
    );
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn copied_rootfs_keeps_metadata_and_isolates_lower() {
    let rt = runc();
    let t = tmp();
    let lower = lower_tree(t.path());
    let odd = lower.join("odd");
    fs::create_dir(&odd).unwrap();
    fs::write(odd.join("owned"), "x").unwrap();
    rustix::fs::chown(odd.join("owned"), Some(uid(1234)), Some(gid(5678))).unwrap();
    fs::set_permissions(odd.join("owned"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::hard_link(odd.join("owned"), odd.join("hardlink")).unwrap();
    symlink("../etc/keep", odd.join("link")).unwrap();
    rustix::fs::setxattr(
        odd.join("owned"),
        "user.gantry",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        odd.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let before = snapshot(&lower);

    let prepared = copy_rootfs(&lower, &t.path().join("scratch")).unwrap();
    assert_eq!(prepared.kind, RootfsKind::Copy);
    assert!(prepared.upper.is_none());
    let c = prepared.path.join("odd");
    let md = fs::symlink_metadata(c.join("owned")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o4750)
    );
    assert_eq!(md.nlink(), 2);
    assert_eq!(
        md.ino(),
        fs::symlink_metadata(c.join("hardlink")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(c.join("link")).unwrap(),
        Path::new("../etc/keep")
    );
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(c.join("owned"), "user.gantry", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"value");
    let dev = fs::symlink_metadata(c.join("null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), rustix::fs::makedev(1, 3));

    let out = run_in(
        &rt,
        &t.path().join("b"),
        &spec(&prepared.path, step_script()),
    );
    out.ok();
    assert_eq!(
        fs::read_to_string(prepared.path.join("new")).unwrap(),
        "new\n"
    );
    assert!(!prepared.path.join("etc/gone").exists());
    assert_eq!(snapshot(&lower), before, "lower changed");
    assert!(!lower.join("new").exists());
    prepared.release().unwrap();
}

fn uid(n: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(n)
}

fn gid(n: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(n)
}

/// A throw-away unprivileged user with subordinate id ranges; removed on drop.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn create() -> TempUser {
        require("useradd");
        let name = format!(
            "gtrt{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_micros()
        );
        Command::new("useradd")
            .args([
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                &name,
            ])
            .ok();
        let id = |flag: &str| -> u32 {
            Command::new("id")
                .args([flag, &name])
                .ok()
                .stdout
                .trim()
                .parse()
                .unwrap()
        };
        let user = TempUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        };
        // useradd allocates subordinate ranges when /etc/subuid exists (SUB_UID_COUNT); make
        // sure there is one either way.
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            if user.subordinate(file).is_none() {
                let start = 1_500_000_000 + (user.uid % 1000) * 65536;
                Command::new("usermod")
                    .args([flag, &format!("{start}-{}", start + 65535), &user.name])
                    .ok();
            }
        }
        user
    }

    fn subordinate(&self, file: &str) -> Option<(u32, u32)> {
        fs::read_to_string(file).ok()?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == self.name)
                .then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
    }

    /// `cmd` as this user (setpriv: real and effective ids, its groups, no capabilities).
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(require("setpriv"));
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(program)
            .env_clear()
            // No sbin: runtime detection must find runc in /usr/sbin by itself.
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .env("RUST_BACKTRACE", "1");
        c
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        for file in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = fs::read_to_string(file) {
                let kept: String = text
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{}:", self.name)))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if kept != text {
                    let _ = fs::write(file, kept);
                }
            }
        }
    }
}

fn chown_tree(root: &Path, uid: u32, gid: u32) {
    let mut all = walk(root);
    all.push(root.to_path_buf());
    for p in all {
        rustix::fs::chownat(
            rustix::fs::CWD,
            &p,
            Some(self::uid(uid)),
            Some(self::gid(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// Rootless runc as an unprivileged user with subordinate ids: the test binary re-runs
/// itself (`rootless_child`) under `setpriv` as a fresh user, which detects the runtime,
/// writes rootless bundles from its own id maps and runs them through [`Runtime::run`].
#[test]
fn rootless_runc_as_an_unprivileged_user() {
    require("runc");
    require("newuidmap");
    require("newgidmap");
    let user = TempUser::create();
    let (sub_uid, _) = user.subordinate("/etc/subuid").expect("subuid range");
    let (sub_gid, _) = user.subordinate("/etc/subgid").expect("subgid range");

    // Can this user make a user namespace at all? If not, say exactly why.
    let probe = user
        .command(&require("unshare"))
        .args(["--user", "--map-root-user", "id", "-u"])
        .output_any();
    assert!(
        probe.code == Some(0) && probe.stdout.trim() == "0",
        "unprivileged user namespaces are refused on this host, so rootless containers cannot \
         work: `setpriv --reuid={} unshare --user --map-root-user id -u` gave {:?}: {} \
         (check sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, \
         kernel.apparmor_restrict_unprivileged_userns)",
        user.uid,
        probe.code,
        probe.stderr
    );

    let t = tmp();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = t.path().join("work");
    fs::create_dir(&work).unwrap();
    busybox_rootfs(&work);
    chown_tree(&work, user.uid, user.gid);

    let out = user
        .command(&std::env::current_exe().unwrap())
        .env("GANTRY_RT_ROOTLESS_DIR", &work)
        .args([
            "--exact",
            "rootless_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .output_any();
    assert!(
        out.code == Some(0) && out.stdout.contains("1 passed"),
        "rootless child failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    // Container root wrote as the user; container uid 1000 as subordinate id 1000 - 1 + start.
    let md = fs::metadata(work.join("rootfs/tmp/by-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (user.uid, user.gid));
    let md = fs::metadata(work.join("rootfs/tmp/by-1000")).unwrap();
    assert_eq!((md.uid(), md.gid()), (sub_uid + 999, sub_gid + 999));
}

/// The unprivileged half of [`rootless_runc_as_an_unprivileged_user`]; does nothing unless
/// that test started it.
#[test]
fn rootless_child() {
    let Some(work) = std::env::var_os("GANTRY_RT_ROOTLESS_DIR") else {
        return;
    };
    let work = PathBuf::from(work);
    assert!(!rustix::process::geteuid().is_root());
    let rootfs = work.join("rootfs");

    // Auto-detection probes rootless too, and finds runc outside PATH (in /usr/sbin).
    let rt = Runtime::detect(None).expect("a runtime that runs rootless containers");
    let maps = IdMaps::current_user().unwrap();
    assert!(
        maps.needs_helpers(),
        "subordinate ranges expected: {maps:?}"
    );
    let me = rustix::process::getuid().as_raw();
    assert_eq!(maps.uids[0].host_id, me);

    let mut s = spec(
        &rootfs,
        "id -u; id -g; cat /proc/self/uid_map | tr -s ' ' ' '; touch /tmp/by-root; \
         ls /sys/class/net",
    );
    s.rootless = Some(maps.clone());
    let out = run_in(&rt, &work.join("b"), &s);
    out.ok();
    let sub = maps.uids[1];
    assert_eq!(
        out.stdout,
        [
            "0".to_owned(),
            "0".to_owned(),
            format!(" 0 {me} 1"),
            format!(" 1 {} {}", sub.host_id, sub.size),
            "lo".to_owned(),
        ]
    );

    let mut s = spec(&rootfs, "id -u; touch /tmp/by-1000");
    s.user.uid = 1000;
    s.user.gid = 1000;
    s.user.additional_gids = vec![1000];
    s.network = true;
    s.rootless = Some(maps.clone());
    let e = write_bundle(&work.join("b"), &s).unwrap_err();
    assert!(e.to_string().contains("supplementary groups"), "{e}");
    s.user.additional_gids.clear();
    s.rootless = Some(maps.clone());
    let out = run_in(&rt, &work.join("b"), &s);
    out.ok();
    assert_eq!(out.stdout, ["1000"]);
    assert!(rt.list(&work.join("b")).unwrap().is_empty());

    // Overlay needs root in the initial namespace: a rootless step gets a copy.
    let prepared = prepare_rootfs(&rootfs, &work.join("scratch")).unwrap();
    assert_eq!(prepared.kind, RootfsKind::Copy);
    let mut s = spec(&prepared.path, "echo hi > /step-output");
    s.rootless = Some(maps);
    run_in(&rt, &work.join("b"), &s).ok();
    assert!(prepared.path.join("step-output").exists());
    assert!(!rootfs.join("step-output").exists());
}

/// `terminal: true` with [`Stdio::Inherit`] on a real pty: the test binary re-runs itself
/// (`terminal_child`) under `script`, which gives it a terminal; runc, in the foreground,
/// allocates the container's pty and relays it.
#[test]
fn terminal_runs_on_an_inherited_tty() {
    require("runc");
    let t = tmp();
    busybox_rootfs(t.path());
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(require("script"))
        .args(["--quiet", "--return", "--command"])
        .arg(format!(
            "'{}' --exact terminal_child --nocapture --test-threads=1",
            exe.display()
        ))
        .arg("/dev/null")
        .env("SHELL", "/bin/sh")
        .env("GANTRY_RT_TTY_DIR", t.path())
        .stdin(std::process::Stdio::null())
        .output_any();
    assert!(
        out.code == Some(0)
            && out.stdout.contains("1 passed")
            && out.stdout.contains("/dev/pts/0")
            && out.stdout.contains("in-and-out-are-ttys"),
        "terminal child failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
}

/// The half of [`terminal_runs_on_an_inherited_tty`] that runs on the pty; does nothing
/// unless that test started it.
#[test]
fn terminal_child() {
    let Some(dir) = std::env::var_os("GANTRY_RT_TTY_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut s = spec(
        &dir.join("rootfs"),
        "tty; [ -t 0 ] && [ -t 1 ] && echo in-and-out-are-ttys; exit 3",
    );
    s.terminal = true;
    write_bundle(&dir.join("b"), &s).unwrap();
    let status = runc()
        .run(&dir.join("b"), &container_id("tty"), Stdio::Inherit)
        .unwrap();
    assert_eq!(status, ExitStatus::Exited(3));
}

/// A container whose process died without deleting it (gantry killed with SIGKILL) is stopped
/// and deleted by reap_state_root, with the runtime recorded beside its state.
#[test]
fn reap_state_root_stops_the_containers_a_dead_process_left() {
    let rt = runc();
    let t = tmp();
    let rootfs = busybox_rootfs(t.path());
    let state = t.path().join("state");
    let bundle = t.path().join("b");
    write_bundle(&bundle, &spec(&rootfs, "sleep 600")).unwrap();
    // Started outside Runtime::run, as a killed gantry leaves it: `runc run --detach`.
    fs::write(
        t.path().join("state.runtime"),
        rt.path().as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    // Its stdio goes nowhere: a pipe would be held open by the detached container.
    let status = Command::new(rt.path())
        .arg("--root")
        .arg(&state)
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg("orphan")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let rt = rt.with_state_root(&state);
    assert_eq!(rt.list(&bundle).unwrap(), ["orphan"]);
    let started = Instant::now();
    assert_eq!(gantry_runtime::reap_state_root(&state).unwrap(), ["orphan"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it was stopped, not awaited"
    );
    assert!(rt.list(&bundle).unwrap().is_empty());
    assert!(gantry_runtime::reap_state_root(&state).unwrap().is_empty());
}
