//! Finding a runtime that runs containers here.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bundle::{BindMount, IdMaps, RunSpec, write_bundle};
use crate::run::{Stdio, container_id};
use crate::{Error, Result};

/// The OCI runtimes gantry drives (both take the same command line for what gantry does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// runc (opencontainers).
    Runc,
    /// crun (containers).
    Crun,
}

impl RuntimeKind {
    /// The program name.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Runc => "runc",
            RuntimeKind::Crun => "crun",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An OCI runtime binary and where it keeps container state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    kind: RuntimeKind,
    path: PathBuf,
    state_root: Option<PathBuf>,
}

/// A candidate that auto-detection did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Which runtime.
    pub kind: RuntimeKind,
    /// Where it was found (`None`: not installed).
    pub path: Option<PathBuf>,
    /// Why it was not used (for a failed probe: the runtime's own error).
    pub reason: String,
}

/// The result of [`Runtime::detect_in`].
#[derive(Debug, Clone)]
pub struct Detection {
    /// The runtime to use.
    pub runtime: Runtime,
    /// Candidates tried before it, with reasons.
    pub skipped: Vec<Skipped>,
}

impl Runtime {
    /// A runtime at `path`, used as is.
    pub fn new(kind: RuntimeKind, path: impl Into<PathBuf>) -> Runtime {
        Runtime {
            kind,
            path: path.into(),
            state_root: None,
        }
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// The runtime's program name (`runc`, `crun`).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The runtime's executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps container state (`--root`) in `dir` instead of `<bundle>/state`.
    #[must_use]
    pub fn with_state_root(mut self, dir: impl Into<PathBuf>) -> Runtime {
        self.state_root = Some(dir.into());
        self
    }

    /// The `--root` directory used for containers of `bundle`.
    pub fn state_root(&self, bundle: &Path) -> PathBuf {
        self.state_root
            .clone()
            .unwrap_or_else(|| bundle.join("state"))
    }

    /// [`Runtime::detect_in`] on the process's `PATH` followed by `/usr/local/sbin`,
    /// `/usr/sbin` and `/sbin` (where Debian puts runc, but a non-root `PATH` does not look),
    /// without the report.
    pub fn detect(preferred: Option<&str>) -> Result<Runtime> {
        Runtime::detect_in(preferred, &default_search_path()).map(|d| d.runtime)
    }

    /// Finds the runtime to use, searching `search_path` (a `PATH`-style list).
    ///
    /// - `Some("runc")`, `Some("crun")` or another bare name: that program; `Some(path)` with a
    ///   `/`: that file. It is checked to exist and to answer `--version` (which also tells
    ///   runc from crun), not probed: the caller asked for it.
    /// - `None`: crun, then runc, each probed with [`Runtime::probe`] — a real container run,
    ///   because what fails is often not the binary but the host (crun 1.8 refuses cgroup
    ///   v1/v2 hybrid hosts with "cgroups in hybrid mode not supported" at create time). The
    ///   first that runs wins; the others are reported in [`Detection::skipped`] and logged.
    ///
    /// Nothing usable: [`Error::NoRuntime`] or [`Error::RuntimeNotFound`], whose messages say
    /// how to install one.
    pub fn detect_in(preferred: Option<&str>, search_path: &OsStr) -> Result<Detection> {
        if let Some(name) = preferred {
            let not_found = |reason: String| Error::RuntimeNotFound {
                name: name.to_owned(),
                reason,
            };
            let path = if name.contains('/') {
                let p = PathBuf::from(name);
                match fs::metadata(&p) {
                    Err(e) => return Err(not_found(e.to_string())),
                    Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                        return Err(not_found("not an executable file".into()));
                    }
                    Ok(_) => p,
                }
            } else {
                find_program(name, search_path).ok_or_else(|| not_found("not on PATH".into()))?
            };
            let kind = kind_of(&path).map_err(not_found)?;
            tracing::debug!(runtime = %path.display(), %kind, "using the runtime asked for");
            return Ok(Detection {
                runtime: Runtime::new(kind, path),
                skipped: Vec::new(),
            });
        }
        let mut skipped = Vec::new();
        for kind in [RuntimeKind::Crun, RuntimeKind::Runc] {
            let Some(path) = find_program(kind.name(), search_path) else {
                tracing::debug!(%kind, "not installed");
                skipped.push(Skipped {
                    kind,
                    path: None,
                    reason: "not installed".into(),
                });
                continue;
            };
            let runtime = Runtime::new(kind, &path);
            match runtime.probe() {
                Ok(()) => {
                    tracing::debug!(%kind, path = %path.display(), "probe container ran: using it");
                    return Ok(Detection { runtime, skipped });
                }
                Err(e) => {
                    let reason = match e {
                        Error::Start { message, .. } => {
                            format!("cannot run containers here: {message}")
                        }
                        other => format!("cannot run containers here: {other}"),
                    };
                    tracing::debug!(%kind, path = %path.display(), %reason, "skipping runtime");
                    skipped.push(Skipped {
                        kind,
                        path: Some(path),
                        reason,
                    });
                }
            }
        }
        Err(Error::NoRuntime { skipped })
    }

