//! `gantry run`: a command in an image (a project image target, built first, or any transport
//! reference) under crun or runc. The image's rootfs comes from the rootfs cache and is never
//! changed: the container writes to an overlay (or a copy) that is thrown away with it.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{Context as _, Result, bail};
use gantry_oci::Platform;
use gantry_project::{Project, TargetRef};
use gantry_runtime::{ContainerRequest, Purpose};
use gantry_unpack::{DevicePolicy, ImageLayer, UnpackOptions};

use crate::Context;
use crate::step;
use crate::transfer::{SourceImage, open_source};

/// Runs `gantry run`; returns the container's exit code (128 + the signal if it was killed).
pub fn run(ctx: &Context, args: &gantry_cli::RunArgs) -> Result<u8> {
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let mut env_overrides = Vec::new();
    for e in &args.env {
        let (k, v) = gantry_image::parse_env(e).with_context(|| format!("--env {e:?}"))?;
        env_overrides.push((k, v));
    }
    let runtime = step::runtime(ctx)?;
    let project = project_image(ctx, args)?;
    // A project's size caps apply to its images.
    let ctx = &match &project {
        Some((p, _)) => ctx.with_settings(&p.settings),
        None => ctx.clone(),
    };
    let (source, client) = match project {
        Some((project, name)) => {
            let report = crate::build::build(
                ctx,
                &project,
                std::slice::from_ref(&name),
                crate::build::BuildOptions {
                    allow_unpinned: args.allow_unpinned,
                    ..Default::default()
                },
            )?;
            let built = report
                .built
                .get(&name)
                .with_context(|| format!("image.{name} was not built"))?;
            let client = crate::registry::client(ctx, Some(&project))?;
            (SourceImage::from_built(built)?, client)
        }
        None => {
            let store = ctx.store()?;
            let client = crate::registry::client(ctx, None)?;
            let source = open_source(ctx, &store, &client, &args.image, platform.as_ref())?;
            (source, client)
        }
    };
    let store = ctx.store()?;
    let label = args.image.clone();
    let config = source
        .runnable_config(&store, &label)
        .with_context(|| format!("cannot run {label}"))?;
    let lower = step::cached_rootfs(
        ctx,
        &store,
        Some(&client),
        &config.rootfs.diff_ids,
        &source.layers,
        &label,
    )?;
    let c = config.config.clone().unwrap_or_default();
    let mut argv: Vec<String> = c.entrypoint.clone().unwrap_or_default();
    if args.args.is_empty() {
        argv.extend(c.cmd.clone().unwrap_or_default());
    } else {
        argv.extend(args.args.iter().cloned());
    }
    if argv.is_empty() {
        bail!("{label}: the image has no entrypoint or cmd; give a command after `--`");
    }
    // Container state in the store's session, where the next gantry finds it if this one is
    // killed; errors name where the user came from (the flag, or the image's config).
    let container = gantry_runtime::prepare_container(
        runtime,
        &ContainerRequest {
            purpose: Purpose::Run { image: &label },
            session: store.session_dir()?,
            lower: &lower,
            image: step::image_process(&config),
            args: argv,
            env: &env_overrides,
            user: args.user.as_deref(),
            workdir: args.workdir.as_deref(),
            network: args.network,
            inputs: &BTreeMap::new(),
            terminal: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        },
    )?;
    let runtime = &container.runtime;
    let status = runtime
        .run_inherit(&container.bundle, &container.id)
        .with_context(|| format!("the runtime ({}) failed", runtime.name()))?;
    drop(container);
    Ok(u8::try_from(status.exit_code().clamp(0, 255)).unwrap_or(1))
}

/// The project and image target `args.image` names, if it names one (no transport prefix,
/// and a project file in the directory that defines it).
fn project_image(ctx: &Context, args: &gantry_cli::RunArgs) -> Result<Option<(Project, String)>> {
    if args.image.contains(':') || args.image.contains('/') {
        return Ok(None);
    }
    let dir = args
        .project
        .dir
        .as_ref()
        .map_or_else(|| ctx.cwd.clone(), |d| ctx.abs(d));
    let file = Project::locate(&dir, args.project.file.as_deref());
    if !file.is_file() {
        return Ok(None);
    }
    let project = Project::load(&file)?;
    match project.target(&args.image) {
        Ok(TargetRef::Image(n)) => Ok(Some((project, n))),
        Ok(other) => bail!("{other} is not an image; `gantry run` runs images"),
        Err(_) => Ok(None),
    }
}

/// Runs `gantry unpack`; returns a summary of what was unpacked. The config is checked like
/// `gantry run`'s, every layer is verified against its blob digest and its diff_id, and the
/// destination appears (mode 0700) only once all of them did.
pub fn unpack(ctx: &Context, args: &gantry_cli::UnpackArgs) -> Result<String> {
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let devices = match args.devices.as_str() {
        "create" => DevicePolicy::Create,
        "skip" => DevicePolicy::Skip,
        _ => DevicePolicy::Placeholder,
    };
    let dest = ctx.abs(&args.dest);
    let failed = || format!("cannot unpack {} into {}", args.image, dest.display());
    // Before any download.
    gantry_unpack::check_destination(&dest).with_context(failed)?;
    // Unpacking reads the store only: it works on a read-only store for an image whose blobs
    // it already holds (or that is in a layout or archive).
    let store = ctx.store_for_reading()?;
    let client = crate::registry::client(ctx, None)?;
    let source =
        open_source(ctx, &store, &client, &args.image, platform.as_ref()).with_context(failed)?;
    let config = source
        .runnable_config(&store, &args.image)
        .with_context(failed)?;
    let readers = step::layer_readers(&store, Some(&client), &source.layers)?;
    let layers = readers
        .into_iter()
        .zip(config.rootfs.diff_ids)
        .map(|((label, blob), diff_id)| ImageLayer {
            label,
            diff_id,
            blob,
        });
    let opts = UnpackOptions {
        devices,
        limits: ctx.limits,
        ..UnpackOptions::default()
    };
    let stats = gantry_unpack::unpack_image(&dest, layers, &opts).with_context(failed)?;
    Ok(format!(
        "{} layers, {} entries",
        source.layers.len(),
        stats.entries
    ))
}
