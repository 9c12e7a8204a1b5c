//! The deterministic PAX tar writer.
//!
//! Headers are ustar with PAX extended headers only where a value does not fit (long names and
//! link targets, big sizes, ids and times) or carries extra records (xattrs). Nothing depends on
//! the host: no atime/ctime, no device numbers of the source, no sparse files, fixed PAX header
//! names, records sorted by key (those whose value holds a newline last). The archive ends
//! with two zero blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};

use crate::recipe::{Entry, EntryKind, FileSource, FileStamp, Recipe};
use crate::{Error, Progress};

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const MAX_OCTAL_8: u64 = 0o7777777;
const MAX_OCTAL_12: u64 = 0o77777777777;
const COPY_BUF: usize = 256 * 1024;

/// What the writer noticed while writing a recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarReport {
    /// Source files with extended attributes that a layer would carry but this one does not
    /// (they were not preserved; see [`Recipe::count_unkept_xattrs`]).
    pub unkept_xattr_files: u64,
    /// Their attribute names.
    pub unkept_xattr_names: BTreeSet<String>,
}

impl TarReport {
    /// The warning for the user, if there is anything to say.
    pub fn warning(&self) -> Option<String> {
        if self.unkept_xattr_files == 0 {
            return None;
        }
        let n = self.unkept_xattr_files;
        let names: Vec<&str> = self.unkept_xattr_names.iter().map(String::as_str).collect();
        Some(format!(
            "{n} source file{} with extended attributes ({}) left out of the layer; \
             preserve them with `--preserve xattrs` (spec: preserve = [\"xattrs\"])",
            if n == 1 { "" } else { "s" },
            names.join(", ")
        ))
    }
}

/// Writes the recipe as a tar stream to `out`.
pub fn write_tar(
    recipe: &Recipe,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<TarReport, Error> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut report = TarReport::default();
    let mut xattr_buf = Vec::new();
    let mut xattrs = recipe
        .count_unkept_xattrs
        .then_some((&mut report, &mut xattr_buf));
    for entry in &recipe.entries {
        write_entry(entry, out, &mut buf, progress, xattrs.as_mut())?;
    }
    out.write_all(&[0u8; BLOCK * 2]).map_err(Error::output)?;
    Ok(report)
}

/// Where the writer counts source files with attributes left out, and its list buffer.
type XattrCount<'a, 'b> = &'a mut (&'b mut TarReport, &'b mut Vec<u8>);

fn write_entry(
    entry: &Entry,
    out: &mut dyn Write,
    buf: &mut [u8],
    progress: &dyn Progress,
    xattrs: Option<XattrCount<'_, '_>>,
) -> Result<(), Error> {
    let mut name = entry.path.as_bytes().to_vec();
    let (typeflag, size, link, dev) = match &entry.kind {
        EntryKind::File(src) => (b'0', src.size(), None, None),
        EntryKind::Dir => {
            name.push(b'/');
            (b'5', 0, None, None)
        }
        EntryKind::Symlink(t) => (b'2', 0, Some(t.clone()), None),
        EntryKind::Hardlink(t) => (b'1', 0, Some(t.as_bytes().to_vec()), None),
        EntryKind::Fifo => (b'6', 0, None, None),
        EntryKind::CharDevice { major, minor } => (b'3', 0, None, Some((*major, *minor))),
        EntryKind::BlockDevice { major, minor } => (b'4', 0, None, Some((*major, *minor))),
    };
    let fields = HeaderFields {
        name: &name,
        mode: entry.meta.mode,
        uid: u64::from(entry.meta.uid),
        gid: u64::from(entry.meta.gid),
        size,
        mtime: entry.meta.mtime,
        typeflag,
        linkname: link.as_deref().unwrap_or(b""),
        uname: entry.meta.uname.as_bytes(),
        gname: entry.meta.gname.as_bytes(),
        dev,
    };
    write_headers(out, &fields, &entry.meta.pax).map_err(Error::output)?;
    if let EntryKind::File(src) = &entry.kind {
        match src {
            FileSource::Inline(bytes) => {
                out.write_all(bytes).map_err(Error::output)?;
                progress.advance(bytes.len() as u64);
            }
            FileSource::Disk { path, size, stamp } => {
                copy_file(path, *size, stamp, out, buf, progress, xattrs)?;
            }
        }
        pad(out, size).map_err(Error::output)?;
    }
    Ok(())
}

