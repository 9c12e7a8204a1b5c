//! Reading layer tars: decompression with bounds, member-name validation, importing an existing
//! tar as a layer (kept as is or recompressed) and listing a layer's entries.
//!
//! Everything here treats its input as hostile: names are normalised and refused when they
//! escape (`..`), duplicates are refused (image-spec forbids them and tools disagree about which
//! copy wins), whiteout names are checked, unsupported entry types (GNU sparse, global PAX
//! headers) are refused rather than half-understood, and only zeros may follow the end marker.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use std::sync::Arc;

use gantry_oci::{Compression, Digest, Hasher, HashingReader};

use crate::limits::{Capped, CountConsumed, Limits, Meter};
use crate::pax::{MAX_PAX_HEADER, PaxState, PaxTap, Record, checked_records};
use crate::recipe::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::{Compressor, Error};

/// zstd window cap (2^27 = 128 MiB, libzstd's own default limit for decoders).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Wraps `r` in a decoder for `compression` (the identity for plain tars) whose output is
/// capped by `limits` and counted, with the compressed bytes it consumes, in `meter`: every
/// layer stream gantry reads goes through here. gzip accepts many members; zstd refuses
/// windows over 128 MiB. Past a cap, reads fail and [`Meter::exceeded`] says why.
pub fn decoder<'a, R: BufRead + 'a>(
    r: R,
    compression: Compression,
    limits: &Limits,
    meter: &Arc<Meter>,
) -> io::Result<Box<dyn Read + 'a>> {
    let input = CountConsumed {
        inner: r,
        meter: Arc::clone(meter),
    };
    let inner: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(d)
        }
    };
    Ok(Box::new(Capped {
        inner,
        meter: Arc::clone(meter),
        limits: *limits,
    }))
}

/// `result`, unless the stream of `meter` hit a cap: then the error says which (whatever the
/// tar parser made of the failed read).
fn within_limits<T>(result: Result<T, Error>, meter: &Meter, what: &str) -> Result<T, Error> {
    match (result, meter.exceeded()) {
        (Err(_), Some(reason)) => Err(Error::Limit {
            what: what.to_owned(),
            reason: reason.to_owned(),
        }),
        (r, _) => r,
    }
}

