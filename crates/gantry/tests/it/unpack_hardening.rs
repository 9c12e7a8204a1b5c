//! Hostile images against `gantry unpack`, `gantry run`, `gantry copy`, tar imports and the
//! rootfs cache (issue 11): layers must match their diff_ids before anything is cached or
//! appears, configs are read strictly, bombs stop at the caps with little written, the
//! destination is private and devices are opt-in, and a failure leaves the destination as it
//! was. Images are hand-made OCI layouts whose layers GNU tar, gzip and zstd write. After every
//! case `gantry fsck` is clean, and nothing changed outside the destination.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use gantry_oci::Digest;
use gantry_test::{CmdExt, TestEnv, assert_mentions, require, snapshot, tool};
use serde_json::json;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn sha(b: &[u8]) -> String {
    Digest::sha256(b).to_string()
}

/// `tool args` with `input` on stdin; returns stdout.
fn pipe(name: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = tool(name)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{name} {args:?} failed");
    out.stdout
}

fn gzip(b: &[u8]) -> Vec<u8> {
    pipe("gzip", &["-9", "-n", "-c"], b)
}

fn zstd(b: &[u8]) -> Vec<u8> {
    pipe("zstd", &["-q", "-c"], b)
}

/// The tar of a staging directory, as GNU tar writes it (root-owned).
fn tar_of(dir: &Path) -> Vec<u8> {
    tool("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .ok_output()
}

trait OkOutput {
    fn ok_output(&mut self) -> Vec<u8>;
}

impl OkOutput for Command {
    fn ok_output(&mut self) -> Vec<u8> {
        let out = self.output().unwrap();
        assert!(out.status.success(), "{:?} failed", self.get_program());
        out.stdout
    }
}

/// A staging directory with `files` (path → content) and a static busybox in bin/.
fn stage(t: &TestEnv, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = t.path(name);
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy(gantry_test::busybox(), dir.join("bin/busybox")).unwrap();
    for (p, content) in files {
        let p = dir.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    dir
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image config with these diff_ids.
fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> serde_json::Value {
    let d = Digest::sha256(bytes);
    let p = dir.join("blobs/sha256").join(d.hex());
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
    json!({"digest": d.to_string(), "size": bytes.len()})
}

/// Writes an OCI layout at `dir` holding one image tagged `t`: the config (with its media
/// type) and the layers (media type, blob). Returns `oci:DIR:t`.
fn layout(dir: &Path, config: (&str, &[u8]), layers: &[(&str, &[u8])]) -> String {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let with_type = |mut d: serde_json::Value, mt: &str| {
        d["mediaType"] = json!(mt);
        d
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": with_type(put_blob(dir, config.1), config.0),
        "layers": layers.iter().map(|(mt, b)| with_type(put_blob(dir, b), mt)).collect::<Vec<_>>(),
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mut entry = with_type(
        put_blob(dir, &mbytes),
        "application/vnd.oci.image.manifest.v1+json",
    );
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "t"});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap(),
    )
    .unwrap();
    format!("oci:{}:t", dir.display())
}

/// An image of one plain tar layer whose config tells the truth.
fn honest(dir: &Path, tar: &[u8], media_type: &str, blob: &[u8]) -> String {
    layout(dir, (CONFIG, &config(&[sha(tar)])), &[(media_type, blob)])
}

fn assert_fsck_clean(t: &TestEnv) {
    let out = t.run(&["fsck"]);
    assert!(out.contains("no problems"), "{out}");
}

/// The gantry temp dirs in `dir`.
fn temp_dirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".gantry-unpack-"))
        .collect()
}

/// A ustar header for a regular file `name` of `size` bytes (at most 8 GiB - 1).
fn ustar_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of `size` bytes of zeros (files `bomb0`, `bomb1`, … of at most 4 GiB) compressed by
/// `compress`, cheaply: gzip members and zstd frames concatenate, so one compressed 64 MiB run
/// of zeros is repeated.
fn bomb(size: u64, compress: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    const CHUNK: u64 = 64 << 20;
    const FILE: u64 = 4 << 30;
    assert_eq!(size % CHUNK, 0);
    let zeros = compress(&vec![0u8; CHUNK as usize]);
    let mut out = Vec::new();
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        let n = left.min(FILE);
        out.extend(compress(&ustar_header(&format!("bomb{i}"), n)));
        for _ in 0..n / CHUNK {
            out.extend_from_slice(&zeros);
        }
        left -= n;
        i += 1;
    }
    out.extend(compress(&[0u8; 1024]));
    out
}

