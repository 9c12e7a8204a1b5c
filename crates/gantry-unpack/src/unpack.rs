//! Applying layers to a rootfs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use gantry_layer::limits::Meter;
use gantry_layer::pax::{PaxState, PaxTap, Record};
use gantry_layer::tarread::{check_whiteout_name, entry_pax, header_mtime, normalize_member_name};
use gantry_oci::{Algorithm, Compression, Digest};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::fsops::{
    Resolver, list_dir, mtime_of, open_child_dir, open_dir_path, open_in_root, remove_any, split,
    type_of,
};
use crate::stream::{CountIn, Pipelined, Shared, Tap};
use crate::{DevicePolicy, Error, Result, UnpackOptions, UnpackStats};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";
/// Longest entry name accepted (Linux `PATH_MAX`).
const MAX_NAME: usize = 4096;
/// Longest path component (Linux `NAME_MAX`).
const MAX_COMPONENT: usize = 255;
/// Longest symlink target (`PATH_MAX` minus the NUL).
const MAX_LINK_TARGET: usize = 4095;
/// Linux device numbers: 12-bit majors, 20-bit minors.
const MAX_MAJOR: u32 = (1 << 12) - 1;
const MAX_MINOR: u32 = (1 << 20) - 1;
/// Size of the copy buffer for file contents.
const COPY_BUF: usize = 256 << 10;

/// Applies one layer (a tar stream, plain, gzip or zstd, detected) on top of what `root`
/// already holds. `label` names the layer in errors (a digest, a file name). This is the
/// building block for tools and tests: nothing is verified against a diff_id, and on error the
/// rootfs is left partially updated (never anything outside it). Images go through
/// [`unpack_image`] or the [`crate::RootfsCache`], which verify every layer and make the tree
/// visible only when all of them did.
pub fn unpack_layer(
    root: &Path,
    label: &str,
    reader: impl Read,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let fd = open_root(root)?;
    Layer::new(Rc::new(fd), label, opts).run(reader, None, &Meter::new())
}

/// One layer of an image.
pub struct ImageLayer {
    /// Names the layer in errors (normally its digest).
    pub label: String,
    /// What the whole decompressed stream must hash to: the config's diff_id.
    pub diff_id: Digest,
    /// The blob (plain, gzip or zstd, detected), ideally a reader that verifies the blob's
    /// digest and size when it reaches its end: it is always read to its end.
    pub blob: Box<dyn Read>,
}

/// Unpacks the layers of an image, in order, into `dest`, atomically: they are applied in a
/// private temporary directory next to `dest` (`.gantry-unpack-<pid>-…`, mode 0700, locked
/// while its owner lives), each verified against its diff_id while it streams, and the tree is
/// renamed to `dest` only when every layer verified. On error the temporary directory is
/// removed and `dest` is left as it was. `dest` must be absent or an empty directory (which is
/// replaced); it ends up owned by the caller with mode 0700, whatever the image says about its
/// root, so that other users cannot reach setuid files or devices inside. Temporary
/// directories next to `dest` whose owner died are removed first. Returns the sum of the
/// layers' statistics.
pub fn unpack_image(
    dest: &Path,
    layers: impl IntoIterator<Item = ImageLayer>,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    check_destination(dest)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(dest_name) = dest.file_name() else {
        return Err(Error::RootNotDir(dest.to_owned()));
    };
    let parent_fd = open_dir_path(parent).map_err(io_err("open", parent))?;
    crate::tmpdir::clean_beside(parent_fd.as_fd(), parent);
    let tmp = crate::tmpdir::TempDir::create(parent_fd.as_fd(), parent)?;
    let result = (|| {
        let root = tmp.path().join(ROOTFS);
        let stats = unpack_into(&root, layers, opts)?;
        let fd = open_root(&root)?;
        // The image may have given its root any owner and mode: dest is the caller's, private.
        rustix::fs::fchown(
            &fd,
            Some(rustix::process::geteuid()),
            Some(rustix::process::getegid()),
        )
        .map_err(|e| io_err("chown", &root)(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(|e| io_err("chmod", &root)(e.into()))?;
        let from = Path::new(tmp.name()).join(ROOTFS);
        match rustix::fs::renameat(&parent_fd, &from, &parent_fd, dest_name) {
            Ok(()) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST) => {
                return Err(Error::RootNotEmpty(dest.to_owned()));
            }
            Err(Errno::NOTDIR) => return Err(Error::RootNotDir(dest.to_owned())),
            Err(e) => return Err(io_err("rename into place", dest)(e.into())),
        }
        let _ = rustix::fs::fsync(&parent_fd);
        Ok(stats)
    })();
    tmp.remove();
    result
}

/// The name of the tree inside a temporary directory.
pub(crate) const ROOTFS: &str = "rootfs";

/// Checks that `dest` is absent or an empty directory (not a symlink to one), as
/// [`unpack_image`] needs; callers can check before fetching anything.
pub fn check_destination(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => {
            let mut entries = std::fs::read_dir(dest).map_err(|source| Error::Io {
                op: "list",
                path: dest.to_owned(),
                source,
            })?;
            if entries.next().is_some() {
                return Err(Error::RootNotEmpty(dest.to_owned()));
            }
            Ok(())
        }
        Ok(_) => Err(Error::RootNotDir(dest.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "stat",
            path: dest.to_owned(),
            source,
        }),
    }
}

