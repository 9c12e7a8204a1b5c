/// Errors of moving images between transports. Each names the reference, image or blob at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image reference that does not parse, or names nothing usable.
    #[error("{input}: {reason}")]
    InvalidRef {
        /// The reference as given.
        input: String,
        /// Why.
        reason: String,
    },
    /// An image that cannot be used as asked.
    #[error("{what}: {reason}")]
    Image {
        /// The image (its reference) or blob.
        what: String,
        /// Why.
        reason: String,
    },
    /// A blob that could not be fetched from its registry.
    #[error("cannot fetch {what}: {reason}")]
    Fetch {
        /// The blob (registry, repository and digest).
        what: String,
        /// Why.
        reason: String,
    },
    /// An error with what was being done when it happened.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
    /// A store, layout or archive error.
    #[error(transparent)]
    Store(#[from] gantry_store::Error),
    /// A registry error.
    #[error(transparent)]
    Registry(#[from] gantry_registry::Error),
    /// An OCI vocabulary error (documents, digests, verification).
    #[error(transparent)]
    Oci(#[from] gantry_oci::Error),
    /// An image model error (a base that is not runnable, a bad config).
    #[error(transparent)]
    Model(#[from] gantry_image::Error),
    /// A layer error (reading or recompressing a tar).
    #[error(transparent)]
    Layer(#[from] gantry_layer::Error),
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    /// Wraps the error with `context()`.
    fn context_with(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context_with(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::Context {
            context: context(),
            source: Box::new(e.into()),
        })
    }
}

/// An [`Error::Image`].
pub(crate) fn image_error(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Image {
        what: what.into(),
        reason: reason.into(),
    }
}
