//! [`ImageRef`]: the one parser of image references, in skopeo's transport syntax.

use std::fmt;
use std::path::{Path, PathBuf};

use gantry_oci::{Digest, Reference};
use gantry_store::Selector;

use crate::Error;

/// The transports, for messages that ask the user to name one.
pub const TRANSPORTS: &str = "oci:DIR[:TAG|@DIGEST], oci-archive:FILE[:TAG|@DIGEST], \
                              docker-archive:FILE[:REF] or docker://REF";

const OCI: &str = "oci:";
const OCI_ARCHIVE: &str = "oci-archive:";
const DOCKER_ARCHIVE: &str = "docker-archive:";
const DOCKER: &str = "docker://";

/// Where an image is, or goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI layout directory: `oci:DIR[:TAG|@DIGEST]`.
    Layout {
        /// The directory (absolute).
        dir: PathBuf,
        /// Which image in it.
        selector: Selector,
    },
    /// A tar of an OCI layout: `oci-archive:FILE[:TAG|@DIGEST]`.
    OciArchive {
        /// The file (absolute).
        file: PathBuf,
        /// Which image in it.
        selector: Selector,
    },
    /// A `docker save` archive: `docker-archive:FILE[:REF]`.
    DockerArchive {
        /// The file (absolute).
        file: PathBuf,
        /// The image's name in it (`name:tag`), or `@N` for its N-th image.
        reference: Option<String>,
    },
    /// A registry: `docker://REF`.
    Registry(Reference),
}

impl ImageRef {
    /// Parses a reference to an image that exists. The transport prefix is stripped exactly
    /// once (`oci:oci:t` is the directory `oci`, tag `t`). Without a prefix, an existing
    /// directory is a layout: `DIR[:TAG]` is split at the first `:` (or `DIR@DIGEST` at the
    /// `@`), as skopeo does, and only when `DIR` exists; anything else is an error that names
    /// the transports. Relative paths are taken from `cwd`.
    pub fn parse(input: &str, cwd: &Path) -> Result<Self, Error> {
        if let Some(r) = Self::parse_prefixed(input, cwd)? {
            return Ok(r);
        }
        let (dir, selector) = split_layout(input, input)?;
        let dir = cwd.join(dir);
        if !dir.is_dir() {
            return Err(bad(
                input,
                format!(
                    "{} is not a directory; name the transport: {TRANSPORTS}",
                    dir.display()
                ),
            ));
        }
        Ok(ImageRef::Layout { dir, selector })
    }

    /// Parses a destination: like [`ImageRef::parse`], but without a transport prefix the
    /// argument is an OCI layout directory, which need not exist yet.
    pub fn parse_destination(input: &str, cwd: &Path) -> Result<Self, Error> {
        if let Some(r) = Self::parse_prefixed(input, cwd)? {
            return Ok(r);
        }
        let (dir, selector) = split_layout(input, input)?;
        Ok(ImageRef::Layout {
            dir: cwd.join(dir),
            selector,
        })
    }

    /// Whether `input` starts with a transport prefix (and so names no project target).
    pub fn has_transport(input: &str) -> bool {
        [OCI, OCI_ARCHIVE, DOCKER_ARCHIVE, DOCKER]
            .iter()
            .any(|p| input.starts_with(p))
    }

    /// The reference if `input` has a transport prefix.
    fn parse_prefixed(input: &str, cwd: &Path) -> Result<Option<Self>, Error> {
        if let Some(rest) = input.strip_prefix(DOCKER) {
            let reference = Reference::parse(rest)
                .map_err(|e| bad(input, format!("not a registry reference: {e}")))?;
            return Ok(Some(ImageRef::Registry(reference)));
        }
        if let Some(rest) = input.strip_prefix(OCI_ARCHIVE) {
            let (file, selector) = split_layout(rest, input)?;
            return Ok(Some(ImageRef::OciArchive {
                file: cwd.join(file),
                selector,
            }));
        }
        if let Some(rest) = input.strip_prefix(DOCKER_ARCHIVE) {
            let (file, reference) = match rest.split_once(':') {
                Some((f, r)) => (f, Some(r)),
                None => (rest, None),
            };
            if file.is_empty() {
                return Err(bad(input, "expected docker-archive:FILE[:REF]"));
            }
            if reference.is_some_and(str::is_empty) {
                return Err(bad(input, "the image name after the file is empty"));
            }
            return Ok(Some(ImageRef::DockerArchive {
                file: cwd.join(file),
                reference: reference.map(str::to_owned),
            }));
        }
        if let Some(rest) = input.strip_prefix(OCI) {
            let (dir, selector) = split_layout(rest, input)?;
            return Ok(Some(ImageRef::Layout {
                dir: cwd.join(dir),
                selector,
            }));
        }
        Ok(None)
    }

