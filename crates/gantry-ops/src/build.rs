//! `gantry build`: build a project's targets with a content-keyed cache.
//!
//! 1. Load and validate `gantry.toml` (every problem at once, with file:line:column).
//! 2. Plan every needed layer (walk its sources) and load every fixed base, in parallel,
//!    before anything is written: a missing input fails the build with no output.
//! 3. Compute each layer's cache key: its plan's fingerprint (input contents come from the
//!    stat cache, so unchanged files are not read), the creation time and the cache version.
//! 4. Run the targets in dependency order, up to `jobs` at once. A layer whose key is in the
//!    action cache, with its blob present and intact, is a hit: no tar, no compression. An
//!    image is assembled (cheap) and written only if its output layout differs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use gantry_cache::{ActionCache, KeyHasher, StatCache, StatKey};
use gantry_image::{BlobSource, Built, Image};
use gantry_layer::{FileStamp, LayerInfo, LayerPlan};
use gantry_oci::{Digest, Platform, annotations};
use gantry_project::{BaseRef, Epoch, ImageTarget, LabelValue, Project, TargetRef};
use gantry_store::{Layout, Selector, Store};
use gantry_transport::{Completeness, ImageRef, SourceImage};
use serde::Serialize;

use crate::Context;
use crate::git::GitInfo;
use crate::remote_cache::RemoteCache;
use crate::util::parallel_map;

/// What a build did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    /// The project file.
    pub project: String,
    /// Wall time of the whole build.
    pub duration_ms: u64,
    /// Images built, in build order.
    pub images: Vec<ImageOutcome>,
    /// Layers built or taken from the cache, in build order.
    pub layers: Vec<LayerOutcome>,
    /// Cache statistics.
    pub cache: CacheSummary,
    /// The images built, by target name, with where each blob is (for pushing).
    #[serde(skip)]
    pub built: BTreeMap<String, Built>,
}

/// Cache statistics of a build.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSummary {
    /// Layers taken from the action cache.
    pub hits: usize,
    /// Layers built.
    pub misses: usize,
    /// Input files whose digest came from the stat cache.
    pub stat_hits: u64,
    /// Input files that were read and hashed.
    pub stat_misses: u64,
    /// Layers and steps taken from the remote cache (no blob downloaded).
    pub remote_hits: usize,
    /// Bytes moved to and from the remote cache registry (entries and uploaded blobs).
    pub remote_bytes: u64,
}

/// One layer target's result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerOutcome {
    /// Target name.
    pub name: String,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Whether it came from the local cache.
    pub cache_hit: bool,
    /// Whether it came from the remote cache.
    pub remote_hit: bool,
    /// Milliseconds after the build started.
    pub started_ms: u64,
    /// Milliseconds after the build started.
    pub finished_ms: u64,
}

/// One image target's result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageOutcome {
    /// Target name.
    pub name: String,
    /// Manifest digest.
    pub digest: Digest,
    /// The output layout.
    pub output: String,
    /// The tag in it.
    pub tag: String,
    /// The platform.
    pub platform: String,
    /// Every layer, base first.
    pub layers: Vec<ImageLayer>,
    /// Whether the output already held this image (nothing was written).
    pub up_to_date: bool,
    /// Milliseconds after the build started.
    pub started_ms: u64,
    /// Milliseconds after the build started.
    pub finished_ms: u64,
}

/// A layer of an image in the summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayer {
    /// The layer target, or `None` for a layer of the base.
    pub name: Option<String>,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Whether it came from the cache (`None` for base layers).
    pub cache_hit: Option<bool>,
}

/// Loads the project of `gantry build`/`clean` arguments.
pub fn load_project(ctx: &Context, args: &gantry_cli::ProjectArgs) -> Result<Project> {
    let dir = args
        .dir
        .as_ref()
        .map_or_else(|| ctx.cwd.clone(), |d| ctx.abs(d));
    let file = Project::locate(&dir, args.file.as_deref());
    Ok(Project::load(&file)?)
}

/// A layer ready to run: its plan and cache key.
struct PlannedLayer {
    plan: LayerPlan,
    key: gantry_cache::CacheKey,
}

/// What a finished target hands to the targets that depend on it.
enum Finished {
    /// A layer or step result: its info, whether the local cache had it, where its blob is.
    Layer(Box<(LayerInfo, bool, BlobSource, LayerOutcome)>),
    Image(Box<(Image, Digest, Built)>, ImageOutcome),
}

