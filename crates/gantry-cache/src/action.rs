//! The action cache: the results of build actions, keyed by everything they depend on.
//!
//! A [`CacheKey`] is the sha256 of typed fields written by a [`KeyHasher`]: every field is a
//! one-byte tag followed by its value, variable-length values prefixed with their length, after
//! a domain header holding [`CACHE_FORMAT_VERSION`] and the action's kind. Two different field
//! sequences therefore never produce the same byte stream (`str("ab")` then `str("c")` differs
//! from `str("a")` then `str("bc")`, and a `u64` from eight `bytes`). A list is written as its
//! length (`u64`) followed by its items.
//!
//! # Files
//!
//! One file per key in `$GANTRY_HOME/cache-v1/`: `<hex[..2]>/<hex>.json`, holding canonical
//! JSON `{"key":"sha256:…","outputs":[descriptors],"value":…}`, written to a `.tmp-*` file in
//! the same directory, fsynced and renamed into place (replacing any older entry). An entry
//! file's mtime is its last use ([`ActionCache::touch`]), which [`ActionCache::prune`] reads.
//!
//! Reading is size-capped ([`MAX_ENTRY_SIZE`]) and strict. An entry that cannot be read, is not
//! JSON, names another key or does not parse as the requested type is a miss and is removed.
//! The cache does not check that the output blobs still exist: callers must, before trusting a
//! hit. Deleting `cache-v1/` at any time only costs rebuilding.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use gantry_oci::{Algorithm, Descriptor, Digest, Hasher, json};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fsutil::{TEMP_PREFIX, ensure_dir, read_capped, remove_file, replace_file};
use crate::{Error, Result};

/// The action cache's bucket under the store root.
pub const CACHE_BUCKET: &str = "cache-v1";
/// Part of every key: bump it when the meaning of any cached value changes, and every key
/// changes with it.
pub const CACHE_FORMAT_VERSION: u32 = 1;
/// Cap on an entry file.
pub const MAX_ENTRY_SIZE: u64 = 1 << 20;
/// Temp files older than this are leftovers of crashed writers, removed by
/// [`ActionCache::prune`].
const TEMP_GRACE: Duration = Duration::from_secs(3600);

/// The start of every key's hashed stream, before the version and the kind.
const DOMAIN: &[u8] = b"gantry action cache key\0";

const TAG_KIND: u8 = b'K';
const TAG_STR: u8 = b's';
const TAG_BYTES: u8 = b'b';
const TAG_U64: u8 = b'u';
const TAG_I64: u8 = b'i';
const TAG_BOOL: u8 = b'?';
const TAG_DIGEST: u8 = b'd';
const TAG_KEY: u8 = b'k';
const TAG_NONE: u8 = b'N';
const TAG_SOME_STR: u8 = b'S';

/// The key of an action-cache entry: a sha256 digest built by a [`KeyHasher`]. Displays as
/// `sha256:<hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Digest);

impl CacheKey {
    /// The underlying digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }

    /// The lowercase hex of the digest; safe as a file name.
    pub fn hex(&self) -> &str {
        self.0.hex()
    }

    /// Parses `sha256:<hex>`.
    pub fn parse(input: &str) -> std::result::Result<CacheKey, gantry_oci::Error> {
        let digest = Digest::parse(input)?;
        if digest.algorithm() != Algorithm::Sha256 {
            return Err(gantry_oci::Error::InvalidDigest {
                input: input.to_owned(),
                reason: "a cache key is a sha256 digest".to_owned(),
            });
        }
        Ok(CacheKey(digest))
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

impl FromStr for CacheKey {
    type Err = gantry_oci::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        CacheKey::parse(s)
    }
}

impl Serialize for CacheKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for CacheKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let digest = Digest::deserialize(d)?;
        if digest.algorithm() != Algorithm::Sha256 {
            return Err(serde::de::Error::custom("a cache key is a sha256 digest"));
        }
        Ok(CacheKey(digest))
    }
}

