//! Image configs. Fields gantry does not model (Docker's `Healthcheck`, `OnBuild`,
//! `container_config`, …) are kept in `extra` maps so that building on a base never drops them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::{self, MAX_CONFIG_SIZE};
use crate::{Digest, Error};

/// An image config (`application/vnd.oci.image.config.v1+json`, or Docker's when read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Execution parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
    /// One entry per layer (and per empty-layer step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields gantry does not model, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Execution parameters of a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `user`, `uid`, `user:group`, …
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `port/proto` keys with empty-object values.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, EmptyObject>>,
    /// `KEY=value` entries.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volume paths with empty-object values.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, EmptyObject>>,
    /// Working directory.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    /// Fields gantry does not model (`Healthcheck`, `OnBuild`, `Shell`, `ArgsEscaped`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `{}` in `ExposedPorts` and `Volumes`. Any object is accepted when reading; `{}` is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for EmptyObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Docker writes `{}`; tolerate null too.
        let _ = serde::de::IgnoredAny::deserialize(d)?;
        Ok(EmptyObject)
    }
}

/// The root filesystem: `type` is always `layers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl RootFs {
    /// An empty `layers` rootfs.
    pub fn new() -> Self {
        RootFs {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

impl Default for RootFs {
    fn default() -> Self {
        Self::new()
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The command or tool that made the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True for entries that added no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

impl ImageConfig {
    /// A config for an empty image of the given platform.
    pub fn new(os: &str, architecture: &str) -> Self {
        ImageConfig {
            created: None,
            author: None,
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: None,
            os_features: None,
            variant: None,
            config: None,
            rootfs: RootFs::new(),
            history: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Parses and checks a config blob.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, Error> {
        let c: ImageConfig = json::parse_strict(bytes, what, MAX_CONFIG_SIZE)?;
        if c.rootfs.kind != "layers" {
            return Err(Error::invalid(
                what,
                format!("rootfs.type is {:?}, expected \"layers\"", c.rootfs.kind),
            ));
        }
        Ok(c)
    }

    /// The number of history entries that stand for a layer.
    pub fn layer_history_count(&self) -> usize {
        self.history
            .iter()
            .filter(|h| h.empty_layer != Some(true))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unknown_fields_of_docker_configs() {
        let doc = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Entrypoint":null,"Healthcheck":{"Test":["CMD","true"],"Interval":30000000000},"ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":[]},"container_config":{"Hostname":"x"},"docker_version":"20.10"}"#;
        let c = ImageConfig::parse(doc, "config").unwrap();
        let cc = c.config.as_ref().unwrap();
        assert!(cc.extra.contains_key("Healthcheck"));
        assert!(c.extra.contains_key("container_config"));
        assert_eq!(cc.entrypoint, None);
        let out = String::from_utf8(crate::json::to_canonical_vec(&c)).unwrap();
        assert!(
            out.contains(r#""Healthcheck":{"Interval":30000000000,"Test":["CMD","true"]}"#),
            "{out}"
        );
        assert!(out.contains(r#""ExposedPorts":{"80/tcp":{}}"#), "{out}");
        assert!(out.contains(r#""docker_version":"20.10""#));
    }

    #[test]
    fn rejects_non_layers_rootfs() {
        let doc =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"other","diff_ids":[]}}"#;
        assert!(ImageConfig::parse(doc, "config").is_err());
    }
}