/// Copies exactly `size` bytes of `path`, failing if the file changed since the recipe was made:
/// its length (the header already promised `size`), or its stamp (mtime, ctime, inode), which a
/// cache key may have been computed from. With `xattrs`, counts the file when it has
/// attributes a layer would carry (one `flistxattr` on the open file).
fn copy_file(
    path: &std::path::Path,
    size: u64,
    stamp: &FileStamp,
    out: &mut dyn Write,
    buf: &mut [u8],
    progress: &dyn Progress,
    xattrs: Option<XattrCount<'_, '_>>,
) -> Result<(), Error> {
    let src_err = |source| Error::Source {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(src_err)?;
    if let Some((report, list)) = xattrs {
        let names = crate::xattr::kept_names_fd(std::os::fd::AsFd::as_fd(&f), list);
        if !names.is_empty() {
            report.unkept_xattr_files += 1;
            for n in names {
                if report.unkept_xattr_names.len() < 16 {
                    report.unkept_xattr_names.insert(n);
                }
            }
        }
    }
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::SourceChanged {
                    path: path.to_owned(),
                    reason: format!("it shrank while being read ({size} bytes expected)"),
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(src_err(e)),
        };
        out.write_all(&buf[..n]).map_err(Error::output)?;
        progress.advance(n as u64);
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if f.read(&mut probe).map_err(src_err)? != 0 {
        return Err(Error::SourceChanged {
            path: path.to_owned(),
            reason: format!("it grew while being read ({size} bytes expected)"),
        });
    }
    let now = rustix::fs::fstat(&f).map_err(|e| src_err(e.into()))?;
    if FileStamp::from_stat(&now) != *stamp {
        return Err(Error::SourceChanged {
            path: path.to_owned(),
            reason: "it was modified after the layer was planned".to_owned(),
        });
    }
    Ok(())
}

fn pad(out: &mut dyn Write, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// The values of one ustar header before encoding.
pub(crate) struct HeaderFields<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) typeflag: u8,
    pub(crate) linkname: &'a [u8],
    pub(crate) uname: &'a [u8],
    pub(crate) gname: &'a [u8],
    pub(crate) dev: Option<(u32, u32)>,
}

/// Writes the PAX extended header (when needed) and the ustar header of one entry.
pub(crate) fn write_headers(
    out: &mut dyn Write,
    f: &HeaderFields<'_>,
    extra: &BTreeMap<String, Vec<u8>>,
) -> io::Result<()> {
    let mut pax: BTreeMap<String, Vec<u8>> = extra.clone();
    let mut binary = false;
    let mut note_binary = |v: &[u8]| {
        if std::str::from_utf8(v).is_err() {
            binary = true;
        }
    };
    let name = if f.name.len() > NAME_LEN {
        note_binary(f.name);
        pax.insert("path".into(), f.name.to_vec());
        truncate(f.name, NAME_LEN)
    } else {
        f.name
    };
    let linkname = if f.linkname.len() > NAME_LEN {
        note_binary(f.linkname);
        pax.insert("linkpath".into(), f.linkname.to_vec());
        truncate(f.linkname, NAME_LEN)
    } else {
        f.linkname
    };
    let uname = if f.uname.len() > 32 {
        pax.insert("uname".into(), f.uname.to_vec());
        b""
    } else {
        f.uname
    };
    let gname = if f.gname.len() > 32 {
        pax.insert("gname".into(), f.gname.to_vec());
        b""
    } else {
        f.gname
    };
    let mut numeric = |key: &str, v: u64, max: u64| -> u64 {
        if v > max {
            pax.insert(key.into(), v.to_string().into_bytes());
            0
        } else {
            v
        }
    };
    let uid = numeric("uid", f.uid, MAX_OCTAL_8);
    let gid = numeric("gid", f.gid, MAX_OCTAL_8);
    let size = numeric("size", f.size, MAX_OCTAL_12);
    let mtime = match u64::try_from(f.mtime) {
        Ok(t) if t <= MAX_OCTAL_12 => t,
        _ => {
            pax.insert("mtime".into(), f.mtime.to_string().into_bytes());
            0
        }
    };
    if binary {
        pax.insert("hdrcharset".into(), b"BINARY".to_vec());
    }

    if !pax.is_empty() {
        // Sorted by key, except that records whose value holds a newline (binary xattrs)
        // come last: readers that split PAX data on newlines (the Rust `tar` crate) then
        // still find `path`, `size`, `uid` and `gid`.
        let mut records = Vec::new();
        for last in [false, true] {
            for (k, v) in pax.iter().filter(|(_, v)| v.contains(&b'\n') == last) {
                records.extend_from_slice(&pax_record(k, v));
            }
        }
        let base = f
            .name
            .rsplit(|&b| b == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"");
        let mut pax_name = b"PaxHeaders/".to_vec();
        pax_name.extend_from_slice(truncate(base, NAME_LEN - pax_name.len()));
        let hdr = ustar_block(&HeaderFields {
            name: &pax_name,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: records.len() as u64,
            mtime: 0,
            typeflag: b'x',
            linkname: b"",
            uname: b"",
            gname: b"",
            dev: None,
        });
        out.write_all(&hdr)?;
        out.write_all(&records)?;
        pad(out, records.len() as u64)?;
    }
    out.write_all(&ustar_block(&HeaderFields {
        name,
        mode: f.mode,
        uid,
        gid,
        size,
        mtime: i64::try_from(mtime).unwrap_or(0),
        typeflag: f.typeflag,
        linkname,
        uname,
        gname,
        dev: f.dev,
    }))
}

