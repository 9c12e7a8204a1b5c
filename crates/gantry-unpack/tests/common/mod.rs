//! Helpers shared by the integration tests: a raw tar builder that writes any name bytes
//! (the `tar` crate refuses `..` in `set_path`), compression, and a fixture with a decoy
//! "host" directory next to the rootfs whose every detail is snapshotted.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gantry_unpack::{Error, ImageLayer, UnpackOptions, UnpackStats};
use tar::{EntryType, Header};

/// The mtime of every entry unless set otherwise.
pub const MTIME: u64 = 1_600_000_000;

/// A tar stream written header by header.
#[derive(Default)]
pub struct Tb {
    buf: Vec<u8>,
}

/// One PAX record, `"<len> key=value\n"`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Entry options beyond the common ones.
#[derive(Clone)]
pub struct Opt {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub pax: Vec<(String, Vec<u8>)>,
    pub dev: (u32, u32),
}

impl Default for Opt {
    fn default() -> Self {
        Opt {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            pax: Vec::new(),
            dev: (0, 0),
        }
    }
}

impl Tb {
    pub fn new() -> Self {
        Tb::default()
    }

    /// A header block (checksum set here) and its data, padded.
    pub fn raw(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.data(data)
    }

    /// Raw data, padded to a block.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        let pad = data.len().div_ceil(512) * 512 - data.len();
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A PAX extended header with these records.
    pub fn pax(&mut self, records: &[(String, Vec<u8>)]) -> &mut Self {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let h = header(
            false,
            b"././@PaxHeader",
            EntryType::XHeader,
            body.len() as u64,
        );
        self.raw(h, &body)
    }

