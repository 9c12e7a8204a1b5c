//! `gantry layer`: build one layer blob and its info document.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use gantry_cli::LayerArgs;
use gantry_layer::meta::{MetaSpec, TimeSpec};
use gantry_layer::spec::DirSpec;
use gantry_layer::{LayerInfo, LayerOutput, LayerPlan, LayerSource, LayerSpec};
use gantry_store::Store;

use crate::Context;
use crate::util::{check_output_file, split_pair, write_atomic};

/// What `gantry layer` made.
#[derive(Debug, Clone)]
pub struct LayerResult {
    /// The info document (also written to `--info` or printed).
    pub info: LayerInfo,
    /// Size of the uncompressed tar, for tar layers.
    pub uncompressed_size: Option<u64>,
    /// Where the blob was written besides the store.
    pub output: Option<PathBuf>,
    /// Where the info was written (`None`: the caller prints it).
    pub info_path: Option<PathBuf>,
}

fn insert_unique<V>(map: &mut BTreeMap<String, V>, flag: &str, key: &str, value: V) -> Result<()> {
    if map.insert(key.to_owned(), value).is_some() {
        bail!("{flag}: {key} is given twice (in the spec or on the command line)");
    }
    Ok(())
}

/// Builds the layer spec from `--spec` and the flags. Returns it with the directory relative
/// sources are taken from (the spec file's directory; flag paths are made absolute).
pub fn spec_from_args(ctx: &Context, args: &LayerArgs) -> Result<(LayerSpec, PathBuf)> {
    let (mut spec, base_dir) = match &args.spec {
        Some(p) => {
            let p = ctx.abs(p);
            let spec = LayerSpec::from_file(&p)?;
            let dir = p
                .parent()
                .map_or_else(|| ctx.cwd.clone(), Path::to_path_buf);
            (spec, dir)
        }
        None => (LayerSpec::default(), ctx.cwd.clone()),
    };
    let abs = |s: &str| ctx.abs(Path::new(s)).to_string_lossy().into_owned();
    for f in &args.files {
        let (dest, src) = split_pair("--file", f)?;
        insert_unique(&mut spec.files, "--file", dest, abs(src))?;
    }
    for d in &args.dirs {
        let (dest, src) = split_pair("--dir", d)?;
        let dir = DirSpec {
            src: abs(src),
            include: args.include.clone(),
            exclude: args.exclude.clone(),
        };
        insert_unique(&mut spec.dirs, "--dir", dest, dir)?;
    }
    if args.dirs.is_empty() && !(args.include.is_empty() && args.exclude.is_empty()) {
        bail!("--include and --exclude apply to --dir trees; no --dir was given");
    }
    for c in &args.content {
        let (dest, text) = split_pair("--content", c)?;
        insert_unique(&mut spec.content, "--content", dest, text.to_owned())?;
    }
    for s in &args.symlinks {
        let (dest, target) = split_pair("--symlink", s)?;
        insert_unique(&mut spec.symlinks, "--symlink", dest, target.to_owned())?;
    }
    for h in &args.hardlinks {
        let (dest, target) = split_pair("--hardlink", h)?;
        insert_unique(&mut spec.hardlinks, "--hardlink", dest, target.to_owned())?;
    }
    spec.empty_dirs.extend(args.empty_dirs.iter().cloned());
    spec.whiteouts.extend(args.whiteouts.iter().cloned());
    spec.opaque.extend(args.opaque.iter().cloned());

    let d = &mut spec.defaults;
    macro_rules! set {
        ($field:ident, $value:expr) => {
            if let Some(v) = $value {
                d.$field = Some(v);
            }
        };
    }
    set!(mode, args.mode.clone());
    set!(dir_mode, args.dir_mode.clone());
    set!(uid, args.uid);
    set!(gid, args.gid);
    set!(uname, args.uname.clone());
    set!(gname, args.gname.clone());
    set!(mtime, args.mtime.clone().map(TimeSpec::Text));

    for m in &args.metadata {
        let (path, json) = split_pair("--metadata", m)?;
        let meta: MetaSpec = serde_json::from_str(json)
            .with_context(|| format!("--metadata for {path}: invalid JSON {json:?}"))?;
        insert_unique(&mut spec.metadata, "--metadata", path, meta)?;
    }
    if args.on_base {
        spec.parents = Some(false);
    }
    spec.preserve.extend(args.preserve.iter().cloned());
    if args.compression.is_some() {
        spec.compression.clone_from(&args.compression);
    }
    if args.level.is_some() {
        spec.level = args.level;
    }
    if let Some(t) = &args.tar {
        spec.tar = Some(abs(&t.to_string_lossy()));
    }
    if args.recompress {
        spec.recompress = Some(true);
    }
    if let Some(a) = &args.artifact {
        spec.file = Some(abs(&a.to_string_lossy()));
    }
    if args.media_type.is_some() {
        spec.media_type.clone_from(&args.media_type);
    }
    for a in &args.annotations {
        let (k, v) = split_pair("--annotation", a)?;
        insert_unique(&mut spec.annotations, "--annotation", k, v.to_owned())?;
    }
    if let Some(f) = &args.annotations_file {
        spec.annotations_file = Some(abs(&f.to_string_lossy()));
    }
    if args.created_by.is_some() {
        spec.created_by.clone_from(&args.created_by);
    }
    if args.comment.is_some() {
        spec.comment.clone_from(&args.comment);
    }
    Ok((spec, base_dir))
}