/// Normalises a tar member name: leading `/` and `./` and empty or `.` components are dropped
/// (real images contain absolute names), `..` components are refused. The root is empty.
pub fn normalize_member_name(raw: &[u8]) -> Result<Vec<u8>, String> {
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

/// Checks a whiteout name: `.wh.` alone, `.wh..` and `.wh...` are refused (image-spec#1301).
pub fn check_whiteout_name(normalized: &[u8]) -> Result<(), String> {
    let base = normalized.rsplit(|&b| b == b'/').next().unwrap_or(b"");
    if let Some(rest) = base.strip_prefix(WHITEOUT_PREFIX)
        && base != OPAQUE_WHITEOUT
        && (rest.is_empty() || rest == b"." || rest == b"..")
    {
        return Err(format!(
            "invalid whiteout name {:?}",
            String::from_utf8_lossy(base)
        ));
    }
    Ok(())
}

/// A header's mtime in epoch seconds, negative ones included. Octal fields are read as
/// usual; GNU's base-256 form (first byte has the high bit set) is a two's-complement number,
/// so `0xff…` is a time before 1970. (The `tar` crate reads base-256 fields as unsigned
/// only, which turns -1 into 2^64 - 1.) A PAX `mtime` record, when present, overrides this.
pub fn header_mtime(h: &tar::Header) -> Result<i64, String> {
    let field = &h.as_old().mtime;
    if field[0] & 0x80 == 0 {
        let v = h.mtime().map_err(|e| e.to_string())?;
        // Twelve octal digits at most: always fits.
        return i64::try_from(v).map_err(|_| format!("mtime {v} is out of range"));
    }
    parse_base256(field).ok_or_else(|| "base-256 mtime is out of range".to_owned())
}

/// A GNU base-256 number field (as Go's archive/tar reads it): the bits after the marker bit
/// are a big-endian two's-complement integer; `None` when it does not fit an `i64`.
fn parse_base256(field: &[u8]) -> Option<i64> {
    // 0x00 for positive numbers, 0xff for negative ones (-a-1 == !a).
    let inv = if field[0] & 0x40 != 0 { 0xff } else { 0x00 };
    let mut x: u64 = 0;
    for (i, &b) in field.iter().enumerate() {
        let mut c = b ^ inv;
        if i == 0 {
            c &= 0x7f;
        }
        if x >> 56 != 0 {
            return None;
        }
        x = (x << 8) | u64::from(c);
    }
    if x >> 63 != 0 {
        return None;
    }
    let v = x as i64;
    Some(if inv == 0xff { !v } else { v })
}

/// A PAX time record (`1700000000.123456789`, possibly negative) as whole seconds and
/// nanoseconds, rounded down (`-1.5` is second -2 plus 0.5 s). `None` when malformed.
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.as_bytes().get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Some(if !neg {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

/// What a tar entry is, in the words `gantry ls` uses.
pub fn kind_name(t: tar::EntryType) -> Option<&'static str> {
    use tar::EntryType as T;
    Some(match t {
        T::Regular | T::Continuous => "file",
        T::Directory => "dir",
        T::Symlink => "symlink",
        T::Link => "hardlink",
        T::Char => "char",
        T::Block => "block",
        T::Fifo => "fifo",
        _ => return None,
    })
}

/// A reader that counts bytes, so [`walk_tar`] can tell where the tar parser stopped.
pub struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// The reader type [`walk_tar`]'s visitor sees entries of.
pub type WalkReader<'b> = Counting<PaxTap<Box<dyn Read + 'b>>>;

/// Statistics of a validated tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TarStats {
    /// Number of entries.
    pub entries: u64,
    /// Uncompressed bytes, including padding after the end marker.
    pub size: u64,
}

/// Walks a tar stream, validating every member, calling `visit` for each with its normalised
/// path and its PAX records (read exactly: see [`crate::pax`]), then checks the end marker
/// and that only zeros follow it. `what` names the input in errors.
pub fn walk_tar<'b>(
    reader: Box<dyn Read + 'b>,
    what: &str,
    mut visit: impl FnMut(&[u8], &[Record], &mut tar::Entry<'_, WalkReader<'b>>) -> Result<(), Error>,
) -> Result<TarStats, Error> {
    let bad = |entry: Option<&[u8]>, reason: String| Error::InvalidTar {
        what: what.to_owned(),
        entry: entry.map(|e| String::from_utf8_lossy(e).into_owned()),
        reason,
    };
    let io_bad = |e: io::Error| bad(None, io_reason(&e));
    let pax_state = PaxState::new();
    pax_state.expect_header_at(0);
    let mut archive = tar::Archive::new(Counting {
        inner: PaxTap::new(reader, pax_state.clone()),
        count: 0,
    });
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut entries = 0u64;
    let mut end_of_last = 0u64;
    for next in archive.entries().map_err(io_bad)? {
        let mut entry = next.map_err(io_bad)?;
        let raw = entry.path_bytes().into_owned();
        let ty = entry.header().entry_type();
        if kind_name(ty).is_none() {
            let reason = match ty {
                tar::EntryType::GNUSparse => "GNU sparse files are not supported".to_owned(),
                tar::EntryType::XGlobalHeader => {
                    "global PAX headers are not supported (tools disagree on them)".to_owned()
                }
                other => format!("unsupported entry type {:?}", other.as_byte() as char),
            };
            return Err(bad(Some(&raw), reason));
        }
        let path = normalize_member_name(&raw).map_err(|r| bad(Some(&raw), r))?;
        if path.is_empty() && ty != tar::EntryType::Directory {
            return Err(bad(
                Some(&raw),
                "refusing an entry that would change the type of the root directory".to_owned(),
            ));
        }
        check_whiteout_name(&path).map_err(|r| bad(Some(&raw), r))?;
        if ty == tar::EntryType::Link {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad(Some(&raw), "hard link without a target".to_owned()))?;
            let t = normalize_member_name(&target)
                .map_err(|r| bad(Some(&raw), format!("hard link target: {r}")))?;
            if t.is_empty() {
                return Err(bad(
                    Some(&raw),
                    "hard link to the root directory".to_owned(),
                ));
            }
        }
        if !seen.insert(path.clone()) {
            return Err(bad(Some(&raw), "the same path appears twice".to_owned()));
        }
        let records = entry_pax(&pax_state, &mut entry).map_err(|r| bad(Some(&raw), r))?;
        entries += 1;
        let size = entry.size();
        end_of_last = entry.raw_file_position() + size.div_ceil(512) * 512;
        pax_state.expect_header_at(end_of_last);
        visit(&path, &records, &mut entry)?;
    }
    let mut inner = archive.into_inner();
    if inner.count < end_of_last + 512 {
        return Err(bad(
            None,
            "truncated: the archive ends without an end-of-archive marker".to_owned(),
        ));
    }
    // Only zero padding may follow the end marker.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match inner.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_bad(e)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(bad(None, "data follows the end of the archive".to_owned()));
        }
    }
    Ok(TarStats {
        entries,
        size: inner.count,
    })
}