/// How [`build`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Resolve tags that gantry.lock does not pin, now (not reproducible).
    pub allow_unpinned: bool,
    /// Write every image's layout shallow (base layers that are only in a registry left out)
    /// whatever the project says: for `gantry push`, which never needs their bytes.
    pub shallow: bool,
}

/// Runs `gantry build`.
pub fn run(ctx: &Context, args: &gantry_cli::BuildArgs) -> Result<BuildReport> {
    let project = load_project(ctx, &args.project)?;
    let opts = BuildOptions {
        allow_unpinned: args.allow_unpinned,
        shallow: args.shallow,
    };
    build(ctx, &project, &args.targets, opts)
}

/// Builds `targets` of `project` (every image when empty).
pub fn build(
    ctx: &Context,
    project: &Project,
    targets: &[String],
    opts: BuildOptions,
) -> Result<BuildReport> {
    let allow_unpinned = opts.allow_unpinned;
    let started = Instant::now();
    let order = project.plan(targets)?;
    tracing::debug!("project loaded in {:.1?}", started.elapsed());

    let needs_git = project.settings.source_date_epoch == Some(Epoch::Git)
        || project.images.values().any(|i| i.auto_labels.any());
    let git_info = if needs_git {
        GitInfo::read(&project.dir)
    } else {
        GitInfo::unread()
    };
    let epoch = if ctx.source_date_epoch_from_env {
        ctx.source_date_epoch
    } else {
        match project.settings.source_date_epoch {
            None => 0,
            Some(Epoch::Seconds(s)) => s,
            Some(Epoch::Git) => git_info.commit_time.clone().map_err(|reason| {
                anyhow!(
                    "{}: source-date-epoch = \"git\", but git cannot tell the commit time in \
                     {}: {reason}",
                    project.file.display(),
                    project.dir.display()
                )
            })?,
        }
    };
    let mut ctx = ctx.with_settings(&project.settings);
    ctx.source_date_epoch = epoch;
    let ctx = &ctx;
    let created = ctx.created()?;

    // Phase 1: plan every layer and load every fixed base before writing anything.
    let layer_names: Vec<&str> = order
        .iter()
        .filter_map(|t| match t {
            TargetRef::Layer(n) => Some(n.as_str()),
            TargetRef::Image(_) | TargetRef::Pull(_) | TargetRef::Step(_) => None,
        })
        .collect();
    let plans = parallel_map(ctx.jobs, &layer_names, |name| {
        let t = &project.layers[*name];
        let at = format!(
            "{}:{}:{}: layer.{name}",
            project.file.display(),
            t.at.line,
            t.at.column
        );
        // Project::load checked every layer already.
        t.spec
            .plan_checked(&project.dir, epoch)
            .with_context(|| at.clone())
    })?;
    let store = ctx.store()?;
    let mut registry: Option<gantry_registry::Client> = None;
    let mut fixed_bases =
        crate::bases::load_bases(ctx, project, &order, &store, &mut registry, allow_unpinned)?;

    tracing::debug!(
        "layers planned and bases loaded at {:.1?}",
        started.elapsed()
    );
    let remote = if ctx.cache_to.is_some()
        || ctx.cache_from.is_some()
        || project.settings.cache_to.is_some()
        || project.settings.cache_from.is_some()
    {
        let client = match &registry {
            Some(c) => c,
            None => registry.insert(crate::registry::client(ctx, Some(project))?),
        };
        RemoteCache::configured(ctx, Some(&project.settings), client)?
    } else {
        None
    };
    let remote = remote.as_ref();
    let cache = ActionCache::open(store.root())?;
    let stat = Mutex::new(StatCache::load(store.root(), &project.dir));
    tracing::debug!("store and caches opened at {:.1?}", started.elapsed());

    // Phase 2: cache keys. Input digests come from the stat cache: a layer's files are looked
    // up under one lock, in path order; misses are hashed outside it, then recorded.
    let keyed: Vec<PlannedLayer> = parallel_map(ctx.jobs, &plans, |plan| {
        let files = plan.source_files()?;
        let stat_key = |s: &FileStamp| StatKey {
            dev: s.dev,
            ino: s.ino,
            size: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
        };
        // Digests in the order of `files`, which is the order the fingerprint asks for them.
        let mut digests: Vec<Option<Digest>> = Vec::with_capacity(files.len());
        {
            let mut s = stat
                .lock()
                .map_err(|_| anyhow!("stat cache lock poisoned"))?;
            for (path, stamp) in &files {
                digests.push(s.lookup(path, stat_key(stamp)));
            }
        }
        for (i, (path, stamp)) in files.iter().enumerate() {
            if digests[i].is_some() {
                continue;
            }
            let started = SystemTime::now();
            let d = gantry_cache::hash_file(path, stat_key(stamp))
                .with_context(|| format!("cannot hash {}", path.display()))?;
            stat.lock()
                .map_err(|_| anyhow!("stat cache lock poisoned"))?
                .record(path, stat_key(stamp), &d, started);
            digests[i] = Some(d);
        }
        let mut next = files.iter().zip(digests);
        let fp = plan.fingerprint(&mut |path, _| match next.next() {
            Some(((p, _), Some(d))) if *p == path => Ok(d),
            _ => Err(std::io::Error::other(
                "source files were asked for out of order (a bug)",
            )),
        })?;
        let mut k = KeyHasher::new("layer");
        k.u64(gantry_layer::FINGERPRINT_VERSION)
            .digest(&fp)
            .str(&created);
        Ok(PlannedLayer {
            plan: plan.clone(),
            key: k.finish(),
        })
    })?;
    let mut planned: HashMap<&str, PlannedLayer> = layer_names.iter().copied().zip(keyed).collect();
    tracing::debug!("cache keys computed at {:.1?}", started.elapsed());

    // Phase 3: run.
    let mut layers_done: HashMap<String, (LayerInfo, bool, BlobSource)> = HashMap::new();
    let mut images_done: HashMap<String, (Image, Digest)> = HashMap::new();
    let mut report = BuildReport {
        project: project.file.display().to_string(),
        duration_ms: 0,
        images: Vec::new(),
        layers: Vec::new(),
        cache: CacheSummary::default(),
        built: BTreeMap::new(),
    };
    // Pull targets were resolved with the bases; they have nothing left to run.
    let pulls_done: Vec<&TargetRef> = order
        .iter()
        .filter(|t| matches!(t, TargetRef::Pull(_)))
        .collect();
    let mut pending: Vec<TargetRef> = order
        .iter()
        .filter(|t| !matches!(t, TargetRef::Pull(_)))
        .cloned()
        .collect();
    let mut failure: Option<anyhow::Error> = None;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(TargetRef, Result<Finished>)>();
        let mut running = 0usize;
        loop {
            // Start every target whose dependencies are done, up to `jobs` at once.
            while failure.is_none() && running < ctx.jobs.max(1) {
                let ready = pending.iter().position(|t| {
                    project.deps(t).iter().all(|d| match d {
                        TargetRef::Layer(n) | TargetRef::Step(n) => layers_done.contains_key(n),
                        TargetRef::Image(n) => images_done.contains_key(n),
                        TargetRef::Pull(_) => pulls_done.contains(&d),
                    })
                });
                let Some(i) = ready else { break };
                let target = pending.remove(i);
                let tx = tx.clone();
                running += 1;
                match &target {
                    TargetRef::Pull(_) => unreachable!("pull targets are not pending"),
                    TargetRef::Layer(name) => {
                        let job = planned.remove(name.as_str()).expect("planned above");
                        let (store, cache, stat) = (&store, &cache, &stat);
                        let name = name.clone();
                        scope.spawn(move || {
                            let r =
                                run_layer(ctx, store, cache, stat, remote, &name, &job, started);
                            let _ = tx.send((TargetRef::Layer(name), r));
                        });
                    }
                    TargetRef::Step(name) => {
                        let step = &project.steps[name];
                        let mut image = match &step.base {
                            BaseRef::Scratch | BaseRef::Fixed(_) | BaseRef::Pull(_) => {
                                fixed_bases.remove(name).expect("loaded above")
                            }
                            BaseRef::Image(parent) => {
                                let (p, d) = &images_done[parent];
                                Image::on_top_of(p, d.clone())
                            }
                        };
                        let mut bad = None;
                        for l in &step.layers {
                            let (info, _, source) = &layers_done[l];
                            if let Err(e) = image.push_layer(
                                info,
                                source.clone(),
                                &created,
                                &format!("layer {l}"),
                            ) {
                                bad = Some(e);
                            }
                        }
                        let (store, cache, stat, created) = (&store, &cache, &stat, &created);
                        let registry = registry.as_ref();
                        scope.spawn(move || {
                            let r = match bad {
                                Some(e) => Err(e.into()),
                                None => run_step_target(
                                    ctx, store, cache, stat, registry, remote, step, image,
                                    created, started,
                                ),
                            };
                            let _ = tx.send((TargetRef::Step(step.name.clone()), r));
                        });
                    }
                    TargetRef::Image(name) => {
                        let img = &project.images[name];
                        let base = match &img.base {
                            BaseRef::Scratch | BaseRef::Fixed(_) | BaseRef::Pull(_) => {
                                fixed_bases.remove(name).expect("loaded above")
                            }
                            BaseRef::Image(parent) => {
                                let (p, d) = &images_done[parent];
                                Image::on_top_of(p, d.clone())
                            }
                        };
                        let layers: Vec<(String, LayerInfo, bool, BlobSource)> = img
                            .layers
                            .iter()
                            .map(|l| {
                                let (info, hit, source) = &layers_done[l];
                                (l.clone(), info.clone(), *hit, source.clone())
                            })
                            .collect();
                        let (store, stat, created, git_info) = (&store, &stat, &created, &git_info);
                        let registry = registry.as_ref();
                        let shallow = opts.shallow || img.shallow;
                        scope.spawn(move || {
                            let r = run_image(
                                ctx, store, stat, registry, img, base, &layers, created, epoch,
                                git_info, shallow, started,
                            );
                            let _ = tx.send((TargetRef::Image(img.name.clone()), r));
                        });
                    }
                }
            }
            if running == 0 {
                break;
            }
            let (target, result) = rx.recv().expect("a worker holds a sender");
            running -= 1;
            match result {
                Ok(Finished::Layer(done)) => {
                    let (info, hit, source, outcome) = *done;
                    ctx.reporter.event(&format!(
                        "{target}: {} {}",
                        if outcome.remote_hit {
                            "from the remote cache"
                        } else if hit {
                            "cached"
                        } else {
                            "built"
                        },
                        info.digest.short()
                    ));
                    if outcome.remote_hit {
                        report.cache.remote_hits += 1;
                    } else if hit {
                        report.cache.hits += 1;
                    } else {
                        report.cache.misses += 1;
                    }
                    report.layers.push(outcome);
                    layers_done.insert(target.name().to_owned(), (info, hit, source));
                }
                Ok(Finished::Image(image, outcome)) => {
                    ctx.reporter.event(&format!(
                        "{target}: {} {} -> {}",
                        if outcome.up_to_date {
                            "up to date"
                        } else {
                            "written"
                        },
                        outcome.digest.short(),
                        outcome.output
                    ));
                    report.images.push(outcome);
                    let (image, digest, built) = *image;
                    report.built.insert(target.name().to_owned(), built);
                    images_done.insert(target.name().to_owned(), (image, digest));
                }
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(e.context(format!("{target} failed")));
                    }
                }
            }
        }
    });
    tracing::debug!("targets done at {:.1?}", started.elapsed());
    let stat = stat
        .into_inner()
        .map_err(|_| anyhow!("stat cache lock poisoned"))?;
    report.cache.stat_hits = stat.hits();
    report.cache.stat_misses = stat.misses();
    report.cache.remote_bytes = remote.map_or(0, RemoteCache::bytes);
    if let Err(e) = stat.save() {
        ctx.reporter
            .warn(&format!("cannot save the stat cache: {e}"));
    }
    tracing::debug!("stat cache saved at {:.1?}", started.elapsed());
    if let Some(e) = failure {
        return Err(e);
    }
    report.duration_ms = millis(started);
    Ok(report)
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn image_platform(img: &ImageTarget) -> Platform {
    img.platform.clone().unwrap_or_else(Platform::host)
}

