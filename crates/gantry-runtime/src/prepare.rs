//! Preparing a container from an image: the one sequence `gantry run` and build steps share,
//! so the two cannot drift apart.
//!
//! [`prepare_container`]: the runtime's state root in the store session, the container's user
//! from the image's own account files ([`resolve_user`](crate::resolve_user)), the rootless id
//! maps, a scratch directory with a writable root over the read-only cached rootfs
//! ([`prepare_rootfs`](crate::prepare_rootfs)), and the bundle: environment merged by key,
//! working directory, read-only inputs, network. Running it (inherited terminal or captured
//! lines) is the caller's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{
    BindMount, DEFAULT_PATH, Error, IdMap, IdMaps, PreparedRootfs, Result, RunSpec, Runtime, User,
};

/// The runtime's state directory (`--root`) in a store session: every container of the process
/// lives there, so that the next gantry can stop the containers of one that was killed
/// ([`reap_state_root`](crate::reap_state_root)).
pub const RUNTIME_STATE_DIR: &str = "runtime-state";

/// The process settings of an image's config (`User`, `Env`, `WorkingDir`), as it gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageProcess<'a> {
    /// `User`.
    pub user: Option<&'a str>,
    /// `Env` (`KEY=VALUE` entries).
    pub env: &'a [String],
    /// `WorkingDir`.
    pub working_dir: Option<&'a str>,
}

/// The container environment: the image's, then `overrides` by key; `PATH` defaulted.
pub fn merged_env(image: ImageProcess<'_>, overrides: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    for e in image.env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for (k, v) in overrides {
        set(k, v);
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_owned());
    }
    out
}

/// The image's working directory, else `/`.
pub fn image_workdir(image: ImageProcess<'_>) -> String {
    image
        .working_dir
        .filter(|w| !w.is_empty())
        .unwrap_or("/")
        .to_owned()
}

/// The image's user, else root (empty).
pub fn image_user(image: ImageProcess<'_>) -> String {
    image.user.unwrap_or_default().to_owned()
}

/// The user namespace maps when gantry runs as an unprivileged user (the caller becomes root
/// in the container, its subordinate ranges the other ids); `None` as root.
pub fn rootless_maps() -> Result<Option<IdMaps>> {
    if rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    Ok(Some(IdMaps::current_user()?))
}

/// Rewrites owners (uid, gid) of captured entries from what this process sees on disk to what
/// the container saw (under a user namespace the caller's own files are root's); ids outside
/// the maps become 65534 (nobody), as in the container. Id 0 stays 0: an unprivileged process
/// cannot find root-owned files in its own scratch tree, so those are entries the layer
/// builder made (whiteouts, implicit parent directories), which are root's by definition.
/// Without maps (gantry runs as root) nothing changes.
pub fn to_container_owners<'a>(
    owners: impl IntoIterator<Item = (&'a mut u32, &'a mut u32)>,
    maps: Option<&IdMaps>,
) {
    let Some(maps) = maps else { return };
    let map = |list: &[IdMap], host: u32| {
        if host == 0 {
            return 0;
        }
        list.iter()
            .find(|m| {
                host >= m.host_id && u64::from(host) < u64::from(m.host_id) + u64::from(m.size)
            })
            .map_or(65534, |m| m.container_id + (host - m.host_id))
    };
    for (uid, gid) in owners {
        *uid = map(&maps.uids, *uid);
        *gid = map(&maps.gids, *gid);
    }
}

/// Who a container is for; errors name its settings the way this caller took them.
#[derive(Debug, Clone, Copy)]
pub enum Purpose<'a> {
    /// `gantry run IMAGE` (`--user`, `--workdir`, `--env`).
    Run {
        /// The image as the user named it.
        image: &'a str,
    },
    /// A build step (`[step.NAME]`'s `user`, `workdir`, `env`, `inputs`).
    Step {
        /// The step's name.
        name: &'a str,
    },
}

