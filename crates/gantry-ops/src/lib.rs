//! gantry's commands. Each command is a module that turns parsed arguments into work on the
//! library crates and returns plain data; the `gantry` binary prints it. Nothing here prints.
//!
//! # Codebase map
//!
//! | crate | job |
//! |---|---|
//! | `gantry` | the binary: argument parsing, logging, progress bars, printing |
//! | `gantry-cli` | clap definitions only |
//! | `gantry-ops` | this crate (`git` reads revision and commit time for labels): one module per command ([`build`], [`layer`], [`image`], [`inspect`], [`ls`], [`maintenance`], [`lock`], [`push`], [`transfer`] (copy, export, pull), [`login`], [`run`] (run, unpack)); `target` resolves image arguments (a project target first, then an image reference; layer blobs and infos for inspect and ls); `bases` opens the bases of a build; [`registry`] makes the registry client and the `Transfer` commands use; `step` runs build steps (unpacked rootfs, cache key, capture; the container is prepared by `gantry-runtime`, as for [`run`]); [`remote_cache`] keeps action-cache entries in a registry |
//! | `gantry-project` | gantry.toml: schema, model, checks per target kind with file:line:column, the target graph |
//! | `gantry-cache` | the action cache (key → outputs) and the stat cache (file → digest) |
//! | `gantry-oci` | digests, descriptors, media types, references, manifests, configs, canonical JSON |
//! | `gantry-layer` | layer specs and recipes, the tar writer, gzip/zstd, tar validation and listing |
//! | `gantry-transport` | `ImageRef` (the one image-reference parser), image sources for every transport opened as one `SourceImage`, writers (layouts, archives, registry push), fetching, recompression, shallow-layout trust |
//! | `gantry-store` | the blob store under `$GANTRY_HOME`, OCI layouts, archives, refs, gc, fsck |
//! | `gantry-image` | the lazy image model: opened and built images, layer refs with one `BlobSource`, config edits, manifest output |
//! | `gantry-registry` | the distribution client: auth, credentials, manifests, blobs, uploads, mounts, retries |
//! | `gantry-unpack` | hostile-tar extraction into a rootfs, the rootfs cache |
//! | `gantry-runtime` | OCI runtime bundles, crun/runc, rootless id maps, overlay or copy rootfs; container preparation shared by `gantry run` and steps (`prepare_container`: user from the image's `/etc/passwd` read in-root, merged env, workdir, inputs, network) |
//!
//! # Files on disk
//!
//! | path | read/written by |
//! |---|---|
//! | `$GANTRY_HOME/blobs/sha256/<hex>` | `gantry_store::Store` |
//! | `$GANTRY_HOME/refs-v1/<kind>/<hash>.json` | GC roots: `Store::set_ref`, written by [`layer`] and [`image`] for their outputs; `shallow` refs record the shallow layouts gantry wrote (`gantry_transport::mark_shallow`) |
//! | `$GANTRY_HOME/cache-v1/<xx>/<key>.json` | `gantry_cache::ActionCache`: layer cache entries, written by [`build`] |
//! | `$GANTRY_HOME/stat-v1/<scope>` | `gantry_cache::StatCache`: input digests by file state, one file per project |
//! | `$GANTRY_HOME/rootfs/v2/<alg>-<hex>/rootfs` | `gantry_unpack::RootfsCache`: unpacked images by chain id (every layer verified against its diff_id), for steps and `gantry run`; checked by `gantry fsck` ([`maintenance`]) |
//! | `$GANTRY_HOME/tmp/s-*` | per-process temp dirs (also step scratch: overlays, bundles, the runtime's `runtime-state/`), cleaned by the next open after it stops their containers (`step::reap_containers`) |
//! | `DIR/.NAME.gantry-tmp-*` beside every output | `gantry_store::OutputTemp`: the output being written, locked by its writer; dead ones are removed by the next write to `DIR`, gc and `gantry clean` |
//! | `gantry.lock` (next to gantry.toml) | `gantry_project::Lock`: pinned tags, written by [`lock`] |
//! | `$GANTRY_HOME/locks/*.lock` | cross-process locks |
//! | layer info JSON (`gantry layer --info`) | `gantry_layer::LayerInfo` |
//! | image metadata JSON (`gantry image --metadata`) | `gantry_image::ImageMetadata` |

mod bases;
pub mod build;
mod context;
mod git;
pub mod image;
pub mod inspect;
pub mod layer;
pub mod lock;
pub mod login;
pub mod ls;
pub mod maintenance;
pub mod push;
pub mod registry;
pub mod remote_cache;
pub mod run;
mod step;
mod target;
pub mod transfer;
mod util;
mod whiteouts;

pub use context::{Context, NoReporter, RegistryOptions, Reporter, SizeFlags, default_home};
pub use target::Target;
