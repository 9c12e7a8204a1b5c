/// Errors of image assembly. Each names the base, layer or setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A base image that is not usable (bad config, mismatched layers).
    #[error("base {base}: {reason}")]
    BadBase {
        /// The base.
        base: String,
        /// Why.
        reason: String,
    },
    /// A config setting with a bad value.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why.
        reason: String,
    },
    /// A layer that cannot go into this image.
    #[error("layer {layer}: {reason}")]
    BadLayer {
        /// The layer (descriptor file or digest).
        layer: String,
        /// Why.
        reason: String,
    },
    /// An OCI vocabulary error.
    #[error(transparent)]
    Oci(#[from] gantry_oci::Error),
}
