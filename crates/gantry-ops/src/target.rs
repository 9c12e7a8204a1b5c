//! What image arguments name. Every command that takes an image resolves it here:
//! [`image_arg`] for those that also build project images (`run`, `export`, `push`), where a
//! project target comes first; [`Target::resolve`] for `inspect` and `ls`, which also read
//! layer blobs and layer infos. Image references are parsed by `gantry_transport::ImageRef`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use gantry_project::{Project, TargetRef};
use gantry_transport::{ImageRef, TRANSPORTS};

use crate::Context;

/// A thing to inspect or list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An image at a transport reference.
    Image(ImageRef),
    /// A layer info JSON file (its blob is looked up in the store).
    LayerInfo(PathBuf),
    /// A layer blob file (tar, gzip or zstd).
    Blob(PathBuf),
}

impl Target {
    /// Resolves a command-line argument: an existing file (with no transport prefix) is a
    /// layer blob or, when it holds JSON, a layer info; anything else is an image reference.
    pub fn resolve(ctx: &Context, arg: &str) -> Result<Self> {
        let direct = ctx.abs(Path::new(arg));
        if !ImageRef::has_transport(arg) && direct.is_file() {
            let mut head = [0u8; 1];
            let n = std::io::Read::read(&mut gantry_store::open_regular(&direct)?, &mut head)?;
            return Ok(if n == 1 && head[0] == b'{' {
                Target::LayerInfo(direct)
            } else {
                Target::Blob(direct)
            });
        }
        match ImageRef::parse(arg, &ctx.cwd) {
            Ok(r) => Ok(Target::Image(r)),
            Err(_) if !ImageRef::has_transport(arg) && !direct.exists() => bail!(
                "{arg}: no such layout directory, layer blob or layer info file; for an image \
                 elsewhere, name its transport: {TRANSPORTS}"
            ),
            Err(e) => Err(e.into()),
        }
    }
}

/// An image a command argument names.
#[derive(Debug, Clone)]
pub(crate) enum ImageArg<'p> {
    /// An image target of the project (the caller builds it).
    Target(&'p Project, String),
    /// An image at a transport reference.
    Ref(ImageRef),
}

/// The project of a command whose image arguments are `args` (`-C DIR`, `--file` as given).
/// No project file: `None`. A project that fails to load is an error, reported as `gantry
/// build` reports it, unless every argument names its transport: then the project is not what
/// the command is about, and only its settings (registries) apply if it loads.
pub(crate) fn project_for(
    ctx: &Context,
    project: &gantry_cli::ProjectArgs,
    args: &[&str],
) -> Result<Option<Project>> {
    let dir = project
        .dir
        .as_ref()
        .map_or_else(|| ctx.cwd.clone(), |d| ctx.abs(d));
    let file = Project::locate(&dir, project.file.as_deref());
    if project.file.is_none() && !file.is_file() {
        return Ok(None);
    }
    if !args.is_empty() && args.iter().all(|a| ImageRef::has_transport(a)) {
        return Ok(Project::load(&file).ok());
    }
    Ok(Some(Project::load(&file)?))
}

/// Resolves an image argument: with a transport prefix, that reference; inside a project, a
/// target name first (it must be an image); else an existing path (a layout directory). A bare
/// word that is none of these is an error listing the project's images.
pub(crate) fn image_arg<'p>(
    ctx: &Context,
    project: Option<&'p Project>,
    arg: &str,
) -> Result<ImageArg<'p>> {
    let Some(p) = project.filter(|_| !ImageRef::has_transport(arg)) else {
        return Ok(ImageArg::Ref(ImageRef::parse(arg, &ctx.cwd)?));
    };
    match p.target(arg) {
        Ok(TargetRef::Image(name)) => return Ok(ImageArg::Target(p, name)),
        Ok(other) => bail!("{other} is not an image; give an image target or an image reference"),
        Err(_) => {}
    }
    let path = arg.split([':', '@']).next().unwrap_or(arg);
    if ctx.abs(Path::new(path)).exists() {
        return Ok(ImageArg::Ref(ImageRef::parse(arg, &ctx.cwd)?));
    }
    let images: Vec<&str> = p.images.keys().map(String::as_str).collect();
    bail!(
        "no target named {arg} (targets: {}) in {}; for an image outside the project, name its \
         transport: {TRANSPORTS}",
        if images.is_empty() {
            "no images".to_owned()
        } else {
            images.join(", ")
        },
        p.file.display()
    )
}
