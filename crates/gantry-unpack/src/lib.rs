//! Hostile-tar extraction of OCI image layers into a rootfs, and a cache of unpacked rootfs
//! trees keyed by chain id.
//!
//! Every layer is treated as hostile. The root is opened once as a directory fd and every
//! filesystem operation resolves its parent directory with `openat2(root_fd, parent,
//! RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, then acts on the final component with `*at`
//! calls that never follow a symlink there (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `linkat`
//! without `AT_SYMLINK_FOLLOW`). Symlinks stored in the image are therefore followed only
//! inside the root (`/` and `..` are clamped to it by the kernel), and nothing is ever created,
//! changed or removed outside it. No `std::fs` path API touches a path inside the root.
//!
//! Semantics follow image-spec `layer.md`: files, directories (kept and updated), symlinks
//! (targets stored verbatim), hard links (target resolved in the root, must exist and not be a
//! directory), devices per [`DevicePolicy`], whiteouts `.wh.NAME` and opaque whiteouts
//! `.wh..wh..opq`, which hide only what lower layers made: entries of the same layer survive
//! whatever their order in the tar. Directory modes and mtimes are applied at the end of each
//! layer, since adding children changes them.
//!
//! Refused (with an [`Error`] naming the layer and the entry): names escaping the root (`..`),
//! NUL bytes, an entry changing the type of the root, invalid whiteouts (`.wh.`, `.wh..`,
//! `.wh...`, a whiteout with children), hard links to missing targets or directories,
//! out-of-range device numbers, GNU sparse files, global PAX headers, `trusted.*` extended
//! attributes (overlayfs acts on `trusted.overlay.*`), PAX headers that tar parsers would read
//! differently (see `gantry_layer::pax`), over-long names,
//! too many entries, too deep paths, and streams decompressing past [`UnpackOptions`]' caps
//! (checked while streaming on the bytes the decompressor consumes, so memory and disk stay
//! bounded). Duplicate paths are allowed: the last one wins, as with runc, umoci and GNU tar,
//! and a warning is logged.
//!
//! Images are verified before anything becomes visible: every layer of [`unpack_image`] and of
//! the [`RootfsCache`] is hashed while it streams (the whole decompressed stream, trailing
//! zeros included) and must match its diff_id, and the caller's blob reader (normally a
//! digest-verifying one) is read to its end. The tree is built in a private (0700) temporary
//! directory and renamed into place only when every layer verified; on any error it is
//! removed and the destination is left as it was.

mod cache;
mod fsops;
mod stream;
mod tmpdir;
mod unpack;

use std::io;
use std::path::PathBuf;

pub use cache::{CacheIssue, RootfsCache, chain_id};
pub use gantry_layer::limits::Limits;
pub use unpack::{ImageLayer, check_destination, unpack_image, unpack_layer};

/// What to do with character and block devices (fifos need no privilege and give none: they
/// are always created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Create them with `mknod` (needs root for character and block devices).
    Create,
    /// Leave them out (logged at debug level and counted in [`UnpackStats::skipped_devices`]).
    Skip,
    /// Create an empty regular file with mode 0000 in their place, so the path exists
    /// (counted in [`UnpackStats::skipped_devices`]).
    Placeholder,
}

impl Default for DevicePolicy {
    /// [`DevicePolicy::Create`] when running as root (effective uid 0), else
    /// [`DevicePolicy::Placeholder`].
    fn default() -> Self {
        if is_root() {
            DevicePolicy::Create
        } else {
            DevicePolicy::Placeholder
        }
    }
}

/// Limits and policies of an unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Character and block devices.
    pub devices: DevicePolicy,
    /// Caps on the decompressed bytes of one layer and of one image (tar headers, data and
    /// padding included), and on the decompressed / consumed compressed ratio.
    pub limits: Limits,
    /// Cap on the number of entries of one layer.
    pub max_entries: u64,
    /// Cap on the number of components of an entry's path.
    pub max_depth: usize,
    /// Set owners from the tar (`uid`/`gid`); otherwise files belong to the caller.
    pub preserve_ownership: bool,
    /// Restore extended attributes from PAX `SCHILY.xattr.*` records.
    pub xattrs: bool,
}

