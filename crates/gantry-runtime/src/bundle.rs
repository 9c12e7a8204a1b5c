//! Bundles: a [`RunSpec`] → `config.json` with oci-spec's runtime types.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime as oci;
use oci_spec::runtime::{Capability, LinuxNamespaceType};
use serde_json::Value;

use crate::{Error, Result};

/// `PATH` for a process whose spec sets none (the value runc and Docker use).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The soft `RLIMIT_NOFILE` a container gets when the caller's is higher.
pub const NOFILE_SOFT_CAP: u64 = 1 << 20;

/// The capabilities of Docker's default profile (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The identity of the container's process, as numbers in the container's user namespace
/// (names are resolved by the caller, from the image's `/etc/passwd`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

/// A host path bind-mounted into the container (`rbind`, never propagating back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the container; created in the rootfs by the runtime if missing.
    pub destination: String,
    /// Mount it read-only.
    pub readonly: bool,
}

/// One contiguous id mapping of a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside the container.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids.
    pub size: u32,
}

/// The uid and gid mappings of a rootless container.
///
/// The caller's own uid/gid become 0 in the container. Subordinate ranges from `/etc/subuid`
/// and `/etc/subgid` follow from container id 1 on, so images with other users (`chown 1000`,
/// `USER 1000`) work. Writing more than one mapping needs the setuid helpers `newuidmap` and
/// `newgidmap` (Debian package `uidmap`), which runc and crun call when the kernel refuses a
/// direct write; [`IdMaps::current_user`] leaves the subordinate ranges out when they are
/// missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// uid mappings.
    pub uids: Vec<IdMap>,
    /// gid mappings.
    pub gids: Vec<IdMap>,
}

impl IdMaps {
    /// Only the caller: `uid` → 0 and `gid` → 0. Needs no helper, but the container has no
    /// other users or groups.
    pub fn single(uid: u32, gid: u32) -> IdMaps {
        IdMaps {
            uids: vec![IdMap {
                container_id: 0,
                host_id: uid,
                size: 1,
            }],
            gids: vec![IdMap {
                container_id: 0,
                host_id: gid,
                size: 1,
            }],
        }
    }

    /// The caller (`uid`/`gid` → 0) plus the ranges that `subuid` and `subgid` (the contents of
    /// `/etc/subuid` and `/etc/subgid`) grant to `user` (by name or number), in file order from
    /// container id 1 on. Malformed lines, empty ranges and ranges that contain the caller's own
    /// id are ignored.
    pub fn with_subordinates(uid: u32, gid: u32, user: &str, subuid: &str, subgid: &str) -> IdMaps {
        let mut maps = IdMaps::single(uid, gid);
        append_subordinates(&mut maps.uids, uid, user, uid, subuid);
        append_subordinates(&mut maps.gids, gid, user, uid, subgid);
        maps
    }

    /// [`IdMaps::with_subordinates`] with the system's `/etc/subuid` and `/etc/subgid`
    /// (a missing file grants nothing).
    pub fn for_user(uid: u32, gid: u32, user: &str) -> Result<IdMaps> {
        let read = |p: &str| match fs::read_to_string(p) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::io(format!("reading {p}"), e)),
        };
        Ok(IdMaps::with_subordinates(
            uid,
            gid,
            user,
            &read("/etc/subuid")?,
            &read("/etc/subgid")?,
        ))
    }

    /// The maps for the calling process: its real uid/gid, its name from `/etc/passwd`, its
    /// subordinate ranges — kept only if `newuidmap` and `newgidmap` are installed (otherwise a
    /// warning is logged and the single mapping is used).
    pub fn current_user() -> Result<IdMaps> {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let name = user_name(uid).unwrap_or_else(|| uid.to_string());
        let maps = IdMaps::for_user(uid, gid, &name)?;
        if maps.needs_helpers() {
            let missing: Vec<&str> = ["newuidmap", "newgidmap"]
                .into_iter()
                .filter(|t| {
                    crate::detect::find_program(t, &crate::detect::default_search_path()).is_none()
                })
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    user = %name,
                    "{} not installed (apt-get install uidmap): using a single-id mapping; \
                     the container has only root",
                    missing.join(" and ")
                );
                return Ok(IdMaps::single(uid, gid));
            }
        }
        Ok(maps)
    }

    /// Whether writing these maps needs `newuidmap`/`newgidmap` (more than one mapping).
    pub fn needs_helpers(&self) -> bool {
        self.uids.len() > 1 || self.gids.len() > 1
    }

    /// Whether container uid `id` is mapped.
    pub fn maps_uid(&self, id: u32) -> bool {
        maps_id(&self.uids, id)
    }

    /// Whether container gid `id` is mapped.
    pub fn maps_gid(&self, id: u32) -> bool {
        maps_id(&self.gids, id)
    }
}

