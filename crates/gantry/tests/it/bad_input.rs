//! Bad input: every case is a clear error naming the culprit, a non-zero exit (never a panic),
//! and the store and every earlier output left byte-for-byte as they were.
//!
//! Each test first builds a layer (`l.json`, `l.tgz`) and an image (`out`, tag `v1`), then runs
//! the bad command aimed at those same outputs, and compares snapshots of the whole test
//! directory and of the store from before and after.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use gantry_test::{CmdExt, PathState, TestEnv, assert_mentions, snapshot, store_snapshot};

/// The layer args that aim a bad `gantry layer` at the earlier layer outputs.
const LAYER_OUT: &[&str] = &["--info", "l.json", "-o", "l.tgz"];
/// The args that aim a bad `gantry image` at the earlier image output.
const IMAGE_OUT: &[&str] = &["-o", "out", "-t", "v1"];

/// An environment with a layer (`l.json`, `l.tgz`) and an image (`out:v1`) already built.
fn setup() -> TestEnv {
    let env = crate::env();
    env.write("a.txt", "hello\n");
    env.run(&[
        "layer",
        "--file",
        "/app/a.txt=a.txt",
        "--info",
        "l.json",
        "-o",
        "l.tgz",
    ]);
    env.run(&["image", "--layer", "l.json", "-o", "out", "-t", "v1"]);
    assert!(env.path("out/index.json").is_file());
    env
}

/// Everything a failed command must not change: the test directory (inputs, earlier outputs,
/// and no stray temp files next to them) and the store's blobs and refs.
struct Untouched {
    trees: Vec<(String, BTreeMap<String, PathState>)>,
}

fn tree_without_home(env: &TestEnv) -> BTreeMap<String, PathState> {
    snapshot(env.root())
        .into_iter()
        .filter(|(k, _)| !(k == "home" || k.starts_with("home/")))
        .collect()
}

impl Untouched {
    fn of(envs: &[&TestEnv]) -> Self {
        let mut trees = Vec::new();
        for env in envs {
            trees.push((env.root().display().to_string(), tree_without_home(env)));
            trees.push((
                env.home().display().to_string(),
                store_snapshot(&env.home()),
            ));
        }
        Untouched { trees }
    }

    fn assert(&self, envs: &[&TestEnv], what: &str) {
        let now = Untouched::of(envs);
        for ((name, before), (_, after)) in self.trees.iter().zip(&now.trees) {
            let changed: BTreeMap<_, _> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .map(|k| (k, (before.get(k), after.get(k))))
                .collect();
            assert!(
                changed.is_empty(),
                "a failed command changed {name} (path: (before, after)): {changed:#?}\n{what}"
            );
        }
    }
}

/// Runs `cmd` (a command of `envs[0]`), asserting that it fails without a panic and without
/// output on stdout, that stderr mentions every culprit, and that nothing in `envs` changed.
/// Returns stderr.
fn fails_in(envs: &[&TestEnv], cmd: &mut Command, culprits: &[&str]) -> String {
    let guard = Untouched::of(envs);
    let o = cmd.fails();
    assert_mentions(&o.stderr, culprits);
    assert!(
        o.stdout.is_empty(),
        "a failed command printed:\n{}",
        o.stdout
    );
    guard.assert(envs, &o.stderr);
    o.stderr
}

/// `gantry <args>` in `env` must fail as [`fails_in`] describes.
fn fails(env: &TestEnv, args: &[&str], culprits: &[&str]) -> String {
    fails_in(&[env], env.gantry().args(args), culprits)
}

/// `gantry layer <args> --info l.json -o l.tgz` must fail.
fn layer_fails(env: &TestEnv, args: &[&str], culprits: &[&str]) -> String {
    let all: Vec<&str> = ["layer"]
        .iter()
        .chain(args)
        .chain(LAYER_OUT)
        .copied()
        .collect();
    fails(env, &all, culprits)
}

/// `gantry image <args> -o out -t v1` must fail.
fn image_fails(env: &TestEnv, args: &[&str], culprits: &[&str]) -> String {
    let all: Vec<&str> = ["image"]
        .iter()
        .chain(args)
        .chain(IMAGE_OUT)
        .copied()
        .collect();
    fails(env, &all, culprits)
}

fn abs(env: &TestEnv, rel: &str) -> String {
    env.path(rel).display().to_string()
}