impl Purpose<'_> {
    /// How messages name the container: the image, or `step.NAME`.
    pub fn label(&self) -> String {
        match self {
            Purpose::Run { image } => (*image).to_owned(),
            Purpose::Step { name } => format!("step.{name}"),
        }
    }

    /// Where the user came from, for errors: the flag, the step's key, or the image config.
    fn user_source(&self, given: Option<&str>, user: &str) -> String {
        match (self, given) {
            (Purpose::Run { .. }, Some(u)) => format!("--user {u:?}"),
            (Purpose::Run { image }, None) => {
                format!("{image}: the image config's User {user:?}")
            }
            (Purpose::Step { .. }, Some(u)) => format!("{}: user {u:?}", self.label()),
            (Purpose::Step { .. }, None) => {
                format!("{}: the base image config's User {user:?}", self.label())
            }
        }
    }

    fn scratch_prefix(&self) -> &'static str {
        match self {
            Purpose::Run { .. } => "run-",
            Purpose::Step { .. } => "step-",
        }
    }

    fn scratch_error(&self) -> &'static str {
        match self {
            Purpose::Run { .. } => "cannot create a scratch directory",
            Purpose::Step { .. } => "cannot create the step's scratch directory",
        }
    }

    fn rootfs_error(&self) -> String {
        match self {
            Purpose::Run { .. } => "cannot prepare the root filesystem".to_owned(),
            Purpose::Step { .. } => {
                format!("{}: cannot prepare the root filesystem", self.label())
            }
        }
    }

    /// `gantry-run-…`, `gantry-<step name>-…`: unique on the host, named for `runc list`.
    fn container_id(&self) -> String {
        let name = match self {
            Purpose::Run { .. } => "run",
            Purpose::Step { name } => name,
        };
        let short: String = name.chars().take(40).collect();
        crate::container_id(&format!("gantry-{short}"))
    }
}

/// What to run, and with which settings of the caller; what is not given comes from the image.
#[derive(Debug, Clone)]
pub struct ContainerRequest<'a> {
    /// Who it is for.
    pub purpose: Purpose<'a>,
    /// The store session directory: the scratch directory and the runtime's state go there.
    pub session: &'a Path,
    /// The image's unpacked root filesystem, never written (overlaid or copied).
    pub lower: &'a Path,
    /// The image config's process settings.
    pub image: ImageProcess<'a>,
    /// The command.
    pub args: Vec<String>,
    /// Environment entries over the image's, by key.
    pub env: &'a [(String, String)],
    /// The user (`uid[:gid]`, `name[:group]`); `None`: the image's.
    pub user: Option<&'a str>,
    /// The working directory; `None`: the image's, else `/`.
    pub workdir: Option<&'a str>,
    /// Share the host's network; off: loopback only.
    pub network: bool,
    /// Read-only bind mounts: path in the container → host path.
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// Give the process a terminal.
    pub terminal: bool,
}

/// A container ready to run: `runtime.run…(&bundle, &id)`.
///
/// Its fields drop in order: the root filesystem is unmounted before the scratch directory
/// that holds it (and the bundle) is removed.
#[derive(Debug)]
pub struct Container {
    /// The writable root (overlay or copy); release it before reading a diff.
    pub rootfs: PreparedRootfs,
    /// The runtime, its state kept in the session's [`RUNTIME_STATE_DIR`].
    pub runtime: Runtime,
    /// The container id.
    pub id: String,
    /// The bundle directory (`config.json`).
    pub bundle: PathBuf,
    /// The id maps of a rootless container (see [`to_container_owners`]).
    pub rootless: Option<IdMaps>,
    /// The scratch directory (the rootfs's upper dir or copy, the bundle), removed last.
    pub scratch: tempfile::TempDir,
}