fn maps_id(maps: &[IdMap], id: u32) -> bool {
    maps.iter().any(|m| {
        id >= m.container_id && u64::from(id) < u64::from(m.container_id) + u64::from(m.size)
    })
}

/// Appends `user`'s ranges of a subuid/subgid `file` (entries name the user or their uid);
/// `own` is the caller's id of that kind, already mapped to 0.
fn append_subordinates(maps: &mut Vec<IdMap>, own: u32, user: &str, uid: u32, file: &str) {
    let mut next: u64 = 1;
    for line in file.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split(':');
        let (Some(who), Some(start), Some(count), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if who != user && who.parse::<u32>() != Ok(uid) {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
            continue;
        };
        let end = u64::from(start) + u64::from(count);
        if count == 0 || end > u64::from(u32::MAX) || next + u64::from(count) > u64::from(u32::MAX)
        {
            continue;
        }
        if (u64::from(start)..end).contains(&u64::from(own)) {
            continue;
        }
        let overlaps = maps.iter().any(|m| {
            let m_end = u64::from(m.host_id) + u64::from(m.size);
            u64::from(start) < m_end && u64::from(m.host_id) < end
        });
        if overlaps {
            continue;
        }
        maps.push(IdMap {
            container_id: next as u32,
            host_id: start,
            size: count,
        });
        next += u64::from(count);
    }
}

/// The name of `uid` in `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// What to run in a container, with which isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The root filesystem (made absolute when the bundle is written).
    pub rootfs: PathBuf,
    /// The command and its arguments (`args[0]` is looked up on the `PATH` of `env`).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, exactly as the process gets them.
    pub env: Vec<String>,
    /// Absolute working directory (created by the runtime if missing).
    pub cwd: String,
    /// The process's ids in the container. Rootless: every id must be mapped, and there are no
    /// supplementary groups (runc refuses them).
    pub user: User,
    /// Share the host's network namespace (and its `/etc/resolv.conf`). Off: a new network
    /// namespace with only the loopback interface, which runc and crun bring up.
    pub network: bool,
    /// Mount the rootfs read-only.
    pub readonly_rootfs: bool,
    /// Bind mounts, in order (a parent before anything mounted below it).
    pub mounts: Vec<BindMount>,
    /// The container's hostname (own UTS namespace); empty leaves the runtime's default.
    pub hostname: String,
    /// Give the process a pseudo-terminal (needs [`crate::Stdio::Inherit`] on a terminal).
    pub terminal: bool,
    /// Run in a user namespace with these mappings (rootless).
    pub rootless: Option<IdMaps>,
}

impl RunSpec {
    /// Runs `args` as root in `/`, with [`DEFAULT_PATH`], no network, hostname `gantry`.
    pub fn new(rootfs: impl Into<PathBuf>, args: Vec<String>) -> RunSpec {
        RunSpec {
            rootfs: rootfs.into(),
            args,
            env: vec![DEFAULT_PATH.to_owned()],
            cwd: "/".to_owned(),
            user: User::default(),
            network: false,
            readonly_rootfs: false,
            mounts: Vec::new(),
            hostname: "gantry".to_owned(),
            terminal: false,
            rootless: None,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSpec(m));
        if self.args.is_empty() {
            return bad("no command (args is empty)".into());
        }
        if !self.cwd.starts_with('/') {
            return bad(format!("working directory {:?} is not absolute", self.cwd));
        }
        if let Some(e) = self
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return bad(format!("environment entry {e:?} is not KEY=VALUE"));
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') {
                return bad(format!(
                    "mount destination {:?} is not absolute",
                    m.destination
                ));
            }
            if !m.source.is_absolute() {
                return bad(format!(
                    "mount source {} is not absolute",
                    m.source.display()
                ));
            }
        }
        if let Some(maps) = &self.rootless {
            if !maps.maps_uid(0) || !maps.maps_gid(0) {
                return bad("rootless id maps do not map the container's root".into());
            }
            let u = &self.user;
            if !maps.maps_uid(u.uid) {
                return bad(format!(
                    "uid {} is not mapped in the rootless user namespace (add a range for this \
                     user to /etc/subuid and install newuidmap)",
                    u.uid
                ));
            }
            if let Some(g) = std::iter::once(&u.gid)
                .chain(&u.additional_gids)
                .find(|g| !maps.maps_gid(**g))
            {
                return bad(format!(
                    "gid {g} is not mapped in the rootless user namespace (add a range for this \
                     user to /etc/subgid and install newgidmap)"
                ));
            }
            if !u.additional_gids.is_empty() {
                // runc refuses them whenever it runs rootless ("cannot set any additional
                // groups in a rootless container"), even with newgidmap.
                return bad(format!(
                    "supplementary groups {:?} cannot be set in a rootless container",
                    u.additional_gids
                ));
            }
        }
        Ok(())
    }
}

