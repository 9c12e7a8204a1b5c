//! The layer spec: how people and build systems describe a layer. It is the `[layer.NAME]`
//! table of `gantry.toml`, the file given to `gantry layer --spec`, and what the command-line
//! flags of `gantry layer` fill in. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::meta::{Defaults, DefaultsSpec, MetaSpec};
use crate::recipe::{Preserve, RecipeBuilder, TreeFilter};
use crate::tarread::TarImport;
use crate::{Compressor, Error, ImagePath, Recipe};

/// A layer as described by a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayerSpec {
    /// Image path → source file.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Image path → source directory (or `{ src, include, exclude }`).
    #[serde(default)]
    pub dirs: BTreeMap<String, DirSpec>,
    /// Image path → inline text.
    #[serde(default)]
    pub content: BTreeMap<String, String>,
    /// Image path → link target (stored verbatim).
    #[serde(default)]
    pub symlinks: BTreeMap<String, String>,
    /// Image path → another image path in this layer.
    #[serde(default)]
    pub hardlinks: BTreeMap<String, String>,
    /// Empty directories.
    #[serde(default)]
    pub empty_dirs: Vec<String>,
    /// Paths of lower layers to delete.
    #[serde(default)]
    pub whiteouts: Vec<String>,
    /// Directories whose lower-layer contents are hidden.
    #[serde(default)]
    pub opaque: Vec<String>,
    /// Metadata defaults for every entry.
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Per-path metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, MetaSpec>,
    /// Add entries for parent directories the layer does not describe (root, 0755). Default:
    /// true for `gantry layer` (unless `--on-base`); in a project, true only for a layer that is
    /// the first layer of a scratch image wherever it is used, since on a base such entries
    /// would replace the base's own directories (`/tmp` 1777 would become 0755).
    pub parents: Option<bool>,
    /// Metadata taken from the sources on disk: `mode`, `owner`, `mtime` (default none).
    #[serde(default)]
    pub preserve: Vec<String>,
    /// `gzip`, `zstd` or `none`.
    pub compression: Option<String>,
    /// Compression level.
    pub level: Option<i32>,
    /// An existing tar (plain, gzip or zstd) to use as the layer.
    pub tar: Option<String>,
    /// Recompress `tar` with `compression` instead of keeping its bytes.
    pub recompress: Option<bool>,
    /// An arbitrary file to use as the blob (an OCI artifact layer).
    pub file: Option<String>,
    /// The media type of `file`, or an override for tar layers.
    pub media_type: Option<String>,
    /// Descriptor annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// A file of `KEY=VALUE` lines with more annotations.
    pub annotations_file: Option<String>,
    /// The history line's `created_by` (default `gantry layer`).
    pub created_by: Option<String>,
    /// The history line's comment.
    pub comment: Option<String>,
}

