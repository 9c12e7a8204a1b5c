//! `gantry run`: a command in an image (a project image target, built first, or any transport
//! reference) under crun or runc. The image's rootfs comes from the rootfs cache and is never
//! changed: the container writes to an overlay (or a copy) that is thrown away with it.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{Context as _, Result, bail};
use gantry_runtime::{ContainerRequest, Purpose};
use gantry_transport::{ImageRef, SourceImage};
use gantry_unpack::{DevicePolicy, ImageLayer, UnpackOptions};

use crate::Context;
use crate::step;
use crate::target::{ImageArg, image_arg, project_for};
use crate::transfer::platform_or_host;

/// Runs `gantry run`; returns the container's exit code (128 + the signal if it was killed).
pub fn run(ctx: &Context, args: &gantry_cli::RunArgs) -> Result<u8> {
    let mut env_overrides = Vec::new();
    for e in &args.env {
        let (k, v) = gantry_image::parse_env(e).with_context(|| format!("--env {e:?}"))?;
        env_overrides.push((k, v));
    }
    let project = project_for(ctx, &args.project, &[&args.image])?;
    let arg = image_arg(ctx, project.as_ref(), &args.image)?;
    let runtime = step::runtime(ctx)?;
    // A project's size caps apply to its images.
    let ctx = &match &project {
        Some(p) => ctx.with_settings(&p.settings),
        None => ctx.clone(),
    };
    let store = ctx.store()?;
    let client = crate::registry::client(ctx, project.as_ref())?;
    let source = match &arg {
        ImageArg::Target(project, name) => {
            let report = crate::build::build(
                ctx,
                project,
                std::slice::from_ref(name),
                crate::build::BuildOptions {
                    allow_unpinned: args.allow_unpinned,
                    ..Default::default()
                },
            )?;
            let built = report
                .built
                .get(name)
                .with_context(|| format!("image.{name} was not built"))?;
            SourceImage::from_built(built, &format!("image.{name}"))?
        }
        ImageArg::Ref(r) => ctx
            .transfer(&store, Some(&client))
            .open(r, &platform_or_host(args.platform.as_deref())?)?,
    };
    let label = args.image.clone();
    let config = source
        .runnable_config()
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

/// Runs `gantry unpack`; returns a summary of what was unpacked. The config is checked like
/// `gantry run`'s, every layer is verified against its blob digest and its diff_id, and the
/// destination appears (mode 0700) only once all of them did.
pub fn unpack(ctx: &Context, args: &gantry_cli::UnpackArgs) -> Result<String> {
    let platform = platform_or_host(args.platform.as_deref())?;
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
    let t = ctx.transfer(&store, Some(&client));
    let source = ImageRef::parse(&args.image, &ctx.cwd)
        .and_then(|r| t.open(&r, &platform))
        .with_context(failed)?;
    let config = source.runnable_config().with_context(failed)?;
    let readers = step::layer_readers(&t, &source.layers)?;
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
