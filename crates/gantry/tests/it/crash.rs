//! Crashes and concurrency around outputs, sessions and locks: `kill -9` of a real gantry in the
//! middle of an output write, of a step, and while gc waits (issue 11). After each case the
//! store is consistent (`gantry fsck` is clean) and what the dead process left is removed.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gantry_test::{CmdExt, TestEnv, assert_mentions};

/// Writes `mib` MiB from /dev/urandom (incompressible) to `rel`.
fn random_file(env: &TestEnv, rel: &str, mib: u64) {
    let path = env.path(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut out = fs::File::create(&path).unwrap();
    let n = io::copy(
        &mut fs::File::open("/dev/urandom").unwrap().take(mib << 20),
        &mut out,
    )
    .unwrap();
    assert_eq!(n, mib << 20);
}

/// Polls `cond` every 2 ms until it gives a value; panics after `limit`, or if `child` exits
/// first (it was meant to be caught in the act).
fn wait_for<T>(child: &mut Child, limit: Duration, what: &str, cond: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process exited ({status}) before {what}");
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The entries of `dir` whose names mark them as gantry temps.
fn temps_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(".gantry-tmp-")
        })
        .collect();
    v.sort();
    v
}

/// The regular files at or under `path` (symlinks not followed), with their metadata; entries
/// that vanish meanwhile are skipped.
fn files_under(path: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Vec::new();
    };
    if meta.is_file() {
        return vec![(path.to_owned(), meta)];
    }
    if !meta.is_dir() {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .flat_map(|e| files_under(&e.path()))
        .collect()
}

/// The total size of the regular files at or under `path`.
fn bytes_under(path: &Path) -> u64 {
    files_under(path).iter().map(|(_, m)| m.len()).sum()
}

/// Spawns `gantry <args>` and SIGKILLs it once `ready` finds what it waits for (a temp of at
/// least some size). Returns what `ready` found.
fn kill_when<T>(env: &TestEnv, args: &[&str], what: &str, ready: impl Fn() -> Option<T>) -> T {
    let mut child = env
        .gantry()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let found = wait_for(&mut child, Duration::from_secs(120), what, ready);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    found
}

fn digest_hex(env: &TestEnv, info: &str) -> String {
    let v = gantry_test::json(&fs::read_to_string(env.path(info)).unwrap());
    v["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned()
}

fn fsck_clean(env: &TestEnv) {
    let fsck = env.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["no problems"]);
}

/// Builds, with a second store, a layout `src` whose two 48 MiB layers are `big1` and `big2`
/// (uncompressed); the first store gets only the first layer. Copying `src` with the first
/// store then links layer 1 from the store and copies layer 2 from the layout, which takes
/// long enough to be killed in the middle. Returns the second environment.
fn source_layout(env: &TestEnv) -> TestEnv {
    random_file(env, "big1/f", 48);
    random_file(env, "big2/f", 48);
    let other = crate::env();
    let in_env = |args: &[&str]| {
        other.gantry().current_dir(env.root()).args(args).ok();
    };
    for n in ["1", "2"] {
        in_env(&[
            "layer",
            "--dir",
            &format!("/d{n}=big{n}"),
            "--compression",
            "none",
            "--info",
            &format!("b{n}.json"),
        ]);
    }
    in_env(&[
        "image", "--layer", "b1.json", "--layer", "b2.json", "-o", "src",
    ]);
    env.run(&[
        "layer",
        "--dir",
        "/d1=big1",
        "--compression",
        "none",
        "--info",
        "l1.json",
    ]);
    assert_eq!(digest_hex(env, "l1.json"), digest_hex(env, "b1.json"));
    other
}