// ---- 1. sources that are missing or cannot be read -------------------------------------------

#[test]
fn missing_source_file() {
    let env = setup();
    layer_fails(&env, &["--file", "/x=nope"], &[&abs(&env, "nope")]);
    layer_fails(&env, &["--dir", "/d=nodir"], &[&abs(&env, "nodir")]);
    layer_fails(&env, &["--tar", "nope.tar"], &[&abs(&env, "nope.tar")]);
    // The spec file itself, and a source named relative to it.
    layer_fails(&env, &["--spec", "nope.toml"], &[&abs(&env, "nope.toml")]);
    env.write("specs/s.toml", "files = { \"/x\" = \"missing\" }\n");
    layer_fails(
        &env,
        &["--spec", "specs/s.toml"],
        &[&abs(&env, "specs/missing")],
    );
}

#[test]
fn unreadable_source_file() {
    let env = setup();
    // A dangling symlink: the name exists, its target does not.
    std::os::unix::fs::symlink("no-such-target", env.path("dangling")).unwrap();
    layer_fails(&env, &["--file", "/x=dangling"], &[&abs(&env, "dangling")]);
    // A FIFO would block a reader forever; a socket cannot be opened at all. Both are refused
    // up front by type (the FIFO case would hang the test if it were opened).
    let fifo = env.path("fifo");
    gantry_test::tool("mkfifo").arg(&fifo).ok();
    layer_fails(
        &env,
        &["--file", "/x=fifo"],
        &[&abs(&env, "fifo"), "not a regular file"],
    );
    let _listener = std::os::unix::net::UnixListener::bind(env.path("sock")).unwrap();
    layer_fails(
        &env,
        &["--file", "/x=sock"],
        &[&abs(&env, "sock"), "not a regular file"],
    );
    // A directory given as a file.
    fs::create_dir(env.path("adir")).unwrap();
    layer_fails(
        &env,
        &["--file", "/x=adir"],
        &[&abs(&env, "adir"), "directory"],
    );

    // A file without read permission. The tests run as root, and root's CAP_DAC_OVERRIDE and
    // CAP_DAC_READ_SEARCH ignore mode bits, so `chmod 000` alone proves nothing. Dropping those
    // two capabilities from the bounding set (setpriv) makes root honour the mode bits while the
    // uid, and so the ownership of the store, stays the same.
    let locked = env.write("locked", "secret");
    env.chmod("locked", 0o000);
    let no_dac = ["--bounding-set", "-dac_override,-dac_read_search"];
    // `cat` under the same restriction proves the file really is unreadable.
    let cat = Command::new(gantry_test::require("setpriv"))
        .args(no_dac)
        .arg("cat")
        .arg(&locked)
        .output_any();
    assert_ne!(
        cat.code,
        Some(0),
        "setpriv did not take away root's DAC override"
    );
    let gantry = env.gantry();
    let mut cmd = Command::new(gantry_test::require("setpriv"));
    cmd.args(no_dac)
        .arg(gantry.get_program())
        .current_dir(env.root());
    for (k, v) in gantry.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.args(["layer", "--file", "/x=locked"]).args(LAYER_OUT);
    fails_in(
        &[&env],
        &mut cmd,
        &[&abs(&env, "locked"), "Permission denied"],
    );
}

// ---- 2. image paths -------------------------------------------------------------------------

#[test]
fn relative_image_path() {
    let env = setup();
    for args in [
        ["--file", "app/x=a.txt"],
        ["--content", "x=text"],
        ["--symlink", "bin/sh=/bin/busybox"],
        ["--empty-dir", "tmp"],
    ] {
        let dest = args[1].split('=').next().unwrap();
        layer_fails(&env, &args, &[&format!("{dest:?}"), "absolute"]);
    }
}

#[test]
fn image_path_escaping_with_dotdot() {
    let env = setup();
    for args in [
        ["--file", "/a/../../x=a.txt"],
        ["--content", "/../x=text"],
        ["--hardlink", "/app/h=/app/../../etc/passwd"],
        ["--whiteout", "/a/../.."],
    ] {
        let culprit = args[1].rsplit('=').find(|p| p.contains("..")).unwrap();
        layer_fails(&env, &args, &[&format!("{culprit:?}"), "'..'"]);
    }
    // The same in a spec file.
    env.write("s.toml", "content = { \"/ok/../../x\" = \"t\" }\n");
    layer_fails(&env, &["--spec", "s.toml"], &["\"/ok/../../x\""]);
}