/// Writes the layer of `plan` into the store; returns its info and output details. Shared by
/// `gantry layer` and project builds.
pub fn build_layer(
    ctx: &Context,
    store: &Store,
    plan: &LayerPlan,
    label: &str,
) -> Result<(LayerInfo, LayerOutput)> {
    let total = match &plan.source {
        LayerSource::Recipe(r) => r.content_size(),
        LayerSource::Tar { path, .. } | LayerSource::Artifact { path, .. } => {
            fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        }
    };
    if let LayerSource::Recipe(r) = &plan.source {
        for w in &r.warnings {
            ctx.reporter.warn(&format!("{label}: {w}"));
        }
    }
    let progress = ctx.reporter.layer_progress(label, total);
    let started = std::time::Instant::now();
    let writer = store.blob_writer()?;
    let (writer, out) =
        gantry_layer::write_layer(plan, ctx.jobs, writer, progress.as_ref(), &ctx.limits)
            .with_context(|| format!("cannot build {label}"))?;
    let written = started.elapsed();
    for w in &out.warnings {
        ctx.reporter.warn(&format!("{label}: {w}"));
    }
    let (digest, size) = writer.commit(None)?;
    tracing::debug!(
        "{label}: written in {written:.2?}, committed (fsync) in {:.2?}",
        started.elapsed() - written
    );
    let info = gantry_layer::layer_info(plan, &out, digest, size, Some(ctx.created()?));
    Ok((info, out))
}

/// Runs `gantry layer`.
pub fn run(ctx: &Context, args: &LayerArgs) -> Result<LayerResult> {
    let (spec, base_dir) = spec_from_args(ctx, args)?;
    let what = args
        .spec
        .as_ref()
        .map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
    // Everything is resolved and checked before the store is touched.
    let started = std::time::Instant::now();
    let plan = spec.plan(&base_dir, ctx.source_date_epoch, &what)?;
    tracing::debug!("layer planned in {:.2?}", started.elapsed());
    if let LayerSource::Tar { path, .. } | LayerSource::Artifact { path, .. } = &plan.source {
        fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    let output = args.output.as_ref().map(|p| ctx.abs(p));
    if let Some(o) = &output {
        check_output_file("--output", o)?;
    }
    let info_path = args.info.as_ref().map(|p| ctx.abs(p));
    if let Some(p) = &info_path {
        check_output_file("--info", p)?;
    }
    let store = ctx.store()?;
    let (info, out) = build_layer(ctx, &store, &plan, "layer")?;

    if let Some(o) = &output {
        export_blob(&store, &info, o)?;
        store.set_ref("layer", &o.to_string_lossy(), &info.descriptor(), Some(o))?;
    }
    if let Some(p) = &info_path {
        write_atomic(p, &info.to_json())?;
        store.set_ref("layer", &p.to_string_lossy(), &info.descriptor(), Some(p))?;
    }
    Ok(LayerResult {
        info,
        uncompressed_size: out.uncompressed_size,
        output,
        info_path,
    })
}

/// Puts the blob at `dest`, replacing what was there atomically: hard-linked from the store
/// when on the same filesystem, copied otherwise.
fn export_blob(store: &Store, info: &LayerInfo, dest: &Path) -> Result<()> {
    store
        .export_blob(&info.digest, dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}