#[allow(clippy::too_many_arguments)]
fn run_layer(
    ctx: &Context,
    store: &Store,
    cache: &ActionCache,
    stat: &Mutex<StatCache>,
    remote: Option<&RemoteCache>,
    name: &str,
    job: &PlannedLayer,
    build_started: Instant,
) -> Result<Finished> {
    let started_ms = millis(build_started);
    let label = format!("layer.{name}");
    let hit = cached_output(ctx, store, cache, stat, &job.key, &label)?;
    if hit.is_none()
        && let Some((r, info)) = remote.and_then(|r| Some((r, r.lookup(ctx, &job.key, &label)?)))
    {
        return Ok(remote_hit(name, info, r, started_ms, build_started));
    }
    let (info, cache_hit) = match hit {
        Some(info) => (info, true),
        None => {
            ctx.reporter.event(&format!("{label}: building"));
            let (info, _) = crate::layer::build_layer(ctx, store, &job.plan, &label)?;
            cache.put(&job.key, &info, &[info.descriptor()])?;
            (info, false)
        }
    };
    if let Some(r) = remote {
        r.write_back(ctx, store, &job.key, &info);
    }
    let outcome = LayerOutcome {
        name: name.to_owned(),
        digest: info.digest.clone(),
        size: info.size,
        media_type: info.media_type.clone(),
        cache_hit,
        remote_hit: false,
        started_ms,
        finished_ms: millis(build_started),
    };
    Ok(Finished::Layer(Box::new((
        info,
        cache_hit,
        BlobSource::Store,
        outcome,
    ))))
}

