//! `gantry.toml`: a project's layers and images, validated before any work.
//!
//! [`Project::load`] parses the file (unknown keys and wrong types are errors), then checks what
//! TOML cannot: target names and references, cycles between images, label keys, ports, paths,
//! platforms, tags, and that every input file exists. Every problem is reported at once, each
//! as `file:line:column: key: message`. The result is a set of typed targets and a dependency
//! graph; [`Project::plan`] gives the targets to build for a request, dependencies first.
//!
//! Target kinds live in one namespace, so a reference is just a name. Pull targets and build
//! steps slot in as new [`TargetRef`] kinds with their own dependency edges.

mod error;
mod lock;
pub mod schema;
pub mod spans;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gantry_image::{ConfigEdits, normalize_port, validate_label_key};
use gantry_layer::LayerSpec;
use gantry_layer::spec::Field;
use gantry_oci::{Digest, Platform, Reference};
use gantry_transport::ImageRef;

pub use error::{Diagnostic, Error};
pub use lock::{LOCK_FILE, Lock, LockedPull};
use schema::{AutoLabelsSpec, EpochSpec, ImageSpec, ProjectFile, PullSpec, StepSpec};
pub use spans::{KeyPath, LineCol, Seg, SpanIndex};

/// The default project file name.
pub const PROJECT_FILE: &str = "gantry.toml";
/// The default output directory.
pub const DEFAULT_OUTPUT_DIR: &str = "gantry-out";

/// A validated project.
#[derive(Debug)]
pub struct Project {
    /// The project file (absolute).
    pub file: PathBuf,
    /// Its directory: relative paths are taken from here.
    pub dir: PathBuf,
    /// Settings.
    pub settings: Settings,
    /// Layer targets by name.
    pub layers: BTreeMap<String, LayerTarget>,
    /// Image targets by name.
    pub images: BTreeMap<String, ImageTarget>,
    /// Pull targets by name.
    pub pulls: BTreeMap<String, PullTarget>,
    /// Step targets by name.
    pub steps: BTreeMap<String, StepTarget>,
    /// The lock (gantry.lock next to the project file; empty if there is none).
    pub lock: Lock,
    spans: SpanIndex,
}

/// Validated `[settings]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SOURCE_DATE_EPOCH` from the file (the environment variable wins).
    pub source_date_epoch: Option<Epoch>,
    /// Where images go (absolute).
    pub output_dir: PathBuf,
    /// Default platform of images.
    pub platform: Option<Platform>,
    /// Registries reachable over plain HTTP or unverified TLS.
    pub insecure_registries: Vec<String>,
    /// Extra CA files (absolute) per registry host.
    pub registry_ca: BTreeMap<String, PathBuf>,
    /// Remote cache repository to read (`cache-from`).
    pub cache_from: Option<Reference>,
    /// Remote cache repository to read and write (`cache-to`).
    pub cache_to: Option<Reference>,
    /// `max-layer-size` in bytes (tar imports, unpacking for steps).
    pub max_layer_size: Option<u64>,
    /// `max-image-size` in bytes.
    pub max_image_size: Option<u64>,
    /// `max-ratio`.
    pub max_ratio: Option<u64>,
}

/// A `[pull.NAME]` target: an image in a registry.
#[derive(Debug, Clone)]
pub struct PullTarget {
    /// The name.
    pub name: String,
    /// `registry/repository`, without tag or digest.
    pub repository: Reference,
    /// What it is pinned by.
    pub source: PullSource,
    /// Platform to pick from an index.
    pub platform: Option<Platform>,
    /// Never send credentials.
    pub anonymous: bool,
    /// Where its table starts.
    pub at: LineCol,
}

/// How a pull target names its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullSource {
    /// A digest (with the tag it came from, if given, for documentation).
    Digest(Digest, Option<String>),
    /// A tag, pinned by the lock file.
    Tag(String),
    /// Named digests; targets are `NAME#variant`.
    Variants(BTreeMap<String, Digest>),
}

/// What a pull target (or one variant of it) resolves to for a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// A digest, from the project or the lock.
    Digest(Digest),
    /// A tag the lock does not pin (yet).
    Unpinned(String),
}

/// Where the build time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epoch {
    /// Fixed seconds.
    Seconds(i64),
    /// The last commit's time.
    Git,
}

/// A label setting of auto labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelValue {
    /// Derived (from git, or the build time).
    Derive,
    /// Derived from git even for `created` (the last commit's time).
    Git,
    /// Left out.
    Off,
    /// This value.
    Fixed(String),
}