/// The caller's `RLIMIT_NOFILE` as the container's: soft = min(caller's soft, 2^20), hard =
/// caller's hard. Never above the caller's limits, which a container may not raise.
pub(crate) fn nofile_limits() -> (u64, u64) {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = l.maximum.unwrap_or(u64::MAX);
    let soft = l.current.unwrap_or(u64::MAX).min(NOFILE_SOFT_CAP).min(hard);
    (soft, hard)
}

fn mount(
    dest: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<oci::Mount> {
    Ok(oci::MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source.into())
        .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .build()?)
}

fn id_mappings(maps: &[IdMap]) -> Result<Vec<oci::LinuxIdMapping>> {
    maps.iter()
        .map(|m| {
            Ok(oci::LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.size)
                .build()?)
        })
        .collect()
}

/// Builds the runtime spec for `spec` (the rootfs path as given).
pub(crate) fn build_spec(spec: &RunSpec, rootfs: &Path) -> Result<oci::Spec> {
    let rootless = spec.rootless.is_some();

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        if rootless {
            // gid 5 (tty) may not be mapped.
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            )?
        } else {
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            )?
        },
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        if rootless && spec.network {
            // sysfs cannot be mounted from a user namespace that does not own the network
            // namespace (here the host's); bind the host's read-only instead (as
            // `runc spec --rootless` does).
            mount(
                "/sys",
                "none",
                "/sys",
                &["rbind", "nosuid", "noexec", "nodev", "ro"],
            )?
        } else {
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            )?
        },
    ];
    if spec.network {
        let resolv = Path::new("/etc/resolv.conf");
        if resolv.exists() {
            mounts.push(mount(
                "/etc/resolv.conf",
                "bind",
                resolv,
                &["rbind", "ro", "nosuid", "nodev", "noexec"],
            )?);
        }
    }
    for m in &spec.mounts {
        let mode = if m.readonly { "ro" } else { "rw" };
        mounts.push(mount(
            &m.destination,
            "bind",
            m.source.clone(),
            &["rbind", mode, "rprivate"],
        )?);
    }

    let (soft, hard) = nofile_limits();
    let rlimit = oci::PosixRlimitBuilder::default()
        .typ(oci::PosixRlimitType::RlimitNofile)
        .soft(soft)
        .hard(hard)
        .build()?;

    let all: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    // Like Docker: a non-root process keeps the bounding set but starts without effective or
    // permitted capabilities, as it would outside a container.
    let own = if spec.user.uid == 0 {
        all.clone()
    } else {
        HashSet::new()
    };
    let mut caps = oci::LinuxCapabilities::default();
    caps.set_bounding(Some(all))
        .set_effective(Some(own.clone()))
        .set_permitted(Some(own))
        .set_inheritable(None)
        .set_ambient(None);

    let mut user = oci::User::default();
    user.set_uid(spec.user.uid)
        .set_gid(spec.user.gid)
        .set_umask(None)
        .set_username(None)
        .set_additional_gids(
            (!spec.user.additional_gids.is_empty()).then(|| spec.user.additional_gids.clone()),
        );

    let mut process = oci::Process::default();
    process
        .set_terminal(Some(spec.terminal))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(spec.args.clone()))
        .set_command_line(None)
        .set_env(Some(spec.env.clone()))
        .set_cwd(PathBuf::from(&spec.cwd))
        .set_capabilities(Some(caps))
        .set_rlimits(Some(vec![rlimit]))
        .set_no_new_privileges(Some(true))
        .set_apparmor_profile(None)
        .set_oom_score_adj(None)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if !spec.network {
        namespaces.push(LinuxNamespaceType::Network);
    }
    if rootless {
        namespaces.push(LinuxNamespaceType::User);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| Ok(oci::LinuxNamespaceBuilder::default().typ(t).build()?))
        .collect::<Result<Vec<_>>>()?;

    let mut linux = oci::Linux::default();
    linux
        .set_net_devices(None)
        .set_uid_mappings(
            spec.rootless
                .as_ref()
                .map(|m| id_mappings(&m.uids))
                .transpose()?,
        )
        .set_gid_mappings(
            spec.rootless
                .as_ref()
                .map(|m| id_mappings(&m.gids))
                .transpose()?,
        )
        .set_sysctl(None)
        // No cgroup settings at all: nothing needs a delegated cgroup, and rootless runtimes
        // skip cgroups they cannot create.
        .set_resources(None)
        .set_cgroups_path(None)
        .set_namespaces(Some(namespaces))
        .set_devices(None)
        .set_seccomp(None)
        .set_rootfs_propagation(None)
        .set_masked_paths(Some(oci::get_default_maskedpaths()))
        .set_readonly_paths(Some(oci::get_default_readonly_paths()))
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);

    let mut root = oci::Root::default();
    root.set_path(rootfs.to_path_buf())
        .set_readonly(Some(spec.readonly_rootfs));

    let mut out = oci::Spec::default();
    out.set_version("1.0.2".to_owned())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname((!spec.hostname.is_empty()).then(|| spec.hostname.clone()))
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(None)
        .set_linux(Some(linux))
        .set_solaris(None)
        .set_windows(None)
        .set_vm(None)
        .set_zos(None);
    Ok(out)
}