/// A layer or step result taken from the remote cache: its blob stays in the cache repository
/// until a sink needs it.
fn remote_hit(
    name: &str,
    info: LayerInfo,
    remote: &RemoteCache,
    started_ms: u64,
    build_started: Instant,
) -> Finished {
    let outcome = LayerOutcome {
        name: name.to_owned(),
        digest: info.digest.clone(),
        size: info.size,
        media_type: info.media_type.clone(),
        cache_hit: false,
        remote_hit: true,
        started_ms,
        finished_ms: millis(build_started),
    };
    let source = BlobSource::Registry {
        registry: remote.registry().to_owned(),
        repository: remote.repository().to_owned(),
    };
    Finished::Layer(Box::new((info, false, source, outcome)))
}

#[allow(clippy::too_many_arguments)]
fn run_step_target(
    ctx: &Context,
    store: &Store,
    cache: &ActionCache,
    stat: &Mutex<StatCache>,
    registry: Option<&gantry_registry::Client>,
    remote: Option<&RemoteCache>,
    step: &gantry_project::StepTarget,
    image: Image,
    created: &str,
    build_started: Instant,
) -> Result<Finished> {
    let started_ms = millis(build_started);
    let job = crate::step::StepJob {
        step,
        image,
        created: created.to_owned(),
    };
    let key = job.key()?;
    let label = format!("step.{}", step.name);
    let local = cached_output(ctx, store, cache, stat, &key, &label)?;
    if local.is_none()
        && let Some((r, info)) = remote.and_then(|r| Some((r, r.lookup(ctx, &key, &label)?)))
    {
        return Ok(remote_hit(&step.name, info, r, started_ms, build_started));
    }
    let (info, hit) = match local {
        Some(info) => (info, true),
        None => (
            crate::step::run_step(ctx, store, cache, registry, &job, &key)?,
            false,
        ),
    };
    if let Some(r) = remote {
        r.write_back(ctx, store, &key, &info);
    }
    let outcome = LayerOutcome {
        name: step.name.clone(),
        digest: info.digest.clone(),
        size: info.size,
        media_type: info.media_type.clone(),
        cache_hit: hit,
        remote_hit: false,
        started_ms,
        finished_ms: millis(build_started),
    };
    Ok(Finished::Layer(Box::new((
        info,
        hit,
        BlobSource::Store,
        outcome,
    ))))
}

