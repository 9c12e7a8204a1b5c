//! Strict JSON reading and canonical JSON writing.
//!
//! Everything gantry writes goes through [`to_canonical_vec`] (RFC 8785: sorted keys, fixed
//! number format, no whitespace), so a document's digest depends only on its content. Everything
//! gantry reads goes through [`parse_strict`]: a size cap, no byte-order mark, no duplicate keys,
//! bounded nesting, no trailing data.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::Error;

/// Cap on manifests and indexes (as containerd and containers/image use).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Cap on image configs.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;
/// Cap on nesting depth of any document we read.
pub const MAX_JSON_DEPTH: usize = 64;

/// Serialises `value` as canonical JSON (RFC 8785).
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    use canon_json::CanonJsonSerialize;
    // Serialising our own in-memory types to a Vec cannot fail: no I/O, all keys are strings.
    value
        .to_canon_json_vec()
        .expect("canonical JSON serialisation of an in-memory value")
}

/// Parses `bytes` as a `T` after the strictness checks described in the module docs.
pub fn parse_strict<T: DeserializeOwned>(bytes: &[u8], what: &str, limit: u64) -> Result<T, Error> {
    check_structure(bytes, what, limit)?;
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// Runs the size, BOM, duplicate-key, depth and trailing-data checks without building a value.
pub fn check_structure(bytes: &[u8], what: &str, limit: u64) -> Result<(), Error> {
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    if bytes.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(Error::invalid(what, "starts with a byte-order mark"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let json_err = |source| Error::Json {
        what: what.to_owned(),
        source,
    };
    Checker { depth: 0 }
        .deserialize(&mut de)
        .map_err(json_err)?;
    de.end().map_err(json_err)
}

struct Checker {
    depth: usize,
}

impl Checker {
    fn enter<E: serde::de::Error>(&self) -> Result<Checker, E> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(E::custom(format!(
                "nesting deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        Ok(Checker {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Checker {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checker {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while seq
            .next_element_seed(Checker { depth: inner.depth })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Checker { depth: inner.depth })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn canonical_output_sorts_keys_and_strips_space() {
        let mut m = BTreeMap::new();
        m.insert("b", 1);
        m.insert("a", 2);
        #[derive(Serialize)]
        struct S {
            z: u32,
            a: BTreeMap<&'static str, i32>,
        }
        let v = to_canonical_vec(&S { z: 1, a: m });
        assert_eq!(v, br#"{"a":{"a":2,"b":1},"z":1}"#);
    }

    // T16 of the research notes.
    #[test]
    fn strict_parse_rejects_hostile_documents() {
        let lim = 1 << 20;
        let v: serde_json::Value = parse_strict(br#"{"a":[1,{"b":null}]}"#, "doc", lim).unwrap();
        assert_eq!(v["a"][1]["b"], serde_json::Value::Null);
        let bad: &[&[u8]] = &[
            br#"{"a":1,"a":2}"#,
            b"\xef\xbb\xbf{}",
            br#"{"a":1} trailing"#,
            br#"{"a":NaN}"#,
            br#"{"a":1e400}"#,
        ];
        for b in bad {
            assert!(
                parse_strict::<serde_json::Value>(b, "doc", lim).is_err(),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(parse_strict::<serde_json::Value>(deep.as_bytes(), "doc", lim).is_err());
        let err = parse_strict::<serde_json::Value>(b"{}", "doc", 1).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
    }
}
