//! Build steps (`[step.NAME]`) and `gantry run`, on real runc, with a busybox-static base made
//! by the test (no network needed). The runtime is a wrapper script around runc that logs
//! every container it runs, so a test can tell whether a step ran or came from the cache.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;

use gantry_test::{CmdExt, TestEnv, require, tool};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "mkdir", "rm", "touch", "nc", "id", "sleep", "true", "false",
];

/// A project with a busybox base image, a seed layer to change and delete from, and `extra`.
pub(crate) fn project(t: &TestEnv, extra: &str) {
    let busybox = gantry_test::busybox();
    let links: Vec<String> = APPLETS
        .iter()
        .map(|a| format!("\"/bin/{a}\" = \"busybox\""))
        .collect();
    t.write("src/input.txt", "input v1\n");
    t.write(
        "gantry.toml",
        format!(
            r#"
[layer.busybox]
files = {{ "/bin/busybox" = "{busybox}" }}
symlinks = {{ {links} }}
empty-dirs = ["/tmp", "/etc"]
metadata."/tmp" = {{ mode = "1777" }}

[layer.seed]
content = {{ "/etc/motd" = "hello\n", "/var/old/a" = "a\n", "/var/old/b" = "b\n", "/opt/keep/x" = "x\n", "/opt/opq/lower" = "lower\n", "/etc/passwd" = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n" }}

[image.base]
layers = ["busybox", "seed"]
platform = "linux/amd64"
env = {{ PATH = "/bin" }}
{extra}
"#,
            busybox = busybox.display(),
            links = links.join(", "),
        ),
    );
}

/// A runtime wrapper that logs each run to `runs.log` and execs runc.
pub(crate) fn runtime_wrapper(t: &TestEnv) -> PathBuf {
    let runc = require("runc");
    let log = t.path("runs.log");
    let w = t.write(
        "runc-wrapper",
        format!(
            "#!/bin/sh\ncase \"$*\" in *' run '*) echo run >> {log} ;; esac\nexec {runc} \"$@\"\n",
            log = log.display(),
            runc = runc.display()
        ),
    );
    t.chmod("runc-wrapper", 0o755);
    w
}

pub(crate) fn runs(t: &TestEnv) -> usize {
    fs::read_to_string(t.path("runs.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn gantry(t: &TestEnv, runtime: &PathBuf, args: &[&str]) -> std::process::Output {
    t.gantry()
        .arg("--runtime")
        .arg(runtime)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "gantry failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unpack(t: &TestEnv, image: &str, bundle: &str) -> PathBuf {
    tool("umoci")
        .args(["unpack", "--image", image])
        .arg(t.path(bundle))
        .current_dir(t.root())
        .ok();
    t.path(bundle).join("rootfs")
}

const STEPS: &str = r#"
[step.compile]
base = "base"
inputs = { "/src" = "src" }
env = { GREETING = "hi" }
script = "mkdir -p /out/sub && cat /src/input.txt > /out/app.txt && echo $GREETING > /out/sub/greet && echo junk > /out/sub/x.tmp && echo elsewhere > /etc/ignored && id -u > /out/uid"
outputs = ["/out"]
exclude = ["*.tmp"]

[step.change]
base = "base"
capture = "diff"
script = "echo changed > /etc/motd && rm -rf /var/old && echo new > /new.txt && rm -rf /opt/opq && mkdir /opt/opq && echo fresh > /opt/opq/fresh"

[image.app]
base = "base"
layers = ["compile", "change"]
cmd = ["/bin/sh", "-c", "cat /out/app.txt /out/sub/greet /etc/motd"]
"#;

#[test]
fn steps_capture_outputs_and_diffs_and_the_image_runs() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(&t, STEPS);
    let summary = gantry_test::json(&ok(gantry(&t, &rt, &["build", "--json"])));
    assert_eq!(runs(&t), 2, "two steps ran");

    let rootfs = unpack(&t, "gantry-out/app:latest", "bundle");
    // Outputs: exactly /out minus *.tmp; nothing else the step wrote.
    assert_eq!(
        fs::read_to_string(rootfs.join("out/app.txt")).unwrap(),
        "input v1\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("out/sub/greet")).unwrap(),
        "hi\n"
    );
    assert_eq!(fs::read_to_string(rootfs.join("out/uid")).unwrap(), "0\n");
    assert!(!rootfs.join("out/sub/x.tmp").exists(), "excluded");
    assert!(!rootfs.join("etc/ignored").exists(), "not an output");
    // The diff: a change, deletions (whiteouts), an addition, an opaque directory.
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "changed\n"
    );
    assert!(!rootfs.join("var/old").exists(), "deleted directory");
    assert_eq!(fs::read_to_string(rootfs.join("new.txt")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/keep/x")).unwrap(),
        "x\n",
        "untouched lower content stays"
    );
    let opq: Vec<String> = fs::read_dir(rootfs.join("opt/opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(opq, ["fresh"], "the replaced directory hides the lower one");

    // The step layers hold only what they should.
    let layers = summary["layers"].as_array().unwrap();
    let digest_of = |name: &str| {
        layers
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {summary}"))["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let blob = |d: &str| {
        t.home()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let listing = ok(t
        .gantry()
        .arg("ls")
        .arg(blob(&digest_of("compile")))
        .output()
        .unwrap());
    for want in ["/out/app.txt", "/out/sub/greet", "/out/uid"] {
        assert!(listing.contains(want), "{want} in\n{listing}");
    }
    for not in ["x.tmp", "/etc", "/src"] {
        assert!(!listing.contains(not), "{not} in\n{listing}");
    }
    let listing = tool("tar")
        .arg("-tzf")
        .arg(blob(&digest_of("change")))
        .ok()
        .stdout;
    for want in [
        "var/.wh.old",
        "opt/opq/.wh..wh..opq",
        "opt/opq/fresh",
        "new.txt",
        "etc/motd",
    ] {
        assert!(listing.contains(want), "{want} in\n{listing}");
    }

    // gantry run: the image's cmd, under runc.
    let out = ok(gantry(&t, &rt, &["run", "app"]));
    assert_eq!(out, "input v1\nhi\nchanged\n");
}

#[test]
fn unchanged_steps_do_not_start_the_runtime() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(&t, STEPS);
    let first = gantry_test::json(&ok(gantry(&t, &rt, &["build", "--json"])));
    assert_eq!(runs(&t), 2);
    let second = gantry_test::json(&ok(gantry(&t, &rt, &["build", "--json"])));
    assert_eq!(runs(&t), 2, "a no-op rebuild runs nothing");
    assert_eq!(first["images"][0]["digest"], second["images"][0]["digest"]);
    assert!(
        second["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cacheHit"] == true),
        "{second}"
    );

    // A changed input file re-runs the step that reads it, only.
    t.write("src/input.txt", "input v2\n");
    ok(gantry(&t, &rt, &["build"]));
    assert_eq!(runs(&t), 3);
    // A changed env value re-runs it too.
    let toml = fs::read_to_string(t.path("gantry.toml"))
        .unwrap()
        .replace("GREETING = \"hi\"", "GREETING = \"hello\"");
    fs::write(t.path("gantry.toml"), toml).unwrap();
    ok(gantry(&t, &rt, &["build"]));
    assert_eq!(runs(&t), 4);
    let out = ok(gantry(&t, &rt, &["run", "app"]));
    assert_eq!(out, "input v2\nhello\nchanged\n");
}

#[test]
fn network_is_off_unless_asked_for() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept connections, read one line each, answer and close, recording what came.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = std::io::Write::write_all(&mut conn, b"pong\n");
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let step = |network: bool| {
        format!(
            r#"
[step.probe]
base = "base"
network = {network}
script = "mkdir /out; (echo ping | nc -w 3 127.0.0.1 {port} > /out/answer) || echo refused > /out/answer"
outputs = ["/out"]
"#
        )
    };
    project(&t, &step(false));
    let summary = gantry_test::json(&ok(gantry(&t, &rt, &["build", "probe", "--json"])));
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "a step without network reached the host"
    );
    let answer = |summary: &serde_json::Value| {
        let d = summary["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "probe")
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let blob = t
            .home()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        tool("tar")
            .arg("-xzOf")
            .arg(blob)
            .arg("out/answer")
            .ok()
            .stdout
    };
    assert_eq!(answer(&summary), "refused\n");
    project(&t, &step(true));
    let summary = gantry_test::json(&ok(gantry(&t, &rt, &["build", "probe", "--json"])));
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a step with network = true reaches the host");
    assert_eq!(got, "ping\n");
    assert_eq!(answer(&summary), "pong\n");
}

#[test]
fn a_failing_step_shows_its_output_and_caches_nothing() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(
        &t,
        r#"
[step.broken]
base = "base"
script = "echo line one; echo line two >&2; exit 3"
outputs = ["/out"]

[image.app]
base = "base"
layers = ["broken"]
"#,
    );
    let mut rootfs_cache = None;
    for attempt in 1..=2 {
        let out = gantry(&t, &rt, &["build"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        gantry_test::assert_mentions(
            &err,
            &["step.broken", "exit code 3", "line one", "line two"],
        );
        assert_eq!(runs(&t), attempt, "a failed step is not cached");
        // The unpacked base is reused, unchanged, by the next attempt.
        let now = gantry_test::snapshot(&t.home().join("rootfs"));
        assert!(!now.is_empty());
        if let Some(before) = &rootfs_cache {
            assert_eq!(before, &now, "the rootfs cache changed");
        }
        rootfs_cache = Some(now);
    }
    assert!(!t.path("gantry-out/app").exists(), "no image was written");
}

#[test]
fn gantry_run_passes_arguments_and_exit_codes() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(&t, "");
    ok(gantry(&t, &rt, &["build"]));
    let out = gantry(
        &t,
        &rt,
        &[
            "run",
            "--env",
            "X=from-env",
            "oci:gantry-out/base:latest",
            "--",
            "/bin/sh",
            "-c",
            "echo $0 $1 $X; exit 7",
            "a",
            "b",
        ],
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b from-env\n");
    // A user from the image's /etc/passwd.
    let out = ok(gantry(
        &t,
        &rt,
        &["run", "--user", "app", "base", "--", "id", "-u"],
    ));
    assert_eq!(out, "1000\n");
    // The container is gone afterwards.
    assert_eq!(runs(&t), 2);
}

#[test]
fn a_missing_runtime_says_how_to_install_one() {
    let t = crate::env();
    project(&t, "");
    let out = t
        .gantry()
        .args([
            "--runtime",
            "/nonexistent/runc",
            "run",
            "base",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    gantry_test::assert_mentions(&err, &["/nonexistent/runc", "crun", "runc"]);
}

/// A throw-away unprivileged user with subordinate id ranges; removed on drop.
struct TempUser {
    name: String,
}

impl TempUser {
    fn create() -> TempUser {
        let name = format!("gtst{}", std::process::id());
        tool("useradd")
            .args([
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--user-group",
                &name,
            ])
            .ok();
        let user = TempUser { name };
        for (file, flag, base) in [
            ("/etc/subuid", "--add-subuids", 1_600_000_000u32),
            ("/etc/subgid", "--add-subgids", 1_600_000_000u32),
        ] {
            let has = fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(&format!("{}:", user.name)));
            if !has {
                let start = base + (std::process::id() % 1000) * 65536;
                tool("usermod")
                    .args([flag, &format!("{start}-{}", start + 65535), &user.name])
                    .ok();
            }
        }
        user
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .output();
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

/// The same kind of project built by an unprivileged user: a user namespace (the caller as
/// root, its subordinate ranges for the rest), a copied rootfs instead of an overlay, and
/// layers whose owners are the container's view (root), not the caller's uid.
#[test]
fn steps_run_rootless() {
    let t = crate::env();
    require("setpriv");
    require("newuidmap");
    let user = TempUser::create();
    let dir = t.path("rootless");
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("src/input.txt"), "in\n").unwrap();
    let busybox = gantry_test::busybox();
    fs::write(
        dir.join("gantry.toml"),
        format!(
            r#"
[layer.busybox]
files = {{ "/bin/busybox" = "{busybox}" }}
symlinks = {{ "/bin/sh" = "busybox", "/bin/mkdir" = "busybox", "/bin/cat" = "busybox", "/bin/id" = "busybox", "/bin/rm" = "busybox", "/bin/echo" = "busybox" }}
empty-dirs = ["/tmp", "/etc"]

[image.base]
layers = ["busybox"]
platform = "linux/amd64"
env = {{ PATH = "/bin" }}

[step.outputs]
base = "base"
inputs = {{ "/src" = "src" }}
script = "mkdir /out && cat /src/input.txt > /out/x && id -u >> /out/x"
outputs = ["/out"]

[step.diff]
base = "base"
script = "echo hi > /etc/motd && rm /bin/rm"
capture = "diff"
"#,
            busybox = busybox.display()
        ),
    )
    .unwrap();
    tool("chown")
        .args(["-R", &format!("{0}:{0}", user.name)])
        .arg(&dir)
        .ok();
    tool("chmod").arg("755").arg(t.root()).ok();
    let out = std::process::Command::new(require("setpriv"))
        .arg(format!("--reuid={}", user.name))
        .arg(format!("--regid={}", user.name))
        .arg("--init-groups")
        .arg(crate::GANTRY)
        .args(["build", "outputs", "diff", "--json"])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/nonexistent")
        .env("GANTRY_HOME", dir.join("home"))
        .output()
        .unwrap();
    let summary = gantry_test::json(&ok(out));
    let blob = |name: &str| {
        let d = summary["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        dir.join("home/blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let x = tool("tar")
        .arg("-xzOf")
        .arg(blob("outputs"))
        .arg("out/x")
        .ok()
        .stdout;
    assert_eq!(x, "in\n0\n", "the step ran as root of its user namespace");
    let listing = tool("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(blob("diff"))
        .ok()
        .stdout;
    for line in listing.lines() {
        assert!(
            line.contains(" 0/0 "),
            "owned by the container's root: {line}"
        );
    }
    for want in ["bin/.wh.rm", "etc/motd"] {
        assert!(listing.contains(want), "{want} in\n{listing}");
    }
}

/// Steps share through the remote cache too: a second machine with an empty store takes both
/// step layers from the registry and never starts the runtime, and gets the same image.
#[test]
fn steps_come_from_the_remote_cache_on_another_machine() {
    use gantry_test::registry::{Registry, RegistryOptions};
    let reg = Registry::start(RegistryOptions::plain());
    let host = reg.host();
    let cache = format!("{host}/cache");
    let a = crate::env();
    let rt_a = runtime_wrapper(&a);
    project(&a, STEPS);
    let first = gantry_test::json(&ok(gantry(
        &a,
        &rt_a,
        &[
            "--insecure-registry",
            &host,
            "--cache-to",
            &cache,
            "build",
            "--json",
        ],
    )));
    assert_eq!(runs(&a), 2);

    let b = crate::env();
    let rt_b = runtime_wrapper(&b);
    project(&b, STEPS);
    let second = gantry_test::json(&ok(gantry(
        &b,
        &rt_b,
        &[
            "--insecure-registry",
            &host,
            "--cache-from",
            &cache,
            "build",
            "--json",
        ],
    )));
    assert_eq!(runs(&b), 0, "no step ran on the second machine");
    assert_eq!(second["cache"]["misses"], 0, "{second}");
    let remote: Vec<&str> = second["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["remoteHit"] == true)
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for step in ["compile", "change"] {
        assert!(remote.contains(&step), "{step} in {second}");
    }
    let digests = |s: &serde_json::Value| {
        s["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].clone(), i["digest"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&first), digests(&second));
}

/// Regression: gantry killed (SIGKILL) while a step ran left the step's overlay mounted in
/// its session directory, and the next gantry could not open the store ("Device or resource
/// busy"). The next open now detaches leftover mounts before removing the directory.
#[test]
fn a_step_killed_mid_run_leaves_a_usable_store() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(
        &t,
        r#"
[step.slow]
base = "base"
script = "sleep 4"
capture = "diff"
"#,
    );
    let home = t.home();
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(home.to_str().unwrap()))
            .count()
    };
    let mut child = t
        .gantry()
        .arg("--runtime")
        .arg(&rt)
        .args(["build", "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while runs(&t) == 0 || mounted() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(mounted() > 0, "the killed build left its overlay mounted");
    ok(gantry(&t, &rt, &["build", "base"]));
    assert_eq!(mounted(), 0, "the next run detached the leftover mount");
    // The step still builds afterwards, from the same (intact) rootfs cache.
    ok(gantry(&t, &rt, &["build", "slow"]));
}

#[test]
fn gc_drops_unpacked_images_unused_for_keep_cache_days() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(&t, "");
    ok(gantry(&t, &rt, &["run", "base", "--", "true"]));
    let entries = || {
        fs::read_dir(t.home().join("rootfs/v2"))
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with("sha256-") && !n.ends_with(".lock")
            })
            .count()
    };
    assert_eq!(entries(), 1);
    // Used just now: a week's keep spares it.
    ok(gantry(&t, &rt, &["gc"]));
    assert_eq!(entries(), 1);
    let dry = ok(gantry(&t, &rt, &["gc", "--keep-cache", "0", "--dry-run"]));
    assert!(
        dry.contains("would remove 1 unused unpacked images"),
        "{dry}"
    );
    assert_eq!(entries(), 1);
    let out = ok(gantry(&t, &rt, &["gc", "--keep-cache", "0"]));
    assert!(out.contains("removed 1 unused unpacked images"), "{out}");
    assert_eq!(entries(), 0);
    // And the next run unpacks it again.
    ok(gantry(&t, &rt, &["run", "base", "--", "true"]));
    assert_eq!(entries(), 1);
}

/// A user from the image's config that the image does not know was reported as
/// `--user "nobody"`, a flag the user never passed.
#[test]
fn regression_config_user_errors_named_a_user_flag() {
    let t = crate::env();
    let rt = runtime_wrapper(&t);
    project(
        &t,
        r#"
[image.nobody]
base = "base"
user = "nobody"

[step.as-nobody]
base = "nobody"
script = "true"
outputs = ["/tmp"]
"#,
    );
    ok(gantry(&t, &rt, &["build", "nobody"]));
    let out = gantry(&t, &rt, &["run", "nobody", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the image config's User \"nobody\"") && !err.contains("--user"),
        "{err}"
    );
    assert!(err.contains("not in the image's /etc/passwd"), "{err}");
    // Passed on the command line, the flag is named.
    let out = gantry(&t, &rt, &["run", "--user", "ghost", "base", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--user \"ghost\""), "{err}");
    // A step on that image names the base image's config, not a step key.
    let out = gantry(&t, &rt, &["build", "as-nobody"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step.as-nobody: the base image config's User \"nobody\""),
        "{err}"
    );
    assert_eq!(runs(&t), 0, "no container started");
}
