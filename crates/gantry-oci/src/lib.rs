//! The OCI vocabulary shared by every gantry crate: [`Digest`] and streaming hashers,
//! [`Descriptor`], media types, [`Reference`], [`Platform`], manifests, indexes and configs, and
//! JSON helpers that read strictly and write canonically.
//!
//! This crate does no I/O beyond the readers and writers handed to it, and never prints.

mod blob;
mod config;
mod descriptor;
mod digest;
mod error;
pub mod json;
mod manifest;
pub mod media_types;
mod platform;
mod reference;
pub mod time;

pub use blob::BlobRead;
pub use config::{ContainerConfig, EmptyObject, History, ImageConfig, RootFs};
pub use descriptor::{Descriptor, MAX_DESCRIPTOR_SIZE, annotations, validate_media_type};
pub use digest::{Algorithm, Digest, Hasher, HashingReader, HashingWriter, VerifyingReader};
pub use error::Error;
pub use manifest::{
    Document, ImageIndex, ImageManifest, parse_document, parse_index, parse_manifest,
};
pub use media_types::Compression;
pub use platform::{Platform, normalize_arch};
pub use reference::{
    DEFAULT_REGISTRY, Reference, validate_ref_name, validate_repository, validate_tag,
};
