//! A layer recipe: what goes into a layer, resolved from sources into a sorted entry list.
//!
//! [`RecipeBuilder`] collects entries from files, directory trees, inline content, links,
//! empty directories and whiteouts, then [`RecipeBuilder::build`] checks the whole set
//! (duplicates, link targets, metadata that matches nothing), adds parent directories, applies
//! defaults and per-path metadata, turns shared inodes into hard links, and sorts by path bytes.
//! Nothing is read from the sources' contents here; the tar writer streams them later.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, openat, readlinkat, statat};

use crate::meta::{Defaults, Meta, MetaOverride, XATTR_PREFIX};
use crate::{Error, ImagePath};

/// The prefix of whiteout file names.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// One tar entry, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it goes.
    pub path: ImagePath,
    /// What it is.
    pub kind: EntryKind,
    /// Mode, owner, time, PAX records.
    pub meta: Meta,
}

/// The type of an entry and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File(FileSource),
    /// A directory.
    Dir,
    /// A symbolic link; the target is stored verbatim.
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same layer.
    Hardlink(ImagePath),
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// What identifies a file's state on disk without reading it: if none of these changed, its
/// content is taken not to have changed either (a stat cache's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

impl FileStamp {
    /// The stamp of a `stat` result (the same values as [`FileStamp::of`] gives for the same
    /// file).
    pub fn from_stat(st: &Stat) -> Self {
        FileStamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: nanos(st.st_mtime, i64::try_from(st.st_mtime_nsec).unwrap_or(0)),
            ctime_ns: nanos(st.st_ctime, i64::try_from(st.st_ctime_nsec).unwrap_or(0)),
        }
    }

    /// The stamp of `md`.
    pub fn of(md: &fs::Metadata) -> Self {
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: nanos(md.mtime(), md.mtime_nsec()),
            ctime_ns: nanos(md.ctime(), md.ctime_nsec()),
        }
    }
}

/// A time as nanoseconds since the epoch, saturating for times past 2262 (a source file may
/// carry any time; the stat cache computes the same).
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// The stamp of the file a path leads to (following symlinks), through the same `stat` call as
/// tree walks and the tar writer use, so stamps of one file always compare equal.
fn stamp_of_path(path: &Path) -> Result<FileStamp, Error> {
    rustix::fs::stat(path)
        .map(|st| FileStamp::from_stat(&st))
        .map_err(|e| Error::Source {
            path: path.to_owned(),
            source: e.into(),
        })
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file on disk and the size it had when the recipe was made (checked again when read).
    Disk {
        /// The source file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Its state when the recipe was made.
        stamp: FileStamp,
    },
    /// Bytes given inline (content entries, whiteouts).
    Inline(Arc<[u8]>),
}

impl FileSource {
    /// The number of content bytes.
    pub fn size(&self) -> u64 {
        match self {
            FileSource::Disk { size, .. } => *size,
            FileSource::Inline(b) => b.len() as u64,
        }
    }
}

/// A complete, validated, sorted list of entries.
#[derive(Debug, Clone, Default)]
pub struct Recipe {
    /// Entries in tar order.
    pub entries: Vec<Entry>,
    /// Things worth telling the user that are not errors (skipped sockets).
    pub warnings: Vec<String>,
    /// Whether the tar writer counts source files whose extended attributes are left out
    /// (they were not preserved), for a warning. Step captures handle attributes themselves.
    pub count_unkept_xattrs: bool,
}

impl Recipe {
    /// Total bytes of file content, for progress reporting.
    pub fn content_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File(f) => f.size(),
                _ => 0,
            })
            .sum()
    }
}

/// Which metadata to take from the sources on disk instead of the layer defaults. Off by
/// default: source modes depend on the umask, owners on who checked the files out, mtimes on
/// when; taking them makes the layer only as reproducible as the source tree. For packaging a
/// prepared root filesystem (Yocto under pseudo, a debootstrap tree) it is what is wanted.
/// Per-path metadata still wins.
///
/// `xattrs` takes the extended attributes of regular files and directories that layers carry
/// (`user.*`, `security.capability`; see the policy in `xattr.rs`). Without it they are not
/// read while planning; the tar writer counts the source files that have some and the layer
/// gets a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preserve {
    /// Permission bits, including setuid, setgid and sticky (not for symlinks).
    pub mode: bool,
    /// Numeric uid and gid.
    pub owner: bool,
    /// Modification time (whole seconds).
    pub mtime: bool,
    /// Extended attributes (`user.*`, `security.capability`).
    pub xattrs: bool,
}

impl Preserve {
    /// Parses names: `mode`, `owner`, `mtime`, `xattrs`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, Error> {
        let mut p = Preserve::default();
        for n in names {
            match n.as_ref() {
                "mode" => p.mode = true,
                "owner" => p.owner = true,
                "mtime" => p.mtime = true,
                "xattrs" => p.xattrs = true,
                other => {
                    return Err(Error::InvalidMetadata {
                        path: "layer".to_owned(),
                        field: "preserve",
                        value: other.to_owned(),
                        reason: "known values are mode, owner, mtime and xattrs".to_owned(),
                    });
                }
            }
        }
        Ok(p)
    }

    /// Whether anything that needs a source's `stat` is preserved.
    fn any(self) -> bool {
        self.mode || self.owner || self.mtime
    }
}

/// Metadata of a source on disk, kept only when something is preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SourceMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl SourceMeta {
    fn from_stat(st: &Stat) -> Self {
        SourceMeta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
        }
    }

    fn of(md: &fs::Metadata) -> Self {
        SourceMeta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
        }
    }
}

/// The state of a tree walk: where it is, relative to the tree root and on disk.
struct TreeWalk<'a> {
    dest: &'a ImagePath,
    filter: &'a TreeFilter,
    origin: &'a Arc<str>,
    rel: PathBuf,
    dir: PathBuf,
}

