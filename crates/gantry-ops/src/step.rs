//! Running commands inside images: the rootfs of an image (unpacked once per chain id into the
//! rootfs cache), and `[step.NAME]` targets whose outputs or filesystem diff become a layer.
//! The container itself (user, environment, working directory, inputs, network, the writable
//! root and the bundle) is prepared by `gantry_runtime::prepare_container`, the same sequence
//! `gantry run` uses.
//!
//! ```text
//! image ─► layer blobs (store, layout, or fetched from the registry into the store)
//!   └─ RootfsCache::get_or_unpack(diff_ids)        $GANTRY_HOME/rootfs/v2/<chain id>, read-only use;
//!                                                   each layer verified against its diff_id
//!        └─ prepare_container(runtime, request)    user from the image's /etc/passwd (in-root),
//!             │                                     overlayfs (upper = the diff) or a copy,
//!             │                                     network off unless asked, inputs bound ro
//!             └─ bundle (config.json) + crun/runc
//!                  └─ outputs_recipe / overlay_diff_recipe / tree_diff_recipe ─► write_layer
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use gantry_cache::{ActionCache, CacheKey, KeyHasher};
use gantry_image::{BlobSource, Image};
use gantry_layer::{LayerInfo, LayerPlan, LayerSource};
use gantry_oci::{Descriptor, Digest, Hasher, ImageConfig};
use gantry_project::{Capture, StepTarget};
use gantry_registry::Client;
use gantry_runtime::{ContainerRequest, ImageProcess, Purpose, Runtime};
use gantry_store::Store;

use crate::Context;

/// Bumped when the meaning of a step's cache key changes (2: output layers leave out the
/// parent directories the image already has).
const STEP_CACHE_VERSION: u64 = 2;
/// Lines of a failed step's output shown in the error.
const TAIL_LINES: usize = 20;

/// The OCI runtime for this context (`--runtime`, `GANTRY_RUNTIME`, else detected).
pub(crate) fn runtime(ctx: &Context) -> Result<Runtime> {
    Ok(Runtime::detect(ctx.runtime.as_deref())?)
}

/// Stops the containers a dead gantry left running in its session `dir` (called before the
/// store removes the session), and reports them.
pub(crate) fn reap_containers(reporter: &dyn crate::Reporter, dir: &Path) {
    match gantry_runtime::reap_state_root(&dir.join(gantry_runtime::RUNTIME_STATE_DIR)) {
        Ok(ids) if ids.is_empty() => {}
        Ok(ids) => reporter.warn(&format!(
            "stopped {} container(s) that a killed gantry left running: {}",
            ids.len(),
            ids.join(", ")
        )),
        Err(e) => reporter.warn(&format!(
            "cannot stop the containers a killed gantry left in {}: {e}",
            dir.display()
        )),
    }
}

/// The rootfs cache's directory in the store.
pub(crate) const ROOTFS_CACHE_DIR: &str = "rootfs";

/// The rootfs cache of the store.
pub(crate) fn rootfs_cache(store: &Store) -> Result<gantry_unpack::RootfsCache> {
    Ok(gantry_unpack::RootfsCache::open(
        &store.root().join(ROOTFS_CACHE_DIR),
    )?)
}

/// The chain id of an image's layers.
pub(crate) fn chain_id(image: &Image) -> Digest {
    gantry_unpack::chain_id(&image.config.rootfs.diff_ids)
}

/// The layers of a built (or being built) image, with where their blobs are.
pub(crate) fn image_layers(image: &Image) -> Vec<(Descriptor, BlobSource)> {
    image
        .layers
        .iter()
        .map(|l| (l.descriptor.clone(), l.source.clone()))
        .collect()
}

/// The unpacked rootfs of an image with these `diff_ids` and `layers`, from the rootfs cache
/// (unpacked on first use, each layer verified against its blob digest and its diff_id;
/// registry layers are fetched into the store first, verified).
pub(crate) fn cached_rootfs(
    ctx: &Context,
    store: &Store,
    client: Option<&Client>,
    diff_ids: &[Digest],
    layers: &[(Descriptor, BlobSource)],
    label: &str,
) -> Result<PathBuf> {
    if layers.len() != diff_ids.len() {
        bail!(
            "{label}: the image has {} layers but {} diff_ids",
            layers.len(),
            diff_ids.len()
        );
    }
    let cache = rootfs_cache(store)?;
    let opts = gantry_unpack::UnpackOptions {
        limits: ctx.limits,
        ..gantry_unpack::UnpackOptions::default()
    };
    let path = cache
        .get_or_unpack(
            diff_ids,
            || {
                layer_readers(&ctx.transfer(store, client), layers)
                    .map_err(|e| gantry_unpack::Error::Source(format!("{e:#}")))
            },
            &opts,
        )
        .with_context(|| format!("{label}: cannot unpack the image"))?;
    Ok(path)
}