/// The PAX records of `entry`, read exactly from the raw header data `state`'s tap kept (see
/// [`crate::pax`]); empty when the entry has no PAX header. Call before reading the entry's
/// data.
pub fn entry_pax<R: Read>(
    state: &PaxState,
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<Record>, String> {
    let header_pos = entry.raw_header_position();
    let has_pax = entry
        .pax_extensions()
        .map_err(|e| format!("invalid PAX header: {e}"))?
        .is_some();
    if !has_pax {
        return Ok(Vec::new());
    }
    let raw = state
        .take(header_pos)
        .ok_or_else(|| format!("the PAX header could not be kept (over {MAX_PAX_HEADER} bytes)"))?;
    checked_records(&raw).map_err(|r| format!("invalid PAX header: {r}"))
}

/// What the tar crate says (as `ErrorKind::Other`) when its input ends inside an entry's data
/// or inside a header.
const TAR_EOF_MESSAGES: &[&str] = &["unexpected EOF during skip", "failed to read entire block"];

fn io_reason(e: &io::Error) -> String {
    let tar_eof =
        e.kind() == io::ErrorKind::Other && TAR_EOF_MESSAGES.contains(&e.to_string().as_str());
    if e.kind() == io::ErrorKind::UnexpectedEof || tar_eof {
        "truncated (unexpected end of data)".to_owned()
    } else {
        format!("corrupt: {e}")
    }
}

/// A reader that copies everything it reads into a writer.
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// What importing a tar produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedTar {
    /// The compression of the bytes written to the sink.
    pub compression: Compression,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Number of entries.
    pub entries: u64,
}

/// How to turn an existing tar into a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarImport {
    /// Keep the file's bytes exactly (its compression, if any, is detected).
    Keep,
    /// Decompress and compress again with this compressor; the tar bytes are unchanged.
    Recompress(Compressor),
}

/// Imports the tar at `src` (plain, gzip or zstd, detected) into `sink`, validating it while it
/// streams and computing its diff_id, in one pass. Decompression stops at `limits` (the image
/// cap counts this layer alone).
pub fn import_tar<W: Write + Send>(
    src: &Path,
    how: TarImport,
    jobs: usize,
    sink: W,
    limits: &Limits,
) -> Result<(W, ImportedTar), Error> {
    let file = File::open(src).map_err(|source| Error::Source {
        path: src.to_owned(),
        source,
    })?;
    import_tar_from(file, &src.display().to_string(), how, jobs, sink, limits)
}