/// Builds a [`CacheKey`] from typed fields (see the module documentation). Methods return
/// `&mut Self` so calls can be chained.
#[derive(Clone)]
pub struct KeyHasher {
    hasher: Hasher,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher").finish_non_exhaustive()
    }
}

impl KeyHasher {
    /// Starts a key for an action of `kind` (such as `"layer"`); keys of different kinds or
    /// format versions never collide.
    pub fn new(kind: &str) -> KeyHasher {
        let mut hasher = Hasher::sha256();
        hasher.update(DOMAIN);
        hasher.update(&CACHE_FORMAT_VERSION.to_le_bytes());
        let mut key = KeyHasher { hasher };
        key.tagged(TAG_KIND, kind.as_bytes());
        key
    }

    /// Adds a string.
    pub fn str(&mut self, value: &str) -> &mut Self {
        self.tagged(TAG_STR, value.as_bytes())
    }

    /// Adds a byte string (such as a path's bytes).
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.tagged(TAG_BYTES, value)
    }

    /// Adds an unsigned integer.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.fixed(TAG_U64, &value.to_le_bytes())
    }

    /// Adds a signed integer.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.fixed(TAG_I64, &value.to_le_bytes())
    }

    /// Adds a boolean.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.fixed(TAG_BOOL, &[u8::from(value)])
    }

    /// Adds a digest (algorithm and value).
    pub fn digest(&mut self, value: &Digest) -> &mut Self {
        self.tagged(TAG_DIGEST, value.to_string().as_bytes())
    }

    /// Adds another cache key (for actions that depend on other actions).
    pub fn key(&mut self, value: &CacheKey) -> &mut Self {
        self.tagged(TAG_KEY, value.to_string().as_bytes())
    }

    /// Adds an optional string; `None`, `Some("")` and [`Self::str`] all differ.
    pub fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            None => self.fixed(TAG_NONE, &[]),
            Some(s) => self.tagged(TAG_SOME_STR, s.as_bytes()),
        }
    }

    /// The key of everything added.
    pub fn finish(self) -> CacheKey {
        CacheKey(self.hasher.finish())
    }

    fn fixed(&mut self, tag: u8, value: &[u8]) -> &mut Self {
        self.hasher.update(&[tag]);
        self.hasher.update(value);
        self
    }

    fn tagged(&mut self, tag: u8, value: &[u8]) -> &mut Self {
        self.hasher.update(&[tag]);
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self
    }
}

/// A cache hit: the stored value and the blobs the action produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The action's result.
    pub value: T,
    /// Descriptors of the blobs the action produced (in the blob store).
    pub outputs: Vec<Descriptor>,
}

/// An entry file as written.
#[derive(Serialize)]
struct EntryFileOut<'a> {
    key: &'a CacheKey,
    outputs: &'a [Descriptor],
    value: &'a serde_json::Value,
}

/// An entry file as read.
#[derive(Deserialize)]
struct EntryFileIn<T> {
    key: CacheKey,
    outputs: Vec<Descriptor>,
    value: T,
}

/// The action cache in a store. See the module documentation.
#[derive(Debug, Clone)]
pub struct ActionCache {
    dir: PathBuf,
}

impl ActionCache {
    /// Opens the action cache of the store at `store_root`, creating its bucket if needed.
    pub fn open(store_root: &Path) -> Result<ActionCache> {
        let dir = store_root.join(CACHE_BUCKET);
        ensure_dir(&dir)?;
        Ok(ActionCache { dir })
    }

