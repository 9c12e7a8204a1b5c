//! Per-entry metadata: mode, owner, mtime, xattrs and PAX records, with layer defaults and
//! per-path overrides in the shape of rules_img's `file_metadata`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// PAX keys that gantry derives from the entry itself; users set them through fields instead.
const MANAGED_PAX_KEYS: &[&str] = &[
    "path",
    "linkpath",
    "size",
    "uid",
    "gid",
    "uname",
    "gname",
    "mtime",
    "atime",
    "ctime",
    "hdrcharset",
    "charset",
    "comment",
];
/// The PAX prefix for extended attributes (as GNU tar, bsdtar and Go write them).
pub const XATTR_PREFIX: &str = "SCHILY.xattr.";

/// The metadata written into one tar header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (at most `0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name (empty unless set).
    pub uname: String,
    /// Group name (empty unless set).
    pub gname: String,
    /// Modification time in epoch seconds.
    pub mtime: i64,
    /// Extra PAX records, including `SCHILY.xattr.*`; sorted by key.
    pub pax: BTreeMap<String, Vec<u8>>,
}

/// Metadata as users write it (TOML or JSON), every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetaSpec {
    /// Octal permission string such as `"0755"`.
    pub mode: Option<String>,
    /// Owner id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
    /// Owner name.
    pub uname: Option<String>,
    /// Group name.
    pub gname: Option<String>,
    /// Epoch seconds or RFC 3339.
    pub mtime: Option<TimeSpec>,
    /// Extended attributes (`user.foo = "bar"`, or binary values as
    /// `"security.capability" = { base64 = "…" }`).
    #[serde(default)]
    pub xattrs: BTreeMap<String, XattrValue>,
    /// Raw PAX records.
    #[serde(default)]
    pub pax_records: BTreeMap<String, String>,
}

/// Layer-wide defaults as users write them: [`MetaSpec`] plus a separate directory mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DefaultsSpec {
    /// Mode of regular files (default: `0755` if the source is executable, else `0644`).
    pub mode: Option<String>,
    /// Mode of directories (default `0755`).
    pub dir_mode: Option<String>,
    /// Owner id (default 0).
    pub uid: Option<u32>,
    /// Group id (default 0).
    pub gid: Option<u32>,
    /// Owner name (default empty).
    pub uname: Option<String>,
    /// Group name (default empty).
    pub gname: Option<String>,
    /// Modification time (default `SOURCE_DATE_EPOCH`, else 0).
    pub mtime: Option<TimeSpec>,
    /// Extended attributes for every entry.
    #[serde(default)]
    pub xattrs: BTreeMap<String, XattrValue>,
    /// PAX records for every entry.
    #[serde(default)]
    pub pax_records: BTreeMap<String, String>,
}

/// The value of an extended attribute as users write it and `gantry ls --json` shows it: a
/// string (its UTF-8 bytes), or `{ base64 = "…" }` for any bytes (`security.capability`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum XattrValue {
    /// UTF-8 text.
    Text(String),
    /// Arbitrary bytes.
    Bytes(Vec<u8>),
}

impl XattrValue {
    /// A value for `bytes`: text when they are UTF-8 without control characters (NUL
    /// included), otherwise bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(s) if !s.chars().any(char::is_control) => XattrValue::Text(s),
            Ok(s) => XattrValue::Bytes(s.into_bytes()),
            Err(e) => XattrValue::Bytes(e.into_bytes()),
        }
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            XattrValue::Text(s) => s.as_bytes(),
            XattrValue::Bytes(b) => b,
        }
    }
}

impl From<&str> for XattrValue {
    fn from(s: &str) -> Self {
        XattrValue::Text(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for XattrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = XattrValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, or a table { base64 = \"…\" } for binary values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<XattrValue, E> {
                Ok(XattrValue::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<XattrValue, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "base64" {
                        return Err(de::Error::unknown_field(&key, &["base64"]));
                    }
                    if value.is_some() {
                        return Err(de::Error::duplicate_field("base64"));
                    }
                    let text: String = map.next_value()?;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))?;
                    value = Some(bytes);
                }
                value
                    .map(XattrValue::Bytes)
                    .ok_or_else(|| de::Error::missing_field("base64"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for XattrValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            XattrValue::Text(t) => s.serialize_str(t),
            XattrValue::Bytes(b) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(b),
                )?;
                m.end()
            }
        }
    }
}

