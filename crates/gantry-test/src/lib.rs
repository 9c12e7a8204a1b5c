//! The test harness of gantry's integration tests.
//!
//! - [`TestEnv`]: a temporary directory with its own `GANTRY_HOME`, and a [`TestEnv::gantry`]
//!   command that runs the binary under test there with a clean environment.
//! - [`CmdExt`]: run a command and assert success ([`CmdExt::ok`]) or failure
//!   ([`CmdExt::fails`]); failures print the command, its status, stdout and stderr.
//! - [`require`]: find an external tool (umoci, skopeo, runc, …) or fail the test with the
//!   package to install. Tests never skip because a tool is missing.
//! - [`registry::Registry`]: a real `docker-registry` on 127.0.0.1 (Basic auth, TLS), and
//!   [`proxy::FaultProxy`]: a fault-injecting proxy in front of it, with [`proxy::Recorder`].
//! - [`snapshot`]: a tree's paths, types, modes and content digests, to prove that a failed
//!   command left the store and earlier outputs untouched.
#![allow(clippy::print_stderr, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_oci::Digest;

pub mod proxy;
pub mod registry;

/// A temporary directory with its own store.
pub struct TestEnv {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl TestEnv {
    /// A fresh environment for the gantry binary at `bin` (pass `env!("CARGO_BIN_EXE_gantry")`).
    pub fn new(bin: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gantry-test-")
            .tempdir()
            .expect("create a temp dir");
        TestEnv {
            dir,
            bin: PathBuf::from(bin),
        }
    }

    /// Keeps the directory after the test (for debugging a failure) and returns its path.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// The root of the environment (also the working directory of commands).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the environment.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The store directory.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// Writes a file (creating parents) and returns its path.
    pub fn write(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parent dirs");
        }
        fs::write(&p, content).expect("write file");
        p
    }

    /// Sets the permission bits of a file.
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) {
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// The gantry binary under test, run in [`TestEnv::root`] with `GANTRY_HOME` set,
    /// `SOURCE_DATE_EPOCH`, `GANTRY_JOBS`, `RUST_LOG` and the XDG variables removed, and
    /// `HOME` pointing at [`TestEnv::user_home`] with the registry credential variables
    /// (`REGISTRY_AUTH_FILE`, `DOCKER_CONFIG`) removed, so that no test reads or writes the
    /// credentials of whoever runs it.
    pub fn gantry(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(self.root())
            .env("GANTRY_HOME", self.home())
            .env("HOME", self.user_home())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("GANTRY_JOBS")
            .env_remove("RUST_LOG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME");
        c
    }

    /// `$HOME` of the gantry processes this environment runs (not created until used).
    pub fn user_home(&self) -> PathBuf {
        self.path("user-home")
    }

    /// Like [`TestEnv::gantry`], but the process runs with the given umask (through `sh`).
    pub fn gantry_with_umask(&self, umask: &str) -> Command {
        let mut c = self.gantry();
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(&self.bin)
            .current_dir(self.root());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        c = sh;
        c
    }

    /// `gantry <args>`, asserting success; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        self.gantry().args(args).ok().stdout
    }

    /// `gantry <args>`, asserting failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        self.gantry().args(args).fails().stderr
    }
}

/// The result of a command.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Running commands with assertions.
pub trait CmdExt {
    /// Runs and returns the output without asserting anything.
    fn output_any(&mut self) -> Output;
    /// Runs and asserts exit code 0.
    fn ok(&mut self) -> Output;
    /// Runs and asserts a non-zero exit code (not a crash by signal).
    fn fails(&mut self) -> Output;
}

impl CmdExt for Command {
    fn output_any(&mut self) -> Output {
        let o = self
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(self)));
        Output {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn ok(&mut self) -> Output {
        let o = self.output_any();
        assert!(
            o.code == Some(0),
            "command failed: {}\nstatus: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            describe(self),
            o.code,
            o.stdout,
            o.stderr
        );
        o
    }

    fn fails(&mut self) -> Output {
        let o = self.output_any();
        assert!(
            matches!(o.code, Some(c) if c != 0),
            "command should have failed: {}\nstatus: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            describe(self),
            o.code,
            o.stdout,
            o.stderr
        );
        assert!(
            !o.stderr.contains("panicked"),
            "command panicked instead of reporting an error: {}\n{}",
            describe(self),
            o.stderr
        );
        o
    }
}