/// The entries of the rootfs cache (without lock files).
fn cache_entries(t: &TestEnv) -> Vec<String> {
    let v2 = t.home().join("rootfs/v2");
    let mut names: Vec<String> = fs::read_dir(&v2)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// ---- 1: the rootfs cache is keyed by verified diff_ids ----

#[test]
fn regression_rootfs_cache_poisoning_by_copied_diff_ids() {
    let t = crate::env();
    let a = tar_of(&stage(&t, "a", &[("etc/motd", b"trusted\n")]));
    let b = tar_of(&stage(&t, "b", &[("etc/motd", b"attacker\n")]));
    let (a_gz, b_gz) = (gzip(&a), gzip(&b));
    let image_a = honest(&t.path("img-a"), &a, TAR_GZIP, &a_gz);
    // B's config carries A's diff_ids; its layer is the attacker's.
    let image_b = layout(
        &t.path("img-b"),
        (CONFIG, &config(&[sha(&a)])),
        &[(TAR_GZIP, &b_gz)],
    );
    let cat = ["--", "/bin/busybox", "cat", "/etc/motd"];
    let err = t.gantry().args(["run", &image_b]).args(cat).fails().stderr;
    assert_mentions(&err, &["diff_id mismatch", &sha(&b_gz), &sha(&a), &sha(&b)]);
    assert!(!err.contains("attacker"), "the container never ran: {err}");
    let err = t.fail(&["unpack", &image_b, "dest"]);
    assert_mentions(&err, &["diff_id mismatch", &sha(&b_gz)]);
    assert!(!t.path("dest").exists());
    // The same image from an oci-archive and from a registry (pushed there by skopeo, which
    // does not look at diff_ids).
    tool("tar")
        .arg("-C")
        .arg(t.path("img-b"))
        .arg("-cf")
        .arg(t.path("b.tar"))
        .arg(".")
        .ok();
    let archive = format!("oci-archive:{}:t", t.path("b.tar").display());
    let reg =
        gantry_test::registry::Registry::start(gantry_test::registry::RegistryOptions::plain());
    let remote = format!("docker://{}/poison/b:t", reg.host());
    tool("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", t.path("img-b").display()))
        .arg(&remote)
        .ok();
    for image in [&archive, &remote] {
        let err = t
            .gantry()
            .args(["--insecure-registry", &reg.host(), "run", image])
            .args(cat)
            .fails()
            .stderr;
        assert_mentions(&err, &["diff_id mismatch", &sha(&b_gz)]);
    }
    assert!(cache_entries(&t).is_empty(), "{:?}", cache_entries(&t));
    // A later run of A sees A's files, from a cache entry that is A's.
    let out = t.gantry().args(["run", &image_a]).args(cat).ok().stdout;
    assert_eq!(out, "trusted\n");
    let a_key = format!("sha256-{}", Digest::sha256(&a).hex());
    assert_eq!(cache_entries(&t), vec![a_key.clone()]);
    let motd = t
        .home()
        .join("rootfs/v2")
        .join(&a_key)
        .join("rootfs/etc/motd");
    assert_eq!(fs::read(motd).unwrap(), b"trusted\n");
    // With A's tree cached, B's config (A's diff_ids) names A's verified tree: B's own blob is
    // not even read, and its content can never be served under A's chain id.
    let out = t.gantry().args(["run", &image_b]).args(cat).output_any();
    assert_eq!(out.stdout, "trusted\n", "{}", out.stderr);
    assert_fsck_clean(&t);
}