/// Resolved auto labels of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoLabels {
    /// `org.opencontainers.image.revision`.
    pub revision: LabelValue,
    /// `org.opencontainers.image.ref.name`.
    pub ref_name: LabelValue,
    /// `org.opencontainers.image.created`.
    pub created: LabelValue,
}

impl AutoLabels {
    /// All off.
    pub fn off() -> Self {
        AutoLabels {
            revision: LabelValue::Off,
            ref_name: LabelValue::Off,
            created: LabelValue::Off,
        }
    }

    /// Whether any label is produced.
    pub fn any(&self) -> bool {
        *self != AutoLabels::off()
    }

    /// What `auto-labels = true` gives: the labels that depend only on the commit (revision,
    /// created). The branch (`ref.name`) is opt-in (`ref-name = "git"`): the same commit would
    /// get another digest on another branch or in a detached CI checkout.
    fn derive_all() -> Self {
        AutoLabels {
            revision: LabelValue::Derive,
            ref_name: LabelValue::Off,
            created: LabelValue::Derive,
        }
    }

    fn apply(mut self, spec: &AutoLabelsSpec) -> Self {
        match spec {
            AutoLabelsSpec::Switch(false) => AutoLabels::off(),
            AutoLabelsSpec::Switch(true) => {
                if !self.any() {
                    self = AutoLabels::derive_all();
                }
                self
            }
            AutoLabelsSpec::Table(t) => {
                if !self.any() {
                    self = AutoLabels::derive_all();
                }
                let value = |v: &Option<String>, current: LabelValue| match v.as_deref() {
                    None => current,
                    Some("none") => LabelValue::Off,
                    Some("git") => LabelValue::Git,
                    Some(s) => LabelValue::Fixed(s.to_owned()),
                };
                AutoLabels {
                    revision: value(&t.revision, self.revision),
                    ref_name: value(&t.ref_name, self.ref_name),
                    created: value(&t.created, self.created),
                }
            }
        }
    }
}

/// A `[layer.NAME]` target.
#[derive(Debug, Clone)]
pub struct LayerTarget {
    /// The name.
    pub name: String,
    /// The spec, with project defaults (compression) applied.
    pub spec: LayerSpec,
    /// Where its table starts.
    pub at: LineCol,
}

/// What an image is built on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    /// Nothing.
    Scratch,
    /// An image at a transport reference (paths absolute): a layout directory, an
    /// oci-archive, a docker-archive, or a registry image pinned by digest.
    Fixed(ImageRef),
    /// Another image target.
    Image(String),
    /// A pull target, or one variant of it (`debian#bookworm`).
    Pull(String),
}

/// An `[image.NAME]` target.
#[derive(Debug, Clone)]
pub struct ImageTarget {
    /// The name.
    pub name: String,
    /// The base.
    pub base: BaseRef,
    /// Layer targets, base first.
    pub layers: Vec<String>,
    /// Platform requested (picks from an index base; the platform of a scratch image).
    pub platform: Option<Platform>,
    /// Config edits.
    pub edits: ConfigEdits,
    /// Manifest annotations (inline ones win over the file's).
    pub annotations: BTreeMap<String, String>,
    /// Auto labels.
    pub auto_labels: AutoLabels,
    /// Registry references to publish to.
    pub tags: Vec<Reference>,
    /// The tag inside the output layout.
    pub layout_tag: String,
    /// The output layout directory (absolute).
    pub output: PathBuf,
    /// For artifacts.
    pub artifact_type: Option<String>,
    /// Whether registry-only base layers stay out of the output layout.
    pub shallow: bool,
    /// Where its table starts.
    pub at: LineCol,
}

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCommand {
    /// An argv.
    Run(Vec<String>),
    /// Shell text for `/bin/sh -c`.
    Script(String),
}

impl StepCommand {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            StepCommand::Run(a) => a.clone(),
            StepCommand::Script(s) => vec!["/bin/sh".to_owned(), "-c".to_owned(), s.clone()],
        }
    }
}

/// What a step's layer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// These paths of the final filesystem, minus the excludes.
    Outputs {
        /// Absolute paths in the image.
        paths: Vec<String>,
        /// Globs left out.
        exclude: Vec<String>,
    },
    /// Every change to the filesystem, deletions as whiteouts.
    Diff,
}

/// A `[step.NAME]` target: a command run in an image, captured as a layer.
#[derive(Debug, Clone)]
pub struct StepTarget {
    /// The name.
    pub name: String,
    /// The image it runs in.
    pub base: BaseRef,
    /// Layer or step targets on top of the base.
    pub layers: Vec<String>,
    /// Platform to pick from an index base.
    pub platform: Option<Platform>,
    /// The command.
    pub command: StepCommand,
    /// Environment entries (merged by key with the base's).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Network access.
    pub network: bool,
    /// Read-only inputs: image path → absolute project path.
    pub inputs: BTreeMap<String, PathBuf>,
    /// What the layer holds.
    pub capture: Capture,
    /// Compression of the layer.
    pub compressor: gantry_layer::Compressor,
    /// Where its table starts.
    pub at: LineCol,
}

