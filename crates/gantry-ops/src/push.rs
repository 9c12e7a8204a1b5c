//! `gantry push`: project images to their tags, or one image (a project target or any
//! transport reference) to the references given. The push itself is
//! `gantry_transport::Transfer::push`: HEAD every blob, mount what another repository of the
//! same registry has, upload or stream the rest, the manifest last.

use anyhow::{Context as _, Result, bail};
use gantry_oci::{Platform, Reference};
use gantry_project::Project;
use gantry_transport::{ImageRef, SourceImage};
use serde::Serialize;

pub use gantry_transport::{BlobCounts, PushOutcome};

use crate::Context;
use crate::target::{ImageArg, image_arg, project_for};

/// What `gantry push` did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// Every tag pushed.
    pub pushed: Vec<PushOutcome>,
}

/// The image to push and where to.
struct Job<'p> {
    source: ImageArg<'p>,
    dests: Vec<Reference>,
}

/// Project images to their `tags`.
fn to_their_tags<'p>(p: &'p Project, names: &[&String]) -> Result<Vec<Job<'p>>> {
    if names.is_empty() {
        bail!("{}: no image has `tags` to push to", p.file.display());
    }
    names
        .iter()
        .map(|&n| {
            let tags = p.images[n].tags.clone();
            if tags.is_empty() {
                bail!("image.{n} has no `tags`; give them: gantry push {n} REGISTRY/REPO:TAG…");
            }
            Ok(Job {
                source: ImageArg::Target(p, n.clone()),
                dests: tags,
            })
        })
        .collect()
}

/// What the arguments ask for: every image with tags (none given), the named project images
/// to their tags, or one image to the references that follow it.
fn jobs<'p>(
    ctx: &Context,
    project: Option<&'p Project>,
    args: &'p [String],
) -> Result<Vec<Job<'p>>> {
    let no_project = "no gantry.toml here: give an image and the references to push it to \
                      (gantry push oci:DIR:TAG REGISTRY/REPO:TAG)";
    let Some((first, dests)) = args.split_first() else {
        let p = project.context(no_project)?;
        let tagged: Vec<&String> = p
            .images
            .iter()
            .filter(|(_, i)| !i.tags.is_empty())
            .map(|(n, _)| n)
            .collect();
        return to_their_tags(p, &tagged);
    };
    if let Some(p) = project
        && args.iter().all(|a| p.images.contains_key(a))
    {
        return to_their_tags(p, &args.iter().collect::<Vec<_>>());
    }
    if dests.is_empty() && project.is_none() && !ImageRef::has_transport(first) {
        bail!("{no_project}");
    }
    let source = image_arg(ctx, project, first)?;
    if dests.is_empty() {
        bail!("{first}: give the references to push it to (gantry push {first} REGISTRY/REPO:TAG)");
    }
    let dests = dests
        .iter()
        .map(|d| Reference::parse(d.strip_prefix("docker://").unwrap_or(d)).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![Job { source, dests }])
}

/// Runs `gantry push`.
pub fn run(ctx: &Context, args: &gantry_cli::PushArgs) -> Result<PushReport> {
    let first: Vec<&str> = args.args.first().map(String::as_str).into_iter().collect();
    let project = project_for(ctx, &args.project, &first)?;
    let jobs = jobs(ctx, project.as_ref(), &args.args)?;
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, project.as_ref())?;
    let t = ctx.transfer(&store, Some(&client));
    // Project images are built first (a no-op when nothing changed) to know where every blob is.
    let names: Vec<String> = jobs
        .iter()
        .filter_map(|j| match &j.source {
            ImageArg::Target(_, n) => Some(n.clone()),
            ImageArg::Ref(_) => None,
        })
        .collect();
    let built = match &project {
        Some(p) if !names.is_empty() => {
            // The layouts a push writes on the way are shallow: it never needs base layer bytes.
            let opts = crate::build::BuildOptions {
                allow_unpinned: args.allow_unpinned,
                shallow: true,
            };
            crate::build::build(ctx, p, &names, opts)?.built
        }
        _ => Default::default(),
    };
    let mut pushed = Vec::new();
    for job in &jobs {
        let image = match &job.source {
            ImageArg::Target(_, n) => {
                let b = built
                    .get(n)
                    .with_context(|| format!("image.{n} was not built"))?;
                SourceImage::from_built(b, &format!("image.{n}"))?
            }
            ImageArg::Ref(r) => t.open(r, &Platform::host())?,
        };
        for dest in &job.dests {
            let outcome = t.push(&image, dest)?;
            ctx.reporter.event(&format!(
                "{}: {} blobs present, {} mounted, {} streamed, {} uploaded",
                outcome.reference,
                outcome.blobs.present,
                outcome.blobs.mounted,
                outcome.blobs.streamed,
                outcome.blobs.uploaded
            ));
            pushed.push(outcome);
        }
    }
    Ok(PushReport { pushed })
}
