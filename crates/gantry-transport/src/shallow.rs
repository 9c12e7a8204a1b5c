//! Shallow layouts: what gantry writes when the base layers of an image stay in a registry
//! (`gantry build --shallow`, the builds `gantry push` makes, `gantry image` on such a base).
//! Such a layout names the base in its `org.opencontainers.image.base.name` annotation. That
//! annotation is attacker-controlled in a layout from elsewhere, so it is followed only when
//! the store records that gantry wrote the layout ([`mark_shallow`]), or when the user says
//! `--follow-base-name`.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_oci::{Descriptor, Digest, Reference};
use gantry_store::Store;

use crate::Error;
use crate::error::{Context as _, image_error};

/// The store's ref kind that records manifests gantry wrote into shallow layouts.
const SHALLOW_REF: &str = "shallow";

/// Records that gantry wrote the image `manifest` into the shallow layout `dir`: its
/// `base.name` annotation is gantry's own, so readers of the layout may fetch what it leaves out
/// from there. The record lasts while `dir` exists.
pub fn mark_shallow(store: &Store, manifest: &Descriptor, dir: &Path) -> Result<(), Error> {
    let target = Descriptor::new(
        manifest.media_type.clone(),
        manifest.digest.clone(),
        manifest.size,
    );
    store.set_ref(
        SHALLOW_REF,
        &manifest.digest.to_string(),
        &target,
        Some(dir),
    )?;
    Ok(())
}

/// The registry reference that holds the layer blobs a layout lacks: the one the image's
/// `base.name` annotation names, if it may be followed (see the module docs). `missing` are
/// the digests the layout lacks that the store does not have either (none: `Ok(None)`);
/// `what` names the layout in errors.
pub(crate) fn shallow_base(
    store: &Store,
    follow_base_name: bool,
    what: &str,
    manifest: &Descriptor,
    annotations: &BTreeMap<String, String>,
    missing: &[&Digest],
) -> Result<Option<Reference>, Error> {
    let Some(first) = missing.first() else {
        return Ok(None);
    };
    let n = missing.len();
    let blobs = if n == 1 { "blob" } else { "blobs" };
    let Some(name) = annotations.get(gantry_oci::annotations::BASE_NAME) else {
        return Err(image_error(
            what,
            format!(
                "it lacks {n} layer {blobs} ({first}…) and does not name a base to read them \
                 from"
            ),
        ));
    };
    let base = Reference::parse(name)
        .context_with(|| format!("{what}: its base.name annotation {name:?}"))?;
    let ours = store
        .get_ref(SHALLOW_REF, &manifest.digest.to_string())?
        .is_some_and(|r| r.descriptor.digest == manifest.digest);
    if !(ours || follow_base_name) {
        return Err(image_error(
            what,
            format!(
                "it lacks {n} layer {blobs} ({first}…) of its base {base}; gantry did not write \
                 this layout, so it does not contact that registry on the layout's word. Pass \
                 --follow-base-name to fetch them from {}/{}, or use a complete layout",
                base.registry(),
                base.repository()
            ),
        ));
    }
    tracing::debug!("{what}: {n} layer {blobs} come from its base {base}");
    Ok(Some(base))
}
