//! Refs: named GC roots.
//!
//! One file per ref, `refs-v1/<kind>/<sha256 of the name, hex>.json`, holding canonical JSON
//! `{"name":…,"descriptor":…,"path":…}`. Files are written to the session directory, fsynced
//! and renamed into place while `locks/refs.lock` is held.
//!
//! A ref with a `path` is an indirect root (like a Nix gcroot): it protects its blobs only while
//! that path exists. [`crate::Store::gc`] drops refs whose path is gone.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use gantry_oci::{Descriptor, Digest, json};
use serde::{Deserialize, Serialize};

use crate::fsutil::{ensure_private_dir, fsync_dir, is_real_dir, list_dir, read_capped};
use crate::{Error, Result, Store};

/// Longest accepted ref kind.
const MAX_KIND_LEN: usize = 32;
/// Longest accepted ref name.
const MAX_NAME_LEN: usize = 4096;
/// Cap on a ref file.
const MAX_REF_FILE: u64 = 1 << 20;

/// A named GC root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEntry {
    /// The kind of ref (`tag`, `output`, …): a lowercase word naming who owns it.
    pub kind: String,
    /// The name, unique within its kind.
    pub name: String,
    /// The root blob.
    pub descriptor: Descriptor,
    /// For an indirect root, the path whose existence keeps the ref alive.
    pub path: Option<PathBuf>,
}

impl RefEntry {
    /// Whether this is an indirect root whose path no longer exists. A path that cannot be
    /// checked (permission denied) counts as existing.
    pub fn is_stale(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| matches!(fs::exists(p), Ok(false)))
    }
}

/// The on-disk form of a ref.
#[derive(Serialize, Deserialize)]
struct RefFile {
    name: String,
    descriptor: Descriptor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

impl Store {
    /// Creates or replaces the ref `kind`/`name` pointing at `target`. With `path`, the ref is
    /// an indirect root that lasts only while `path` exists (a relative path is made absolute).
    pub fn set_ref(
        &self,
        kind: &str,
        name: &str,
        target: &Descriptor,
        path: Option<&Path>,
    ) -> Result<()> {
        validate_kind(kind)?;
        validate_name(name)?;
        target.validate(&format!("target of {kind} ref {name}"))?;
        let file = RefFile {
            name: name.to_owned(),
            descriptor: target.clone(),
            path: path.map(absolute_utf8).transpose()?,
        };
        let bytes = json::to_canonical_vec(&file);

        let _lock = self.lock_refs()?;
        let dir = self.refs_dir().join(kind);
        ensure_private_dir(&dir)?;
        self.replace_file(&dir.join(file_name(name)), &bytes)?;
        tracing::debug!(kind, name, digest = %target.digest, "set ref");
        Ok(())
    }

    /// Removes the ref `kind`/`name`. Returns whether it existed.
    pub fn remove_ref(&self, kind: &str, name: &str) -> Result<bool> {
        validate_kind(kind)?;
        validate_name(name)?;
        let _lock = self.lock_refs()?;
        let dir = self.refs_dir().join(kind);
        self.remove_ref_file(&dir.join(file_name(name)))
    }

    /// The ref `kind`/`name`, if there is one (stale or not).
    pub fn get_ref(&self, kind: &str, name: &str) -> Result<Option<RefEntry>> {
        validate_kind(kind)?;
        validate_name(name)?;
        let path = self.refs_dir().join(kind).join(file_name(name));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", &path, e)),
            Ok(_) => read_ref_file(kind, &path).map(Some),
        }
    }

    /// Every ref, sorted by kind and name. Fails on the first unreadable ref file.
    pub fn refs(&self) -> Result<Vec<RefEntry>> {
        let mut refs = Vec::new();
        for (_, entry) in self.ref_files()? {
            refs.push(entry?);
        }
        refs.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        Ok(refs)
    }

    /// Every ref file with its parsed content or the reason it cannot be read. Entries of
    /// `refs-v1/` that are not `<kind>/<…>.json` are ignored.
    pub(crate) fn ref_files(&self) -> Result<Vec<(PathBuf, Result<RefEntry>)>> {
        let mut found = Vec::new();
        for kind_dir in list_dir(&self.refs_dir())? {
            let Some(kind) = kind_dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if validate_kind(kind).is_err() || !is_real_dir(&kind_dir) {
                continue;
            }
            for path in list_dir(&kind_dir)? {
                if path.extension().is_some_and(|e| e == "json") {
                    let entry = read_ref_file(kind, &path);
                    found.push((path, entry));
                }
            }
        }
        Ok(found)
    }