/// The bytes of `config.json` for `spec`: oci-spec's serialisation with capability sets (hash
/// sets) sorted, object keys sorted, pretty-printed. The same spec always gives the same bytes.
pub(crate) fn config_json(spec: &RunSpec, rootfs: &Path) -> Result<Vec<u8>> {
    let built = build_spec(spec, rootfs)?;
    let mut value =
        serde_json::to_value(&built).map_err(|e| Error::Spec(oci_spec::OciSpecError::SerDe(e)))?;
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    let value = sort_keys(value);
    let mut bytes = serde_json::to_vec_pretty(&value)
        .map_err(|e| Error::Spec(oci_spec::OciSpecError::SerDe(e)))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Writes `dir/config.json` for `spec` (creating `dir`). The rootfs path is made absolute, so
/// the bundle directory and the rootfs may live apart.
///
/// The runtime creates missing mount points in the rootfs (`/proc`, `/dev`, `/sys`, each bind
/// destination, `/etc/resolv.conf` with `network`, the `cwd`): whoever captures a step's diff
/// must leave those out or create them in the lower tree first.
pub fn write_bundle(dir: &Path, spec: &RunSpec) -> Result<()> {
    spec.validate()?;
    let rootfs = std::path::absolute(&spec.rootfs)
        .map_err(|e| Error::io(format!("resolving {}", spec.rootfs.display()), e))?;
    if !rootfs.is_dir() {
        return Err(Error::InvalidSpec(format!(
            "rootfs {} is not a directory",
            rootfs.display()
        )));
    }
    let bytes = config_json(spec, &rootfs)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(".config.json.tmp");
    let dest = dir.join("config.json");
    fs::write(&tmp, &bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, &dest).map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
    tracing::debug!(bundle = %dir.display(), rootless = spec.rootless.is_some(), network = spec.network, "wrote config.json");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::new("/rootfs", vec!["sh".into(), "-c".into(), "true".into()])
    }

    fn json(spec: &RunSpec) -> Value {
        serde_json::from_slice(&config_json(spec, Path::new("/rootfs")).unwrap()).unwrap()
    }

    #[test]
    fn deterministic_and_sorted() {
        let a = config_json(&spec(), Path::new("/rootfs")).unwrap();
        for _ in 0..20 {
            assert_eq!(a, config_json(&spec(), Path::new("/rootfs")).unwrap());
        }
        let v = json(&spec());
        let bounding: Vec<&str> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let mut sorted = bounding.clone();
        sorted.sort_unstable();
        assert_eq!(bounding, sorted);
        assert_eq!(bounding.len(), 14);
        assert!(bounding.contains(&"CAP_NET_BIND_SERVICE"));
    }

    #[test]
    fn shape() {
        let v = json(&spec());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "hostname",
                "linux",
                "mounts",
                "ociVersion",
                "process",
                "root"
            ]
        );
        let linux = v["linux"].as_object().unwrap();
        let keys: Vec<&String> = linux.keys().collect();
        assert_eq!(keys, ["maskedPaths", "namespaces", "readonlyPaths"]);
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        let p = &v["process"];
        assert_eq!(p["noNewPrivileges"], true);
        assert!(p["capabilities"].get("inheritable").is_none());
        assert!(p["capabilities"].get("ambient").is_none());
        let rl = p["rlimits"].as_array().unwrap();
        assert_eq!(rl.len(), 1);
        assert_eq!(rl[0]["type"], "RLIMIT_NOFILE");
        let (soft, hard) = nofile_limits();
        assert_eq!(rl[0]["soft"], soft);
        assert_eq!(rl[0]["hard"], hard);
        assert!(soft <= hard && soft <= NOFILE_SOFT_CAP);
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys"
            ]
        );
        assert_eq!(v["root"]["path"], "/rootfs");
    }

    #[test]
    fn network_and_rootless() {
        let mut s = spec();
        s.network = true;
        s.user.uid = 1000;
        s.rootless = Some(IdMaps::with_subordinates(
            1234,
            1234,
            "alice",
            "alice:100000:65536\nbob:300000:10\n",
            "1234:200000:65536\n",
        ));
        let v = json(&s);
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "user"]);
        assert_eq!(
            v["linux"]["uidMappings"],
            serde_json::json!([
                {"containerID": 0, "hostID": 1234, "size": 1},
                {"containerID": 1, "hostID": 100000, "size": 65536}
            ])
        );
        assert_eq!(
            v["linux"]["gidMappings"][1],
            serde_json::json!({"containerID": 1, "hostID": 200000, "size": 65536})
        );
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(sys["options"][0], "rbind");
        // Without the host network, the user namespace owns the new network namespace and
        // may mount a sysfs of its own (showing only its `lo`).
        s.network = false;
        let v2 = json(&s);
        let sys = v2["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(sys["type"], "sysfs");
        // A non-root process has no effective capabilities.
        assert_eq!(
            v["process"]["capabilities"]["effective"],
            serde_json::json!([])
        );
        if Path::new("/etc/resolv.conf").exists() {
            assert!(
                v["mounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["destination"] == "/etc/resolv.conf")
            );
        }
    }

    #[test]
    fn subordinate_parsing() {
        let m = IdMaps::with_subordinates(
            1000,
            1000,
            "u",
            "# c\nu:100000:10\nu:bad:1\nu:0:2000\nu:100005:3\nu:200000:5\n",
            "",
        );
        // The range containing 1000 and the one overlapping 100000..100010 are skipped.
        assert_eq!(
            m.uids,
            [
                IdMap {
                    container_id: 0,
                    host_id: 1000,
                    size: 1
                },
                IdMap {
                    container_id: 1,
                    host_id: 100000,
                    size: 10
                },
                IdMap {
                    container_id: 11,
                    host_id: 200000,
                    size: 5
                },
            ]
        );
        assert_eq!(m.gids.len(), 1);
        assert!(m.needs_helpers());
        assert!(m.maps_uid(15) && !m.maps_uid(16));
    }

    #[test]
    fn rejects_unmapped_and_bad_specs() {
        let mut s = spec();
        s.rootless = Some(IdMaps::single(1000, 1000));
        s.user.uid = 1000;
        let e = config_or_err(&s);
        assert!(e.contains("uid 1000 is not mapped"), "{e}");
        let mut s = spec();
        s.cwd = "work".into();
        assert!(config_or_err(&s).contains("not absolute"));
        let mut s = spec();
        s.args.clear();
        assert!(config_or_err(&s).contains("no command"));
    }

    fn config_or_err(s: &RunSpec) -> String {
        s.validate().unwrap_err().to_string()
    }
}
