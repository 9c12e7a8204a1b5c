//! Running a bundle: `<runtime> --root STATE run --bundle DIR ID`, output, exit status,
//! cleanup.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::detect::Runtime;
use crate::{Error, Result};

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error (which also carries the runtime's own messages).
    Stderr,
}

/// Where the container's standard streams go.
pub enum Stdio<'a> {
    /// The caller's stdin, stdout and stderr (an interactive `gantry run`; required for
    /// `terminal: true`, where the runtime allocates the pty and relays the caller's
    /// terminal in foreground mode).
    Inherit,
    /// stdin, stdout and stderr are `/dev/null`.
    Null,
    /// stdin is `/dev/null`; every line of stdout and stderr (without its newline, invalid
    /// UTF-8 replaced, lines over 64 KiB split) is passed to the callback on the calling
    /// thread, as it arrives.
    Lines(&'a mut dyn FnMut(Stream, &str)),
}

impl fmt::Debug for Stdio<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stdio::Inherit => "Inherit",
            Stdio::Null => "Null",
            Stdio::Lines(_) => "Lines(..)",
        })
    }
}

/// How the container's process ended.
///
/// runc and crun report a process killed by signal N as exit code 128 + N (as shells do), so a
/// code of 129..=192 is read as [`ExitStatus::Signaled`]; a process that calls `exit(130)`
/// cannot be told from one killed by `SIGINT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The exit code, shell style (128 + N for signal N).
    pub fn exit_code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    fn from_code(code: i32) -> ExitStatus {
        if (129..=128 + 64).contains(&code) {
            ExitStatus::Signaled(code - 128)
        } else {
            ExitStatus::Exited(code)
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => write!(f, "signal {s}"),
        }
    }
}

/// A container id unique on this host: `<prefix>-<pid>-<counter>-<time>` (the prefix
/// reduced to the characters runtimes accept).
pub fn container_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| if valid_id_char(c) { c } else { '-' })
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{}-{:x}-{n}-{:x}",
        if prefix.is_empty() { "gantry" } else { &prefix },
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+')
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 200 || id.starts_with('.') || !id.chars().all(valid_id_char) {
        return Err(Error::InvalidId(id.to_owned()));
    }
    Ok(())
}

/// The containers this process is running now (runtime, state root, id), for
/// [`stop_running`].
static RUNNING: Mutex<Vec<(PathBuf, PathBuf, String)>> = Mutex::new(Vec::new());
/// Set by [`stop_running`]: no new container starts in this process afterwards.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn running() -> std::sync::MutexGuard<'static, Vec<(PathBuf, PathBuf, String)>> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops every container this process is running (`delete --force`: SIGKILL to all its
/// processes), and keeps any more from starting: [`Runtime::run`] then fails with
/// [`Error::Interrupted`]. For a signal handler (SIGINT, SIGTERM) of the program, so that
/// dying does not leave containers behind; the [`Runtime::run`] calls then return as their
/// containers end. Safe to call repeatedly, from any thread. Returns how many containers it
/// found running.
pub fn stop_running() -> usize {
    STOPPING.store(true, Ordering::SeqCst);
    let containers = running().clone();
    for (runtime, state, id) in &containers {
        let out = Command::new(runtime)
            .arg("--root")
            .arg(state)
            .args(["delete", "--force", id])
            .stdin(std::process::Stdio::null())
            .output();
        tracing::debug!(id, ?out, "stopped a running container");
    }
    containers.len()
}

/// The file beside a state root that names the runtime that uses it, so that
/// [`reap_state_root`] can stop the containers of a process that died.
fn runtime_marker(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".runtime");
    state.with_file_name(name)
}