#[test]
fn regression_fsck_checks_the_rootfs_cache() {
    let t = crate::env();
    let a = tar_of(&stage(&t, "a", &[("etc/motd", b"hi\n")]));
    let image = honest(&t.path("img"), &a, TAR, &a);
    t.gantry()
        .args(["run", &image, "--", "/bin/busybox", "true"])
        .ok();
    assert_fsck_clean(&t);
    let cache = t.home().join("rootfs");
    for d in [&cache, &cache.join("v2")] {
        assert_eq!(
            fs::metadata(d).unwrap().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
    }
    // An entry that is no chain id, a crashed unpack, an old bucket, a group-readable bucket.
    fs::create_dir_all(cache.join("v2/sha256-evil/rootfs")).unwrap();
    fs::create_dir_all(cache.join("v2/tmp-1-2-3/rootfs")).unwrap();
    fs::create_dir_all(cache.join("v1")).unwrap();
    fs::set_permissions(cache.join("v2"), fs::Permissions::from_mode(0o750)).unwrap();
    let out = t.gantry().arg("fsck").fails().stdout;
    assert_mentions(
        &out,
        &[
            "sha256-evil: not a cache entry",
            "tmp-1-2-3: left by a crashed unpack",
            "v1: not part of this version's cache",
            "mode 0750",
            "4 problem(s)",
        ],
    );
    let out = t.run(&["fsck", "--repair"]);
    assert_eq!(out.matches("(repaired)").count(), 4, "{out}");
    assert_fsck_clean(&t);
    assert_eq!(cache_entries(&t).len(), 1, "the good entry stays");
}

// ---- 2: configs are read strictly ----

#[test]
fn regression_unpack_refuses_configs_that_do_not_describe_the_layers() {
    let t = crate::env();
    let tar = tar_of(&stage(&t, "s", &[("etc/motd", b"hi\n")]));
    let gz = gzip(&tar);
    let good = config(&[sha(&tar)]);
    let text = String::from_utf8(good.clone()).unwrap();
    /// Name, config, its media type, the layer's media type, what the error says.
    type Case<'a> = (&'a str, Vec<u8>, &'a str, &'a str, &'a [&'a str]);
    let cases: Vec<Case<'_>> = vec![
        (
            "count",
            config(&[sha(&tar), sha(b"x")]),
            CONFIG,
            TAR_GZIP,
            &["2 diff_ids for 1 layers"],
        ),
        (
            "mismatch",
            config(&[sha(b"another layer")]),
            CONFIG,
            TAR_GZIP,
            &["diff_id mismatch"],
        ),
        (
            "media-type",
            good.clone(),
            CONFIG,
            "application/x-evil",
            &["application/x-evil", "not a tar layer"],
        ),
        (
            "artifact",
            good.clone(),
            "application/vnd.acme.thing.config.v1+json",
            TAR_GZIP,
            &["not an image config"],
        ),
        (
            "rootfs-type",
            text.replace(r#""type":"layers""#, r#""type":"mystery""#)
                .into_bytes(),
            CONFIG,
            TAR_GZIP,
            &["rootfs.type", "mystery"],
        ),
        (
            "duplicate-key",
            text.replacen(r#""os":"linux""#, r#""os":"linux","os":"windows""#, 1)
                .into_bytes(),
            CONFIG,
            TAR_GZIP,
            &["duplicate key", "\"os\""],
        ),
    ];
    for (name, cfg, cfg_type, layer_type, needles) in &cases {
        let image = layout(&t.path(name), (cfg_type, cfg), &[(layer_type, &gz)]);
        let dest = t.path(format!("dest-{name}"));
        let err = t.fail(&["unpack", &image, &dest.to_string_lossy()]);
        assert_mentions(&err, needles);
        assert!(!dest.exists(), "{name}");
        assert!(temp_dirs(t.root()).is_empty(), "{name}");
        if *name == "duplicate-key" {
            // Nor is it copied: tools would disagree on which key wins.
            let out = t.path("copied");
            let err = t.fail(&["copy", &image, &format!("oci:{}:t", out.display())]);
            assert_mentions(&err, needles);
            assert!(!out.exists());
        }
    }
    // The good config unpacks, and matches what umoci makes of the same image.
    let image = layout(&t.path("good"), (CONFIG, &good), &[(TAR_GZIP, &gz)]);
    t.run(&["unpack", &image, "dest-good"]);
    assert_eq!(fs::read(t.path("dest-good/etc/motd")).unwrap(), b"hi\n");
    tool("umoci")
        .args(["raw", "unpack", "--rootless", "--image"])
        .arg(format!("{}:t", t.path("good").display()))
        .arg(t.path("umoci"))
        .ok();
    assert_eq!(
        snapshot(&t.path("dest-good"))
            .into_iter()
            .filter(|(k, _)| !k.is_empty())
            .collect::<Vec<_>>(),
        snapshot(&t.path("umoci"))
            .into_iter()
            .filter(|(k, _)| !k.is_empty())
            .collect::<Vec<_>>()
    );
    assert_fsck_clean(&t);
}