/// A directory source: a path, or a path with filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    /// The source directory.
    pub src: String,
    /// Only entries matching one of these globs (directories come along as parents).
    pub include: Vec<String>,
    /// Entries matching one of these globs are left out (a matching directory with its contents).
    pub exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirTable {
    src: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

impl<'de> Deserialize<'de> for DirSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DirSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a directory path or a table { src, include, exclude }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DirSpec, E> {
                Ok(DirSpec {
                    src: v.to_owned(),
                    include: Vec::new(),
                    exclude: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DirSpec, A::Error> {
                let t = DirTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DirSpec {
                    src: t.src,
                    include: t.include,
                    exclude: t.exclude,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What a spec turns into once resolved against a base directory.
#[derive(Debug, Clone)]
pub enum LayerSource {
    /// Entries to write as a new tar.
    Recipe(Recipe),
    /// An existing tar.
    Tar {
        /// Its path.
        path: PathBuf,
        /// Keep or recompress.
        how: TarImport,
    },
    /// An arbitrary file used as a blob.
    Artifact {
        /// Its path.
        path: PathBuf,
        /// Its media type.
        media_type: String,
    },
}

/// A resolved layer: its source, compressor, annotations and history text.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// Where the bytes come from.
    pub source: LayerSource,
    /// The compressor for new tars (and recompression).
    pub compressor: Compressor,
    /// A media type that overrides the computed one.
    pub media_type: Option<String>,
    /// Descriptor annotations.
    pub annotations: BTreeMap<String, String>,
    /// History `created_by`.
    pub created_by: String,
    /// History comment.
    pub comment: Option<String>,
}

/// One step of a field path inside a layer spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A table key (`files`, `/app/x`).
    Key(String),
    /// An array index (`whiteouts[2]`).
    Index(usize),
}

/// A problem [`LayerSpec::check`] found, and the field it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// The field path inside the spec (`["files", "/app/x"]`); empty for the whole spec.
    pub field: Vec<Field>,
    /// What is wrong.
    pub message: String,
}

fn key(k: &str) -> Field {
    Field::Key(k.to_owned())
}

impl LayerSpec {
    /// Checks everything that can be checked without walking directory trees: alternatives,
    /// compression, media types, image paths, metadata values, globs, and that every named
    /// source exists and has the right type. Returns every problem with its field.
    pub fn check(&self, base_dir: &Path) -> Vec<SpecProblem> {
        let mut out = Vec::new();
        let mut bad = |field: Vec<Field>, message: String| out.push(SpecProblem { field, message });
        let has_entries = !(self.files.is_empty()
            && self.dirs.is_empty()
            && self.content.is_empty()
            && self.symlinks.is_empty()
            && self.hardlinks.is_empty()
            && self.empty_dirs.is_empty()
            && self.whiteouts.is_empty()
            && self.opaque.is_empty());
        if [has_entries, self.tar.is_some(), self.file.is_some()]
            .iter()
            .filter(|&&k| k)
            .count()
            > 1
        {
            bad(
                vec![],
                "entries (files, dirs, …), `tar` and `file` are alternatives; give one".into(),
            );
        }
        if self.recompress.is_some() && self.tar.is_none() {
            bad(
                vec![key("recompress")],
                "`recompress` applies only to a `tar` layer".into(),
            );
        }
        if self.file.is_some() && self.media_type.is_none() {
            bad(
                vec![key("file")],
                "a `file` layer needs a `media-type`".into(),
            );
        }
        if let Err(e) = Compressor::parse(self.compression.as_deref().unwrap_or("gzip"), self.level)
        {
            let f = if self.compression.is_some() {
                "compression"
            } else {
                "level"
            };
            bad(vec![key(f)], e.to_string());
        }
        if let Some(mt) = &self.media_type
            && let Err(r) = gantry_oci::validate_media_type(mt)
        {
            bad(vec![key("media-type")], r);
        }
        match Preserve::parse(&self.preserve) {
            Err(e) => bad(vec![key("preserve")], e.to_string()),
            Ok(p) => {
                let d = &self.defaults;
                for (kept, set, what) in [
                    (p.mode, d.mode.is_some() || d.dir_mode.is_some(), "mode"),
                    (p.owner, d.uid.is_some() || d.gid.is_some(), "owner"),
                    (p.mtime, d.mtime.is_some(), "mtime"),
                ] {
                    if kept && set {
                        bad(
                            vec![key("preserve")],
                            format!(
                                "the {what} is both preserved from the sources and set by defaults; choose one"
                            ),
                        );
                    }
                }
            }
        }
        if let Err(e) = Defaults::from_spec(&self.defaults, 0) {
            bad(vec![key("defaults")], e.to_string());
        }

        // Every image path given (the keys of metadata too) must parse and have no `.wh.`
        // component: in a layer that would be a whiteout (see `check_not_whiteout`).
        let path_ok = |s: &str| match ImagePath::parse(s) {
            Err(e) => Some(e.to_string()),
            Ok(p) => p.whiteout_component().map(|c| {
                format!(
                    "the name {:?} starts with \".wh.\", which a layer reads as a whiteout \
                         (it would delete files of lower layers); to delete files, use \
                         whiteouts or opaque",
                    String::from_utf8_lossy(c)
                )
            }),
        };
        // `Want::File`: a regular file (files entries); `Want::Stream`: anything readable but a
        // directory (a tar may come from a pipe); `Want::Dir`: a directory.
        #[derive(PartialEq)]
        enum Want {
            File,
            Stream,
            Dir,
        }
        let source = |rel: &str, want: Want| -> Option<String> {
            let p = base_dir.join(rel);
            let m = match std::fs::metadata(&p) {
                Err(e) => return Some(format!("cannot read {}: {e}", p.display())),
                Ok(m) => m,
            };
            match want {
                Want::Dir if !m.is_dir() => Some(format!("{} is not a directory", p.display())),
                Want::File | Want::Stream if m.is_dir() => Some(format!(
                    "{} is a directory; add it as a directory tree (dirs) instead",
                    p.display()
                )),
                Want::File if !m.is_file() => {
                    Some(format!("{} is not a regular file", p.display()))
                }
                _ => None,
            }
        };
        for (dest, src) in &self.files {
            let f = vec![key("files"), key(dest)];
            if let Some(e) = path_ok(dest).or_else(|| source(src, Want::File)) {
                bad(f, e);
            }
        }
        for (dest, d) in &self.dirs {
            let f = vec![key("dirs"), key(dest)];
            let glob = TreeFilter::new(&d.include, &d.exclude)
                .err()
                .map(|e| e.to_string());
            if let Some(e) = path_ok(dest).or_else(|| source(&d.src, Want::Dir)).or(glob) {
                bad(f, e);
            }
        }
        for (section, map) in [("content", &self.content), ("symlinks", &self.symlinks)] {
            for dest in map.keys() {
                if let Some(e) = path_ok(dest) {
                    bad(vec![key(section), key(dest)], e);
                }
            }
        }
        for (dest, target) in &self.hardlinks {
            if let Some(e) = path_ok(dest).or_else(|| path_ok(target)) {
                bad(vec![key("hardlinks"), key(dest)], e);
            }
        }
        for (section, list) in [
            ("empty-dirs", &self.empty_dirs),
            ("whiteouts", &self.whiteouts),
            ("opaque", &self.opaque),
        ] {
            for (i, p) in list.iter().enumerate() {
                if let Some(e) = path_ok(p) {
                    bad(vec![key(section), Field::Index(i)], e);
                }
            }
        }
        for (path, m) in &self.metadata {
            let e = path_ok(path).or_else(|| m.validate(path).err().map(|e| e.to_string()));
            if let Some(e) = e {
                bad(vec![key("metadata"), key(path)], e);
            }
        }
        if let Some(t) = &self.tar
            && let Some(e) = source(t, Want::Stream)
        {
            bad(vec![key("tar")], e);
        }
        if let Some(f) = &self.file
            && let Some(e) = source(f, Want::Stream)
        {
            bad(vec![key("file")], e);
        }
        if let Some(f) = &self.annotations_file
            && let Err(e) = read_kv_file(&base_dir.join(f))
        {
            bad(vec![key("annotations-file")], e.to_string());
        }
        out
    }

    /// Parses a spec file: TOML, or JSON when the name ends in `.json`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Source {
            path: path.to_owned(),
            source,
        })?;
        let what = path.display().to_string();
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| Error::Spec {
                what,
                reason: e.to_string(),
            })
        } else {
            toml::from_str(&text).map_err(|e| Error::Spec {
                what,
                reason: e.to_string(),
            })
        }
    }

    /// Resolves the spec: relative sources are taken from `base_dir`; `mtime` is the fallback
    /// time (`SOURCE_DATE_EPOCH`, else 0). `what` names the spec in errors. Every source is
    /// checked here, before any layer work starts.
    pub fn plan(&self, base_dir: &Path, mtime: i64, what: &str) -> Result<LayerPlan, Error> {
        if let Some(p) = self.check(base_dir).into_iter().next() {
            let field: Vec<String> = p
                .field
                .iter()
                .map(|f| match f {
                    Field::Key(k) => k.clone(),
                    Field::Index(i) => format!("[{i}]"),
                })
                .collect();
            let reason = if field.is_empty() {
                p.message
            } else {
                format!("{}: {}", field.join("."), p.message)
            };
            return Err(Error::Spec {
                what: what.to_owned(),
                reason,
            });
        }
        self.plan_checked(base_dir, mtime)
    }

    /// [`LayerSpec::plan`] for a spec that already passed [`LayerSpec::check`] (a project
    /// checks every layer when it loads).
    pub fn plan_checked(&self, base_dir: &Path, mtime: i64) -> Result<LayerPlan, Error> {
        let compressor =
            Compressor::parse(self.compression.as_deref().unwrap_or("gzip"), self.level)?;
        let resolve = |p: &str| base_dir.join(p);

        let source = if let Some(t) = &self.tar {
            let path = resolve(t);
            let how = if self.recompress == Some(true) {
                TarImport::Recompress(compressor)
            } else {
                TarImport::Keep
            };
            LayerSource::Tar { path, how }
        } else if let Some(f) = &self.file {
            LayerSource::Artifact {
                path: resolve(f),
                media_type: self.media_type.clone().expect("checked above"),
            }
        } else {
            LayerSource::Recipe(self.recipe(base_dir, mtime)?)
        };

        let mut annotations = self.annotations.clone();
        if let Some(f) = &self.annotations_file {
            let path = resolve(f);
            for (k, v) in read_kv_file(&path)? {
                annotations.entry(k).or_insert(v);
            }
        }
        Ok(LayerPlan {
            source,
            compressor,
            media_type: self.media_type.clone(),
            annotations,
            created_by: self
                .created_by
                .clone()
                .unwrap_or_else(|| "gantry layer".to_owned()),
            comment: self.comment.clone(),
        })
    }

    fn recipe(&self, base_dir: &Path, mtime: i64) -> Result<Recipe, Error> {
        let defaults = Defaults::from_spec(&self.defaults, mtime)?;
        let preserve = Preserve::parse(&self.preserve)?;
        let mut b = RecipeBuilder::new(defaults, self.parents.unwrap_or(true));
        b.preserve(preserve);
        for (dest, src) in &self.files {
            b.add_file(ImagePath::parse(dest)?, &base_dir.join(src))?;
        }
        for (dest, d) in &self.dirs {
            let filter = TreeFilter::new(&d.include, &d.exclude)?;
            b.add_tree(ImagePath::parse(dest)?, &base_dir.join(&d.src), &filter)?;
        }
        for (dest, text) in &self.content {
            b.add_content(ImagePath::parse(dest)?, text.as_bytes())?;
        }
        for (dest, target) in &self.symlinks {
            b.add_symlink(ImagePath::parse(dest)?, target.as_bytes())?;
        }
        for (dest, target) in &self.hardlinks {
            b.add_hardlink(ImagePath::parse(dest)?, ImagePath::parse(target)?)?;
        }
        for d in &self.empty_dirs {
            b.add_empty_dir(ImagePath::parse(d)?)?;
        }
        for w in &self.whiteouts {
            b.add_whiteout(ImagePath::parse(w)?)?;
        }
        for o in &self.opaque {
            b.add_opaque(ImagePath::parse(o)?)?;
        }
        for (path, m) in &self.metadata {
            let p = ImagePath::parse(path)?;
            b.set_metadata(p, m.validate(path)?)?;
        }
        b.build()
    }
}

