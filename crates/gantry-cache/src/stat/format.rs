//! The cache file: its records, reading and validating it, writing it (the format is in the
//! module documentation of [`super`]).

use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::path::Path;

use gantry_oci::Digest;

use super::{FileId, MAX_FILE_SIZE, StatKey};
use crate::fsutil::read_capped;

const MAGIC: [u8; 8] = *b"gntstat\0";
const VERSION: u32 = 1;
pub(super) const HEADER_LEN: usize = 16;
pub(super) const CHECKSUM_LEN: usize = 8;
/// Bytes of an entry after its path.
const RECORD_LEN: usize = 5 * 8 + 32 + 4;
/// Bytes of an entry besides its path.
pub(super) const ENTRY_FIXED_LEN: usize = 4 + RECORD_LEN;
/// Longest path recorded (longer ones are hashed every time; Linux cannot open them anyway).
pub(super) const MAX_PATH_LEN: usize = 64 << 10;

/// A recorded digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) key: StatKey,
    pub(super) digest: [u8; 32],
    /// Day the entry was last used.
    pub(super) day: u32,
}

/// A loaded cache file: its bytes, validated, and the offsets of its entries in path order.
#[derive(Default)]
pub(super) struct Table {
    pub(super) bytes: Vec<u8>,
    pub(super) offsets: Vec<u32>,
    /// Lookups that missed their hint; after a quarter of `len()`, `index` is built.
    pub(super) searches: usize,
    /// Open-addressing hash index of the paths, for callers that do not look paths up in
    /// order: (entry index + 1, offset), with 0 marking an empty slot; the offset saves a
    /// random memory access per lookup. Empty until built.
    pub(super) index: Vec<(u32, u32)>,
    pub(super) hasher: RandomState,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// The path of entry `i`.
    pub(super) fn path(&self, i: usize) -> &[u8] {
        self.path_at(self.offsets[i] as usize)
    }

    /// The path of the entry at byte offset `off`.
    pub(super) fn path_at(&self, off: usize) -> &[u8] {
        let len = le_u32(&self.bytes[off..]) as usize;
        &self.bytes[off + 4..off + 4 + len]
    }

    /// The record of entry `i`.
    pub(super) fn record(&self, i: usize) -> Record {
        let off = self.offsets[i] as usize;
        let len = le_u32(&self.bytes[off..]) as usize;
        let r = &self.bytes[off + 4 + len..off + ENTRY_FIXED_LEN + len];
        Record {
            key: StatKey {
                dev: le_u64(&r[0..]),
                ino: le_u64(&r[8..]),
                size: le_u64(&r[16..]),
                mtime_ns: le_u64(&r[24..]) as i64,
                ctime_ns: le_u64(&r[32..]) as i64,
            },
            digest: r[40..72].try_into().expect("32 bytes"),
            day: le_u32(&r[72..]),
        }
    }

    /// The index of `path`, trying `hint` first (callers mostly walk paths in order), then
    /// the hash index if built, else a binary search; builds the hash index once lookups
    /// out of order become common.
    pub(super) fn find(&mut self, path: &[u8], hint: usize) -> Option<usize> {
        if self.offsets.is_empty() {
            return None;
        }
        if hint < self.len() && self.path(hint) == path {
            return Some(hint);
        }
        if self.index.is_empty() {
            self.searches += 1;
            // Building costs about as much as len / 5 binary searches (hashing every path):
            // build once the searches have cost about as much, at most twice the best choice.
            if self.searches > self.len() / 4 {
                self.build_index();
            }
        }
        self.search(path)
    }