// ---- 3: decompression bombs ----

#[test]
fn regression_unpack_stops_a_bomb_within_seconds() {
    let t = crate::env();
    for (name, blob, media_type) in [
        ("gzip", bomb(2 << 30, gzip), TAR_GZIP),
        ("zstd", bomb(10 << 30, zstd), TAR_ZSTD),
    ] {
        assert!(blob.len() < 3 << 20, "{name}: {} bytes", blob.len());
        let image = layout(
            &t.path(format!("img-{name}")),
            (CONFIG, &config(&[sha(b"not computed")])),
            &[(media_type, &blob)],
        );
        let dest = t.path(format!("dest-{name}"));
        let start = Instant::now();
        let err = t.fail(&["unpack", &image, &dest.to_string_lossy()]);
        assert_mentions(&err, &["ratio limit", &sha(&blob)]);
        assert!(
            start.elapsed().as_secs() < 30,
            "{name}: {:?}",
            start.elapsed()
        );
        assert!(!dest.exists());
        assert!(temp_dirs(t.root()).is_empty());
    }
    assert_fsck_clean(&t);
}

#[test]
fn regression_size_caps_apply_to_unpack_and_can_be_raised() {
    let t = crate::env();
    let big = vec![7u8; 3 << 20];
    let l1 = tar_of(&stage(&t, "s1", &[("one", &big)]));
    let l2 = tar_of(&stage(&t, "s2", &[("two", &big)]));
    let image = layout(
        &t.path("img"),
        (CONFIG, &config(&[sha(&l1), sha(&l2)])),
        &[(TAR_GZIP, &gzip(&l1)), (TAR_GZIP, &gzip(&l2))],
    );
    let err = t.fail(&["--max-layer-size", "3MiB", "unpack", &image, "d"]);
    assert_mentions(&err, &["layer size limit", "3 MiB", "--max-layer-size"]);
    // Each layer is busybox and 3 MiB: about 5 MiB.
    let err = t.fail(&["--max-image-size", "9MiB", "unpack", &image, "d"]);
    assert_mentions(&err, &["image size limit", "9 MiB", "--max-image-size"]);
    let err = t.fail(&["--max-layer-size", "lots", "unpack", &image, "d"]);
    assert_mentions(&err, &["--max-layer-size", "invalid size \"lots\""]);
    assert!(!t.path("d").exists());
    t.run(&[
        "--max-layer-size",
        "8MiB",
        "--max-image-size",
        "16MiB",
        "unpack",
        &image,
        "d",
    ]);
    assert_eq!(fs::read(t.path("d/two")).unwrap(), big);
    assert_fsck_clean(&t);
}

#[test]
fn regression_tar_imports_stop_a_bomb_and_obey_the_caps() {
    let t = crate::env();
    fs::write(t.path("bomb.tar.zst"), bomb(10 << 30, zstd)).unwrap();
    let start = Instant::now();
    let err = t.fail(&["layer", "--tar", "bomb.tar.zst", "-o", "out.tar.zst"]);
    assert_mentions(&err, &["bomb.tar.zst", "ratio limit"]);
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
    assert!(!t.path("out.tar.zst").exists());
    let blobs = fs::read_dir(t.home().join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "nothing stored");
    // The same through a project, whose settings set the caps; the flags win.
    let big = tar_of(&stage(&t, "s", &[("big", &vec![1u8; 3 << 20])]));
    fs::create_dir_all(t.path("p")).unwrap();
    fs::write(t.path("p/big.tar"), &big).unwrap();
    fs::rename(t.path("bomb.tar.zst"), t.path("p/bomb.tar.zst")).unwrap();
    let project = |settings: &str, tar: &str| {
        fs::write(
            t.path("p/gantry.toml"),
            format!("[settings]\n{settings}\n\n[layer.l]\ntar = \"{tar}\"\n\n[image.i]\nlayers = [\"l\"]\n"),
        )
        .unwrap();
    };
    let build = |extra: &[&str]| {
        let mut c = t.gantry();
        c.args(extra).args(["build", "-C"]).arg(t.path("p"));
        c
    };
    project("", "bomb.tar.zst");
    let err = build(&[]).fails().stderr;
    assert_mentions(&err, &["bomb.tar.zst", "ratio limit"]);
    project("max-layer-size = \"4MiB\"", "big.tar");
    let err = build(&[]).fails().stderr;
    assert_mentions(&err, &["big.tar", "layer size limit", "4 MiB"]);
    build(&["--max-layer-size", "8MiB"]).ok();
    assert_fsck_clean(&t);
}