fn truncate(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

/// One PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let digits = |n: usize| n.to_string().len();
    // The length field counts its own digits; adding them can add one more digit.
    let mut len = body + digits(body);
    if digits(len) > digits(body) {
        len = body + digits(len);
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

fn ustar_block(f: &HeaderFields<'_>) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..f.name.len()].copy_from_slice(f.name);
    octal(&mut h[100..108], u64::from(f.mode & 0o7777));
    octal(&mut h[108..116], f.uid);
    octal(&mut h[116..124], f.gid);
    octal(&mut h[124..136], f.size);
    octal(&mut h[136..148], u64::try_from(f.mtime).unwrap_or(0));
    h[156] = f.typeflag;
    h[157..157 + f.linkname.len()].copy_from_slice(f.linkname);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..265 + f.uname.len()].copy_from_slice(f.uname);
    h[297..297 + f.gname.len()].copy_from_slice(f.gname);
    if let Some((major, minor)) = f.dev {
        octal(&mut h[329..337], u64::from(major));
        octal(&mut h[337..345], u64::from(minor));
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let chk = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(chk.as_bytes());
    h
}

/// Zero-padded octal with a trailing NUL, filling the field. Callers guarantee the value fits.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    debug_assert_eq!(
        s.len(),
        digits,
        "value {v} does not fit {digits} octal digits"
    );
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Defaults, MetaSpec};
    use crate::recipe::RecipeBuilder;
    use crate::{ImagePath, NoProgress};

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for n in [
            0usize, 1, 5, 85, 86, 87, 95, 96, 97, 98, 990, 995, 996, 997, 9990, 9995,
        ] {
            let v = vec![b'x'; n];
            let r = pax_record("path", &v);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|&b| b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value length {n}");
        }
    }

    fn build(b: RecipeBuilder) -> Vec<u8> {
        let r = b.build().unwrap();
        let mut out = Vec::new();
        write_tar(&r, &mut out, &NoProgress).unwrap();
        out
    }

    /// The tar crate (an independent reader) sees exactly what we meant to write.
    #[test]
    fn tar_crate_reads_back_every_field() {
        let long = format!("/{}/{}", "d".repeat(120), "f".repeat(60));
        let mut b = RecipeBuilder::new(Defaults::new(1_700_000_000), true);
        b.add_content(p("/etc/motd"), b"hello\n").unwrap();
        b.add_content(p(&long), b"long").unwrap();
        b.add_symlink(p("/bin"), "usr/bin/".repeat(20).as_bytes())
            .unwrap();
        b.add_hardlink(p("/etc/motd2"), p("/etc/motd")).unwrap();
        let spec: MetaSpec = toml::from_str(
            r#"mode = "4755"
uid = 3000000
gid = 42
uname = "alice"
mtime = -5
xattrs = { "user.k" = "v" }"#,
        )
        .unwrap();
        b.set_metadata(p("/etc/motd"), spec.validate("/etc/motd").unwrap())
            .unwrap();
        let bytes = build(b);
        assert_eq!(bytes.len() % 512, 0);

        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let h = e.header().clone();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            if path == "etc/motd" {
                assert_eq!(content, b"hello\n");
                assert_eq!(h.mode().unwrap(), 0o4755);
                let pax: Vec<(String, Vec<u8>)> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_owned(), x.value_bytes().to_vec())
                    })
                    .collect();
                assert!(
                    pax.contains(&("uid".into(), b"3000000".to_vec())),
                    "{pax:?}"
                );
                assert!(pax.contains(&("mtime".into(), b"-5".to_vec())), "{pax:?}");
                assert!(pax.contains(&("SCHILY.xattr.user.k".into(), b"v".to_vec())));
                assert_eq!(h.gid().unwrap(), 42);
                assert_eq!(h.username().unwrap(), Some("alice"));
            }
            if path == "etc/motd2" {
                assert_eq!(h.entry_type(), tar::EntryType::Link);
                assert_eq!(&*e.link_name_bytes().unwrap(), b"etc/motd");
                // A hard link shares its target's metadata.
                assert_eq!(h.mode().unwrap(), 0o4755);
            }
            if path == "bin" {
                assert_eq!(e.link_name_bytes().unwrap().len(), 160);
            }
            if path.starts_with("ddd") && !path.ends_with('/') {
                assert_eq!(path.len(), long.len() - 1);
                assert_eq!(content, b"long");
            }
            if !path.starts_with("etc/motd") {
                assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{path}");
            }
            seen.push(path);
        }
        let order: Vec<&str> = seen.iter().map(|s| &s[..s.len().min(4)]).collect();
        assert_eq!(
            order,
            ["bin", "dddd", "dddd", "etc/", "etc/", "etc/"],
            "{seen:?}"
        );
    }

    #[test]
    fn binary_xattrs_go_last_and_unkept_ones_are_counted() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        rustix::fs::setxattr(&f, "user.a", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_file(p("/f"), &f).unwrap();
        b.add_file(p("/g"), &f).unwrap();
        let long = format!("/{}", "n".repeat(120));
        b.add_content(p(&long), b"x").unwrap();
        let spec: MetaSpec = toml::from_str(
            r#"uid = 3000000
xattrs = { "user.bin" = { base64 = "AAr/Cg==" }, "user.txt" = "t" }"#,
        )
        .unwrap();
        b.set_metadata(p(&long), spec.validate(&long).unwrap())
            .unwrap();
        let r = b.build().unwrap();
        let mut out = Vec::new();
        let report = write_tar(&r, &mut out, &NoProgress).unwrap();
        // The same file added twice: two entries (nlink 1, so no hard link), both counted.
        assert_eq!(report.unkept_xattr_files, 2);
        assert_eq!(
            report.unkept_xattr_names.iter().collect::<Vec<_>>(),
            ["user.a"]
        );
        assert!(report.warning().unwrap().contains("2 source files"));
        // The record with a newline comes after path, uid and the other xattr.
        let text = String::from_utf8_lossy(&out);
        let at = |k: &str| text.find(k).unwrap_or_else(|| panic!("{k}"));
        assert!(at(" path=") < at(" SCHILY.xattr.user.bin="));
        assert!(at(" uid=") < at(" SCHILY.xattr.user.bin="));
        assert!(at(" SCHILY.xattr.user.txt=") < at(" SCHILY.xattr.user.bin="));
        // The tar crate still finds the path and uid; gantry's reader finds the value.
        let mut seen = false;
        crate::tarread::list_layer(&out[..], gantry_oci::Compression::None, "t", |e| {
            if e.path == long {
                seen = true;
                assert_eq!(e.uid, 3_000_000);
                assert_eq!(
                    e.xattrs["user.bin"],
                    crate::meta::XattrValue::Bytes(vec![0, b'\n', 0xff, b'\n'])
                );
            }
        })
        .unwrap();
        assert!(seen);
        // Nothing counted when not asked to.
        let mut r2 = r.clone();
        r2.count_unkept_xattrs = false;
        let report = write_tar(&r2, &mut Vec::new(), &NoProgress).unwrap();
        assert_eq!(report, TarReport::default());
    }

    #[test]
    fn identical_recipes_give_identical_bytes() {
        let make = || {
            let mut b = RecipeBuilder::new(Defaults::new(0), true);
            b.add_content(p("/b/x"), b"1").unwrap();
            b.add_content(p("/a/y"), b"2").unwrap();
            build(b)
        };
        assert_eq!(make(), make());
    }

    #[test]
    fn source_that_changes_size_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "12345").unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_file(p("/f"), &f).unwrap();
        let r = b.build().unwrap();
        std::fs::write(&f, "123").unwrap();
        let e = write_tar(&r, &mut Vec::new(), &NoProgress).unwrap_err();
        assert!(matches!(e, Error::SourceChanged { .. }), "{e}");
        std::fs::write(&f, "1234567").unwrap();
        let e = write_tar(&r, &mut Vec::new(), &NoProgress).unwrap_err();
        assert!(matches!(e, Error::SourceChanged { .. }), "{e}");
        // Same size, other content: the stamp (mtime/ctime) gives it away.
        std::fs::write(&f, "12345").unwrap();
        let mut b = RecipeBuilder::new(Defaults::new(0), true);
        b.add_file(p("/f"), &f).unwrap();
        let r = b.build().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "54321").unwrap();
        let e = write_tar(&r, &mut Vec::new(), &NoProgress).unwrap_err();
        assert!(e.to_string().contains("modified after"), "{e}");
    }
}
