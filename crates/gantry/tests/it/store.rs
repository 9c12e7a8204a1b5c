//! The store under crashes and concurrency (T32, T34–T36), and `fsck` and `gc`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gantry_test::{CmdExt, TestEnv, assert_mentions, sha256_file, store_snapshot};

/// Fills `dir` with `files` files of `mib` MiB each from /dev/urandom (incompressible).
fn random_tree(env: &TestEnv, dir: &str, files: usize, mib: u64) {
    let root = env.path(dir);
    fs::create_dir_all(&root).unwrap();
    let mut urandom = fs::File::open("/dev/urandom").unwrap();
    for i in 0..files {
        let mut out = fs::File::create(root.join(format!("f{i:03}"))).unwrap();
        let n = io::copy(&mut (&mut urandom).take(mib << 20), &mut out).unwrap();
        assert_eq!(n, mib << 20);
    }
}

/// The files in the store's blob directory.
fn blob_files(env: &TestEnv) -> Vec<PathBuf> {
    let dir = env.home().join("blobs/sha256");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Asserts that every blob in the store is complete: its sha256 is its name.
fn assert_blobs_complete(env: &TestEnv) {
    for blob in blob_files(env) {
        let name = blob.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            sha256_file(&blob),
            format!("sha256:{name}"),
            "partial or corrupt blob {}",
            blob.display()
        );
    }
}

/// The session directories under `home/tmp`.
fn sessions(env: &TestEnv) -> Vec<PathBuf> {
    let tmp = env.home().join("tmp");
    let Ok(entries) = fs::read_dir(&tmp) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("s-"))
        .collect()
}

/// The temp blob file that process `pid` has open in the store's session directories, if it
/// holds at least `min` bytes (found through `/proc/PID/fd`, so it is that process's file and
/// not another writer's).
fn temp_blob_of(env: &TestEnv, pid: u32, min: u64) -> Option<PathBuf> {
    let tmp = env.home().join("tmp");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .find(|p| {
            p.starts_with(&tmp)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("blob-"))
                && fs::metadata(p).is_ok_and(|m| m.len() >= min)
        })
}

/// Polls `cond` every few milliseconds until it gives a value; panics after `limit`, or if
/// `child` exits first (it was meant to be caught in the act).
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

fn digest_of_info(env: &TestEnv, info: &str) -> String {
    let v = gantry_test::json(&fs::read_to_string(env.path(info)).unwrap());
    v["digest"].as_str().unwrap().to_owned()
}