/// Whether gantry refuses to write the extended attribute `name` from metadata: `trusted.*`
/// (host data that overlayfs acts on; `gantry unpack` refuses it), `user.overlay.*` (the
/// same for `userxattr` overlay mounts), and names outside the `user.`, `security.` and
/// `system.` namespaces (Linux has no others).
pub fn refused_xattr(name: &str) -> Option<&'static str> {
    if name.starts_with("trusted.") {
        Some("trusted.* attributes are host data (overlayfs acts on them); layers never carry them")
    } else if name.starts_with("user.overlay.") {
        Some("user.overlay.* attributes are acted on by overlayfs; layers never carry them")
    } else if !["user.", "security.", "system."]
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns))
    {
        Some("the name must be in the user., security. or system. namespace")
    } else {
        None
    }
}

/// A time written as epoch seconds or as an RFC 3339 string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TimeSpec {
    /// Epoch seconds.
    Epoch(i64),
    /// RFC 3339 (or epoch seconds as a string).
    Text(String),
}

/// A validated override: only the fields that were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaOverride {
    /// Mode.
    pub mode: Option<u32>,
    /// Owner id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
    /// Owner name.
    pub uname: Option<String>,
    /// Group name.
    pub gname: Option<String>,
    /// Modification time.
    pub mtime: Option<i64>,
    /// PAX records (xattrs already prefixed).
    pub pax: BTreeMap<String, Vec<u8>>,
}

impl MetaOverride {
    /// Applies the given fields on top of `meta`.
    pub fn apply(&self, meta: &mut Meta) {
        if let Some(m) = self.mode {
            meta.mode = m;
        }
        if let Some(u) = self.uid {
            meta.uid = u;
        }
        if let Some(g) = self.gid {
            meta.gid = g;
        }
        if let Some(u) = &self.uname {
            meta.uname.clone_from(u);
        }
        if let Some(g) = &self.gname {
            meta.gname.clone_from(g);
        }
        if let Some(t) = self.mtime {
            meta.mtime = t;
        }
        for (k, v) in &self.pax {
            meta.pax.insert(k.clone(), v.clone());
        }
    }

    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == MetaOverride::default()
    }
}

/// Validated layer defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Mode for regular files, or `None` for "0755 if executable, else 0644".
    pub file_mode: Option<u32>,
    /// Mode for directories.
    pub dir_mode: u32,
    /// Owner, group, names, time and PAX records for every entry.
    pub common: MetaOverride,
    /// The mtime used when nothing else sets one.
    pub mtime: i64,
}

impl Defaults {
    /// Defaults with everything unset and `mtime` as the fallback time.
    pub fn new(mtime: i64) -> Self {
        Defaults {
            file_mode: None,
            dir_mode: 0o755,
            common: MetaOverride::default(),
            mtime,
        }
    }

    /// Validates user defaults; `fallback_mtime` is `SOURCE_DATE_EPOCH` or 0.
    pub fn from_spec(spec: &DefaultsSpec, fallback_mtime: i64) -> Result<Self, Error> {
        let ctx = "layer defaults";
        let common = MetaSpec {
            mode: None,
            uid: spec.uid,
            gid: spec.gid,
            uname: spec.uname.clone(),
            gname: spec.gname.clone(),
            mtime: spec.mtime.clone(),
            xattrs: spec.xattrs.clone(),
            pax_records: spec.pax_records.clone(),
        }
        .validate(ctx)?;
        Ok(Defaults {
            file_mode: spec
                .mode
                .as_deref()
                .map(|m| parse_mode(m, ctx))
                .transpose()?,
            dir_mode: spec
                .dir_mode
                .as_deref()
                .map(|m| parse_mode(m, ctx))
                .transpose()?
                .unwrap_or(0o755),
            mtime: common.mtime.unwrap_or(fallback_mtime),
            common,
        })
    }