// ---- 3. metadata ----------------------------------------------------------------------------

#[test]
fn invalid_mode() {
    let env = setup();
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--mode", "0999"],
        &["\"0999\"", "mode"],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--dir-mode", "rwx"],
        &["\"rwx\"", "mode"],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--mode", "017777"],
        &["\"017777\""],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--metadata", r#"/x={"mode":"abc"}"#],
        &["\"abc\"", "/x"],
    );
}

#[test]
fn invalid_uid() {
    let env = setup();
    // See regression_negative_uid_was_an_unexpected_argument.
    let err = layer_fails(
        &env,
        &["--file", "/x=a.txt", "--uid", "-1"],
        &["'-1'", "--uid"],
    );
    assert!(!err.contains("unexpected argument"), "{err}");
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--gid", "-1"],
        &["'-1'", "--gid"],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--uid", "4294967296"],
        &["4294967296", "--uid"],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--metadata", r#"/x={"uid":"1000"}"#],
        &["/x", "\"1000\"", "uid"],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--metadata", r#"/x={"gid":-5}"#],
        &["/x", "-5"],
    );
}

#[test]
fn invalid_mtime() {
    let env = setup();
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--mtime", "yesterday"],
        &["\"yesterday\"", "mtime"],
    );
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--metadata", r#"/x={"mtime":"noon"}"#],
        &["\"noon\"", "/x"],
    );
}

// ---- 4. the same path twice ------------------------------------------------------------------

#[test]
fn same_path_twice_in_one_layer() {
    let env = setup();
    env.write("b.txt", "b");
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--content", "/x=b"],
        &["/x", "twice", &abs(&env, "a.txt")],
    );
    // Normalisation does not hide a duplicate.
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--file", "//x/.=b.txt"],
        &["/x", "twice"],
    );
    // A spec whose `files` and `dirs` both produce /app/x.
    env.write("tree/x", "from the tree");
    env.write(
        "dup.toml",
        "files = { \"/app/x\" = \"a.txt\" }\ndirs = { \"/app\" = \"tree\" }\n",
    );
    layer_fails(
        &env,
        &["--spec", "dup.toml"],
        &["/app/x", "twice", &abs(&env, "a.txt"), &abs(&env, "tree")],
    );
}

// ---- 5. bad tars ----------------------------------------------------------------------------

/// One ustar member: a 512-byte header (with a correct checksum) and its padded data. Built by
/// hand because tar tools refuse to write the malicious names these tests need.
fn member(name: &[u8], kind: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{value:0width$o}", width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], if kind == b'5' { 0o755 } else { 0o644 });
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    member(name.as_bytes(), b'0', data, b"")
}