/// A target of the graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetRef {
    /// A layer.
    Layer(String),
    /// An image.
    Image(String),
    /// A pull target (`NAME` or `NAME#variant`).
    Pull(String),
    /// A build step.
    Step(String),
}

impl TargetRef {
    /// The target's name.
    pub fn name(&self) -> &str {
        match self {
            TargetRef::Layer(n) | TargetRef::Image(n) | TargetRef::Pull(n) | TargetRef::Step(n) => {
                n
            }
        }
    }
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRef::Layer(n) => write!(f, "layer.{n}"),
            TargetRef::Image(n) => write!(f, "image.{n}"),
            TargetRef::Pull(n) => write!(f, "pull.{n}"),
            TargetRef::Step(n) => write!(f, "step.{n}"),
        }
    }
}

fn valid_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

struct Checker<'a> {
    file: &'a Path,
    spans: &'a SpanIndex,
    problems: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn report(&mut self, key: KeyPath, message: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: self.file.to_owned(),
            at: self.spans.locate(&key),
            key: Some(key),
            message: message.into(),
        });
    }
}

fn kp(segs: &[&str]) -> KeyPath {
    KeyPath::new(segs.iter().map(|s| Seg::from(*s)))
}

/// Whether the layer `name` stands alone: it is the first layer of a scratch image (or step)
/// wherever it is used, or it is used nowhere. Only such a layer carries its implicit parent
/// directories (root, 0755); a layer that goes on top of a base or of other layers leaves out
/// the directories it does not describe, so the base's `/tmp` (1777) or `/home/app` (0700,
/// owned by 1000) keep their metadata. A layer used both ways leaves them out: extractors create a
/// missing parent as root 0755 anyway, while an entry would change an existing directory.
fn stands_alone(
    name: &str,
    images: &BTreeMap<String, ImageTarget>,
    steps: &BTreeMap<String, StepTarget>,
) -> bool {
    let uses = images
        .values()
        .map(|i| (&i.base, &i.layers))
        .chain(steps.values().map(|s| (&s.base, &s.layers)));
    let mut alone = true;
    for (base, layers) in uses {
        for (i, l) in layers.iter().enumerate() {
            if l == name {
                alone &= i == 0 && *base == BaseRef::Scratch;
            }
        }
    }
    alone
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
        let settings = check_settings(&mut c, &parsed, &dir);
        let mut pulls = BTreeMap::new();
        for (name, spec) in &parsed.pull {
            if let Some(p) = check_pull(&mut c, name, spec, &parsed) {
                pulls.insert(name.clone(), p);
            }
        }
        let mut layers = BTreeMap::new();
        for (name, spec) in &parsed.layer {
            let at_key = kp(&["layer", name]);
            if !valid_name(name) {
                c.report(
                    at_key.clone(),
                    "target names start with a letter or digit and use letters, digits, '-', '_', '.'",
                );
            }
            let mut spec = spec.clone();
            if spec.compression.is_none() && spec.tar.is_none() && spec.file.is_none() {
                spec.compression.clone_from(&parsed.settings.compression);
                if spec.level.is_none() {
                    spec.level = parsed.settings.level;
                }
            }
            for p in spec.check(&dir) {
                let mut key = at_key.clone();
                for f in p.field {
                    key = match f {
                        Field::Key(k) => key.join(Seg::Key(k)),
                        Field::Index(i) => key.join(i),
                    };
                }
                c.report(key, p.message);
            }
            layers.insert(
                name.clone(),
                LayerTarget {
                    name: name.clone(),
                    spec,
                    at: spans.locate(&at_key),
                },
            );
        }
        let mut images = BTreeMap::new();
        for (name, spec) in &parsed.image {
            let at_key = kp(&["image", name]);
            if !valid_name(name) {
                c.report(
                    at_key.clone(),
                    "target names start with a letter or digit and use letters, digits, '-', '_', '.'",
                );
            }
            if parsed.layer.contains_key(name) {
                c.report(
                    at_key.clone(),
                    format!("the name {name:?} is also a layer; target names must be unique"),
                );
            }
            let image = check_image(&mut c, name, spec, &parsed, &settings, &dir);
            images.insert(name.clone(), image);
        }
        let mut steps = BTreeMap::new();
        for (name, spec) in &parsed.step {
            if let Some(step) = check_step(&mut c, name, spec, &parsed, &settings, &dir) {
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

    /// Finds the project file: `file` if given, else `gantry.toml` in `dir`.
    pub fn locate(dir: &Path, file: Option<&Path>) -> PathBuf {
        match file {
            Some(f) => dir.join(f),
            None => dir.join(PROJECT_FILE),
        }
    }

    fn pull_ref_ok(&self, name: &str) -> bool {
        let (base, variant) = split_variant(name);
        match (self.pulls.get(base).map(|p| &p.source), variant) {
            (Some(PullSource::Variants(v)), Some(var)) => v.contains_key(var),
            (Some(PullSource::Variants(_)), None) | (None, _) => false,
            (Some(_), variant) => variant.is_none(),
        }
    }

    /// The pull target of a `NAME` or `NAME#variant` reference, and what it resolves to now
    /// (the project's digest, the variant's, the lock's pin, or an unpinned tag).
    pub fn pin(&self, reference: &str) -> Option<(&PullTarget, Pin)> {
        let (name, variant) = split_variant(reference);
        let pull = self.pulls.get(name)?;
        let pin = match (&pull.source, variant) {
            (PullSource::Digest(d, _), None) => Pin::Digest(d.clone()),
            (PullSource::Variants(v), Some(var)) => Pin::Digest(v.get(var)?.clone()),
            (PullSource::Tag(t), None) => {
                match self.lock.pinned(name, &pull.repository.name(), t) {
                    Some(d) => Pin::Digest(d.clone()),
                    None => Pin::Unpinned(t.clone()),
                }
            }
            _ => return None,
        };
        Some((pull, pin))
    }

    /// The line and column of a key, for errors found while building.
    pub fn locate_key(&self, key: &KeyPath) -> LineCol {
        self.spans.locate(key)
    }

    /// The direct dependencies of a target.
    pub fn deps(&self, t: &TargetRef) -> Vec<TargetRef> {
        match t {
            TargetRef::Layer(_) | TargetRef::Pull(_) => Vec::new(),
            TargetRef::Image(n) => {
                let img = &self.images[n];
                self.base_and_layers(&img.base, &img.layers)
            }
            TargetRef::Step(n) => {
                let step = &self.steps[n];
                self.base_and_layers(&step.base, &step.layers)
            }
        }
    }

    fn base_and_layers(&self, base: &BaseRef, layers: &[String]) -> Vec<TargetRef> {
        let mut d: Vec<TargetRef> = Vec::new();
        match base {
            BaseRef::Image(b) => d.push(TargetRef::Image(b.clone())),
            BaseRef::Pull(p) => d.push(TargetRef::Pull(p.clone())),
            BaseRef::Scratch | BaseRef::Fixed(_) => {}
        }
        for l in layers {
            let r = self.layer_ref(l);
            if !d.contains(&r) {
                d.push(r);
            }
        }
        d
    }

    /// The target of a name in a `layers` list: a layer or a step.
    pub fn layer_ref(&self, name: &str) -> TargetRef {
        if self.steps.contains_key(name) {
            TargetRef::Step(name.to_owned())
        } else {
            TargetRef::Layer(name.to_owned())
        }
    }

    /// The targets to build for `requested` names (every image when empty), with all their
    /// dependencies, each listed after its dependencies.
    pub fn plan(&self, requested: &[String]) -> Result<Vec<TargetRef>, Error> {
        let roots: Vec<TargetRef> = if requested.is_empty() {
            self.images.keys().cloned().map(TargetRef::Image).collect()
        } else {
            requested
                .iter()
                .map(|n| self.target(n))
                .collect::<Result<_, _>>()?
        };
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for r in roots {
            self.visit(&r, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, t: &TargetRef, seen: &mut BTreeSet<TargetRef>, order: &mut Vec<TargetRef>) {
        if !seen.insert(t.clone()) {
            return;
        }
        for d in self.deps(t) {
            self.visit(&d, seen, order);
        }
        order.push(t.clone());
    }

    /// The target with this name.
    pub fn target(&self, name: &str) -> Result<TargetRef, Error> {
        if self.layers.contains_key(name) {
            Ok(TargetRef::Layer(name.to_owned()))
        } else if self.images.contains_key(name) {
            Ok(TargetRef::Image(name.to_owned()))
        } else if self.steps.contains_key(name) {
            Ok(TargetRef::Step(name.to_owned()))
        } else if self.pull_ref_ok(name) {
            Ok(TargetRef::Pull(name.to_owned()))
        } else {
            let known: Vec<&str> = self
                .images
                .keys()
                .chain(self.layers.keys())
                .chain(self.steps.keys())
                .chain(self.pulls.keys())
                .map(String::as_str)
                .collect();
            Err(Error::UnknownTarget {
                file: self.file.clone(),
                name: name.to_owned(),
                known: known.join(", "),
            })
        }
    }
}

/// Splits `NAME#variant`.
pub fn split_variant(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('#') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    }
}

fn check_pull(
    c: &mut Checker<'_>,
    name: &str,
    spec: &PullSpec,
    parsed: &ProjectFile,
) -> Option<PullTarget> {
    let at = kp(&["pull", name]);
    if !valid_name(name) {
        c.report(
            at.clone(),
            "target names start with a letter or digit and use letters, digits, '-', '_', '.'",
        );
    }
    if parsed.layer.contains_key(name) || parsed.image.contains_key(name) {
        c.report(
            at.clone(),
            format!("the name {name:?} is also a layer or image; target names must be unique"),
        );
    }
    let repository = match Reference::parse(&spec.repository) {
        Ok(r) if r.tag().is_some() || r.digest().is_some() => {
            c.report(
                at.join("repository"),
                "give the repository alone; put a tag in `tag` and a digest in `digest`",
            );
            return None;
        }
        Ok(r) => r,
        Err(e) => {
            c.report(at.join("repository"), e.to_string());
            return None;
        }
    };
    if let Some(t) = &spec.tag
        && let Err(e) = gantry_oci::validate_tag(t)
    {
        c.report(at.join("tag"), e);
    }
    let digest = spec.digest.as_ref().and_then(|d| match Digest::parse(d) {
        Ok(d) => Some(d),
        Err(e) => {
            c.report(at.join("digest"), e.to_string());
            None
        }
    });
    let mut variants = BTreeMap::new();
    for (v, d) in &spec.variants {
        if !valid_name(v) {
            c.report(
                at.join("variants").join(Seg::Key(v.clone())),
                "variant names follow target names",
            );
        }
        match Digest::parse(d) {
            Ok(d) => {
                variants.insert(v.clone(), d);
            }
            Err(e) => c.report(at.join("variants").join(Seg::Key(v.clone())), e.to_string()),
        }
    }
    let source = match (&spec.tag, digest, spec.variants.is_empty()) {
        (_, Some(d), true) => PullSource::Digest(d, spec.tag.clone()),
        (Some(t), None, true) if spec.digest.is_none() => PullSource::Tag(t.clone()),
        (None, None, false) => PullSource::Variants(variants),
        (_, _, false) => {
            c.report(
                at.join("variants"),
                "`variants` replace `tag` and `digest`; give one",
            );
            return None;
        }
        (None, None, true) if spec.digest.is_none() => {
            c.report(
                at.clone(),
                "a pull target needs a `tag`, a `digest` or `variants`",
            );
            return None;
        }
        _ => return None,
    };
    let platform = spec
        .platform
        .as_ref()
        .and_then(|p| match Platform::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.report(at.join("platform"), e.to_string());
                None
            }
        });
    Some(PullTarget {
        name: name.to_owned(),
        repository,
        source,
        platform,
        anonymous: spec.anonymous,
        at: c.spans.locate(&at),
    })
}

fn check_settings(c: &mut Checker<'_>, parsed: &ProjectFile, dir: &Path) -> Settings {
    let s = &parsed.settings;
    if let Err(e) =
        gantry_layer::Compressor::parse(s.compression.as_deref().unwrap_or("gzip"), s.level)
    {
        c.report(kp(&["settings", "compression"]), e.to_string());
    }
    let source_date_epoch = match &s.source_date_epoch {
        None => None,
        Some(EpochSpec::Seconds(n)) if *n >= 0 => Some(Epoch::Seconds(*n)),
        Some(EpochSpec::Word(w)) if w == "git" => Some(Epoch::Git),
        Some(other) => {
            c.report(
                kp(&["settings", "source-date-epoch"]),
                format!("expected non-negative seconds or \"git\", found {other:?}"),
            );
            None
        }
    };
    let platform = s.platform.as_ref().and_then(|p| match Platform::parse(p) {
        Ok(p) => Some(p),
        Err(e) => {
            c.report(kp(&["settings", "platform"]), e.to_string());
            None
        }
    });
    let mut cache_repo = |key: &str, value: &Option<String>| {
        value.as_ref().and_then(|v| match Reference::parse(v) {
            Ok(r) if r.tag().is_none() && r.digest().is_none() => Some(r),
            Ok(_) => {
                c.report(
                    kp(&["settings", key]),
                    "give a repository (host/path), without a tag or digest",
                );
                None
            }
            Err(e) => {
                c.report(kp(&["settings", key]), e.to_string());
                None
            }
        })
    };
    let cache_from = cache_repo("cache-from", &s.cache_from);
    let cache_to = cache_repo("cache-to", &s.cache_to);
    let mut size = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .and_then(|v| match gantry_layer::limits::parse_size(v) {
                Ok(0) => {
                    c.report(kp(&["settings", key]), "must be more than 0");
                    None
                }
                Ok(n) => Some(n),
                Err(e) => {
                    c.report(kp(&["settings", key]), e);
                    None
                }
            })
    };
    let max_layer_size = size("max-layer-size", &s.max_layer_size);
    let max_image_size = size("max-image-size", &s.max_image_size);
    let max_ratio = match s.max_ratio {
        Some(0) => {
            c.report(kp(&["settings", "max-ratio"]), "must be more than 0");
            None
        }
        r => r,
    };
    Settings {
        cache_from,
        cache_to,
        max_layer_size,
        max_image_size,
        max_ratio,
        source_date_epoch,
        output_dir: dir.join(s.output_dir.as_deref().unwrap_or(DEFAULT_OUTPUT_DIR)),
        platform,
        insecure_registries: s.insecure_registries.clone(),
        registry_ca: s
            .registry_ca
            .iter()
            .map(|(h, p)| (h.clone(), dir.join(p)))
            .collect(),
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

fn check_image(
    c: &mut Checker<'_>,
    name: &str,
    spec: &ImageSpec,
    parsed: &ProjectFile,
    settings: &Settings,
    dir: &Path,
) -> ImageTarget {
    let at = kp(&["image", name]);
    let base = check_base(c, &at, spec.base.as_deref(), parsed, dir);
    check_layer_list(c, &at, &spec.layers, parsed);
    let platform = match &spec.platform {
        Some(p) => match Platform::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.report(at.join("platform"), e.to_string());
                None
            }
        },
        None => settings.platform.clone(),
    };
    for k in spec.env.keys() {
        if let Err(e) = gantry_image::parse_env(&format!("{k}=")) {
            c.report(at.join("env").join(Seg::Key(k.clone())), e.to_string());
        }
    }
    for k in spec.labels.keys() {
        if let Err(e) = validate_label_key(k) {
            c.report(at.join("labels").join(Seg::Key(k.clone())), e.to_string());
        }
    }
    for (i, p) in spec.ports.iter().enumerate() {
        if let Err(e) = normalize_port(p) {
            c.report(at.join("ports").join(i), e.to_string());
        }
    }
    let edits = ConfigEdits {
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone(),
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        user: spec.user.clone(),
        workdir: spec.workdir.clone(),
        ports: spec.ports.clone(),
        volumes: spec.volumes.clone(),
        labels: spec.labels.clone(),
        stop_signal: spec.stop_signal.clone(),
        os: spec.os.clone(),
        architecture: spec.architecture.clone(),
        variant: spec.variant.clone(),
        author: spec.author.clone(),
    };
    // Fields not checked one by one above (volumes, workdir, user, stop signal).
    for (field, check) in [
        (
            "volumes",
            ConfigEdits {
                volumes: edits.volumes.clone(),
                ..Default::default()
            },
        ),
        (
            "workdir",
            ConfigEdits {
                workdir: edits.workdir.clone(),
                ..Default::default()
            },
        ),
        (
            "user",
            ConfigEdits {
                user: edits.user.clone(),
                ..Default::default()
            },
        ),
        (
            "stop-signal",
            ConfigEdits {
                stop_signal: edits.stop_signal.clone(),
                ..Default::default()
            },
        ),
    ] {
        if let Err(e) = check.validate() {
            c.report(at.join(field), e.to_string());
        }
    }
    let mut annotations = BTreeMap::new();
    if let Some(f) = &spec.annotations_file {
        match gantry_layer::spec::read_kv_file(&dir.join(f)) {
            Ok(kv) => annotations.extend(kv),
            Err(e) => c.report(at.join("annotations-file"), e.to_string()),
        }
    }
    for (k, v) in &spec.annotations {
        if k.is_empty() {
            c.report(at.join("annotations"), "annotation keys must not be empty");
        }
        annotations.insert(k.clone(), v.clone());
    }
    let mut tags = Vec::new();
    for (i, t) in spec.tags.iter().enumerate() {
        match Reference::parse(t) {
            Ok(r) if r.digest().is_some() => c.report(
                at.join("tags").join(i),
                "a tag to publish to cannot carry a digest",
            ),
            Ok(r) => tags.push(r),
            Err(e) => c.report(at.join("tags").join(i), e.to_string()),
        }
    }
    let layout_tag = spec.tag.clone().unwrap_or_else(|| "latest".to_owned());
    if let Err(e) = gantry_oci::validate_ref_name(&layout_tag) {
        c.report(at.join("tag"), e);
    }
    if let Some(t) = &spec.artifact_type {
        if let Err(e) = gantry_oci::validate_media_type(t) {
            c.report(at.join("artifact-type"), e);
        }
        if !matches!(base, BaseRef::Scratch) {
            c.report(
                at.join("base"),
                "an artifact (artifact-type) has no base image",
            );
        }
    }
    let mut auto_labels = AutoLabels::off();
    if let Some(s) = &parsed.settings.auto_labels {
        auto_labels = auto_labels.apply(s);
    }
    if let Some(s) = &spec.auto_labels {
        auto_labels = auto_labels.apply(s);
    }
    ImageTarget {
        name: name.to_owned(),
        base,
        layers: spec.layers.clone(),
        platform,
        edits,
        annotations,
        auto_labels,
        tags,
        layout_tag,
        output: match &spec.output {
            Some(o) => dir.join(o),
            None => settings.output_dir.join(name),
        },
        artifact_type: spec.artifact_type.clone(),
        shallow: spec.shallow.or(parsed.settings.shallow).unwrap_or(false),
        at: c.spans.locate(&at),
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

fn check_step(
    c: &mut Checker<'_>,
    name: &str,
    spec: &StepSpec,
    parsed: &ProjectFile,
    settings: &Settings,
    dir: &Path,
) -> Option<StepTarget> {
    let at = kp(&["step", name]);
    if !valid_name(name) {
        c.report(
            at.clone(),
            "target names start with a letter or digit and use letters, digits, '-', '_', '.'",
        );
    }
    if parsed.layer.contains_key(name)
        || parsed.image.contains_key(name)
        || parsed.pull.contains_key(name)
    {
        c.report(
            at.clone(),
            format!(
                "the name {name:?} is also a layer, image or pull target; target names must be unique"
            ),
        );
    }
    let base = check_base(c, &at, spec.base.as_deref(), parsed, dir);
    check_layer_list(c, &at, &spec.layers, parsed);
    let platform = match &spec.platform {
        Some(p) => match Platform::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.report(at.join("platform"), e.to_string());
                None
            }
        },
        None => settings.platform.clone(),
    };
    let command = match (&spec.run, &spec.script) {
        (Some(run), None) if !run.is_empty() && !run[0].is_empty() => {
            Some(StepCommand::Run(run.clone()))
        }
        (Some(_), None) => {
            c.report(at.join("run"), "`run` needs at least a program");
            None
        }
        (None, Some(script)) if !script.trim().is_empty() => {
            Some(StepCommand::Script(script.clone()))
        }
        (None, Some(_)) => {
            c.report(at.join("script"), "`script` is empty");
            None
        }
        (Some(_), Some(_)) => {
            c.report(at.join("script"), "give `run` or `script`, not both");
            None
        }
        (None, None) => {
            c.report(
                at.clone(),
                "a step needs `run` (argv) or `script` (shell text)",
            );
            None
        }
    };
    for k in spec.env.keys() {
        if let Err(e) = gantry_image::parse_env(&format!("{k}=")) {
            c.report(at.join("env").join(Seg::Key(k.clone())), e.to_string());
        }
    }
    if let Some(w) = &spec.workdir
        && !w.starts_with('/')
    {
        c.report(at.join("workdir"), "the working directory must be absolute");
    }
    if let Some(u) = &spec.user
        && (u.is_empty() || u.contains(char::is_whitespace))
    {
        c.report(at.join("user"), format!("invalid user {u:?}"));
    }
    let mut inputs = BTreeMap::new();
    for (dest, src) in &spec.inputs {
        let key = at.join("inputs").join(Seg::Key(dest.clone()));
        if let Err(e) = image_path(dest) {
            c.report(key.clone(), e);
            continue;
        }
        let path = dir.join(src);
        if std::fs::symlink_metadata(&path).is_err() {
            c.report(key, format!("{} does not exist", path.display()));
            continue;
        }
        inputs.insert(dest.clone(), path);
    }
    let capture = match spec.capture.as_deref().unwrap_or("outputs") {
        "outputs" => {
            if spec.outputs.is_empty() {
                c.report(
                    at.clone(),
                    "a step needs `outputs` (paths to keep) or `capture = \"diff\"`",
                );
            }
            for (i, o) in spec.outputs.iter().enumerate() {
                if let Err(e) = image_path(o) {
                    c.report(at.join("outputs").join(i), e);
                }
            }
            if let Err(e) = gantry_layer::recipe::TreeFilter::new(&[], &spec.exclude) {
                c.report(at.join("exclude"), e.to_string());
            }
            Capture::Outputs {
                paths: spec.outputs.clone(),
                exclude: spec.exclude.clone(),
            }
        }
        "diff" => {
            if !spec.outputs.is_empty() {
                c.report(
                    at.join("outputs"),
                    "`outputs` and `capture = \"diff\"` exclude each other",
                );
            }
            if !spec.exclude.is_empty() {
                c.report(at.join("exclude"), "`exclude` applies to `outputs` only");
            }
            Capture::Diff
        }
        other => {
            c.report(
                at.join("capture"),
                format!("expected \"outputs\" or \"diff\", found {other:?}"),
            );
            Capture::Diff
        }
    };
    let compression = spec
        .compression
        .as_deref()
        .or(parsed.settings.compression.as_deref())
        .unwrap_or("gzip");
    let compressor =
        match gantry_layer::Compressor::parse(compression, spec.level.or(parsed.settings.level)) {
            Ok(c) => c,
            Err(e) => {
                c.report(at.join("compression"), e.to_string());
                return None;
            }
        };
    Some(StepTarget {
        name: name.to_owned(),
        base,
        layers: spec.layers.clone(),
        platform,
        command: command?,
        env: spec.env.clone(),
        workdir: spec.workdir.clone(),
        user: spec.user.clone(),
        network: spec.network,
        inputs,
        capture,
        compressor,
        at: c.spans.locate(&at),
    })
}

