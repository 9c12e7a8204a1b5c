//! The tar plumbing of image archives: an index of a tar file's members built from one scan of
//! its headers (each member's data offset and size, so members are then read in place), and a
//! writer of deterministic ustar entries.
//!
//! Reading treats the file as hostile. Headers are decoded with the `tar` crate's [`tar::Header`]
//! (octal and base-256 numbers, the ustar prefix), but the walk is ours so that every extension
//! header is size-capped before it is read: PAX `path` and `size` records and GNU long names
//! are honoured, global PAX headers and sparse files are refused. Names are normalised like
//! gantry-layer's `normalize_member_name` (leading `/` and `./` dropped, `..` refused) and must
//! be unique. A member whose data runs past the end of the file, or a file without the zero
//! block that ends an archive, is an error, so a truncated archive never reads as a shorter one.
//!
//! Writing produces ustar headers with uid/gid 0, empty user and group names, mtime 0, and a
//! PAX header only when a name is longer than 100 bytes or a size does not fit 11 octal digits.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Result};

/// The tar block size.
pub(crate) const BLOCK: u64 = 512;
/// Cap on the number of members (including directories) of an archive we read.
pub(crate) const MAX_MEMBERS: usize = 100_000;
/// Cap on a PAX extended header's records.
const MAX_PAX_SIZE: u64 = 1 << 20;
/// Cap on a GNU long name or long link name.
const MAX_LONG_NAME: u64 = 64 << 10;
/// The largest size an ustar size field holds (11 octal digits).
const MAX_OCTAL_12: u64 = 0o77777777777;
/// Longest name that fits the ustar name field.
const NAME_LEN: usize = 100;
/// Mode of regular files in archives we write.
pub(crate) const FILE_MODE: u32 = 0o644;
/// Mode of directories in archives we write.
pub(crate) const DIR_MODE: u32 = 0o755;
/// Copy buffer for streaming blobs into an archive.
const COPY_BUF: usize = 256 << 10;

/// What a member is. Only regular files are ever read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberKind {
    /// A regular file (typeflag `0`, NUL or `7`).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link.
    Hardlink,
    /// A device, FIFO or anything else.
    Other,
}

impl MemberKind {
    fn from_typeflag(flag: u8) -> MemberKind {
        match flag {
            b'0' | 0 | b'7' => MemberKind::File,
            b'5' => MemberKind::Dir,
            b'2' => MemberKind::Symlink,
            b'1' => MemberKind::Hardlink,
            _ => MemberKind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MemberKind::File => "a regular file",
            MemberKind::Dir => "a directory",
            MemberKind::Symlink => "a symlink",
            MemberKind::Hardlink => "a hard link",
            MemberKind::Other => "a special file",
        }
    }
}

/// One member of a scanned archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// What it is.
    pub(crate) kind: MemberKind,
    /// Offset of its data in the file.
    pub(crate) offset: u64,
    /// Size of its data.
    pub(crate) size: u64,
}

/// The members of a tar file, by normalised name, from one scan of its headers. The file stays
/// open: members are read from the inode that was scanned, with positional reads, so readers
/// share no cursor and may run on several threads at once.
#[derive(Debug)]
pub(crate) struct TarIndex {
    path: PathBuf,
    file: Arc<File>,
    members: HashMap<Vec<u8>, Member>,
}

impl TarIndex {
    /// Opens and scans the archive at `path`.
    pub(crate) fn open(path: &Path) -> Result<TarIndex> {
        let file = crate::fsutil::open_regular(path).map_err(|e| match e {
            Error::NotRegularFile { kind, .. } => Error::BadArchive {
                archive: path.to_owned(),
                reason: format!("it is {kind}, not a regular file"),
            },
            e => e,
        })?;
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        let members = scan(&file, meta.len(), path, MAX_MEMBERS)?;
        Ok(TarIndex {
            path: path.to_owned(),
            file: Arc::new(file),
            members,
        })
    }

    /// The archive file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The member called `name` (normalised, such as `blobs/sha256/<hex>`), if it exists;
    /// an error if it exists but is not a regular file.
    pub(crate) fn file_member(&self, name: &str) -> Result<Option<Member>> {
        match self.members.get(name.as_bytes()) {
            None => Ok(None),
            Some(m) if m.kind == MemberKind::File => Ok(Some(*m)),
            Some(m) => {
                Err(self.member_error(name, format!("it is {}, not a regular file", m.kind.name())))
            }
        }
    }

