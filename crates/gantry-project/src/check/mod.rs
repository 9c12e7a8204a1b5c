//! Checking a parsed project file: what TOML cannot check, one module per target kind, every
//! problem collected (with its line and column) before any is reported.

mod image;
mod layer;
mod pull;
mod settings;
mod step;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_oci::Platform;
use gantry_transport::ImageRef;

use crate::graph::{check_cycles, split_variant, stands_alone};
use crate::schema::ProjectFile;
use crate::spans::{KeyPath, LineCol, Seg, SpanIndex};
use crate::{BaseRef, Diagnostic, Error, Lock, Project, Settings};

/// What an invalid target name is told.
const NAME_RULES: &str =
    "target names start with a letter or digit and use letters, digits, '-', '_', '.'";

/// Whether `n` is a valid target (or variant) name.
fn valid_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Collects the problems of one project file, each placed at its key.
pub(crate) struct Checker<'a> {
    file: &'a Path,
    spans: &'a SpanIndex,
    problems: Vec<Diagnostic>,
}

impl Checker<'_> {
    /// Records a problem at `key`.
    pub(crate) fn report(&mut self, key: KeyPath, message: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: self.file.to_owned(),
            at: self.spans.locate(&key),
            key: Some(key),
            message: message.into(),
        });
    }
}

/// The key path of these segments.
pub(crate) fn kp(segs: &[&str]) -> KeyPath {
    KeyPath::new(segs.iter().map(|s| Seg::from(*s)))
}

impl Project {
    /// Loads and validates the project file at `file`.
    pub fn load(file: &Path) -> Result<Self, Error> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Read {
            path: file.clone(),
            source,
        })?;
        Self::from_text(&file, &text)
    }

    /// Parses and validates `text` as the project file `file` (relative paths are taken from its
    /// directory).
    pub fn from_text(file: &Path, text: &str) -> Result<Self, Error> {
        let dir = file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let spans = SpanIndex::new(text);
        let parsed: ProjectFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map_or(LineCol { line: 1, column: 1 }, |s| spans.line_col(s.start));
            Error::Invalid(vec![Diagnostic {
                file: file.to_owned(),
                at,
                key: None,
                message: e.message().trim_end().to_owned(),
            }])
        })?;
        let mut c = Checker {
            file,
            spans: &spans,
            problems: Vec::new(),
        };
        let settings = settings::check_settings(&mut c, &parsed, &dir);
        let mut pulls = BTreeMap::new();
        for (name, spec) in &parsed.pull {
            if let Some(p) = pull::check_pull(&mut c, name, spec, &parsed) {
                pulls.insert(name.clone(), p);
            }
        }
        let mut layers = BTreeMap::new();
        for (name, spec) in &parsed.layer {
            let layer = layer::check_layer(&mut c, name, spec, &parsed, &dir);
            layers.insert(name.clone(), layer);
        }
        let mut images = BTreeMap::new();
        for (name, spec) in &parsed.image {
            let image = image::check_image(&mut c, name, spec, &parsed, &settings, &dir);
            images.insert(name.clone(), image);
        }
        let mut steps = BTreeMap::new();
        for (name, spec) in &parsed.step {
            if let Some(step) = step::check_step(&mut c, name, spec, &parsed, &settings, &dir) {
                steps.insert(name.clone(), step);
            }
        }
        check_cycles(&mut c, &images, &steps);
        for layer in layers.values_mut() {
            if layer.spec.parents.is_none() {
                layer.spec.parents = Some(stands_alone(&layer.name, &images, &steps));
            }
        }
        if !c.problems.is_empty() {
            let mut problems = c.problems;
            problems.sort_by_key(|d| (d.at.line, d.at.column));
            return Err(Error::Invalid(problems));
        }
        let lock = Lock::load(&dir)?;
        Ok(Project {
            file: file.to_owned(),
            dir,
            settings,
            layers,
            images,
            pulls,
            steps,
            lock,
            spans,
        })
    }
}

/// Reports an invalid target name.
fn check_name(c: &mut Checker<'_>, at: &KeyPath, name: &str) {
    if !valid_name(name) {
        c.report(at.clone(), NAME_RULES);
    }
}