    /// The bucket directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`'s entry.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The entry of `key`, if there is a usable one. An unusable entry file is removed and
    /// counts as a miss.
    pub fn get<T: DeserializeOwned>(&self, key: &CacheKey) -> Result<Option<Entry<T>>> {
        let path = self.entry_path(key);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                self.discard(&path, &format!("cannot open it: {e}"));
                return Ok(None);
            }
        };
        match read_entry::<T>(file, &path, Some(key)) {
            Ok((_, entry)) => Ok(Some(entry)),
            Err(reason) => {
                self.discard(&path, &reason);
                Ok(None)
            }
        }
    }

    /// Stores `value` and `outputs` under `key`, replacing any entry it had. The value must
    /// serialise to JSON (maps with string keys, finite numbers), the outputs must be valid
    /// descriptors and the entry must stay under [`MAX_ENTRY_SIZE`].
    pub fn put<T: Serialize>(
        &self,
        key: &CacheKey,
        value: &T,
        outputs: &[Descriptor],
    ) -> Result<()> {
        for (index, output) in outputs.iter().enumerate() {
            output
                .validate(&format!("output {index}"))
                .map_err(|e| Error::InvalidOutput {
                    key: key.clone(),
                    index,
                    reason: e.to_string(),
                })?;
        }
        let value = serde_json::to_value(value).map_err(|source| Error::Serialize {
            key: key.clone(),
            source,
        })?;
        let bytes = json::to_canonical_vec(&EntryFileOut {
            key,
            outputs,
            value: &value,
        });
        if bytes.len() as u64 > MAX_ENTRY_SIZE {
            return Err(Error::EntryTooLarge {
                key: key.clone(),
                size: bytes.len(),
                limit: MAX_ENTRY_SIZE,
            });
        }
        let path = self.entry_path(key);
        let shard = path.parent().expect("entry paths have a shard directory");
        replace_file(shard, &path, &bytes)?;
        tracing::debug!(%key, outputs = outputs.len(), "stored cache entry");
        Ok(())
    }

    /// Marks `key`'s entry as used now (its mtime), for [`Self::prune`]. A missing entry is
    /// not an error.
    pub fn touch(&self, key: &CacheKey) -> Result<()> {
        let path = self.entry_path(key);
        let result = File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("touch", path, e)),
            _ => Ok(()),
        }
    }

    /// Removes `key`'s entry. Returns whether it existed.
    pub fn remove(&self, key: &CacheKey) -> Result<bool> {
        remove_file(&self.entry_path(key))
    }

    /// Every usable entry: its key, outputs and last use, sorted by key. Unusable entry files
    /// are removed; files that are not entries are ignored.
    pub fn entries(&self) -> Result<Vec<(CacheKey, Vec<Descriptor>, SystemTime)>> {
        let mut found = Vec::new();
        for path in self.entry_files()? {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.discard(&path, &format!("cannot open it: {e}"));
                    continue;
                }
            };
            let Ok(meta) = file.metadata() else { continue };
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            match read_entry::<serde::de::IgnoredAny>(file, &path, None) {
                Ok((key, entry)) => found.push((key, entry.outputs, used)),
                Err(reason) => self.discard(&path, &reason),
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// Removes the entries not used for `unused_for` (by mtime) and temp files left by crashed
    /// writers. Returns how many entries were removed.
    pub fn prune(&self, unused_for: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let old = |path: &Path, age: Duration| {
            fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|a| a > age))
        };
        for shard in self.shards()? {
            for path in list_dir(&shard)? {
                if file_name(&path).starts_with(TEMP_PREFIX) && old(&path, TEMP_GRACE) {
                    remove_file(&path)?;
                }
            }
        }
        let mut removed = 0;
        for path in self.entry_files()? {
            if old(&path, unused_for) && remove_file(&path)? {
                removed += 1;
            }
        }
        tracing::debug!(removed, "pruned the action cache");
        Ok(removed)
    }

    /// The shard directories (`<2 hex digits>`).
    fn shards(&self) -> Result<Vec<PathBuf>> {
        Ok(list_dir(&self.dir)?
            .into_iter()
            .filter(|p| {
                let name = file_name(p);
                name.len() == 2 && name.bytes().all(is_lower_hex) && p.is_dir()
            })
            .collect())
    }

    /// The files named like entries of their shard (`<hex>.json`, hex starting with the
    /// shard's name).
    fn entry_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for shard in self.shards()? {
            let prefix = file_name(&shard).to_owned();
            for path in list_dir(&shard)? {
                let name = file_name(&path);
                let is_entry = name.strip_suffix(".json").is_some_and(|hex| {
                    hex.len() == 64 && hex.bytes().all(is_lower_hex) && hex.starts_with(&prefix)
                });
                if is_entry {
                    files.push(path);
                }
            }
        }
        Ok(files)
    }

    /// Removes an unusable entry file (best effort) and logs why.
    fn discard(&self, path: &Path, reason: &str) {
        tracing::debug!(file = %path.display(), reason, "removing an unusable cache entry");
        if let Err(e) = remove_file(path) {
            tracing::debug!(error = %e, "cannot remove the unusable cache entry");
        }
    }
}

