//! Paths inside an image.

use std::fmt;

use crate::Error;

/// The longest path gantry writes (Linux `PATH_MAX`).
pub(crate) const MAX_PATH_LEN: usize = 4096;
/// The longest path component (Linux `NAME_MAX`).
pub(crate) const MAX_NAME_LEN: usize = 255;

/// A validated path inside an image, kept relative to the root without leading or trailing
/// slashes (`usr/bin/env`). The root itself is the empty path. Ordering is by bytes, which puts
/// every directory before its contents.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImagePath(Vec<u8>);

impl ImagePath {
    /// The root directory.
    pub fn root() -> Self {
        ImagePath(Vec::new())
    }

    /// Parses a path as users write it: absolute (`/app/bin/server`). Empty and `.` components
    /// are dropped; a relative path, a `..` component, a NUL byte or an over-long path is an
    /// error naming the path.
    pub fn parse(input: &str) -> Result<Self, Error> {
        Self::parse_bytes(input.as_bytes())
    }

    /// Like [`ImagePath::parse`], for non-UTF-8 input.
    pub fn parse_bytes(input: &[u8]) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidPath {
            path: String::from_utf8_lossy(input).into_owned(),
            reason: reason.to_owned(),
        };
        if !input.starts_with(b"/") {
            return Err(bad("paths in the image must be absolute (start with '/')"));
        }
        Self::root()
            .join_relative(&input[1..])
            .map_err(|e| match e {
                Error::InvalidPath { reason, .. } => bad(&reason),
                other => other,
            })
    }

    /// Appends a relative path (from a directory walk or a tar entry), validating each
    /// component.
    pub fn join_relative(&self, rel: &[u8]) -> Result<Self, Error> {
        let mut out = self.0.clone();
        for comp in rel.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => {
                    return Err(self.join_error(rel, "'..' components are not allowed"));
                }
                c if c.contains(&0) => return Err(self.join_error(rel, "NUL byte in path")),
                c if c.len() > MAX_NAME_LEN => {
                    return Err(self.join_error(rel, "a component is longer than 255 bytes"));
                }
                c => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(c);
                }
            }
        }
        if out.len() > MAX_PATH_LEN {
            return Err(self.join_error(rel, "path is longer than 4096 bytes"));
        }
        Ok(ImagePath(out))
    }

    fn join_error(&self, rel: &[u8], reason: &str) -> Error {
        let mut full = self.to_string();
        if !full.ends_with('/') {
            full.push('/');
        }
        full.push_str(&String::from_utf8_lossy(rel));
        Error::InvalidPath {
            path: full,
            reason: reason.to_owned(),
        }
    }

    /// Appends one component that is already known to be valid (a directory entry name).
    pub(crate) fn child(&self, name: &[u8]) -> Result<Self, Error> {
        self.join_relative(name)
    }

    /// The relative bytes (`usr/bin/env`); empty for the root.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<ImagePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => ImagePath(self.0[..i].to_vec()),
            None => ImagePath::root(),
        })
    }

    /// The last component; empty for the root.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// A sibling path with the last component replaced (used for whiteouts).
    pub(crate) fn with_file_name(&self, name: &[u8]) -> Result<Self, Error> {
        match self.parent() {
            Some(p) => p.child(name),
            None => Err(Error::InvalidPath {
                path: "/".to_owned(),
                reason: "the root has no name".to_owned(),
            }),
        }
    }

    /// The first component that starts with `.wh.` (a whiteout name in a layer), if any.
    pub fn whiteout_component(&self) -> Option<&[u8]> {
        self.0
            .split(|&b| b == b'/')
            .find(|c| c.starts_with(crate::recipe::WHITEOUT_PREFIX))
    }

    /// Every ancestor from the top down, excluding the root and this path.
    pub fn ancestors(&self) -> impl Iterator<Item = ImagePath> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| ImagePath(self.0[..i].to_vec()))
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImagePath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let p = ImagePath::parse("//usr/./bin//env/").unwrap();
        assert_eq!(p.as_bytes(), b"usr/bin/env");
        assert_eq!(p.to_string(), "/usr/bin/env");
        assert_eq!(p.parent().unwrap().to_string(), "/usr/bin");
        assert_eq!(p.file_name(), b"env");
        let anc: Vec<String> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["/usr", "/usr/bin"]);
        assert!(ImagePath::parse("/").unwrap().is_root());
    }

    #[test]
    fn rejects_relative_escaping_and_nul() {
        for bad in ["app/x", "", "/a/../b", "/..", "/a\0b"] {
            let err = ImagePath::parse(bad).unwrap_err();
            assert!(err.to_string().contains("path"), "{bad:?}: {err}");
        }
        let long = format!("/{}", "a".repeat(256));
        assert!(ImagePath::parse(&long).is_err());
    }

    #[test]
    fn byte_order_puts_parents_first() {
        let mut v: Vec<ImagePath> = ["/a/b", "/a-b", "/a", "/a.txt"]
            .iter()
            .map(|s| ImagePath::parse(s).unwrap())
            .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["/a", "/a-b", "/a.txt", "/a/b"]);
    }
}
