//! Capturing the result of a build step as a layer [`Recipe`].
//!
//! A step runs untrusted code, so the filesystem it leaves behind is hostile input:
//!
//! - symlinks are never followed: an output path is resolved component by component with
//!   `lstat` and refused when a component is a symlink; trees are walked through directory file
//!   descriptors opened with `O_NOFOLLOW`; symlinks are stored as symlinks, their targets
//!   verbatim;
//! - device nodes are refused (except the `0/0` character devices that are overlayfs
//!   whiteouts, in [`overlay_diff_recipe`]); sockets are skipped with a warning; a name that
//!   starts with `.wh.` is refused, since in a layer it would be a whiteout;
//! - paths, names and symlink targets are bounded as for every other layer ([`ImagePath`]:
//!   4096-byte paths, 255-byte names), and extended attributes as described below.
//!
//! The capture assumes the step's processes are gone (the runtime kills the container's PID
//! namespace), so the tree no longer changes; the tar writer still re-checks every file it
//! reads against the inode, size and times recorded here.
//!
//! **Metadata**: permission bits (with setuid, setgid, sticky) and numeric owners come from
//! the step's filesystem; mtimes do not: every entry gets the `defaults` time
//! (`SOURCE_DATE_EPOCH`), so the same filesystem state always gives the same layer bytes.
//! Owner names are never written. Files sharing an inode become tar hard links.
//!
//! **Extended attributes**: `user.*` (except `user.overlay.*`) and `security.capability` are
//! kept as `SCHILY.xattr.*` PAX records. Everything else is left out with one warning per
//! recipe: `security.selinux` and `security.ima` describe the build host, ACLs
//! (`system.posix_acl_*`) and `trusted.*` are not carried either. At most
//! [`MAX_XATTR_BYTES`] of attribute names and values are kept per layer.
//!
//! **Parents**: in [`outputs_recipe`], a directory above an output that the image already had
//! (in `lower`) is left out, so the image keeps its metadata (`/tmp` stays 1777); one the step
//! made is an entry with its mode and owner from the step's filesystem. In the diffs, every
//! directory above a change is an entry with its own metadata from the step's filesystem, as
//! overlayfs copies it up. Either way, applying the layer never changes a directory's mode or
//! owner by accident.

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, openat, readlinkat, statat};
use rustix::io::Errno;

use crate::meta::{Defaults, MetaOverride, XATTR_PREFIX};
use crate::recipe::{EntryKind, Preserve, Recipe, RecipeBuilder, TreeFilter, WHITEOUT_PREFIX};
use crate::xattr::{Class, XATTR_MAX, classify};
use crate::{Error, ImagePath};

/// The most extended-attribute bytes (names and values) one captured layer may carry.
pub const MAX_XATTR_BYTES: u64 = 64 << 20;
/// The most distinct left-out attribute names listed in the warning.
const MAX_IGNORED_NAMES: usize = 16;
/// Read size of content comparisons in [`tree_diff_recipe`].
const COMPARE_BUF: usize = 256 * 1024;