/// Every layer of an image, opened in order (verified against its descriptor when read to
/// its end; a registry blob is fetched into the store first, so it is downloaded once) and
/// labelled by digest.
pub(crate) fn layer_readers(
    t: &gantry_transport::Transfer<'_>,
    layers: &[(Descriptor, BlobSource)],
) -> Result<Vec<(String, Box<dyn Read>)>> {
    layers
        .iter()
        .map(|(d, source)| {
            let blob: Box<dyn Read> = t.open_blob(d, source)?;
            Ok((d.digest.to_string(), blob))
        })
        .collect()
}

/// What the image config says about the container's process (`User`, `Env`, `WorkingDir`).
pub(crate) fn image_process(config: &ImageConfig) -> ImageProcess<'_> {
    let c = config.config.as_ref();
    ImageProcess {
        user: c.and_then(|c| c.user.as_deref()),
        env: c.and_then(|c| c.env.as_deref()).unwrap_or_default(),
        working_dir: c.and_then(|c| c.working_dir.as_deref()),
    }
}

/// Hashes the content of a step's inputs: every entry's relative path, type, exec bit,
/// link target and file content, in sorted order.
fn hash_inputs(inputs: &BTreeMap<String, PathBuf>, k: &mut KeyHasher) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (dest, src) in inputs {
        k.str(dest);
        for entry in walkdir::WalkDir::new(src)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.with_context(|| format!("cannot read input {}", src.display()))?;
            let rel = entry.path().strip_prefix(src).unwrap_or(entry.path());
            k.bytes(rel.as_os_str().as_encoded_bytes());
            let ft = entry.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                k.str("l").bytes(target.as_os_str().as_encoded_bytes());
            } else if ft.is_dir() {
                k.str("d");
            } else if ft.is_file() {
                let md = entry.metadata()?;
                let mut f = std::fs::File::open(entry.path())
                    .with_context(|| format!("cannot read {}", entry.path().display()))?;
                let mut h = Hasher::sha256();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = f
                        .read(&mut buf)
                        .with_context(|| format!("cannot read {}", entry.path().display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                k.str("f")
                    .bool(md.permissions().mode() & 0o100 != 0)
                    .digest(&h.finish());
            } else {
                k.str("other");
            }
        }
    }
    Ok(())
}

/// Everything a step's result depends on.
pub(crate) struct StepJob<'a> {
    pub(crate) step: &'a StepTarget,
    /// The image it runs in: its base plus its extra layers.
    pub(crate) image: Image,
    pub(crate) created: String,
}

impl StepJob<'_> {
    /// The cache key: base chain, inputs, command, environment, user, workdir, network,
    /// capture and compressor.
    pub(crate) fn key(&self) -> Result<CacheKey> {
        let s = self.step;
        let mut k = KeyHasher::new("step");
        k.u64(STEP_CACHE_VERSION)
            .u64(gantry_layer::FINGERPRINT_VERSION)
            .digest(&chain_id(&self.image));
        let argv = s.command.argv();
        k.u64(argv.len() as u64);
        for a in &argv {
            k.str(a);
        }
        let env =
            gantry_runtime::merged_env(image_process(&self.image.config), &self.env_overrides());
        k.u64(env.len() as u64);
        for e in &env {
            k.str(e);
        }
        k.str(&self.user()).str(&self.workdir()).bool(s.network);
        hash_inputs(&s.inputs, &mut k)?;
        match &s.capture {
            Capture::Outputs { paths, exclude } => {
                k.str("outputs").u64(paths.len() as u64);
                for p in paths {
                    k.str(p);
                }
                k.u64(exclude.len() as u64);
                for e in exclude {
                    k.str(e);
                }
            }
            Capture::Diff => {
                k.str("diff");
            }
        }
        k.str(&s.compressor.identity()).str(&self.created);
        Ok(k.finish())
    }

    fn env_overrides(&self) -> Vec<(String, String)> {
        self.step
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn user(&self) -> String {
        self.step
            .user
            .clone()
            .unwrap_or_else(|| gantry_runtime::image_user(image_process(&self.image.config)))
    }

    fn workdir(&self) -> String {
        self.step
            .workdir
            .clone()
            .unwrap_or_else(|| gantry_runtime::image_workdir(image_process(&self.image.config)))
    }
}

