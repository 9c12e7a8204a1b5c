//! The serde schema of `gantry.toml`. Unknown keys are errors everywhere.

use std::collections::BTreeMap;
use std::fmt;

use gantry_layer::LayerSpec;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Project-wide settings.
    #[serde(default)]
    pub settings: SettingsSpec,
    /// `[layer.NAME]` tables.
    #[serde(default)]
    pub layer: BTreeMap<String, LayerSpec>,
    /// `[image.NAME]` tables.
    #[serde(default)]
    pub image: BTreeMap<String, ImageSpec>,
    /// `[pull.NAME]` tables.
    #[serde(default)]
    pub pull: BTreeMap<String, PullSpec>,
    /// `[step.NAME]` tables.
    #[serde(default)]
    pub step: BTreeMap<String, StepSpec>,
}

/// `[step.NAME]`: a command run inside an image whose outputs (or filesystem diff) become a
/// layer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepSpec {
    /// `scratch`, `oci:DIR[:TAG]`, an image target or a pull target (default `scratch`).
    pub base: Option<String>,
    /// Layer or step targets applied on top of the base, in order.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Platform to pick from an index base.
    pub platform: Option<String>,
    /// The command (argv).
    pub run: Option<Vec<String>>,
    /// Shell text, run with `/bin/sh -c`.
    pub script: Option<String>,
    /// Environment, merged by key with the base's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the base's, else `/`).
    pub workdir: Option<String>,
    /// User (`uid[:gid]` or a name from the image's /etc/passwd; default: the base's).
    pub user: Option<String>,
    /// Network access (default false: loopback only).
    #[serde(default)]
    pub network: bool,
    /// Read-only inputs from the project: `{ "/src" = "path" }`.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Paths of the final filesystem that make up the layer.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Globs left out of `outputs`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `outputs` (default) or `diff`: the whole filesystem change, deletions as whiteouts.
    pub capture: Option<String>,
    /// Compression of the layer (default: the project's).
    pub compression: Option<String>,
    /// Compression level.
    pub level: Option<i32>,
}

/// `[pull.NAME]`: a base image in a registry, pinned by digest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PullSpec {
    /// `[registry/]repository`, without tag or digest (`docker.io/library/python`).
    pub repository: String,
    /// A tag, pinned to a digest by `gantry lock` in gantry.lock.
    pub tag: Option<String>,
    /// A digest (wins over `tag`, which then only documents it).
    pub digest: Option<String>,
    /// Named digests: targets `NAME#variant` (Pants `oci_pull_images`).
    #[serde(default)]
    pub variants: BTreeMap<String, String>,
    /// Platform to pick from an index (default: the image's, else this machine's).
    pub platform: Option<String>,
    /// Never send credentials (public images).
    #[serde(default)]
    pub anonymous: bool,
}

/// `[settings]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SettingsSpec {
    /// Default compression of layers (`gzip`, `zstd`, `none`).
    pub compression: Option<String>,
    /// Default compression level.
    pub level: Option<i32>,
    /// Epoch seconds, or `"git"` for the last commit's time. `SOURCE_DATE_EPOCH` overrides.
    pub source_date_epoch: Option<EpochSpec>,
    /// Where images are written (default `gantry-out`), relative to the project.
    pub output_dir: Option<String>,
    /// Auto labels for every image (default off).
    pub auto_labels: Option<AutoLabelsSpec>,
    /// Default platform of images (default: this machine's).
    pub platform: Option<String>,
    /// Registries (`host[:port]`) that may be reached over plain HTTP or with unverified TLS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM files) per registry host, relative to the project.
    #[serde(default)]
    pub registry_ca: BTreeMap<String, String>,
    /// Seconds a registry request for a manifest or token may take, and the floor of blob
    /// requests' deadlines. `--registry-timeout` overrides.
    pub registry_timeout: Option<i64>,
    /// Leave registry-only base layers out of output layouts (default false: layouts are
    /// complete, so every OCI tool reads them).
    pub shallow: Option<bool>,
    /// A registry repository read for remote cache entries.
    pub cache_from: Option<String>,
    /// A registry repository read and written for remote cache entries.
    pub cache_to: Option<String>,
    /// Cap on the decompressed size of one layer read from a tar or an image (`"64GiB"`).
    pub max_layer_size: Option<String>,
    /// Cap on the decompressed size of all the layers of one image (`"256GiB"`).
    pub max_image_size: Option<String>,
    /// Cap on decompressed / compressed bytes of a layer past its first 64 MiB (1000).
    pub max_ratio: Option<u64>,
}

/// `source-date-epoch`: seconds or `"git"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EpochSpec {
    /// Seconds since the epoch.
    Seconds(i64),
    /// A word (`git`).
    Word(String),
}

/// `[image.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSpec {
    /// `scratch`, `oci:DIR[:TAG]` or the name of another image target (default `scratch`).
    pub base: Option<String>,
    /// Layer targets, base first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// `os/arch[/variant]`: picks from an index base, and is the platform of a scratch image.
    pub platform: Option<String>,
    /// Entrypoint argv.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd argv.
    pub cmd: Option<Vec<String>>,
    /// Environment, merged by key with the base's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User.
    pub user: Option<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Exposed ports.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Volumes.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Stop signal.
    pub stop_signal: Option<String>,
    /// OS of the config.
    pub os: Option<String>,
    /// Architecture of the config.
    pub architecture: Option<String>,
    /// Variant of the config.
    pub variant: Option<String>,
    /// Author.
    pub author: Option<String>,
    /// Manifest annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// A file of `KEY=VALUE` annotation lines.
    pub annotations_file: Option<String>,
    /// Auto labels (overrides `[settings]`).
    pub auto_labels: Option<AutoLabelsSpec>,
    /// Registry references to publish to (`registry/repo:tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The tag inside the output layout (default `latest`).
    pub tag: Option<String>,
    /// The output layout directory (default `<output-dir>/<name>`).
    pub output: Option<String>,
    /// Build an OCI artifact of this type instead of a runnable image.
    pub artifact_type: Option<String>,
    /// Leave base layers that are only in a registry out of the output layout (default: the
    /// `[settings]` value, else false). Pushing and `gantry export` fetch or mount them.
    pub shallow: Option<bool>,
}

/// `auto-labels = true | false | { revision = "…", ref-name = "none", created = "git" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoLabelsSpec {
    /// All on or all off.
    Switch(bool),
    /// On, with some labels overridden or switched off.
    Table(AutoLabelsTable),
}

/// The table form of [`AutoLabelsSpec`]. Each value is a fixed label value, `git` to take it
/// from git, or `none` to leave the label out; a missing key means the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AutoLabelsTable {
    /// `org.opencontainers.image.revision` (default: git HEAD).
    pub revision: Option<String>,
    /// `org.opencontainers.image.ref.name` (default: none; `git`: the git branch).
    pub ref_name: Option<String>,
    /// `org.opencontainers.image.created` (default: SOURCE_DATE_EPOCH; `git`: last commit).
    pub created: Option<String>,
}

impl<'de> Deserialize<'de> for AutoLabelsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AutoLabelsSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table { revision, ref-name, created }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AutoLabelsSpec, E> {
                Ok(AutoLabelsSpec::Switch(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AutoLabelsSpec, A::Error> {
                AutoLabelsTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(AutoLabelsSpec::Table)
            }
        }
        d.deserialize_any(V)
    }
}