/// A layer of the given paths of a step's final filesystem `rootfs` (absolute paths in the
/// image; directories with everything in them), minus `exclude`.
///
/// Each output is resolved inside `rootfs` without following symlinks: an intermediate
/// component that is a symlink, or a missing output, is an error naming it. A directory is
/// added as a tree, a file as a file, a symlink as a symlink (target verbatim), a fifo as a
/// fifo; a device node or socket is an error. Outputs inside another output directory are
/// covered by it.
///
/// `exclude` globs work as for directory trees of layer specs, except that patterns with
/// `/` are image paths (`/out/cache/**`): a pattern without `/` matches a name at any depth
/// (`*.pyc`), `*` never crosses `/`, `**` does. An output that matches is left out with a
/// warning.
///
/// Directories above an output are left out when `lower` (the image the step ran on) has them
/// as directories, and are entries with their mode and owner in `rootfs` otherwise (every one
/// of them when `lower` is `None`).
pub fn outputs_recipe(
    rootfs: &Path,
    lower: Option<&Path>,
    outputs: &[String],
    exclude: &[String],
    defaults: Defaults,
) -> Result<Recipe, Error> {
    let filter = TreeFilter::new(&[], exclude)?;
    let mut resolved = Vec::with_capacity(outputs.len());
    for o in outputs {
        let path = ImagePath::parse(o)?;
        let (full, node) = resolve_output(rootfs, &path)?;
        resolved.push((path, full, node));
    }
    resolved.sort_by(|a, b| a.0.cmp(&b.0));
    resolved.dedup_by(|a, b| a.0 == b.0);

    let mut b = RecipeBuilder::new(defaults, false);
    b.preserve(Preserve {
        mode: true,
        owner: true,
        mtime: false,
        xattrs: false,
    });
    let mut warnings = Vec::new();
    // Every output added (entries at or below them come from the rootfs), and the directories
    // among them (which cover later outputs inside them).
    let mut roots: Vec<ImagePath> = Vec::new();
    let mut dirs: Vec<ImagePath> = Vec::new();
    for (path, full, node) in resolved {
        if dirs.iter().any(|d| is_within(&path, d)) {
            continue;
        }
        if filter.excludes(&path) {
            warnings.push(format!(
                "output {path} matches an exclude pattern; left out"
            ));
            continue;
        }
        let what = || format!("output {path}");
        match node.kind {
            FileType::Directory => {
                b.add_tree(path.clone(), &full, &filter.clone().anchored(&path))?;
                dirs.push(path.clone());
            }
            FileType::RegularFile => b.add_file(path.clone(), &full)?,
            FileType::Symlink => {
                let target =
                    rustix::fs::readlink(&full, Vec::new()).map_err(|e| source_error(&full, e))?;
                b.add_symlink(path.clone(), target.as_bytes())?;
                b.set_metadata(path.clone(), owner_override(&node, false))?;
            }
            FileType::Fifo => {
                b.add_fifo(path.clone(), node.perm)?;
                b.set_metadata(path.clone(), owner_override(&node, false))?;
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                return Err(device_error(what(), &path, &node));
            }
            _ => {
                return Err(Error::Capture {
                    what: what(),
                    reason: format!("{path} is a socket; sockets cannot be archived"),
                });
            }
        }
        roots.push(path);
    }
    // Parents the image did not have are the step's work: entries with their own metadata.
    let mut parents: Vec<ImagePath> = roots.iter().flat_map(ImagePath::ancestors).collect();
    parents.sort();
    parents.dedup();
    for p in parents {
        if p.is_root() || lower.is_some_and(|l| is_dir_in(l, &p)) {
            continue;
        }
        b.add_dir_from(p.clone(), &host_path(rootfs, &p))?;
    }
    let mut recipe = b.build()?;

    let mut x = Xattrs::new(false);
    for e in &mut recipe.entries {
        let Some(root) = roots.iter().find(|r| is_within(&e.path, r)) else {
            continue; // an implicit parent directory
        };
        let what = || format!("output {root}");
        match e.kind {
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                let node = Node {
                    kind: if matches!(e.kind, EntryKind::CharDevice { .. }) {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    },
                    rdev: (major, minor),
                    ..Node::default()
                };
                return Err(device_error(what(), &e.path, &node));
            }
            _ => check_name(&e.path, what)?,
        }
        let full = host_path(rootfs, &e.path);
        let xa = x.read(&full)?;
        x.charge(&xa, &e.path)?;
        for (k, v) in xa.kept {
            e.meta.pax.insert(format!("{XATTR_PREFIX}{k}"), v);
        }
    }
    recipe.warnings.extend(warnings);
    recipe.warnings.extend(x.warning());
    // Attributes were read above, with the capture's own policy.
    recipe.count_unkept_xattrs = false;
    Ok(recipe)
}

