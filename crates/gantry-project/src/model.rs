//! The project model: a validated project, its settings and its targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_image::ConfigEdits;
use gantry_layer::LayerSpec;
use gantry_oci::{Digest, Platform, Reference};
use gantry_transport::ImageRef;

use crate::schema::AutoLabelsSpec;
use crate::spans::{KeyPath, LineCol, SpanIndex};
use crate::{Lock, PROJECT_FILE};

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
    pub(crate) spans: SpanIndex,
}

impl Project {
    /// Finds the project file: `file` if given, else `gantry.toml` in `dir`.
    pub fn locate(dir: &Path, file: Option<&Path>) -> PathBuf {
        match file {
            Some(f) => dir.join(f),
            None => dir.join(PROJECT_FILE),
        }
    }

    /// The line and column of a key, for errors found while building.
    pub fn locate_key(&self, key: &KeyPath) -> LineCol {
        self.spans.locate(key)
    }
}

/// The largest `registry-timeout` (a day): past that a deadline protects nothing.
pub const MAX_REGISTRY_TIMEOUT: u64 = 86_400;

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
    /// `registry-timeout`: seconds, 1 to [`MAX_REGISTRY_TIMEOUT`].
    pub registry_timeout: Option<u64>,
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
    pub(crate) fn derive_all() -> Self {
        AutoLabels {
            revision: LabelValue::Derive,
            ref_name: LabelValue::Off,
            created: LabelValue::Derive,
        }
    }

    pub(crate) fn apply(mut self, spec: &AutoLabelsSpec) -> Self {
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
