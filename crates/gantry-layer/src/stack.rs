//! Checks over the layers of one image, from their listings.
//!
//! [`whiteouts_under_symlinks`] finds the merged-`/usr` pitfall: a lower layer makes `/bin` a
//! symlink to `usr/bin`, and a later layer (typically an imported tar made on a system
//! without merged `/usr`) holds `bin/.wh.foo`. Runtimes disagree on such a whiteout: applied
//! through the symlink it deletes `/usr/bin/foo`, applied in-root without following symlinks
//! it deletes nothing, and some refuse it. The layer meant `/usr/bin/.wh.foo`.

use std::collections::BTreeMap;
use std::fmt;

use crate::recipe::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// The kind of one listed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameKind {
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// Anything else (files, whiteouts, links, devices).
    Other,
}

/// One entry of a layer: its normalised path (relative, no leading `/`) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedName {
    /// The path.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: NameKind,
}

/// A whiteout under a path that the image makes a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhiteoutUnderSymlink {
    /// The layer (index, base first) holding the whiteout.
    pub layer: usize,
    /// The whiteout entry (`bin/.wh.foo`).
    pub whiteout: Vec<u8>,
    /// The symlink above it (`bin`).
    pub symlink: Vec<u8>,
    /// Its target (`usr/bin`).
    pub target: Vec<u8>,
    /// The layer that made the symlink.
    pub symlink_layer: usize,
    /// Whether the whiteout's own layer also has a directory entry there, which replaces
    /// the symlink (and so hides everything the symlink led to from that path).
    pub replaced: bool,
}

impl WhiteoutUnderSymlink {
    /// Where the whiteout probably meant to be: its path with the symlink resolved lexically
    /// (`usr/bin/.wh.foo`).
    pub fn meant(&self) -> Vec<u8> {
        let parent = match self.symlink.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.symlink[..i],
            None => &b""[..],
        };
        let mut parts: Vec<&[u8]> = Vec::new();
        if !self.target.starts_with(b"/") {
            parts.extend(parent.split(|&b| b == b'/').filter(|c| !c.is_empty()));
        }
        for c in self.target.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        let rest = &self.whiteout[self.symlink.len()..];
        let mut out = parts.join(&b'/');
        out.extend_from_slice(rest);
        out
    }
}

impl fmt::Display for WhiteoutUnderSymlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        write!(
            f,
            "layer {} has the whiteout /{} under /{}, which layer {} makes a symlink to {}: \
             runtimes apply it through the symlink or not at all; it probably means /{}",
            self.layer,
            s(&self.whiteout),
            s(&self.symlink),
            self.symlink_layer,
            s(&self.target),
            s(&self.meant())
        )?;
        if self.replaced {
            write!(
                f,
                " (and its directory entry /{} replaces the symlink)",
                s(&self.symlink)
            )?;
        }
        Ok(())
    }
}

fn split_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