    /// Runs a throw-away container: an empty rootfs with the host's `/usr`, `/bin`, `/lib*`
    /// and `/sbin` bound read-only, running `true` in its own namespaces (rootless with a
    /// single-id mapping when not root). Ok when it exits 0.
    pub fn probe(&self) -> Result<()> {
        let dir = tempfile::Builder::new()
            .prefix("gantry-probe-")
            .tempdir()
            .map_err(|e| Error::io("creating a probe bundle directory", e))?;
        let rootfs = dir.path().join("rootfs");
        fs::create_dir(&rootfs).map_err(|e| Error::io("creating the probe rootfs", e))?;
        let mut mounts = Vec::new();
        for name in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(name);
            let Ok(md) = fs::symlink_metadata(&host) else {
                continue;
            };
            if md.file_type().is_symlink() {
                let target = fs::read_link(&host)
                    .map_err(|e| Error::io(format!("reading {}", host.display()), e))?;
                std::os::unix::fs::symlink(target, rootfs.join(name))
                    .map_err(|e| Error::io("creating a probe rootfs link", e))?;
            } else if md.is_dir() {
                mounts.push(BindMount {
                    source: host,
                    destination: format!("/{name}"),
                    readonly: true,
                });
            }
        }
        let mut spec = RunSpec::new(&rootfs, vec!["true".into()]);
        spec.env = vec!["PATH=/usr/bin:/bin".into()];
        spec.mounts = mounts;
        let euid = rustix::process::geteuid().as_raw();
        if euid != 0 {
            spec.rootless = Some(IdMaps::single(euid, rustix::process::getegid().as_raw()));
        }
        let bundle = dir.path().join("bundle");
        write_bundle(&bundle, &spec)?;
        let mut output = Vec::new();
        let status = self.run(
            &bundle,
            &container_id("gantry-probe"),
            Stdio::Lines(&mut |_, line: &str| {
                if output.len() < 20 {
                    output.push(line.to_owned());
                }
            }),
        )?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Start {
                runtime: self.path.display().to_string(),
                id: "probe".into(),
                message: format!("`true` exited with {status}: {}", output.join(" / ")),
            })
        }
    }
}

/// Tells runc from crun by `--version` (then by file name; unknown runc-compatible runtimes
/// count as runc).
fn kind_of(path: &Path) -> std::result::Result<RuntimeKind, String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `{} --version`: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version` failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(if first.starts_with("crun") {
        RuntimeKind::Crun
    } else if first.starts_with("runc") {
        RuntimeKind::Runc
    } else if name.contains("crun") {
        RuntimeKind::Crun
    } else {
        RuntimeKind::Runc
    })
}

/// The process's `PATH` followed by the sbin directories, where Debian installs runc but
/// where a non-root `PATH` does not look.
pub(crate) fn default_search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(d.into());
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// An executable `name` in one of the absolute directories of `search_path`.
pub(crate) fn find_program(name: &str, search_path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