#[test]
fn the_ratio_limit_can_be_raised_for_a_real_layer_of_zeros() {
    let t = crate::env();
    // 128 MiB of zeros: gzip gets ~1030:1, over the default limit of 1000.
    fs::write(t.path("zeros.tar.gz"), bomb(128 << 20, gzip)).unwrap();
    let err = t.fail(&["layer", "--tar", "zeros.tar.gz"]);
    assert_mentions(&err, &["zeros.tar.gz", "ratio limit", "--max-ratio"]);
    let err = t.fail(&["--max-ratio", "0", "layer", "--tar", "zeros.tar.gz"]);
    assert_mentions(&err, &["--max-ratio", "more than 0"]);
    let info =
        gantry_test::json(&t.run(&["--max-ratio", "2000", "layer", "--tar", "zeros.tar.gz"]));
    assert_eq!(
        info["size"].as_u64(),
        Some(fs::metadata(t.path("zeros.tar.gz")).unwrap().len())
    );
    // The same from a project's settings.
    fs::write(
        t.path("gantry.toml"),
        "[settings]\nmax-ratio = 2000\n\n[layer.z]\ntar = \"zeros.tar.gz\"\n",
    )
    .unwrap();
    t.run(&["build", "z"]);
}

// ---- 4: what other users can reach ----

/// `cmd args…` as the unprivileged user nobody.
fn as_nobody(cmd: &str, path: &Path) -> gantry_test::Output {
    tool("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", cmd])
        .arg(path)
        .output_any()
}