/// The layer of a layer or step target from the local action cache, if its entry describes its
/// own output and that blob is intact. A damaged entry is removed with its blob (or the rebuilt
/// blob would be discarded as a duplicate of the damaged one).
pub(crate) fn cached_output(
    ctx: &Context,
    store: &Store,
    cache: &ActionCache,
    stat: &Mutex<StatCache>,
    key: &gantry_cache::CacheKey,
    label: &str,
) -> Result<Option<LayerInfo>> {
    let Some(entry) = cache.get::<LayerInfo>(key)? else {
        return Ok(None);
    };
    let consistent = entry.outputs.len() == 1 && entry.outputs[0] == entry.value.descriptor();
    if consistent && outputs_intact(store, stat, &entry.outputs) {
        let _ = cache.touch(key);
        return Ok(Some(entry.value));
    }
    ctx.reporter.warn(&format!(
        "{label}: the cache entry refers to a missing or damaged blob; rebuilding"
    ));
    let _ = cache.remove(key);
    for d in &entry.outputs {
        store.remove_corrupt_blob(&d.digest)?;
    }
    Ok(None)
}

/// Whether every output blob of a cache entry is in the store with the right content (checked
/// through the stat cache, so an untouched blob is not rehashed).
fn outputs_intact(
    store: &Store,
    stat: &Mutex<StatCache>,
    outputs: &[gantry_oci::Descriptor],
) -> bool {
    outputs.iter().all(|d| {
        let path = store.blob_path(&d.digest);
        let size_ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == d.size);
        size_ok
            && stat
                .lock()
                .is_ok_and(|mut s| s.verify(&path, &d.digest).unwrap_or(false))
    })
}

