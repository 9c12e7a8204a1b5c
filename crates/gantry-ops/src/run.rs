//! `gantry run`: a command in an image (a project image target, built first, or any transport
//! reference) under crun or runc. The image's rootfs comes from the rootfs cache and is never
//! changed: the container writes to an overlay (or a copy) that is thrown away with it.

use std::io::IsTerminal;

use anyhow::{Context as _, Result, bail};
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
    // Container state in the store's session, where the next gantry finds it if this one is
    // killed.
    let runtime = runtime.with_state_root(store.session_dir()?.join(step::RUNTIME_STATE_DIR));
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
    // Errors name where the user came from: the flag, or the image's config.
    let (user_spec, user_source) = match &args.user {
        Some(u) => (u.clone(), format!("--user {u:?}")),
        None => {
            let u = step::image_user(&config);
            let source = format!("{label}: the image config's User {u:?}");
            (u, source)
        }
    };
    let mut user = step::resolve_user(&lower, &user_spec).context(user_source)?;
    let rootless = step::rootless_maps()?;
    if rootless.is_some() {
        user.additional_gids.clear();
    }
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(store.session_dir()?)
        .context("cannot create a scratch directory")?;
    let prepared = gantry_runtime::prepare_rootfs(&lower, scratch.path())
        .context("cannot prepare the root filesystem")?;
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let spec = gantry_runtime::RunSpec {
        rootfs: prepared.path.clone(),
        args: argv,
        env: step::merged_env(&config, &env_overrides),
        cwd: args
            .workdir
            .clone()
            .unwrap_or_else(|| step::image_workdir(&config)),
        user: gantry_runtime::User {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
        },
        network: args.network,
        readonly_rootfs: false,
        mounts: Vec::new(),
        hostname: "gantry".to_owned(),
        terminal,
        rootless,
    };
    let bundle = scratch.path().join("bundle");
    gantry_runtime::write_bundle(&bundle, &spec)?;
    let status = runtime
        .run_inherit(&bundle, &step::container_id("run"))
        .with_context(|| format!("the runtime ({}) failed", runtime.name()))?;
    drop(prepared);
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
