//! The one error type of the registry client.
//!
//! Every variant names what was at fault: the registry, repository, digest or (redacted) URL.
//! No variant ever holds a credential, a token or an unredacted URL, so printing an error (or
//! its `Debug` form) cannot leak one.

use std::path::PathBuf;

use gantry_oci::Digest;

/// Errors of the registry client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value that cannot be used.
    #[error("invalid registry configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A CA certificate file that cannot be read or parsed.
    #[error("cannot use CA certificates from {}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A registry host, repository name or reference that is not valid.
    #[error("invalid {what} {input:?}: {reason}")]
    InvalidName {
        /// `registry`, `repository` or `reference`.
        what: &'static str,
        /// The rejected text.
        input: String,
        /// Why.
        reason: String,
    },
    /// A request that failed below HTTP (connect, TLS, timeout, broken connection).
    #[error("{method} {url}: {detail}{}", attempts_suffix(*attempts))]
    Http {
        /// The HTTP method.
        method: String,
        /// The URL, redacted.
        url: String,
        /// The transport error, with any URL in it redacted.
        detail: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A request that did not finish within its deadline: a registry that trickles or withholds
    /// its answer (headers or body).
    #[error(
        "{registry}: {what} did not arrive within its deadline of {} ({method} {url}); \
         give a slow registry more time with --registry-timeout SECONDS \
         (GANTRY_REGISTRY_TIMEOUT, or registry-timeout in [settings])",
        show_duration(*deadline)
    )]
    Timeout {
        /// The registry.
        registry: String,
        /// What was asked for: `manifest latest of library/alpine`, `blob sha256:… of x/y`.
        what: String,
        /// The HTTP method.
        method: String,
        /// The URL, redacted.
        url: String,
        /// The deadline that was reached.
        deadline: std::time::Duration,
    },
    /// A response with a status the operation does not accept.
    #[error("{method} {url}: {summary}{}", attempts_suffix(*attempts))]
    Status {
        /// The HTTP method.
        method: String,
        /// The URL, redacted.
        url: String,
        /// The status code.
        status: u16,
        /// `503 Service Unavailable` or the registry's own summary
        /// (`401 UNAUTHORIZED: authentication required`).
        summary: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The registry refused us after we tried the credentials we have (or found none).
    #[error("{registry}: unauthorized: {detail}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The repository of the request, if any.
        repository: Option<String>,
        /// What happened: which credentials were tried and the registry's answer.
        detail: String,
    },
    /// A manifest or blob that the registry does not have.
    #[error("{registry}/{repository}: {what} not found")]
    NotFound {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// `manifest latest`, `blob sha256:…`.
        what: String,
    },
    /// A response that breaks the protocol (missing or bad header, wrong media type…).
    #[error("{registry}/{repository}: invalid response for {what}: {reason}")]
    InvalidResponse {
        /// The registry.
        registry: String,
        /// The repository (empty for registry-wide requests).
        repository: String,
        /// The object or request.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A bounded body (manifest, token, error document) larger than its cap.
    #[error("{what} from {url} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL, redacted.
        url: String,
        /// The document.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// Content that does not hash to the digest it was requested or announced by.
    #[error(
        "digest mismatch for {what} from {registry}/{repository}: expected {expected}, content hashes to {actual}"
    )]
    DigestMismatch {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The object.
        what: String,
        /// The digest asked for (or announced).
        expected: Box<Digest>,
        /// The digest of the bytes received.
        actual: Box<Digest>,
    },
    /// A URL we refuse to contact or to send credentials to (plain-HTTP realm for a secure
    /// registry, private address announced by a public registry, HTTPS→HTTP downgrade).
    #[error("{registry}: refusing {url}: {reason}")]
    Refused {
        /// The registry whose response pointed there.
        registry: String,
        /// The URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// A token request that failed or returned something unusable.
    #[error("{registry}: token from {realm}: {reason}")]
    Token {
        /// The registry.
        registry: String,
        /// The realm, redacted.
        realm: String,
        /// Why.
        reason: String,
    },
    /// A credential helper that is missing, failed, timed out or printed garbage.
    #[error("credential helper docker-credential-{helper} (for {registry}): {reason}")]
    CredentialHelper {
        /// The helper's name (without the `docker-credential-` prefix).
        helper: String,
        /// The registry we asked it about.
        registry: String,
        /// Why.
        reason: String,
    },
    /// An auth file that cannot be read, parsed or written.
    #[error("auth file {}: {reason}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A blob upload that failed.
    #[error("upload of {digest} to {registry}/{repository}: {reason}")]
    Upload {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The blob.
        digest: Digest,
        /// Why (including the underlying error).
        reason: String,
    },
}

/// `120 s`, `2.5 s`.
fn show_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn attempts_suffix(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl Error {
    /// The HTTP status of a [`Error::Status`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