fn blob_path(env: &TestEnv, digest: &str) -> PathBuf {
    env.home()
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// T32: SIGKILL while a large layer is written leaves no partial blob; the next run cleans up.
#[test]
fn sigkill_during_a_large_layer_write() {
    let env = crate::env();
    random_tree(&env, "big", 30, 10); // 300 MiB, incompressible: seconds of gzip work
    let mut child = env
        .gantry()
        .args(["layer", "--dir", "/d=big", "--compression", "gzip"])
        .args(["--info", "big.json", "-o", "big.tgz"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let temp = wait_for(
        &mut child,
        Duration::from_secs(120),
        "its temp blob grew past 1 MiB",
        || temp_blob_of(&env, pid, 1 << 20),
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    let dead_session = temp.parent().unwrap().to_owned();
    assert!(
        temp.exists(),
        "the killed writer's temp file is left behind"
    );

    // Nothing was committed, and nothing under blobs/ is partial.
    assert_blobs_complete(&env);
    assert!(blob_files(&env).is_empty(), "{:?}", blob_files(&env));
    assert!(!env.path("big.json").exists());
    assert!(!env.path("big.tgz").exists());

    // The next run works and removes the dead session's directory.
    env.run(&["layer", "--content", "/after=kill", "--info", "small.json"]);
    assert!(
        !dead_session.exists(),
        "dead session {} kept",
        dead_session.display()
    );
    assert!(sessions(&env).is_empty(), "{:?}", sessions(&env));
    assert!(blob_path(&env, &digest_of_info(&env, "small.json")).is_file());
    assert_blobs_complete(&env);

    let fsck = env.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["no problems"]);
}

/// T36: one of two writers of the same content is killed; the other one's blob is complete.
#[test]
fn sigkill_of_one_of_two_writers_of_the_same_content() {
    let env = crate::env();
    random_tree(&env, "data", 8, 8); // 64 MiB
    let spawn = |info: &str| {
        env.gantry()
            .args(["layer", "--dir", "/d=data", "--info", info])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut victim = spawn("victim.json");
    let survivor = spawn("survivor.json");
    let pid = victim.id();
    let temp = wait_for(
        &mut victim,
        Duration::from_secs(60),
        "its temp blob grew past 1 MiB",
        || temp_blob_of(&env, pid, 1 << 20),
    );
    victim.kill().unwrap();
    assert_eq!(victim.wait().unwrap().signal(), Some(9));
    assert!(
        temp.exists(),
        "the victim was killed in the middle of its blob"
    );
    let out = survivor.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = digest_of_info(&env, "survivor.json");
    assert_eq!(blob_files(&env), vec![blob_path(&env, &digest)]);
    assert_blobs_complete(&env);
    // The killed run's work is redone from scratch, with the same result.
    env.run(&["layer", "--dir", "/d=data", "--info", "again.json"]);
    assert_eq!(digest_of_info(&env, "again.json"), digest);
    let fsck = env.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["no problems"]);
}

/// T34/T36: two processes writing the same content at the same time both succeed, and the
/// blob is stored once, read-only.
#[test]
fn concurrent_writers_of_the_same_content() {
    let env = crate::env();
    random_tree(&env, "data", 4, 8); // 32 MiB, so the two writes overlap
    let children: Vec<Child> = ["a.json", "b.json"]
        .iter()
        .map(|info| {
            env.gantry()
                .args(["layer", "--dir", "/d=data", "--info", info])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let digest = digest_of_info(&env, "a.json");
    assert_eq!(digest_of_info(&env, "b.json"), digest);
    let blob = blob_path(&env, &digest);
    assert_eq!(blob_files(&env), vec![blob.clone()]);
    assert_eq!(
        fs::metadata(&blob).unwrap().permissions().mode() & 0o7777,
        0o444
    );
    assert_blobs_complete(&env);
    assert!(sessions(&env).is_empty(), "{:?}", sessions(&env));
}

/// Flips one byte of a stored blob (which is read-only, so make it writable first).
fn corrupt(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn fsck_finds_and_repairs_a_corrupt_blob() {
    let env = crate::env();
    let info = gantry_test::json(&env.run(&["layer", "--content", "/x=some content"]));
    let digest = info["digest"].as_str().unwrap().to_owned();
    let blob = blob_path(&env, &digest);
    let clean = env.gantry().arg("fsck").ok();
    assert_mentions(&clean.stdout, &["checked 1 blobs: no problems"]);

    corrupt(&blob);
    let found = env.gantry().arg("fsck").fails();
    assert_mentions(&found.stdout, &[&digest, "hashes to", "1 problem"]);
    assert!(blob.exists(), "fsck without --repair removes nothing");

    let repaired = env.gantry().args(["fsck", "--repair"]).ok();
    assert_mentions(&repaired.stdout, &[&digest, "(repaired)"]);
    assert!(!blob.exists());
    let clean = env.gantry().arg("fsck").ok();
    assert_mentions(&clean.stdout, &["no problems"]);
}

#[test]
fn fsck_after_repair_reports_the_ref_that_lost_its_blob() {
    let env = crate::env();
    env.run(&["layer", "--content", "/x=referenced", "--info", "x.json"]);
    let digest = digest_of_info(&env, "x.json");
    corrupt(&blob_path(&env, &digest));
    // The corrupt blob is removed, which leaves its ref dangling: a problem repair cannot fix.
    let repair = env.gantry().args(["fsck", "--repair"]).fails();
    assert_mentions(&repair.stdout, &["(repaired)", "1 left"]);
    // The blob is gone, and the layer info written earlier still points at it.
    let dangling = env.gantry().arg("fsck").fails();
    assert_mentions(&dangling.stdout, &[&digest, "missing"]);
    // Building the layer again restores it.
    env.run(&["layer", "--content", "/x=referenced", "--info", "x.json"]);
    assert_eq!(digest_of_info(&env, "x.json"), digest);
    let clean = env.gantry().arg("fsck").ok();
    assert_mentions(&clean.stdout, &["no problems"]);
}

#[test]
fn gc_keeps_what_outputs_reference() {
    let env = crate::env();
    env.run(&["layer", "--content", "/x=kept", "--info", "x.json"]);
    let kept = digest_of_info(&env, "x.json");
    let loose = gantry_test::json(&env.run(&["layer", "--content", "/y=loose"]))["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(blob_path(&env, &loose).is_file());

    // --dry-run reports, removes nothing.
    let before = store_snapshot(&env.home());
    let dry = env.run(&["gc", "--dry-run"]);
    assert_mentions(&dry, &["would remove 1 blobs"]);
    assert_eq!(store_snapshot(&env.home()), before);

    // The info file's ref keeps its layer; the loose blob goes.
    let out = env.run(&["gc"]);
    assert_mentions(&out, &["removed 1 blobs"]);
    assert!(blob_path(&env, &kept).is_file());
    assert!(!blob_path(&env, &loose).exists());

    // Once the info file is gone, so is the reason to keep the blob.
    fs::remove_file(env.path("x.json")).unwrap();
    let before = store_snapshot(&env.home());
    let dry = env.run(&["gc", "--dry-run"]);
    assert_mentions(&dry, &["would remove 1 blobs", "1 stale refs dropped"]);
    assert_eq!(store_snapshot(&env.home()), before);
    let out = env.run(&["gc"]);
    assert_mentions(&out, &["removed 1 blobs", "1 stale refs dropped"]);
    assert!(!blob_path(&env, &kept).exists());
    assert!(blob_files(&env).is_empty());
    let fsck = env.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["checked 0 blobs: no problems"]);
}

#[test]
fn gc_keeps_image_layers_until_the_layout_is_gone() {
    let env = crate::env();
    env.run(&["layer", "--content", "/x=1", "--info", "l.json"]);
    env.run(&["image", "--layer", "l.json", "-o", "out"]);
    let layer = blob_path(&env, &digest_of_info(&env, "l.json"));
    // Only the layout holds the layer now.
    fs::remove_file(env.path("l.json")).unwrap();
    let out = env.run(&["gc"]);
    assert_mentions(&out, &["removed 0 blobs", "kept 3"]);
    assert!(layer.is_file());
    fs::remove_dir_all(env.path("out")).unwrap();
    let out = env.run(&["gc"]);
    assert_mentions(&out, &["removed 3 blobs"]);
    assert!(blob_files(&env).is_empty());
}

/// T35: gc waits for a process that is writing into the store, and keeps what it wrote.
#[test]
fn gc_waits_for_a_running_writer() {
    let env = crate::env();
    // The writer reads its tar from a FIFO, so it stays in the middle of writing a blob until
    // this test feeds it: a slow writer whose timing the test controls.
    env.write("src/file", "content written while gc waits");
    gantry_test::tool("tar")
        .args(["-cf", "layer.tar", "-C", "src", "file"])
        .current_dir(env.root())
        .ok();
    let fifo = env.path("in.tar");
    gantry_test::tool("mkfifo").arg(&fifo).ok();
    let mut writer = env
        .gantry()
        .args(["layer", "--tar", "in.tar", "--info", "w.json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = writer.id();
    wait_for(
        &mut writer,
        Duration::from_secs(30),
        "the writer started its blob",
        || temp_blob_of(&env, pid, 0),
    );

    let mut gc = env
        .gantry()
        .arg("gc")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc finished while a writer was still in the middle of its blob"
    );
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the writer cannot finish unfed"
    );

    // Feed the writer; it finishes, then gc may run.
    let tar = fs::read(env.path("layer.tar")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(&tar)
        .unwrap();
    let w = writer.wait_with_output().unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let g = gc.wait_with_output().unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    assert_mentions(&String::from_utf8_lossy(&g.stdout), &["removed 0 blobs"]);

    let digest = digest_of_info(&env, "w.json");
    assert!(
        blob_path(&env, &digest).is_file(),
        "gc removed the writer's blob"
    );
    assert_blobs_complete(&env);
    let listing = env.run(&["ls", "w.json"]);
    assert_mentions(&listing, &["/file"]);
}

/// `fsck --repair` exited 0 while it still printed a problem it cannot repair (a ref whose
/// blob is gone), and named the ref with a doubled slash (`image//tmp/…`).
#[test]
fn regression_fsck_repair_exited_zero_with_problems_left() {
    let env = crate::env();
    env.run(&["layer", "--content", "/x=1", "--info", "l.json"]);
    env.run(&["image", "--layer", "l.json", "-o", "out"]);
    let layer = digest_of_info(&env, "l.json");
    fs::remove_file(blob_path(&env, &layer)).unwrap();
    let out = env.path("out").display().to_string();
    for args in [&["fsck"][..], &["fsck", "--repair"]] {
        let o = env.gantry().args(args).fails();
        assert_mentions(
            &o.stdout,
            &[&format!("image ref {out} needs blob {layer}"), "missing"],
        );
        assert!(!o.stdout.contains("//"), "{}", o.stdout);
    }
    // Repairing everything that was found is a success.
    env.run(&["layer", "--content", "/x=1", "--info", "l.json"]);
    let b = blob_path(&env, &layer);
    fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
    let o = env.gantry().args(["fsck", "--repair"]).ok();
    assert_mentions(&o.stdout, &["is writable (repaired)", "1 repaired, 0 left"]);
    env.gantry().arg("fsck").ok();
}

/// `gantry <args>` with the store on a read-only bind mount: run under `unshare -m`, so the
/// mount exists only in that process's private mount namespace.
fn on_read_only_store(env: &TestEnv, args: &[&str]) -> gantry_test::Output {
    let inner = {
        let mut c = env.gantry();
        c.args(args);
        c
    };
    let mut c = gantry_test::tool("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(env.home())
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(env.root());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output_any()
}

/// `gantry unpack` and `gantry fsck` failed on a read-only store ("cannot open lock file").
/// Commands that only read now work on one, without writing a byte to it; commands that
/// write say that the store is read-only.
#[test]
fn regression_read_only_store_could_not_be_read() {
    let env = crate::env();
    env.run(&[
        "layer",
        "--content",
        "/x=read only",
        "--info",
        "l.json",
        "-o",
        "l.tgz",
    ]);
    env.run(&["image", "--layer", "l.json", "-o", "out", "-t", "v1"]);
    let home = env.home().display().to_string();
    let before = gantry_test::snapshot(&env.home());

    // Proof that the mount is read-only: even root cannot write there.
    let probe = on_read_only_store(&env, &["layer", "--content", "/y=2"]);
    assert_ne!(probe.code, Some(0));
    assert_mentions(
        &probe.stderr,
        &[&home, "read-only", "Read-only file system"],
    );

    for args in [
        &["inspect", "l.json"][..],
        &["inspect", "out:v1"],
        &["ls", "l.json"],
        &["ls", "out:v1"],
        &["unpack", "oci:out:v1", "rootfs"],
        &["fsck"],
    ] {
        let o = on_read_only_store(&env, args);
        assert_eq!(o.code, Some(0), "gantry {args:?}: {}", o.stderr);
    }
    assert_eq!(
        fs::read_to_string(env.path("rootfs/x")).unwrap(),
        "read only"
    );
    let fsck = on_read_only_store(&env, &["fsck"]);
    assert_mentions(&fsck.stdout, &["no problems"]);
    let inspect = on_read_only_store(&env, &["inspect", "--json", "l.json"]);
    assert_eq!(gantry_test::json(&inspect.stdout)["inStore"], true);

    for args in [
        &["layer", "--content", "/z=3", "--info", "m.json"][..],
        &["image", "--layer", "l.json", "-o", "out2"],
        &["gc"],
        &["fsck", "--repair"],
    ] {
        let o = on_read_only_store(&env, args);
        assert_ne!(
            o.code,
            Some(0),
            "gantry {args:?} wrote to a read-only store"
        );
        assert_mentions(&o.stderr, &[&home, "read-only"]);
        assert!(!o.stderr.contains("lock file"), "{}", o.stderr);
    }
    // Not a byte changed, not even a lock or session file.
    assert_eq!(gantry_test::snapshot(&env.home()), before);
    // Writable again, it is whole.
    let fsck = env.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["no problems"]);
}
