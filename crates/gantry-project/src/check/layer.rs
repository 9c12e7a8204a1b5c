//! `[layer.NAME]` targets: the layer spec's own checks, placed at their keys.

use std::path::Path;

use gantry_layer::LayerSpec;
use gantry_layer::spec::Field;

use super::{Checker, check_name, kp};
use crate::LayerTarget;
use crate::schema::ProjectFile;
use crate::spans::Seg;

/// Checks a layer target, with the project's compression applied to it.
pub(super) fn check_layer(
    c: &mut Checker<'_>,
    name: &str,
    spec: &LayerSpec,
    parsed: &ProjectFile,
    dir: &Path,
) -> LayerTarget {
    let at_key = kp(&["layer", name]);
    check_name(c, &at_key, name);
    let mut spec = spec.clone();
    if spec.compression.is_none() && spec.tar.is_none() && spec.file.is_none() {
        spec.compression.clone_from(&parsed.settings.compression);
        if spec.level.is_none() {
            spec.level = parsed.settings.level;
        }
    }
    for p in spec.check(dir) {
        let mut key = at_key.clone();
        for f in p.field {
            key = match f {
                Field::Key(k) => key.join(Seg::Key(k)),
                Field::Index(i) => key.join(i),
            };
        }
        c.report(key, p.message);
    }
    LayerTarget {
        name: name.to_owned(),
        spec,
        at: c.spans.locate(&at_key),
    }
}