/// `kill -9` during a layout or archive write left `.NAME.gantry-tmp-XXXX` beside the output
/// (a 48 MiB archive, a layout of hard-linked blobs) that nothing ever removed: not a later
/// write, `gantry clean` or `gantry gc`; and gc then reported freed space that the leftover's
/// hard links still held.
#[test]
fn regression_temps_of_killed_writers_were_never_removed() {
    let env = crate::env();
    let _other = source_layout(&env);
    let l1 = digest_hex(&env, "l1.json");
    let l1_blob = env.home().join("blobs/sha256").join(&l1);
    let l1_ino = fs::metadata(&l1_blob).unwrap().ino();
    let l1_size = fs::metadata(&l1_blob).unwrap().len();
    fs::create_dir(env.path("archives")).unwrap();
    fs::create_dir(env.path("layouts")).unwrap();
    // An output whose ref tells gc about the `layouts` directory.
    env.run(&["layer", "--content", "/y=2", "--info", "layouts/small.json"]);

    // An archive write, killed once its temp holds a few MiB.
    let archives = env.path("archives");
    let archive_temp = kill_when(
        &env,
        &["copy", "oci:src:latest", "oci-archive:archives/big.tar"],
        "the archive's temp grew past 4 MiB",
        || {
            temps_in(&archives)
                .into_iter()
                .find(|t| fs::metadata(t).is_ok_and(|m| m.len() > 4 << 20))
        },
    );
    assert!(archive_temp.exists(), "the killed writer left its temp");

    // A layout write, killed while it copies layer 2, after it linked layer 1 from the store.
    let layouts = env.path("layouts");
    let layout_temp = kill_when(
        &env,
        &["copy", "oci:src:latest", "oci:layouts/dst"],
        "the layout's temp linked layer 1 and copied part of layer 2",
        || {
            let t = temps_in(&layouts).into_iter().next()?;
            let linked = t.join("blobs/sha256").join(&l1);
            (bytes_under(&t) > l1_size + (4 << 20) && linked.exists()).then_some(t)
        },
    );
    let linked = layout_temp.join("blobs/sha256").join(&l1);
    assert_eq!(fs::metadata(&linked).unwrap().ino(), l1_ino);
    fsck_clean(&env);

    // Writes into other directories leave both alone: their owner might be alive, for all they
    // know about other directories.
    env.run(&["layer", "--content", "/x=1", "--info", "elsewhere.json"]);
    assert!(archive_temp.exists() && layout_temp.exists());

    // The next write into the archive's directory removes its leftover.
    env.run(&["copy", "oci:src:latest", "oci-archive:archives/big.tar"]);
    assert_eq!(temps_in(&archives), Vec::<PathBuf>::new());
    let listing = gantry_test::tool("tar")
        .args(["-tf", "archives/big.tar"])
        .current_dir(env.root())
        .ok()
        .stdout;
    assert_mentions(&listing, &["index.json", &l1]);

    // gc removes the layout's leftover: a ref's output is in that directory. Layer 1 loses its
    // last ref, so it goes, and the space it reports freed really is free.
    fs::remove_file(env.path("l1.json")).unwrap();
    let dry = env.run(&["gc", "--dry-run"]);
    assert_mentions(
        &dry,
        &[&format!(
            "would remove the leftover temp {}",
            layout_temp.display()
        )],
    );
    assert!(layout_temp.exists());
    let out = env.run(&["gc"]);
    assert_mentions(
        &out,
        &[&format!(
            "removed the leftover temp {}",
            layout_temp.display()
        )],
    );
    assert!(!layout_temp.exists());
    assert!(!l1_blob.exists());
    assert!(
        !out.contains("still hard-linked"),
        "every removed blob was freed: {out}"
    );
    let holders: Vec<PathBuf> = files_under(env.root())
        .into_iter()
        .filter(|(_, m)| m.ino() == l1_ino)
        .map(|(p, _)| p)
        .collect();
    assert!(
        holders.is_empty(),
        "gc reported layer 1 freed, but {holders:?} still hold it"
    );
    fsck_clean(&env);
}