/// A tar of `members` with its end marker.
fn tar(members: &[Vec<u8>]) -> Vec<u8> {
    let mut t = members.concat();
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// Both ways of importing a tar (kept as is, or recompressed) must fail naming `culprits`.
fn tar_fails(env: &TestEnv, rel: &str, culprits: &[&str]) {
    let path = abs(env, rel);
    let culprits: Vec<&str> = culprits.iter().copied().chain([path.as_str()]).collect();
    layer_fails(env, &["--tar", rel], &culprits);
    layer_fails(
        env,
        &["--tar", rel, "--recompress", "--compression", "zstd"],
        &culprits,
    );
}

#[test]
fn a_well_formed_hand_made_tar_is_accepted() {
    // The tar builder of these tests is right: without the defect, the import works.
    let env = crate::env();
    env.write("ok.tar", tar(&[file("a/b", &[7u8; 1000]), file("c", b"")]));
    let listing = env.run(&["ls", "ok.tar"]);
    assert_mentions(&listing, &["/a/b", "/c"]);
    env.run(&["layer", "--tar", "ok.tar", "--info", "ok.json"]);
}

#[test]
fn corrupt_tar_header() {
    let env = setup();
    let good = tar(&[file("a", &[7u8; 1000]), file("b", b"x")]);
    // A flipped bit in the first header's name, and in the second header's size field.
    for (rel, offset) in [("name.tar", 0usize), ("size.tar", 1536 + 124 + 5)] {
        let mut bad = good.clone();
        bad[offset] ^= 0x01;
        env.write(rel, &bad);
        tar_fails(&env, rel, &["corrupt"]);
    }
}

#[test]
fn truncated_tar() {
    let env = setup();
    let good = tar(&[file("a", &[7u8; 4000]), file("b", &[9u8; 100])]);
    // Cut in the middle of a's data.
    env.write("mid.tar", &good[..512 + 2000]);
    tar_fails(&env, "mid.tar", &["truncated"]);
    // Cut after the last member, before the end marker.
    env.write("noend.tar", &good[..good.len() - 1024]);
    tar_fails(&env, "noend.tar", &["truncated", "end-of-archive"]);
    // An empty file.
    env.write("empty.tar", b"");
    tar_fails(&env, "empty.tar", &["empty"]);
}

#[test]
fn truncated_gzip_tar() {
    let env = setup();
    let noise: Vec<u8> = (0u32..200_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    env.write("t.tar", tar(&[file("noise", &noise)]));
    gantry_test::tool("gzip")
        .args(["-n", "-k", "t.tar"])
        .current_dir(env.root())
        .ok();
    let gz = fs::read(env.path("t.tar.gz")).unwrap();
    // The whole gzip is a good layer.
    env.run(&["layer", "--tar", "t.tar.gz", "--info", "gz.json"]);
    env.write("cut.tar.gz", &gz[..gz.len() / 2]);
    tar_fails(&env, "cut.tar.gz", &["truncated"]);
    // Only the 8-byte trailer (CRC and size) missing.
    env.write("notrailer.tar.gz", &gz[..gz.len() - 8]);
    tar_fails(&env, "notrailer.tar.gz", &["truncated"]);
}

#[test]
fn tar_with_parent_dir_names() {
    let env = setup();
    for (i, name) in ["../x", "../../x", "..", "/../x", "a/../../x", "./../x"]
        .iter()
        .enumerate()
    {
        let rel = format!("evil{i}.tar");
        env.write(&rel, tar(&[file("ok", b"fine"), file(name, b"pwned")]));
        tar_fails(&env, &rel, &[&format!("{name:?}"), "'..'"]);
    }
    // A hard link whose target escapes.
    env.write(
        "evil-link.tar",
        tar(&[member(b"h", b'1', b"", b"../../etc/passwd")]),
    );
    tar_fails(&env, "evil-link.tar", &["\"h\"", "hard link target"]);
}

#[test]
fn tar_root_entry_as_symlink() {
    // T4: an entry for the root that is not a directory would change the type of the root.
    let env = setup();
    for (i, name) in ["./", ".", "/"].iter().enumerate() {
        let rel = format!("root{i}.tar");
        env.write(
            &rel,
            tar(&[
                member(name.as_bytes(), b'2', b"", b"/tmp/host"),
                file("etc/x", b"x"),
            ]),
        );
        tar_fails(&env, &rel, &[&format!("{name:?}"), "root directory"]);
    }
}

#[test]
fn tar_with_duplicate_path() {
    let env = setup();
    env.write(
        "dup.tar",
        tar(&[file("a/b", b"one"), file("./a//b", b"two")]),
    );
    tar_fails(&env, "dup.tar", &["\"./a//b\"", "twice"]);
}

// ---- 6 and 7. bases ------------------------------------------------------------------------

#[test]
fn base_without_requested_tag() {
    let env = setup();
    image_fails(
        &env,
        &["--base", "out:nope", "--layer", "l.json"],
        &["nope", &abs(&env, "out"), "tags: v1"],
    );
}

/// Copies the layout `from` to `to` file by file: new inodes, so tampering with the copy cannot
/// reach the store's read-only blobs that `from` hard-links to.
fn copy_layout(from: &Path, to: &Path) {
    for e in tree_paths(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if e.is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else {
            fs::copy(&e, &dest).unwrap();
        }
    }
}

/// `root` and everything under it, parents before children.
fn tree_paths(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let mut kids: Vec<_> = fs::read_dir(&out[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            kids.sort();
            out.extend(kids);
        }
        i += 1;
    }
    out
}

#[test]
fn tampered_base_blob() {
    let env = setup();
    let info = gantry_test::json(&fs::read_to_string(env.path("l.json")).unwrap());
    let digest = info["digest"].as_str().unwrap().to_owned();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let store_blob = env.home().join("blobs/sha256").join(hex);
    let pristine = fs::read(&store_blob).unwrap();

    type Tamper = fn(&mut Vec<u8>);
    let tampers: [(&str, Tamper); 3] = [
        ("flip", |b| {
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
        }),
        ("truncate", |b| b.truncate(b.len() - 1)),
        ("append-nul", |b| b.push(0)),
    ];
    for (name, tamper) in tampers {
        let base = env.path(format!("base-{name}"));
        copy_layout(&env.path("out"), &base);
        let blob = base.join("blobs/sha256").join(hex);
        assert_ne!(
            fs::metadata(&blob).unwrap().ino(),
            fs::metadata(&store_blob).unwrap().ino(),
            "the copy must not share the store's inode"
        );
        let mut bytes = fs::read(&blob).unwrap();
        tamper(&mut bytes);
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&blob, &bytes).unwrap();

        let base_arg = format!("base-{name}:v1");
        // A new image on the tampered base, replacing `out`. --env makes its config (and so
        // its manifest) new, so a store write would show in the snapshot.
        image_fails(
            &env,
            &["--base", &base_arg, "--layer", "l.json", "--env", "A=b"],
            &[&digest, &base.display().to_string()],
        );
        fails(&env, &["ls", &base_arg], &[&digest]);
        fails(&env, &["ls", "--layers", &base_arg], &[&digest]);
    }
    assert_eq!(
        fs::read(&store_blob).unwrap(),
        pristine,
        "the store's blob is intact"
    );
    let fsck = env.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["no problems"]);
}

