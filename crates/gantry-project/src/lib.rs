//! `gantry.toml`: a project's layers, images, pulls and steps, validated before any work.
//!
//! [`Project::load`] parses the file (unknown keys and wrong types are errors), then checks what
//! TOML cannot: target names and references, cycles between images and steps, label keys,
//! ports, paths, platforms, tags, and that every input file exists. Every problem is reported at
//! once, each as `file:line:column: key: message`. The result is a set of typed targets and a
//! dependency graph; [`Project::plan`] gives the targets to build for a request, dependencies
//! first.
//!
//! Target kinds live in one namespace, so a reference is just a name; [`TargetRef`] says which
//! kind a name is.
//!
//! - `model`: [`Project`], [`Settings`] and the target types.
//! - `check`: loading and checking, one module per target kind (`settings`, `pull`, `layer`,
//!   `image`, `step`) over a shared `Checker` that places each problem at its key
//!   ([`spans`]).
//! - `graph`: dependencies, build order, cycles, which layers stand alone, target lookup.
//! - [`schema`]: the serde types of the file; `lock`: `gantry.lock`.

mod check;
mod error;
mod graph;
mod lock;
mod model;
pub mod schema;
pub mod spans;

pub use error::{Diagnostic, Error};
pub use graph::split_variant;
pub use lock::{LOCK_FILE, Lock, LockedPull};
pub use model::{
    AutoLabels, BaseRef, Capture, Epoch, ImageTarget, LabelValue, LayerTarget,
    MAX_REGISTRY_TIMEOUT, Pin, Project, PullSource, PullTarget, Settings, StepCommand, StepTarget,
    TargetRef,
};
pub use spans::{KeyPath, LineCol, Seg, SpanIndex};

/// The default project file name.
pub const PROJECT_FILE: &str = "gantry.toml";
/// The default output directory.
pub const DEFAULT_OUTPUT_DIR: &str = "gantry-out";

// The unit tests (`use super::*`) name digests.
#[cfg(test)]
use gantry_oci::Digest;

#[cfg(test)]
mod tests;