/// Stops and deletes every container whose state is in `state` (a `--root` directory that
/// [`Runtime::run`] used, in a process that died without cleaning up), with the runtime that
/// ran them. A `gantry` killed with SIGKILL during a step leaves `runc run` and its container
/// running; this is what stops them before the state directory is removed (without the
/// state, the runtime no longer knows the container). Returns the ids of the containers it
/// deleted.
pub fn reap_state_root(state: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(state) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", state.display()), e)),
    };
    let ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| validate_id(id).is_ok())
        .collect();
    if ids.is_empty() {
        return Ok(ids);
    }
    let marker = runtime_marker(state);
    let runtime = fs::read_to_string(&marker)
        .map_err(|e| Error::io(format!("reading {}", marker.display()), e))?;
    let runtime = PathBuf::from(runtime.trim_end_matches('\n'));
    let mut deleted = Vec::new();
    for id in ids {
        let out = Command::new(&runtime)
            .arg("--root")
            .arg(state)
            .args(["delete", "--force", &id])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {} delete", runtime.display()), e))?;
        if out.status.success() {
            tracing::debug!(id, "deleted a dead process's container");
            deleted.push(id);
        } else {
            tracing::warn!(
                "cannot delete the container {id} left in {}: {}",
                state.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(deleted)
}

/// Lines of the longest kept tail of the runtime's stderr for error messages.
const TAIL_LINES: usize = 20;
/// Longer lines are passed on in pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// Deletes the container (if the runtime left it) and the run's log and pid files, also
/// when `run` returns early or unwinds.
struct Cleanup<'a> {
    runtime: &'a Runtime,
    state: PathBuf,
    id: &'a str,
    files: [PathBuf; 2],
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        running().retain(|(_, state, id)| !(state == &self.state && id == self.id));
        if self.state.join(self.id).exists() {
            tracing::debug!(id = self.id, "deleting the container");
            if let Err(e) = self.runtime.delete_in(&self.state, self.id) {
                tracing::warn!(id = self.id, "could not delete the container: {e}");
            }
        }
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
    }
}

impl Runtime {
    fn command(&self, state: &Path) -> Command {
        let mut c = Command::new(self.path());
        c.arg("--root").arg(state);
        c
    }