    /// Reads the whole regular-file member `name` if it exists, refusing more than `limit`
    /// bytes.
    pub(crate) fn read_member(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(member) = self.file_member(name)? else {
            return Ok(None);
        };
        if member.size > limit {
            return Err(self.member_error(
                name,
                format!("it is larger than the limit of {limit} bytes"),
            ));
        }
        let mut bytes = vec![0; usize::try_from(member.size).unwrap_or(usize::MAX)];
        self.file
            .read_exact_at(&mut bytes, member.offset)
            .map_err(|e| Error::io("read", &self.path, e))?;
        Ok(Some(bytes))
    }

    /// The first bytes (at most `n`) of a member.
    pub(crate) fn head(&self, member: &Member, n: usize) -> Result<Vec<u8>> {
        let len = usize::try_from(member.size).unwrap_or(usize::MAX).min(n);
        let mut bytes = vec![0; len];
        self.file
            .read_exact_at(&mut bytes, member.offset)
            .map_err(|e| Error::io("read", &self.path, e))?;
        Ok(bytes)
    }

    /// A reader of a member's data (exactly its size, unless the file shrank since the scan).
    pub(crate) fn open_member(&self, member: &Member) -> MemberReader {
        MemberReader {
            file: Arc::clone(&self.file),
            pos: member.offset,
            end: member.offset + member.size,
        }
    }

    /// An error about a member of this archive.
    pub(crate) fn member_error(&self, name: &str, reason: String) -> Error {
        Error::BadArchiveMember {
            archive: self.path.clone(),
            member: name.to_owned(),
            reason,
        }
    }
}