/// Unpacks and verifies the layers of an image into `root`, created here (mode 0700; it must
/// not exist) inside a directory private to the caller. Each layer must hash to its diff_id;
/// the image cap counts every layer.
pub(crate) fn unpack_into(
    root: &Path,
    layers: impl IntoIterator<Item = ImageLayer>,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(root)
        .map_err(|source| Error::Io {
            op: "create",
            path: root.to_owned(),
            source,
        })?;
    let fd = Rc::new(open_root(root)?);
    let mut total = UnpackStats::default();
    for layer in layers {
        let meter = Meter::after(total.bytes);
        let stats = Layer::new(fd.clone(), &layer.label, opts).run(
            layer.blob,
            Some(&layer.diff_id),
            &meter,
        )?;
        total.add(&stats);
    }
    Ok(total)
}

fn open_root(root: &Path) -> Result<OwnedFd> {
    open_dir_path(root).map_err(|source| Error::Io {
        op: "open the rootfs",
        path: root.to_owned(),
        source,
    })
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// Metadata of an entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// The final mode and mtime of a directory entry, applied at the end of the layer.
struct DirFix {
    mode: u32,
    mtime: Timespec,
}

/// The state of one layer being applied.
struct Layer<'a> {
    label: &'a str,
    opts: &'a UnpackOptions,
    as_root: bool,
    res: Resolver,
    /// Every path this layer made (`true`) and their ancestors (`false`): whiteouts and opaque
    /// whiteouts spare them, whatever the order of the tar.
    paths: HashMap<Vec<u8>, bool>,
    /// Directory entries of this layer, fixed up at the end.
    dirs: HashMap<Vec<u8>, DirFix>,
    /// mtimes of directories from before this layer changed their content, restored at the
    /// end (as umoci does), so lower directories keep their times.
    saved_mtimes: HashMap<Vec<u8>, Timespec>,
    stats: UnpackStats,
    buf: Vec<u8>,
    /// The counters and caps of the stream.
    meter: Arc<Meter>,
}