/// Removes `path` (unless `keep_self`) and everything under it from `map`.
fn remove_tree<V>(map: &mut BTreeMap<Vec<u8>, V>, path: &[u8], keep_self: bool) {
    if !keep_self {
        map.remove(path);
    }
    let mut prefix = path.to_vec();
    if !prefix.is_empty() {
        prefix.push(b'/');
    }
    let doomed: Vec<Vec<u8>> = map
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// Finds whiteouts (and opaque markers) of the layers from `first_checked` on that lie under
/// a path which the layers below them (or their own layer) make a symlink. `layers` is the
/// image's layers, base first; `None` for a layer whose listing is unknown (one that lives
/// only in a registry), which is then left out of the merged view.
pub fn whiteouts_under_symlinks(
    layers: &[Option<Vec<ListedName>>],
    first_checked: usize,
) -> Vec<WhiteoutUnderSymlink> {
    // Symlinks of the merged view: path → (target, layer).
    let mut links: BTreeMap<Vec<u8>, (Vec<u8>, usize)> = BTreeMap::new();
    let mut found = Vec::new();
    for (i, listing) in layers.iter().enumerate() {
        let Some(entries) = listing else { continue };
        let is_whiteout = |e: &ListedName| split_name(&e.path).1.starts_with(WHITEOUT_PREFIX);
        if i >= first_checked {
            // The layer's own symlinks (with their targets) and directories.
            let own: BTreeMap<&[u8], Option<&[u8]>> = entries
                .iter()
                .filter_map(|e| match &e.kind {
                    NameKind::Symlink(t) => Some((e.path.as_slice(), Some(t.as_slice()))),
                    NameKind::Dir => Some((e.path.as_slice(), None)),
                    NameKind::Other => None,
                })
                .collect();
            for e in entries.iter().filter(|e| is_whiteout(e)) {
                let (dir, _) = split_name(&e.path);
                // The shallowest symlink among the directory and its ancestors.
                let hit = dir
                    .iter()
                    .enumerate()
                    .filter(|&(_, &b)| b == b'/')
                    .map(|(j, _)| &dir[..j])
                    .chain((!dir.is_empty()).then_some(dir))
                    .find_map(|p| match (own.get(p), links.get(p)) {
                        (Some(Some(t)), _) => Some((p, t.to_vec(), i, false)),
                        // A lower symlink, maybe replaced by a directory of this layer: the
                        // layer was made for a tree where this is a directory.
                        (own, Some((t, l))) => Some((p, t.clone(), *l, own.is_some())),
                        _ => None,
                    });
                if let Some((p, target, symlink_layer, replaced)) = hit {
                    found.push(WhiteoutUnderSymlink {
                        layer: i,
                        whiteout: e.path.clone(),
                        symlink: p.to_vec(),
                        target,
                        symlink_layer,
                        replaced,
                    });
                }
            }
        }
        // Whiteouts hide what lower layers made, then the layer's entries apply.
        for e in entries.iter().filter(|e| is_whiteout(e)) {
            let (dir, name) = split_name(&e.path);
            if name == OPAQUE_WHITEOUT {
                remove_tree(&mut links, dir, true);
            } else {
                let mut hidden = dir.to_vec();
                if !hidden.is_empty() {
                    hidden.push(b'/');
                }
                hidden.extend_from_slice(&name[WHITEOUT_PREFIX.len()..]);
                remove_tree(&mut links, &hidden, false);
            }
        }
        for e in entries.iter().filter(|e| !is_whiteout(e)) {
            match &e.kind {
                NameKind::Symlink(t) => {
                    remove_tree(&mut links, &e.path, true);
                    links.insert(e.path.clone(), (t.clone(), i));
                }
                NameKind::Dir => {
                    links.remove(&e.path);
                }
                NameKind::Other => remove_tree(&mut links, &e.path, false),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str, kind: NameKind) -> ListedName {
        ListedName {
            path: path.as_bytes().to_vec(),
            kind,
        }
    }
    fn link(path: &str, target: &str) -> ListedName {
        n(path, NameKind::Symlink(target.as_bytes().to_vec()))
    }
    fn file(path: &str) -> ListedName {
        n(path, NameKind::Other)
    }
    fn dir(path: &str) -> ListedName {
        n(path, NameKind::Dir)
    }

    #[test]
    fn merged_usr_whiteout_is_found() {
        let layers = vec![
            Some(vec![
                link("bin", "usr/bin"),
                dir("usr"),
                dir("usr/bin"),
                file("usr/bin/foo"),
            ]),
            Some(vec![dir("bin"), file("bin/.wh.foo"), file("etc/x")]),
        ];
        // A tar made where /bin is a directory: its bin/ entry replaces the symlink.
        let got = whiteouts_under_symlinks(&layers, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].replaced);
        assert!(got[0].to_string().contains("replaces the symlink"));
        let layers = vec![layers[0].clone(), Some(vec![file("bin/.wh.foo")])];
        let got = whiteouts_under_symlinks(&layers, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(!got[0].replaced);
        assert_eq!(got[0].symlink, b"bin");
        assert_eq!(got[0].symlink_layer, 0);
        assert_eq!(got[0].meant(), b"usr/bin/.wh.foo");
        let msg = got[0].to_string();
        assert!(
            msg.contains("/bin/.wh.foo") && msg.contains("/usr/bin/.wh.foo"),
            "{msg}"
        );
        // Deeper, an opaque marker, an absolute target with `..`.
        let layers = vec![
            Some(vec![link("lib", "/usr/lib/../lib")]),
            None,
            Some(vec![file("lib/x86_64/.wh..wh..opq")]),
        ];
        let got = whiteouts_under_symlinks(&layers, 2);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].meant(), b"usr/lib/x86_64/.wh..wh..opq");
        // Layers below `first_checked` are not reported.
        assert!(whiteouts_under_symlinks(&layers, 3).is_empty());
    }

    #[test]
    fn removed_or_replaced_symlinks_no_longer_count() {
        let base = Some(vec![link("bin", "usr/bin")]);
        for middle in [
            vec![file(".wh.bin")],
            vec![file(".wh..wh..opq")],
            vec![dir("bin")],
            vec![file("bin")],
        ] {
            let layers = vec![
                base.clone(),
                Some(middle.clone()),
                Some(vec![file("bin/.wh.a")]),
            ];
            assert!(
                whiteouts_under_symlinks(&layers, 2).is_empty(),
                "{middle:?}"
            );
        }
        // A whiteout of the symlink itself, at its own level, is right.
        let layers = vec![base.clone(), Some(vec![file(".wh.bin")])];
        assert!(whiteouts_under_symlinks(&layers, 1).is_empty());
        // The same layer making the symlink and a whiteout under it.
        let layers = vec![Some(vec![link("sbin", "usr/sbin"), file("sbin/.wh.x")])];
        assert_eq!(whiteouts_under_symlinks(&layers, 0).len(), 1);
    }
}
