//! Extended attributes of sources: which ones a layer carries, and reading them.
//!
//! One policy serves `preserve = ["xattrs"]`, build-step capture and the warning about
//! attributes left out of a layer:
//!
//! - **kept**: `user.*` (except `user.overlay.*`) and `security.capability` (file
//!   capabilities such as `cap_net_raw=ep` on `ping`), as PAX `SCHILY.xattr.NAME` records with
//!   their values byte for byte, sorted by name;
//! - **host-only**, never carried: `trusted.*` (overlayfs and administrator data of the build
//!   host; `gantry unpack` refuses them in images) and `security.selinux` (the build host's
//!   labelling: the runtime labels a container's files, as buildah and podman leave it out by
//!   default);
//! - **left out with a warning**: the rest — other security labels (`security.ima`,
//!   `security.evm`, `security.apparmor`, `security.SMACK64…`), ACLs (`system.posix_acl_*`),
//!   overlay's `user.overlay.*`. They describe the host or need formats layers do not carry.
//!
//! Names that are not UTF-8 or contain `=` or a newline cannot be PAX keys and are left out.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::io::Errno;

use crate::Error;

/// Linux's limits on one attribute value and on one file's list of names (`XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX`).
pub(crate) const XATTR_MAX: usize = 64 * 1024;

/// What the policy says about one attribute name.
pub(crate) enum Class<'a> {
    /// Carried in layers, under this name.
    Keep(&'a str),
    /// `trusted.overlay.*` or `user.overlay.*`: the part after `overlay.`.
    Overlay(&'a [u8]),
    /// The build host's own data (`trusted.*`, `security.selinux`): never carried, never
    /// mentioned.
    HostOnly,
    /// Left out, with a warning.
    Ignore,
}

/// Classifies an attribute name (see the module documentation).
pub(crate) fn classify(raw: &[u8]) -> Class<'_> {
    for prefix in [&b"trusted.overlay."[..], b"user.overlay."] {
        if let Some(rest) = raw.strip_prefix(prefix) {
            return Class::Overlay(rest);
        }
    }
    if raw.starts_with(b"trusted.") || raw == b"security.selinux" {
        return Class::HostOnly;
    }
    let keep = raw == b"security.capability" || raw.starts_with(b"user.");
    match std::str::from_utf8(raw) {
        Ok(name) if keep && !name.contains(['=', '\n']) => Class::Keep(name),
        _ => Class::Ignore,
    }
}

/// The attributes of one source, sorted by the policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SourceXattrs {
    /// Carried: name → value.
    pub(crate) kept: BTreeMap<String, Vec<u8>>,
    /// Left out with a warning (host-only names are not listed).
    pub(crate) left_out: Vec<String>,
}

/// Reads the attributes of sources with two fixed buffers, allocated on first use.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    list: Vec<u8>,
    value: Vec<u8>,
}

impl Reader {
    /// The attributes of the file at `path`; `follow` follows a final symlink (sources named
    /// explicitly), otherwise the node itself is read (tree entries).
    pub(crate) fn read(&mut self, path: &Path, follow: bool) -> Result<SourceXattrs, Error> {
        let err = |e: Errno| Error::Source {
            path: path.to_owned(),
            source: e.into(),
        };
        if self.list.is_empty() {
            self.list.resize(XATTR_MAX, 0);
            self.value.resize(XATTR_MAX, 0);
        }
        let listed = if follow {
            rustix::fs::listxattr(path, &mut self.list[..])
        } else {
            rustix::fs::llistxattr(path, &mut self.list[..])
        };
        let mut out = SourceXattrs::default();
        let n = match listed {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(err(e)),
        };
        let mut rest = &self.list[..n];
        while let Ok(name) = CStr::from_bytes_until_nul(rest) {
            rest = &rest[name.to_bytes_with_nul().len()..];
            let raw = name.to_bytes();
            if raw.is_empty() {
                continue;
            }
            match classify(raw) {
                Class::Keep(k) => {
                    let got = if follow {
                        rustix::fs::getxattr(path, name, &mut self.value[..])
                    } else {
                        rustix::fs::lgetxattr(path, name, &mut self.value[..])
                    };
                    match got {
                        Ok(len) => {
                            out.kept.insert(k.to_owned(), self.value[..len].to_vec());
                        }
                        // Removed since the list was read.
                        Err(Errno::NODATA) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
                Class::HostOnly => {}
                Class::Overlay(_) if raw.starts_with(b"trusted.") => {}
                Class::Overlay(_) | Class::Ignore => {
                    out.left_out.push(String::from_utf8_lossy(raw).into_owned());
                }
            }
        }
        Ok(out)
    }
}

/// The names of the attributes of the open file `fd` that a layer would carry, for the
/// warning about attributes left out when they are not preserved. One `flistxattr` call.
pub(crate) fn kept_names_fd(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> Vec<String> {
    if buf.len() < XATTR_MAX {
        buf.resize(XATTR_MAX, 0);
    }
    let Ok(n) = rustix::fs::flistxattr(fd, &mut buf[..]) else {
        return Vec::new();
    };
    buf[..n]
        .split(|&b| b == 0)
        .filter_map(|raw| match classify(raw) {
            Class::Keep(k) => Some(k.to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let kept = |n: &[u8]| matches!(classify(n), Class::Keep(_));
        assert!(kept(b"security.capability"));
        assert!(kept(b"user.origin"));
        for host in [&b"trusted.overlay.opaque"[..], b"user.overlay.redirect"] {
            assert!(matches!(classify(host), Class::Overlay(_)));
        }
        for host in [&b"trusted.md5"[..], b"security.selinux"] {
            assert!(matches!(classify(host), Class::HostOnly));
        }
        for left in [
            &b"security.ima"[..],
            b"system.posix_acl_access",
            b"user.a=b",
            b"user.\xff",
        ] {
            assert!(matches!(classify(left), Class::Ignore));
        }
    }

    #[test]
    fn reads_user_xattrs_of_files_and_links() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let link = t.path().join("l");
        std::os::unix::fs::symlink("f", &link).unwrap();
        rustix::fs::setxattr(&f, "user.k", b"\x00\xffv", rustix::fs::XattrFlags::empty())
            .expect("the temp directory's filesystem supports user xattrs");
        let mut r = Reader::default();
        let got = r.read(&f, false).unwrap();
        assert_eq!(got.kept["user.k"], b"\x00\xffv");
        // Following the link reads the file; not following reads the link (no user.*).
        assert_eq!(r.read(&link, true).unwrap(), got);
        assert!(r.read(&link, false).unwrap().kept.is_empty());
        let file = std::fs::File::open(&f).unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            kept_names_fd(std::os::fd::AsFd::as_fd(&file), &mut buf),
            ["user.k"]
        );
    }
}
