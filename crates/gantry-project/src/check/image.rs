//! `[image.NAME]` targets.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_image::{ConfigEdits, normalize_port, validate_label_key};
use gantry_oci::Reference;

use super::{
    Checker, check_base, check_env_keys, check_layer_list, check_name, check_platform, kp,
};
use crate::schema::{ImageSpec, ProjectFile};
use crate::spans::{KeyPath, Seg};
use crate::{AutoLabels, BaseRef, ImageTarget, Settings};

/// Checks an image target.
pub(super) fn check_image(
    c: &mut Checker<'_>,
    name: &str,
    spec: &ImageSpec,
    parsed: &ProjectFile,
    settings: &Settings,
    dir: &Path,
) -> ImageTarget {
    let at = kp(&["image", name]);
    check_name(c, &at, name);
    if parsed.layer.contains_key(name) {
        c.report(
            at.clone(),
            format!("the name {name:?} is also a layer; target names must be unique"),
        );
    }
    let base = check_base(c, &at, spec.base.as_deref(), parsed, dir);
    check_layer_list(c, &at, &spec.layers, parsed);
    let platform = check_platform(c, &at, spec.platform.as_ref(), settings);
    let edits = check_config_edits(c, &at, spec);
    let annotations = check_annotations(c, &at, spec, dir);
    let tags = check_tags(c, &at, &spec.tags);
    let layout_tag = spec.tag.clone().unwrap_or_else(|| "latest".to_owned());
    if let Err(e) = gantry_oci::validate_ref_name(&layout_tag) {
        c.report(at.join("tag"), e);
    }
    if let Some(t) = &spec.artifact_type {
        if let Err(e) = gantry_oci::validate_media_type(t) {
            c.report(at.join("artifact-type"), e);
        }
        if !matches!(base, BaseRef::Scratch) {
            c.report(
                at.join("base"),
                "an artifact (artifact-type) has no base image",
            );
        }
    }
    let mut auto_labels = AutoLabels::off();
    if let Some(s) = &parsed.settings.auto_labels {
        auto_labels = auto_labels.apply(s);
    }
    if let Some(s) = &spec.auto_labels {
        auto_labels = auto_labels.apply(s);
    }
    ImageTarget {
        name: name.to_owned(),
        base,
        layers: spec.layers.clone(),
        platform,
        edits,
        annotations,
        auto_labels,
        tags,
        layout_tag,
        output: match &spec.output {
            Some(o) => dir.join(o),
            None => settings.output_dir.join(name),
        },
        artifact_type: spec.artifact_type.clone(),
        shallow: spec.shallow.or(parsed.settings.shallow).unwrap_or(false),
        at: c.spans.locate(&at),
    }
}

/// The config edits of an image (env, labels, ports, volumes, workdir, user, stop signal…),
/// each checked at its key.
fn check_config_edits(c: &mut Checker<'_>, at: &KeyPath, spec: &ImageSpec) -> ConfigEdits {
    check_env_keys(c, at, &spec.env);
    for k in spec.labels.keys() {
        if let Err(e) = validate_label_key(k) {
            c.report(at.join("labels").join(Seg::Key(k.clone())), e.to_string());
        }
    }
    for (i, p) in spec.ports.iter().enumerate() {
        if let Err(e) = normalize_port(p) {
            c.report(at.join("ports").join(i), e.to_string());
        }
    }
    let edits = ConfigEdits {
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone(),
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        user: spec.user.clone(),
        workdir: spec.workdir.clone(),
        ports: spec.ports.clone(),
        volumes: spec.volumes.clone(),
        labels: spec.labels.clone(),
        stop_signal: spec.stop_signal.clone(),
        os: spec.os.clone(),
        architecture: spec.architecture.clone(),
        variant: spec.variant.clone(),
        author: spec.author.clone(),
    };
    // Fields not checked one by one above (volumes, workdir, user, stop signal).
    for (field, check) in [
        (
            "volumes",
            ConfigEdits {
                volumes: edits.volumes.clone(),
                ..Default::default()
            },
        ),
        (
            "workdir",
            ConfigEdits {
                workdir: edits.workdir.clone(),
                ..Default::default()
            },
        ),
        (
            "user",
            ConfigEdits {
                user: edits.user.clone(),
                ..Default::default()
            },
        ),
        (
            "stop-signal",
            ConfigEdits {
                stop_signal: edits.stop_signal.clone(),
                ..Default::default()
            },
        ),
    ] {
        if let Err(e) = check.validate() {
            c.report(at.join(field), e.to_string());
        }
    }
    edits
}

/// The manifest annotations: the `annotations-file`'s, then the inline ones.
fn check_annotations(
    c: &mut Checker<'_>,
    at: &KeyPath,
    spec: &ImageSpec,
    dir: &Path,
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    if let Some(f) = &spec.annotations_file {
        match gantry_layer::spec::read_kv_file(&dir.join(f)) {
            Ok(kv) => annotations.extend(kv),
            Err(e) => c.report(at.join("annotations-file"), e.to_string()),
        }
    }
    for (k, v) in &spec.annotations {
        if k.is_empty() {
            c.report(at.join("annotations"), "annotation keys must not be empty");
        }
        annotations.insert(k.clone(), v.clone());
    }
    annotations
}

/// The registry references an image is published to.
fn check_tags(c: &mut Checker<'_>, at: &KeyPath, tags: &[String]) -> Vec<Reference> {
    let mut refs = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        match Reference::parse(t) {
            Ok(r) if r.digest().is_some() => c.report(
                at.join("tags").join(i),
                "a tag to publish to cannot carry a digest",
            ),
            Ok(r) => refs.push(r),
            Err(e) => c.report(at.join("tags").join(i), e.to_string()),
        }
    }
    refs
}