/// The changes a step made, from the upper directory of the overlayfs mount it ran on: a
/// character device 0/0 is a whiteout of its name; a directory with `trusted.overlay.opaque`
/// (or `user.overlay.opaque`, for `userxattr` mounts) = `y` is the directory, an opaque
/// whiteout and its contents; everything else is an entry with its own mode and owner
/// (directories too: a directory copied up because something under it changed is repeated,
/// which layers allow). Overlay's other attributes are ignored, except
/// `redirect` and `metacopy`, which are errors (gantry mounts without `redirect_dir` and
/// `metacopy`, which would make the upper directory an incomplete description). Changes of
/// the root directory's own metadata are not captured.
pub fn overlay_diff_recipe(upper: &Path, defaults: Defaults) -> Result<Recipe, Error> {
    let mut c = Capture::new(defaults, true);
    let fd = open_dir(upper)?;
    let xa = c.x.read(upper)?;
    if let Some(name) = &xa.unsupported {
        return Err(unsupported_overlay(&ImagePath::root(), name));
    }
    if xa.opaque {
        return Err(Error::Capture {
            what: "/".to_owned(),
            reason: "the overlay upper directory's root is opaque, which a layer cannot express"
                .to_owned(),
        });
    }
    let (dir, names) = list_dir(fd, upper)?;
    let dfd = dir.fd().map_err(|e| source_error(upper, e))?;
    for name in names {
        c.walk_upper(dfd, &name, upper, &ImagePath::root())?;
    }
    c.finish()
}

/// The changes between `lower` (the filesystem before the step) and `upper` (a full copy of
/// it, after the step), for when overlayfs is not available. Both trees are walked in name
/// order, without following symlinks:
///
/// - only in `upper`: added, with everything under it;
/// - only in `lower`: a whiteout (one for a whole directory);
/// - a directory in both: descended into; its entry is written when its mode, owner or kept
///   xattrs changed, or when something under it changed;
/// - a directory replaced by a non-directory: the new entry; a non-directory replaced by a
///   directory: the directory and its contents;
/// - other entries in both: written when the type, permission bits (not for symlinks), owner,
///   kept xattrs, symlink target, device numbers, size or content differ.
///
/// Content rule: two regular files of equal size are compared byte by byte unless they are
/// the same inode; mtimes are not trusted either way (a copy made with `cp -a` keeps them, and
/// a step can set them), so a change that keeps size and mtime is still found, and a file
/// that was only touched is not a change. The cost is reading every same-size regular file of
/// both trees once (stopping at the first difference); memory is two 256 KiB buffers.
///
/// Where overlayfs gives an opaque directory (one removed and made again, or made where a
/// file was), this gives whiteouts for each lower entry that is gone, or nothing when the
/// lower entry was not a directory; applied, both give the same tree. Files whose only change
/// is their mtime, or that were rewritten with identical bytes, are in an overlay diff (they
/// were copied up) but not here. `upper` must be a real copy: a hard-linked copy (`cp -al`)
/// shares inodes with `lower`, and changes made in place through them are invisible.
pub fn tree_diff_recipe(lower: &Path, upper: &Path, defaults: Defaults) -> Result<Recipe, Error> {
    let mut c = Capture::new(defaults, false);
    let lfd = open_dir(lower)?;
    let ufd = open_dir(upper)?;
    let mut stack = Vec::new();
    c.diff_dir(lfd, ufd, lower, upper, &ImagePath::root(), &mut stack)?;
    c.finish()
}

/// What a walk needs to know about one filesystem node (from `lstat`).
#[derive(Debug, Clone, Copy)]
struct Node {
    kind: FileType,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    dev: u64,
    ino: u64,
    rdev: (u32, u32),
}

impl Default for Node {
    fn default() -> Self {
        Node {
            kind: FileType::Unknown,
            perm: 0,
            uid: 0,
            gid: 0,
            size: 0,
            dev: 0,
            ino: 0,
            rdev: (0, 0),
        }
    }
}

impl Node {
    fn of(st: &Stat) -> Self {
        Node {
            kind: FileType::from_raw_mode(st.st_mode),
            perm: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)),
        }
    }
}