#[test]
fn regression_unpack_is_private_and_devices_are_opt_in() {
    let t = crate::env();
    require("mknod");
    let s = stage(&t, "s", &[("etc/motd", b"hi\n"), ("bin/su", b"#!setuid\n")]);
    fs::set_permissions(s.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(s.join("dev")).unwrap();
    tool("mknod")
        .args(["-m", "0666"])
        .arg(s.join("dev/null"))
        .args(["c", "1", "3"])
        .ok();
    let tar = tar_of(&s);
    let listing = String::from_utf8(pipe("tar", &["-tvf", "-"], &tar)).unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("crw-rw-rw-") && l.contains("dev/null")),
        "{listing}"
    );
    let image = honest(&t.path("img"), &tar, TAR_GZIP, &gzip(&tar));
    // Everyone may reach the test's directory, as in a shared /tmp.
    fs::set_permissions(t.root(), fs::Permissions::from_mode(0o755)).unwrap();
    t.write("public", "x");
    assert!(
        as_nobody("stat", &t.path("public")).code == Some(0),
        "control"
    );

    // The default: placeholders, a private destination.
    t.run(&["unpack", &image, "dest"]);
    let dest = t.path("dest");
    let md = fs::metadata(&dest).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o700, 0));
    let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(
        null.file_type().is_file() && null.len() == 0,
        "a placeholder"
    );
    assert_eq!(null.mode() & 0o7777, 0);
    assert_eq!(
        fs::metadata(dest.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    let out = as_nobody("stat", &dest.join("bin/su"));
    assert_ne!(out.code, Some(0));
    assert_mentions(&out.stderr, &["Permission denied"]);

    // Devices only on request; still out of other users' reach.
    t.run(&["unpack", "--devices", "create", &image, "dev"]);
    let null = fs::symlink_metadata(t.path("dev/dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    let numbers = tool("stat")
        .args(["-c", "%t:%T"])
        .arg(t.path("dev/dev/null"))
        .ok();
    assert_eq!(numbers.stdout.trim(), "1:3");
    let out = as_nobody("cat", &t.path("dev/dev/null"));
    assert_ne!(out.code, Some(0));
    assert_mentions(&out.stderr, &["Permission denied"]);
    let out = as_nobody("stat", &t.path("dev/bin/su"));
    assert_mentions(&out.stderr, &["Permission denied"]);
    t.run(&["unpack", "--devices", "skip", &image, "skip"]);
    assert!(fs::symlink_metadata(t.path("skip/dev/null")).is_err());
    let err = t.fail(&["unpack", "--devices", "maybe", &image, "x"]);
    assert_mentions(&err, &["--devices", "maybe"]);
    assert_fsck_clean(&t);
}

// ---- 5: nothing becomes visible before every layer verified ----

#[test]
fn regression_a_failed_unpack_leaves_dest_unchanged() {
    let t = crate::env();
    let tar = tar_of(&stage(
        &t,
        "s",
        &[("etc/motd", b"the attacker's content\n")],
    ));
    // A flipped byte in a stored blob: the blob's digest no longer matches.
    let flipped = honest(&t.path("flipped"), &tar, TAR, &tar);
    let blob = t
        .path("flipped/blobs/sha256")
        .join(Digest::sha256(&tar).hex());
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.windows(9).position(|w| w == b"attacker'").unwrap();
    bytes[at] ^= 0x20;
    fs::write(&blob, &bytes).unwrap();
    let bombed = layout(
        &t.path("bomb"),
        (CONFIG, &config(&[sha(b"not computed")])),
        &[(TAR_ZSTD, &bomb(4 << 30, zstd))],
    );
    for (name, image, needles) in [
        ("flipped", &flipped, "digest mismatch"),
        ("bomb", &bombed, "ratio limit"),
    ] {
        for existing in [false, true] {
            let parent = t.path(format!("out-{name}-{existing}"));
            fs::create_dir(&parent).unwrap();
            let dest = parent.join("dest");
            if existing {
                fs::create_dir(&dest).unwrap();
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o751)).unwrap();
            }
            let before = snapshot(&parent);
            let err = t.fail(&["unpack", image, &dest.to_string_lossy()]);
            assert_mentions(&err, &[needles]);
            assert_eq!(
                snapshot(&parent),
                before,
                "{name}: the destination is as it was"
            );
            assert!(temp_dirs(&parent).is_empty(), "{name}");
        }
    }
    assert_fsck_clean(&t);
}

#[test]
fn regression_unpack_out_of_space_leaves_dest_unchanged() {
    let t = crate::env();
    let unshare = require("unshare");
    // 4 MiB of content for a 2 MiB filesystem.
    let tar = tar_of(&stage(&t, "s", &[("big", &vec![3u8; 4 << 20])]));
    let image = honest(&t.path("img"), &tar, TAR_GZIP, &gzip(&tar));
    let mnt = t.path("mnt");
    fs::create_dir(&mnt).unwrap();
    // The tmpfs exists only in a private mount namespace, for as long as the script runs.
    let script = r#"
        mount -t tmpfs -o size=2m,mode=0755 gantry-test "$1" || exit 90
        if [ "$WITH_DEST" = 1 ]; then mkdir -m 0751 "$1/dest"; fi
        "$2" unpack "$3" "$1/dest"
        echo "exit=$?"
        ls -A "$1"
        if [ -d "$1/dest" ]; then echo "dest:"; ls -A "$1/dest"; stat -c %a "$1/dest"; fi
    "#;
    for with_dest in ["0", "1"] {
        let gantry = t.gantry();
        let mut c = Command::new(&unshare);
        c.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&mnt)
            .arg(gantry.get_program())
            .arg(&image)
            .current_dir(t.root())
            .env("WITH_DEST", with_dest);
        for (k, v) in gantry.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c.ok();
        assert_mentions(&out.stderr, &["No space left on device"]);
        let expected = if with_dest == "1" {
            "exit=1\ndest\ndest:\n751\n"
        } else {
            "exit=1\n"
        };
        assert_eq!(
            out.stdout, expected,
            "no temp dir, DEST as it was\n{}",
            out.stderr
        );
    }
    assert!(
        fs::read_dir(&mnt).unwrap().next().is_none(),
        "nothing was mounted here"
    );
    assert_fsck_clean(&t);
}