/// Reads and checks an entry file. With `expected`, its key must be that one; without, it
/// must match the file's name.
fn read_entry<T: DeserializeOwned>(
    file: File,
    path: &Path,
    expected: Option<&CacheKey>,
) -> std::result::Result<(CacheKey, Entry<T>), String> {
    let bytes = read_capped(file, MAX_ENTRY_SIZE).map_err(|e| format!("cannot read it: {e}"))?;
    let what = path.display().to_string();
    let parsed: EntryFileIn<T> =
        json::parse_strict(&bytes, &what, MAX_ENTRY_SIZE).map_err(|e| e.to_string())?;
    let name_ok = file_name(path) == format!("{}.json", parsed.key.hex());
    if expected.is_some_and(|k| *k != parsed.key) || !name_ok {
        return Err(format!("it holds the entry of another key, {}", parsed.key));
    }
    for (i, output) in parsed.outputs.iter().enumerate() {
        output
            .validate(&format!("output {i}"))
            .map_err(|e| e.to_string())?;
    }
    Ok((
        parsed.key,
        Entry {
            value: parsed.value,
            outputs: parsed.outputs,
        },
    ))
}

fn is_lower_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

/// A path's file name, or "" if it has none or it is not UTF-8.
fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The entries of a directory; a missing directory has none.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("list", dir, e)),
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use filetime::FileTime;
    use gantry_oci::media_types as mt;
    use tempfile::TempDir;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct LayerResult {
        name: String,
        diff_id: Digest,
        size: u64,
        flags: Vec<bool>,
        annotations: BTreeMap<String, String>,
    }

    fn setup() -> (TempDir, ActionCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = ActionCache::open(&dir.path().join("home")).unwrap();
        (dir, cache)
    }

    fn key(name: &str) -> CacheKey {
        let mut k = KeyHasher::new("test");
        k.str(name);
        k.finish()
    }

    fn value(name: &str) -> LayerResult {
        LayerResult {
            name: name.to_owned(),
            diff_id: Digest::sha256(name.as_bytes()),
            size: u64::MAX,
            flags: vec![true, false],
            annotations: BTreeMap::from([
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]),
        }
    }

    fn outputs(name: &str) -> Vec<Descriptor> {
        vec![
            Descriptor::of_bytes(mt::OCI_LAYER_GZIP, name.as_bytes()),
            Descriptor::of_bytes(mt::OCI_LAYER_ZSTD, b"other"),
        ]
    }

    fn finish(f: impl FnOnce(&mut KeyHasher)) -> CacheKey {
        let mut k = KeyHasher::new("kind");
        f(&mut k);
        k.finish()
    }

    #[test]
    fn put_and_get_roundtrip() {
        let (_dir, cache) = setup();
        let k = key("a");
        assert!(cache.get::<LayerResult>(&k).unwrap().is_none());
        cache.put(&k, &value("a"), &outputs("a")).unwrap();
        let entry = cache.get::<LayerResult>(&k).unwrap().unwrap();
        assert_eq!(
            entry,
            Entry {
                value: value("a"),
                outputs: outputs("a")
            }
        );

        let path = cache.entry_path(&k);
        assert_eq!(
            path,
            cache
                .dir()
                .join(&k.hex()[..2])
                .join(format!("{}.json", k.hex()))
        );
        let bytes = fs::read(&path).unwrap();
        let expected = json::to_canonical_vec(&serde_json::json!({
            "key": k,
            "outputs": outputs("a"),
            "value": value("a"),
        }));
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            String::from_utf8(expected).unwrap()
        );

        // Replacing, and a value of another type.
        cache.put(&k, &"replaced", &[]).unwrap();
        let entry = cache.get::<String>(&k).unwrap().unwrap();
        assert_eq!((entry.value.as_str(), entry.outputs.len()), ("replaced", 0));
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    }

    #[test]
    fn keys_differ_for_any_difference_in_fields() {
        let digest = Digest::sha256(b"x");
        let keys = [
            finish(|k| {
                k.str("ab").str("c");
            }),
            finish(|k| {
                k.str("a").str("bc");
            }),
            finish(|k| {
                k.str("abc");
            }),
            // Without length prefixes, the tag would make these two streams equal.
            finish(|k| {
                k.str("a").str("c");
            }),
            finish(|k| {
                k.str("asc");
            }),
            finish(|k| {
                k.bytes(b"abc");
            }),
            finish(|k| {
                k.u64(1);
            }),
            finish(|k| {
                k.bytes(&1u64.to_le_bytes());
            }),
            finish(|k| {
                k.i64(1);
            }),
            finish(|k| {
                k.bool(true);
            }),
            finish(|k| {
                k.u64(2);
            }),
            finish(|k| {
                k.str("");
            }),
            finish(|k| {
                k.opt_str(Some(""));
            }),
            finish(|k| {
                k.opt_str(None);
            }),
            finish(|k| {
                k.opt_str(Some("abc"));
            }),
            finish(|k| {
                k.digest(&digest);
            }),
            finish(|k| {
                k.str(&digest.to_string());
            }),
            finish(|k| {
                k.key(&CacheKey(digest.clone()));
            }),
            finish(|_| {}),
            KeyHasher::new("other kind").finish(),
            KeyHasher::new("").finish(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "keys {i} and {j} collide");
            }
        }
        // Deterministic.
        assert_eq!(
            finish(|k| {
                k.str("ab").str("c");
            }),
            keys[0]
        );
    }

    #[test]
    fn keys_start_with_the_domain_version_and_kind() {
        let mut stream = DOMAIN.to_vec();
        stream.extend_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
        stream.push(TAG_KIND);
        stream.extend_from_slice(&5u64.to_le_bytes());
        stream.extend_from_slice(b"layer");
        stream.push(TAG_U64);
        stream.extend_from_slice(&7u64.to_le_bytes());
        let mut k = KeyHasher::new("layer");
        k.u64(7);
        assert_eq!(*k.finish().digest(), Digest::sha256(&stream));
    }

    // Pins the encoding: if this changes, bump CACHE_FORMAT_VERSION deliberately.
    #[test]
    fn golden_key() {
        let mut k = KeyHasher::new("layer");
        k.str("a")
            .bytes(b"b")
            .u64(1)
            .i64(-1)
            .bool(true)
            .digest(&Digest::sha256(b""))
            .opt_str(None)
            .opt_str(Some("c"));
        assert_eq!(
            k.finish().to_string(),
            "sha256:5e9487149fce2fa101e394367783c810018995350117547507151188714ed063"
        );
    }

    #[test]
    fn cache_key_parses_and_serialises_as_a_digest() {
        let k = key("a");
        assert_eq!(CacheKey::parse(&k.to_string()).unwrap(), k);
        assert_eq!(k.to_string().parse::<CacheKey>().unwrap(), k);
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        let sha512 = Digest::compute(Algorithm::Sha512, b"a").to_string();
        assert!(CacheKey::parse(&sha512).is_err());
        assert!(serde_json::from_str::<CacheKey>(&format!("\"{sha512}\"")).is_err());
        assert!(CacheKey::parse("sha256:nothex").is_err());
    }

    #[test]
    fn damaged_entries_are_misses_and_removed() {
        let (_dir, cache) = setup();
        let k = key("a");
        let path = cache.entry_path(&k);
        let good = {
            cache.put(&k, &value("a"), &outputs("a")).unwrap();
            String::from_utf8(fs::read(&path).unwrap()).unwrap()
        };
        let mut bad_output = outputs("a");
        bad_output[0].size = u64::MAX;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("not JSON", b"\x00\x01garbage".to_vec()),
            ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
            ("trailing data", format!("{good} {{}}").into_bytes()),
            (
                "duplicate key",
                good.replacen('{', r#"{"key":"x","#, 1).into_bytes(),
            ),
            (
                "no outputs",
                format!(r#"{{"key":"{k}","value":1}}"#).into_bytes(),
            ),
            (
                "bad output",
                json::to_canonical_vec(&serde_json::json!({
                    "key": k, "outputs": bad_output, "value": value("a"),
                })),
            ),
            (
                "value of another type",
                good.replace("\"flags\":[true,false]", "\"flags\":7")
                    .into_bytes(),
            ),
            ("over the cap", {
                let mut big = good.clone().into_bytes();
                big.resize(MAX_ENTRY_SIZE as usize + 1, b' ');
                big
            }),
        ];
        for (what, bytes) in cases {
            assert_ne!(bytes, good.as_bytes(), "{what}: the case must differ");
            fs::write(&path, &bytes).unwrap();
            assert!(cache.get::<LayerResult>(&k).unwrap().is_none(), "{what}");
            assert!(!path.exists(), "{what}: not removed");
        }
        // A directory in the entry's place cannot be read: a miss, and a put still fails
        // cleanly rather than writing somewhere else.
        fs::create_dir(&path).unwrap();
        assert!(cache.get::<LayerResult>(&k).unwrap().is_none());
        assert!(cache.put(&k, &1, &[]).is_err());
    }

    #[test]
    fn an_entry_of_another_key_is_a_miss() {
        let (_dir, cache) = setup();
        let (a, b) = (key("a"), key("b"));
        cache.put(&a, &value("a"), &outputs("a")).unwrap();
        let misplaced = cache.entry_path(&b);
        fs::create_dir_all(misplaced.parent().unwrap()).unwrap();
        fs::copy(cache.entry_path(&a), &misplaced).unwrap();
        assert!(cache.get::<LayerResult>(&b).unwrap().is_none());
        assert!(!misplaced.exists());
        assert!(cache.get::<LayerResult>(&a).unwrap().is_some());

        // entries() drops it too.
        fs::copy(cache.entry_path(&a), &misplaced).unwrap();
        let listed: Vec<_> = cache.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(listed, vec![a]);
        assert!(!misplaced.exists());
    }

    #[test]
    fn entries_list_keys_outputs_and_last_use() {
        let (_dir, cache) = setup();
        assert!(cache.entries().unwrap().is_empty());
        let mut keys = Vec::new();
        for name in ["a", "b", "c"] {
            let k = key(name);
            cache.put(&k, &value(name), &outputs(name)).unwrap();
            keys.push((k, name));
        }
        let old = FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_mtime(cache.entry_path(&keys[1].0), old).unwrap();
        // Files that are not entries are left alone.
        let stray = cache.dir().join(&keys[0].0.hex()[..2]).join("notes.txt");
        fs::write(&stray, b"x").unwrap();
        fs::write(cache.dir().join("README"), b"x").unwrap();

        let entries = cache.entries().unwrap();
        keys.sort();
        assert_eq!(entries.len(), 3);
        for ((k, outs, used), (want, name)) in entries.iter().zip(&keys) {
            assert_eq!(k, want);
            assert_eq!(*outs, outputs(name));
            let expected_old = *name == "b";
            assert_eq!(*used == SystemTime::from(old), expected_old, "{name}");
        }
        assert!(stray.exists());
    }

    #[test]
    fn prune_removes_only_unused_entries() {
        let (_dir, cache) = setup();
        let old = FileTime::from_unix_time(1_000_000_000, 0);
        let [fresh, stale, touched] = ["fresh", "stale", "touched"].map(key);
        for k in [&fresh, &stale, &touched] {
            cache.put(k, &1, &[]).unwrap();
        }
        for k in [&stale, &touched] {
            filetime::set_file_mtime(cache.entry_path(k), old).unwrap();
        }
        cache.touch(&touched).unwrap();
        cache.touch(&key("missing")).unwrap();
        let shard = cache.entry_path(&fresh).parent().unwrap().to_owned();
        let (old_temp, new_temp) = (shard.join(".tmp-old"), shard.join(".tmp-new"));
        fs::write(&old_temp, b"x").unwrap();
        fs::write(&new_temp, b"x").unwrap();
        filetime::set_file_mtime(&old_temp, old).unwrap();

        assert_eq!(cache.prune(Duration::from_secs(86_400)).unwrap(), 1);
        let left: Vec<_> = cache.entries().unwrap().into_iter().map(|e| e.0).collect();
        let mut want = vec![fresh.clone(), touched.clone()];
        want.sort();
        assert_eq!(left, want);
        assert!(!old_temp.exists());
        assert!(new_temp.exists());
        assert_eq!(cache.prune(Duration::from_secs(86_400)).unwrap(), 0);
        assert_eq!(cache.prune(Duration::ZERO).unwrap(), 2);
        assert!(cache.entries().unwrap().is_empty());
    }

    #[test]
    fn remove_reports_whether_the_entry_existed() {
        let (_dir, cache) = setup();
        let k = key("a");
        cache.put(&k, &1, &[]).unwrap();
        assert!(cache.remove(&k).unwrap());
        assert!(!cache.remove(&k).unwrap());
        assert!(cache.get::<u32>(&k).unwrap().is_none());
    }

    #[test]
    fn unstorable_values_are_errors() {
        let (_dir, cache) = setup();
        let k = key("a");
        let map = BTreeMap::from([(vec![1u8], 1)]);
        let err = cache.put(&k, &map, &[]).unwrap_err();
        assert!(matches!(err, Error::Serialize { .. }), "{err}");
        assert!(err.to_string().contains(&k.to_string()), "{err}");
        let mut bad = Descriptor::of_bytes(mt::OCI_LAYER_GZIP, b"x");
        bad.size = u64::MAX;
        let err = cache
            .put(&k, &1, &[outputs("a")[0].clone(), bad])
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidOutput { index: 1, .. }),
            "{err}"
        );
        let big = "x".repeat(MAX_ENTRY_SIZE as usize);
        let err = cache.put(&k, &big, &[]).unwrap_err();
        assert!(matches!(err, Error::EntryTooLarge { .. }), "{err}");
        assert!(err.to_string().contains(&k.to_string()), "{err}");
        assert!(!cache.entry_path(&k).exists());
    }

    #[test]
    fn deleting_the_bucket_is_safe() {
        let (_dir, cache) = setup();
        let k = key("a");
        cache.put(&k, &1, &[]).unwrap();
        fs::remove_dir_all(cache.dir()).unwrap();
        assert!(cache.get::<u32>(&k).unwrap().is_none());
        assert!(cache.entries().unwrap().is_empty());
        assert_eq!(cache.prune(Duration::ZERO).unwrap(), 0);
        cache.touch(&k).unwrap();
        cache.put(&k, &2, &[]).unwrap();
        assert_eq!(cache.get::<u32>(&k).unwrap().unwrap().value, 2);
    }
}