/// A directory above the current position of a tree diff, written only when something under
/// it (or itself) changed.
struct Pending {
    path: ImagePath,
    full: PathBuf,
    node: Node,
    emitted: bool,
}

/// The state of a diff capture.
struct Capture {
    b: RecipeBuilder,
    x: Xattrs,
    warnings: Vec<String>,
    bufs: (Vec<u8>, Vec<u8>),
}

impl Capture {
    fn new(defaults: Defaults, overlay: bool) -> Self {
        Capture {
            b: RecipeBuilder::new(defaults, true),
            x: Xattrs::new(overlay),
            warnings: Vec::new(),
            bufs: (Vec::new(), Vec::new()),
        }
    }

    fn finish(self) -> Result<Recipe, Error> {
        let mut recipe = self.b.build()?;
        recipe.warnings.extend(self.warnings);
        recipe.warnings.extend(self.x.warning());
        recipe.count_unkept_xattrs = false;
        Ok(recipe)
    }

    /// Adds one node with its own mode, owner and kept xattrs (`xa`, read here when `None`).
    fn emit(
        &mut self,
        path: &ImagePath,
        full: &Path,
        node: &Node,
        xa: Option<NodeXattrs>,
        target: Option<&[u8]>,
    ) -> Result<(), Error> {
        check_name(path, || path.to_string())?;
        match node.kind {
            FileType::Directory => self.b.add_empty_dir(path.clone())?,
            FileType::RegularFile => self.b.add_file(path.clone(), full)?,
            FileType::Symlink => self
                .b
                .add_symlink(path.clone(), target.unwrap_or_default())?,
            FileType::Fifo => self.b.add_fifo(path.clone(), node.perm)?,
            FileType::CharacterDevice | FileType::BlockDevice => {
                return Err(device_error(path.to_string(), path, node));
            }
            FileType::Socket => {
                self.warnings.push(format!(
                    "skipped socket {} (sockets cannot be archived)",
                    full.display()
                ));
                return Ok(());
            }
            FileType::Unknown => {
                return Err(Error::UnsupportedSource {
                    path: full.to_owned(),
                    reason: "has an unknown file type".to_owned(),
                });
            }
        }
        let xa = match xa {
            Some(xa) => xa,
            None => self.x.read(full)?,
        };
        self.x.charge(&xa, path)?;
        let mut meta = owner_override(node, node.kind != FileType::Symlink);
        for (k, v) in xa.kept {
            meta.pax.insert(format!("{XATTR_PREFIX}{k}"), v);
        }
        self.b.set_metadata(path.clone(), meta)
    }

    /// Adds the node `name` of the directory `dirfd` (at `dir_full`, image path `parent`) and,
    /// for a directory, everything under it. In overlay mode, 0/0 character devices are
    /// whiteouts and opaque directories get their marker.
    fn walk_upper(
        &mut self,
        dirfd: BorrowedFd<'_>,
        name: &[u8],
        dir_full: &Path,
        parent: &ImagePath,
    ) -> Result<(), Error> {
        let path = parent.child(name)?;
        let full = dir_full.join(OsStr::from_bytes(name));
        let node = lstat_at(dirfd, name, &full)?;
        if self.x.overlay && node.kind == FileType::CharacterDevice && node.rdev == (0, 0) {
            return self.b.add_whiteout(path);
        }
        let xa = self.x.read(&full)?;
        if let Some(attr) = &xa.unsupported {
            return Err(unsupported_overlay(&path, attr));
        }
        let opaque = xa.opaque;
        let target = if node.kind == FileType::Symlink {
            Some(read_link_at(dirfd, name, &full)?)
        } else {
            None
        };
        self.emit(&path, &full, &node, Some(xa), target.as_deref())?;
        if node.kind == FileType::Directory {
            if opaque {
                self.b.add_opaque(path.clone())?;
            }
            let fd = open_dir_at(dirfd, name, &full)?;
            let (dir, names) = list_dir(fd, &full)?;
            let dfd = dir.fd().map_err(|e| source_error(&full, e))?;
            for n in names {
                self.walk_upper(dfd, &n, &full, &path)?;
            }
        }
        Ok(())
    }

