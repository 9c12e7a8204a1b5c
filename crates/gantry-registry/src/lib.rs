//! A synchronous OCI distribution client (on `reqwest::blocking`).
//!
//! - [`Client`]: one per process; builds an HTTP client per registry on first use, verifies TLS
//!   against the system roots plus per-registry CAs ([`RegistryConfig`]), learns each
//!   registry's auth scheme (Basic or Bearer tokens, cached per scope) from its first 401, and
//!   retries idempotent requests with jittered backoff that honours `Retry-After`.
//! - [`Repo`]: manifests ([`Repo::get_manifest`], [`Repo::head_manifest`],
//!   [`Repo::put_manifest`]), blobs ([`Repo::head_blob`], [`Repo::get_blob`] → a resuming,
//!   verifying [`BlobReader`]), uploads and cross-repository mounts, tags.
//! - Credentials: [`CredentialSource`], implemented by [`AuthFiles`] (skopeo's and docker's
//!   files and credential helpers), [`StaticCredentials`] and [`NoCredentials`]; [`login`] and
//!   [`logout`] write auth files. Secrets are [`Secret`]s, which never print.
//! - [`parse_challenges`] reads `WWW-Authenticate`; [`redact_url`] is how URLs appear in errors
//!   and logs.
//!
//! Every body read is bounded: manifests at 4 MiB, tokens and error documents at 1 MiB, blobs
//! at their descriptor's size. Every request is bounded in time too: a small document's by
//! [`RegistryConfig::request_timeout`] (connect, headers and body), a blob's by
//! [`RegistryConfig::blob_deadline`] of the bytes it moves; see [`Error::Timeout`]. This crate
//! never prints; it logs
//! method, redacted URL and status with `tracing::debug!`, never headers or secrets.
//!
//! # Where credentials go
//!
//! - An `Authorization` header is attached only to requests whose origin (scheme, host, port)
//!   is the registry's own. Upload `Location`s and redirects elsewhere get none, and a 401 from
//!   another origin is never answered with credentials (CVE-2020-15157).
//! - Redirects are followed up to 10 hops by reqwest, which drops `Authorization`, `Cookie`
//!   and `Proxy-Authorization` on any change of scheme, host or port; our policy refuses
//!   HTTPS→HTTP downgrades and a public origin sending us to a private or link-local address.
//! - A Bearer challenge's realm gets the registry's credentials (Basic, or an identity token as
//!   an OAuth2 refresh token) even on another host, because the registry announced it: this is
//!   docker's behaviour and what Docker Hub (`auth.docker.io`), GHCR and ECR rely on. The realm
//!   must be HTTPS unless the registry itself is configured insecure, and a public registry may
//!   not point it at a private address.
//! - A secure registry is only ever contacted over HTTPS with verified certificates; an insecure
//!   one is tried over HTTPS (any certificate) first, then plain HTTP.

mod blob;
mod challenge;
mod client;
mod config;
mod credentials;
mod error;
mod redact;
mod repo;
mod retry;
mod secret;

pub use blob::BlobReader;
pub use challenge::{Challenge, parse_challenges};
pub use client::{Client, MAX_REDIRECTS, MAX_SMALL_BODY};
pub use config::{
    DEFAULT_CERT_DIRS, DEFAULT_MIN_RATE, DEFAULT_REQUEST_TIMEOUT, DOCKER_HUB_HOST, RegistryConfig,
};
pub use credentials::{
    AuthFiles, CredentialSource, DEFAULT_HELPER_TIMEOUT, NoCredentials, StaticCredentials,
    default_auth_file, login, logout,
};
pub use error::{Error, Result};
pub use redact::redact_url;
pub use repo::{
    ACCEPT_MANIFESTS, MONOLITHIC_UPLOAD_MAX, Manifest, Repo, UPLOAD_CHUNK, UPLOAD_CHUNK_MAX,
};
pub use retry::{MAX_DELAY, parse_retry_after};
pub use secret::{Credentials, Secret};
