//! Fingerprints of layer plans: a sha256 over everything that determines a layer's bytes and
//! info (every entry's path, type, metadata and content digest, the compressor's identity,
//! media type, annotations and history text), in a length-prefixed, tagged encoding so that
//! different plans cannot encode the same. Source paths on disk are not part of it: the same
//! content from another checkout has the same fingerprint.

use std::io;
use std::path::Path;

use gantry_oci::{Digest, Hasher};

use crate::Error;
use crate::recipe::{EntryKind, FileSource, FileStamp};
use crate::spec::{LayerPlan, LayerSource};
use crate::tarread::TarImport;

/// Bump when the encoding or what it covers changes.
pub const FINGERPRINT_VERSION: u64 = 1;

struct Enc(Hasher);

impl Enc {
    fn tag(&mut self, t: u8) {
        self.0.update(&[t]);
    }
    fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.update(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.tag(0),
            Some(s) => {
                self.tag(1);
                self.str(s);
            }
        }
    }
}

impl LayerPlan {
    /// Every source file whose content the fingerprint depends on, with its state, in the
    /// order the fingerprint asks for them (path order within a tree).
    pub fn source_files(&self) -> Result<Vec<(&Path, FileStamp)>, Error> {
        Ok(match &self.source {
            LayerSource::Recipe(r) => r
                .entries
                .iter()
                .filter_map(|e| match &e.kind {
                    EntryKind::File(FileSource::Disk { path, stamp, .. }) => {
                        Some((path.as_path(), *stamp))
                    }
                    _ => None,
                })
                .collect(),
            LayerSource::Tar { path, .. } | LayerSource::Artifact { path, .. } => {
                vec![(path.as_path(), stamp_of(path)?)]
            }
        })
    }

    /// The plan's fingerprint. `digest_of` gives the sha256 of a source file in the state
    /// `stamp` describes (normally from a stat cache, so unchanged files are not read).
    pub fn fingerprint(
        &self,
        digest_of: &mut dyn FnMut(&Path, &FileStamp) -> io::Result<Digest>,
    ) -> Result<Digest, Error> {
        let mut e = Enc(Hasher::sha256());
        e.str("gantry layer plan");
        e.u64(FINGERPRINT_VERSION);
        let mut content = |path: &Path, stamp: &FileStamp| {
            digest_of(path, stamp).map_err(|source| Error::Source {
                path: path.to_owned(),
                source,
            })
        };
        match &self.source {
            LayerSource::Recipe(r) => {
                e.tag(b'R');
                e.u64(r.entries.len() as u64);
                for entry in &r.entries {
                    e.bytes(entry.path.as_bytes());
                    let m = &entry.meta;
                    e.u64(u64::from(m.mode));
                    e.u64(u64::from(m.uid));
                    e.u64(u64::from(m.gid));
                    e.str(&m.uname);
                    e.str(&m.gname);
                    e.i64(m.mtime);
                    e.u64(m.pax.len() as u64);
                    for (k, v) in &m.pax {
                        e.str(k);
                        e.bytes(v);
                    }
                    match &entry.kind {
                        EntryKind::File(FileSource::Disk { path, size, stamp }) => {
                            e.tag(b'f');
                            e.u64(*size);
                            e.str(&content(path, stamp)?.to_string());
                        }
                        EntryKind::File(FileSource::Inline(bytes)) => {
                            e.tag(b'i');
                            e.bytes(bytes);
                        }
                        EntryKind::Dir => e.tag(b'd'),
                        EntryKind::Symlink(t) => {
                            e.tag(b'l');
                            e.bytes(t);
                        }
                        EntryKind::Hardlink(t) => {
                            e.tag(b'h');
                            e.bytes(t.as_bytes());
                        }
                        EntryKind::Fifo => e.tag(b'p'),
                        EntryKind::CharDevice { major, minor } => {
                            e.tag(b'c');
                            e.u64(u64::from(*major));
                            e.u64(u64::from(*minor));
                        }
                        EntryKind::BlockDevice { major, minor } => {
                            e.tag(b'b');
                            e.u64(u64::from(*major));
                            e.u64(u64::from(*minor));
                        }
                    }
                }
                e.str(&self.compressor.identity());
            }
            LayerSource::Tar { path, how } => {
                e.tag(b'T');
                let stamp = stamp_of(path)?;
                e.str(&content(path, &stamp)?.to_string());
                match how {
                    TarImport::Keep => e.tag(b'k'),
                    TarImport::Recompress(c) => {
                        e.tag(b'r');
                        e.str(&c.identity());
                    }
                }
            }
            LayerSource::Artifact { path, media_type } => {
                e.tag(b'A');
                let stamp = stamp_of(path)?;
                e.str(&content(path, &stamp)?.to_string());
                e.str(media_type);
                // The title annotation defaults to the file's name.
                e.opt(path.file_name().and_then(|n| n.to_str()));
            }
        }
        e.opt(self.media_type.as_deref());
        e.u64(self.annotations.len() as u64);
        for (k, v) in &self.annotations {
            e.str(k);
            e.str(v);
        }
        e.str(&self.created_by);
        e.opt(self.comment.as_deref());
        Ok(e.0.finish())
    }
}

fn stamp_of(path: &Path) -> Result<FileStamp, Error> {
    std::fs::metadata(path)
        .map(|md| FileStamp::of(&md))
        .map_err(|source| Error::Source {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerSpec;

    fn fp(dir: &Path, spec: &str) -> Digest {
        let spec: LayerSpec = toml::from_str(spec).unwrap();
        let plan = spec.plan(dir, 0, "t").unwrap();
        plan.fingerprint(&mut |p, _| Ok(Digest::sha256(&std::fs::read(p)?)))
            .unwrap()
    }

    #[test]
    fn content_and_metadata_count_source_paths_do_not() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
            std::fs::write(t.path().join(d).join("f"), "same").unwrap();
        }
        let base = fp(t.path(), r#"files = { "/f" = "a/f" }"#);
        assert_eq!(base, fp(t.path(), r#"files = { "/f" = "b/f" }"#));
        assert_ne!(base, fp(t.path(), r#"files = { "/g" = "a/f" }"#));
        assert_ne!(
            base,
            fp(
                t.path(),
                "files = { \"/f\" = \"a/f\" }\nmetadata.\"/f\" = { mode = \"0600\" }"
            )
        );
        assert_ne!(
            base,
            fp(
                t.path(),
                "files = { \"/f\" = \"a/f\" }\ncompression = \"zstd\""
            )
        );
        assert_ne!(
            base,
            fp(t.path(), "files = { \"/f\" = \"a/f\" }\nlevel = 9")
        );
        assert_ne!(
            base,
            fp(t.path(), "files = { \"/f\" = \"a/f\" }\ncomment = \"x\"")
        );
        std::fs::write(t.path().join("b/f"), "diff").unwrap();
        assert_ne!(base, fp(t.path(), r#"files = { "/f" = "b/f" }"#));
        // Inline content and a file with the same bytes are different plans.
        assert_ne!(base, fp(t.path(), r#"content = { "/f" = "same" }"#));
    }
}