    /// Runs the container of `bundle` (written by [`crate::write_bundle`]) in the foreground
    /// as `id` and returns how its process ended.
    ///
    /// `<runtime> --root STATE --log=LOG --log-format=json run --bundle BUNDLE --pid-file PID ID`,
    /// with STATE = [`Runtime::state_root`]. The pid file tells the outcomes apart: a non-zero
    /// exit without it means the runtime never started the process → [`Error::Start`] with the
    /// runtime's logged errors (or its stderr); with it, the code is the process's →
    /// `Ok(status)` (unless the runtime also logged errors: [`Error::Runtime`]).
    ///
    /// The container is always deleted afterwards (`delete --force` if the runtime left it),
    /// also on errors and when the callback panics. On Ctrl-C the terminal's SIGINT reaches
    /// the runtime too, which forwards it to the container and returns; a caller that wants
    /// cleanup then must not die on SIGINT itself (install a handler) so that this returns.
    pub fn run(&self, bundle: &Path, id: &str, io: Stdio<'_>) -> Result<ExitStatus> {
        validate_id(id)?;
        let bundle = std::path::absolute(bundle)
            .map_err(|e| Error::io(format!("resolving {}", bundle.display()), e))?;
        let config = bundle.join("config.json");
        let config_bytes =
            fs::read(&config).map_err(|e| Error::io(format!("reading {}", config.display()), e))?;
        let terminal = serde_json::from_slice::<serde_json::Value>(&config_bytes)
            .ok()
            .and_then(|v| v.pointer("/process/terminal").and_then(|t| t.as_bool()))
            .unwrap_or(false);
        if terminal && !matches!(io, Stdio::Inherit) {
            return Err(Error::InvalidSpec(
                "a terminal (terminal: true) needs Stdio::Inherit".into(),
            ));
        }
        let state = std::path::absolute(self.state_root(&bundle))
            .map_err(|e| Error::io("resolving the state directory", e))?;
        fs::create_dir_all(&state)
            .map_err(|e| Error::io(format!("creating {}", state.display()), e))?;
        let marker = runtime_marker(&state);
        if !marker.exists() {
            fs::write(&marker, self.path().as_os_str().as_encoded_bytes())
                .map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;
        }
        let log = bundle.join(format!("{id}.runtime-log"));
        let pid = bundle.join(format!("{id}.pid"));
        for f in [&log, &pid] {
            match fs::remove_file(f) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Error::io(format!("removing {}", f.display()), e));
                }
                _ => {}
            }
        }
        // Registered before the runtime starts, so that a signal handler's stop_running sees
        // it from the start; and refused once that has run.
        running().push((self.path().to_owned(), state.clone(), id.to_owned()));
        let _cleanup = Cleanup {
            runtime: self,
            state: state.clone(),
            id,
            files: [log.clone(), pid.clone()],
        };
        if STOPPING.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }

        let mut cmd = self.command(&state);
        let mut log_arg = std::ffi::OsString::from("--log=");
        log_arg.push(&log);
        cmd.arg(log_arg)
            .arg("--log-format=json")
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pid-file")
            .arg(&pid)
            .arg(id);
        tracing::debug!(runtime = %self.path().display(), id, bundle = %bundle.display(), "running container");
        let spawn_err = |e| Error::io(format!("running {}", self.path().display()), e);

        let mut tail: VecDeque<String> = VecDeque::new();
        let status = match io {
            Stdio::Inherit => cmd.status().map_err(spawn_err)?,
            Stdio::Null => cmd
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(spawn_err)?,
            Stdio::Lines(callback) => {
                let mut child = cmd
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(spawn_err)?;
                let (tx, rx) = mpsc::channel();
                let mut readers = Vec::new();
                if let Some(out) = child.stdout.take() {
                    let tx = tx.clone();
                    readers.push(std::thread::spawn(move || pump(out, Stream::Stdout, &tx)));
                }
                if let Some(err) = child.stderr.take() {
                    let tx = tx.clone();
                    readers.push(std::thread::spawn(move || pump(err, Stream::Stderr, &tx)));
                }
                drop(tx);
                for (stream, line) in rx {
                    callback(stream, &line);
                    if stream == Stream::Stderr {
                        if tail.len() == TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
                for r in readers {
                    let _ = r.join();
                }
                child.wait().map_err(spawn_err)?
            }
        };

        let started = fs::metadata(&pid).is_ok_and(|m| m.len() > 0);
        let errors = logged_errors(&log);
        let runtime = self.path().display().to_string();
        let message = |fallback: String| {
            if !errors.is_empty() {
                errors.join("; ")
            } else if !tail.is_empty() {
                Vec::from(tail.clone()).join("\n")
            } else {
                fallback
            }
        };
        tracing::debug!(id, ?status, started, "runtime exited");
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(ExitStatus::Exited(0)),
            (Some(code), _) if started && errors.is_empty() => Ok(ExitStatus::from_code(code)),
            (Some(code), _) if started => Err(Error::Runtime {
                runtime,
                id: id.to_owned(),
                message: message(format!("exit code {code}")),
            }),
            (Some(code), _) => Err(Error::Start {
                runtime,
                id: id.to_owned(),
                message: message(format!("the runtime exited with code {code}")),
            }),
            (None, Some(sig)) if started => Ok(ExitStatus::Signaled(sig)),
            (None, sig) => Err(Error::Start {
                runtime,
                id: id.to_owned(),
                message: message(format!("the runtime was killed by signal {sig:?}")),
            }),
        }
    }

    /// [`Runtime::run`] with the caller's terminal ([`Stdio::Inherit`]).
    pub fn run_inherit(&self, bundle: &Path, id: &str) -> Result<ExitStatus> {
        self.run(bundle, id, Stdio::Inherit)
    }

    /// [`Runtime::run`] with every output line passed to `on_line` ([`Stdio::Lines`]).
    pub fn run_captured(
        &self,
        bundle: &Path,
        id: &str,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<ExitStatus> {
        self.run(bundle, id, Stdio::Lines(on_line))
    }

    /// `delete --force ID` in `bundle`'s state root (kills the container's processes).
    pub fn delete(&self, bundle: &Path, id: &str) -> Result<()> {
        validate_id(id)?;
        self.delete_in(&self.state_root(bundle), id)
    }

    fn delete_in(&self, state: &Path, id: &str) -> Result<()> {
        let out = self
            .command(state)
            .args(["delete", "--force", id])
            .output()
            .map_err(|e| Error::io(format!("running {} delete", self.path().display()), e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Runtime {
                runtime: self.path().display().to_string(),
                id: id.to_owned(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// The ids of the containers in `bundle`'s state root (`list -q`).
    pub fn list(&self, bundle: &Path) -> Result<Vec<String>> {
        let state = self.state_root(bundle);
        if !state.exists() {
            return Ok(Vec::new());
        }
        let out = self
            .command(&state)
            .args(["list", "-q"])
            .output()
            .map_err(|e| Error::io(format!("running {} list", self.path().display()), e))?;
        if !out.status.success() {
            return Err(Error::Runtime {
                runtime: self.path().display().to_string(),
                id: String::new(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .collect())
    }
}

/// The `error`-level (or worse) messages of a runtime's JSON log, and any line that is not
/// JSON.
fn logged_errors(log: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(
            |l| match serde_json::from_str::<serde_json::Value>(l.trim()) {
                Ok(v) => {
                    let level = v.get("level").and_then(|x| x.as_str()).unwrap_or("");
                    matches!(level, "error" | "fatal" | "panic").then(|| {
                        v.get("msg")
                            .and_then(|m| m.as_str())
                            .unwrap_or(l)
                            .to_owned()
                    })
                }
                Err(_) => Some(l.trim().to_owned()),
            },
        )
        .collect()
}

/// Reads `r` to the end, sending each line (see [`Stdio::Lines`]).
fn pump(mut r: impl Read, stream: Stream, tx: &mpsc::Sender<(Stream, String)>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let send = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        // A gone receiver only means nobody listens; keep draining so the child never blocks.
        let _ = tx.send((stream, String::from_utf8_lossy(line).into_owned()));
        line.clear();
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
            let mut chunk = chunk;
            while !chunk.is_empty() {
                let room = MAX_LINE - line.len();
                let take = chunk.len().min(room);
                line.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if line.last() == Some(&b'\n') || line.len() >= MAX_LINE {
                    send(&mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        send(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = container_id("step/build x");
        let b = container_id("step/build x");
        assert_ne!(a, b);
        assert!(a.starts_with("step-build-x-"), "{a}");
        validate_id(&a).unwrap();
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("").is_err());
        assert!(validate_id("..").is_err());
    }

    #[test]
    fn exit_status() {
        assert_eq!(ExitStatus::from_code(7), ExitStatus::Exited(7));
        assert_eq!(ExitStatus::from_code(137), ExitStatus::Signaled(9));
        assert_eq!(ExitStatus::from_code(255), ExitStatus::Exited(255));
        assert_eq!(ExitStatus::Signaled(9).exit_code(), 137);
        assert!(ExitStatus::Exited(0).success());
    }

    #[test]
    fn pump_splits_lines() {
        let (tx, rx) = mpsc::channel();
        let mut input = b"a\r\nb\n\nlast".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 3));
        pump(&input[..], Stream::Stdout, &tx);
        drop(tx);
        let lines: Vec<String> = rx.into_iter().map(|(_, l)| l).collect();
        assert_eq!(&lines[..3], ["a", "b", ""]);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[3].len(), MAX_LINE);
        assert!(lines[3].starts_with("last"));
        assert_eq!(lines[4].len(), 7);
    }

    #[test]
    fn log_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(
            &p,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"boom\"}\nplain\n",
        )
        .unwrap();
        assert_eq!(logged_errors(&p), ["boom", "plain"]);
        assert!(logged_errors(&dir.path().join("none")).is_empty());
    }
}
