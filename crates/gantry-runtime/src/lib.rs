//! gantry's OCI runtime backend: bundles (`config.json` from oci-spec's runtime types), runc
//! and crun, root and rootless, and the root filesystem a build step runs in.
//!
//! - [`Runtime::detect`] finds a runtime that actually runs containers here: a named one
//!   (`"runc"`, `"crun"` or a path) is taken as given; auto-detection tries crun, then runc,
//!   and runs a tiny probe container with each (crun 1.8 refuses hybrid cgroup v1/v2 hosts at
//!   create time, which only a real run shows). [`Runtime::detect_in`] also reports what was
//!   skipped and why.
//! - [`write_bundle`] writes a deterministic `config.json` for a [`RunSpec`]: pid, ipc, uts and
//!   mount namespaces, a network namespace unless `network` (then the host's, plus its
//!   `/etc/resolv.conf` read-only), a user namespace with [`IdMaps`] when rootless, Docker's
//!   default capabilities, `RLIMIT_NOFILE` never above the caller's, no cgroup settings.
//! - [`Runtime::run`] runs a bundle in the foreground (`<runtime> run`), streams its output
//!   line by line or inherits the terminal, tells "the runtime could not start the container"
//!   ([`Error::Start`]) from "the process exited non-zero" (`Ok(ExitStatus)`), and always
//!   deletes the container. [`stop_running`] stops every container the process runs (for the
//!   program's SIGINT/SIGTERM handler), and [`reap_state_root`] those a dead process left.
//! - [`prepare_rootfs`] gives a step a writable root over a read-only cached rootfs: overlayfs
//!   (its upper dir is the step's diff) when the kernel allows it, else a copy.
//! - [`prepare_container`] is the preparation `gantry run` and build steps share: the user
//!   resolved from the image's own `/etc/passwd` and `/etc/group` ([`resolve_user`], read with
//!   [`read_in_root`]), the environment merged by key over the image config's
//!   ([`merged_env`]), the working directory, rootless id maps ([`rootless_maps`]), read-only
//!   inputs, network, the writable root and the bundle, with errors that name where a setting
//!   came from ([`Purpose`]). [`to_container_owners`] maps captured owners back to the
//!   container's view.
//!
//! The crate is synchronous and never prints; decisions are logged with `tracing` at debug.

mod accounts;
mod bundle;
mod detect;
mod inroot;
mod prepare;
mod rootfs;
mod run;

use std::io;
use std::path::PathBuf;

pub use accounts::resolve_user;
pub use bundle::{
    BindMount, DEFAULT_CAPABILITIES, DEFAULT_PATH, IdMap, IdMaps, NOFILE_SOFT_CAP, RunSpec, User,
    write_bundle,
};
pub use detect::{Detection, Runtime, RuntimeKind, Skipped};
pub use inroot::read_in_root;
pub use prepare::{
    Container, ContainerRequest, ImageProcess, Purpose, RUNTIME_STATE_DIR, image_user,
    image_workdir, merged_env, prepare_container, rootless_maps, to_container_owners,
};
pub use rootfs::{PreparedRootfs, RootfsKind, copy_rootfs, prepare_rootfs};
pub use run::{ExitStatus, Stdio, Stream, container_id, reap_state_root, stop_running};

/// How to get a runtime, appended to every "not found" error.
pub const INSTALL_HINT: &str =
    "install crun or runc (apt-get install crun / runc), or set --runtime PATH";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Auto-detection found no runtime that runs containers here.
    #[error("no OCI runtime found: {INSTALL_HINT}{}", describe_skipped(.skipped))]
    NoRuntime {
        /// Every candidate that was considered, with the reason it was not used.
        skipped: Vec<Skipped>,
    },
    /// A runtime named by the caller does not exist or cannot be executed.
    #[error("OCI runtime {name:?} not found ({reason}): {INSTALL_HINT}")]
    RuntimeNotFound {
        /// The name or path given.
        name: String,
        /// Why it was not usable.
        reason: String,
    },
    /// The runtime failed before the container's process started (bad config, missing
    /// executable, a kernel or cgroup refusal…).
    #[error("{runtime} failed to start container {id}: {message}")]
    Start {
        /// The runtime's path.
        runtime: String,
        /// The container id.
        id: String,
        /// The runtime's own error messages.
        message: String,
    },
    /// The runtime reported an error after the container's process had started.
    #[error("{runtime} failed while running container {id}: {message}")]
    Runtime {
        /// The runtime's path.
        runtime: String,
        /// The container id.
        id: String,
        /// The runtime's own error messages.
        message: String,
    },
    /// [`stop_running`] was called (the program is being interrupted): no container starts.
    #[error("interrupted: no container is started any more")]
    Interrupted,
    /// The run spec cannot be turned into a bundle.
    #[error("invalid run spec: {0}")]
    InvalidSpec(String),
    /// A container id with characters runtimes refuse.
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.' and '+'")]
    InvalidId(String),
    /// Building the OCI runtime spec failed.
    #[error("building config.json: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    /// Copying a root filesystem failed.
    #[error("copying {from} to {to}: {message}")]
    Copy {
        /// The source tree.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// cp's error output or the I/O error.
        message: String,
    },
    /// A file read with [`read_in_root`] is not a regular file or is too large.
    #[error("{path}: {reason}")]
    InRoot {
        /// The path inside the root.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A user name that the image's `/etc/passwd` does not have.
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    /// A group name that the image's `/etc/group` does not have.
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    /// The image's `/etc/passwd` or `/etc/group` cannot be read.
    #[error("cannot read {file} of the image: {reason}")]
    AccountFile {
        /// The file, absolute in the image.
        file: String,
        /// Why.
        reason: String,
    },
    /// A part of [`prepare_container`] failed; `what` names the part (and the setting at
    /// fault, such as `--user "x"`), `source` says why.
    #[error("{what}")]
    Prepare {
        /// What was being prepared.
        what: String,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What failed, naming the path.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

fn describe_skipped(skipped: &[Skipped]) -> String {
    let mut s = String::new();
    for k in skipped {
        match &k.path {
            Some(p) => s.push_str(&format!("; {} ({}): {}", k.kind, p.display(), k.reason)),
            None => s.push_str(&format!("; {}: {}", k.kind, k.reason)),
        }
    }
    s
}
