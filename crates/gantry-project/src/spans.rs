//! Where each key of a TOML document is, so errors found after parsing (an unknown target, a
//! cycle, a bad label) can still name a line and column.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_owned())
    }
}

impl From<&String> for Seg {
    fn from(s: &String) -> Self {
        Seg::Key(s.clone())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A key path such as `image.server.labels."org.example"` or `image.server.layers[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// Builds a path from segments.
    pub fn new(segs: impl IntoIterator<Item = Seg>) -> Self {
        KeyPath(segs.into_iter().collect())
    }

    /// This path extended by one segment.
    pub fn join(&self, seg: impl Into<Seg>) -> Self {
        let mut v = self.0.clone();
        v.push(seg.into());
        KeyPath(v)
    }

    fn parent(&self) -> Option<KeyPath> {
        (!self.0.is_empty()).then(|| KeyPath(self.0[..self.0.len() - 1].to_vec()))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A line and column (both from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

/// The positions of every key and array element of a document.
#[derive(Debug, Default)]
pub struct SpanIndex {
    keys: HashMap<KeyPath, Range<usize>>,
    line_starts: Vec<usize>,
    text: String,
}

impl SpanIndex {
    /// Indexes `text`, which must be valid TOML (it was parsed already); on a parse error the
    /// index is empty and lookups fall back to line 1.
    pub fn new(text: &str) -> Self {
        let mut index = SpanIndex {
            keys: HashMap::new(),
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            text: text.to_owned(),
        };
        if let Ok(root) = DeTable::parse(text) {
            index.walk_table(&KeyPath::default(), root.get_ref());
        }
        index
    }

    fn walk_table(&mut self, at: &KeyPath, table: &DeTable<'_>) {
        for (k, v) in table.iter() {
            let path = at.join(Seg::Key(k.get_ref().to_string()));
            self.keys.insert(path.clone(), k.span());
            self.walk_value(&path, v.get_ref());
        }
    }

    fn walk_value(&mut self, at: &KeyPath, v: &DeValue<'_>) {
        match v {
            DeValue::Table(t) => self.walk_table(at, t),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let path = at.join(i);
                    self.keys.insert(path.clone(), item.span());
                    self.walk_value(&path, item.get_ref());
                }
            }
            _ => {}
        }
    }

    /// The position of `path`, or of its nearest ancestor that is in the document.
    pub fn locate(&self, path: &KeyPath) -> LineCol {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(span) = self.keys.get(&cur) {
                return self.line_col(span.start);
            }
            p = cur.parent();
        }
        LineCol { line: 1, column: 1 }
    }

    /// The line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> LineCol {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let column = self.text[start..offset.min(self.text.len())]
            .chars()
            .count()
            + 1;
        LineCol {
            line: line + 1,
            column,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_array_items_and_falls_back_to_parents() {
        let text = "[settings]\ncompression = \"gzip\"\n\n[image.app]\nlayers = [\"a\",\n  \"b\"]\nlabels = { \"x y\" = \"1\" }\n";
        let idx = SpanIndex::new(text);
        let p = |segs: Vec<Seg>| KeyPath::new(segs);
        assert_eq!(
            idx.locate(&p(vec!["settings".into(), "compression".into()]))
                .line,
            2
        );
        let b = p(vec![
            "image".into(),
            "app".into(),
            "layers".into(),
            1.into(),
        ]);
        assert_eq!(idx.locate(&b), LineCol { line: 6, column: 3 });
        assert_eq!(b.to_string(), "image.app.layers[1]");
        let l = p(vec![
            "image".into(),
            "app".into(),
            "labels".into(),
            "x y".into(),
        ]);
        assert_eq!(idx.locate(&l).line, 7);
        assert_eq!(l.to_string(), "image.app.labels.\"x y\"");
        // Unknown keys fall back to the nearest known ancestor.
        let missing = p(vec!["image".into(), "app".into(), "nope".into()]);
        assert_eq!(idx.locate(&missing).line, 4);
    }
}
