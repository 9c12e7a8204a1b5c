//! What a project's git checkout says: the revision, the branch and the last commit's time,
//! for auto labels and `source-date-epoch = "git"`.
//!
//! git refuses to work in a repository that another user owns ("detected dubious
//! ownership"), which is the usual case in CI containers that run as root over a checkout made
//! by another uid. These queries pass `-c safe.directory=*` for their one invocation: they only
//! read refs and one commit, and run no program that the repository's config could name (no
//! index refresh, so no `core.fsmonitor`; no hooks, pager, diff or credential helpers), which is
//! what that check protects against. When git still fails, its own message is the error: a
//! label or time that cannot be read is never left out silently, since that would change the
//! image's digest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How much of git's error output is kept in a message.
const MAX_REASON: usize = 400;

/// The git facts of a checkout, each read once, or why it could not be.
#[derive(Debug, Clone)]
pub(crate) struct GitInfo {
    /// The directory asked about.
    pub(crate) dir: PathBuf,
    /// `HEAD`'s commit id.
    pub(crate) revision: Result<String, String>,
    /// The branch `HEAD` is on.
    pub(crate) branch: Result<String, String>,
    /// The committer time of `HEAD`, in seconds since the epoch.
    pub(crate) commit_time: Result<i64, String>,
}

impl GitInfo {
    /// Reads `dir`'s checkout.
    pub(crate) fn read(dir: &Path) -> Self {
        GitInfo {
            dir: dir.to_owned(),
            revision: git(dir, &["rev-parse", "--verify", "HEAD"]),
            branch: git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]).and_then(|b| {
                if b == "HEAD" {
                    Err("HEAD is detached: it is on no branch".to_owned())
                } else {
                    Ok(b)
                }
            }),
            commit_time: git(dir, &["log", "-1", "--format=%ct", "HEAD"]).and_then(|t| {
                t.parse()
                    .map_err(|_| format!("git printed {t:?} for the commit time"))
            }),
        }
    }

    /// Nothing read (no target asked for git).
    pub(crate) fn unread() -> Self {
        let no = "git was not asked".to_owned();
        GitInfo {
            dir: PathBuf::new(),
            revision: Err(no.clone()),
            branch: Err(no.clone()),
            commit_time: Err(no),
        }
    }
}

/// `git -C DIR ARGS…`: its trimmed output, or why it failed (git's own message).
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "safe.directory=*",
            "-c",
            "core.fsmonitor=false",
            "--no-pager",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut reason: String = stderr.trim().chars().take(MAX_REASON).collect();
        if reason.is_empty() {
            reason = format!("git {} exited with {}", args.join(" "), out.status);
        }
        return Err(reason);
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if text.is_empty() {
        return Err(format!("git {} printed nothing", args.join(" ")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    #[test]
    fn reads_a_checkout_and_says_why_when_it_cannot() {
        let d = tempfile::tempdir().unwrap();
        let e = GitInfo::read(d.path());
        assert!(
            e.revision
                .as_ref()
                .unwrap_err()
                .contains("not a git repository"),
            "{e:?}"
        );
        sh(
            d.path(),
            "git init -q -b main . && GIT_COMMITTER_DATE='@1700000000 +0000' git -c user.name=t \
             -c user.email=t@e commit -q --allow-empty -m one",
        );
        let g = GitInfo::read(d.path());
        assert_eq!(g.revision.as_ref().unwrap().len(), 40);
        assert_eq!(g.branch.as_deref(), Ok("main"));
        assert_eq!(g.commit_time, Ok(1_700_000_000));
        sh(d.path(), "git checkout -q --detach");
        let g = GitInfo::read(d.path());
        assert!(g.branch.unwrap_err().contains("detached"));
    }
}