#[allow(clippy::too_many_arguments)]
fn run_image(
    ctx: &Context,
    store: &Store,
    stat: &Mutex<StatCache>,
    registry: Option<&gantry_registry::Client>,
    target: &ImageTarget,
    mut image: Image,
    layers: &[(String, LayerInfo, bool, BlobSource)],
    created: &str,
    epoch: i64,
    git_info: &GitInfo,
    shallow: bool,
    build_started: Instant,
) -> Result<Finished> {
    let started_ms = millis(build_started);
    let base_layers = image.layers.len();
    if matches!(target.base, BaseRef::Scratch) {
        let p = image_platform(target);
        image.config.os.clone_from(&p.os);
        image.config.architecture.clone_from(&p.architecture);
        image.config.variant.clone_from(&p.variant);
    }
    image.artifact_type.clone_from(&target.artifact_type);
    image.annotations.clone_from(&target.annotations);
    for (name, info, _, source) in layers {
        image.push_layer(info, source.clone(), created, &format!("layer.{name}"))?;
    }
    let mut edits = target.edits.clone();
    for (key, value) in auto_labels(target, epoch, git_info)? {
        edits.labels.entry(key).or_insert(value);
    }
    edits.apply(&mut image.config)?;
    let built = image.build(created)?;
    let remote = built
        .layers
        .iter()
        .any(|l| matches!(l.source, BlobSource::Registry { .. }));
    let completeness = if shallow {
        Completeness::Shallow
    } else {
        Completeness::Complete
    };
    let up_to_date = layout_holds(
        &target.output,
        &built,
        &target.layout_tag,
        completeness,
        stat,
    );
    let t = ctx.transfer(store, registry);
    if !up_to_date {
        crate::whiteouts::warn_whiteouts_under_symlinks(
            ctx,
            store,
            &image.layers,
            base_layers,
            &format!("image.{}", target.name),
        );
        if let Some(parent) = target.output.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // A complete layout: the base layers it lacks are fetched first, concurrently.
        if completeness == Completeness::Complete {
            t.fetch_blobs(built.layers.iter().map(|l| (&l.descriptor, &l.source)))
                .with_context(|| format!("image.{}: cannot fetch its base layers", target.name))?;
        }
        let dest = ImageRef::Layout {
            dir: target.output.clone(),
            selector: Selector::Tag(target.layout_tag.clone()),
        };
        t.write(
            &SourceImage::from_built(&built, &format!("image.{}", target.name))?,
            &dest,
            completeness,
        )
        .with_context(|| format!("cannot write {}", target.output.display()))?;
    } else if shallow && remote {
        gantry_transport::mark_shallow(store, &built.manifest, &target.output)?;
    }
    store.put_bytes(&built.config_bytes)?;
    store.put_bytes(&built.manifest_bytes)?;
    store.set_ref(
        "image",
        &target.output.to_string_lossy(),
        &built.manifest,
        Some(&target.output),
    )?;
    let outcome = ImageOutcome {
        name: target.name.clone(),
        digest: built.manifest.digest.clone(),
        output: target.output.display().to_string(),
        tag: target.layout_tag.clone(),
        platform: built.platform.to_string(),
        layers: built
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let own = i.checked_sub(base_layers).and_then(|j| layers.get(j));
                ImageLayer {
                    name: own.map(|(n, _, _, _)| n.clone()),
                    digest: l.descriptor.digest.clone(),
                    size: l.descriptor.size,
                    cache_hit: own.map(|(_, _, h, _)| *h),
                }
            })
            .collect(),
        up_to_date,
        started_ms,
        finished_ms: millis(build_started),
    };
    let digest = built.manifest.digest.clone();
    Ok(Finished::Image(Box::new((image, digest, built)), outcome))
}