/// The `platform` key of an image or a step, else the project's.
fn check_platform(
    c: &mut Checker<'_>,
    at: &KeyPath,
    platform: Option<&String>,
    settings: &Settings,
) -> Option<Platform> {
    match platform {
        Some(p) => match Platform::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.report(at.join("platform"), e.to_string());
                None
            }
        },
        None => settings.platform.clone(),
    }
}

/// Checks the keys of an `env` table of an image or a step.
fn check_env_keys(c: &mut Checker<'_>, at: &KeyPath, env: &BTreeMap<String, String>) {
    for k in env.keys() {
        if let Err(e) = gantry_image::parse_env(&format!("{k}=")) {
            c.report(at.join("env").join(Seg::Key(k.clone())), e.to_string());
        }
    }
}

/// Resolves a `base` key of an image or a step.
fn check_base(
    c: &mut Checker<'_>,
    at: &KeyPath,
    base: Option<&str>,
    parsed: &ProjectFile,
    dir: &Path,
) -> BaseRef {
    match base.unwrap_or("scratch") {
        "scratch" => BaseRef::Scratch,
        b if ImageRef::has_transport(b) => match ImageRef::parse(b, dir) {
            Ok(r) => {
                if let Some(problem) = fixed_base_problem(&r) {
                    c.report(at.join("base"), problem);
                }
                BaseRef::Fixed(r)
            }
            Err(e) => {
                c.report(at.join("base"), e.to_string());
                BaseRef::Scratch
            }
        },
        b if parsed.image.contains_key(b) => BaseRef::Image(b.to_owned()),
        b if parsed.pull.contains_key(split_variant(b).0) => {
            let (name, variant) = split_variant(b);
            let spec = &parsed.pull[name];
            match (spec.variants.is_empty(), variant) {
                (true, None) => {}
                (false, Some(v)) if spec.variants.contains_key(v) => {}
                (false, Some(v)) => c.report(
                    at.join("base"),
                    format!(
                        "pull.{name} has no variant {v:?} (variants: {})",
                        spec.variants.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                (false, None) => c.report(
                    at.join("base"),
                    format!(
                        "pull.{name} has variants; choose one: {}",
                        spec.variants
                            .keys()
                            .map(|v| format!("{name}#{v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                (true, Some(_)) => {
                    c.report(at.join("base"), format!("pull.{name} has no variants"))
                }
            }
            BaseRef::Pull(b.to_owned())
        }
        b if parsed.layer.contains_key(b) || parsed.step.contains_key(b) => {
            c.report(
                at.join("base"),
                format!("{b:?} makes a layer, not an image"),
            );
            BaseRef::Scratch
        }
        b => {
            c.report(
                at.join("base"),
                format!(
                    "unknown base {b:?}: expected \"scratch\", an image or a pull target, or \
                     an image reference ({})",
                    gantry_transport::TRANSPORTS
                ),
            );
            BaseRef::Scratch
        }
    }
}

/// What is wrong with a fixed base, found when the project loads: a layout or archive that is
/// not there, or a registry image named by a tag (a build must not change when the tag
/// moves; a pull target pins it in gantry.lock).
fn fixed_base_problem(r: &ImageRef) -> Option<String> {
    match r {
        ImageRef::Layout { dir, .. } if !dir.join("oci-layout").is_file() => {
            Some(format!("{} is not an OCI image layout", dir.display()))
        }
        ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. }
            if !file.is_file() =>
        {
            Some(format!("{} is not a file", file.display()))
        }
        ImageRef::Registry(reference) if reference.digest().is_none() => Some(format!(
            "{r} names a tag, which can move: pin a digest (docker://{}@sha256:…), or use a \
             [pull.NAME] target, which gantry lock pins",
            reference.name()
        )),
        _ => None,
    }
}

/// Checks that every name in a `layers` list is a layer or a step target.
fn check_layer_list(c: &mut Checker<'_>, at: &KeyPath, layers: &[String], parsed: &ProjectFile) {
    for (i, l) in layers.iter().enumerate() {
        if !parsed.layer.contains_key(l) && !parsed.step.contains_key(l) {
            let hint = if parsed.image.contains_key(l) || parsed.pull.contains_key(l) {
                " (it is an image; use it as a base)".to_owned()
            } else {
                String::new()
            };
            c.report(
                at.join("layers").join(i),
                format!("no layer or step named {l:?}{hint}"),
            );
        }
    }
}