/// Reads one member's data with positional reads (`pread`), so that readers of the same
/// archive share no file cursor. `Send`, so it can be handed to another thread.
#[derive(Debug)]
pub(crate) struct MemberReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for MemberReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What the extension headers before a member said about it.
#[derive(Default)]
struct Pending {
    /// Where the first extension header was (for errors).
    at: Option<u64>,
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

/// Walks the headers of a tar file of `len` bytes and records its members (at most
/// `max_members`).
pub(crate) fn scan(
    file: &File,
    len: u64,
    archive: &Path,
    max_members: usize,
) -> Result<HashMap<Vec<u8>, Member>> {
    let bad = |reason: String| Error::BadArchive {
        archive: archive.to_owned(),
        reason,
    };
    let member_err = |name: &[u8], reason: String| Error::BadArchiveMember {
        archive: archive.to_owned(),
        member: String::from_utf8_lossy(name).into_owned(),
        reason,
    };
    let mut members: HashMap<Vec<u8>, Member> = HashMap::new();
    let mut pending = Pending::default();
    // The last member seen, to place errors about the headers that follow it.
    let mut last: Option<Vec<u8>> = None;
    let at = |pos: u64, last: &Option<Vec<u8>>| match last {
        Some(name) => format!(
            "byte {pos} (after member {})",
            String::from_utf8_lossy(name)
        ),
        None => format!("byte {pos}"),
    };
    let mut block = [0u8; BLOCK as usize];
    let mut pos = 0u64;
    loop {
        if len.saturating_sub(pos) < BLOCK {
            return Err(bad(if len == 0 {
                "it is empty".to_owned()
            } else {
                let after = last
                    .as_ref()
                    .map(|n| format!(", after member {}", String::from_utf8_lossy(n)))
                    .unwrap_or_default();
                format!(
                    "it ends at byte {len}{after} without the end-of-archive marker (is it truncated?)"
                )
            }));
        }
        file.read_exact_at(&mut block, pos)
            .map_err(|e| Error::io("read", archive, e))?;
        if block.iter().all(|&b| b == 0) {
            if let Some(ext_pos) = pending.at {
                return Err(bad(format!(
                    "the extension header at {} describes no member",
                    at(ext_pos, &last)
                )));
            }
            return Ok(members);
        }
        check_checksum(&block)
            .map_err(|reason| bad(format!("the header at {} {reason}", at(pos, &last))))?;
        let header = tar::Header::from_byte_slice(&block);
        let typeflag = block[156];
        let header_size = header.entry_size().map_err(|e| {
            bad(format!(
                "the header at {} has a bad size: {e}",
                at(pos, &last)
            ))
        })?;
        let data = pos + BLOCK;
        let extension_cap = match typeflag {
            b'x' | b'X' => Some(MAX_PAX_SIZE),
            b'L' | b'K' => Some(MAX_LONG_NAME),
            _ => None,
        };
        if let Some(cap) = extension_cap {
            if header_size > cap {
                return Err(bad(format!(
                    "the extension header at {} is {header_size} bytes long (the limit is {cap})",
                    at(pos, &last)
                )));
            }
            if header_size > len - data {
                return Err(bad(format!(
                    "the extension header at {} runs past the end of the file (is it truncated?)",
                    at(pos, &last)
                )));
            }
            let mut ext = vec![0; header_size as usize];
            file.read_exact_at(&mut ext, data)
                .map_err(|e| Error::io("read", archive, e))?;
            pending.at.get_or_insert(pos);
            match typeflag {
                b'L' => {
                    let end = ext.iter().position(|&b| b == 0).unwrap_or(ext.len());
                    ext.truncate(end);
                    pending.path = Some(ext);
                }
                b'K' => {} // a long link target: links are never followed
                _ => parse_pax(&ext, &mut pending).map_err(|reason| {
                    bad(format!("the PAX header at {} {reason}", at(pos, &last)))
                })?,
            }
            pos = data + round_up(header_size);
            continue;
        }
        let raw_name = match pending.path.take() {
            Some(name) => name,
            None => header.path_bytes().into_owned(),
        };
        let size = pending.size.take().unwrap_or(header_size);
        pending.at = None;
        match typeflag {
            b'g' => {
                return Err(member_err(
                    &raw_name,
                    "global PAX headers are not supported".to_owned(),
                ));
            }
            b'S' => {
                return Err(member_err(
                    &raw_name,
                    "GNU sparse files are not supported".to_owned(),
                ));
            }
            _ => {}
        }
        let name = normalize_member_name(&raw_name).map_err(|r| member_err(&raw_name, r))?;
        if size > len - data {
            return Err(member_err(
                &raw_name,
                format!("its {size} bytes of data run past the end of the file (is it truncated?)"),
            ));
        }
        let kind = MemberKind::from_typeflag(typeflag);
        if name.is_empty() {
            if kind != MemberKind::Dir {
                return Err(member_err(&raw_name, "it has an empty name".to_owned()));
            }
        } else {
            if members.len() >= max_members {
                return Err(bad(format!("it has more than {max_members} members")));
            }
            let member = Member {
                kind,
                offset: data,
                size,
            };
            if members.insert(name, member).is_some() {
                return Err(member_err(
                    &raw_name,
                    "it appears more than once in the archive".to_owned(),
                ));
            }
        }
        last = Some(raw_name);
        pos = data
            .checked_add(round_up(size))
            .ok_or_else(|| bad("a member size overflows".to_owned()))?;
    }
}

/// Checks a header's checksum (the unsigned sum of its bytes with the checksum field taken as
/// spaces).
fn check_checksum(block: &[u8; BLOCK as usize]) -> Result<(), String> {
    let stored = tar::Header::from_byte_slice(block)
        .cksum()
        .map_err(|e| format!("has an unreadable checksum: {e}"))?;
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    if sum != stored {
        return Err("has a bad checksum (the archive is corrupt)".to_owned());
    }
    Ok(())
}

/// Reads the records of a PAX extended header that matter here: `path` and `size`. Sparse
/// files described through PAX (`GNU.sparse.*`) are refused.
fn parse_pax(records: &[u8], pending: &mut Pending) -> Result<(), String> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.map_err(|e| format!("is malformed: {e}"))?;
        let key = record
            .key()
            .map_err(|_| "has a key that is not UTF-8".to_owned())?;
        let value = record.value_bytes();
        match key {
            "path" => pending.path = Some(value.to_vec()),
            "size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| "has an invalid size record".to_owned())?;
                pending.size = Some(size);
            }
            k if k.starts_with("GNU.sparse.") => {
                return Err("describes a sparse file, which is not supported".to_owned());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Normalises a tar member name: leading `/` and `./` and empty or `.` components are dropped,
/// `..` components and NUL bytes are refused. The root is empty. (The same rules as
/// gantry-layer's `normalize_member_name`.)
pub(crate) fn normalize_member_name(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("the name contains '..'".to_owned()),
            c if c.contains(&0) => return Err("the name contains a NUL byte".to_owned()),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// `n` rounded up to a whole number of blocks.
fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Writes a deterministic tar file entry by entry, with positional writes so that a failed
/// entry can be cut off again ([`TarBuilder::rewind`]).
#[derive(Debug)]
pub(crate) struct TarBuilder {
    file: File,
    pos: u64,
}

impl TarBuilder {
    /// Starts writing at the beginning of `file` (which should be empty).
    pub(crate) fn new(file: File) -> TarBuilder {
        TarBuilder { file, pos: 0 }
    }

    /// The file being written.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The current end of the archive; pass it to [`TarBuilder::rewind`] to undo what follows.
    pub(crate) fn mark(&self) -> u64 {
        self.pos
    }

    /// Cuts the archive back to `mark`.
    pub(crate) fn rewind(&mut self, mark: u64) -> io::Result<()> {
        self.file.set_len(mark)?;
        self.pos = mark;
        Ok(())
    }

    /// Adds a directory entry (`name` ends with `/`).
    pub(crate) fn dir(&mut self, name: &str) -> io::Result<()> {
        let headers = header_blocks(name.as_bytes(), 0, b'5', DIR_MODE);
        self.write(&headers)
    }

    /// Adds a regular file from memory. Returns the offset of its data.
    pub(crate) fn file_bytes(&mut self, name: &str, bytes: &[u8]) -> io::Result<u64> {
        let headers = header_blocks(name.as_bytes(), bytes.len() as u64, b'0', FILE_MODE);
        self.write(&headers)?;
        let offset = self.pos;
        self.write(bytes)?;
        self.pad(bytes.len() as u64)?;
        Ok(offset)
    }

    /// Adds a regular file of `size` bytes streamed from `reader`, which must yield exactly
    /// that many (a verifying reader does, or fails). Returns the offset of its data. On error
    /// the archive may hold part of the entry: [`TarBuilder::rewind`] it.
    pub(crate) fn file_stream(
        &mut self,
        name: &str,
        size: u64,
        reader: &mut dyn Read,
    ) -> io::Result<u64> {
        let headers = header_blocks(name.as_bytes(), size, b'0', FILE_MODE);
        self.write(&headers)?;
        let offset = self.pos;
        let mut buf = vec![0u8; COPY_BUF];
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            copied += n as u64;
            if copied > size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the source is longer than the announced {size} bytes"),
                ));
            }
            self.write(&buf[..n])?;
        }
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the source ended after {copied} of {size} bytes"),
            ));
        }
        self.pad(size)?;
        Ok(offset)
    }

    /// Writes the end-of-archive marker (two zero blocks).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        self.write(&[0u8; 2 * BLOCK as usize])
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK) as usize;
        if rem != 0 {
            self.write(&[0u8; BLOCK as usize][..BLOCK as usize - rem])?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.pos)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// The header blocks of one entry: a PAX header if the name is longer than 100 bytes or the