// ---- 8. compression -------------------------------------------------------------------------

#[test]
fn unknown_compression() {
    let env = setup();
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--compression", "brotli"],
        &["\"brotli\""],
    );
    env.write(
        "c.toml",
        "compression = \"lz4\"\ncontent = { \"/x\" = \"y\" }\n",
    );
    layer_fails(&env, &["--spec", "c.toml"], &["\"lz4\""]);
}

#[test]
fn compression_level_out_of_range() {
    let env = setup();
    for (compression, level) in [
        ("gzip", "13"),
        ("gzip", "0"),
        ("gzip", "-1"),
        ("zstd", "20"),
        ("zstd", "0"),
        ("none", "3"),
    ] {
        let err = layer_fails(
            &env,
            &[
                "--file",
                "/x=a.txt",
                "--compression",
                compression,
                "--level",
                level,
            ],
            &[&format!("{compression} level {level}")],
        );
        assert!(err.contains("levels are"), "{err}");
    }
    layer_fails(
        &env,
        &["--file", "/x=a.txt", "--level", "99999999999"],
        &["99999999999"],
    );
}

// ---- 9. more that users hit -----------------------------------------------------------------

#[test]
fn layer_info_missing_or_not_json() {
    let env = setup();
    image_fails(&env, &["--layer", "nope.json"], &[&abs(&env, "nope.json")]);
    env.write("garbage.json", "this is not json");
    image_fails(
        &env,
        &["--layer", "garbage.json"],
        &[&abs(&env, "garbage.json")],
    );
    env.write("wrong.json", r#"{"mediaType":"x"}"#);
    image_fails(
        &env,
        &["--layer", "wrong.json"],
        &[&abs(&env, "wrong.json")],
    );
    // A layer blob given where an info belongs.
    image_fails(&env, &["--layer", "l.tgz"], &[&abs(&env, "l.tgz")]);
    // INFO=BLOB with a missing blob file.
    image_fails(
        &env,
        &["--layer", "l.json=nope.tgz"],
        &[&abs(&env, "nope.tgz")],
    );
}

#[test]
fn layer_blob_not_in_store() {
    let env = setup();
    let info = gantry_test::json(&fs::read_to_string(env.path("l.json")).unwrap());
    let digest = info["digest"].as_str().unwrap().to_owned();
    // Another store, which has never seen the layer.
    let other = crate::env();
    other.run(&["fsck"]);
    let l_json = abs(&env, "l.json");
    let out = abs(&other, "out");
    let err = fails_in(
        &[&other, &env],
        other
            .gantry()
            .args(["image", "--layer", &l_json, "-o", &out]),
        &[
            &l_json,
            &digest,
            "not in the store",
            &format!("--layer {l_json}=BLOB"),
        ],
    );
    assert!(!other.path("out").exists(), "{err}");
    // With the blob, the same command works.
    other.run(&[
        "image",
        "--layer",
        &format!("{l_json}={}", abs(&env, "l.tgz")),
        "-o",
        &out,
    ]);
}

#[test]
fn layer_blob_with_other_digest() {
    let env = setup();
    let info = gantry_test::json(&fs::read_to_string(env.path("l.json")).unwrap());
    let digest = info["digest"].as_str().unwrap().to_owned();
    env.run(&[
        "layer",
        "--content",
        "/other=1",
        "-o",
        "other.tgz",
        "--info",
        "other.json",
    ]);
    let other = crate::env();
    other.run(&["fsck"]);
    let arg = format!("{}={}", abs(&env, "l.json"), abs(&env, "other.tgz"));
    let out = abs(&other, "out");
    fails_in(
        &[&other, &env],
        other.gantry().args(["image", "--layer", &arg, "-o", &out]),
        &[&digest, &abs(&env, "other.tgz")],
    );
    // The same size but other bytes: a digest mismatch rather than a size mismatch.
    let size = usize::try_from(info["size"].as_u64().unwrap()).unwrap();
    env.write("same-size.tgz", vec![0u8; size]);
    let arg = format!("{}={}", abs(&env, "l.json"), abs(&env, "same-size.tgz"));
    let err = fails_in(
        &[&other, &env],
        other.gantry().args(["image", "--layer", &arg, "-o", &out]),
        &[&digest, &abs(&env, "same-size.tgz")],
    );
    assert!(err.contains("hashes to"), "{err}");
}

#[test]
fn invalid_tag() {
    let env = setup();
    fails(
        &env,
        &[
            "image", "--layer", "l.json", "-o", "out", "--tag", "bad tag",
        ],
        &["--tag", "\"bad tag\""],
    );
    image_fails(
        &env,
        &["--base", "out:bad tag", "--layer", "l.json"],
        &["bad tag"],
    );
}

#[test]
fn base_not_a_layout() {
    let env = setup();
    env.write("notlayout/keep.txt", "mine");
    image_fails(
        &env,
        &["--base", "notlayout", "--layer", "l.json"],
        &[&abs(&env, "notlayout"), "not an OCI image layout"],
    );
    image_fails(
        &env,
        &["--base", "nodir:v1", "--layer", "l.json"],
        &[&abs(&env, "nodir"), "not a directory"],
    );
    image_fails(
        &env,
        &["--base", "a.txt", "--layer", "l.json"],
        &[&abs(&env, "a.txt")],
    );
}

#[test]
fn env_without_equals() {
    let env = setup();
    image_fails(
        &env,
        &["--layer", "l.json", "--env", "NOEQUALS"],
        &["\"NOEQUALS\""],
    );
    image_fails(&env, &["--layer", "l.json", "--env", "=x"], &["\"=x\""]);
}

#[test]
fn port_out_of_range() {
    let env = setup();
    for port in ["70000", "0", "80/sctpx", "http"] {
        image_fails(
            &env,
            &["--layer", "l.json", "--port", port],
            &[&format!("{port:?}")],
        );
    }
}

#[test]
fn invalid_label_key() {
    let env = setup();
    image_fails(
        &env,
        &["--layer", "l.json", "--label", " bad=x"],
        &["\" bad\""],
    );
    image_fails(
        &env,
        &["--layer", "l.json", "--label", "k=1", "--label", "k=2"],
        &["--label", "k", "twice"],
    );
}

#[test]
fn output_is_a_user_directory() {
    let env = setup();
    env.write("mine/keep.txt", "user data");
    let mine = abs(&env, "mine");
    fails(
        &env,
        &["image", "--layer", "l.json", "--env", "A=b", "-o", "mine"],
        &[&mine, "refusing to replace"],
    );
    assert_eq!(
        fs::read_to_string(env.path("mine/keep.txt")).unwrap(),
        "user data"
    );
    // A regular file in the way is refused too.
    fails(
        &env,
        &["image", "--layer", "l.json", "--env", "A=b", "-o", "a.txt"],
        &[&abs(&env, "a.txt")],
    );
}

#[test]
fn layer_output_is_a_directory() {
    let env = setup();
    env.write("mine/keep.txt", "user data");
    for (output, info, culprit) in [
        ("mine", "l.json", "mine"),
        ("l.tgz", "mine", "mine"),
        ("no/such/dir.tgz", "l.json", "no/such"),
    ] {
        fails(
            &env,
            &[
                "layer",
                "--content",
                "/new=content",
                "-o",
                output,
                "--info",
                info,
            ],
            &[&abs(&env, culprit)],
        );
    }
    let culprit = abs(&env, "mine");
    fails(
        &env,
        &[
            "image",
            "--layer",
            "l.json",
            "--env",
            "A=b",
            "--metadata",
            "mine",
            "-o",
            "out",
        ],
        &[&culprit, "--metadata"],
    );
}

#[test]
fn malformed_platform() {
    let env = setup();
    for p in ["linux", "linux/", "/amd64", "linux/amd64/v8/x"] {
        image_fails(
            &env,
            &["--layer", "l.json", "--platform", p],
            &[&format!("{p:?}")],
        );
    }
    fails(
        &env,
        &["ls", "--platform", "linux", "out:v1"],
        &["\"linux\""],
    );
}

#[test]
fn invalid_source_date_epoch() {
    let env = setup();
    for value in ["abc", "-1", "1e9"] {
        let culprits = [format!("{value:?}"), "SOURCE_DATE_EPOCH".to_owned()];
        let culprits: Vec<&str> = culprits.iter().map(String::as_str).collect();
        let mut layer = env.gantry();
        layer
            .env("SOURCE_DATE_EPOCH", value)
            .args(["layer", "--content", "/y=z"])
            .args(LAYER_OUT);
        fails_in(&[&env], &mut layer, &culprits);
        let mut image = env.gantry();
        image
            .env("SOURCE_DATE_EPOCH", value)
            .args(["image", "--layer", "l.json"])
            .args(IMAGE_OUT);
        fails_in(&[&env], &mut image, &culprits);
    }
}

// ---- regressions: each bug these cases found ------------------------------------------------

/// `gantry image` put its new config and manifest into the store before writing the layout, so
/// a layout that could not be written (corrupt base blob, output in the way) still left blobs.
#[test]
fn regression_failed_layout_write_left_blobs_in_the_store() {
    let env = setup();
    env.write("mine/keep.txt", "user data");
    fails(
        &env,
        &[
            "image",
            "--layer",
            "l.json",
            "--label",
            "new=config",
            "-o",
            "mine",
        ],
        &[&abs(&env, "mine")],
    );
}

/// `gantry layer -o DIR` stored the layer and only then failed to write the output.
#[test]
fn regression_layer_output_in_the_way_left_a_blob_in_the_store() {
    let env = setup();
    fs::create_dir(env.path("dir")).unwrap();
    fails(
        &env,
        &["layer", "--content", "/new=content", "-o", "dir"],
        &[&abs(&env, "dir"), "--output", "is a directory"],
    );
}

/// `--uid -1` was reported by clap as an unexpected argument `-1`, not a bad --uid value (and
/// `--mtime -5`, a valid pre-1970 time, was refused the same way).
#[test]
fn regression_negative_uid_was_an_unexpected_argument() {
    let env = setup();
    let err = layer_fails(
        &env,
        &["--content", "/x=y", "--uid", "-1"],
        &["'-1'", "--uid"],
    );
    assert!(err.contains("invalid value"), "{err}");
    layer_fails(
        &env,
        &["--content", "/x=y", "--level", "-1"],
        &["gzip level -1"],
    );
    let spaced = env.run(&["layer", "--content", "/x=y", "--mtime", "-5"]);
    let joined = env.run(&["layer", "--content", "/x=y", "--mtime=-5"]);
    assert_eq!(spaced, joined);
}

/// `--env =x` was reported as `invalid env ""`, naming the empty key instead of the argument.
#[test]
fn regression_env_with_empty_name_was_reported_as_empty_string() {
    let env = setup();
    let err = image_fails(&env, &["--layer", "l.json", "--env", "=x"], &["\"=x\""]);
    assert!(!err.contains("\"\""), "{err}");
}

/// A tar cut inside an entry's data was reported as "corrupt: unexpected EOF during skip".
#[test]
fn regression_tar_cut_inside_data_was_reported_as_corrupt() {
    let env = setup();
    env.write("cut.tar", &tar(&[file("a", &[1u8; 3000])])[..512 + 1000]);
    let err = layer_fails(
        &env,
        &["--tar", "cut.tar"],
        &["truncated", &abs(&env, "cut.tar")],
    );
    assert!(!err.contains("corrupt"), "{err}");
}

/// A truncated base blob was reported by path only ("size mismatch for …/blobs/sha256/…").
#[test]
fn regression_base_blob_size_mismatch_did_not_name_the_digest() {
    let env = setup();
    let digest = gantry_test::json(&fs::read_to_string(env.path("l.json")).unwrap())["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    copy_layout(&env.path("out"), &env.path("base"));
    let blob = env
        .path("base/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    let bytes = fs::read(&blob).unwrap();
    fs::write(&blob, &bytes[..bytes.len() - 1]).unwrap();
    image_fails(
        &env,
        &["--base", "base:v1", "--layer", "l.json"],
        &[&digest, "size mismatch"],
    );
}

/// Errors that include their source in their message printed it again as a "caused by" line:
/// "cannot read …/nope: No such file or directory (os error 2)" twice over.
#[test]
fn regression_error_cause_was_printed_twice() {
    let env = setup();
    let err = layer_fails(&env, &["--file", "/x=nope"], &["No such file or directory"]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A cause that adds something is still shown.
    let err = image_fails(
        &env,
        &["--base", "out:nope", "--layer", "l.json"],
        &["caused by"],
    );
    assert_mentions(&err, &["cannot use base out:nope", "tags: v1"]);
}

/// `cmd` run under coreutils' `timeout` (same program, arguments and environment), so that a
/// command that would block forever fails the test instead of hanging it.
fn with_timeout(cmd: &Command, secs: u32) -> Command {
    let mut t = Command::new("timeout");
    t.arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        t.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    t
}

/// A FIFO in place of a layout's blob hung `gantry unpack` (and every other reader) forever;
/// `index.json` symlinked to `/dev/zero` was reported as "has no index.json".
#[test]
fn regression_special_files_in_layouts_hung_or_were_misreported() {
    let env = setup();
    let info = gantry_test::json(&fs::read_to_string(env.path("l.json")).unwrap());
    let digest = info["digest"].as_str().unwrap().to_owned();
    // A second store, which does not hold the layer: it must be read from the layout.
    let other = crate::env();
    copy_layout(&env.path("out"), &other.path("src"));
    let blob = other
        .path("src/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    fs::remove_file(&blob).unwrap();
    gantry_test::tool("mkfifo").arg(&blob).ok();
    for args in [
        &["unpack", "oci:src:v1", "rootfs"][..],
        &["copy", "oci:src:v1", "oci-archive:copy.tar"],
        &["copy", "oci:src:v1", "oci:copy"],
        &["ls", "src:v1"],
    ] {
        let mut cmd = other.gantry();
        cmd.args(args);
        let o = with_timeout(&cmd, 60).fails();
        assert_ne!(o.code, Some(124), "gantry {args:?} hung");
        assert_mentions(&o.stderr, &[&blob.display().to_string(), "FIFO"]);
    }
    assert!(!other.path("copy.tar").exists() && !other.path("copy").exists());

    // The archive itself a FIFO.
    gantry_test::tool("mkfifo").arg(other.path("pipe.tar")).ok();
    let mut cmd = other.gantry();
    cmd.args(["unpack", "oci-archive:pipe.tar", "rootfs2"]);
    let o = with_timeout(&cmd, 60).fails();
    assert_mentions(&o.stderr, &["pipe.tar", "FIFO"]);

    // index.json symlinked to /dev/zero.
    copy_layout(&env.path("out"), &other.path("zero"));
    let index = other.path("zero/index.json");
    fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &index).unwrap();
    let mut cmd = other.gantry();
    cmd.args(["inspect", "zero"]);
    let o = with_timeout(&cmd, 60).fails();
    assert_mentions(
        &o.stderr,
        &[&index.display().to_string(), "is a character device"],
    );
    assert!(!o.stderr.contains("has no index.json"), "{}", o.stderr);

    let fsck = other.gantry().arg("fsck").ok();
    assert_mentions(&fsck.stdout, &["no problems"]);
}