/// Include and exclude globs for a directory tree. A pattern without `/` matches an entry's
/// name at any depth (`*.pyc`); a pattern with `/` matches the path relative to the tree root
/// (`docs/**`). `*` never crosses `/`; `**` does.
#[derive(Debug, Clone, Default)]
pub struct TreeFilter {
    include: Option<Matcher>,
    exclude: Option<Matcher>,
    /// With [`TreeFilter::anchored`]: what patterns with `/` see in front of the path relative
    /// to the tree root (the tree's image path, relative to the image root).
    anchor: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Matcher {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Matcher {
    fn new(patterns: &[String]) -> Result<Option<Self>, Error> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_start_matches('/');
            let glob: Glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| Error::Glob {
                    pattern: p.clone(),
                    source,
                })?;
            if p.contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        let build = |b: GlobSetBuilder, p: &[String]| {
            b.build().map_err(|source| Error::Glob {
                pattern: p.join(", "),
                source,
            })
        };
        Ok(Some(Matcher {
            by_name: build(by_name, patterns)?,
            by_path: build(by_path, patterns)?,
        }))
    }

    fn is_match(&self, rel: &Path) -> bool {
        self.by_path.is_match(rel) || rel.file_name().is_some_and(|n| self.by_name.is_match(n))
    }
}

impl TreeFilter {
    /// Builds a filter; an invalid glob is an error naming it.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, Error> {
        Ok(TreeFilter {
            include: Matcher::new(include)?,
            exclude: Matcher::new(exclude)?,
            anchor: None,
        })
    }

    /// The same filter for a tree that goes to `dest`, with patterns that contain `/` matched
    /// against image paths (`/out/cache/**`) instead of paths relative to the tree root.
    /// Patterns without `/` still match names at any depth.
    pub fn anchored(mut self, dest: &ImagePath) -> Self {
        self.anchor = Some(PathBuf::from(OsStr::from_bytes(dest.as_bytes())));
        self
    }

    /// Whether an exclude pattern matches the image path `path` itself (patterns with `/`
    /// matched against the whole image path, as with [`TreeFilter::anchored`]).
    pub fn excludes(&self, path: &ImagePath) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|m| m.is_match(Path::new(OsStr::from_bytes(path.as_bytes()))))
    }
}

#[derive(Debug, Clone)]
struct Item {
    kind: ItemKind,
    /// Which source added it, for error messages; shared by every entry of a tree.
    origin: Arc<str>,
}

#[derive(Debug, Clone)]
enum ItemKind {
    DiskFile {
        src: PathBuf,
        exec: bool,
        /// Link count: only files with more than one name can become tar hard links.
        nlink: u64,
        stamp: FileStamp,
    },
    Inline(Arc<[u8]>),
    Dir {
        implicit: bool,
    },
    Symlink(Vec<u8>),
    Fifo {
        mode: u32,
    },
    Char {
        major: u32,
        minor: u32,
        mode: u32,
    },
    Block {
        major: u32,
        minor: u32,
        mode: u32,
    },
}

impl ItemKind {
    fn describe(&self) -> &'static str {
        match self {
            ItemKind::DiskFile { .. } | ItemKind::Inline(_) => "file",
            ItemKind::Dir { .. } => "directory",
            ItemKind::Symlink(_) => "symlink",
            ItemKind::Fifo { .. } => "fifo",
            ItemKind::Char { .. } => "character device",
            ItemKind::Block { .. } => "block device",
        }
    }
}

/// Refuses an input path with a component that starts with `.wh.`: in a layer it would be a
/// whiteout (or an opaque marker) and delete files of lower layers instead of adding one.
/// Only the explicit whiteout options (`whiteouts`, `opaque`) make such names; imported tars
/// keep theirs. `origin` names the input in the error.
pub(crate) fn check_not_whiteout(path: &ImagePath, origin: &str) -> Result<(), Error> {
    match path.whiteout_component() {
        None => Ok(()),
        Some(comp) => Err(Error::InvalidPath {
            path: path.to_string(),
            reason: format!(
                "{origin}: the name {:?} starts with \".wh.\", which a layer reads as a \
                 whiteout (it would delete files of lower layers); to delete files, use \
                 whiteouts or opaque",
                String::from_utf8_lossy(comp)
            ),
        }),
    }
}

/// Collects entries and builds a [`Recipe`].
#[derive(Debug)]
pub struct RecipeBuilder {
    defaults: Defaults,
    parents: bool,
    items: BTreeMap<ImagePath, Item>,
    links: BTreeMap<ImagePath, (ImagePath, String)>,
    metadata: BTreeMap<ImagePath, MetaOverride>,
    warnings: Vec<String>,
    preserve: Preserve,
    source_meta: HashMap<ImagePath, SourceMeta>,
    /// Preserved extended attributes of sources (only non-empty ones).
    source_xattrs: HashMap<ImagePath, BTreeMap<String, Vec<u8>>>,
    xattr_reader: crate::xattr::Reader,
    /// Attribute names left out of preserved sources, with their counts.
    xattrs_left_out: BTreeMap<String, u64>,
}

impl RecipeBuilder {
    /// A builder with the given defaults; `parents` adds missing parent directories.
    pub fn new(defaults: Defaults, parents: bool) -> Self {
        RecipeBuilder {
            defaults,
            parents,
            items: BTreeMap::new(),
            links: BTreeMap::new(),
            metadata: BTreeMap::new(),
            warnings: Vec::new(),
            preserve: Preserve::default(),
            source_meta: HashMap::new(),
            source_xattrs: HashMap::new(),
            xattr_reader: crate::xattr::Reader::default(),
            xattrs_left_out: BTreeMap::new(),
        }
    }

    /// Takes the given metadata from the sources on disk (see [`Preserve`]). Call before
    /// adding sources.
    pub fn preserve(&mut self, p: Preserve) {
        self.preserve = p;
    }

    fn note_source(&mut self, path: &ImagePath, meta: SourceMeta) {
        if self.preserve.any() {
            self.source_meta.insert(path.clone(), meta);
        }
    }

    /// Reads the extended attributes of a regular file or directory source when they are
    /// preserved; `follow` follows a final symlink.
    fn note_xattrs(&mut self, path: &ImagePath, src: &Path, follow: bool) -> Result<(), Error> {
        if !self.preserve.xattrs {
            return Ok(());
        }
        let x = self.xattr_reader.read(src, follow)?;
        for name in x.left_out {
            *self.xattrs_left_out.entry(name).or_default() += 1;
        }
        if !x.kept.is_empty() {
            self.source_xattrs.insert(path.clone(), x.kept);
        }
        Ok(())
    }

