use crate::Digest;

/// Errors of the OCI vocabulary crate. Each variant names the input at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A digest string that is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// The rejected text (truncated).
        input: String,
        /// Why.
        reason: String,
    },
    /// Content that does not hash to the digest it was expected to have.
    #[error("digest mismatch for {what}: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// The blob (path, reference or descriptor).
        what: String,
        /// The digest we were told.
        expected: Digest,
        /// The digest of the bytes we saw.
        actual: Digest,
    },
    /// Content whose length differs from the descriptor's size.
    #[error("size mismatch for {what}: expected {expected} bytes, {}", match actual {
        Some(n) => format!("got {n}"),
        None => "got more".to_owned(),
    })]
    SizeMismatch {
        /// The blob.
        what: String,
        /// The size we were told.
        expected: u64,
        /// The size we saw; `None` when the source was longer than expected.
        actual: Option<u64>,
    },
    /// An image reference that does not parse.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference {
        /// The rejected text.
        input: String,
        /// Why.
        reason: String,
    },
    /// A platform string such as `linux/amd64/v8` that does not parse.
    #[error("invalid platform {input:?}: {reason}")]
    InvalidPlatform {
        /// The rejected text.
        input: String,
        /// Why.
        reason: String,
    },
    /// A timestamp that is neither RFC 3339 nor epoch seconds, or out of range.
    #[error("invalid time {input:?}: {reason}")]
    InvalidTime {
        /// The rejected text.
        input: String,
        /// Why.
        reason: String,
    },
    /// A document larger than its cap.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The document.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// A document that is not valid JSON of the expected shape.
    #[error("{what} is not valid: {source}")]
    Json {
        /// The document.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A blob that cannot be read from where it is ([`crate::BlobRead`]); the error names
    /// the place and the blob.
    #[error(transparent)]
    Blob(Box<dyn std::error::Error + Send + Sync>),
    /// A document that parses but breaks a rule of the image spec.
    #[error("{what}: {reason}")]
    Invalid {
        /// The document.
        what: String,
        /// The broken rule.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