/// The Debian package that provides each tool the tests use.
const PACKAGES: &[(&str, &str)] = &[
    ("umoci", "umoci"),
    ("skopeo", "skopeo"),
    ("runc", "runc"),
    ("crun", "crun"),
    ("oci-image-tool", "oci-image-tool"),
    ("jq", "jq"),
    ("zstd", "zstd"),
    ("pigz", "pigz"),
    ("gzip", "gzip"),
    ("tar", "tar"),
    ("busybox", "busybox-static"),
    ("docker-registry", "docker-registry"),
    ("htpasswd", "apache2-utils"),
    ("openssl", "openssl"),
    ("podman", "podman"),
    ("git", "git"),
    ("newuidmap", "uidmap"),
    ("getfattr", "attr"),
    ("setfattr", "attr"),
    ("getcap", "libcap2-bin"),
    ("setcap", "libcap2-bin"),
];

/// The path of an external tool; panics (failing the test) with the package to install when
/// it is missing. `scripts/test.sh` installs all of them.
pub fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = dir.join(tool);
        if p.is_file() && p.metadata().is_ok_and(|m| m.mode() & 0o111 != 0) {
            return p;
        }
    }
    let pkg = PACKAGES
        .iter()
        .find(|(t, _)| *t == tool)
        .map_or(tool, |(_, p)| p);
    panic!(
        "required tool {tool:?} is not installed; run scripts/test.sh or `apt-get install {pkg}`"
    )
}

/// A command for an external tool (see [`require`]).
pub fn tool(name: &str) -> Command {
    Command::new(require(name))
}

/// The statically linked busybox of Debian's busybox-static package.
pub fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    let out = Command::new("file").arg("-L").arg(&p).output();
    let is_static = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).contains("statically linked"),
        // Without `file`, trust the package.
        Err(_) => p.exists(),
    };
    assert!(
        is_static,
        "/bin/busybox is missing or not static; run scripts/test.sh or `apt-get install busybox-static`"
    );
    p
}

/// sha256 of a file, as a digest string.
pub fn sha256_file(p: &Path) -> String {
    Digest::sha256(&fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))).to_string()
}

/// Parses JSON output.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// One path of a [`snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// sha256 of a file's content, or a symlink's target.
    pub content: String,
}

/// Every path under `root` (relative) with its type, mode and content. Missing roots give an
/// empty map.
pub fn snapshot(root: &Path) -> BTreeMap<String, PathState> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.expect("walk");
        let rel = e.path().strip_prefix(root).expect("under root");
        let md = e.path().symlink_metadata().expect("lstat");
        let ft = md.file_type();
        let (kind, content) = if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(e.path())
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned(),
            )
        } else if ft.is_file() {
            ("file", sha256_file(e.path()))
        } else if ft.is_dir() {
            ("dir", String::new())
        } else {
            ("other", String::new())
        };
        out.insert(
            rel.to_string_lossy().into_owned(),
            PathState {
                kind,
                mode: md.mode() & 0o7777,
                content,
            },
        );
    }
    out
}

/// A snapshot of the store without its per-process temp and lock directories (which legitimately
/// change with every run).
pub fn store_snapshot(home: &Path) -> BTreeMap<String, PathState> {
    snapshot(home)
        .into_iter()
        .filter(|(k, _)| !(k.starts_with("tmp") || k.starts_with("locks")))
        .collect()
}

/// Asserts that `text` mentions every one of `needles` (case-sensitive).
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "expected {n:?} in:\n{text}");
    }
}

/// `sh -c SCRIPT` with extra environment.
pub fn sh(script: &str, envs: &[(&str, &OsStr)]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}
