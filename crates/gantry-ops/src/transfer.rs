//! `gantry copy`, `gantry export` and `gantry pull`: images between transports
//! (`gantry_transport`). A copy keeps the manifest and config bytes, so every digest stays the
//! same, unless the layers are recompressed on request.

use anyhow::{Context as _, Result, anyhow, bail};
use gantry_layer::Compressor;
use gantry_oci::{Platform, Reference};
use gantry_store::Selector;
use gantry_transport::{Completeness, ImageRef, SourceImage, Transfer};

use crate::Context;
use crate::target::{ImageArg, image_arg, project_for};

/// `--platform`, else this machine's.
pub(crate) fn platform_or_host(arg: Option<&str>) -> Result<Platform> {
    Ok(match arg {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    })
}

/// Writes `img` to `dest` completely; returns where it went.
fn write(ctx: &Context, t: &Transfer<'_>, img: &SourceImage, dest: &ImageRef) -> Result<String> {
    let to = t.write(img, dest, Completeness::Complete)?;
    if let ImageRef::Registry(_) = dest {
        ctx.reporter.event(&format!("pushed {to}"));
    }
    Ok(to)
}

/// Runs `gantry copy`.
pub fn copy(ctx: &Context, args: &gantry_cli::CopyArgs) -> Result<String> {
    let platform = platform_or_host(args.platform.as_deref())?;
    let source = ImageRef::parse(&args.source, &ctx.cwd)?;
    let dest = ImageRef::parse_destination(&args.destination, &ctx.cwd)?;
    dest.destination_tag()?;
    let compressor = args
        .recompress
        .as_deref()
        .map(|c| Compressor::parse(c, None))
        .transpose()?;
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, None)?;
    let t = ctx.transfer(&store, Some(&client));
    let mut img = t.open(&source, &platform)?;
    if let Some(c) = compressor {
        img = t.recompress(&img, c, ctx.jobs, &ctx.limits)?;
    }
    write(ctx, &t, &img, &dest)
}

/// Runs `gantry export`: a project image (built first, a no-op when nothing changed) or any
/// transport reference, written completely in the given format.
pub fn export(ctx: &Context, args: &gantry_cli::ExportArgs) -> Result<String> {
    let out = ctx.abs(&args.output);
    let project = project_for(ctx, &args.project, &[&args.image])?;
    let arg = image_arg(ctx, project.as_ref(), &args.image)?;
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, project.as_ref())?;
    let t = ctx.transfer(&store, Some(&client));
    let (img, default_tag, default_ref) = match &arg {
        ImageArg::Target(p, name) => {
            let report = crate::build::build(
                ctx,
                p,
                std::slice::from_ref(name),
                crate::build::BuildOptions {
                    allow_unpinned: args.allow_unpinned,
                    ..Default::default()
                },
            )?;
            let built = report
                .built
                .get(name)
                .ok_or_else(|| anyhow!("image.{name} was not built"))?;
            let target = &p.images[name];
            (
                SourceImage::from_built(built, &format!("image.{name}"))?,
                target.layout_tag.clone(),
                target.tags.first().map(ToString::to_string),
            )
        }
        ImageArg::Ref(r) => (t.open(r, &Platform::host())?, "latest".to_owned(), None),
    };
    let tag = args.tag.clone().unwrap_or(default_tag);
    let dest = match args.format.as_str() {
        "oci" => ImageRef::Layout {
            dir: out,
            selector: Selector::Tag(tag),
        },
        "oci-archive" => ImageRef::OciArchive {
            file: out,
            selector: Selector::Tag(tag),
        },
        "docker-archive" => ImageRef::DockerArchive {
            file: out,
            reference: args.tag.clone().or(default_ref),
        },
        other => bail!("--format {other:?}: expected oci, oci-archive or docker-archive"),
    };
    write(ctx, &t, &img, &dest).with_context(|| format!("cannot export {}", args.image))
}

/// Runs `gantry pull`: a registry image into a transport (default: an OCI layout named after
/// the repository, in the current directory).
pub fn pull(ctx: &Context, args: &gantry_cli::PullArgs) -> Result<String> {
    let reference = Reference::parse(
        args.reference
            .strip_prefix("docker://")
            .unwrap_or(&args.reference),
    )?;
    let platform = platform_or_host(args.platform.as_deref())?;
    let dest = match &args.output {
        Some(o) => ImageRef::parse_destination(o, &ctx.cwd)?,
        None => {
            let name = reference.repository().rsplit('/').next().unwrap_or("image");
            ImageRef::Layout {
                dir: ctx.abs(name.as_ref()),
                selector: Selector::Tag(reference.tag_or_latest().unwrap_or("latest").to_owned()),
            }
        }
    };
    dest.destination_tag()?;
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, None)?;
    let t = ctx.transfer(&store, Some(&client));
    let img = t.open(&ImageRef::Registry(reference), &platform)?;
    write(ctx, &t, &img, &dest)
}