    /// The base metadata of an entry before per-path overrides: root-owned, default time.
    pub fn base(&self, mode: u32) -> Meta {
        let mut m = Meta {
            mode,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: self.mtime,
            pax: BTreeMap::new(),
        };
        self.common.apply(&mut m);
        m
    }
}

impl MetaSpec {
    /// Validates every field; `ctx` names the entry in errors (`/app/server`).
    pub fn validate(&self, ctx: &str) -> Result<MetaOverride, Error> {
        let mut pax = BTreeMap::new();
        for (name, value) in &self.xattrs {
            check_pax_text(ctx, "xattrs", name)?;
            if let Some(reason) = refused_xattr(name) {
                return Err(Error::InvalidMetadata {
                    path: ctx.to_owned(),
                    field: "xattrs",
                    value: name.clone(),
                    reason: reason.to_owned(),
                });
            }
            pax.insert(format!("{XATTR_PREFIX}{name}"), value.as_bytes().to_vec());
        }
        for (key, value) in &self.pax_records {
            check_pax_text(ctx, "pax-records", key)?;
            if MANAGED_PAX_KEYS.contains(&key.as_str()) || key.starts_with("GNU.sparse") {
                return Err(Error::InvalidMetadata {
                    path: ctx.to_owned(),
                    field: "pax-records",
                    value: key.clone(),
                    reason: "this PAX record is derived from the entry; set the field instead"
                        .to_owned(),
                });
            }
            if key.starts_with(XATTR_PREFIX) {
                return Err(Error::InvalidMetadata {
                    path: ctx.to_owned(),
                    field: "pax-records",
                    value: key.clone(),
                    reason: "set extended attributes with `xattrs` instead".to_owned(),
                });
            }
            pax.insert(key.clone(), value.as_bytes().to_vec());
        }
        for (field, name) in [("uname", &self.uname), ("gname", &self.gname)] {
            if let Some(n) = name
                && (n.contains('\0') || n.len() > 255)
            {
                return Err(Error::InvalidMetadata {
                    path: ctx.to_owned(),
                    field,
                    value: n.clone(),
                    reason: "names must be at most 255 bytes without NUL".to_owned(),
                });
            }
        }
        Ok(MetaOverride {
            mode: self
                .mode
                .as_deref()
                .map(|m| parse_mode(m, ctx))
                .transpose()?,
            uid: self.uid,
            gid: self.gid,
            uname: self.uname.clone(),
            gname: self.gname.clone(),
            mtime: self.mtime.as_ref().map(|t| t.resolve(ctx)).transpose()?,
            pax,
        })
    }
}

