//! Content digests: parsing, verification and streaming hashers.
//!
//! A [`Digest`] is only ever built from a string that passed [`Digest::parse`] (lowercase hex of
//! the exact length for its algorithm) or from a hash we computed ourselves, so its hex part is
//! always safe to use as a file name or URL path segment.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

use crate::Error;

/// A digest algorithm gantry can verify. gantry writes only sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm of everything gantry writes.
    Sha256,
    /// SHA-512, accepted when reading.
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings and in `blobs/<alg>/` directories.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded value.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated content digest such as `sha256:9f86…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `alg:hex`, accepting only sha256 and sha512 with lowercase hex of the right length.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidDigest {
            input: truncate_for_error(input),
            reason: reason.to_owned(),
        };
        let (alg, hex) = input
            .split_once(':')
            .ok_or_else(|| bad("expected <algorithm>:<hex>"))?;
        let algorithm = Algorithm::from_name(alg)
            .ok_or_else(|| bad("unsupported algorithm (sha256 and sha512 are supported)"))?;
        if hex.len() != algorithm.hex_len() {
            return Err(bad(&format!(
                "a {} digest has {} hex characters, this one has {}",
                algorithm,
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the hex part must be lowercase hexadecimal"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Builds a sha256 digest from raw hash bytes.
    pub fn from_sha256_bytes(bytes: [u8; 32]) -> Self {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(bytes),
        }
    }

    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Self::from_sha256_bytes(sha2::Sha256::digest(data).into())
    }

    /// The digest of `data` with the given algorithm.
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex value; safe to use as a path component.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for human output (`sha256:0123456789ab`).
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm, &self.hex[..12])
    }

    /// The relative path of this blob inside an OCI layout or the store: `blobs/<alg>/<hex>`.
    pub fn blob_path(&self) -> std::path::PathBuf {
        ["blobs", self.algorithm.name(), &self.hex].iter().collect()
    }
}

fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 160;
    if s.len() <= MAX {
        s.to_owned()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for either algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// sha256 state.
    Sha256(sha2::Sha256),
    /// sha512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A new hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// A new sha256 hasher.
    pub fn sha256() -> Self {
        Self::new(Algorithm::Sha256)
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_sha256_bytes(h.finalize().into()),
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// An `io::Write` adapter that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`, hashing with sha256.
    pub fn new(inner: W) -> Self {
        Self::with_algorithm(inner, Algorithm::Sha256)
    }

    /// Wraps `inner`, hashing with `algorithm`.
    pub fn with_algorithm(inner: W, algorithm: Algorithm) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(algorithm),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, mutably. Bytes written to it directly are not hashed.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An `io::Read` adapter that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`, hashing with `algorithm`.
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algorithm),
            read: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The inner reader, mutably. Bytes read from it directly are not hashed.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Returns the inner reader, the digest and the byte count.
    pub fn finish(self) -> (R, Digest, u64) {
        (self.inner, self.hasher.finish(), self.read)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// A reader that yields exactly `expected_size` bytes of `inner` and, at its end, checks that
/// `inner` has no more bytes and that the content hashes to `expected`. A mismatch surfaces as an
/// `io::Error` of kind `InvalidData` whose inner error is [`Error::DigestMismatch`] or
/// [`Error::SizeMismatch`], so it cannot be mistaken for a clean end of stream.
pub struct VerifyingReader<R> {
    inner: HashingReader<R>,
    expected: Digest,
    expected_size: u64,
    what: String,
    done: bool,
    /// The mismatch already reported; returned again by every later read so that a caller
    /// who ignores the first error can never mistake the stream for a clean end.
    failed: Option<String>,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`; `what` names the blob in errors (a path or reference).
    pub fn new(inner: R, expected: Digest, expected_size: u64, what: impl Into<String>) -> Self {
        let algorithm = expected.algorithm();
        VerifyingReader {
            inner: HashingReader::new(inner, algorithm),
            expected,
            expected_size,
            what: what.into(),
            done: false,
            failed: None,
        }
    }

    fn fail(&mut self, e: Error) -> io::Error {
        self.failed = Some(e.to_string());
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn check_end(&mut self) -> io::Result<()> {
        // One extra byte proves the source is not longer than the descriptor says.
        let mut extra = [0u8; 1];
        let n = self.inner.get_mut().read(&mut extra)?;
        let read = self.inner.bytes_read();
        if n != 0 || read != self.expected_size {
            return Err(self.fail(Error::SizeMismatch {
                what: self.what.clone(),
                expected: self.expected_size,
                actual: if n != 0 { None } else { Some(read) },
            }));
        }
        let hasher = std::mem::replace(&mut self.inner.hasher, Hasher::sha256());
        let actual = hasher.finish();
        if actual != self.expected {
            return Err(self.fail(Error::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected.clone(),
                actual,
            }));
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(msg) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone()));
        }
        if self.done {
            return Ok(0);
        }
        let remaining = self.expected_size - self.inner.bytes_read();
        if remaining == 0 {
            self.done = true;
            self.check_end()?;
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
            return Err(self.fail(Error::SizeMismatch {
                what: self.what.clone(),
                expected: self.expected_size,
                actual: Some(self.inner.bytes_read()),
            }));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::parse(HELLO).unwrap();
        assert_eq!(d.to_string(), HELLO);
        assert_eq!(d, Digest::sha256(b"hello"));
        assert_eq!(
            d.blob_path(),
            std::path::Path::new("blobs/sha256").join(d.hex())
        );
    }

    #[test]
    fn accepts_sha512() {
        let d = Digest::compute(Algorithm::Sha512, b"hello");
        assert_eq!(d.hex().len(), 128);
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
    }

    // T15 of the research notes: malformed digests never become paths.
    #[test]
    fn rejects_malformed_digests() {
        let upper = HELLO.to_uppercase().replace("SHA256", "sha256");
        let cases = [
            upper.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98245",
            "sha256:../../x",
            "md5:5d41402abc4b2a76b9719d911017c592",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:",
            "sha256",
            "",
        ];
        for c in cases {
            assert!(Digest::parse(c).is_err(), "{c:?} should be rejected");
        }
    }

    // Regression: a second read after a mismatch used to return Ok(0), a clean EOF.
    #[test]
    fn verifying_reader_keeps_failing_after_a_mismatch() {
        let d = Digest::sha256(b"hello");
        let mut r = VerifyingReader::new(&b"hellO"[..], d, 5, "x");
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).unwrap(), 5);
        assert!(r.read(&mut buf).is_err());
        assert!(r.read(&mut buf).is_err());
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        let (buf, d, n) = w.finish();
        assert_eq!(buf, b"hello");
        assert_eq!(n, 5);
        assert_eq!(d.to_string(), HELLO);
    }

    fn read_all(r: impl Read) -> io::Result<Vec<u8>> {
        let mut r = r;
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn verifying_reader_accepts_exact_content() {
        let d = Digest::sha256(b"hello");
        let v = read_all(VerifyingReader::new(&b"hello"[..], d, 5, "x")).unwrap();
        assert_eq!(v, b"hello");
    }

    #[test]
    fn verifying_reader_rejects_wrong_bytes_longer_and_shorter_streams() {
        let d = Digest::sha256(b"hello");
        assert!(read_all(VerifyingReader::new(&b"hellO"[..], d.clone(), 5, "x")).is_err());
        assert!(read_all(VerifyingReader::new(&b"hello!"[..], d.clone(), 5, "x")).is_err());
        assert!(read_all(VerifyingReader::new(&b"hell"[..], d, 5, "x")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = Digest::parse(&s);
        }
    }
}
