//! `gantry.lock`: the digests tags of pull targets were pinned to. Written by `gantry lock`,
//! read by every build, meant to be checked in: sorted TOML, one table per pull target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The lock file's name, next to gantry.toml.
pub const LOCK_FILE: &str = "gantry.lock";
const VERSION: u32 = 1;
const HEADER: &str = "# Written by `gantry lock`: the digests the tags of pull targets are pinned to.\n\
# Check it in. `gantry lock --update [NAME]` moves a pin to what the tag points to now.\n\n";

/// One pinned tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPull {
    /// The repository, normalised (`docker.io/library/python`).
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// What the tag pointed to when it was locked.
    pub digest: Digest,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    version: u32,
    #[serde(default)]
    pull: BTreeMap<String, LockedPull>,
}

/// The lock of a project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// Where it is (whether or not it exists yet).
    pub path: PathBuf,
    /// Pins by pull target name.
    pub pull: BTreeMap<String, LockedPull>,
}

impl Lock {
    /// Reads `gantry.lock` in `dir`; a missing file is an empty lock.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(LOCK_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock {
                    path,
                    pull: BTreeMap::new(),
                });
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        let file: LockFile = toml::from_str(&text).map_err(|e| Error::Lock {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != VERSION {
            return Err(Error::Lock {
                path,
                reason: format!(
                    "version {} is not supported (this gantry writes {VERSION}); run `gantry lock --update`",
                    file.version
                ),
            });
        }
        Ok(Lock {
            path,
            pull: file.pull,
        })
    }

    /// The pin of pull target `name` for `repository:tag`, if the lock has one that matches.
    pub fn pinned(&self, name: &str, repository: &str, tag: &str) -> Option<&Digest> {
        self.pull
            .get(name)
            .filter(|p| p.repository == repository && p.tag == tag)
            .map(|p| &p.digest)
    }

    /// The file's text: a header, then sorted tables.
    pub fn render(&self) -> String {
        let file = LockFile {
            version: VERSION,
            pull: self.pull.clone(),
        };
        let body = toml::to_string(&file).expect("a lock serialises");
        format!("{HEADER}{body}")
    }

    /// Writes the lock atomically (a temp file next to it, then a rename).
    pub fn save(&self) -> Result<(), Error> {
        let tmp = self
            .path
            .with_extension(format!("lock.tmp-{}", std::process::id()));
        let io = |source| Error::Read {
            path: self.path.clone(),
            source,
        };
        std::fs::write(&tmp, self.render()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_sorted_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = Lock::load(dir.path()).unwrap();
        assert!(lock.pull.is_empty());
        let d = Digest::sha256(b"x");
        for name in ["zeta", "alpha"] {
            lock.pull.insert(
                name.into(),
                LockedPull {
                    repository: "docker.io/library/python".into(),
                    tag: "3.12-slim".into(),
                    digest: d.clone(),
                },
            );
        }
        lock.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with("# Written by `gantry lock`"), "{text}");
        assert!(
            text.find("[pull.alpha]").unwrap() < text.find("[pull.zeta]").unwrap(),
            "{text}"
        );
        let back = Lock::load(dir.path()).unwrap();
        assert_eq!(back, lock);
        assert_eq!(
            back.pinned("alpha", "docker.io/library/python", "3.12-slim"),
            Some(&d)
        );
        assert_eq!(
            back.pinned("alpha", "docker.io/library/python", "3.13"),
            None
        );
    }

    #[test]
    fn a_bad_lock_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "version = 1\n[pull.x]\nrepository = 1\n",
        )
        .unwrap();
        let e = Lock::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("gantry.lock"), "{e}");
        std::fs::write(dir.path().join(LOCK_FILE), "version = 9\n").unwrap();
        assert!(
            Lock::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
    }
}
