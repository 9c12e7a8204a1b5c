//! Client configuration: insecure registries, extra CA roots, timeouts and retries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Where `docker` and `containers/image` look for per-registry CA certificates
/// (`<dir>/<host[:port]>/*.crt`).
pub const DEFAULT_CERT_DIRS: &[&str] = &["/etc/containers/certs.d", "/etc/docker/certs.d"];

/// The registry host that requests for `docker.io` go to.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// The default [`RegistryConfig::request_timeout`]: two minutes for a manifest, token, error
/// document or tag list (at most 4 MiB, usually a few KiB), and the floor of blob deadlines.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The default [`RegistryConfig::min_rate`]: 32 KiB/s (256 kbit/s), the rate uploads were
/// already given time for.
pub const DEFAULT_MIN_RATE: u64 = 32 << 10;

/// How the client talks to registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`, as in image references) that may be reached over
    /// plain HTTP or with an unverified TLS certificate. HTTPS is still tried first.
    pub insecure: BTreeSet<String>,
    /// Extra CA root files (PEM) per registry, added to the system roots.
    pub ca_files: BTreeMap<String, Vec<PathBuf>>,
    /// Directories holding `<host[:port]>/*.crt` CA roots; [`DEFAULT_CERT_DIRS`] by default.
    pub cert_dirs: Vec<PathBuf>,
    /// An explicit auth file, which replaces the search of [`crate::AuthFiles::discover`].
    pub auth_file: Option<PathBuf>,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// How many times an idempotent request is retried after a transient failure.
    pub retries: u32,
    /// The base of the exponential backoff between retries.
    pub retry_base: Duration,
    /// Timeout for establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Timeout for the response headers and for each read of a blob download (a stalled
    /// connection, which is resumed). Never longer than [`RegistryConfig::request_timeout`].
    pub read_timeout: Duration,
    /// The deadline of one request for a small document (manifest, token, error document, tag
    /// list, upload session): connecting, headers and body together. A request that reaches
    /// it fails with [`Error::Timeout`] and is not retried. Also the floor of blob deadlines
    /// (see [`RegistryConfig::blob_deadline`]).
    pub request_timeout: Duration,
    /// The slowest transfer, in bytes per second, that a blob request is given time for.
    pub min_rate: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: BTreeSet::new(),
            ca_files: BTreeMap::new(),
            cert_dirs: DEFAULT_CERT_DIRS.iter().map(PathBuf::from).collect(),
            auth_file: None,
            user_agent: concat!("gantry/", env!("CARGO_PKG_VERSION")).to_owned(),
            retries: 4,
            retry_base: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            min_rate: DEFAULT_MIN_RATE,
        }
    }
}

impl RegistryConfig {
    /// Whether `registry` was configured as insecure.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.contains(registry)
    }

    /// The deadline of one request moving `bytes` of a blob (a download from its resume point,
    /// an upload or one chunk of it): [`RegistryConfig::request_timeout`] plus the time
    /// `bytes` take at [`RegistryConfig::min_rate`].
    pub fn blob_deadline(&self, bytes: u64) -> Duration {
        let rate = self.min_rate.max(1);
        let secs = bytes / rate;
        let frac = Duration::from_nanos(
            u64::try_from(u128::from(bytes % rate) * 1_000_000_000 / u128::from(rate)).unwrap_or(0),
        );
        self.request_timeout
            .saturating_add(Duration::from_secs(secs))
            .saturating_add(frac)
    }

    /// How long a stalled read (or a response's headers) of a blob download may take.
    pub(crate) fn stall_timeout(&self) -> Duration {
        self.read_timeout.min(self.request_timeout)
    }

    /// The extra CA roots of `registry`: its [`RegistryConfig::ca_files`] and every `*.crt` in
    /// `<cert_dir>/<registry>/`, in a stable order.
    pub(crate) fn extra_roots(&self, registry: &str) -> Result<Vec<reqwest::Certificate>> {
        let mut files: Vec<PathBuf> = self.ca_files.get(registry).cloned().unwrap_or_default();
        for dir in &self.cert_dirs {
            let d = dir.join(registry);
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::Certificate {
                        path: d,
                        reason: e.to_string(),
                    });
                }
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            found.sort();
            files.extend(found);
        }
        let mut certs = Vec::new();
        for path in files {
            let pem = std::fs::read(&path).map_err(|e| Error::Certificate {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let parsed =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Certificate {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if parsed.is_empty() {
                return Err(Error::Certificate {
                    path,
                    reason: "no PEM certificate in the file".to_owned(),
                });
            }
            certs.extend(parsed);
        }
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_dirs_are_read_per_host() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RegistryConfig {
            cert_dirs: vec![tmp.path().to_owned()],
            ..RegistryConfig::default()
        };
        assert!(cfg.extra_roots("reg.example:5000").unwrap().is_empty());
        std::fs::create_dir_all(tmp.path().join("reg.example:5000")).unwrap();
        std::fs::write(tmp.path().join("reg.example:5000/ca.crt"), "not a cert").unwrap();
        let err = cfg.extra_roots("reg.example:5000").unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
        assert!(cfg.extra_roots("other.example").unwrap().is_empty());
    }

    #[test]
    fn blob_deadlines_scale_with_size_from_a_floor() {
        let cfg = RegistryConfig::default();
        assert_eq!(cfg.blob_deadline(0), DEFAULT_REQUEST_TIMEOUT);
        // 1 GiB at 32 KiB/s: 32768 s on top of the floor.
        assert_eq!(
            cfg.blob_deadline(1 << 30),
            DEFAULT_REQUEST_TIMEOUT + Duration::from_secs(32_768)
        );
        let cfg = RegistryConfig {
            request_timeout: Duration::from_secs(1),
            min_rate: 1000,
            ..RegistryConfig::default()
        };
        assert_eq!(cfg.blob_deadline(1500), Duration::from_millis(2500));
        assert_eq!(cfg.stall_timeout(), Duration::from_secs(1));
        let zero = RegistryConfig {
            min_rate: 0,
            ..RegistryConfig::default()
        };
        assert!(zero.blob_deadline(u64::MAX) > Duration::from_secs(1 << 40));
    }
}
