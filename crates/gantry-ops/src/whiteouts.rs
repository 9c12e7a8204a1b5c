//! The image-level whiteout check of `gantry image` and `gantry build`: a whiteout that an
//! added layer places under a path the image makes a symlink (the merged-`/usr` pitfall; see
//! `gantry_layer::stack`) gets a warning.
//!
//! Only layers gantry has locally are read (the store, OCI layout bases); layers that live
//! only in a registry (registry bases, remote cache hits) are not downloaded for this and are
//! left out of the check. Added layers are read first; the layers below them only when an
//! added layer has a whiteout at all.

use std::io::{BufRead, BufReader, Read};

use gantry_image::{BlobSource, LayerRef};
use gantry_layer::recipe::WHITEOUT_PREFIX;
use gantry_layer::stack::{ListedName, whiteouts_under_symlinks};
use gantry_layer::tarread::list_names;
use gantry_oci::media_types as mt;
use gantry_store::Store;

use crate::Context;

/// The most findings reported one by one.
const MAX_REPORTED: usize = 10;

/// The listing of a layer, if it is local and readable as a tar.
fn listing(store: &Store, layer: &LayerRef) -> Option<Vec<ListedName>> {
    let d = &layer.descriptor;
    let compression = mt::layer_compression(&d.media_type)?;
    let reader: Box<dyn Read> = match &layer.source {
        BlobSource::Store => Box::new(store.open_blob(&d.digest).ok()?),
        BlobSource::Local(src) => src.open_blob(d).ok()?,
        BlobSource::Registry { .. } => return None,
    };
    let r: Box<dyn BufRead> = Box::new(BufReader::with_capacity(256 << 10, reader));
    match list_names(r, compression, &d.digest.to_string()) {
        Ok(names) => Some(names),
        Err(e) => {
            tracing::debug!("whiteout check: cannot list {}: {e}", d.digest);
            None
        }
    }
}

/// Warns (through the reporter, labelled `label`) about whiteouts of `layers[first_added..]`
/// under a path that `layers` make a symlink.
pub(crate) fn warn_whiteouts_under_symlinks(
    ctx: &Context,
    store: &Store,
    layers: &[LayerRef],
    first_added: usize,
    label: &str,
) {
    let mut listings: Vec<Option<Vec<ListedName>>> = vec![None; layers.len()];
    let mut any = false;
    for (i, l) in layers.iter().enumerate().skip(first_added) {
        listings[i] = listing(store, l);
        any |= listings[i].iter().flatten().any(|n| {
            let name = n.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
            name.starts_with(WHITEOUT_PREFIX)
        });
    }
    if !any {
        return;
    }
    for (i, l) in layers.iter().enumerate().take(first_added) {
        listings[i] = listing(store, l);
    }
    let found = whiteouts_under_symlinks(&listings, first_added);
    for f in found.iter().take(MAX_REPORTED) {
        ctx.reporter.warn(&format!(
            "{label}: {f} ({})",
            layers[f.layer].descriptor.digest.short()
        ));
    }
    if found.len() > MAX_REPORTED {
        ctx.reporter.warn(&format!(
            "{label}: {} more whiteouts under symlinks",
            found.len() - MAX_REPORTED
        ));
    }
}
