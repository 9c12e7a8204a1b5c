//! A writable root filesystem for a build step over a read-only cached one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{Error, Result};

/// How a [`PreparedRootfs`] was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    /// An overlayfs mount: the lower tree is untouched, every change lands in the upper dir
    /// (new and changed files whole; deletions as 0/0 character devices; replaced directories
    /// marked with the `trusted.overlay.opaque` xattr).
    Overlay,
    /// A full copy of the lower tree (`cp -a --reflink=auto`); the step's changes are the
    /// difference between the copy and the lower tree.
    Copy,
}

/// The root a step runs in. Dropping it unmounts an overlay (logging failures);
/// [`PreparedRootfs::release`] does the same and reports them. Nothing is deleted: the
/// scratch directory (with the upper dir or the copy) belongs to the caller.
#[derive(Debug)]
pub struct PreparedRootfs {
    /// What to run in (the rootfs of the bundle).
    pub path: PathBuf,
    /// The overlay's upper dir: the step's diff (overlay only).
    pub upper: Option<PathBuf>,
    /// Overlay or copy.
    pub kind: RootfsKind,
    mounted: bool,
}

impl PreparedRootfs {
    /// Unmounts the overlay (lazily if something still holds it). Read `upper` after this.
    pub fn release(mut self) -> Result<()> {
        self.unmount()
    }

    fn unmount(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        match rustix::mount::unmount(&self.path, UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                tracing::debug!(path = %self.path.display(), "overlay busy: detaching it");
                rustix::mount::unmount(&self.path, UnmountFlags::DETACH)
                    .map_err(|e| Error::io(format!("unmounting {}", self.path.display()), e.into()))
            }
            Err(e) => Err(Error::io(
                format!("unmounting {}", self.path.display()),
                e.into(),
            )),
        }
    }
}

impl Drop for PreparedRootfs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("{e}");
        }
    }
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
}

/// Prepares a writable root over `lower` (never modified) in `scratch` (created if missing;
/// must not hold an earlier `upper`, `work`, `merged` or `rootfs`).
///
/// Overlay first: `mount -t overlay` with `lowerdir=lower, upperdir=scratch/upper,
/// workdir=scratch/work` on `scratch/merged` (with `index=off,redirect_dir=off,metacopy=off`,
/// so the upper dir holds whole files and real directories: a plain diff). That needs root
/// and an upper filesystem overlayfs accepts (not overlayfs itself, e.g. inside a container);
/// paths with `,` `:` or `\` are not tried. Any refusal falls back to [`copy_rootfs`], logged
/// at debug with the reason.
pub fn prepare_rootfs(lower: &Path, scratch: &Path) -> Result<PreparedRootfs> {
    for d in ["upper", "work", "merged", "rootfs"] {
        let p = scratch.join(d);
        if p.symlink_metadata().is_ok() {
            return Err(Error::io(
                format!("preparing a rootfs in {}", scratch.display()),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists (scratch directories are single-use)",
                        p.display()
                    ),
                ),
            ));
        }
    }
    match try_overlay(lower, scratch) {
        Ok(p) => Ok(p),
        Err(reason) => {
            tracing::debug!(lower = %lower.display(), "overlay not possible ({reason}): copying");
            copy_rootfs(lower, scratch)
        }
    }
}

fn try_overlay(lower: &Path, scratch: &Path) -> std::result::Result<PreparedRootfs, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    if !lower.is_dir() {
        return Err(format!("{} is not a directory", lower.display()));
    }
    let lower = fs::canonicalize(lower).map_err(|e| e.to_string())?;
    fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let scratch = fs::canonicalize(scratch).map_err(|e| e.to_string())?;
    let (upper, work, merged) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    let mut paths = Vec::new();
    for p in [&lower, &upper, &work] {
        match p.to_str() {
            Some(s) if !s.contains([',', ':', '\\']) => paths.push(s.to_owned()),
            _ => return Err(format!("path {} cannot be an overlay option", p.display())),
        }
    }
    let created = [&upper, &work, &merged];
    let undo = || {
        for d in created {
            // Only the empty directories made here: the mount failed, so nothing is in them.
            let _ = fs::remove_dir(d);
        }
    };
    for d in created {
        if let Err(e) = mkdir(d) {
            undo();
            return Err(e.to_string());
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off",
        paths[0], paths[1], paths[2]
    );
    let options = std::ffi::CString::new(options).map_err(|e| e.to_string())?;
    if let Err(e) = rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::empty(),
        &*options,
    ) {
        undo();
        return Err(format!("mount overlay: {e}"));
    }
    tracing::debug!(lower = %lower.display(), merged = %merged.display(), "overlay mounted");
    Ok(PreparedRootfs {
        path: merged,
        upper: Some(upper),
        kind: RootfsKind::Overlay,
        mounted: true,
    })
}

/// Copies `lower` to `scratch/rootfs` with `cp -a --reflink=auto` (modes, owners when root,
/// timestamps, xattrs, hard and symbolic links, device nodes; shared extents where the
/// filesystem can).
pub fn copy_rootfs(lower: &Path, scratch: &Path) -> Result<PreparedRootfs> {
    if !lower.is_dir() {
        return Err(Error::Copy {
            from: lower.to_owned(),
            to: scratch.to_owned(),
            message: "not a directory".into(),
        });
    }
    fs::create_dir_all(scratch)
        .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
    let dest = scratch.join("rootfs");
    if dest.symlink_metadata().is_ok() {
        return Err(Error::Copy {
            from: lower.to_owned(),
            to: dest,
            message: "already exists".into(),
        });
    }
    let out = Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory", "--"])
        .arg(lower)
        .arg(&dest)
        .output()
        .map_err(|e| Error::Copy {
            from: lower.to_owned(),
            to: dest.clone(),
            message: format!("running cp: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Copy {
            from: lower.to_owned(),
            to: dest,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(PreparedRootfs {
        path: dest,
        upper: None,
        kind: RootfsKind::Copy,
        mounted: false,
    })
}
