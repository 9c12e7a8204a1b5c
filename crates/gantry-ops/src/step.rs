//! Running commands inside images: the rootfs of an image (unpacked once per chain id into the
//! rootfs cache), the container's process settings from the image config and the step or
//! command line, and `[step.NAME]` targets whose outputs or filesystem diff become a layer.
//!
//! ```text
//! image ─► layer blobs (store, layout, or fetched from the registry into the store)
//!   └─ RootfsCache::get_or_unpack(diff_ids)        $GANTRY_HOME/rootfs/v2/<chain id>, read-only use;
//!                                                   each layer verified against its diff_id
//!        └─ prepare_rootfs(lower, scratch)         overlayfs (upper = the diff) or a copy
//!             └─ bundle (config.json) + crun/runc  network off unless asked, inputs bound ro
//!                  └─ outputs_recipe / overlay_diff_recipe / tree_diff_recipe ─► write_layer
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, anyhow, bail};
use gantry_cache::{ActionCache, CacheKey, KeyHasher};
use gantry_image::{BlobSource, Image};
use gantry_layer::{LayerInfo, LayerPlan, LayerSource};
use gantry_oci::{Descriptor, Digest, Hasher, ImageConfig};
use gantry_project::{Capture, StepTarget};
use gantry_registry::Client;
use gantry_runtime::{BindMount, RunSpec, Runtime};
use gantry_store::Store;

use crate::Context;

/// Bumped when the meaning of a step's cache key changes (2: output layers leave out the
/// parent directories the image already has).
const STEP_CACHE_VERSION: u64 = 2;
/// `/etc/passwd` and `/etc/group` are read up to this size.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;
/// Lines of a failed step's output shown in the error.
const TAIL_LINES: usize = 20;
/// The `PATH` a container gets when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The OCI runtime for this context (`--runtime`, `GANTRY_RUNTIME`, else detected).
pub(crate) fn runtime(ctx: &Context) -> Result<Runtime> {
    Ok(Runtime::detect(ctx.runtime.as_deref())?)
}

/// The runtime's state directory (`--root`) in a store session: every container of the
/// process lives there, so that the next gantry can stop the containers of one that was killed
/// (see [`reap_containers`]).
pub(crate) const RUNTIME_STATE_DIR: &str = "runtime-state";

/// The runtime for this context, keeping its container state in the store's session.
pub(crate) fn session_runtime(ctx: &Context, store: &Store) -> Result<Runtime> {
    Ok(runtime(ctx)?.with_state_root(store.session_dir()?.join(RUNTIME_STATE_DIR)))
}

/// Stops the containers a dead gantry left running in its session `dir` (called before the
/// store removes the session), and reports them.
pub(crate) fn reap_containers(reporter: &dyn crate::Reporter, dir: &Path) {
    match gantry_runtime::reap_state_root(&dir.join(RUNTIME_STATE_DIR)) {
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

/// A numeric user for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NumericUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) additional_gids: Vec<u32>,
}

/// Resolves `user` (`uid[:gid]`, `name[:group]`, empty for root) against the rootfs's
/// /etc/passwd and /etc/group, read inside the root with a size cap: no NSS, nothing from
/// the image is executed.
pub(crate) fn resolve_user(rootfs: &Path, user: &str) -> Result<NumericUser> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = || read_account_file(rootfs, "etc/passwd");
    let (uid, primary) = if u.is_empty() {
        (0, 0)
    } else if let Ok(n) = u.parse::<u32>() {
        let primary = passwd()?
            .lines()
            .filter_map(|l| parse_passwd(l))
            .find(|e| e.1 == n)
            .map_or(0, |e| e.2);
        (n, primary)
    } else {
        let text = passwd()?;
        let e = text
            .lines()
            .filter_map(|l| parse_passwd(l))
            .find(|e| e.0 == u)
            .ok_or_else(|| anyhow!("user {u:?} is not in the image's /etc/passwd"))?;
        (e.1, e.2)
    };
    let groups = read_account_file(rootfs, "etc/group")?;
    let gid = match g {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .filter_map(|l| parse_group(l))
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| anyhow!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    // Supplementary groups of a named user.
    let mut additional_gids = Vec::new();
    if !u.is_empty() && u.parse::<u32>().is_err() {
        for (_, id, members) in groups.lines().filter_map(|l| parse_group(l)) {
            if id != gid && members.split(',').any(|m| m == u) && !additional_gids.contains(&id) {
                additional_gids.push(id);
            }
        }
    }
    Ok(NumericUser {
        uid,
        gid,
        additional_gids,
    })
}

fn parse_passwd(line: &str) -> Option<(&str, u32, u32)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _pw = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    Some((name, uid, gid))
}

fn parse_group(line: &str) -> Option<(&str, u32, &str)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _pw = f.next()?;
    let gid = f.next()?.parse().ok()?;
    Some((name, gid, f.next().unwrap_or("")))
}

/// A file of the rootfs, resolved inside it (an absent file reads as empty).
fn read_account_file(rootfs: &Path, rel: &str) -> Result<String> {
    match gantry_unpack::read_in_root(rootfs, rel, MAX_ACCOUNT_FILE) {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(anyhow!("cannot read /{rel} of the image: {e}")),
    }
}