/// [`import_tar`] from any reader (a blob being fetched or read from an archive); `what`
/// names it in errors.
pub fn import_tar_from<R: Read, W: Write + Send>(
    reader: R,
    what: &str,
    how: TarImport,
    jobs: usize,
    sink: W,
    limits: &Limits,
) -> Result<(W, ImportedTar), Error> {
    let meter = Meter::new();
    let result = import_capped(reader, what, how, jobs, sink, limits, &meter);
    within_limits(result, &meter, what)
}

fn import_capped<R: Read, W: Write + Send>(
    reader: R,
    what: &str,
    how: TarImport,
    jobs: usize,
    sink: W,
    limits: &Limits,
    meter: &Arc<Meter>,
) -> Result<(W, ImportedTar), Error> {
    let what = what.to_owned();
    let src_err = |e: io::Error| Error::InvalidTar {
        what: what.clone(),
        entry: None,
        reason: io_reason(&e),
    };
    let mut file = BufReader::with_capacity(256 * 1024, reader);
    let head = file.fill_buf().map_err(src_err)?;
    if head.is_empty() {
        return Err(Error::InvalidTar {
            what,
            entry: None,
            reason: "the file is empty".to_owned(),
        });
    }
    let detected = Compression::sniff(head);
    match how {
        TarImport::Keep => {
            let mut sink = sink;
            let (diff_id, stats) = {
                let tee = BufReader::new(Tee {
                    inner: file,
                    out: &mut sink,
                });
                validate_stream(tee, detected, &what, limits, meter)?
            };
            Ok((
                sink,
                ImportedTar {
                    compression: detected,
                    diff_id,
                    uncompressed_size: stats.size,
                    entries: stats.entries,
                },
            ))
        }
        TarImport::Recompress(c) => {
            let (sink, (diff_id, stats)) = c.compress(jobs, sink, |w| {
                let plain = decoder(file, detected, limits, meter).map_err(src_err)?;
                let tee: Box<dyn Read + '_> = Box::new(Tee {
                    inner: plain,
                    out: w,
                });
                let mut hashing = HashingReader::new(tee, gantry_oci::Algorithm::Sha256);
                let stats = walk_tar(Box::new(&mut hashing), &what, |_, _, _| Ok(()))?;
                let (_, diff_id, _) = hashing.finish();
                Ok((diff_id, stats))
            })?;
            Ok((
                sink,
                ImportedTar {
                    compression: c.compression(),
                    diff_id,
                    uncompressed_size: stats.size,
                    entries: stats.entries,
                },
            ))
        }
    }
}

/// Decompresses, validates and hashes a tar stream; returns its diff_id. The compressed input
/// must end where the compressed stream ends.
fn validate_stream<R: BufRead>(
    input: R,
    compression: Compression,
    what: &str,
    limits: &Limits,
    meter: &Arc<Meter>,
) -> Result<(Digest, TarStats), Error> {
    let mut input = input;
    let (diff_id, stats) = {
        let plain =
            decoder(&mut input, compression, limits, meter).map_err(|e| Error::InvalidTar {
                what: what.to_owned(),
                entry: None,
                reason: io_reason(&e),
            })?;
        let mut hashing = HashingReader::new(plain, gantry_oci::Algorithm::Sha256);
        let stats = walk_tar(Box::new(&mut hashing), what, |_, _, _| Ok(()))?;
        let (_, d, _) = hashing.finish();
        (d, stats)
    };
    // Whatever the decoder did not consume is trailing garbage.
    let mut rest = [0u8; 1];
    if input.read(&mut rest).map_err(|e| Error::InvalidTar {
        what: what.to_owned(),
        entry: None,
        reason: io_reason(&e),
    })? != 0
    {
        return Err(Error::InvalidTar {
            what: what.to_owned(),
            entry: None,
            reason: "data follows the end of the compressed stream".to_owned(),
        });
    }
    Ok((diff_id, stats))
}