    /// Removes a ref file and fsyncs its directory. Call with `refs.lock` held.
    pub(crate) fn remove_ref_file(&self, path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("remove", path, e)),
        }
        if let Some(dir) = path.parent() {
            fsync_dir(dir)?;
        }
        Ok(true)
    }

    /// Atomically replaces `target` with `bytes`: temp file in the session directory, fsync,
    /// rename, fsync of the target's directory.
    fn replace_file(&self, target: &Path, bytes: &[u8]) -> Result<()> {
        let mut temp = self.temp_file("ref-")?;
        temp.write_all(bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| Error::io("write", temp.path(), e))?;
        temp.persist(target)
            .map_err(|e| Error::io("move a ref file to", target, e.error))?;
        match target.parent() {
            Some(dir) => fsync_dir(dir),
            None => Ok(()),
        }
    }
}

/// Reads and checks one ref file.
fn read_ref_file(kind: &str, path: &Path) -> Result<RefEntry> {
    let corrupt = |reason: String| Error::CorruptRef {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_capped(path, MAX_REF_FILE)?;
    let file: RefFile = json::parse_strict(&bytes, &path.display().to_string(), MAX_REF_FILE)
        .map_err(|e| corrupt(e.to_string()))?;
    if path.file_name().and_then(|n| n.to_str()) != Some(file_name(&file.name).as_str()) {
        return Err(corrupt(format!(
            "its file name does not match the name {:?} it holds",
            file.name
        )));
    }
    file.descriptor
        .validate("descriptor")
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(RefEntry {
        kind: kind.to_owned(),
        name: file.name,
        descriptor: file.descriptor,
        path: file.path.map(PathBuf::from),
    })
}

/// The file name of a ref: the sha256 of its name, so any name is a safe file name.
fn file_name(name: &str) -> String {
    format!("{}.json", Digest::sha256(name.as_bytes()).hex())
}

/// Ref kinds are lowercase words: a letter, then letters or digits.
fn validate_kind(kind: &str) -> Result<()> {
    let starts_with_letter = kind.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let simple = kind
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if starts_with_letter && simple && kind.len() <= MAX_KIND_LEN {
        Ok(())
    } else {
        Err(Error::InvalidRefKind {
            kind: kind.to_owned(),
        })
    }
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 4096 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidRefName {
        name: name.chars().take(100).collect(),
        reason,
    })
}

/// The absolute form of `path` as a string (ref files are JSON, so paths must be UTF-8).
fn absolute_utf8(path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|_| Error::InvalidRefPath {
            path: path.to_owned(),
            reason: "it is not valid UTF-8",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::open_store;
    use gantry_oci::media_types as mt;

    #[test]
    fn set_list_replace_and_remove() {
        let (dir, store) = open_store();
        let a = Descriptor::of_bytes(mt::OCI_MANIFEST, b"a");
        let b = Descriptor::of_bytes(mt::OCI_MANIFEST, b"b");
        store.set_ref("tag", "app:latest", &a, None).unwrap();
        store.set_ref("tag", "app:latest", &b, None).unwrap();
        let out = dir.path().join("out");
        store
            .set_ref("output", "../weird/name", &a, Some(&out))
            .unwrap();

        let refs = store.refs().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].kind, "output");
        assert_eq!(refs[0].path.as_deref(), Some(out.as_path()));
        assert!(refs[0].is_stale(), "{} does not exist", out.display());
        assert_eq!(refs[1].descriptor, b);
        assert!(!refs[1].is_stale());

        let file = dir.path().join("refs-v1/tag").join(file_name("app:latest"));
        let text = fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with(r#"{"descriptor":{"#),
            "canonical JSON: {text}"
        );

        assert!(store.remove_ref("tag", "app:latest").unwrap());
        assert!(!store.remove_ref("tag", "app:latest").unwrap());
        assert_eq!(store.refs().unwrap().len(), 1);
    }

    #[test]
    fn kinds_and_names_are_validated() {
        let (_dir, store) = open_store();
        let d = Descriptor::of_bytes(mt::OCI_MANIFEST, b"a");
        for kind in ["", "Tag", "a/b", "..", "1x", "tag-x", &"x".repeat(33)] {
            let err = store.set_ref(kind, "n", &d, None).unwrap_err();
            assert!(matches!(err, Error::InvalidRefKind { .. }), "{kind}: {err}");
        }
        assert!(store.set_ref("tag2", "", &d, None).is_err());
        store.set_ref("tag2", "n", &d, None).unwrap();
    }

    #[test]
    fn a_corrupt_ref_file_is_an_error_naming_it() {
        let (dir, store) = open_store();
        let d = Descriptor::of_bytes(mt::OCI_MANIFEST, b"a");
        store.set_ref("tag", "x", &d, None).unwrap();
        let path = dir.path().join("refs-v1/tag").join(file_name("x"));
        fs::write(&path, b"{not json").unwrap();
        let err = store.refs().unwrap_err();
        assert!(matches!(err, Error::CorruptRef { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}
