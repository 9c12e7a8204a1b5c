//! Integrity checks of the store, with optional repair.

use std::fmt;
use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_oci::{Algorithm, Digest};

use crate::fsutil::{fsync_dir, hash_file, is_real_dir, list_dir, remove_any};
use crate::gc::{WalkIssue, digest_of_path};
use crate::session::{leftovers, remove_leftover};
use crate::{Error, Result, Store};

/// What [`Store::fsck`] should do.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Delete corrupt blobs, stray files and dead sessions' temp files; make writable blobs
    /// read-only.
    pub repair: bool,
}

/// A problem [`Store::fsck`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Problem {
    /// A blob whose content does not hash to its name.
    CorruptBlob {
        /// The name of the blob.
        digest: Digest,
        /// What its content hashes to.
        actual: Digest,
        /// Its file.
        path: PathBuf,
    },
    /// A blob whose mode allows writing.
    WritableBlob {
        /// The blob.
        digest: Digest,
        /// Its file.
        path: PathBuf,
    },
    /// An entry under `blobs/` that is not a regular file named `<alg>/<hex>`.
    StrayFile {
        /// The entry.
        path: PathBuf,
    },
    /// A ref from which a blob cannot be reached because it is missing.
    DanglingRef {
        /// The ref's kind.
        kind: String,
        /// The ref's name.
        name: String,
        /// The missing blob.
        missing: Digest,
    },
    /// A manifest or index reachable from a ref that cannot be read or parsed.
    UnreadableDocument {
        /// The ref's kind.
        kind: String,
        /// The ref's name.
        name: String,
        /// The document.
        digest: Digest,
        /// Why it cannot be read.
        reason: String,
    },
    /// A ref file that cannot be read.
    CorruptRef {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An entry in `tmp/` that belongs to no live process.
    LeftoverTemp {
        /// The entry.
        path: PathBuf,
    },
    /// An inconsistent entry of a cache kept in the store directory (such as the rootfs
    /// cache), found by that cache's own check.
    Cache {
        /// The entry.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptBlob {
                digest,
                actual,
                path,
            } => write!(f, "blob {digest} in {} hashes to {actual}", path.display()),
            Problem::WritableBlob { digest, path } => {
                write!(f, "blob {digest} in {} is writable", path.display())
            }
            Problem::StrayFile { path } => write!(f, "stray file {}", path.display()),
            Problem::DanglingRef {
                kind,
                name,
                missing,
            } => write!(
                f,
                "{kind} ref {name} needs blob {missing}, which is missing"
            ),
            Problem::UnreadableDocument {
                kind,
                name,
                digest,
                reason,
            } => write!(
                f,
                "{kind} ref {name} reaches {digest}, which cannot be read: {reason}"
            ),
            Problem::CorruptRef { path, reason } => {
                write!(f, "ref file {} is corrupt: {reason}", path.display())
            }
            Problem::LeftoverTemp { path } => {
                write!(f, "leftover temp entry {}", path.display())
            }
            Problem::Cache { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

/// A problem and whether it was repaired.
#[derive(Debug)]
pub struct Finding {
    /// The problem.
    pub problem: Problem,
    /// Whether `fsck` fixed it (only with [`FsckOptions::repair`]).
    pub repaired: bool,
}

/// The result of [`Store::fsck`].
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Everything found, in the order checked: blobs, refs, temp files.
    pub findings: Vec<Finding>,
    /// How many blobs were rehashed.
    pub blobs_checked: u64,
}

impl FsckReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The problems found and not repaired: what still needs attention.
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }

    fn found(&mut self, problem: Problem, repaired: bool) {
        self.findings.push(Finding { problem, repaired });
    }
}

impl Store {
    /// Checks that every blob is named by its content's digest and read-only, that every ref
    /// reaches only present blobs, and that `tmp/` holds only live sessions. With `repair`,
    /// removes corrupt blobs, stray files and leftovers, and fixes writable modes; missing
    /// blobs and corrupt refs are only reported.
    pub fn fsck(&self, options: &FsckOptions) -> Result<FsckReport> {
        if options.repair {
            self.require_writable("repair it")?;
        }
        let mut report = FsckReport::default();
        self.check_blobs(options.repair, &mut report)?;
        self.check_refs(&mut report)?;
        self.check_tmp(options.repair, &mut report)?;
        Ok(report)
    }

    fn check_blobs(&self, repair: bool, report: &mut FsckReport) -> Result<()> {
        for alg_dir in list_dir(&self.blobs_dir())? {
            let is_alg_dir = is_real_dir(&alg_dir) && algorithm_of_dir(&alg_dir).is_some();
            if !is_alg_dir {
                stray(&alg_dir, repair, report)?;
                continue;
            }
            for path in list_dir(&alg_dir)? {
                self.check_blob(&path, repair, report)?;
            }
            if repair {
                fsync_dir(&alg_dir)?;
            }
        }
        Ok(())
    }

