use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use gantry_store::{Store, StoreOptions, Wait};

/// How commands report progress and warnings. The binary implements it with progress bars.
pub trait Reporter: Send + Sync {
    /// A progress sink for writing a layer of `total` input bytes, labelled `label`.
    fn layer_progress(&self, label: &str, total: u64) -> Box<dyn gantry_layer::Progress>;
    /// Something the user should know that is not an error.
    fn warn(&self, message: &str);
    /// A step of a build (a target started, came from the cache, finished).
    fn event(&self, message: &str) {
        let _ = message;
    }
}

/// A [`Reporter`] that reports nothing.
pub struct NoReporter;

impl Reporter for NoReporter {
    fn layer_progress(&self, _: &str, _: u64) -> Box<dyn gantry_layer::Progress> {
        Box::new(gantry_layer::NoProgress)
    }
    fn warn(&self, _: &str) {}
}

/// Everything a command needs from its environment, resolved once.
#[derive(Clone)]
pub struct Context {
    /// The store directory.
    pub home: PathBuf,
    /// Compression threads.
    pub jobs: usize,
    /// `SOURCE_DATE_EPOCH` (0 when unset): image and history times, default mtimes.
    pub source_date_epoch: i64,
    /// Whether `SOURCE_DATE_EPOCH` was set in the environment (it then wins over projects).
    pub source_date_epoch_from_env: bool,
    /// The directory relative paths on the command line are taken from.
    pub cwd: PathBuf,
    /// Progress and warnings.
    pub reporter: Arc<dyn Reporter>,
    /// Registry options from the command line.
    pub registry: RegistryOptions,
    /// The OCI runtime asked for (`--runtime`, `GANTRY_RUNTIME`); `None` detects one.
    pub runtime: Option<String>,
    /// `--cache-from`: a registry repository read for cache entries.
    pub cache_from: Option<String>,
    /// `--cache-to`: a registry repository read and written for cache entries.
    pub cache_to: Option<String>,
    /// Caps on decompressing layers (tar imports, unpacking): the defaults, then a project's
    /// `max-layer-size` / `max-image-size` / `max-ratio` ([`Context::with_settings`]), then
    /// the flags.
    pub limits: gantry_layer::Limits,
    /// `--max-layer-size` and `--max-image-size` as given: they win over a project's settings.
    pub size_flags: SizeFlags,
}

/// Sizes given on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeFlags {
    /// `--max-layer-size`.
    pub max_layer_size: Option<u64>,
    /// `--max-image-size`.
    pub max_image_size: Option<u64>,
    /// `--max-ratio`.
    pub max_ratio: Option<u64>,
}

/// Registry options from the command line (a project's settings add to them).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts that may be reached over plain HTTP or unverified TLS.
    pub insecure: Vec<String>,
    /// Extra CA files per host.
    pub ca_files: Vec<(String, PathBuf)>,
    /// The credentials file.
    pub auth_file: Option<PathBuf>,
    /// Fetch what a layout lacks from the registry its `base.name` annotation names, even
    /// when gantry did not write that layout (`--follow-base-name`).
    pub follow_base_name: bool,
    /// `--registry-timeout` / `GANTRY_REGISTRY_TIMEOUT`: seconds (over `registry-timeout` in
    /// a project's settings).
    pub timeout: Option<u64>,
}

/// `$XDG_CACHE_HOME/gantry`, else `~/.cache/gantry`.
pub fn default_home() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("gantry"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find a store directory: set GANTRY_HOME, XDG_CACHE_HOME or HOME")?;
    Ok(PathBuf::from(home).join(".cache").join("gantry"))
}

impl Context {
    /// Resolves the context from flags and the environment (`SOURCE_DATE_EPOCH`).
    pub fn new(
        home: Option<PathBuf>,
        jobs: Option<usize>,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let home = match home {
            Some(h) => cwd.join(h),
            None => default_home()?,
        };
        let jobs = match jobs {
            Some(0) => anyhow::bail!("GANTRY_JOBS / --jobs must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let from_env = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => Some(gantry_oci::time::parse_source_date_epoch(&v)?),
            _ => None,
        };
        Ok(Context {
            home,
            jobs,
            source_date_epoch: from_env.unwrap_or(0),
            source_date_epoch_from_env: from_env.is_some(),
            cwd,
            reporter,
            registry: RegistryOptions::default(),
            runtime: None,
            cache_from: None,
            cache_to: None,
            limits: gantry_layer::Limits::default(),
            size_flags: SizeFlags::default(),
        })
    }

    /// Sets the size caps given on the command line.
    pub fn set_size_flags(&mut self, flags: SizeFlags) {
        self.size_flags = flags;
        self.apply_sizes(None, None, None);
    }

    /// This context for work on `project`: its `max-layer-size` and `max-image-size` apply,
    /// unless the command line gave them.
    pub fn with_settings(&self, settings: &gantry_project::Settings) -> Context {
        let mut ctx = self.clone();
        ctx.apply_sizes(
            settings.max_layer_size,
            settings.max_image_size,
            settings.max_ratio,
        );
        ctx
    }

    fn apply_sizes(&mut self, layer: Option<u64>, image: Option<u64>, ratio: Option<u64>) {
        let f = self.size_flags;
        self.limits.max_ratio = f
            .max_ratio
            .or(ratio)
            .unwrap_or(gantry_layer::limits::DEFAULT_MAX_RATIO);
        self.limits.max_layer_size = f
            .max_layer_size
            .or(layer)
            .unwrap_or(gantry_layer::limits::DEFAULT_MAX_LAYER_SIZE);
        self.limits.max_image_size = f
            .max_image_size
            .or(image)
            .unwrap_or(gantry_layer::limits::DEFAULT_MAX_IMAGE_SIZE);
    }

    /// Opens the store for a command that writes to it: a read-only store is an error that
    /// says so (see [`Context::store_for_reading`]).
    pub fn store(&self) -> Result<Store> {
        let store = self.store_for_reading()?;
        if let Some(reason) = store.read_only() {
            anyhow::bail!(
                "the store at {} is read-only ({reason}), and this command writes to it; \
                 inspect, ls, unpack and fsck (without --repair) work on a read-only store",
                self.home.display()
            );
        }
        Ok(store)
    }

    /// Opens the store for a command that only reads it, also when it is read-only (a
    /// read-only mount, or a store its user cannot write); says so if it has to wait for a gc.
    pub fn store_for_reading(&self) -> Result<Store> {
        let on_wait = |wait: Wait| {
            if wait == Wait::ForGc {
                self.reporter
                    .event("waiting for gantry gc, which has the store to itself…");
            }
        };
        // A gantry killed during a step leaves its containers running; they are stopped
        // before its session (which holds their state) is removed.
        let reporter = Arc::clone(&self.reporter);
        let options = StoreOptions {
            on_wait: Some(&on_wait),
            reaper: Some(Arc::new(move |dir: &Path| {
                crate::step::reap_containers(reporter.as_ref(), dir);
            })),
        };
        Store::open_with(&self.home, &options)
            .with_context(|| format!("cannot open the store at {}", self.home.display()))
    }

    /// The image creation and history time (RFC 3339).
    pub fn created(&self) -> Result<String> {
        Ok(gantry_oci::time::format_rfc3339(self.source_date_epoch)?)
    }

    /// A path from the command line, made absolute.
    pub fn abs(&self, p: &Path) -> PathBuf {
        self.cwd.join(p)
    }
}