/// The container environment: the image's, then `overrides` by key; `PATH` defaulted.
pub(crate) fn merged_env(config: &ImageConfig, overrides: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let base = config
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    for e in &base {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for (k, v) in overrides {
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The image's working directory, else `/`.
pub(crate) fn image_workdir(config: &ImageConfig) -> String {
    config
        .config
        .as_ref()
        .and_then(|c| c.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_owned())
}

/// The image's user, else root.
pub(crate) fn image_user(config: &ImageConfig) -> String {
    config
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default()
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
        let env = merged_env(&self.image.config, &self.env_overrides());
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
            .unwrap_or_else(|| image_user(&self.image.config))
    }

    fn workdir(&self) -> String {
        self.step
            .workdir
            .clone()
            .unwrap_or_else(|| image_workdir(&self.image.config))
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
    let runtime = session_runtime(ctx, store)?;
    let lower = cached_rootfs(
        ctx,
        store,
        client,
        &job.image.config.rootfs.diff_ids,
        &image_layers(&job.image),
        &label,
    )?;
    let scratch = tempfile::Builder::new()
        .prefix("step-")
        .tempdir_in(store.session_dir()?)
        .context("cannot create the step's scratch directory")?;
    let prepared = gantry_runtime::prepare_rootfs(&lower, scratch.path())
        .with_context(|| format!("{label}: cannot prepare the root filesystem"))?;
    let user_source = match &s.user {
        Some(u) => format!("{label}: user {u:?}"),
        None => format!("{label}: the base image config's User {:?}", job.user()),
    };
    let mut user = resolve_user(&lower, &job.user()).context(user_source)?;
    let rootless = rootless_maps()?;
    if rootless.is_some() {
        // runc refuses supplementary groups in a user namespace it does not own.
        user.additional_gids.clear();
    }
    let spec = RunSpec {
        rootfs: prepared.path.clone(),
        args: s.command.argv(),
        env: merged_env(&job.image.config, &job.env_overrides()),
        cwd: job.workdir(),
        user: gantry_runtime::User {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
        },
        network: s.network,
        readonly_rootfs: false,
        mounts: s
            .inputs
            .iter()
            .map(|(dest, src)| BindMount {
                source: src.clone(),
                destination: dest.clone(),
                readonly: true,
            })
            .collect(),
        hostname: "gantry".to_owned(),
        terminal: false,
        rootless: rootless.clone(),
    };
    let bundle = scratch.path().join("bundle");
    gantry_runtime::write_bundle(&bundle, &spec)?;
    ctx.reporter.event(&format!("{label}: running"));
    let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let status = runtime
        .run_captured(&bundle, &container_id(&s.name), &mut |_stream, line| {
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
                &prepared.path,
                Some(&lower),
                paths,
                exclude,
                defaults,
            )
            .with_context(capture_error)?;
            to_container_owners(&mut recipe, rootless.as_ref());
            let (info, _) = crate::layer::build_layer(ctx, store, &plan(recipe), &label)?;
            prepared.release()?;
            info
        }
        // A diff is read from the upper directory (or the copy) once nothing is mounted on
        // it, without the mount points the runtime created.
        Capture::Diff => {
            let upper = prepared.upper.clone();
            let copy = prepared.path.clone();
            prepared.release()?;
            let changed = upper.as_deref().unwrap_or(&copy);
            remove_mount_points(&lower, changed, &mount_points(s))?;
            let mut recipe = match &upper {
                Some(upper) => gantry_layer::capture::overlay_diff_recipe(upper, defaults),
                None => gantry_layer::capture::tree_diff_recipe(&lower, &copy, defaults),
            }
            .with_context(capture_error)?;
            to_container_owners(&mut recipe, rootless.as_ref());
            crate::layer::build_layer(ctx, store, &plan(recipe), &label)?.0
        }
    };
    cache.put(key, &info, &[info.descriptor()])?;
    Ok(info)
}

/// The user namespace maps when gantry runs as an unprivileged user (the caller becomes root
/// in the container, its subordinate ranges the other ids); `None` as root.
pub(crate) fn rootless_maps() -> Result<Option<gantry_runtime::IdMaps>> {
    if rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    Ok(Some(gantry_runtime::IdMaps::current_user()?))
}

/// Rewrites the owners of captured entries from what this process sees on disk to what the
/// container saw (under a user namespace the caller's own files are root's); ids outside the
/// maps become 65534 (nobody), as in the container. Id 0 stays 0: an unprivileged process
/// cannot find root-owned files in its own scratch tree, so those are entries the layer
/// builder made (whiteouts, implicit parent directories), which are root's by definition.
fn to_container_owners(recipe: &mut gantry_layer::Recipe, maps: Option<&gantry_runtime::IdMaps>) {
    let Some(maps) = maps else { return };
    let map = |list: &[gantry_runtime::IdMap], host: u32| {
        if host == 0 {
            return 0;
        }
        list.iter()
            .find(|m| {
                host >= m.host_id && u64::from(host) < u64::from(m.host_id) + u64::from(m.size)
            })
            .map_or(65534, |m| m.container_id + (host - m.host_id))
    };
    for e in &mut recipe.entries {
        e.meta.uid = map(&maps.uids, e.meta.uid);
        e.meta.gid = map(&maps.gids, e.meta.gid);
    }
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

/// A container id unique to this process and moment.
pub(crate) fn container_id(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "gantry-{clean}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_image_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(d.path(), u).unwrap();
        assert_eq!(
            r("app"),
            NumericUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10]
            }
        );
        assert_eq!(r("1000").gid, 1001);
        assert_eq!(r("1000:10").gid, 10);
        assert_eq!(r("app:wheel").gid, 10);
        assert_eq!(r("").uid, 0);
        assert_eq!(r("4242").gid, 0);
        let e = resolve_user(d.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("\"nobody\""), "{e}");
    }

    #[test]
    fn account_files_are_read_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(d.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        // An absolute symlink out of the root resolves inside it (and finds nothing).
        std::os::unix::fs::symlink(d.path().join("passwd"), root.join("etc/passwd")).unwrap();
        let e = resolve_user(&root, "evil").unwrap_err().to_string();
        assert!(e.contains("not in the image's /etc/passwd"), "{e}");
    }
}