    /// Writes the directories above the current position that are not written yet.
    fn flush(&mut self, stack: &mut [Pending]) -> Result<(), Error> {
        for p in stack.iter_mut().filter(|p| !p.emitted) {
            self.emit(&p.path, &p.full, &p.node, None, None)?;
            p.emitted = true;
        }
        Ok(())
    }

    /// Compares the directories `lower` and `upper` (image path `path`).
    fn diff_dir(
        &mut self,
        lower: OwnedFd,
        upper: OwnedFd,
        lfull: &Path,
        ufull: &Path,
        path: &ImagePath,
        stack: &mut Vec<Pending>,
    ) -> Result<(), Error> {
        let (ldir, lnames) = list_dir(lower, lfull)?;
        let (udir, unames) = list_dir(upper, ufull)?;
        let lfd = ldir.fd().map_err(|e| source_error(lfull, e))?;
        let ufd = udir.fd().map_err(|e| source_error(ufull, e))?;
        let (mut i, mut j) = (0, 0);
        while i < lnames.len() || j < unames.len() {
            let order = match (lnames.get(i), unames.get(j)) {
                (Some(l), Some(u)) => l.cmp(u),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.flush(stack)?;
                    self.b.add_whiteout(path.child(&lnames[i])?)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.flush(stack)?;
                    self.walk_upper(ufd, &unames[j], ufull, path)?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let sides = Sides {
                        lfd,
                        ufd,
                        lfull,
                        ufull,
                    };
                    self.diff_common(&sides, &lnames[i], path, stack)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// Compares `name`, present in both directories.
    fn diff_common(
        &mut self,
        s: &Sides<'_>,
        name: &[u8],
        parent: &ImagePath,
        stack: &mut Vec<Pending>,
    ) -> Result<(), Error> {
        let lf = s.lfull.join(OsStr::from_bytes(name));
        let uf = s.ufull.join(OsStr::from_bytes(name));
        let l = lstat_at(s.lfd, name, &lf)?;
        let u = lstat_at(s.ufd, name, &uf)?;
        let l_dir = l.kind == FileType::Directory;
        let u_dir = u.kind == FileType::Directory;
        if l_dir && u_dir {
            let changed = l.perm != u.perm
                || l.uid != u.uid
                || l.gid != u.gid
                || self.x.read(&lf)?.kept != self.x.read(&uf)?.kept;
            let path = parent.child(name)?;
            stack.push(Pending {
                path: path.clone(),
                full: uf.clone(),
                node: u,
                emitted: false,
            });
            // On an error the whole capture fails, so the stack need not be unwound.
            if changed {
                self.flush(stack)?;
            }
            let lsub = open_dir_at(s.lfd, name, &lf)?;
            let usub = open_dir_at(s.ufd, name, &uf)?;
            self.diff_dir(lsub, usub, &lf, &uf, &path, stack)?;
            stack.pop();
            return Ok(());
        }
        if l_dir || u_dir || self.changed(s, name, &l, &u, &lf, &uf)? {
            // A directory replaced by a non-directory: the new entry (appliers remove what it
            // replaces); the other way round: the directory with its contents.
            self.flush(stack)?;
            self.walk_upper(s.ufd, name, s.ufull, parent)?;
        }
        Ok(())
    }

    /// Whether a non-directory present on both sides changed.
    fn changed(
        &mut self,
        s: &Sides<'_>,
        name: &[u8],
        l: &Node,
        u: &Node,
        lf: &Path,
        uf: &Path,
    ) -> Result<bool, Error> {
        if l.kind != u.kind || l.uid != u.uid || l.gid != u.gid {
            return Ok(true);
        }
        if u.kind != FileType::Symlink && l.perm != u.perm {
            return Ok(true);
        }
        let differs = match u.kind {
            FileType::Symlink => read_link_at(s.lfd, name, lf)? != read_link_at(s.ufd, name, uf)?,
            FileType::RegularFile => l.size != u.size,
            FileType::CharacterDevice | FileType::BlockDevice => l.rdev != u.rdev,
            _ => false,
        };
        if differs || self.x.read(lf)?.kept != self.x.read(uf)?.kept {
            return Ok(true);
        }
        if u.kind == FileType::RegularFile {
            return Ok(!self.same_content(s, name, l, u, lf, uf)?);
        }
        Ok(false)
    }

    /// Whether two regular files of equal size hold the same bytes.
    fn same_content(
        &mut self,
        s: &Sides<'_>,
        name: &[u8],
        l: &Node,
        u: &Node,
        lf: &Path,
        uf: &Path,
    ) -> Result<bool, Error> {
        if l.dev == u.dev && l.ino == u.ino {
            return Ok(true);
        }
        let mut a = open_file_at(s.lfd, name, lf, l)?;
        let mut b = open_file_at(s.ufd, name, uf, u)?;
        let (ba, bb) = &mut self.bufs;
        if ba.is_empty() {
            ba.resize(COMPARE_BUF, 0);
            bb.resize(COMPARE_BUF, 0);
        }
        loop {
            let na = read_full(&mut a, ba).map_err(|source| Error::Source {
                path: lf.to_owned(),
                source,
            })?;
            let nb = read_full(&mut b, bb).map_err(|source| Error::Source {
                path: uf.to_owned(),
                source,
            })?;
            if na != nb || ba[..na] != bb[..nb] {
                return Ok(false);
            }
            if na == 0 {
                return Ok(true);
            }
        }
    }
}

/// The two directories a tree diff is comparing.
struct Sides<'a> {
    lfd: BorrowedFd<'a>,
    ufd: BorrowedFd<'a>,
    lfull: &'a Path,
    ufull: &'a Path,
}

/// Extended attributes of one node, sorted into what the layer keeps and what overlay says.
#[derive(Debug, Default, PartialEq, Eq)]
struct NodeXattrs {
    /// Kept: name → value.
    kept: BTreeMap<String, Vec<u8>>,
    /// Names left out.
    ignored: Vec<String>,
    /// Overlay mode: `*.overlay.opaque` is `y`.
    opaque: bool,
    /// Overlay mode: the name of a `redirect` or `metacopy` attribute.
    unsupported: Option<String>,
}

/// Reads extended attributes with fixed buffers and keeps count of what was left out.
struct Xattrs {
    /// Interpret `trusted.overlay.*` and `user.overlay.*`.
    overlay: bool,
    list: Vec<u8>,
    value: Vec<u8>,
    total: u64,
    ignored: BTreeMap<String, u64>,
    ignored_more: u64,
}

impl Xattrs {
    fn new(overlay: bool) -> Self {
        Xattrs {
            overlay,
            list: vec![0; XATTR_MAX],
            value: vec![0; XATTR_MAX],
            total: 0,
            ignored: BTreeMap::new(),
            ignored_more: 0,
        }
    }

    /// The attributes of the node at `full` (not following a final symlink).
    fn read(&mut self, full: &Path) -> Result<NodeXattrs, Error> {
        let mut out = NodeXattrs::default();
        let n = match rustix::fs::llistxattr(full, &mut self.list[..]) {
            Ok(n) => n,
            Err(e) if e == Errno::NOTSUP || e == Errno::OPNOTSUPP => return Ok(out),
            Err(e) => return Err(source_error(full, e)),
        };
        let list = &self.list[..n];
        let mut rest = list;
        while let Ok(name) = CStr::from_bytes_until_nul(rest) {
            rest = &rest[name.to_bytes_with_nul().len()..];
            let raw = name.to_bytes();
            if raw.is_empty() {
                continue;
            }
            match classify(raw) {
                Class::Keep(k) => {
                    if let Some(v) = get_xattr(full, name, &mut self.value)? {
                        out.kept.insert(k.to_owned(), v);
                    }
                }
                Class::Overlay(b"opaque") if self.overlay => {
                    out.opaque |=
                        get_xattr(full, name, &mut self.value)?.is_some_and(|v| v == b"y");
                }
                Class::Overlay(b"redirect" | b"metacopy") if self.overlay => {
                    out.unsupported = Some(String::from_utf8_lossy(raw).into_owned());
                }
                Class::Overlay(_) if self.overlay => {}
                // Captured layers name even the host's own attributes they leave out.
                Class::Overlay(_) | Class::HostOnly | Class::Ignore => {
                    out.ignored.push(String::from_utf8_lossy(raw).into_owned());
                }
            }
        }
        Ok(out)
    }

    /// Counts the attributes of an entry that goes into the layer against the budget, and the
    /// left-out names for the warning.
    fn charge(&mut self, xa: &NodeXattrs, path: &ImagePath) -> Result<(), Error> {
        for (k, v) in &xa.kept {
            self.total += (k.len() + v.len()) as u64;
        }
        if self.total > MAX_XATTR_BYTES {
            return Err(Error::Capture {
                what: path.to_string(),
                reason: format!(
                    "the captured files carry more than {} MiB of extended attributes",
                    MAX_XATTR_BYTES >> 20
                ),
            });
        }
        for name in &xa.ignored {
            if let Some(n) = self.ignored.get_mut(name) {
                *n += 1;
            } else if self.ignored.len() < MAX_IGNORED_NAMES {
                self.ignored.insert(name.clone(), 1);
            } else {
                self.ignored_more += 1;
            }
        }
        Ok(())
    }

    fn warning(&self) -> Option<String> {
        if self.ignored.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self
            .ignored
            .iter()
            .map(|(k, n)| format!("{k} ({n} entries)"))
            .collect();
        if self.ignored_more > 0 {
            parts.push(format!("{} more", self.ignored_more));
        }
        Some(format!(
            "extended attributes left out of the layer (only user.* and security.capability \
             are kept): {}",
            parts.join(", ")
        ))
    }
}

/// One attribute value; `None` when it disappeared since the list was read.
fn get_xattr(full: &Path, name: &CStr, buf: &mut [u8]) -> Result<Option<Vec<u8>>, Error> {
    match rustix::fs::lgetxattr(full, name, &mut *buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(Errno::NODATA) => Ok(None),
        Err(e) => Err(source_error(full, e)),
    }
}

/// Resolves an output inside `rootfs` with `lstat`, one component at a time.
fn resolve_output(rootfs: &Path, path: &ImagePath) -> Result<(PathBuf, Node), Error> {
    let what = || format!("output {path}");
    let mut full = rootfs.to_owned();
    let mut node = lstat(&full)?;
    if node.kind != FileType::Directory {
        return Err(Error::UnsupportedSource {
            path: full,
            reason: "is not a directory (the step's root filesystem)".to_owned(),
        });
    }
    let mut so_far = ImagePath::root();
    for comp in path.as_bytes().split(|&b| b == b'/') {
        if node.kind != FileType::Directory {
            let reason = if node.kind == FileType::Symlink {
                format!("{so_far} is a symlink in the step's filesystem")
            } else {
                format!("{so_far} is not a directory in the step's filesystem")
            };
            return Err(Error::Capture {
                what: what(),
                reason,
            });
        }
        so_far = so_far.child(comp)?;
        full.push(OsStr::from_bytes(comp));
        node = match rustix::fs::lstat(&full) {
            Ok(st) => Node::of(&st),
            Err(Errno::NOENT) => {
                return Err(Error::Capture {
                    what: what(),
                    reason: format!("{so_far} does not exist in the step's filesystem"),
                });
            }
            Err(e) => return Err(source_error(&full, e)),
        };
    }
    Ok((full, node))
}

/// Whether `path` is a directory in the tree at `root`, reached without following a symlink.
fn is_dir_in(root: &Path, path: &ImagePath) -> bool {
    let mut full = root.to_owned();
    for comp in path.as_bytes().split(|&b| b == b'/') {
        full.push(OsStr::from_bytes(comp));
        match rustix::fs::lstat(&full) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            _ => return false,
        }
    }
    true
}

fn is_within(path: &ImagePath, dir: &ImagePath) -> bool {
    let (p, d) = (path.as_bytes(), dir.as_bytes());
    d.is_empty() || p == d || (p.starts_with(d) && p.get(d.len()) == Some(&b'/'))
}

fn host_path(root: &Path, path: &ImagePath) -> PathBuf {
    root.join(OsStr::from_bytes(path.as_bytes()))
}

/// Mode (unless `with_mode` is false) and owner of a node, as a metadata override.
fn owner_override(node: &Node, with_mode: bool) -> MetaOverride {
    MetaOverride {
        mode: with_mode.then_some(node.perm),
        uid: Some(node.uid),
        gid: Some(node.gid),
        ..MetaOverride::default()
    }
}

/// Refuses names that a layer would read as whiteouts.
fn check_name(path: &ImagePath, what: impl FnOnce() -> String) -> Result<(), Error> {
    if path.file_name().starts_with(WHITEOUT_PREFIX) {
        return Err(Error::Capture {
            what: what(),
            reason: format!(
                "{path}: names starting with .wh. are whiteouts in a layer, so this file \
                 cannot be captured"
            ),
        });
    }
    Ok(())
}

fn device_error(what: String, path: &ImagePath, node: &Node) -> Error {
    let kind = if node.kind == FileType::BlockDevice {
        "block"
    } else {
        "character"
    };
    Error::Capture {
        what,
        reason: format!(
            "{path} is a {kind} device ({}, {}); device nodes are not captured",
            node.rdev.0, node.rdev.1
        ),
    }
}

fn unsupported_overlay(path: &ImagePath, attr: &str) -> Error {
    Error::Capture {
        what: path.to_string(),
        reason: format!(
            "has the overlay attribute {attr}: overlay redirect_dir/metacopy are not supported"
        ),
    }
}

fn source_error(path: &Path, e: Errno) -> Error {
    Error::Source {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn lstat(full: &Path) -> Result<Node, Error> {
    rustix::fs::lstat(full)
        .map(|st| Node::of(&st))
        .map_err(|e| source_error(full, e))
}

fn lstat_at(dirfd: BorrowedFd<'_>, name: &[u8], full: &Path) -> Result<Node, Error> {
    statat(dirfd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| Node::of(&st))
        .map_err(|e| source_error(full, e))
}

fn read_link_at(dirfd: BorrowedFd<'_>, name: &[u8], full: &Path) -> Result<Vec<u8>, Error> {
    readlinkat(dirfd, OsStr::from_bytes(name), Vec::new())
        .map(|t| t.into_bytes())
        .map_err(|e| source_error(full, e))
}

fn open_dir(full: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::open(
        full,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| source_error(full, e))
}

fn open_dir_at(dirfd: BorrowedFd<'_>, name: &[u8], full: &Path) -> Result<OwnedFd, Error> {
    openat(
        dirfd,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| source_error(full, e))
}

/// Opens a regular file for comparison and checks it is still the inode that was stat'ed.
fn open_file_at(
    dirfd: BorrowedFd<'_>,
    name: &[u8],
    full: &Path,
    node: &Node,
) -> Result<File, Error> {
    let fd = openat(
        dirfd,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| source_error(full, e))?;
    let now = Node::of(&rustix::fs::fstat(&fd).map_err(|e| source_error(full, e))?);
    if now.kind != FileType::RegularFile || now.ino != node.ino || now.dev != node.dev {
        return Err(Error::SourceChanged {
            path: full.to_owned(),
            reason: "it was replaced while the step's changes were compared".to_owned(),
        });
    }
    Ok(File::from(fd))
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a directory's names (without `.` and `..`), sorted by bytes.
fn list_dir(fd: OwnedFd, full: &Path) -> Result<(Dir, Vec<Vec<u8>>), Error> {
    let mut dir = Dir::new(fd).map_err(|e| source_error(full, e))?;
    let mut names = Vec::new();
    for entry in dir.by_ref() {
        let entry = entry.map_err(|e| source_error(full, e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok((dir, names))
}
