//! `gantry image`: assemble an image from a base and layer infos into an OCI layout.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use gantry_cli::ImageArgs;
use gantry_image::{BlobSource, ConfigEdits, Image, ImageMetadata, parse_env};
use gantry_layer::LayerInfo;
use gantry_store::Selector;
use gantry_transport::{Completeness, ImageRef, SourceImage};

use crate::Context;
use crate::transfer::platform_or_host;
use crate::util::{check_output_file, parse_argv, split_pair, write_atomic};

/// What `gantry image` made.
#[derive(Debug, Clone)]
pub struct ImageResult {
    /// The metadata document.
    pub metadata: ImageMetadata,
    /// The layout directory written.
    pub output: PathBuf,
    /// Where the metadata was written (`None`: the caller prints it).
    pub metadata_path: Option<PathBuf>,
}

/// A layer argument: its info and, optionally, the blob file.
struct LayerArg {
    info_path: PathBuf,
    info: LayerInfo,
    blob: Option<PathBuf>,
}

fn parse_layer_arg(ctx: &Context, arg: &str) -> Result<LayerArg> {
    let (info, blob) = match arg.split_once('=') {
        Some((i, b)) => (i, Some(ctx.abs(Path::new(b)))),
        None => (arg, None),
    };
    let info_path = ctx.abs(Path::new(info));
    let bytes = std::fs::read(&info_path)
        .with_context(|| format!("--layer: cannot read {}", info_path.display()))?;
    let info = LayerInfo::parse(&bytes, &info_path.display().to_string())?;
    if let Some(b) = &blob {
        std::fs::metadata(b).with_context(|| format!("--layer: cannot read {}", b.display()))?;
    }
    Ok(LayerArg {
        info_path,
        info,
        blob,
    })
}

fn parse_kv_map(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for item in items {
        let (k, v) = split_pair(flag, item)?;
        if m.insert(k.to_owned(), v.to_owned()).is_some() {
            bail!("{flag}: {k} is given twice");
        }
    }
    Ok(m)
}

/// The config edits the flags ask for, validated.
pub fn edits_from_args(args: &ImageArgs) -> Result<ConfigEdits> {
    let edits = ConfigEdits {
        entrypoint: parse_argv("--entrypoint", &args.entrypoint)?,
        cmd: parse_argv("--cmd", &args.cmd)?,
        env: args
            .env
            .iter()
            .map(|e| parse_env(e))
            .collect::<Result<_, _>>()?,
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        ports: args.ports.clone(),
        volumes: args.volumes.clone(),
        labels: parse_kv_map("--label", &args.labels)?,
        stop_signal: args.stop_signal.clone(),
        os: args.os.clone(),
        architecture: args.arch.clone(),
        variant: args.variant.clone(),
        author: args.author.clone(),
    };
    edits.validate()?;
    Ok(edits)
}

/// Runs `gantry image`.
pub fn run(ctx: &Context, args: &ImageArgs) -> Result<ImageResult> {
    // Parse and check everything before any work.
    let base = match args.base.as_str() {
        "scratch" => None,
        b => Some(ImageRef::parse(b, &ctx.cwd).map_err(|e| anyhow::anyhow!("--base {e}"))?),
    };
    let platform = platform_or_host(args.platform.as_deref())?;
    gantry_oci::validate_ref_name(&args.tag).map_err(|r| anyhow::anyhow!("--tag: {r}"))?;
    let edits = edits_from_args(args)?;
    let annotations = parse_kv_map("--annotation", &args.annotations)?;
    if let Some(t) = &args.artifact_type {
        gantry_oci::validate_media_type(t).map_err(|r| anyhow::anyhow!("--artifact-type: {r}"))?;
        if base.is_some() {
            bail!("an artifact (--artifact-type) has no base image; drop --base");
        }
    }
    let layers: Vec<LayerArg> = args
        .layers
        .iter()
        .map(|l| parse_layer_arg(ctx, l))
        .collect::<Result<_>>()?;
    let output = ctx.abs(&args.output);
    let metadata_path = args.metadata.as_ref().map(|p| ctx.abs(p));
    if let Some(p) = &metadata_path {
        check_output_file("--metadata", p)?;
    }
    let created = ctx.created()?;

    let store = ctx.store()?;
    let client = match &base {
        Some(ImageRef::Registry(_)) => Some(crate::registry::client(ctx, None)?),
        _ => None,
    };
    let t = ctx.transfer(&store, client.as_ref());
    let mut image = match &base {
        None => Image::scratch(&platform),
        Some(r) => {
            crate::bases::open_base(&t, r, &platform, args.platform.as_ref().map(|_| &platform))
                .with_context(|| format!("cannot use base {}", args.base))?
        }
    };
    image.artifact_type.clone_from(&args.artifact_type);
    image.annotations = annotations;
    let first_added = image.layers.len();
    for l in &layers {
        let what = l.info_path.display().to_string();
        let digest = &l.info.digest;
        if let Some(blob) = &l.blob {
            let f = File::open(blob).with_context(|| format!("cannot read {}", blob.display()))?;
            store
                .import(f, (digest, l.info.size), &blob.display().to_string())
                .with_context(|| format!("layer {what}"))?;
        } else if !store.has(digest) {
            bail!(
                "layer {what}: its blob {digest} is not in the store at {}; pass the blob too \
                 (--layer {what}=BLOB_FILE)",
                store.root().display()
            );
        }
        image.push_layer(&l.info, BlobSource::Store, &created, &what)?;
    }
    edits.apply(&mut image.config)?;
    crate::whiteouts::warn_whiteouts_under_symlinks(
        ctx,
        &store,
        &image.layers,
        first_added,
        "image",
    );

    let built = image.build(&created)?;
    // Shallow: this command fetches nothing, so base layers that are only in a registry stay
    // there (and the store records that gantry wrote the layout, for its readers).
    let dest = ImageRef::Layout {
        dir: output.clone(),
        selector: Selector::Tag(args.tag.clone()),
    };
    t.write(
        &SourceImage::from_built(&built, "image")?,
        &dest,
        Completeness::Shallow,
    )
    .with_context(|| format!("cannot write the layout {}", output.display()))?;
    // Manifest and config go into the store too, so that the output ref roots the layers. Only
    // now: a layout that cannot be written (a corrupt base blob, an output in the way) leaves
    // the store as it was. gc cannot run in between, as the open store holds its shared lock.
    store.put_bytes(&built.config_bytes)?;
    store.put_bytes(&built.manifest_bytes)?;
    store.set_ref(
        "image",
        &output.to_string_lossy(),
        &built.manifest,
        Some(&output),
    )?;
    let metadata = built.metadata(Some(&args.tag));
    if let Some(p) = &metadata_path {
        write_atomic(p, &gantry_oci::json::to_canonical_vec(&metadata))?;
    }
    Ok(ImageResult {
        metadata,
        output,
        metadata_path,
    })
}