    /// The tag a destination names (`None` for none, and for a digest, which no destination
    /// can be written under).
    pub fn destination_tag(&self) -> Result<Option<&str>, Error> {
        let selector = match self {
            ImageRef::Layout { selector, .. } | ImageRef::OciArchive { selector, .. } => selector,
            ImageRef::DockerArchive { reference, .. } => return Ok(reference.as_deref()),
            ImageRef::Registry(r) => return Ok(r.tag_or_latest()),
        };
        match selector {
            Selector::Tag(t) => Ok(Some(t)),
            Selector::Only => Ok(None),
            Selector::Digest(_) => Err(bad(
                &self.to_string(),
                "a destination is written under a tag, not a digest",
            )),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let selector = |f: &mut fmt::Formatter<'_>, s: &Selector| match s {
            Selector::Tag(t) => write!(f, ":{t}"),
            Selector::Digest(d) => write!(f, "@{d}"),
            Selector::Only => Ok(()),
        };
        match self {
            ImageRef::Layout { dir, selector: s } => {
                write!(f, "{OCI}{}", dir.display())?;
                selector(f, s)
            }
            ImageRef::OciArchive { file, selector: s } => {
                write!(f, "{OCI_ARCHIVE}{}", file.display())?;
                selector(f, s)
            }
            ImageRef::DockerArchive { file, reference } => {
                write!(f, "{DOCKER_ARCHIVE}{}", file.display())?;
                match reference {
                    Some(r) => write!(f, ":{r}"),
                    None => Ok(()),
                }
            }
            ImageRef::Registry(r) => write!(f, "{DOCKER}{r}"),
        }
    }
}