/// The same for a project: a build killed while it writes an output layout leaves a temp in
/// the output directory, which `gantry clean` removes (with the output directory, then empty).
#[test]
fn regression_clean_left_the_temps_of_killed_builds() {
    let env = crate::env();
    let _other = source_layout(&env);
    env.write(
        "gantry.toml",
        r#"
[layer.extra]
content = { "/app" = "x" }

[image.app]
base = "oci:src:latest"
layers = ["extra"]
"#,
    );
    let out_dir = env.path("gantry-out");
    let temp = kill_when(
        &env,
        &["build"],
        "the output layout's temp holds part of a base layer",
        || {
            let t = temps_in(&out_dir).into_iter().next()?;
            (bytes_under(&t) > 4 << 20).then_some(t)
        },
    );
    assert!(temp.exists());
    assert!(!env.path("gantry-out/app").exists());
    let o = env.gantry().arg("clean").ok();
    assert_mentions(&o.stderr, &[&format!("removed {}", temp.display())]);
    assert!(!temp.exists());
    assert!(!out_dir.exists(), "the empty output directory goes too");
    fsck_clean(&env);
}

// ---- gc and concurrent processes ---------------------------------------------------------------

/// The temp blob that process `pid` is writing in the store's session directories, if any.
fn temp_blob_of(env: &TestEnv, pid: u32) -> Option<PathBuf> {
    let tmp = env.home().join("tmp");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .find(|p| {
            p.starts_with(&tmp)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("blob-"))
        })
}