fn errno(e: &io::Error) -> Option<Errno> {
    Errno::from_io_error(e)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A PAX time (`1700000000.123456789`, possibly negative).
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.as_bytes().get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Some(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

/// What the `tar` crate says (as `ErrorKind::Other`) when its input ends inside an entry.
const TAR_EOF_MESSAGES: &[&str] = &["unexpected EOF during skip", "failed to read entire block"];

fn stream_reason(e: &io::Error) -> String {
    let tar_eof =
        e.kind() == io::ErrorKind::Other && TAR_EOF_MESSAGES.contains(&e.to_string().as_str());
    if e.kind() == io::ErrorKind::UnexpectedEof || tar_eof {
        "truncated (unexpected end of data)".to_owned()
    } else {
        format!("corrupt or unreadable: {e}")
    }
}

impl<'a> Layer<'a> {
    fn new(root: Rc<OwnedFd>, label: &'a str, opts: &'a UnpackOptions) -> Self {
        Layer {
            label,
            opts,
            as_root: crate::is_root(),
            res: Resolver::new(root),
            paths: HashMap::new(),
            dirs: HashMap::new(),
            saved_mtimes: HashMap::new(),
            stats: UnpackStats::default(),
            buf: vec![0; COPY_BUF],
            meter: Meter::new(),
        }
    }

    // ---- errors ----

    fn layer_err(&self, reason: impl Into<String>) -> Error {
        Error::Layer {
            layer: self.label.to_owned(),
            reason: reason.into(),
        }
    }

    fn entry_err(&self, raw: &[u8], reason: impl Into<String>) -> Error {
        Error::Entry {
            layer: self.label.to_owned(),
            entry: lossy(raw),
            reason: reason.into(),
        }
    }

    fn io_err(&self, raw: &[u8], op: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::EntryIo {
            layer: self.label.to_owned(),
            entry: lossy(raw),
            op: op.into(),
            source: source.into(),
        }
    }

    /// An error of the stream under the tar parser: a limit, a refused header or trailing
    /// data, the caller's reader (a blob digest mismatch), corruption.
    fn stream_err(&self, shared: &Shared, e: io::Error) -> Error {
        if let Some(reason) = self.meter.exceeded() {
            return Error::Limit {
                layer: self.label.to_owned(),
                reason: reason.to_owned(),
            };
        }
        if let Some(reason) = shared.refused.borrow().clone() {
            return self.layer_err(reason);
        }
        if let Some(reason) = shared.source_error.borrow().clone() {
            return self.layer_err(format!("cannot read the layer: {reason}"));
        }
        self.layer_err(stream_reason(&e))
    }

    // ---- the stream ----

    /// Applies the layer `reader`; when `expected` is given, the whole decompressed stream
    /// must hash to it. `meter` counts the stream (and knows the image's earlier layers).
    fn run(
        mut self,
        reader: impl Read,
        expected: Option<&Digest>,
        meter: &Arc<Meter>,
    ) -> Result<UnpackStats> {
        self.meter = Arc::clone(meter);
        let shared = Rc::new(Shared::default());
        let mut input = CountIn {
            inner: reader,
            shared: shared.clone(),
        };
        // Enough of the start to tell the compression.
        let mut head = vec![0u8; 512];
        let mut got = 0;
        while got < head.len() {
            match input.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.layer_err(format!("cannot read the layer: {e}"))),
            }
        }
        head.truncate(got);
        if head.is_empty() {
            return Err(self.layer_err("the layer is empty"));
        }
        let compression = Compression::sniff(&head);
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        // Decompressed (and capped and hashed) on a second thread while this one writes files.
        let plain = Pipelined::start(
            input,
            head,
            compression,
            &self.opts.limits,
            meter,
            algorithm,
        )
        .map_err(|e| self.layer_err(format!("cannot start {compression} decompression: {e}")))?;
        // The PAX tap keeps each entry's raw PAX header: the tar crate cannot read binary
        // values (it splits records on newlines).
        let pax = PaxState::new();
        let plain = PaxTap::new(plain, pax.clone());
        let mut archive = tar::Archive::new(Tap::new(plain, shared.clone()));
        shared.watch.set(Some(0));
        pax.expect_header_at(0);
        let mut end_of_last = 0u64;
        let entries = archive.entries().map_err(|e| self.stream_err(&shared, e))?;
        for next in entries {
            let mut entry = next.map_err(|e| self.stream_err(&shared, e))?;
            let raw = entry.path_bytes().into_owned();
            let records = entry_pax(&pax, &mut entry).map_err(|r| self.entry_err(&raw, r))?;
            end_of_last = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            shared.watch.set(Some(end_of_last));
            pax.expect_header_at(end_of_last);
            self.stats.entries += 1;
            if self.stats.entries > self.opts.max_entries {
                return Err(Error::Limit {
                    layer: self.label.to_owned(),
                    reason: format!(
                        "more than {} entries (the entry limit)",
                        self.opts.max_entries
                    ),
                });
            }
            self.apply(&mut entry, &records, &shared)?;
        }
        let mut tap = archive.into_inner();
        if tap.position() < end_of_last + 512 {
            return Err(
                self.layer_err("truncated: the archive ends without an end-of-archive marker")
            );
        }
        // Only zeros may follow the end marker (they count toward the size limits).
        loop {
            let n = match tap.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_err(&shared, e)),
            };
            if self.buf[..n].iter().any(|&b| b != 0) {
                return Err(self.layer_err("data follows the end of the archive"));
            }
        }
        let actual = shared
            .diff_id
            .borrow_mut()
            .take()
            .ok_or_else(|| self.layer_err("the decompressed stream did not end"))?;
        if let Some(expected) = expected
            && actual != *expected
        {
            return Err(Error::DiffIdMismatch {
                layer: self.label.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
        self.finish_dirs()?;
        self.stats.bytes = shared.decompressed.get();
        self.stats.compressed_bytes = self.meter.consumed();
        tracing::debug!(layer = self.label, ?compression, stats = ?self.stats, "layer unpacked");
        Ok(self.stats)
    }

    // ---- entries ----

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &[Record],
        shared: &Shared,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let ty = entry.header().entry_type();
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::Hardlink,
            tar::EntryType::Char => Kind::Char,
            tar::EntryType::Block => Kind::Block,
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::GNUSparse => {
                return Err(self.entry_err(&raw, "GNU sparse files are not supported"));
            }
            tar::EntryType::XGlobalHeader => {
                return Err(self.entry_err(
                    &raw,
                    "global PAX headers are not supported (tools disagree on them)",
                ));
            }
            other => {
                return Err(self.entry_err(
                    &raw,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        if raw.len() > MAX_NAME {
            return Err(self.entry_err(
                &raw[..64],
                format!(
                    "the name is {} bytes long; names are limited to {MAX_NAME} bytes",
                    raw.len()
                ),
            ));
        }
        let path = normalize_member_name(&raw).map_err(|r| self.entry_err(&raw, r))?;
        if !path.is_empty() {
            let depth = path.split(|&b| b == b'/').count();
            if depth > self.opts.max_depth {
                return Err(Error::Limit {
                    layer: self.label.to_owned(),
                    reason: format!(
                        "entry {:?}: {depth} path components exceed the depth limit of {}",
                        lossy(&raw[..raw.len().min(256)]),
                        self.opts.max_depth
                    ),
                });
            }
            if path.split(|&b| b == b'/').any(|c| c.len() > MAX_COMPONENT) {
                return Err(self.entry_err(
                    &raw,
                    format!("a path component is longer than {MAX_COMPONENT} bytes"),
                ));
            }
        } else if kind != Kind::Dir {
            return Err(self.entry_err(
                &raw,
                "refusing to change the type of the root directory (only a directory entry may name it)",
            ));
        }
        check_whiteout_name(&path).map_err(|r| self.entry_err(&raw, r))?;
        let (parent, name) = split(&path);
        if parent
            .split(|&b| b == b'/')
            .any(|c| c.starts_with(WHITEOUT_PREFIX))
        {
            return Err(self.entry_err(&raw, "a whiteout (.wh.) cannot have children"));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            self.stats.whiteouts += 1;
            return if name == OPAQUE_WHITEOUT {
                self.opaque(&raw, parent)
            } else {
                self.whiteout(&raw, parent, hidden)
            };
        }
        let meta = self.meta(entry, pax, &raw)?;
        self.check_names_agree(entry, pax, &raw)?;
        self.note_path(&raw, &path);
        match kind {
            Kind::File => self.file(entry, &raw, &path, &meta, shared),
            Kind::Dir => self.directory(&raw, &path, &meta),
            Kind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.symlink(&raw, &path, &target, &meta)
            }
            Kind::Hardlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hardlink(&raw, &path, &target)
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let h = entry.header();
                let numbers = if kind == Kind::Fifo {
                    None
                } else {
                    let major = h
                        .device_major()
                        .map_err(|e| self.entry_err(&raw, format!("invalid device major: {e}")))?;
                    let minor = h
                        .device_minor()
                        .map_err(|e| self.entry_err(&raw, format!("invalid device minor: {e}")))?;
                    match (major, minor) {
                        (Some(a), Some(b)) => Some((a, b)),
                        _ => {
                            return Err(self.entry_err(&raw, "a device without device numbers"));
                        }
                    }
                };
                self.device(&raw, &path, kind, numbers, &meta)
            }
        }
    }

    /// Refuses an entry whose PAX `path`/`linkpath` differs from the name the tar crate chose
    /// (a GNU long name wins there, a PAX record in GNU tar): parsers would disagree on it.
    fn check_names_agree<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        pax: &[Record],
        raw: &[u8],
    ) -> Result<()> {
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        for (key, value) in pax {
            let chosen = match key.as_slice() {
                b"path" => Some(raw),
                b"linkpath" => link.as_deref(),
                _ => continue,
            };
            if chosen != Some(value.as_slice()) {
                return Err(self.entry_err(
                    raw,
                    format!(
                        "the PAX {} {:?} and the GNU long name disagree (tar parsers differ on \
                         which wins)",
                        String::from_utf8_lossy(key),
                        lossy(value)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Records a path of this layer (and its ancestors); a second entry for the same path is
    /// allowed (the last wins) and logged.
    fn note_path(&mut self, raw: &[u8], path: &[u8]) {
        match self.paths.get_mut(path) {
            Some(explicit) if *explicit => {
                self.stats.duplicates += 1;
                tracing::warn!(
                    layer = self.label,
                    entry = %lossy(raw),
                    "the layer has this path twice; the last entry wins"
                );
            }
            Some(explicit) => *explicit = true,
            None => {
                self.paths.insert(path.to_vec(), true);
                let mut p = path;
                while let Some(i) = p.iter().rposition(|&b| b == b'/') {
                    p = &p[..i];
                    if self.paths.contains_key(p) {
                        break;
                    }
                    self.paths.insert(p.to_vec(), false);
                }
            }
        }
    }

    fn meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &[Record],
        raw: &[u8],
    ) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| self.entry_err(raw, format!("invalid {what}: {e}"));
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        // From gantry's own PAX parse (the tar crate can miss a PAX uid after a binary value).
        let id = |key| {
            gantry_layer::pax::id(h, pax, key)
                .map_err(|e| self.entry_err(raw, format!("invalid {key}: {e}")))
        };
        let (uid, gid) = (id("uid")?, id("gid")?);
        // Not `h.mtime()`: it reads GNU base-256 times before 1970 as huge positive ones.
        let mtime =
            header_mtime(h).map_err(|e| self.entry_err(raw, format!("invalid mtime: {e}")))?;
        let (uid, gid) = if self.opts.preserve_ownership {
            let id = |v: u64, what: &str| {
                u32::try_from(v)
                    .ok()
                    .filter(|&v| v != u32::MAX)
                    .ok_or_else(|| self.entry_err(raw, format!("{what} {v} is out of range")))
            };
            (id(uid, "uid")?, id(gid, "gid")?)
        } else {
            (0, 0)
        };
        let mut meta = Meta {
            mode,
            uid,
            gid,
            mtime: Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            xattrs: Vec::new(),
        };
        // Read exactly (see gantry_layer::pax): values may hold any bytes.
        {
            for (key, value) in pax {
                let key = key.as_slice();
                if key == b"mtime" {
                    meta.mtime = parse_pax_time(value).ok_or_else(|| {
                        self.entry_err(raw, format!("invalid PAX mtime {:?}", lossy(value)))
                    })?;
                } else if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX) {
                    if name.is_empty() || name.contains(&0) {
                        return Err(self.entry_err(raw, "invalid xattr name in the PAX header"));
                    }
                    if name.starts_with(b"trusted.") {
                        // The host's own data: overlayfs acts on trusted.overlay.* (opaque
                        // directories, redirects), so an image must never set them.
                        return Err(self.entry_err(
                            raw,
                            format!(
                                "refusing the extended attribute {:?}: trusted.* attributes \
                                 are host data (overlayfs acts on them), never image content",
                                lossy(name)
                            ),
                        ));
                    }
                    meta.xattrs.push((name.to_vec(), value.clone()));
                } else if key.starts_with(b"GNU.sparse.") {
                    return Err(self.entry_err(raw, "sparse files are not supported"));
                } else if key.starts_with(b"LIBARCHIVE.xattr.") {
                    self.stats.skipped_xattrs += 1;
                    tracing::debug!(layer = self.label, entry = %lossy(raw), "LIBARCHIVE.xattr records are not restored");
                }
            }
        }
        Ok(meta)
    }

    /// The parent directory of an entry, created when missing.
    fn parent(&mut self, raw: &[u8], parent: &[u8]) -> Result<Rc<OwnedFd>> {
        let fd = self.res.dir(parent, true).map_err(|e| {
            self.io_err(
                raw,
                format!(
                    "cannot resolve the parent directory {:?} in the rootfs",
                    lossy(parent)
                ),
                e,
            )
        })?;
        for (path, mtime) in std::mem::take(&mut self.res.grown) {
            self.saved_mtimes.entry(path).or_insert(mtime);
        }
        self.keep_mtime(parent, fd.as_fd());
        Ok(fd)
    }

    /// Remembers the mtime of the directory `path` (open as `fd`) before this layer changes
    /// its content.
    fn keep_mtime(&mut self, path: &[u8], fd: BorrowedFd<'_>) {
        if !self.saved_mtimes.contains_key(path)
            && let Ok(t) = mtime_of(fd)
        {
            self.saved_mtimes.insert(path.to_vec(), t);
        }
    }

    /// Removes whatever is at `name` in `dir` (a whole tree for a directory).
    fn remove_existing(&mut self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        self.res.invalidate();
        remove_any(dir, name)
            .map(|_| ())
            .map_err(|e| self.io_err(raw, "cannot remove what is in the way", e))
    }

    /// Creates a new regular file `name` in `dir`, replacing what is there.
    fn create_file(&mut self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o600);
        let fd = match rustix::fs::openat(dir, name, flags, mode) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                self.remove_existing(raw, dir, name)?;
                rustix::fs::openat(dir, name, flags, mode)
                    .map_err(|e| self.io_err(raw, "cannot create the file", e))?
            }
            Err(e) => return Err(self.io_err(raw, "cannot create the file", e)),
        };
        Ok(File::from(fd))
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        path: &[u8],
        meta: &Meta,
        shared: &Shared,
    ) -> Result<()> {
        let (parent, name) = split(path);
        let dir = self.parent(raw, parent)?;
        let mut file = self.create_file(raw, dir.as_fd(), name)?;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_err(shared, e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| self.io_err(raw, "cannot write the file", e))?;
        }
        self.set_owner_fd(raw, file.as_fd(), meta)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.io_err(raw, "chmod", e))?;
        self.set_xattrs(raw, file.as_fd(), &meta.xattrs, false)?;
        rustix::fs::futimens(&file, &meta.times()).map_err(|e| self.io_err(raw, "utimes", e))?;
        self.stats.files += 1;
        Ok(())
    }

    fn directory(&mut self, raw: &[u8], path: &[u8], meta: &Meta) -> Result<()> {
        if path.is_empty() {
            let root = self.res.root().clone();
            self.set_owner_fd(raw, root.as_fd(), meta)?;
            self.set_xattrs(raw, root.as_fd(), &meta.xattrs, true)?;
        } else {
            let (parent, name) = split(path);
            let dir = self.parent(raw, parent)?;
            let dir = dir.as_fd();
            let mkdir = |dir, name| rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700));
            let mut kept = false;
            match mkdir(dir, name) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    let existing = type_of(dir, name).map_err(|e| self.io_err(raw, "stat", e))?;
                    if existing == Some(FileType::Directory) {
                        kept = true;
                    } else {
                        // A file, or a symlink named like the directory: replaced, never
                        // followed.
                        self.remove_existing(raw, dir, name)?;
                        mkdir(dir, name).map_err(|e| self.io_err(raw, "mkdir", e))?;
                    }
                }
                Err(e) => return Err(self.io_err(raw, "mkdir", e)),
            }
            let fd = open_child_dir(dir, name, OFlags::RDONLY)
                .map_err(|e| self.io_err(raw, "open the directory", e))?;
            self.set_owner_fd(raw, fd.as_fd(), meta)?;
            self.set_xattrs(raw, fd.as_fd(), &meta.xattrs, kept)?;
        }
        self.dirs.insert(
            path.to_vec(),
            DirFix {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        self.stats.dirs += 1;
        Ok(())
    }

    fn symlink(&mut self, raw: &[u8], path: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        if target.is_empty() {
            return Err(self.entry_err(raw, "a symlink with an empty target"));
        }
        if target.contains(&0) {
            return Err(self.entry_err(raw, "the symlink target contains a NUL byte"));
        }
        if target.len() > MAX_LINK_TARGET {
            return Err(self.entry_err(
                raw,
                format!("the symlink target is longer than {MAX_LINK_TARGET} bytes"),
            ));
        }
        let (parent, name) = split(path);
        let dir = self.parent(raw, parent)?;
        let dir = dir.as_fd();
        match rustix::fs::symlinkat(target, dir, name) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(raw, dir, name)?;
                rustix::fs::symlinkat(target, dir, name)
                    .map_err(|e| self.io_err(raw, "symlink", e))?;
            }
            Err(e) => return Err(self.io_err(raw, "symlink", e)),
        }
        if self.opts.preserve_ownership {
            rustix::fs::chownat(
                dir,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io_err(raw, "chown", e))?;
        }
        rustix::fs::utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io_err(raw, "utimes", e))?;
        if !meta.xattrs.is_empty() {
            // Linux has no fd-based way to set xattrs on a symlink itself (and user.* xattrs
            // are not allowed on symlinks).
            self.stats.skipped_xattrs += meta.xattrs.len() as u64;
            tracing::debug!(layer = self.label, entry = %lossy(raw), "xattrs of symlinks are not restored");
        }
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, raw: &[u8], path: &[u8], target_raw: &[u8]) -> Result<()> {
        if target_raw.is_empty() {
            return Err(self.entry_err(raw, "a hard link without a target"));
        }
        let target = normalize_member_name(target_raw)
            .map_err(|r| self.entry_err(raw, format!("hard link target: {r}")))?;
        if target.is_empty() {
            return Err(self.entry_err(raw, "a hard link to the root directory"));
        }
        if target == path {
            return Err(self.entry_err(raw, "a hard link to itself"));
        }
        let missing_msg = format!(
            "the hard link target {:?} does not exist in the rootfs",
            lossy(&target)
        );
        let label = self.label;
        let missing = || Error::Entry {
            layer: label.to_owned(),
            entry: lossy(raw),
            reason: missing_msg.clone(),
        };
        let (tparent, tname) = split(&target);
        let tdir = match self.res.dir(tparent, false) {
            Ok(fd) => fd,
            Err(e) if matches!(errno(&e), Some(Errno::NOENT | Errno::NOTDIR)) => {
                return Err(missing());
            }
            Err(e) => return Err(self.io_err(raw, "resolve the hard link target", e)),
        };
        match type_of(tdir.as_fd(), tname).map_err(|e| self.io_err(raw, "stat the target", e))? {
            None => return Err(missing()),
            Some(FileType::Directory) => {
                return Err(self.entry_err(
                    raw,
                    format!("the hard link target {:?} is a directory", lossy(&target)),
                ));
            }
            Some(_) => {}
        }
        let (parent, name) = split(path);
        let dir = self.parent(raw, parent)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
        let link = |dir: BorrowedFd<'_>| {
            rustix::fs::linkat(tdir.as_fd(), tname, dir, name, AtFlags::empty())
        };
        match link(dir.as_fd()) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(raw, dir.as_fd(), name)?;
                match link(dir.as_fd()) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => return Err(missing()),
                    Err(e) => return Err(self.io_err(raw, "link", e)),
                }
            }
            Err(e) => return Err(self.io_err(raw, "link", e)),
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn device(
        &mut self,
        raw: &[u8],
        path: &[u8],
        kind: Kind,
        numbers: Option<(u32, u32)>,
        meta: &Meta,
    ) -> Result<()> {
        if let Some((major, minor)) = numbers
            && (major > MAX_MAJOR || minor > MAX_MINOR)
        {
            return Err(self.entry_err(
                raw,
                format!(
                    "device number {major}:{minor} is out of range \
                     (majors up to {MAX_MAJOR}, minors up to {MAX_MINOR})"
                ),
            ));
        }
        let (file_type, policy) = match kind {
            Kind::Char => (FileType::CharacterDevice, self.opts.devices),
            Kind::Block => (FileType::BlockDevice, self.opts.devices),
            // A fifo needs no privilege and gives none.
            _ => (FileType::Fifo, DevicePolicy::Create),
        };
        let (parent, name) = split(path);
        match policy {
            DevicePolicy::Create => {
                let dir = self.parent(raw, parent)?;
                let dir = dir.as_fd();
                let (major, minor) = numbers.unwrap_or((0, 0));
                let dev = rustix::fs::makedev(major, minor);
                let mode = Mode::from_raw_mode(meta.mode);
                let mknod = || rustix::fs::mknodat(dir, name, file_type, mode, dev);
                match mknod() {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        self.remove_existing(raw, dir, name)?;
                        mknod().map_err(|e| self.io_err(raw, "mknod", e))?;
                    }
                    Err(e) => return Err(self.io_err(raw, "mknod", e)),
                }
                if self.opts.preserve_ownership {
                    rustix::fs::chownat(
                        dir,
                        name,
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.io_err(raw, "chown", e))?;
                }
                // mknod applied the umask. fchmodat follows symlinks, so check first that the
                // node we made is still there (nothing else writes in the rootfs meanwhile).
                let now = type_of(dir, name).map_err(|e| self.io_err(raw, "stat", e))?;
                if now != Some(file_type) {
                    return Err(self.entry_err(raw, "the device node was replaced while unpacking"));
                }
                rustix::fs::chmodat(dir, name, mode, AtFlags::empty())
                    .map_err(|e| self.io_err(raw, "chmod", e))?;
                rustix::fs::utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io_err(raw, "utimes", e))?;
                if !meta.xattrs.is_empty() {
                    self.stats.skipped_xattrs += meta.xattrs.len() as u64;
                }
                self.stats.devices += 1;
            }
            DevicePolicy::Placeholder => {
                let dir = self.parent(raw, parent)?;
                let file = self.create_file(raw, dir.as_fd(), name)?;
                self.set_owner_fd(raw, file.as_fd(), meta)?;
                rustix::fs::fchmod(&file, Mode::empty())
                    .map_err(|e| self.io_err(raw, "chmod", e))?;
                rustix::fs::futimens(&file, &meta.times())
                    .map_err(|e| self.io_err(raw, "utimes", e))?;
                self.stats.skipped_devices += 1;
                tracing::debug!(layer = self.label, entry = %lossy(raw), "device replaced by a placeholder file");
            }
            DevicePolicy::Skip => {
                // Omitted: whatever a lower layer had there goes, as the entry replaces it.
                match self.res.dir(parent, false) {
                    Ok(dir) => {
                        self.keep_mtime(parent, dir.as_fd());
                        self.remove_existing(raw, dir.as_fd(), name)?;
                    }
                    Err(e) if matches!(errno(&e), Some(Errno::NOENT | Errno::NOTDIR)) => {}
                    Err(e) => return Err(self.io_err(raw, "resolve the parent directory", e)),
                }
                self.stats.skipped_devices += 1;
                tracing::debug!(layer = self.label, entry = %lossy(raw), "device skipped");
            }
        }
        Ok(())
    }

    // ---- metadata ----

    fn set_owner_fd(&self, raw: &[u8], fd: BorrowedFd<'_>, meta: &Meta) -> Result<()> {
        if self.opts.preserve_ownership {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.io_err(raw, "chown", e))?;
        }
        Ok(())
    }

    /// Sets the entry's xattrs on `fd`; for a directory that was `kept` from a lower layer,
    /// first removes the xattrs the entry does not have (the entry replaces its metadata).
    fn set_xattrs(
        &mut self,
        raw: &[u8],
        fd: BorrowedFd<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        kept: bool,
    ) -> Result<()> {
        if !self.opts.xattrs {
            self.stats.skipped_xattrs += xattrs.len() as u64;
            return Ok(());
        }
        if kept {
            self.clear_xattrs(fd, xattrs);
        }
        for (name, value) in xattrs {
            let shown = lossy(name);
            if name.starts_with(b"user.overlay.") {
                // overlayfs would act on them (opaque dirs, redirects): never restored.
                self.stats.skipped_xattrs += 1;
                tracing::warn!(layer = self.label, entry = %lossy(raw), xattr = %shown, "overlayfs xattr not restored");
                continue;
            }
            let privileged = name.starts_with(b"security.");
            if privileged && !self.as_root {
                self.stats.skipped_xattrs += 1;
                tracing::info!(layer = self.label, entry = %lossy(raw), xattr = %shown, "xattr needs root; not restored");
                continue;
            }
            match rustix::fs::fsetxattr(fd, &name[..], value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(e @ (Errno::OPNOTSUPP | Errno::PERM | Errno::ACCESS)) => {
                    self.stats.skipped_xattrs += 1;
                    tracing::warn!(layer = self.label, entry = %lossy(raw), xattr = %shown, error = %e, "xattr not restored");
                }
                Err(e) => return Err(self.io_err(raw, format!("set xattr {shown:?}"), e)),
            }
        }
        Ok(())
    }

    fn clear_xattrs(&self, fd: BorrowedFd<'_>, keep: &[(Vec<u8>, Vec<u8>)]) {
        let Ok(len) = rustix::fs::flistxattr_query(fd) else {
            return;
        };
        if len == 0 {
            return;
        }
        let mut list = vec![0u8; len];
        let Ok(n) = rustix::fs::flistxattr(fd, &mut list[..]) else {
            return;
        };
        for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if name == b"security.selinux" || keep.iter().any(|(k, _)| k == name) {
                continue;
            }
            if let Err(e) = rustix::fs::fremovexattr(fd, name) {
                tracing::debug!(xattr = %lossy(name), error = %e, "cannot remove a lower layer's xattr");
            }
        }
    }

    // ---- whiteouts ----

    /// `.wh.NAME` in `parent`: removes NAME (everything under it), resolved in the root. What
    /// this layer itself made there stays.
    fn whiteout(&mut self, raw: &[u8], parent: &[u8], hidden: &[u8]) -> Result<()> {
        let dir = match self.res.dir(parent, false) {
            Ok(fd) => fd,
            // Nothing below to hide.
            Err(e) if matches!(errno(&e), Some(Errno::NOENT | Errno::NOTDIR)) => return Ok(()),
            Err(e) => return Err(self.io_err(raw, "resolve the whiteout's directory", e)),
        };
        let target = join(parent, hidden);
        self.res.invalidate();
        self.keep_mtime(parent, dir.as_fd());
        if self.paths.contains_key(&target) {
            tracing::debug!(layer = self.label, entry = %lossy(raw), "whiteout of a path of the same layer: only lower content is removed");
            let is_dir = type_of(dir.as_fd(), hidden).map_err(|e| self.io_err(raw, "stat", e))?
                == Some(FileType::Directory);
            if is_dir {
                let sub = open_child_dir(dir.as_fd(), hidden, OFlags::RDONLY)
                    .map_err(|e| self.io_err(raw, "open", e))?;
                self.prune(raw, sub.as_fd(), &target)?;
            }
            return Ok(());
        }
        remove_any(dir.as_fd(), hidden).map_err(|e| self.io_err(raw, "remove", e))?;
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: removes everything in it that this layer did not make.
    fn opaque(&mut self, raw: &[u8], dir: &[u8]) -> Result<()> {
        let root = self.res.root().clone();
        let fd = match open_in_root(root.as_fd(), dir, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if matches!(errno(&e), Some(Errno::NOENT | Errno::NOTDIR)) => return Ok(()),
            Err(e) => return Err(self.io_err(raw, "resolve the opaque directory", e)),
        };
        self.res.invalidate();
        self.prune(raw, fd.as_fd(), dir)
    }

    /// Removes everything under `dir` (at path `logical`) that is not a path of this layer.
    fn prune(&mut self, raw: &[u8], dir: BorrowedFd<'_>, logical: &[u8]) -> Result<()> {
        self.keep_mtime(logical, dir);
        let names = list_dir(dir).map_err(|e| self.io_err(raw, "list", e))?;
        for (name, ft) in names {
            let child = join(logical, &name);
            if self.paths.contains_key(&child) {
                let is_dir = match ft {
                    FileType::Directory => true,
                    FileType::Unknown => {
                        type_of(dir, &name).map_err(|e| self.io_err(raw, "stat", e))?
                            == Some(FileType::Directory)
                    }
                    _ => false,
                };
                if is_dir {
                    let sub = open_child_dir(dir, &name, OFlags::RDONLY)
                        .map_err(|e| self.io_err(raw, "open", e))?;
                    self.prune(raw, sub.as_fd(), &child)?;
                }
            } else {
                remove_any(dir, &name).map_err(|e| self.io_err(raw, "remove", e))?;
            }
        }
        Ok(())
    }

    // ---- the end of the layer ----

    /// Applies directory modes and mtimes, now that their children are in place, and gives
    /// directories of lower layers whose content changed their mtimes back.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut saved: Vec<_> = std::mem::take(&mut self.saved_mtimes)
            .into_iter()
            .filter(|(p, _)| !self.dirs.contains_key(p))
            .collect();
        saved.sort_by(|a, b| a.0.cmp(&b.0));
        let root = self.res.root().clone();
        for (path, mtime) in saved {
            let Ok(fd) = open_in_root(root.as_fd(), &path, OFlags::RDONLY | OFlags::DIRECTORY)
            else {
                continue;
            };
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: mtime,
            };
            rustix::fs::futimens(&fd, &times).map_err(|e| self.io_err(&path, "utimes", e))?;
        }
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, fix) in dirs {
            let fd = if path.is_empty() {
                self.res.root().clone()
            } else {
                let (parent, name) = split(&path);
                let gone = |e: &io::Error| {
                    matches!(errno(e), Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP))
                };
                let dir = match self.res.dir(parent, false) {
                    Ok(fd) => fd,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(self.io_err(&path, "resolve", e)),
                };
                match open_child_dir(dir.as_fd(), name, OFlags::RDONLY) {
                    Ok(fd) => Rc::new(fd),
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(self.io_err(&path, "open", e)),
                }
            };
            // Without root, keep directories writable by their owner, so later layers can
            // add to them and the tree can be removed.
            let mode = if self.as_root {
                fix.mode
            } else {
                fix.mode | 0o700
            };
            rustix::fs::fchmod(&*fd, Mode::from_raw_mode(mode))
                .map_err(|e| self.io_err(&path, "chmod", e))?;
            let times = Timestamps {
                last_access: fix.mtime,
                last_modification: fix.mtime,
            };
            rustix::fs::futimens(&*fd, &times).map_err(|e| self.io_err(&path, "utimes", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        let t = parse_pax_time(b"1.1234567891").unwrap();
        assert_eq!(t.tv_nsec, 123_456_789);
        assert!(parse_pax_time(b"").is_none());
        assert!(parse_pax_time(b"1.x").is_none());
        assert!(parse_pax_time(b"abc").is_none());
    }

    #[test]
    fn joins() {
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
    }
}