/// One row of `gantry ls`.
///
/// Names are bytes in a layer. `path` and `link` show them as text (invalid UTF-8 as U+FFFD,
/// so two names can look the same); when a name is not UTF-8, `pathBase64` / `linkBase64`
/// hold its exact bytes (`/`-rooted), and the raw bytes are in [`ListedEntry::raw_path`] and
/// [`ListedEntry::raw_link`] for callers. Extended attribute values are strings when they
/// are UTF-8, otherwise `{"base64": "…"}` (the syntax layer metadata takes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedEntry {
    /// `/`-rooted path, as text.
    pub path: String,
    /// The path's exact bytes in base64, when they are not UTF-8.
    #[serde(rename = "pathBase64", skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits as octal text (`0755`).
    pub mode: String,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Owner name, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uname: String,
    /// Group name, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gname: String,
    /// Modification time, epoch seconds (negative before 1970).
    pub mtime: i64,
    /// Content size.
    pub size: u64,
    /// sha256 of the content of regular files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Symlink or hard link target, as text (a hard link's `/`-rooted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The target's exact bytes in base64, when they are not UTF-8.
    #[serde(rename = "linkBase64", skip_serializing_if = "Option::is_none")]
    pub link_base64: Option<String>,
    /// Extended attributes.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub xattrs: std::collections::BTreeMap<String, crate::meta::XattrValue>,
    /// The exact path bytes, `/`-rooted.
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    /// The exact target bytes.
    #[serde(skip)]
    pub raw_link: Option<Vec<u8>>,
}

/// Base64 of `bytes` when they are not UTF-8.
fn base64_if_binary(bytes: &[u8]) -> Option<String> {
    use base64::Engine as _;
    std::str::from_utf8(bytes)
        .is_err()
        .then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The mtime of an entry: the PAX record (rounded down to whole seconds) when there is one,
/// else the header's (octal or GNU base-256, negative included).
pub fn entry_mtime(h: &tar::Header, pax: &[Record]) -> Result<i64, String> {
    match pax.iter().rev().find(|(k, _)| k == b"mtime") {
        Some((_, v)) => crate::tarread::parse_pax_time(v)
            .map(|(s, _)| s)
            .ok_or_else(|| format!("invalid PAX mtime {:?}", String::from_utf8_lossy(v))),
        None => header_mtime(h),
    }
}

/// Lists the entries of a (possibly compressed) layer stream, hashing file contents.
/// Decompression stops at the default [`Limits`].
pub fn list_layer<'a, R: BufRead + 'a>(
    input: R,
    compression: Compression,
    what: &str,
    each: impl FnMut(ListedEntry),
) -> Result<TarStats, Error> {
    let meter = Meter::new();
    let result = list_capped(input, compression, what, each, &meter);
    within_limits(result, &meter, what)
}

fn list_capped<'a, R: BufRead + 'a>(
    input: R,
    compression: Compression,
    what: &str,
    mut each: impl FnMut(ListedEntry),
    meter: &Arc<Meter>,
) -> Result<TarStats, Error> {
    let plain =
        decoder(input, compression, &Limits::default(), meter).map_err(|e| Error::InvalidTar {
            what: what.to_owned(),
            entry: None,
            reason: io_reason(&e),
        })?;
    walk_tar(plain, what, |path, pax, entry| {
        let bad = |reason: String| Error::InvalidTar {
            what: what.to_owned(),
            entry: Some(String::from_utf8_lossy(path).into_owned()),
            reason,
        };
        let h = entry.header().clone();
        let kind = kind_name(h.entry_type()).unwrap_or("?");
        let mut xattrs = std::collections::BTreeMap::new();
        for (k, v) in pax {
            if let Some(name) = k.strip_prefix(crate::meta::XATTR_PREFIX.as_bytes()) {
                xattrs.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    crate::meta::XattrValue::from_bytes(v.clone()),
                );
            }
        }
        let mtime = entry_mtime(&h, pax).map_err(bad)?;
        let raw_link = entry.link_name_bytes().map(|l| match h.entry_type() {
            tar::EntryType::Link => {
                let mut p = b"/".to_vec();
                p.extend_from_slice(&normalize_member_name(&l).unwrap_or_default());
                p
            }
            _ => l.into_owned(),
        });
        let size = entry.size();
        let digest = if kind == "file" {
            let mut hasher = Hasher::sha256();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(|err| bad(io_reason(&err)))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Some(hasher.finish())
        } else {
            None
        };
        let mut raw_path = b"/".to_vec();
        raw_path.extend_from_slice(path);
        each(ListedEntry {
            path: String::from_utf8_lossy(&raw_path).into_owned(),
            path_base64: base64_if_binary(&raw_path),
            kind,
            mode: format!("{:04o}", h.mode().unwrap_or(0) & 0o7777),
            uid: crate::pax::id(&h, pax, "uid").map_err(bad)?,
            gid: crate::pax::id(&h, pax, "gid").map_err(bad)?,
            uname: h.username().ok().flatten().unwrap_or("").to_owned(),
            gname: h.groupname().ok().flatten().unwrap_or("").to_owned(),
            mtime,
            size: if kind == "file" { size } else { 0 },
            digest,
            link: raw_link
                .as_ref()
                .map(|l| String::from_utf8_lossy(l).into_owned()),
            link_base64: raw_link.as_deref().and_then(base64_if_binary),
            xattrs,
            raw_path,
            raw_link,
        });
        Ok(())
    })
}