/// gc read its roots (the build cache's entries) before it took its exclusive lock, so a build
/// that finished while gc waited for it lost the blob only its new cache entry roots: the next
/// build said "the cache entry refers to a missing or damaged blob; rebuilding".
#[test]
fn regression_gc_read_its_roots_before_its_lock() {
    let env = crate::env();
    random_file(&env, "big/f", 160);
    env.write(
        "gantry.toml",
        "[layer.big]\ndirs = { \"/big\" = \"big\" }\ncompression = \"gzip\"\n",
    );
    let mut build = KillOnDrop(Some(
        env.gantry()
            .args(["build", "big"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let pid = build.id();
    wait_for(
        build.0.as_mut().unwrap(),
        Duration::from_secs(120),
        "the build started writing its layer",
        || temp_blob_of(&env, pid),
    );
    let gc = KillOnDrop(Some(
        env.gantry()
            .arg("gc")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let b = build.wait_with_output();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let g = gc.wait_with_output();
    let (gc_out, gc_err) = (
        String::from_utf8_lossy(&g.stdout),
        String::from_utf8_lossy(&g.stderr),
    );
    assert!(g.status.success(), "{gc_err}");

    // The layer is still in the store: the next build takes it from the cache.
    let again = env.gantry().args(["build", "big"]).ok();
    assert!(!again.stderr.contains("rebuilding"), "{}", again.stderr);
    assert_mentions(&again.stderr, &["1 layer(s) from the cache, 0 built"]);
    assert_mentions(&gc_out, &["removed 0 blobs"]);
    // And gc said what it was waiting for.
    assert_mentions(
        &gc_err,
        &["gc: waiting for 1 other gantry process to finish"],
    );
    fsck_clean(&env);
}

/// A child process that is killed (and reaped) if the test ends without waiting for it, so a
/// failing test leaves nothing running.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().unwrap().try_wait().unwrap()
    }

    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gantry that holds the store open until the test feeds it: `gantry layer --tar FIFO`
/// opens the store, starts its blob, then blocks reading the FIFO.
struct Holder {
    child: KillOnDrop,
    fifo: PathBuf,
}

impl Holder {
    fn start(env: &TestEnv, n: usize) -> Holder {
        let fifo = env.path(format!("in-{n}.tar"));
        gantry_test::tool("mkfifo").arg(&fifo).ok();
        let child = env
            .gantry()
            .args(["layer", "--tar"])
            .arg(&fifo)
            .args(["--info", &format!("h{n}.json")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Holder {
            child: KillOnDrop(Some(child)),
            fifo,
        }
    }

    /// Whether it has the store open (its blob started) within `limit`.
    fn holds_store(&mut self, env: &TestEnv, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if temp_blob_of(env, self.child.id()).is_some() {
                return true;
            }
            assert!(self.child.try_wait().is_none(), "a holder exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Feeds it its tar (from a thread: opening a FIFO waits for the reader) and lets it end.
    fn finish(self, tar: &[u8]) -> std::thread::JoinHandle<()> {
        let tar = tar.to_vec();
        let Holder { child, fifo } = self;
        std::thread::spawn(move || {
            use std::io::Write;
            fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .unwrap()
                .write_all(&tar)
                .unwrap();
            let out = child.wait_with_output();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    }
}

/// A steady stream of overlapping gantry processes starved gc forever: it waited for an
/// exclusive lock that new processes kept sharing. Now, after a bounded wait, gc takes its turn
/// and new processes queue behind it.
#[test]
fn regression_a_stream_of_processes_starved_gc() {
    let env = crate::env();
    env.write("src/file", "held");
    gantry_test::tool("tar")
        .args(["-cf", "layer.tar", "-C", "src", "file"])
        .current_dir(env.root())
        .ok();
    let tar = fs::read(env.path("layer.tar")).unwrap();

    let mut current = Holder::start(&env, 0);
    assert!(current.holds_store(&env, Duration::from_secs(30)));
    let gc = KillOnDrop(Some(
        env.gantry()
            .arg("gc")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let gc_pid = gc.id();
    let gc_running = || fs::metadata(format!("/proc/{gc_pid}")).is_ok();
    // Each new process starts while the previous one still holds the store, so the store is
    // never free. Once gc has taken its turn, a new one no longer gets in.
    let mut feeders = Vec::new();
    let mut queued_behind_gc = None;
    let started = Instant::now();
    for n in 1..=40 {
        let mut next = Holder::start(&env, n);
        if !next.holds_store(&env, Duration::from_secs(2)) {
            queued_behind_gc = Some((n, next));
            break;
        }
        feeders.push(current.finish(&tar));
        current = next;
        std::thread::sleep(Duration::from_millis(300));
    }
    let (n, mut queued) = queued_behind_gc.unwrap_or_else(|| {
        panic!(
            "gc never took its turn in {:.0?} of overlapping processes",
            started.elapsed()
        )
    });
    assert!(gc_running(), "gc is waiting for the last holder");
    // The last holder finishes; gc runs; then the queued process goes on.
    feeders.push(current.finish(&tar));
    let g = gc.wait_with_output();
    let gc_err = String::from_utf8_lossy(&g.stderr);
    assert!(g.status.success(), "{gc_err}");
    assert_mentions(&gc_err, &["new ones wait until gc is done"]);
    assert!(
        queued.holds_store(&env, Duration::from_secs(30)),
        "holder {n} never got in"
    );
    feeders.push(queued.finish(&tar));
    for f in feeders {
        f.join().unwrap();
    }
    fsck_clean(&env);
}

// ---- containers of killed and interrupted gantry processes -------------------------------------

/// The pids of the processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Kills (SIGKILL) the processes whose command line is `argv` when dropped: a failing test
/// must not leave a container's process running. Its `runc run` then ends too.
struct KillProcesses(Vec<String>);

impl Drop for KillProcesses {
    fn drop(&mut self) {
        let argv: Vec<&str> = self.0.iter().map(String::as_str).collect();
        for pid in pids_running(&argv) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// Polls until `cond` holds, for at most `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A sleep time no other test uses, so that its `sleep N` process is this test's container.
fn unique_seconds() -> String {
    (900_000 + std::process::id() % 90_000 + fastrand_u32() % 1000).to_string()
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// After `kill -9` of gantry during a step, `runc run` and its container kept running, and
/// the next gantry removed the dead session's runc state, so nothing could stop them any more.
/// Now the next gantry stops the container first.
#[test]
fn regression_killed_gantry_left_its_step_container_running() {
    let t = crate::env();
    let rt = crate::steps::runtime_wrapper(&t);
    let secs = unique_seconds();
    crate::steps::project(
        &t,
        &format!(
            "[step.slow]\nbase = \"base\"\nrun = [\"sleep\", \"{secs}\"]\noutputs = [\"/tmp\"]\n"
        ),
    );
    let container = ["sleep", secs.as_str()];
    let _cleanup = KillProcesses(container.iter().map(|s| s.to_string()).collect());
    let mut child = KillOnDrop(Some(
        t.gantry()
            .arg("--runtime")
            .arg(&rt)
            .args(["build", "slow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let gantry_pid = child.id();
    wait_for(
        child.0.as_mut().unwrap(),
        Duration::from_secs(120),
        "the step's container runs",
        || (!pids_running(&container).is_empty()).then_some(()),
    );
    let session = fs::read_dir(t.home().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("s-"))
        .expect("the running build's session");
    let mut c = child.0.take().unwrap();
    c.kill().unwrap();
    assert_eq!(c.wait().unwrap().signal(), Some(9));
    assert!(
        fs::metadata(format!("/proc/{gantry_pid}")).is_err(),
        "gantry is gone"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !pids_running(&container).is_empty(),
        "the container outlives the killed gantry (until the next gantry stops it)"
    );

    // Any next gantry command stops it, then removes the dead session with its state.
    let o = t.gantry().arg("fsck").ok();
    assert!(
        eventually(Duration::from_secs(10), || pids_running(&container)
            .is_empty()),
        "the container still runs: {:?}",
        pids_running(&container)
    );
    assert_mentions(
        &o.stderr,
        &["stopped 1 container(s) that a killed gantry left running"],
    );
    assert!(!session.exists(), "the dead session's state is gone");
    let runc_of_session = || {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .any(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*session.to_string_lossy())
                })
            })
    };
    assert!(
        eventually(Duration::from_secs(10), || !runc_of_session()),
        "a runtime process of the dead session still runs"
    );
    assert_mentions(&t.gantry().arg("fsck").ok().stdout, &["no problems"]);
}

/// SIGINT or SIGTERM to `gantry run … sleep N` killed gantry alone: the container ran on.
/// Now gantry stops it and exits with 128 + the signal.
#[test]
fn regression_interrupted_gantry_run_left_its_container_running() {
    let t = crate::env();
    let rt = crate::steps::runtime_wrapper(&t);
    crate::steps::project(&t, "");
    let built = t
        .gantry()
        .arg("--runtime")
        .arg(&rt)
        .args(["build", "base"])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let secs = unique_seconds();
        let container = ["sleep", secs.as_str()];
        let _cleanup = KillProcesses(container.iter().map(|s| s.to_string()).collect());
        // stderr goes to a file: a pipe would stay open as long as a leftover runtime runs.
        let stderr = t.path(format!("stderr-{signal}"));
        let mut child = KillOnDrop(Some(
            t.gantry()
                .arg("--runtime")
                .arg(&rt)
                .args(["run", "base", "--", "sleep", &secs])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap(),
        ));
        wait_for(
            child.0.as_mut().unwrap(),
            Duration::from_secs(120),
            "the container runs",
            || (!pids_running(&container).is_empty()).then_some(()),
        );
        let sent = Instant::now();
        gantry_test::tool("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .ok();
        let limit = Duration::from_secs(15);
        let exited = eventually(limit, || {
            child.0.as_mut().unwrap().try_wait().unwrap().is_some()
        });
        assert!(
            exited,
            "gantry did not exit within {limit:?} of SIG{signal}"
        );
        let status = child.0.take().unwrap().wait().unwrap();
        let err = fs::read_to_string(&stderr).unwrap();
        assert_eq!(status.code(), Some(code), "{status}: {err}");
        assert_mentions(&err, &["interrupted by SIG"]);
        assert!(
            sent.elapsed() < Duration::from_secs(8),
            "took {:?}",
            sent.elapsed()
        );
        assert!(
            eventually(Duration::from_secs(5), || pids_running(&container)
                .is_empty()),
            "the container still runs after SIG{signal}"
        );
        // It wound down: its session is gone too.
        let sessions: Vec<_> = fs::read_dir(t.home().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(sessions.is_empty(), "{sessions:?}");
    }
    assert_mentions(&t.gantry().arg("fsck").ok().stdout, &["no problems"]);
}
