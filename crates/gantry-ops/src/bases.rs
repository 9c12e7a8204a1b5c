//! The bases of a build's images and steps, loaded before anything is written: a fixed base
//! (an image reference: a layout, an archive, a registry image by digest) or a pull target,
//! opened through gantry-transport. Only manifests and configs are read; layers stay where
//! they are until a sink needs them.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use gantry_image::{BlobSource, Image};
use gantry_oci::Platform;
use gantry_project::{BaseRef, Pin, Project, TargetRef};
use gantry_registry::Client;
use gantry_store::Store;
use gantry_transport::{ImageRef, Transfer};

use crate::Context;

/// Loads the base of every image and step in `order` that is not another image target (those
/// are built on their parent; scratch is an empty image of the target's platform), and
/// resolves pull targets built alone. `registry` is set up on
/// first need (a registry base, a pull target, a shallow layout's base layers); a later sink
/// uses it to fetch. Returns the bases by target name.
pub(crate) fn load_bases(
    ctx: &Context,
    project: &Project,
    order: &[TargetRef],
    store: &Store,
    registry: &mut Option<Client>,
    allow_unpinned: bool,
) -> Result<BTreeMap<String, Image>> {
    let mut bases = BTreeMap::new();
    for t in order {
        let (base, platform_req, at) = match t {
            TargetRef::Image(n) => {
                let img = &project.images[n];
                (&img.base, img.platform.as_ref(), img.at)
            }
            TargetRef::Step(n) => {
                let step = &project.steps[n];
                (&step.base, step.platform.as_ref(), step.at)
            }
            TargetRef::Pull(reference) => {
                // Built alone (`gantry build NAME`): resolve it now, shallowly.
                let client = client(ctx, project, registry)?;
                pull_base(ctx, project, client, store, reference, None, allow_unpinned)?;
                continue;
            }
            TargetRef::Layer(_) => continue,
        };
        let platform = platform_req.cloned().unwrap_or_else(Platform::host);
        let at = format!("{}:{}:{}: {t}", project.file.display(), at.line, at.column);
        let loaded = match base {
            BaseRef::Image(_) => continue,
            BaseRef::Scratch => Image::scratch(&platform),
            BaseRef::Fixed(r) => {
                if let ImageRef::Registry(_) = r {
                    client(ctx, project, registry)?;
                }
                let t = ctx.transfer(store, registry.as_ref());
                let image = open_base(&t, r, &platform, platform_req)
                    .with_context(|| format!("{at}: cannot use base {r}"))?;
                // A shallow layout's base layers are fetched by whatever needs their bytes.
                if image
                    .layers
                    .iter()
                    .any(|l| matches!(l.source, BlobSource::Registry { .. }))
                {
                    client(ctx, project, registry)?;
                }
                image
            }
            BaseRef::Pull(reference) => {
                let client = client(ctx, project, registry)?;
                pull_base(
                    ctx,
                    project,
                    client,
                    store,
                    reference,
                    platform_req,
                    allow_unpinned,
                )
                .with_context(|| format!("{at}: cannot use base {reference}"))?
            }
        };
        bases.insert(t.name().to_owned(), loaded);
    }
    Ok(bases)
}

/// The registry client of the build, set up on first use.
fn client<'a>(
    ctx: &Context,
    project: &Project,
    registry: &'a mut Option<Client>,
) -> Result<&'a Client> {
    Ok(match registry {
        Some(c) => c,
        None => registry.insert(crate::registry::client(ctx, Some(project))?),
    })
}

/// Opens the base image at `r`: its manifest and config are read, its layers left where they
/// are. `platform` picks from an index; when one was asked for (`platform_req`), a
/// single-manifest base must be of it too. A registry base names itself in the `base.name`
/// annotation of what is built on it, where readers of a shallow output find its layers.
pub(crate) fn open_base(
    t: &Transfer<'_>,
    r: &ImageRef,
    platform: &Platform,
    platform_req: Option<&Platform>,
) -> Result<Image> {
    let source = t.open(r, platform)?;
    let mut image = Image::from_source(&source, platform_req)?;
    if let ImageRef::Registry(reference) = r {
        image.set_base_name(&reference.to_string());
    }
    Ok(image)
}

/// Resolves a pull target (`NAME` or `NAME#variant`) to an image whose layers stay in the
/// registry. The platform is the image's, else the pull target's, else the project's, else
/// this machine's.
fn pull_base(
    ctx: &Context,
    project: &Project,
    client: &Client,
    store: &Store,
    reference: &str,
    image_platform: Option<&Platform>,
    allow_unpinned: bool,
) -> Result<Image> {
    let (pull, pin) = project
        .pin(reference)
        .with_context(|| format!("no pull target {reference:?}"))?;
    let at = format!(
        "{}:{}:{}: pull.{}",
        project.file.display(),
        pull.at.line,
        pull.at.column,
        pull.name
    );
    let target = match pin {
        Pin::Digest(d) => pull.repository.with_digest(d),
        Pin::Unpinned(tag) if allow_unpinned => pull.repository.with_tag(&tag)?,
        Pin::Unpinned(tag) => bail!(
            "{at}: the tag {tag:?} is not pinned in {}; run `gantry lock` (or build with \
             --allow-unpinned, which is not reproducible)",
            project.lock.path.display()
        ),
    };
    let shown = match &pull.source {
        gantry_project::PullSource::Tag(t) | gantry_project::PullSource::Digest(_, Some(t)) => {
            format!("{}:{t}", pull.repository)
        }
        _ => target.to_string(),
    };
    let platform = image_platform
        .or(pull.platform.as_ref())
        .or(project.settings.platform.as_ref())
        .cloned()
        .unwrap_or_else(Platform::host);
    let t = ctx.transfer(store, Some(client));
    let source = t.registry_source(&target, pull.anonymous, &at)?;
    let mut image = Image::from_source(&t.image(source.as_ref(), &platform)?, None)?;
    image.set_base_name(&shown);
    Ok(image)
}
