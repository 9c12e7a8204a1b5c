//! PAX extended headers, read exactly.
//!
//! A PAX record is `"<len> <key>=<value>\n"`, where `len` counts the whole record, so a value
//! may hold any bytes, newlines included: binary extended attributes such as
//! `security.capability` do. The `tar` crate splits the header data on newlines instead: it
//! cannot read such values, and a crafted value can hide a record (`path`, `size`) that only
//! the `tar` crate sees, which would make gantry read a layer differently from GNU tar, Go
//! and umoci.
//!
//! So gantry keeps the raw bytes of each entry's PAX header itself ([`PaxTap`], a reader under
//! the tar parser that follows its headers), parses them with [`parse_records`], and
//! [`checked_records`] refuses a header that the `tar` crate would read differently where it
//! matters (the records it applies to name and frame entries: `path`, `linkpath`, `size`;
//! `uid` and `gid`, which it applies too, gantry takes from its own parse: [`id`]). gantry's
//! own writer puts records whose value holds a newline last, so the `tar` crate reads the
//! records it applies before reaching them.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

/// One PAX record: key and value bytes.
pub type Record = (Vec<u8>, Vec<u8>);

/// The largest PAX header kept in memory (real ones are a few hundred bytes; binary xattrs
/// can make them a few KiB).
pub const MAX_PAX_HEADER: u64 = 1 << 20;

/// The records the `tar` crate applies itself.
const CRATE_KEYS: &[&[u8]] = &[b"path", b"linkpath", b"size"];

/// Parses the data of a PAX extended header. Trailing NUL padding is allowed; anything else
/// that is not a well-formed record is an error.
pub fn parse_records(data: &[u8]) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record with an invalid length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a PAX record whose length does not match its data".to_owned());
        }
        let body = &rest[sp + 1..len - 1];
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .filter(|&i| i > 0)
            .ok_or("a PAX record without a key")?;
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// [`parse_records`], refusing data that the `tar` crate applies differently: for each record
/// it acts on itself to name and frame entries (`path`, `linkpath`, `size`), its reading
/// (lines split on newlines; `size` only before the first line it cannot parse) must give
/// the value the records really hold. A key given twice is refused too (readers disagree on
/// which one wins). The other records (xattrs, `mtime`) are read from the exact parse only.
pub fn checked_records(data: &[u8]) -> Result<Vec<Record>, String> {
    let records = parse_records(data)?;
    for &key in CRATE_KEYS {
        let mut exact = records.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        let value = exact.next().map(Vec::as_slice);
        if exact.next().is_some() {
            return Err(format!(
                "the PAX header has two {} records",
                String::from_utf8_lossy(key)
            ));
        }
        let numeric = key != b"path" && key != b"linkpath";
        let mut seen = None;
        for ext in tar::PaxExtensions::new(data) {
            match ext {
                Ok(e) if e.key_bytes() == key => {
                    seen = Some(e.value_bytes());
                    break;
                }
                Ok(_) => {}
                Err(_) if numeric => break,
                Err(_) => {}
            }
        }
        let agree = if numeric {
            let num =
                |v: Option<&[u8]>| v.and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
            if value.is_some() && num(value).is_none() {
                return Err(format!(
                    "the PAX {} record is not a number",
                    String::from_utf8_lossy(key)
                ));
            }
            num(seen) == num(value)
        } else {
            seen == value
        };
        if !agree {
            return Err(format!(
                "tar parsers would disagree on this entry's PAX {} record (a record value \
                 holds a newline)",
                String::from_utf8_lossy(key)
            ));
        }
    }
    Ok(records)
}