    fn check_blob(&self, path: &Path, repair: bool, report: &mut FsckReport) -> Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
        let Some(digest) = digest_of_path(path).filter(|_| meta.is_file()) else {
            return stray(path, repair, report);
        };
        report.blobs_checked += 1;
        let actual = hash_file(path, digest.algorithm())?;
        if actual != digest {
            if repair {
                remove_any(path)?;
            }
            let path = path.to_owned();
            report.found(
                Problem::CorruptBlob {
                    digest,
                    actual,
                    path,
                },
                repair,
            );
        } else if meta.permissions().mode() & 0o222 != 0 {
            if repair {
                fs::set_permissions(path, Permissions::from_mode(0o444))
                    .map_err(|e| Error::io("chmod", path, e))?;
            }
            let path = path.to_owned();
            report.found(Problem::WritableBlob { digest, path }, repair);
        }
        Ok(())
    }

    fn check_refs(&self, report: &mut FsckReport) -> Result<()> {
        for (path, entry) in self.ref_files()? {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let reason = e.to_string();
                    report.found(Problem::CorruptRef { path, reason }, false);
                    continue;
                }
            };
            let (kind, name) = (&entry.kind, &entry.name);
            self.walk(std::slice::from_ref(&entry.descriptor), |desc, issue| {
                let (kind, name, digest) = (kind.clone(), name.clone(), desc.digest.clone());
                let problem = match issue {
                    WalkIssue::Missing => Problem::DanglingRef {
                        kind,
                        name,
                        missing: digest,
                    },
                    WalkIssue::Unreadable(e) => Problem::UnreadableDocument {
                        kind,
                        name,
                        digest,
                        reason: e.to_string(),
                    },
                };
                report.found(problem, false);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn check_tmp(&self, repair: bool, report: &mut FsckReport) -> Result<()> {
        let _lock = self.lock_tmp()?;
        let tmp = self.tmp_dir();
        if !tmp.is_dir() {
            return Ok(());
        }
        for path in leftovers(&tmp, self.own_session())? {
            if repair {
                remove_leftover(&path, self.reaper())?;
            }
            report.found(Problem::LeftoverTemp { path }, repair);
        }
        Ok(())
    }
}

/// Reports (and with `repair`, removes) a stray entry under `blobs/`.
fn stray(path: &Path, repair: bool, report: &mut FsckReport) -> Result<()> {
    if repair {
        remove_any(path)?;
    }
    let path = path.to_owned();
    report.found(Problem::StrayFile { path }, repair);
    Ok(())
}

/// The algorithm a `blobs/<alg>` directory is for.
fn algorithm_of_dir(dir: &Path) -> Option<Algorithm> {
    let name = dir.file_name()?.to_str()?;
    [Algorithm::Sha256, Algorithm::Sha512]
        .into_iter()
        .find(|alg| alg.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{corrupt_blob, open_store, put_image};
    use gantry_oci::{Descriptor, media_types as mt};

    fn repair() -> FsckOptions {
        FsckOptions { repair: true }
    }

    #[test]
    fn a_clean_store_is_clean() {
        let (_dir, store) = open_store();
        let image = put_image(&store, &[b"a", b"b"]);
        store.set_ref("tag", "app", &image.manifest, None).unwrap();
        let report = store.fsck(&FsckOptions::default()).unwrap();
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!(report.blobs_checked, 4);
    }

    #[test]
    fn a_flipped_byte_is_reported_and_repaired() {
        let (_dir, store) = open_store();
        let digest = store.put_bytes(b"hello").unwrap();
        let actual = corrupt_blob(&store, &digest);

        let report = store.fsck(&FsckOptions::default()).unwrap();
        assert!(!report.is_clean());
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        match &report.findings[0].problem {
            Problem::CorruptBlob {
                digest: d,
                actual: a,
                ..
            } => {
                assert_eq!((d, a), (&digest, &actual));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(store.has(&digest), "reporting alone removes nothing");

        let report = store.fsck(&repair()).unwrap();
        assert!(report.findings[0].repaired);
        assert!(!store.has(&digest));
        assert!(store.fsck(&FsckOptions::default()).unwrap().is_clean());
    }

    #[test]
    fn writable_blobs_and_stray_files_are_reported_and_repaired() {
        let (dir, store) = open_store();
        let digest = store.put_bytes(b"hello").unwrap();
        let path = store.blob_path(&digest);
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        fs::create_dir(dir.path().join("blobs/md5")).unwrap();

        let report = store.fsck(&repair()).unwrap();
        let text: Vec<String> = report
            .findings
            .iter()
            .map(|f| f.problem.to_string())
            .collect();
        assert_eq!(report.findings.len(), 3, "{text:?}");
        assert!(report.findings.iter().all(|f| f.repaired));
        assert!(text.iter().any(|t| t.contains("is writable")), "{text:?}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(store.fsck(&FsckOptions::default()).unwrap().is_clean());
        store.verify_blob(&digest).unwrap();
    }

    #[test]
    fn refs_to_missing_blobs_are_reported() {
        let (_dir, store) = open_store();
        let image = put_image(&store, &[b"layer"]);
        store.set_ref("tag", "app", &image.manifest, None).unwrap();
        let missing = Descriptor::of_bytes(mt::OCI_MANIFEST, b"never stored");
        store.set_ref("tag", "ghost", &missing, None).unwrap();
        let layer = &image.layers[0];
        fs::remove_file(store.blob_path(layer)).unwrap();

        let report = store.fsck(&FsckOptions::default()).unwrap();
        let mut dangling: Vec<(String, Digest)> = report
            .findings
            .iter()
            .filter_map(|f| match &f.problem {
                Problem::DanglingRef { name, missing, .. } => Some((name.clone(), missing.clone())),
                _ => None,
            })
            .collect();
        dangling.sort();
        assert_eq!(
            dangling,
            vec![
                ("app".to_owned(), layer.clone()),
                ("ghost".to_owned(), missing.digest.clone())
            ]
        );
    }

    #[test]
    fn dead_session_leftovers_are_reported() {
        let (dir, store) = open_store();
        let _live = Store::open(dir.path()).unwrap();
        let dead = dir.path().join("tmp/s-dead");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        let report = store.fsck(&repair()).unwrap();
        assert!(!dead.exists(), "repair removes it");
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        assert!(matches!(
            &report.findings[0].problem,
            Problem::LeftoverTemp { path } if *path == dead
        ));
    }
}