/// The OCI auto labels of an image (Yocto's OCI_IMAGE_AUTO_LABELS). A label that comes from
/// git and cannot be read is an error, never a silent change of the image's digest.
fn auto_labels(
    target: &ImageTarget,
    epoch: i64,
    git: &GitInfo,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let a = &target.auto_labels;
    let mut derive = |key: &str, v: &LabelValue, derived: Result<String, String>, what: &str| {
        let value = match v {
            LabelValue::Off => return Ok(()),
            LabelValue::Fixed(s) => s.clone(),
            LabelValue::Derive | LabelValue::Git => derived.map_err(|reason| {
                anyhow!(
                    "image.{}: the {key} label is the {what}, which git cannot tell in {}: \
                     {reason}\n(give the label a value in auto-labels, or turn it off with \
                     auto-labels = false)",
                    target.name,
                    git.dir.display()
                )
            })?,
        };
        out.insert(key.to_owned(), value);
        Ok::<(), anyhow::Error>(())
    };
    derive(
        annotations::REVISION,
        &a.revision,
        git.revision.clone(),
        "git revision",
    )?;
    derive(
        "org.opencontainers.image.ref.name",
        &a.ref_name,
        git.branch.clone(),
        "git branch",
    )?;
    let created = match a.created {
        LabelValue::Git => git
            .commit_time
            .clone()
            .and_then(|t| gantry_oci::time::format_rfc3339(t).map_err(|e| e.to_string())),
        _ => Ok(gantry_oci::time::format_rfc3339(epoch)?),
    };
    derive(annotations::CREATED, &a.created, created, "commit time")?;
    Ok(out)
}

/// Whether the layout at `dir` already holds exactly this image under `tag`, with every blob it
/// should hold (a shallow layout leaves out registry-only base layers) intact: checked through
/// the stat cache, so untouched blobs are not rehashed.
fn layout_holds(
    dir: &Path,
    built: &Built,
    tag: &str,
    completeness: Completeness,
    stat: &Mutex<StatCache>,
) -> bool {
    let Ok(layout) = Layout::open(dir) else {
        return false;
    };
    let entries = &layout.index().manifests;
    let same = entries.len() == 1
        && entries[0].digest == built.manifest.digest
        && entries[0]
            .annotations
            .get(annotations::REF_NAME)
            .map(String::as_str)
            == Some(tag);
    let intact = |d: &Digest| {
        stat.lock()
            .is_ok_and(|mut s| s.verify(&layout.blob_path(d), d).unwrap_or(false))
    };
    // Exactly the blobs it should: a complete layout is not taken for a shallow one.
    same && intact(&built.manifest.digest)
        && intact(&built.config.digest)
        && built.layers.iter().all(|l| {
            let left_out = completeness == Completeness::Shallow
                && matches!(l.source, BlobSource::Registry { .. });
            if !left_out {
                intact(&l.descriptor.digest)
            } else {
                !layout.has_blob(&l.descriptor.digest)
            }
        })
}

/// What `gantry clean` removed.
#[derive(Debug, Clone, Serialize)]
pub struct CleanReport {
    /// Layouts removed.
    pub removed: Vec<PathBuf>,
}

/// Runs `gantry clean`: removes every image output that is an OCI layout, then the output
/// directory if that left it empty. Anything else is left alone.
pub fn clean(ctx: &Context, args: &gantry_cli::CleanArgs) -> Result<CleanReport> {
    let project = load_project(ctx, &args.project)?;
    let mut removed = Vec::new();
    for img in project.images.values() {
        let out = &img.output;
        if !out.exists() {
            continue;
        }
        if !out.join("oci-layout").is_file() {
            bail!(
                "{}: not removing it, it is not an OCI image layout",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?;
        removed.push(out.clone());
    }
    // Temps that killed builds left beside the outputs (see gantry_store::OutputTemp).
    let mut dirs: std::collections::BTreeSet<&Path> = project
        .images
        .values()
        .filter_map(|img| img.output.parent())
        .collect();
    dirs.insert(&project.settings.output_dir);
    for d in dirs {
        removed.extend(
            gantry_store::remove_dead_temps(d)
                .with_context(|| format!("cannot clean leftover temps in {}", d.display()))?,
        );
    }
    let dir = &project.settings.output_dir;
    if dir.is_dir() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        std::fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        removed.push(dir.clone());
    }
    Ok(CleanReport { removed })
}