fn bad(input: &str, reason: impl Into<String>) -> Error {
    Error::InvalidRef {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `PATH[:TAG]` (at the first `:`) or `PATH@DIGEST`. `input` names the whole argument
/// in errors.
fn split_layout<'a>(rest: &'a str, input: &str) -> Result<(&'a str, Selector), Error> {
    let (path, selector) = if let Some((path, digest)) = rest.split_once('@') {
        let d = Digest::parse(digest).map_err(|e| bad(input, e.to_string()))?;
        (path, Selector::Digest(d))
    } else if let Some((path, tag)) = rest.split_once(':') {
        gantry_oci::validate_ref_name(tag).map_err(|reason| bad(input, reason))?;
        (path, Selector::Tag(tag.to_owned()))
    } else {
        (rest, Selector::Only)
    };
    if path.is_empty() {
        return Err(bad(
            input,
            format!("the path is missing; expected {TRANSPORTS}"),
        ));
    }
    Ok((path, selector))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn tag(t: &str) -> Selector {
        Selector::Tag(t.to_owned())
    }

    #[test]
    fn parses_every_transport_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path();
        // A layout directory literally named `oci`, and one named `img`.
        std::fs::create_dir(cwd.join("oci")).unwrap();
        std::fs::create_dir(cwd.join("img")).unwrap();
        let digest = Digest::parse(D).unwrap();
        let layout = |dir: &str, selector: Selector| ImageRef::Layout {
            dir: cwd.join(dir),
            selector,
        };
        let cases: Vec<(String, ImageRef, String)> = vec![
            (
                "oci".into(),
                layout("oci", Selector::Only),
                "oci:{}/oci".into(),
            ),
            (
                "oci:oci".into(),
                layout("oci", Selector::Only),
                "oci:{}/oci".into(),
            ),
            (
                "oci:oci:t".into(),
                layout("oci", tag("t")),
                "oci:{}/oci:t".into(),
            ),
            // The prefix is stripped once: `oci:t` is the directory `t`.
            (
                "oci:t".into(),
                layout("t", Selector::Only),
                "oci:{}/t".into(),
            ),
            (
                "img:v1".into(),
                layout("img", tag("v1")),
                "oci:{}/img:v1".into(),
            ),
            (
                format!("img@{D}"),
                layout("img", Selector::Digest(digest.clone())),
                format!("oci:{{}}/img@{D}"),
            ),
            (
                format!("oci:img@{D}"),
                layout("img", Selector::Digest(digest.clone())),
                format!("oci:{{}}/img@{D}"),
            ),
            // `oci:` names a layout whether it exists or not.
            (
                "oci:nowhere:v1".into(),
                layout("nowhere", tag("v1")),
                "oci:{}/nowhere:v1".into(),
            ),
            (
                "oci:/abs/dir".into(),
                ImageRef::Layout {
                    dir: "/abs/dir".into(),
                    selector: Selector::Only,
                },
                "oci:/abs/dir".into(),
            ),
            (
                "oci-archive:x.tar".into(),
                ImageRef::OciArchive {
                    file: cwd.join("x.tar"),
                    selector: Selector::Only,
                },
                "oci-archive:{}/x.tar".into(),
            ),
            (
                "oci-archive:x.tar:v2".into(),
                ImageRef::OciArchive {
                    file: cwd.join("x.tar"),
                    selector: tag("v2"),
                },
                "oci-archive:{}/x.tar:v2".into(),
            ),
            (
                format!("oci-archive:x.tar@{D}"),
                ImageRef::OciArchive {
                    file: cwd.join("x.tar"),
                    selector: Selector::Digest(digest.clone()),
                },
                format!("oci-archive:{{}}/x.tar@{D}"),
            ),
            (
                "docker-archive:d.tar".into(),
                ImageRef::DockerArchive {
                    file: cwd.join("d.tar"),
                    reference: None,
                },
                "docker-archive:{}/d.tar".into(),
            ),
            (
                "docker-archive:d.tar:busybox:latest".into(),
                ImageRef::DockerArchive {
                    file: cwd.join("d.tar"),
                    reference: Some("busybox:latest".into()),
                },
                "docker-archive:{}/d.tar:busybox:latest".into(),
            ),
            (
                "docker-archive:d.tar:@1".into(),
                ImageRef::DockerArchive {
                    file: cwd.join("d.tar"),
                    reference: Some("@1".into()),
                },
                "docker-archive:{}/d.tar:@1".into(),
            ),
            (
                "docker://127.0.0.1:5000/lib/base:1".into(),
                ImageRef::Registry(Reference::parse("127.0.0.1:5000/lib/base:1").unwrap()),
                "docker://127.0.0.1:5000/lib/base:1".into(),
            ),
            (
                format!("docker://127.0.0.1:5000/lib/base@{D}"),
                ImageRef::Registry(
                    Reference::parse(&format!("127.0.0.1:5000/lib/base@{D}")).unwrap(),
                ),
                format!("docker://127.0.0.1:5000/lib/base@{D}"),
            ),
        ];
        let root = cwd.display().to_string();
        for (input, want, shown) in cases {
            let got = ImageRef::parse(&input, cwd).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), shown.replace("{}", &root), "{input}");
            // The canonical form parses back to the same reference.
            assert_eq!(
                ImageRef::parse(&got.to_string(), cwd).unwrap(),
                got,
                "{input}"
            );
        }
    }

    #[test]
    fn bad_references_name_the_input() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path();
        std::fs::write(cwd.join("file"), "x").unwrap();
        std::fs::create_dir(cwd.join("img")).unwrap();
        let cases = [
            ("nosuch", "not a directory; name the transport"),
            ("nosuch:v1", "not a directory"),
            ("file", "not a directory"),
            ("oci:", "the path is missing"),
            (":tag", "the path is missing"),
            ("oci:img:bad tag", "bad tag"),
            ("img@sha256:nope", "invalid digest"),
            ("oci-archive:", "the path is missing"),
            ("docker-archive:", "docker-archive:FILE[:REF]"),
            ("docker-archive:d.tar:", "empty"),
            ("docker://", "not a registry reference"),
            ("docker://Upper/Case", "not a registry reference"),
        ];
        for (input, reason) in cases {
            let e = ImageRef::parse(input, cwd).expect_err(input).to_string();
            assert!(e.starts_with(&format!("{input}: ")), "{input}: {e}");
            assert!(e.contains(reason), "{input}: {e}");
        }
        // Bare arguments that are not layouts list the transports.
        let e = ImageRef::parse("nosuch", cwd).unwrap_err().to_string();
        assert!(e.contains(&cwd.join("nosuch").display().to_string()), "{e}");
        assert!(e.contains("docker://REF"), "{e}");
    }

    #[test]
    fn destinations_need_not_exist_and_have_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path();
        let r = ImageRef::parse_destination("out:v1", cwd).unwrap();
        assert_eq!(
            r,
            ImageRef::Layout {
                dir: cwd.join("out"),
                selector: tag("v1")
            }
        );
        assert_eq!(r.destination_tag().unwrap(), Some("v1"));
        let r = ImageRef::parse_destination("oci:oci:t", cwd).unwrap();
        assert_eq!(r.destination_tag().unwrap(), Some("t"));
        let r = ImageRef::parse_destination(&format!("oci:out@{D}"), cwd).unwrap();
        let e = r.destination_tag().unwrap_err().to_string();
        assert!(e.contains("not a digest"), "{e}");
        assert!(ImageRef::has_transport("oci:x") && !ImageRef::has_transport("x:y"));
    }
}