/// size needs more than 11 octal digits, then the ustar header.
pub(crate) fn header_blocks(name: &[u8], size: u64, typeflag: u8, mode: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK as usize);
    let mut records = Vec::new();
    let short_name = if name.len() > NAME_LEN {
        records.extend_from_slice(&pax_record("path", name));
        &name[..NAME_LEN]
    } else {
        name
    };
    let short_size = if size > MAX_OCTAL_12 {
        records.extend_from_slice(&pax_record("size", size.to_string().as_bytes()));
        0
    } else {
        size
    };
    if !records.is_empty() {
        // Records in key order ("path" < "size"), as gantry-layer writes them.
        let base = name
            .rsplit(|&b| b == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"");
        let mut pax_name = b"PaxHeaders/".to_vec();
        pax_name.extend_from_slice(&base[..base.len().min(NAME_LEN - pax_name.len())]);
        out.extend_from_slice(&ustar_block(
            &pax_name,
            records.len() as u64,
            b'x',
            FILE_MODE,
        ));
        out.extend_from_slice(&records);
        let rem = records.len() % BLOCK as usize;
        if rem != 0 {
            out.resize(out.len() + BLOCK as usize - rem, 0);
        }
    }
    out.extend_from_slice(&ustar_block(short_name, short_size, typeflag, mode));
    out
}

/// One PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let digits = |n: usize| n.to_string().len();
    // The length field counts its own digits; adding them can add one more digit.
    let mut len = body + digits(body);
    if digits(len) > digits(body) {
        len = body + digits(len);
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

/// A ustar header block: uid/gid 0, empty user and group names, mtime 0. `name` must fit 100
/// bytes and `size` 11 octal digits.
fn ustar_block(name: &[u8], size: u64, typeflag: u8, mode: u32) -> [u8; BLOCK as usize] {
    let mut h = [0u8; BLOCK as usize];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Zero-padded octal with a trailing NUL, filling the field.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    debug_assert_eq!(s.len(), digits, "{v} does not fit {digits} octal digits");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}