/// Runs a step, writes its layer into the store and the action cache under `key`, and
/// returns the layer.
pub(crate) fn run_step(
    ctx: &Context,
    store: &Store,
    cache: &ActionCache,
    client: Option<&Client>,
    job: &StepJob<'_>,
    key: &CacheKey,
) -> Result<LayerInfo> {
    let s = job.step;
    let label = format!("step.{}", s.name);
    let runtime = runtime(ctx)?;
    let lower = cached_rootfs(
        ctx,
        store,
        client,
        &job.image.config.rootfs.diff_ids,
        &image_layers(&job.image),
        &label,
    )?;
    let container = gantry_runtime::prepare_container(
        runtime,
        &ContainerRequest {
            purpose: Purpose::Step { name: &s.name },
            session: store.session_dir()?,
            lower: &lower,
            image: image_process(&job.image.config),
            args: s.command.argv(),
            env: &job.env_overrides(),
            user: s.user.as_deref(),
            workdir: s.workdir.as_deref(),
            network: s.network,
            inputs: &s.inputs,
            terminal: false,
        },
    )?;
    let runtime = &container.runtime;
    ctx.reporter.event(&format!("{label}: running"));
    let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let status = runtime
        .run_captured(&container.bundle, &container.id, &mut |_stream, line| {
            ctx.reporter.event(&format!("{label} | {line}"));
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.to_owned());
            }
        })
        .with_context(|| format!("{label}: the runtime ({}) failed", runtime.name()))?;
    if !status.success() {
        let tail = tail.into_inner().unwrap_or_default();
        let shown: Vec<String> = tail.into_iter().map(|l| format!("  | {l}")).collect();
        bail!(
            "{label}: the command {} ({}); last lines:\n{}",
            status,
            s.command.argv().join(" "),
            if shown.is_empty() {
                "  (no output)".to_owned()
            } else {
                shown.join("\n")
            }
        );
    }

    let defaults = gantry_layer::Defaults::new(ctx.source_date_epoch);
    let plan = |recipe| LayerPlan {
        source: LayerSource::Recipe(recipe),
        compressor: s.compressor,
        media_type: None,
        annotations: BTreeMap::new(),
        created_by: format!("gantry step {}: {}", s.name, s.command.argv().join(" ")),
        comment: None,
    };
    let capture_error = || format!("{label}: cannot capture the step's result");
    let info = match &s.capture {
        // Outputs are read from the merged view, so the layer is written before the overlay
        // goes away.
        Capture::Outputs { paths, exclude } => {
            let mut recipe = gantry_layer::capture::outputs_recipe(
                &container.rootfs.path,
                Some(&lower),
                paths,
                exclude,
                defaults,
            )
            .with_context(capture_error)?;
            to_container_owners(&mut recipe, container.rootless.as_ref());
            let (info, _) = crate::layer::build_layer(ctx, store, &plan(recipe), &label)?;
            container.rootfs.release()?;
            info
        }
        // A diff is read from the upper directory (or the copy) once nothing is mounted on
        // it, without the mount points the runtime created.
        Capture::Diff => {
            let upper = container.rootfs.upper.clone();
            let copy = container.rootfs.path.clone();
            container.rootfs.release()?;
            let changed = upper.as_deref().unwrap_or(&copy);
            remove_mount_points(&lower, changed, &mount_points(s))?;
            let mut recipe = match &upper {
                Some(upper) => gantry_layer::capture::overlay_diff_recipe(upper, defaults),
                None => gantry_layer::capture::tree_diff_recipe(&lower, &copy, defaults),
            }
            .with_context(capture_error)?;
            to_container_owners(&mut recipe, container.rootless.as_ref());
            crate::layer::build_layer(ctx, store, &plan(recipe), &label)?.0
        }
    };
    cache.put(key, &info, &[info.descriptor()])?;
    Ok(info)
}

/// Maps the owners of captured entries back to the container's view (rootless only; see
/// [`gantry_runtime::to_container_owners`]).
fn to_container_owners(recipe: &mut gantry_layer::Recipe, maps: Option<&gantry_runtime::IdMaps>) {
    gantry_runtime::to_container_owners(
        recipe
            .entries
            .iter_mut()
            .map(|e| (&mut e.meta.uid, &mut e.meta.gid)),
        maps,
    );
}

/// Where the runtime mounts things in a step's rootfs (relative to it): it creates these when
/// the image lacks them, and they are not the step's work.
fn mount_points(s: &StepTarget) -> Vec<String> {
    let mut v: Vec<String> = ["proc", "dev", "sys", "etc/resolv.conf"]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    v.extend(
        s.inputs
            .keys()
            .map(|d| d.trim_start_matches('/').to_owned()),
    );
    v
}

/// Removes from `changed` (an overlay upper dir, or a full copy) each mount point that the
/// image (`lower`) does not have and that is still empty, then its parents that the image
/// lacks and that are left empty.
fn remove_mount_points(lower: &Path, changed: &Path, points: &[String]) -> Result<()> {
    for p in points {
        let mut rel = PathBuf::from(p);
        loop {
            if rel.as_os_str().is_empty() || lower.join(&rel).symlink_metadata().is_ok() {
                break;
            }
            // The step may have replaced a parent with a symlink: never act through one.
            let mut prefix = changed.to_path_buf();
            let mut through_link = false;
            if let Some(parent) = rel.parent() {
                for c in parent.components() {
                    prefix.push(c);
                    if prefix
                        .symlink_metadata()
                        .is_ok_and(|m| m.file_type().is_symlink())
                    {
                        through_link = true;
                    }
                }
            }
            if through_link {
                break;
            }
            let path = changed.join(&rel);
            let Ok(md) = path.symlink_metadata() else {
                break;
            };
            let removed = if md.is_dir() {
                std::fs::remove_dir(&path).is_ok()
            } else if md.is_file() && md.len() == 0 {
                std::fs::remove_file(&path).is_ok()
            } else {
                false
            };
            if !removed {
                break;
            }
            if !rel.pop() {
                break;
            }
        }
    }
    Ok(())
}