/// The names and kinds of the entries of a (possibly compressed) layer stream, without
/// reading file contents, for checks over an image's layers ([`crate::stack`]).
pub fn list_names<'a, R: BufRead + 'a>(
    input: R,
    compression: Compression,
    what: &str,
) -> Result<Vec<crate::stack::ListedName>, Error> {
    let meter = Meter::new();
    let result = list_names_capped(input, compression, what, &meter);
    within_limits(result, &meter, what)
}

fn list_names_capped<'a, R: BufRead + 'a>(
    input: R,
    compression: Compression,
    what: &str,
    meter: &Arc<Meter>,
) -> Result<Vec<crate::stack::ListedName>, Error> {
    use crate::stack::{ListedName, NameKind};
    let plain =
        decoder(input, compression, &Limits::default(), meter).map_err(|e| Error::InvalidTar {
            what: what.to_owned(),
            entry: None,
            reason: io_reason(&e),
        })?;
    let mut out = Vec::new();
    walk_tar(plain, what, |path, _, entry| {
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => NameKind::Dir,
            tar::EntryType::Symlink => NameKind::Symlink(
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            _ => NameKind::Other,
        };
        out.push(ListedName {
            path: path.to_vec(),
            kind,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Shows a name (or link target) on one line the way `tar -tv` does: `\\`, `\n`, `\t` and
/// the other C escapes, and every other control character or byte that is not UTF-8 as a
/// three-digit octal escape (`\377`). Distinct names always look distinct.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let octal = |out: &mut String, b: u8| out.push_str(&format!("\\{b:03o}"));
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                // Other controls, C1 controls and line/paragraph separators.
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    let mut b = [0u8; 4];
                    for &byte in c.encode_utf8(&mut b).as_bytes() {
                        octal(&mut out, byte);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            octal(&mut out, b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Writes a raw header with an arbitrary name (tar::Builder refuses `..`).
    fn raw_tar(name: &[u8], ty: u8) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::new(ty));
        h.set_cksum();
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    fn walk(bytes: &[u8]) -> Result<TarStats, Error> {
        walk_tar(Box::new(bytes), "t.tar", |_, _, _| Ok(()))
    }

    #[test]
    fn accepts_normal_and_absolute_names() {
        let t = tar_of(&[("a/b", b"x"), ("c", b"yy")]);
        assert_eq!(walk(&t).unwrap().entries, 2);
        assert_eq!(normalize_member_name(b"/etc//x/").unwrap(), b"etc/x");
        assert_eq!(normalize_member_name(b"./etc/./x").unwrap(), b"etc/x");
        assert_eq!(normalize_member_name(b"./").unwrap(), b"");
    }

    // T1: traversal names are refused.
    #[test]
    fn refuses_traversal() {
        for name in [
            &b"../x"[..],
            b"../../x",
            b"..",
            b"/../x",
            b"a/../../x",
            b"./../x",
        ] {
            let e = walk(&raw_tar(name, b'0')).unwrap_err().to_string();
            assert!(e.contains(".."), "{}: {e}", String::from_utf8_lossy(name));
        }
    }

    // T4: the root may not become a non-directory.
    #[test]
    fn refuses_root_type_change() {
        assert!(walk(&raw_tar(b"./", b'2')).is_err());
        assert!(walk(&raw_tar(b"./", b'5')).is_ok());
    }

    // T8: malformed whiteouts.
    #[test]
    fn refuses_bad_whiteouts() {
        for name in [&b".wh."[..], b"etc/.wh..", b".wh...", b"a/.wh."] {
            assert!(
                walk(&raw_tar(name, b'0')).is_err(),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        assert!(walk(&raw_tar(b"etc/.wh..wh..opq", b'0')).is_ok());
        assert!(walk(&raw_tar(b"etc/.wh.passwd", b'0')).is_ok());
    }

    #[test]
    fn header_times_before_1970_in_base256() {
        for t in [
            -1i64,
            -631_152_000,
            0,
            1,
            10_413_792_000,
            i64::MAX,
            i64::MIN,
        ] {
            let mut h = tar::Header::new_gnu();
            let field = &mut h.as_old_mut().mtime;
            field[..4].fill(if t < 0 { 0xff } else { 0 });
            field[4..].copy_from_slice(&t.to_be_bytes());
            field[0] |= 0x80;
            assert_eq!(header_mtime(&h), Ok(t), "{t}");
        }
        // Beyond an i64.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().mtime = [0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(header_mtime(&h).is_err());
        // Octal.
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0o77777777777);
        assert_eq!(header_mtime(&h), Ok(0o77777777777));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"10413792000"), Some((10_413_792_000, 0)));
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    #[test]
    fn names_escape_like_tar() {
        assert_eq!(escape_name(b"a\nb\tc\\d"), "a\\nb\\tc\\\\d");
        assert_eq!(escape_name(b"x\xff\xfe"), "x\\377\\376");
        assert_eq!(escape_name(b"\x01\x7f"), "\\001\\177");
        assert_eq!(escape_name("café\u{85}".as_bytes()), "café\\302\\205");
        assert_eq!(escape_name(b"plain name"), "plain name");
        // Distinct names stay distinct.
        let names: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b'n', b]).collect();
        let shown: HashSet<String> = names.iter().map(|n| escape_name(n)).collect();
        assert_eq!(shown.len(), 256);
        assert!(shown.iter().all(|s| !s.contains(['\n', '\r'])));
    }

    // T11b: duplicates.
    #[test]
    fn refuses_duplicates_after_normalisation() {
        let t = tar_of(&[("a/b", b"x"), ("./a/b", b"y")]);
        assert!(walk(&t).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn refuses_truncation_and_trailing_data() {
        let t = tar_of(&[("a", &[7u8; 2000]), ("b", b"x")]);
        // Cut inside the data, inside the second header, and right after the last data (no
        // end marker): each is reported as truncated, not as some other corruption.
        for cut in [1200, 512 + 2048 + 100, 512 + 2048 + 512 + 512] {
            let e = walk(&t[..cut]).unwrap_err().to_string();
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
        }
        // Garbage after the end marker.
        let mut g = t.clone();
        g.extend_from_slice(b"junk");
        assert!(walk(&g).is_err());
        // Zero padding after it is fine.
        let mut z = t.clone();
        z.extend_from_slice(&[0u8; 10240]);
        assert!(walk(&z).is_ok());
        // A corrupt header checksum.
        let mut c = t.clone();
        c[10] ^= 0xff;
        assert!(walk(&c).is_err());
    }

    #[test]
    fn keep_and_recompress_preserve_diff_id() {
        let t = tar_of(&[("a", b"hello"), ("d/e", b"world")]);
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("l.tar");
        std::fs::write(&plain, &t).unwrap();
        let (kept, info) =
            import_tar(&plain, TarImport::Keep, 1, Vec::new(), &Limits::default()).unwrap();
        assert_eq!(kept, t);
        assert_eq!(info.diff_id, Digest::sha256(&t));
        assert_eq!(info.compression, Compression::None);

        let gz = Compressor::new(Compression::Gzip);
        let (gzipped, info2) = import_tar(
            &plain,
            TarImport::Recompress(gz),
            2,
            Vec::new(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(info2.diff_id, info.diff_id);
        assert_eq!(info2.compression, Compression::Gzip);
        let gzpath = dir.path().join("l.tar.gz");
        std::fs::write(&gzpath, &gzipped).unwrap();
        let (kept_gz, info3) =
            import_tar(&gzpath, TarImport::Keep, 1, Vec::new(), &Limits::default()).unwrap();
        assert_eq!(kept_gz, gzipped);
        assert_eq!(info3.diff_id, info.diff_id);
        assert_eq!(info3.compression, Compression::Gzip);

        let zs = Compressor::new(Compression::Zstd);
        let (z, info4) = import_tar(
            &gzpath,
            TarImport::Recompress(zs),
            2,
            Vec::new(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(info4.diff_id, info.diff_id);
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), t);

        // A truncated gzip is an error that names the file.
        std::fs::write(&gzpath, &gzipped[..gzipped.len() - 10]).unwrap();
        let e = import_tar(&gzpath, TarImport::Keep, 1, Vec::new(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.tar.gz"), "{e}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid_tar() -> Vec<u8> {
        let mut spec: crate::LayerSpec = toml::from_str(
            r#"content = { "/a/b" = "hello", "/c" = "world" }
symlinks = { "/l" = "a/b" }
hardlinks = { "/h" = "/c" }
empty-dirs = ["/e"]
metadata."/c" = { xattrs = { "user.x" = "y" }, uid = 3000000 }"#,
        )
        .unwrap();
        spec.compression = Some("none".into());
        let plan = spec.plan(Path::new("."), 0, "t").unwrap();
        let (out, _) =
            crate::write_layer(&plan, 1, Vec::new(), &crate::NoProgress, &Limits::default())
                .unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        // Hostile input never panics the validator: it is accepted or refused.
        #[test]
        fn mutated_tars_never_panic(flips in proptest::collection::vec((0usize..6144, any::<u8>()), 1..8),
                                    cut in 0usize..6144) {
            let mut t = valid_tar();
            for (i, b) in flips {
                let n = t.len();
                t[i % n] = b;
            }
            t.truncate(cut.max(1).min(t.len()));
            let _ = walk_tar(Box::new(&t[..]), "fuzz", |_, _, _| Ok(()));
        }

        #[test]
        fn mutated_compressed_streams_never_panic(flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8),
                                                  zstd in any::<bool>()) {
            let c = if zstd { Compression::Zstd } else { Compression::Gzip };
            let (mut z, ()) = crate::Compressor::new(c)
                .compress(1, Vec::new(), |w| w.write_all(&valid_tar()).map_err(crate::Error::Output))
                .unwrap();
            for (i, b) in flips {
                let n = z.len();
                z[i % n] = b;
            }
            if let Ok(r) = decoder(&z[..], c, &Limits::default(), &Meter::new()) {
                let _ = walk_tar(r, "fuzz", |_, _, _| Ok(()));
            }
        }
    }
}