    /// Adds an entry whose name comes from an input (never a whiteout: see
    /// [`check_not_whiteout`]).
    fn insert(&mut self, path: ImagePath, kind: ItemKind, origin: &Arc<str>) -> Result<(), Error> {
        check_not_whiteout(&path, origin)?;
        self.insert_item(path, kind, origin)
    }

    fn insert_item(
        &mut self,
        path: ImagePath,
        kind: ItemKind,
        origin: &Arc<str>,
    ) -> Result<(), Error> {
        if path.is_root() {
            return Err(Error::InvalidPath {
                path: "/".to_owned(),
                reason: format!("{origin}: the root directory cannot be replaced"),
            });
        }
        if let Some((_, first)) = self.links.get(&path) {
            return Err(Error::DuplicatePath {
                path: path.to_string(),
                first: first.clone(),
                second: origin.to_string(),
            });
        }
        match self.items.get(&path) {
            None => {
                self.items.insert(
                    path,
                    Item {
                        kind,
                        origin: Arc::clone(origin),
                    },
                );
                Ok(())
            }
            // Two sources may contribute to the same directory; its contents must not clash.
            Some(existing)
                if matches!(existing.kind, ItemKind::Dir { .. })
                    && matches!(kind, ItemKind::Dir { .. }) =>
            {
                Ok(())
            }
            Some(existing) => Err(Error::DuplicatePath {
                path: path.to_string(),
                first: existing.origin.to_string(),
                second: origin.to_string(),
            }),
        }
    }

    /// Adds one file from disk (symlinks to files are followed: the file was named explicitly).
    pub fn add_file(&mut self, dest: ImagePath, src: &Path) -> Result<(), Error> {
        let md = fs::metadata(src).map_err(|source| Error::Source {
            path: src.to_owned(),
            source,
        })?;
        if md.is_dir() {
            return Err(Error::UnsupportedSource {
                path: src.to_owned(),
                reason: "is a directory; add it as a directory tree instead".to_owned(),
            });
        }
        if !md.is_file() {
            return Err(Error::UnsupportedSource {
                path: src.to_owned(),
                reason: "is not a regular file".to_owned(),
            });
        }
        let origin: Arc<str> = Arc::from(format!("file {}", src.display()));
        self.note_source(&dest, SourceMeta::of(&md));
        self.note_xattrs(&dest, src, true)?;
        self.insert(
            dest,
            ItemKind::DiskFile {
                src: src.to_owned(),
                exec: md.mode() & 0o100 != 0,
                nlink: md.nlink(),
                stamp: stamp_of_path(src)?,
            },
            &origin,
        )
    }

    /// Adds a directory tree recursively. Symlinks inside it are kept as symlinks; hard-linked
    /// files become tar hard links; sockets are skipped with a warning.
    pub fn add_tree(
        &mut self,
        dest: ImagePath,
        src: &Path,
        filter: &TreeFilter,
    ) -> Result<(), Error> {
        let md = fs::metadata(src).map_err(|source| Error::Source {
            path: src.to_owned(),
            source,
        })?;
        if !md.is_dir() {
            return Err(Error::UnsupportedSource {
                path: src.to_owned(),
                reason: "is not a directory".to_owned(),
            });
        }
        let origin: Arc<str> = Arc::from(format!("directory {}", src.display()));
        if !dest.is_root() {
            self.note_source(&dest, SourceMeta::of(&md));
            self.note_xattrs(&dest, src, true)?;
            self.insert(dest.clone(), ItemKind::Dir { implicit: false }, &origin)?;
        }
        let fd = rustix::fs::open(
            src,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Source {
            path: src.to_owned(),
            source: e.into(),
        })?;
        let mut walk = TreeWalk {
            dest: &dest,
            filter,
            origin: &origin,
            rel: PathBuf::new(),
            dir: src.to_owned(),
        };
        self.walk_dir(fd, &mut walk)
    }