impl TimeSpec {
    /// Epoch seconds; `ctx` names the entry in errors.
    pub fn resolve(&self, ctx: &str) -> Result<i64, Error> {
        match self {
            TimeSpec::Epoch(s) => Ok(*s),
            TimeSpec::Text(t) => {
                gantry_oci::time::parse_epoch_or_rfc3339(t).map_err(|e| Error::InvalidMetadata {
                    path: ctx.to_owned(),
                    field: "mtime",
                    value: t.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Parses an octal mode string (`"0755"`, `"755"`, `"04755"`).
pub fn parse_mode(s: &str, ctx: &str) -> Result<u32, Error> {
    let bad = |reason: &str| Error::InvalidMetadata {
        path: ctx.to_owned(),
        field: "mode",
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad("expected an octal mode such as \"0755\""));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad("not an octal number"))?;
    if mode > 0o7777 {
        return Err(bad("mode must be at most 07777"));
    }
    Ok(mode)
}

fn check_pax_text(ctx: &str, field: &'static str, key: &str) -> Result<(), Error> {
    if key.is_empty() || key.contains(['=', '\0', '\n']) {
        return Err(Error::InvalidMetadata {
            path: ctx.to_owned(),
            field,
            value: key.to_owned(),
            reason: "keys must be non-empty and contain no '=', NUL or newline".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0755", "x").unwrap(), 0o755);
        assert_eq!(parse_mode("4755", "x").unwrap(), 0o4755);
        assert_eq!(parse_mode("0o644", "x").unwrap(), 0o644);
        for bad in ["", "0999", "abc", "-1", "77777", "1777777"] {
            assert!(parse_mode(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_validation_names_the_entry() {
        let spec: MetaSpec = toml::from_str(r#"mode = "0999""#).unwrap();
        let e = spec.validate("/app/x").unwrap_err().to_string();
        assert!(e.contains("/app/x") && e.contains("mode"), "{e}");
        assert!(toml::from_str::<MetaSpec>("uid = -1").is_err());
        assert!(toml::from_str::<MetaSpec>("uid = 4294967296").is_err());
        assert!(toml::from_str::<MetaSpec>("colour = 1").is_err());
        let spec: MetaSpec = toml::from_str(r#"mtime = "not a time""#).unwrap();
        assert!(spec.validate("/a").is_err());
        let spec: MetaSpec = toml::from_str(r#"pax-records = { path = "x" }"#).unwrap();
        assert!(spec.validate("/a").is_err());
    }

    #[test]
    fn xattr_values_are_text_or_base64() {
        let spec: MetaSpec = toml::from_str(
            r#"xattrs = { "user.t" = "text", "security.capability" = { base64 = "AQAAAgAgAAA=" } }"#,
        )
        .unwrap();
        let o = spec.validate("/x").unwrap();
        assert_eq!(o.pax["SCHILY.xattr.user.t"], b"text");
        assert_eq!(
            o.pax["SCHILY.xattr.security.capability"],
            [1, 0, 0, 2, 0, 0x20, 0, 0]
        );
        for bad in [
            r#"xattrs = { "user.a" = { base64 = "!!" } }"#,
            r#"xattrs = { "user.a" = { hex = "00" } }"#,
            r#"xattrs = { "user.a" = {} }"#,
            r#"xattrs = { "user.a" = 1 }"#,
        ] {
            assert!(toml::from_str::<MetaSpec>(bad).is_err(), "{bad}");
        }
        let e = toml::from_str::<MetaSpec>(r#"xattrs = { "user.a" = { base64 = "!!" } }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("base64"), "{e}");
        for name in [
            "trusted.overlay.opaque",
            "user.overlay.redirect",
            "foo",
            "user.",
        ] {
            let spec: MetaSpec =
                toml::from_str(&format!(r#"xattrs = {{ "{name}" = "y" }}"#)).unwrap();
            let e = spec.validate("/x").unwrap_err().to_string();
            assert!(e.contains("/x") && e.contains(name), "{e}");
        }
        // Shown back: text when printable, base64 otherwise (JSON).
        let show = |b: &[u8]| serde_json::to_string(&XattrValue::from_bytes(b.to_vec())).unwrap();
        assert_eq!(show(b"ci"), r#""ci""#);
        assert_eq!(show(b"\x01\x00"), r#"{"base64":"AQA="}"#);
        assert_eq!(show(b"\xff"), r#"{"base64":"/w=="}"#);
    }

    #[test]
    fn overrides_apply_on_defaults() {
        let d: DefaultsSpec = toml::from_str(
            r#"uid = 1000
gid = 1000
mtime = "2024-01-01T00:00:00Z"
xattrs = { "user.a" = "1" }"#,
        )
        .unwrap();
        let d = Defaults::from_spec(&d, 0).unwrap();
        let mut m = d.base(0o644);
        assert_eq!((m.uid, m.gid, m.mtime), (1000, 1000, 1_704_067_200));
        let o: MetaSpec = toml::from_str(
            r#"mode = "0600"
uid = 0"#,
        )
        .unwrap();
        o.validate("/x").unwrap().apply(&mut m);
        assert_eq!((m.mode, m.uid, m.gid), (0o600, 0, 1000));
        assert_eq!(m.pax.get("SCHILY.xattr.user.a").unwrap(), b"1");
    }
}