/// An entry's `uid` or `gid` (`key`): the PAX record from `records` when there is one (the
/// last, as GNU tar and Go read them), else the header's.
pub fn id(h: &tar::Header, records: &[Record], key: &str) -> Result<u64, String> {
    match records.iter().rev().find(|(k, _)| k == key.as_bytes()) {
        Some((_, v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("invalid PAX {key} {:?}", String::from_utf8_lossy(v))),
        None if key == "uid" => h.uid().map_err(|e| e.to_string()),
        None => h.gid().map_err(|e| e.to_string()),
    }
}

/// Where a [`PaxTap`] is and what it captured; shared with the code that drives the tar
/// parser.
#[derive(Debug, Default)]
pub struct PaxState {
    /// Stream offset of the next byte read.
    pos: Cell<u64>,
    /// Offset of the next header to look at, and how much of it was read.
    watch: Cell<Option<u64>>,
    /// The data range of the PAX header being captured.
    capture: Cell<Option<(u64, u64)>>,
    /// The captured data.
    data: RefCell<Vec<u8>>,
    /// The offset of the entry header the captured data belongs to, once known.
    owner: Cell<Option<u64>>,
}

impl PaxState {
    /// A new state, shared between a [`PaxTap`] and its driver.
    pub fn new() -> Rc<Self> {
        Rc::new(PaxState::default())
    }

    /// Tells the tap that a tar header (of an entry or of its extension records) starts at
    /// stream offset `at`: the start of the archive, then the end of each entry's data.
    pub fn expect_header_at(&self, at: u64) {
        self.watch.set(Some(at));
    }

    /// The raw PAX data of the entry whose header starts at `header_pos`, if the tap saw one.
    pub fn take(&self, header_pos: u64) -> Option<Vec<u8>> {
        if self.owner.get() == Some(header_pos) {
            self.owner.set(None);
            Some(std::mem::take(&mut *self.data.borrow_mut()))
        } else {
            None
        }
    }
}

/// A reader under a tar parser that follows its headers (from the offsets given to
/// [`PaxState::expect_header_at`]) and keeps the raw data of PAX extended headers, up to
/// [`MAX_PAX_HEADER`] bytes.
pub struct PaxTap<R> {
    inner: R,
    state: Rc<PaxState>,
    header: Box<[u8; 512]>,
    filled: usize,
}

impl<R: Read> PaxTap<R> {
    /// Wraps `inner`; `state` is shared with the driver.
    pub fn new(inner: R, state: Rc<PaxState>) -> Self {
        PaxTap {
            inner,
            state,
            header: Box::new([0; 512]),
            filled: 0,
        }
    }

    fn inspect(&mut self, data: &[u8], start: u64) {
        let s = &self.state;
        let end = start + data.len() as u64;
        loop {
            let mut progressed = false;
            if let Some((from, to)) = s.capture.get() {
                if from < start {
                    // Went by unseen (the driver lost track): give up on this one.
                    s.capture.set(None);
                    s.data.borrow_mut().clear();
                } else if from < end {
                    let upto = to.min(end);
                    s.data
                        .borrow_mut()
                        .extend_from_slice(&data[(from - start) as usize..(upto - start) as usize]);
                    s.capture
                        .set(if upto == to { None } else { Some((upto, to)) });
                    progressed = true;
                }
            }
            if let Some(w) = s.watch.get() {
                let next = w + self.filled as u64;
                if next < start {
                    s.watch.set(None);
                    self.filled = 0;
                } else if next < end {
                    let from = (next - start) as usize;
                    let take = (512 - self.filled).min(data.len() - from);
                    self.header[self.filled..self.filled + take]
                        .copy_from_slice(&data[from..from + take]);
                    self.filled += take;
                    progressed = true;
                    if self.filled == 512 {
                        self.filled = 0;
                        s.watch.set(self.header_done(w));
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// One header at `at` was read; returns the offset of the next header to look at.
    fn header_done(&self, at: u64) -> Option<u64> {
        let s = &self.state;
        let h = &self.header;
        let kind = h[156];
        match kind {
            b'x' | b'L' | b'K' => {
                let size = header_size(&h[124..136])?;
                let data_at = at + 512;
                if kind == b'x' {
                    s.data.borrow_mut().clear();
                    s.owner.set(None);
                    if size <= MAX_PAX_HEADER {
                        s.capture.set(Some((data_at, data_at + size)));
                    }
                }
                Some(data_at + size.div_ceil(512) * 512)
            }
            _ => {
                // The entry the extension records describe.
                if !s.data.borrow().is_empty() || s.capture.get().is_some() {
                    s.owner.set(Some(at));
                }
                None
            }
        }
    }
}

impl<R: Read> Read for PaxTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.state.pos.get();
        self.state.pos.set(start + n as u64);
        self.inspect(&buf[..n], start);
        Ok(n)
    }
}

/// A header's size field: octal, or GNU base-256 (positive only).
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 {
            return None;
        }
        return field[1..].iter().try_fold(0u64, |acc, &b| {
            acc.checked_mul(256)?.checked_add(u64::from(b))
        });
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?.trim();
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = key.len() + value.len() + 3;
        let mut len = body + body.to_string().len();
        if len.to_string().len() > body.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    #[test]
    fn values_may_hold_newlines() {
        let mut data = record("SCHILY.xattr.security.capability", b"\x01\x00\n\x02\n");
        data.extend(record("mtime", b"-5"));
        let r = checked_records(&data).unwrap();
        assert_eq!(r[0].1, b"\x01\x00\n\x02\n");
        assert_eq!(r[1], (b"mtime".to_vec(), b"-5".to_vec()));
        // Trailing NULs are padding.
        data.extend([0u8; 7]);
        assert_eq!(parse_records(&data).unwrap().len(), 2);
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [
            &b"5 a=b"[..],
            b"x a=b\n",
            b"6 =bc\n",
            b"99 a=b\n",
            b"6 abc\n",
            b"6 a=b\n\n",
        ] {
            assert!(
                parse_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hidden_records_are_refused() {
        // A value whose second line is a valid record the tar crate would apply.
        let hidden = record("path", b"evil");
        let mut value = b"x\n".to_vec();
        value.extend_from_slice(&hidden[..hidden.len() - 1]);
        let data = record("SCHILY.xattr.user.a", &value);
        assert!(parse_records(&data).is_ok());
        let e = checked_records(&data).unwrap_err();
        assert!(e.contains("disagree") && e.contains("path"), "{e}");
        // A path with a newline: the tar crate would ignore it.
        let e = checked_records(&record("path", b"a\nb")).unwrap_err();
        assert!(e.contains("path"), "{e}");
        // A binary value before `size`: the tar crate stops at it and would miss the size.
        let mut data = record("SCHILY.xattr.user.a", b"\n");
        data.extend(record("size", b"3000000"));
        assert!(checked_records(&data).unwrap_err().contains("size"));
        // The uid it would miss too, but gantry reads ids from its own parse.
        let mut data = record("SCHILY.xattr.user.a", b"\n");
        data.extend(record("uid", b"3000000"));
        let r = checked_records(&data).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        assert_eq!(id(&h, &r, "uid"), Ok(3_000_000));
        assert_eq!(id(&h, &r, "gid"), Ok(0));
        // After it (as gantry writes them), and with an empty line inside: fine.
        let mut data = record("uid", b"3000000");
        data.extend(record("SCHILY.xattr.user.a", b"\n\nx"));
        data.extend(record("mtime", b"-1"));
        assert_eq!(checked_records(&data).unwrap().len(), 3);
        // Twice the same key.
        let mut data = record("path", b"a");
        data.extend(record("path", b"b"));
        assert!(checked_records(&data).unwrap_err().contains("two"));
    }
}
