//! gantry's local storage, built to survive crashes and concurrent processes.
//!
//! - [`Store`]: the content-addressed blob store under `$GANTRY_HOME` (`blobs/<alg>/<hex>`).
//!   Blobs are written to a temp file while hashed, checked, fsynced, made read-only, renamed
//!   into place without replacing, and the directory is fsynced ([`BlobWriter`]).
//! - Sessions: every open [`Store`] owns a locked `tmp/s-*` directory for its temp files; the
//!   leftovers of dead processes are removed by the next [`Store::open`].
//! - Outputs ([`OutputTemp`]): every output (layout, archive, blob or JSON file) is written to a
//!   temp beside it, named after and locked by its owner, and moved into place at the end; the
//!   temps of dead processes are removed by the next write there, by gc and by `gantry clean`.
//! - Refs ([`RefEntry`]): named GC roots, optionally tied to a path that must keep existing.
//! - [`Store::gc`] and [`Store::fsck`]: collection of unreachable blobs and integrity checks.
//! - [`Layout`] and [`LayoutWriter`]: reading (with verification and platform resolution) and
//!   atomically writing OCI image layout directories. [`Layout::open_archive`] reads an
//!   `oci-archive` tar file with the same resolution logic.
//! - Image archives: [`OciArchiveWriter`] and [`DockerArchiveWriter`] write deterministic
//!   `oci-archive` and `docker-archive` tar files; [`DockerArchive`] reads `docker save` output.
//!   [`ImageWriter`] is what every output writer offers.
//!
//! Locking: every open store holds `locks/gc.lock` shared for its lifetime and GC takes it
//! exclusively, so GC never runs while another process may rely on a blob it has not yet rooted;
//! GC reads its roots only once it holds it. A GC that has waited [`GC_PATIENCE`] takes
//! `locks/gc-intent.lock` exclusively, which every open passes through, so new processes queue
//! behind it instead of starving it.
//! `locks/refs.lock` serialises ref updates and `locks/tmp.lock` serialises session creation
//! with the cleanup of dead sessions. All locks are `flock`s via std's `File::lock`, released by
//! the kernel when a process dies.
//!
//! The library never prints; it logs at debug level through `tracing`.

mod archive;
mod beside;
mod blob_read;
mod error;
mod fsck;
mod fsutil;
mod gc;
mod layout;
mod refs;
mod session;
mod store;
#[cfg(test)]
mod test_support;

pub use archive::{
    DockerArchive, DockerArchiveWriter, DockerImage, DockerLayer, DockerManifestEntry,
    OciArchiveWriter,
};
pub use beside::{OutputTemp, dead_temps, remove_dead_temps, write_file_atomic};
pub use error::{Error, Result};
pub use fsck::{Finding, FsckOptions, FsckReport, Problem};
pub use fsutil::open_regular;
pub use gc::{GC_PATIENCE, GcLock, GcOptions, GcReport};
pub use layout::{
    ImageWriter, Layout, LayoutSource, LayoutWriter, MAX_INDEX_DEPTH, Resolved, Selector,
};
pub use refs::RefEntry;
pub use store::{BlobWriter, LinkKind, Reaper, Store, StoreOptions, Wait};