/// An absolute path inside the image, without `..`.
fn image_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?}: paths in the image are absolute"));
    }
    if p.split('/').any(|s| s == "..") || p.contains('\0') {
        return Err(format!("{p:?}: `..` and NUL are not allowed"));
    }
    Ok(())
}

/// Reports every cycle between images and steps (through `base` and `layers`), once, at the
/// first target of the cycle.
fn check_cycles(
    c: &mut Checker<'_>,
    images: &BTreeMap<String, ImageTarget>,
    steps: &BTreeMap<String, StepTarget>,
) {
    // Edges between images and steps only: layers and pulls have no dependencies.
    let node = |n: &str| -> Option<(String, Vec<String>)> {
        let (kind, base, layers) = if let Some(i) = images.get(n) {
            ("image", &i.base, &i.layers)
        } else if let Some(s) = steps.get(n) {
            ("step", &s.base, &s.layers)
        } else {
            return None;
        };
        let mut next = Vec::new();
        if let BaseRef::Image(b) = base {
            next.push(b.clone());
        }
        next.extend(layers.iter().filter(|l| steps.contains_key(*l)).cloned());
        Some((kind.to_owned(), next))
    };
    let mut state: BTreeMap<String, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
    let mut reported = BTreeSet::new();
    let names: Vec<String> = images.keys().chain(steps.keys()).cloned().collect();
    for start in names {
        if state.contains_key(&start) {
            continue;
        }
        // Iterative DFS: (name, its successors, next index).
        let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
        let succ = node(&start).map(|n| n.1).unwrap_or_default();
        state.insert(start.clone(), 1);
        stack.push((start, succ, 0));
        while let Some((name, succ, i)) = stack.last_mut() {
            if *i == succ.len() {
                state.insert(name.clone(), 2);
                stack.pop();
                continue;
            }
            let next = succ[*i].clone();
            *i += 1;
            match state.get(&next) {
                Some(1) => {
                    let pos = stack.iter().position(|(n, _, _)| *n == next).unwrap_or(0);
                    let cycle: Vec<String> =
                        stack[pos..].iter().map(|(n, _, _)| n.clone()).collect();
                    let mut key = cycle.clone();
                    key.sort();
                    if reported.insert(key) {
                        let first = &cycle[0];
                        let kind = node(first).map(|n| n.0).unwrap_or_default();
                        let second = cycle.get(1).unwrap_or(&next);
                        let base = images
                            .get(first)
                            .map(|i| &i.base)
                            .or_else(|| steps.get(first).map(|s| &s.base));
                        let edge = if base == Some(&BaseRef::Image(second.clone())) {
                            "base"
                        } else {
                            "layers"
                        };
                        let mut shown = cycle.clone();
                        shown.push(next.clone());
                        c.report(
                            kp(&[&kind, first, edge]),
                            format!(
                                "targets depend on each other in a cycle: {}",
                                shown.join(" -> ")
                            ),
                        );
                    }
                }
                Some(_) => {}
                None => {
                    let succ = node(&next).map(|n| n.1).unwrap_or_default();
                    state.insert(next.clone(), 1);
                    stack.push((next, succ, 0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
