//! Where gantry's images come from and go to, in one model for every transport.
//!
//! The design follows go-containerregistry: an image is an immutable view whatever holds it
//! ([`SourceImage`], its `v1.Image`), opened by one source per transport (its `layout`,
//! `tarball` and `remote` packages: [`ImageSource`] for an OCI layout directory, an
//! oci-archive, a docker-archive and a registry repository), changed only by building a new
//! image on it (`gantry_image::Image::from_source`, its `mutate`), and written by one function
//! for every destination ([`Transfer::write`]: a layout, either archive, or a registry push).
//!
//! ```text
//! ImageRef::parse ─► Transfer::source ─► ImageSource ─► Transfer::image ─► SourceImage
//!   (oci:, oci-archive:,   (layout dir, oci-archive,      manifest for a platform (indexes
//!    docker-archive:,       docker-archive, registry)     followed), config read strictly,
//!    docker://)                                           each layer's BlobSource
//!                          SourceImage ─► Transfer::write(dest) ─► layout | archive | push
//!                          SourceImage ─► Image::from_source ─► edits ─► Built ─► SourceImage
//! ```
//!
//! Every blob has one [`BlobSource`]: the store, a local place ([`gantry_oci::BlobRead`]: a
//! layout or an archive, verified when read), or a registry repository (fetched into the
//! store, verified, when a sink needs its bytes; mounted or streamed by a push). A shallow
//! layout leaves out its base's layers; its `base.name` annotation is followed only for
//! layouts gantry recorded writing ([`mark_shallow`]) or when told to (`follow_base_name`).
//!
//! The crate never prints; progress goes through [`Reporter`].

mod blobs;
mod error;
mod image_ref;
mod parallel;
mod push;
mod recompress;
mod registry;
mod shallow;
mod source;
mod write;

use gantry_registry::Client;
use gantry_store::Store;

pub use error::Error;
pub use gantry_image::{BlobSource, SourceImage};
pub use image_ref::{ImageRef, TRANSPORTS};
pub use push::{BlobCounts, PARALLEL_TRANSFERS, PushOutcome};
pub use shallow::mark_shallow;
pub use source::ImageSource;
pub use write::Completeness;

/// Where the progress of blob transfers goes.
pub trait Reporter: Sync {
    /// A progress sink for moving a blob of `total` bytes, labelled `label`.
    fn blob_progress(&self, label: &str, total: u64) -> Box<dyn gantry_layer::Progress>;
}

/// A [`Reporter`] that reports nothing.
pub struct NoReporter;

impl Reporter for NoReporter {
    fn blob_progress(&self, _: &str, _: u64) -> Box<dyn gantry_layer::Progress> {
        Box::new(gantry_layer::NoProgress)
    }
}

/// What moving images needs: the store (where registry blobs are fetched to, and which
/// records the shallow layouts gantry wrote), a registry client (needed only when a registry
/// is involved) and where progress goes.
#[derive(Clone, Copy)]
pub struct Transfer<'a> {
    /// The blob store.
    pub store: &'a Store,
    /// The registry client, if one was set up.
    pub client: Option<&'a Client>,
    /// Where progress goes.
    pub reporter: &'a dyn Reporter,
    /// Fetch what a layout lacks from the registry its `base.name` annotation names, even when
    /// gantry did not write that layout (`--follow-base-name`).
    pub follow_base_name: bool,
}

impl<'a> Transfer<'a> {
    /// The registry client, or an error saying that `what` needs one.
    fn client(&self, what: &str) -> Result<&'a Client, Error> {
        self.client.ok_or_else(|| {
            error::image_error(
                what,
                "it is in a registry, and no registry client was set up",
            )
        })
    }
}