/// Prepares a container for `request` with `runtime`: resolves the user in the image
/// (before anything is mounted), makes the scratch directory, the writable root and the
/// bundle. Errors name what was being prepared, and where a bad user setting came from.
pub fn prepare_container(runtime: Runtime, request: &ContainerRequest<'_>) -> Result<Container> {
    let r = request;
    let purpose = r.purpose;
    let runtime = runtime.with_state_root(r.session.join(RUNTIME_STATE_DIR));
    let user_spec = match r.user {
        Some(u) => u.to_owned(),
        None => image_user(r.image),
    };
    let mut user = crate::resolve_user(r.lower, &user_spec).map_err(|e| Error::Prepare {
        what: purpose.user_source(r.user, &user_spec),
        source: Box::new(e),
    })?;
    let rootless = rootless_maps()?;
    if rootless.is_some() {
        // runc refuses supplementary groups in a user namespace it does not own.
        user.additional_gids.clear();
    }
    let scratch = tempfile::Builder::new()
        .prefix(purpose.scratch_prefix())
        .tempdir_in(r.session)
        .map_err(|e| Error::Prepare {
            what: purpose.scratch_error().to_owned(),
            source: Box::new(e),
        })?;
    let rootfs = crate::prepare_rootfs(r.lower, scratch.path()).map_err(|e| Error::Prepare {
        what: purpose.rootfs_error(),
        source: Box::new(e),
    })?;
    let spec = RunSpec {
        rootfs: rootfs.path.clone(),
        args: r.args.clone(),
        env: merged_env(r.image, r.env),
        cwd: r
            .workdir
            .map_or_else(|| image_workdir(r.image), str::to_owned),
        user: User {
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
        },
        network: r.network,
        readonly_rootfs: false,
        mounts: r
            .inputs
            .iter()
            .map(|(dest, src)| BindMount {
                source: src.clone(),
                destination: dest.clone(),
                readonly: true,
            })
            .collect(),
        hostname: "gantry".to_owned(),
        terminal: r.terminal,
        rootless: rootless.clone(),
    };
    let bundle = scratch.path().join("bundle");
    crate::write_bundle(&bundle, &spec)?;
    Ok(Container {
        rootfs,
        runtime,
        id: purpose.container_id(),
        bundle,
        rootless,
        scratch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image<'a>(
        env: &'a [String],
        user: Option<&'a str>,
        wd: Option<&'a str>,
    ) -> ImageProcess<'a> {
        ImageProcess {
            user,
            env,
            working_dir: wd,
        }
    }

    #[test]
    fn env_merges_by_key_and_defaults_path() {
        let base = vec!["A=1".to_owned(), "B=2".to_owned()];
        let over = [
            ("B".to_owned(), "3".to_owned()),
            ("C".to_owned(), "=x".to_owned()),
        ];
        assert_eq!(
            merged_env(image(&base, None, None), &over),
            [DEFAULT_PATH, "A=1", "B=3", "C==x"]
        );
        let with_path = vec!["PATH=/bin".to_owned(), "A".to_owned()];
        assert_eq!(
            merged_env(image(&with_path, None, None), &[]),
            ["PATH=/bin", "A="]
        );
        let path_override = [("PATH".to_owned(), "/opt".to_owned())];
        assert_eq!(
            merged_env(image(&[], None, None), &path_override),
            ["PATH=/opt"]
        );
    }

    #[test]
    fn workdir_and_user_default_to_root() {
        assert_eq!(image_workdir(image(&[], None, None)), "/");
        assert_eq!(image_workdir(image(&[], None, Some(""))), "/");
        assert_eq!(image_workdir(image(&[], None, Some("/app"))), "/app");
        assert_eq!(image_user(image(&[], None, None)), "");
        assert_eq!(image_user(image(&[], Some("app:app"), None)), "app:app");
    }

    #[test]
    fn captured_owners_map_back_to_the_container() {
        let maps =
            IdMaps::with_subordinates(1000, 1000, "me", "me:100000:65536\n", "me:200000:10\n");
        let mut owners = [(1000, 1000), (100000, 200009), (0, 0), (5, 200010)];
        to_container_owners(owners.iter_mut().map(|(u, g)| (u, g)), Some(&maps));
        assert_eq!(owners, [(0, 0), (1, 10), (0, 0), (65534, 65534)]);
        let mut same = [(1000, 5)];
        to_container_owners(same.iter_mut().map(|(u, g)| (u, g)), None);
        assert_eq!(same, [(1000, 5)]);
    }

    #[test]
    fn errors_name_where_the_user_came_from() {
        let run = Purpose::Run { image: "oci:x" };
        let step = Purpose::Step { name: "build" };
        assert_eq!(run.user_source(Some("ghost"), "ghost"), "--user \"ghost\"");
        assert_eq!(
            run.user_source(None, "nobody"),
            "oci:x: the image config's User \"nobody\""
        );
        assert_eq!(
            step.user_source(Some("app"), "app"),
            "step.build: user \"app\""
        );
        assert_eq!(
            step.user_source(None, "nobody"),
            "step.build: the base image config's User \"nobody\""
        );
    }
}