    /// A member with any name and link bytes (long ones go into a PAX header).
    pub fn entry(
        &mut self,
        name: &[u8],
        ty: EntryType,
        data: &[u8],
        link: &[u8],
        o: &Opt,
    ) -> &mut Self {
        let mut pax = o.pax.clone();
        if name.len() > 100 {
            pax.push(("path".into(), name.to_vec()));
        }
        if link.len() > 100 {
            pax.push(("linkpath".into(), link.to_vec()));
        }
        if !pax.is_empty() {
            self.pax(&pax);
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(ty);
        set_name(&mut h, &name[..name.len().min(100)]);
        if link.len() <= 100 {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_mode(o.mode);
        h.set_uid(o.uid);
        h.set_gid(o.gid);
        h.set_mtime(o.mtime);
        h.set_size(data.len() as u64);
        if matches!(ty, EntryType::Char | EntryType::Block) {
            h.set_device_major(o.dev.0).unwrap();
            h.set_device_minor(o.dev.1).unwrap();
        }
        self.raw(h, data)
    }

    pub fn file(&mut self, name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> &mut Self {
        self.entry(
            name.as_ref(),
            EntryType::Regular,
            data.as_ref(),
            b"",
            &Opt::default(),
        )
    }

    pub fn file_with(
        &mut self,
        name: impl AsRef<[u8]>,
        data: impl AsRef<[u8]>,
        o: &Opt,
    ) -> &mut Self {
        self.entry(name.as_ref(), EntryType::Regular, data.as_ref(), b"", o)
    }

    pub fn dir(&mut self, name: impl AsRef<[u8]>) -> &mut Self {
        let o = Opt {
            mode: 0o755,
            ..Opt::default()
        };
        self.entry(name.as_ref(), EntryType::Directory, b"", b"", &o)
    }

    pub fn dir_with(&mut self, name: impl AsRef<[u8]>, o: &Opt) -> &mut Self {
        self.entry(name.as_ref(), EntryType::Directory, b"", b"", o)
    }

    pub fn symlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let o = Opt {
            mode: 0o777,
            ..Opt::default()
        };
        self.entry(name.as_ref(), EntryType::Symlink, b"", target.as_ref(), &o)
    }

    pub fn hardlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        self.entry(
            name.as_ref(),
            EntryType::Link,
            b"",
            target.as_ref(),
            &Opt::default(),
        )
    }

    pub fn device(&mut self, name: &str, ty: EntryType, major: u32, minor: u32) -> &mut Self {
        let o = Opt {
            mode: 0o660,
            dev: (major, minor),
            ..Opt::default()
        };
        self.entry(name.as_bytes(), ty, b"", b"", &o)
    }

    /// The bytes so far, without an end marker.
    pub fn bytes(&self) -> Vec<u8> {
        self.buf.clone()
    }

    /// The tar with its end-of-archive marker.
    pub fn finish(&self) -> Vec<u8> {
        let mut b = self.buf.clone();
        b.extend_from_slice(&[0u8; 1024]);
        b
    }
}

/// A ustar (or GNU) header with every numeric field set and `name` written as is.
pub fn header(gnu: bool, name: &[u8], ty: EntryType, size: u64) -> Header {
    let mut h = if gnu {
        Header::new_gnu()
    } else {
        Header::new_ustar()
    };
    h.set_entry_type(ty);
    set_name(&mut h, name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// Writes name bytes straight into the header's name field.
pub fn set_name(h: &mut Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A blob decompressed (gzip and zstd detected by their magic).
pub fn decompress(blob: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(blob).unwrap();
    } else {
        out = blob.to_vec();
    }
    out
}

/// A layer of an image whose diff_id is what `blob` really decompresses to.
pub fn image_layer(label: &str, blob: Vec<u8>) -> ImageLayer {
    ImageLayer {
        label: label.to_owned(),
        diff_id: gantry_oci::Digest::sha256(&decompress(&blob)),
        blob: Box::new(std::io::Cursor::new(blob)),
    }
}

/// Options for tests: everything restored, devices created (tests run as root).
pub fn opts() -> UnpackOptions {
    UnpackOptions {
        devices: gantry_unpack::DevicePolicy::Create,
        preserve_ownership: true,
        xattrs: true,
        ..UnpackOptions::default()
    }
}

/// Everything observable about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct St {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub ino: u64,
    pub content: String,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub fn xattrs_of(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut list = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(p, &mut list[..]) else {
        return out;
    };
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        if let Ok(m) = rustix::fs::lgetxattr(p, name, &mut v[..]) {
            out.insert(String::from_utf8_lossy(name).into_owned(), v[..m].to_vec());
        }
    }
    out
}

pub fn stat(p: &Path) -> St {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = md.file_type();
    let (kind, content) = if ft.is_symlink() {
        (
            'l',
            fs::read_link(p).unwrap().to_string_lossy().into_owned(),
        )
    } else if ft.is_file() {
        (
            'f',
            gantry_oci::Digest::sha256(&fs::read(p).unwrap()).to_string(),
        )
    } else if ft.is_dir() {
        ('d', String::new())
    } else {
        ('o', format!("{:x}", md.rdev()))
    };
    St {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        nlink: md.nlink(),
        ino: md.ino(),
        content,
        xattrs: xattrs_of(p),
    }
}

/// Every path under `base` (itself included, as ""), except the subtree `skip`.
pub fn snap(base: &Path, skip: &Path) -> BTreeMap<PathBuf, St> {
    let mut out = BTreeMap::new();
    let mut todo = vec![base.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p == skip {
            continue;
        }
        let st = stat(&p);
        if st.kind == 'd' {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
        out.insert(p.strip_prefix(base).unwrap().to_path_buf(), st);
    }
    out
}

/// A temp dir T holding the rootfs T/root and decoys T/host (a 0400 `secret` with a known
/// owner, mtime, xattr and content, and `sub/file`) and T/root-evil/secret (a sibling whose
/// name starts like the root's).
pub struct Fx {
    pub t: tempfile::TempDir,
    pub root: PathBuf,
    pub host: PathBuf,
    before: BTreeMap<PathBuf, St>,
}

pub const SECRET: &[u8] = b"the host's secret\n";

impl Fx {
    pub fn new() -> Fx {
        let t = tempfile::Builder::new()
            .prefix("gantry-unpack-")
            .tempdir()
            .unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let host = t.path().join("host");
        fs::create_dir_all(host.join("sub")).unwrap();
        fs::write(host.join("sub/file"), b"sub file").unwrap();
        let secret = host.join("secret");
        fs::write(&secret, SECRET).unwrap();
        rustix::fs::lsetxattr(
            &secret,
            "user.keep",
            b"host",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o400)).unwrap();
        let evil = t.path().join("root-evil");
        fs::create_dir(&evil).unwrap();
        fs::write(evil.join("secret"), SECRET).unwrap();
        for p in [&secret, &evil.join("secret"), &host.join("sub/file")] {
            filetime::set_symlink_file_times(
                p,
                filetime::FileTime::from_unix_time(1_000_000_000, 0),
                filetime::FileTime::from_unix_time(1_000_000_000, 0),
            )
            .unwrap();
        }
        let before = snap(t.path(), &root);
        assert!(before.len() >= 7, "{before:?}");
        Fx {
            t,
            root,
            host,
            before,
        }
    }

    /// Asserts that nothing outside T/root was created, removed or changed.
    #[track_caller]
    pub fn assert_host_untouched(&self) {
        self.compare(snap(self.t.path(), &self.root));
    }

    /// Like [`Fx::assert_host_untouched`], but T's own mtime may have changed: `unpack_image`
    /// makes (and removes) its temporary directory there, next to T/root.
    #[track_caller]
    pub fn assert_host_untouched_but_t_mtime(&self) {
        let mut now = snap(self.t.path(), &self.root);
        if let (Some(n), Some(b)) = (now.get_mut(Path::new("")), self.before.get(Path::new(""))) {
            n.mtime = b.mtime;
        }
        self.compare(now);
    }

    #[track_caller]
    fn compare(&self, now: BTreeMap<PathBuf, St>) {
        if now != self.before {
            for (k, v) in &now {
                match self.before.get(k) {
                    None => panic!("created outside the root: {} {v:?}", k.display()),
                    Some(b) if b != v => {
                        panic!("changed outside the root: {}\n{b:?}\n{v:?}", k.display())
                    }
                    _ => {}
                }
            }
            for k in self.before.keys() {
                assert!(
                    now.contains_key(k),
                    "removed outside the root: {}",
                    k.display()
                );
            }
        }
    }

    pub fn unpack(&self, layer: &[u8]) -> Result<UnpackStats, Error> {
        self.unpack_with(layer, &opts())
    }

    pub fn unpack_with(&self, layer: &[u8], o: &UnpackOptions) -> Result<UnpackStats, Error> {
        gantry_unpack::unpack_layer(&self.root, "sha256:test-layer", layer, o)
    }

    /// Unpacking must fail with a message containing every one of `needles`; the host is
    /// untouched.
    #[track_caller]
    pub fn refuses(&self, layer: &[u8], needles: &[&str]) -> String {
        let err = match self.unpack(layer) {
            Ok(stats) => panic!("expected an error mentioning {needles:?}, unpacked {stats:?}"),
            Err(e) => e.to_string(),
        };
        for n in needles {
            assert!(err.contains(n), "error {err:?} does not mention {n:?}");
        }
        assert!(
            err.contains("sha256:test-layer"),
            "error {err:?} does not name the layer"
        );
        self.assert_host_untouched();
        err
    }

    pub fn r(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel.as_ref()))
    }
}