/// Reads `KEY=VALUE` lines (blank lines and `#` comments skipped), as rules_img's
/// `annotations_file`.
pub fn read_kv_file(path: &Path) -> Result<Vec<(String, String)>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Source {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| Error::Spec {
            what: format!("{}:{}", path.display(), n + 1),
            reason: "expected KEY=VALUE".to_owned(),
        })?;
        out.push((k.trim().to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_brief_example() {
        let spec: LayerSpec = toml::from_str(
            r#"
files = { "/app/server" = "target/release/server" }
dirs = { "/app/static" = "web/dist", "/app/docs" = { src = "docs", exclude = ["*.tmp"] } }
symlinks = { "/usr/bin/server" = "/app/server" }
defaults = { mode = "0644", uid = 1000, gid = 1000 }
metadata."/app/server" = { mode = "0755" }
"#,
        )
        .unwrap();
        assert_eq!(spec.dirs["/app/docs"].exclude, ["*.tmp"]);
        assert_eq!(spec.dirs["/app/static"].src, "web/dist");
    }

    #[test]
    fn unknown_keys_are_errors_with_location() {
        let e = toml::from_str::<LayerSpec>("fiels = {}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fiels") && e.contains("line 1"), "{e}");
        let e = toml::from_str::<LayerSpec>(r#"dirs = { "/a" = { src = "x", exlude = [] } }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exlude"), "{e}");
    }

    #[test]
    fn alternatives_are_exclusive() {
        let spec: LayerSpec = toml::from_str(
            r#"tar = "x.tar"
content = { "/a" = "b" }"#,
        )
        .unwrap();
        assert!(spec.plan(Path::new("."), 0, "t").is_err());
        let spec: LayerSpec = toml::from_str(r#"file = "x.json""#).unwrap();
        assert!(
            spec.plan(Path::new("."), 0, "t")
                .unwrap_err()
                .to_string()
                .contains("media-type")
        );
        let spec: LayerSpec = toml::from_str(r#"compression = "lz4""#).unwrap();
        assert!(spec.plan(Path::new("."), 0, "t").is_err());
    }
}