impl Default for UnpackOptions {
    /// [`Limits::default`], 10 million entries, depth 1024, owners and xattrs restored when
    /// running as root, devices per [`DevicePolicy::default`].
    fn default() -> Self {
        let root = is_root();
        UnpackOptions {
            devices: DevicePolicy::default(),
            limits: Limits::default(),
            max_entries: 10_000_000,
            max_depth: 1024,
            preserve_ownership: root,
            xattrs: true,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackStats {
    /// Tar entries read (whiteouts included).
    pub entries: u64,
    /// Decompressed bytes read (the whole tar stream, padding included).
    pub bytes: u64,
    /// Compressed bytes read.
    pub compressed_bytes: u64,
    /// Regular files written.
    pub files: u64,
    /// Directory entries applied.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Character and block devices and fifos created.
    pub devices: u64,
    /// Devices skipped or replaced by a placeholder ([`DevicePolicy`]).
    pub skipped_devices: u64,
    /// Whiteouts and opaque whiteouts applied.
    pub whiteouts: u64,
    /// Entries whose path an earlier entry of the same layer already had (the last one wins).
    pub duplicates: u64,
    /// Extended attributes that were not restored (unsupported, not permitted, or refused by
    /// policy such as `user.overlay.*`; `trusted.*` attributes are refused with an error).
    pub skipped_xattrs: u64,
}

impl UnpackStats {
    fn add(&mut self, o: &UnpackStats) {
        self.entries += o.entries;
        self.bytes += o.bytes;
        self.compressed_bytes += o.compressed_bytes;
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.hardlinks += o.hardlinks;
        self.devices += o.devices;
        self.skipped_devices += o.skipped_devices;
        self.whiteouts += o.whiteouts;
        self.duplicates += o.duplicates;
        self.skipped_xattrs += o.skipped_xattrs;
    }
}

/// Errors of this crate. Messages name the layer (the caller's label, such as its digest) and,
/// where one is at fault, the tar entry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry was refused (an unsafe or invalid name, type or value).
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Entry {
        /// The layer's label.
        layer: String,
        /// The entry's name as stored in the tar (lossily decoded).
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// Applying an entry failed in the filesystem.
    #[error("layer {layer}: entry {entry:?}: {op}: {source}")]
    EntryIo {
        /// The layer's label.
        layer: String,
        /// The entry's name as stored in the tar (lossily decoded).
        entry: String,
        /// What was being done.
        op: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The layer stream is not a valid tar (corrupt, truncated, trailing data, unsupported
    /// compression) or could not be read.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// The layer's label.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// The layer exceeds a limit of [`UnpackOptions`] (size, ratio, entries).
    #[error("layer {layer}: {reason}")]
    Limit {
        /// The layer's label.
        layer: String,
        /// Which limit, and its value.
        reason: String,
    },
    /// The decompressed layer does not hash to the diff_id the image config gives it.
    #[error(
        "layer {layer}: diff_id mismatch: its content hashes to {actual}, but the image config \
         says {expected}"
    )]
    DiffIdMismatch {
        /// The layer's label.
        layer: String,
        /// The config's diff_id.
        expected: gantry_oci::Digest,
        /// What the decompressed stream hashes to.
        actual: gantry_oci::Digest,
    },
    /// An image has not as many layers as diff_ids.
    #[error("the image has {layers} layers but {diff_ids} diff_ids")]
    LayerCount {
        /// Layers given.
        layers: usize,
        /// diff_ids given.
        diff_ids: usize,
    },
    /// A filesystem operation outside of any layer failed (opening the root, the cache).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// [`unpack_image`] needs an empty (or missing) root.
    #[error("{0} is not empty; refusing to unpack an image over existing files")]
    RootNotEmpty(PathBuf),
    /// [`unpack_image`]'s destination exists and is not a directory (a symlink is not followed).
    #[error("{0} exists and is not a directory")]
    RootNotDir(PathBuf),
    /// The caller's layer source failed (for example a blob could not be fetched).
    #[error("{0}")]
    Source(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