    /// The index of `path`.
    pub(super) fn search(&self, path: &[u8]) -> Option<usize> {
        if self.index.is_empty() {
            return self
                .offsets
                .binary_search_by(|&off| self.path_at(off as usize).cmp(path))
                .ok();
        }
        let mask = self.index.len() - 1;
        let mut slot = self.hasher.hash_one(path) as usize & mask;
        loop {
            match self.index[slot] {
                (0, _) => return None,
                (n, off) if self.path_at(off as usize) == path => return Some(n as usize - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Builds the hash index: a power-of-two table at most half full, linear probing.
    pub(super) fn build_index(&mut self) {
        let mut index = vec![(0u32, 0u32); (self.len() * 2).next_power_of_two().max(2)];
        let mask = index.len() - 1;
        for i in 0..self.len() {
            let mut slot = self.hasher.hash_one(self.path(i)) as usize & mask;
            while index[slot].0 != 0 {
                slot = (slot + 1) & mask;
            }
            // Tables have fewer than 2^32 - 1 entries: files are capped far below 4 GiB.
            index[slot] = (i as u32 + 1, self.offsets[i]);
        }
        self.index = index;
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

pub(super) fn raw_sha256(digest: &Digest) -> [u8; 32] {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(digest.hex(), &mut raw).expect("a sha256 digest has 64 hex digits");
    raw
}

/// `Digest::from_sha256_bytes`, several times faster (it is on the path of every hit).
pub(super) fn digest_from_raw(raw: &[u8; 32]) -> Digest {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = *b"sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for (i, b) in raw.iter().enumerate() {
        text[7 + 2 * i] = HEX[usize::from(b >> 4)];
        text[8 + 2 * i] = HEX[usize::from(b & 15)];
    }
    let text = std::str::from_utf8(&text).expect("ASCII");
    Digest::parse(text).expect("a well-formed sha256 digest")
}

/// Reads a cache file: its identity (if it exists) and its entries (empty if unusable).
pub(super) fn read_cache_file(path: &Path) -> (FileId, Table) {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(file = %path.display(), error = %e, "cannot open the stat cache; starting empty");
            }
            return (None, Table::default());
        }
    };
    let id = file.metadata().ok().map(|m| StatKey::of(&m));
    let parsed = read_capped(file, MAX_FILE_SIZE)
        .map_err(|e| e.to_string())
        .and_then(decode);
    match parsed {
        Ok(table) => (id, table),
        Err(reason) => {
            tracing::debug!(file = %path.display(), %reason, "ignoring an unusable stat cache");
            (id, Table::default())
        }
    }
}

/// Serialises entries sorted by path (see the module documentation).
pub(super) fn encode(entries: &[(&[u8], Record)]) -> Vec<u8> {
    let paths: usize = entries.iter().map(|(p, _)| p.len()).sum();
    let mut out =
        Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_FIXED_LEN + paths + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let count = u32::try_from(entries.len()).expect("fewer than 4 billion entries");
    out.extend_from_slice(&count.to_le_bytes());
    for (path, record) in entries {
        // Paths are capped at MAX_PATH_LEN.
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        let k = &record.key;
        out.extend_from_slice(&k.dev.to_le_bytes());
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.size.to_le_bytes());
        out.extend_from_slice(&k.mtime_ns.to_le_bytes());
        out.extend_from_slice(&k.ctime_ns.to_le_bytes());
        out.extend_from_slice(&record.digest);
        out.extend_from_slice(&record.day.to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Validates a cache file and indexes its entries, or says why it is unusable.
pub(super) fn decode(mut bytes: Vec<u8>) -> std::result::Result<Table, String> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(format!("only {} bytes long", bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err("not a stat cache file (bad magic)".to_owned());
    }
    let version = le_u32(&bytes[8..]);
    if version != VERSION {
        return Err(format!("version {version}, expected {VERSION}"));
    }
    let end = bytes.len() - CHECKSUM_LEN;
    if checksum(&bytes[..end]) != le_u64(&bytes[end..]) {
        return Err("checksum mismatch".to_owned());
    }
    let count = le_u32(&bytes[12..]) as usize;
    // Every entry takes at least ENTRY_FIXED_LEN bytes, whatever the count claims.
    if count > (end - HEADER_LEN) / ENTRY_FIXED_LEN {
        return Err(format!(
            "claims {count} entries in {} bytes",
            end - HEADER_LEN
        ));
    }
    let mut offsets = Vec::with_capacity(count);
    let mut off = HEADER_LEN;
    let mut previous: &[u8] = &[];
    for i in 0..count {
        if end - off < ENTRY_FIXED_LEN {
            return Err(format!("entry {i} is truncated"));
        }
        let len = le_u32(&bytes[off..]) as usize;
        if len > MAX_PATH_LEN || end - off - ENTRY_FIXED_LEN < len {
            return Err(format!("entry {i} has a bad path length"));
        }
        let path = &bytes[off + 4..off + 4 + len];
        if i > 0 && path <= previous {
            return Err(format!("entry {i} is out of order"));
        }
        previous = path;
        offsets.push(u32::try_from(off).expect("files are capped far below 4 GiB"));
        off += ENTRY_FIXED_LEN + len;
    }
    if off != end {
        return Err(format!("{} bytes after the last entry", end - off));
    }
    bytes.truncate(end);
    Ok(Table {
        bytes,
        offsets,
        ..Table::default()
    })
}

/// A fast non-cryptographic 64-bit checksum (xxHash64's round and avalanche over four lanes of
/// little-endian words; not xxHash64 itself). It only detects damage: anyone who can write
/// the file can write any content, and a wrong digest could then be planted anyway.
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    fn round(acc: u64, word: u64) -> u64 {
        acc.wrapping_add(word.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    let mut lanes = [P1.wrapping_add(P2), P2, 0, P1.wrapping_neg()];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = round(*lane, le_u64(word));
        }
    }
    let mut h = lanes
        .iter()
        .enumerate()
        .fold(bytes.len() as u64, |h, (i, &lane)| {
            (h ^ round(0, lane))
                .rotate_left(27 + i as u32)
                .wrapping_mul(P1)
        });
    let mut rest = blocks.remainder();
    while rest.len() >= 8 {
        h = (h ^ round(0, le_u64(rest)))
            .rotate_left(27)
            .wrapping_mul(P1);
        rest = &rest[8..];
    }
    for &b in rest {
        h = (h ^ u64::from(b).wrapping_mul(P3))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}