    /// Walks one directory of a tree through its file descriptor: entries are stat'ed relative
    /// to it (no full path resolution per file) and subdirectories opened from it without
    /// following symlinks.
    fn walk_dir(&mut self, fd: OwnedFd, w: &mut TreeWalk<'_>) -> Result<(), Error> {
        let dir_err = |dir: &Path| {
            let dir = dir.to_owned();
            move |e: rustix::io::Errno| Error::Source {
                path: dir.clone(),
                source: e.into(),
            }
        };
        let mut dir = Dir::new(fd).map_err(dir_err(&w.dir))?;
        let mut names: Vec<(Vec<u8>, FileType)> = Vec::new();
        for entry in dir.by_ref() {
            let entry = entry.map_err(dir_err(&w.dir))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push((name.to_vec(), entry.file_type()));
            }
        }
        let dfd = dir.fd().map_err(dir_err(&w.dir))?;
        for (name, mut ft) in names {
            let os_name = OsStr::from_bytes(&name);
            let full = w.dir.join(os_name);
            let src_err = |e: rustix::io::Errno| Error::Source {
                path: full.clone(),
                source: e.into(),
            };
            let mut stat = None;
            if ft == FileType::Unknown {
                let st = statat(dfd, os_name, AtFlags::SYMLINK_NOFOLLOW).map_err(src_err)?;
                ft = FileType::from_raw_mode(st.st_mode);
                stat = Some(st);
            }
            w.rel.push(os_name);
            let result = self.walk_entry(dfd, &name, ft, stat, &full, w);
            w.rel.pop();
            result?;
        }
        Ok(())
    }

    fn walk_entry(
        &mut self,
        dfd: BorrowedFd<'_>,
        name: &[u8],
        ft: FileType,
        stat: Option<Stat>,
        full: &Path,
        w: &mut TreeWalk<'_>,
    ) -> Result<(), Error> {
        let os_name = OsStr::from_bytes(name);
        let src_err = |e: rustix::io::Errno| Error::Source {
            path: full.to_owned(),
            source: e.into(),
        };
        let is_dir = ft == FileType::Directory;
        let anchored;
        let key: &Path = match &w.filter.anchor {
            Some(a) => {
                anchored = a.join(&w.rel);
                &anchored
            }
            None => &w.rel,
        };
        if w.filter.exclude.as_ref().is_some_and(|m| m.is_match(key)) {
            // An excluded directory goes with everything in it.
            return Ok(());
        }
        let included = w.filter.include.as_ref().is_none_or(|m| m.is_match(key));
        let needs_stat =
            !matches!(ft, FileType::Directory | FileType::Symlink) || self.preserve.any();
        let stat = match stat {
            Some(st) => Some(st),
            None if included && needs_stat => {
                Some(statat(dfd, os_name, AtFlags::SYMLINK_NOFOLLOW).map_err(src_err)?)
            }
            None => None,
        };
        if included {
            let path = w.dest.join_relative(w.rel.as_os_str().as_bytes())?;
            let kind = match ft {
                FileType::Directory => Some(ItemKind::Dir { implicit: false }),
                FileType::Symlink => {
                    let target = readlinkat(dfd, os_name, Vec::new()).map_err(src_err)?;
                    Some(ItemKind::Symlink(target.into_bytes()))
                }
                _ => self.special_item(full, ft, stat.as_ref().expect("stat'ed above")),
            };
            if let Some(kind) = kind {
                if let Some(st) = &stat {
                    self.note_source(&path, SourceMeta::from_stat(st));
                }
                // Only regular files and directories can carry the attributes layers keep.
                if matches!(ft, FileType::Directory | FileType::RegularFile) {
                    self.note_xattrs(&path, full, false)?;
                }
                // Directories between the tree root and this entry belong to the tree. Without
                // an include filter the walk has already added them (parents come first).
                if w.filter.include.is_some() {
                    for anc in path.ancestors() {
                        if anc.as_bytes().len() > w.dest.as_bytes().len()
                            && !self.items.contains_key(&anc)
                        {
                            self.insert(anc, ItemKind::Dir { implicit: false }, w.origin)?;
                        }
                    }
                }
                if path.whiteout_component().is_some() {
                    let origin = format!("file {} (in {})", full.display(), w.origin);
                    check_not_whiteout(&path, &origin)?;
                }
                self.insert(path, kind, w.origin)?;
            }
        }
        if is_dir {
            // Walked even when not included itself: something inside may be.
            let child = openat(
                dfd,
                os_name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(src_err)?;
            let parent = std::mem::replace(&mut w.dir, full.to_owned());
            let r = self.walk_dir(child, w);
            w.dir = parent;
            r?;
        }
        Ok(())
    }

    /// A regular file, fifo or device of a tree; sockets are skipped with a warning.
    fn special_item(&mut self, full: &Path, ft: FileType, st: &Stat) -> Option<ItemKind> {
        let perm = st.st_mode & 0o7777;
        let dev = || {
            let rdev = st.st_rdev;
            (rustix::fs::major(rdev), rustix::fs::minor(rdev))
        };
        Some(match ft {
            FileType::RegularFile => ItemKind::DiskFile {
                src: full.to_owned(),
                exec: st.st_mode & 0o100 != 0,
                nlink: st.st_nlink,
                stamp: FileStamp::from_stat(st),
            },
            FileType::Fifo => ItemKind::Fifo { mode: perm },
            FileType::CharacterDevice => {
                let (major, minor) = dev();
                ItemKind::Char {
                    major,
                    minor,
                    mode: perm,
                }
            }
            FileType::BlockDevice => {
                let (major, minor) = dev();
                ItemKind::Block {
                    major,
                    minor,
                    mode: perm,
                }
            }
            _ => {
                self.warnings.push(format!(
                    "skipped socket {} (sockets cannot be archived)",
                    full.display()
                ));
                return None;
            }
        })
    }

    /// Adds a file with inline content.
    pub fn add_content(&mut self, dest: ImagePath, content: &[u8]) -> Result<(), Error> {
        let origin: Arc<str> = Arc::from(format!("content for {dest}"));
        self.insert(dest, ItemKind::Inline(Arc::from(content)), &origin)
    }

    /// Adds a symbolic link; the target is stored verbatim and resolved only at run time.
    pub fn add_symlink(&mut self, dest: ImagePath, target: &[u8]) -> Result<(), Error> {
        if target.is_empty() || target.contains(&0) || target.len() > crate::path::MAX_PATH_LEN {
            return Err(Error::InvalidPath {
                path: dest.to_string(),
                reason: "a symlink target must be 1 to 4096 bytes without NUL".to_owned(),
            });
        }
        let origin: Arc<str> = Arc::from(format!("symlink {dest}"));
        self.insert(dest, ItemKind::Symlink(target.to_vec()), &origin)
    }

    /// Adds a named pipe with the given permission bits.
    pub fn add_fifo(&mut self, dest: ImagePath, mode: u32) -> Result<(), Error> {
        let origin: Arc<str> = Arc::from(format!("fifo {dest}"));
        self.insert(
            dest,
            ItemKind::Fifo {
                mode: mode & 0o7777,
            },
            &origin,
        )
    }

    /// Adds a hard link to another regular file of this layer.
    pub fn add_hardlink(&mut self, dest: ImagePath, target: ImagePath) -> Result<(), Error> {
        let origin = format!("hard link {dest}");
        check_not_whiteout(&dest, &origin)?;
        check_not_whiteout(&target, &format!("the target of {origin}"))?;
        if let Some(existing) = self.items.get(&dest) {
            return Err(Error::DuplicatePath {
                path: dest.to_string(),
                first: existing.origin.to_string(),
                second: origin,
            });
        }
        if let Some((_, first)) = self.links.get(&dest) {
            return Err(Error::DuplicatePath {
                path: dest.to_string(),
                first: first.clone(),
                second: origin,
            });
        }
        self.links.insert(dest, (target, origin));
        Ok(())
    }

    /// Adds the directory `src` (not followed if it is a symlink) without its contents: an
    /// entry whose preserved metadata (see [`RecipeBuilder::preserve`]) comes from `src`.
    pub fn add_dir_from(&mut self, dest: ImagePath, src: &Path) -> Result<(), Error> {
        let st = rustix::fs::lstat(src).map_err(|e| Error::Source {
            path: src.to_owned(),
            source: e.into(),
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(Error::UnsupportedSource {
                path: src.to_owned(),
                reason: "is not a directory".to_owned(),
            });
        }
        let origin: Arc<str> = Arc::from(format!("directory {}", src.display()));
        self.note_source(&dest, SourceMeta::from_stat(&st));
        self.insert(dest, ItemKind::Dir { implicit: false }, &origin)
    }

    /// Adds an empty directory.
    pub fn add_empty_dir(&mut self, dest: ImagePath) -> Result<(), Error> {
        let origin: Arc<str> = Arc::from(format!("directory {dest}"));
        self.insert(dest, ItemKind::Dir { implicit: false }, &origin)
    }

    /// Adds a whiteout hiding `path` of lower layers.
    pub fn add_whiteout(&mut self, path: ImagePath) -> Result<(), Error> {
        let name = path.file_name();
        if path.is_root() || name.starts_with(WHITEOUT_PREFIX) {
            return Err(Error::InvalidPath {
                path: path.to_string(),
                reason: "cannot white out the root or a whiteout name".to_owned(),
            });
        }
        let mut wh = WHITEOUT_PREFIX.to_vec();
        wh.extend_from_slice(name);
        let origin: Arc<str> = Arc::from(format!("whiteout {path}"));
        check_not_whiteout(&path, &origin)?;
        let wh_path = path.with_file_name(&wh)?;
        self.insert_item(wh_path, ItemKind::Inline(Arc::from(&b""[..])), &origin)
    }

    /// Marks a directory opaque: its contents in lower layers are hidden.
    pub fn add_opaque(&mut self, dir: ImagePath) -> Result<(), Error> {
        if dir.is_root() {
            return Err(Error::InvalidPath {
                path: "/".to_owned(),
                reason: "the root cannot be made opaque".to_owned(),
            });
        }
        let origin: Arc<str> = Arc::from(format!("opaque directory {dir}"));
        check_not_whiteout(&dir, &origin)?;
        let marker = dir.child(OPAQUE_WHITEOUT)?;
        self.insert_item(marker, ItemKind::Inline(Arc::from(&b""[..])), &origin)
    }

    /// Sets metadata for one path. The path must name an entry of the layer by the time
    /// [`RecipeBuilder::build`] runs.
    pub fn set_metadata(&mut self, path: ImagePath, meta: MetaOverride) -> Result<(), Error> {
        check_not_whiteout(&path, "metadata")?;
        if self.metadata.insert(path.clone(), meta).is_some() {
            return Err(Error::DuplicatePath {
                path: path.to_string(),
                first: "metadata".to_owned(),
                second: "metadata".to_owned(),
            });
        }
        Ok(())
    }

    /// Validates everything and produces the sorted entry list.
    pub fn build(mut self) -> Result<Recipe, Error> {
        self.check_links()?;
        self.add_parents()?;
        for path in self.metadata.keys() {
            if !self.items.contains_key(path) && !self.links.contains_key(path) {
                return Err(Error::UnknownMetadataPath {
                    path: path.to_string(),
                });
            }
        }

        // Items move into entries (sorted by path); only multiply-linked files are remembered
        // for hard-link grouping.
        let items = std::mem::take(&mut self.items);
        let mut entries: Vec<Entry> = Vec::with_capacity(items.len() + self.links.len());
        let mut by_inode: HashMap<(u64, u64), Vec<ImagePath>> = HashMap::new();
        for (path, item) in items {
            let meta = self.meta_for(&path, &item.kind);
            let kind = match item.kind {
                ItemKind::DiskFile {
                    src, nlink, stamp, ..
                } => {
                    if nlink > 1 {
                        by_inode
                            .entry((stamp.dev, stamp.ino))
                            .or_default()
                            .push(path.clone());
                    }
                    EntryKind::File(FileSource::Disk {
                        path: src,
                        size: stamp.size,
                        stamp,
                    })
                }
                ItemKind::Inline(b) => EntryKind::File(FileSource::Inline(b)),
                ItemKind::Dir { .. } => EntryKind::Dir,
                ItemKind::Symlink(t) => EntryKind::Symlink(t),
                ItemKind::Fifo { .. } => EntryKind::Fifo,
                ItemKind::Char { major, minor, .. } => EntryKind::CharDevice { major, minor },
                ItemKind::Block { major, minor, .. } => EntryKind::BlockDevice { major, minor },
            };
            entries.push(Entry { path, kind, meta });
        }
        self.link_groups(&mut entries, by_inode);
        let mut warnings = self.warnings;
        if !self.xattrs_left_out.is_empty() {
            let mut names: Vec<String> = self
                .xattrs_left_out
                .iter()
                .take(16)
                .map(|(k, n)| format!("{k} ({n} {})", if *n == 1 { "entry" } else { "entries" }))
                .collect();
            if self.xattrs_left_out.len() > 16 {
                names.push(format!("{} more names", self.xattrs_left_out.len() - 16));
            }
            warnings.push(format!(
                "extended attributes left out of the layer (only user.* and \
                 security.capability are preserved): {}",
                names.join(", ")
            ));
        }
        Ok(Recipe {
            entries,
            warnings,
            count_unkept_xattrs: !self.preserve.xattrs,
        })
    }

    fn check_links(&self) -> Result<(), Error> {
        for (path, (target, _)) in &self.links {
            let ok = matches!(
                self.items.get(target).map(|i| &i.kind),
                Some(ItemKind::DiskFile { .. } | ItemKind::Inline(_))
            );
            if !ok {
                let reason = match self.items.get(target) {
                    None if self.links.contains_key(target) => {
                        "the target is itself a hard link; link to the file".to_owned()
                    }
                    None => "the target is not in this layer".to_owned(),
                    Some(i) => format!("the target is a {}, not a regular file", i.kind.describe()),
                };
                return Err(Error::HardlinkTarget {
                    path: path.to_string(),
                    target: target.to_string(),
                    reason,
                });
            }
            if self.metadata.contains_key(path) {
                return Err(Error::InvalidMetadata {
                    path: path.to_string(),
                    field: "metadata",
                    value: String::new(),
                    reason: format!("a hard link shares the metadata of its target {target}"),
                });
            }
        }
        Ok(())
    }

    /// Checks that every entry's parent is a directory and, with `parents`, adds the missing
    /// ones. In path order a parent comes before its children, so checking each entry's
    /// immediate parent covers every ancestor.
    fn add_parents(&mut self) -> Result<(), Error> {
        let parent_origin: Arc<str> = Arc::from("parent directory");
        let mut missing: Vec<ImagePath> = Vec::new();
        let link_paths: Vec<&ImagePath> = self.links.keys().collect();
        for path in self.items.keys().chain(link_paths) {
            let Some(parent) = path.parent().filter(|p| !p.is_root()) else {
                continue;
            };
            match self.items.get(&parent) {
                Some(Item {
                    kind: ItemKind::Dir { .. },
                    ..
                }) => {}
                Some(other) => {
                    return Err(Error::InvalidPath {
                        path: path.to_string(),
                        reason: format!(
                            "its parent {parent} is a {} ({})",
                            other.kind.describe(),
                            other.origin
                        ),
                    });
                }
                None => missing.push(parent),
            }
        }
        for dir in missing {
            // Walk up until an existing ancestor; everything on the way becomes a directory.
            let mut cur = Some(dir);
            while let Some(d) = cur.filter(|d| !d.is_root()) {
                match self.items.get(&d) {
                    Some(Item {
                        kind: ItemKind::Dir { .. },
                        ..
                    }) => break,
                    Some(other) => {
                        return Err(Error::InvalidPath {
                            path: d.to_string(),
                            reason: format!(
                                "it is a {} ({}) but has entries under it",
                                other.kind.describe(),
                                other.origin
                            ),
                        });
                    }
                    None => {
                        cur = d.parent();
                        if self.parents {
                            self.items.insert(
                                d,
                                Item {
                                    kind: ItemKind::Dir { implicit: true },
                                    origin: Arc::clone(&parent_origin),
                                },
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn meta_for(&self, path: &ImagePath, kind: &ItemKind) -> Meta {
        let d = &self.defaults;
        let mut meta = match kind {
            // Implicit parents are plain root-owned directories: they will shadow the
            // metadata of the same directory in lower layers, so keep them neutral.
            ItemKind::Dir { implicit: true } => Defaults::new(d.mtime).base(0o755),
            ItemKind::Dir { implicit: false } => d.base(d.dir_mode),
            ItemKind::DiskFile { exec, .. } => {
                d.base(d.file_mode.unwrap_or(if *exec { 0o755 } else { 0o644 }))
            }
            ItemKind::Inline(_) => d.base(d.file_mode.unwrap_or(0o644)),
            ItemKind::Symlink(_) => d.base(0o777),
            ItemKind::Fifo { mode }
            | ItemKind::Char { mode, .. }
            | ItemKind::Block { mode, .. } => d.base(*mode),
        };
        if let Some(src) = self.source_meta.get(path) {
            let p = self.preserve;
            if p.mode && !matches!(kind, ItemKind::Symlink(_)) {
                meta.mode = src.mode;
            }
            if p.owner {
                meta.uid = src.uid;
                meta.gid = src.gid;
            }
            if p.mtime {
                meta.mtime = src.mtime;
            }
        }
        if let Some(x) = self.source_xattrs.get(path) {
            for (k, v) in x {
                meta.pax.insert(format!("{XATTR_PREFIX}{k}"), v.clone());
            }
        }
        if let Some(o) = self.metadata.get(path) {
            o.apply(&mut meta);
        }
        meta
    }

    /// Turns explicit hard links and files sharing an inode (with equal metadata) into groups;
    /// the first path of each group in tar order carries the content, the rest link to it.
    /// `entries` is sorted by path and stays so.
    fn link_groups(&self, entries: &mut Vec<Entry>, by_inode: HashMap<(u64, u64), Vec<ImagePath>>) {
        fn find(entries: &[Entry], p: &ImagePath) -> usize {
            entries
                .binary_search_by(|e| e.path.cmp(p))
                .expect("group members are entries")
        }
        // Same inode but different metadata cannot share one tar inode: split by metadata.
        let mut groups: Vec<Vec<ImagePath>> = Vec::new();
        for (_, paths) in by_inode {
            let mut by_meta: Vec<(Meta, Vec<ImagePath>)> = Vec::new();
            for p in paths {
                let meta = &entries[find(entries, &p)].meta;
                match by_meta.iter_mut().find(|(m, _)| m == meta) {
                    Some((_, v)) => v.push(p),
                    None => by_meta.push((meta.clone(), vec![p])),
                }
            }
            groups.extend(by_meta.into_iter().map(|(_, v)| v));
        }
        let mut added = Vec::new();
        for (link, (target, _)) in &self.links {
            let g = match groups.iter().position(|g| g.contains(target)) {
                Some(g) => g,
                None => {
                    groups.push(vec![target.clone()]);
                    groups.len() - 1
                }
            };
            groups[g].push(link.clone());
            // Until grouping decides which name carries the content, a link is a copy of
            // its target.
            let mut e = entries[find(entries, target)].clone();
            e.path = link.clone();
            added.push(e);
        }
        if !added.is_empty() {
            entries.extend(added);
            entries.sort_by(|a, b| a.path.cmp(&b.path));
        }
        for mut members in groups.into_iter().filter(|g| g.len() > 1) {
            members.sort();
            let first = find(entries, &members[0]);
            let (content, meta) = match &entries[first].kind {
                EntryKind::File(f) => (f.clone(), entries[first].meta.clone()),
                _ => unreachable!("link groups hold regular files"),
            };
            for m in &members[1..] {
                let i = find(entries, m);
                entries[i].meta = meta.clone();
                entries[i].kind = EntryKind::Hardlink(members[0].clone());
            }
            entries[first].kind = EntryKind::File(content);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaSpec;

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    fn kinds(r: &Recipe) -> Vec<(String, String)> {
        r.entries
            .iter()
            .map(|e| {
                let k = match &e.kind {
                    EntryKind::File(_) => "file".to_owned(),
                    EntryKind::Dir => "dir".to_owned(),
                    EntryKind::Symlink(t) => format!("symlink->{}", String::from_utf8_lossy(t)),
                    EntryKind::Hardlink(t) => format!("hardlink->{t}"),
                    other => format!("{other:?}"),
                };
                (e.path.to_string(), k)
            })
            .collect()
    }

    #[test]
    fn adds_parents_and_sorts() {
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_content(p("/usr/bin/x"), b"x").unwrap();
        b.add_symlink(p("/bin"), b"usr/bin").unwrap();
        b.add_whiteout(p("/etc/old")).unwrap();
        b.add_opaque(p("/var/cache")).unwrap();
        let r = b.build().unwrap();
        let got: Vec<String> = kinds(&r)
            .into_iter()
            .map(|(a, k)| format!("{a} {k}"))
            .collect();
        assert_eq!(
            got,
            [
                "/bin symlink->usr/bin",
                "/etc dir",
                "/etc/.wh.old file",
                "/usr dir",
                "/usr/bin dir",
                "/usr/bin/x file",
                "/var dir",
                "/var/cache dir",
                "/var/cache/.wh..wh..opq file",
            ]
        );
    }

    #[test]
    fn no_parents_when_turned_off() {
        let mut b = RecipeBuilder::new(Defaults::new(0), false);
        b.add_content(p("/a/b/c"), b"x").unwrap();
        assert_eq!(b.build().unwrap().entries.len(), 1);
    }

    #[test]
    fn duplicates_are_errors_naming_both_sources() {
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_content(p("/x"), b"1").unwrap();
        let e = b.add_symlink(p("/x"), b"y").unwrap_err().to_string();
        assert!(
            e.contains("/x") && e.contains("content") && e.contains("symlink"),
            "{e}"
        );
    }

    #[test]
    fn file_under_a_file_is_an_error() {
        for parents in [true, false] {
            let mut b = RecipeBuilder::new(Defaults::new(0), parents);
            b.add_content(p("/a"), b"1").unwrap();
            b.add_content(p("/a/b"), b"2").unwrap();
            assert!(b.build().is_err());
            // Also when the file is further up than the immediate parent.
            let mut b = RecipeBuilder::new(Defaults::new(0), parents);
            b.add_content(p("/a"), b"1").unwrap();
            b.add_content(p("/a/b/c"), b"2").unwrap();
            let e = b.build().unwrap_err().to_string();
            assert!(e.contains("/a"), "{e}");
        }
    }

    #[test]
    fn hardlinks_put_content_on_the_first_name() {
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_content(p("/z/target"), b"data").unwrap();
        b.add_hardlink(p("/a/link"), p("/z/target")).unwrap();
        let r = b.build().unwrap();
        let k = kinds(&r);
        assert!(k.contains(&("/a/link".into(), "file".into())), "{k:?}");
        assert!(
            k.contains(&("/z/target".into(), "hardlink->/a/link".into())),
            "{k:?}"
        );
    }

    #[test]
    fn hardlink_to_missing_or_non_file_is_an_error() {
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_hardlink(p("/l"), p("/nope")).unwrap();
        assert!(b.build().unwrap_err().to_string().contains("/nope"));
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_empty_dir(p("/d")).unwrap();
        b.add_hardlink(p("/l"), p("/d")).unwrap();
        assert!(b.build().is_err());
    }

    #[test]
    fn metadata_for_unknown_path_is_an_error() {
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_content(p("/x"), b"1").unwrap();
        b.set_metadata(p("/y"), MetaOverride::default()).unwrap();
        assert!(b.build().unwrap_err().to_string().contains("/y"));
    }

    #[test]
    fn metadata_and_defaults_apply() {
        let d =
            Defaults::from_spec(&toml::from_str("uid = 7\nmode = \"0600\"").unwrap(), 5).unwrap();
        let mut b = RecipeBuilder::new(d, true);
        b.add_content(p("/app/a"), b"1").unwrap();
        b.add_content(p("/app/b"), b"2").unwrap();
        let o: MetaSpec = toml::from_str("mode = \"0755\"\nmtime = 9").unwrap();
        b.set_metadata(p("/app/b"), o.validate("/app/b").unwrap())
            .unwrap();
        let r = b.build().unwrap();
        let m: Vec<(u32, u32, i64)> = r
            .entries
            .iter()
            .map(|e| (e.meta.mode, e.meta.uid, e.meta.mtime))
            .collect();
        // Implicit parent /app stays root-owned 0755.
        assert_eq!(m, [(0o755, 0, 5), (0o600, 7, 5), (0o755, 7, 9)]);
    }

    #[test]
    fn tree_walk_with_filters_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        fs::create_dir_all(root.join("lib/sub")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(root.join("lib/a.py"), "a").unwrap();
        fs::write(root.join("lib/a.pyc"), "c").unwrap();
        fs::write(root.join("lib/sub/b.py"), "b").unwrap();
        fs::hard_link(root.join("lib/a.py"), root.join("lib/sub/a2.py")).unwrap();
        std::os::unix::fs::symlink("../run.sh", root.join("lib/run")).unwrap();

        let f = TreeFilter::new(&[], &["*.pyc".into()]).unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_tree(p("/app"), &root, &f).unwrap();
        let r = b.build().unwrap();
        let k = kinds(&r);
        let want: Vec<(String, String)> = [
            ("/app", "dir"),
            ("/app/empty", "dir"),
            ("/app/lib", "dir"),
            ("/app/lib/a.py", "file"),
            ("/app/lib/run", "symlink->../run.sh"),
            ("/app/lib/sub", "dir"),
            ("/app/lib/sub/a2.py", "hardlink->/app/lib/a.py"),
            ("/app/lib/sub/b.py", "file"),
            ("/app/run.sh", "file"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(k, want);
        let run = r
            .entries
            .iter()
            .find(|e| e.path == p("/app/run.sh"))
            .unwrap();
        // Executable source → 0755 regardless of the umask that made it 0700.
        assert_eq!(run.meta.mode, 0o755);

        // A pattern with '/' is anchored at the tree root; directories come along as parents.
        let f = TreeFilter::new(&["lib/sub/**".into()], &[]).unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_tree(p("/app"), &root, &f).unwrap();
        let got = kinds(&b.build().unwrap());
        let want: Vec<(String, String)> = [
            ("/app", "dir"),
            ("/app/lib", "dir"),
            ("/app/lib/sub", "dir"),
            // Its inode twin lib/a.py is filtered out, so it stays a plain file.
            ("/app/lib/sub/a2.py", "file"),
            ("/app/lib/sub/b.py", "file"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn preserve_takes_mode_owner_and_mtime_from_disk() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(root.join("shadow"), "x").unwrap();
        fs::set_permissions(root.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("shadow", root.join("link")).unwrap();
        filetime_set(&root.join("shadow"), 1_234_567_890);
        let build = |keep: Preserve| {
            let mut b = RecipeBuilder::new(Defaults::new(7), true);
            b.preserve(keep);
            b.add_tree(ImagePath::root(), &root, &TreeFilter::default())
                .unwrap();
            let r = b.build().unwrap();
            let get = |name: &str| {
                let e = r.entries.iter().find(|e| e.path == p(name)).unwrap();
                (e.meta.mode, e.meta.mtime)
            };
            (get("/tmp"), get("/shadow"), get("/link"))
        };
        // By default: modes from the exec bit, times from the defaults.
        assert_eq!(
            build(Preserve::default()),
            ((0o755, 7), (0o644, 7), (0o777, 7))
        );
        let all = Preserve::parse(&["mode", "mtime"]).unwrap();
        let (tmp, shadow, link) = build(all);
        assert_eq!(tmp.0, 0o1777);
        assert_eq!(shadow, (0o640, 1_234_567_890));
        // A symlink keeps 0777 whatever is preserved.
        assert_eq!(link.0, 0o777);
        assert!(Preserve::parse(&["perms"]).is_err());
    }

    #[test]
    fn preserve_xattrs_takes_user_and_capability_attributes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/a"), "x").unwrap();
        let set = |p: &Path, k: &str, v: &[u8]| {
            rustix::fs::setxattr(p, k, v, rustix::fs::XattrFlags::empty()).unwrap();
        };
        set(&root.join("etc/a"), "user.bin", b"\0\n\xff");
        set(&root.join("etc/a"), "trusted.host", b"x");
        set(&root.join("etc/a"), "security.ima", b"\x04");
        set(&root.join("etc"), "user.dir", b"d");
        let build = |keep: Preserve| {
            let mut b = RecipeBuilder::new(Defaults::new(0), true);
            b.preserve(keep);
            b.add_tree(ImagePath::root(), &root, &TreeFilter::default())
                .unwrap();
            b.add_file(p("/copy"), &root.join("etc/a")).unwrap();
            b.build().unwrap()
        };
        let pax = |r: &Recipe, path: &str| {
            r.entries
                .iter()
                .find(|e| e.path == p(path))
                .unwrap()
                .meta
                .pax
                .clone()
        };
        // Not preserved: nothing read; the tar writer counts them instead.
        let r = build(Preserve::default());
        assert!(pax(&r, "/etc/a").is_empty() && pax(&r, "/etc").is_empty());
        assert!(r.count_unkept_xattrs && r.warnings.is_empty());

        let r = build(Preserve::parse(&["xattrs"]).unwrap());
        assert!(!r.count_unkept_xattrs);
        let a = pax(&r, "/etc/a");
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            ["SCHILY.xattr.user.bin"],
            "only what layers carry"
        );
        assert_eq!(a["SCHILY.xattr.user.bin"], b"\0\n\xff");
        assert_eq!(pax(&r, "/copy"), a);
        assert_eq!(pax(&r, "/etc")["SCHILY.xattr.user.dir"], b"d");
        // security.ima is named (twice: the tree entry and the file); trusted.* is not.
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("security.ima (2 entries)"),
            "{:?}",
            r.warnings
        );
        assert!(!r.warnings[0].contains("trusted"));
        // Metadata still wins.
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.preserve(Preserve::parse(&["xattrs"]).unwrap());
        b.add_file(p("/copy"), &root.join("etc/a")).unwrap();
        let o: MetaSpec = toml::from_str(r#"xattrs = { "user.bin" = "text" }"#).unwrap();
        b.set_metadata(p("/copy"), o.validate("/copy").unwrap())
            .unwrap();
        let r = b.build().unwrap();
        assert_eq!(pax(&r, "/copy")["SCHILY.xattr.user.bin"], b"text");
    }

    #[test]
    fn whiteout_names_only_from_whiteout_options() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("tree/.wh..wh..opq")).unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        let e = b
            .add_tree(p("/x"), &t.path().join("tree"), &TreeFilter::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x/.wh..wh..opq") && e.contains("tree/.wh..wh..opq"),
            "{e}"
        );
        // Excluded, it is not in the layer: fine.
        let f = TreeFilter::new(&[], &[".wh.*".to_owned()]).unwrap();
        b.add_tree(p("/x"), &t.path().join("tree"), &f).unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        for r in [
            b.add_content(p("/a/.wh.b"), b"x"),
            b.add_symlink(p("/.wh.a/b"), b"x"),
            b.add_empty_dir(p("/.wh.d")),
            b.add_hardlink(p("/.wh.l"), p("/t")),
            b.add_hardlink(p("/l"), p("/.wh.t")),
            b.add_whiteout(p("/.wh.d/x")),
            b.add_opaque(p("/.wh.d")),
            b.set_metadata(p("/.wh.m"), MetaOverride::default()),
        ] {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(".wh.") && e.contains("whiteout"), "{e}");
        }
        b.add_whiteout(p("/etc/passwd")).unwrap();
        b.add_opaque(p("/var/cache")).unwrap();
        assert_eq!(b.build().unwrap().entries.len(), 5);
    }

    fn filetime_set(p: &Path, secs: i64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn missing_source_names_the_path() {
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        let e = b
            .add_file(p("/x"), Path::new("/definitely/missing/file"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/definitely/missing/file"), "{e}");
    }
}