/// The names directly in a directory, as bytes, sorted.
pub fn names(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    v.sort();
    v
}

/// A ustar header for a regular file `name` of `size` bytes.
pub fn file_header(name: &[u8], size: u64) -> Vec<u8> {
    let mut h = header(false, name, EntryType::Regular, size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Bombs are made of one compressed chunk of zeros this large, repeated.
const BOMB_CHUNK: u64 = 64 << 20;

/// The members (gzip) or frames (zstd) of a tar holding one file `bomb` of `size` zeros (a
/// multiple of 64 MiB): a header, `size / 64 MiB` copies of one compressed 64 MiB run of zeros,
/// and the end marker. Decoders read concatenated members and frames as one stream, so this
/// is a real bomb that costs one 64 MiB compression to make.
pub fn zeros_bomb(size: u64, zstd: bool) -> Vec<u8> {
    assert_eq!(size % BOMB_CHUNK, 0);
    let compress = |data: &mut dyn std::io::Read| -> Vec<u8> {
        if zstd {
            zstd::encode_all(data, 3).unwrap()
        } else {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::copy(data, &mut e).unwrap();
            e.finish().unwrap()
        }
    };
    let mut out = compress(&mut &file_header(b"bomb", size)[..]);
    let zeros = compress(&mut std::io::Read::take(std::io::repeat(0), BOMB_CHUNK));
    for _ in 0..size / BOMB_CHUNK {
        out.extend_from_slice(&zeros);
    }
    out.extend(compress(&mut &[0u8; 1024][..]));
    out
}
