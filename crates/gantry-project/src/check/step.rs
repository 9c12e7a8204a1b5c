//! `[step.NAME]` targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    Checker, check_base, check_env_keys, check_layer_list, check_name, check_platform, kp,
};
use crate::schema::{ProjectFile, StepSpec};
use crate::spans::{KeyPath, Seg};
use crate::{Capture, Settings, StepCommand, StepTarget};

/// Checks a step target; `None` when it has no usable command or compression.
pub(super) fn check_step(
    c: &mut Checker<'_>,
    name: &str,
    spec: &StepSpec,
    parsed: &ProjectFile,
    settings: &Settings,
    dir: &Path,
) -> Option<StepTarget> {
    let at = kp(&["step", name]);
    check_name(c, &at, name);
    if parsed.layer.contains_key(name)
        || parsed.image.contains_key(name)
        || parsed.pull.contains_key(name)
    {
        c.report(
            at.clone(),
            format!(
                "the name {name:?} is also a layer, image or pull target; target names must be unique"
            ),
        );
    }
    let base = check_base(c, &at, spec.base.as_deref(), parsed, dir);
    check_layer_list(c, &at, &spec.layers, parsed);
    let platform = check_platform(c, &at, spec.platform.as_ref(), settings);
    let command = check_command(c, &at, spec);
    check_env_keys(c, &at, &spec.env);
    if let Some(w) = &spec.workdir
        && !w.starts_with('/')
    {
        c.report(at.join("workdir"), "the working directory must be absolute");
    }
    if let Some(u) = &spec.user
        && (u.is_empty() || u.contains(char::is_whitespace))
    {
        c.report(at.join("user"), format!("invalid user {u:?}"));
    }
    let inputs = check_inputs(c, &at, &spec.inputs, dir);
    let capture = check_capture(c, &at, spec);
    let compression = spec
        .compression
        .as_deref()
        .or(parsed.settings.compression.as_deref())
        .unwrap_or("gzip");
    let compressor =
        match gantry_layer::Compressor::parse(compression, spec.level.or(parsed.settings.level)) {
            Ok(c) => c,
            Err(e) => {
                c.report(at.join("compression"), e.to_string());
                return None;
            }
        };
    Some(StepTarget {
        name: name.to_owned(),
        base,
        layers: spec.layers.clone(),
        platform,
        command: command?,
        env: spec.env.clone(),
        workdir: spec.workdir.clone(),
        user: spec.user.clone(),
        network: spec.network,
        inputs,
        capture,
        compressor,
        at: c.spans.locate(&at),
    })
}

/// `run` (an argv) or `script` (shell text), exactly one of them.
fn check_command(c: &mut Checker<'_>, at: &KeyPath, spec: &StepSpec) -> Option<StepCommand> {
    match (&spec.run, &spec.script) {
        (Some(run), None) if !run.is_empty() && !run[0].is_empty() => {
            Some(StepCommand::Run(run.clone()))
        }
        (Some(_), None) => {
            c.report(at.join("run"), "`run` needs at least a program");
            None
        }
        (None, Some(script)) if !script.trim().is_empty() => {
            Some(StepCommand::Script(script.clone()))
        }
        (None, Some(_)) => {
            c.report(at.join("script"), "`script` is empty");
            None
        }
        (Some(_), Some(_)) => {
            c.report(at.join("script"), "give `run` or `script`, not both");
            None
        }
        (None, None) => {
            c.report(
                at.clone(),
                "a step needs `run` (argv) or `script` (shell text)",
            );
            None
        }
    }
}

/// The read-only inputs: image path → the project path, which must exist.
fn check_inputs(
    c: &mut Checker<'_>,
    at: &KeyPath,
    inputs: &BTreeMap<String, String>,
    dir: &Path,
) -> BTreeMap<String, PathBuf> {
    let mut checked = BTreeMap::new();
    for (dest, src) in inputs {
        let key = at.join("inputs").join(Seg::Key(dest.clone()));
        if let Err(e) = image_path(dest) {
            c.report(key.clone(), e);
            continue;
        }
        let path = dir.join(src);
        if std::fs::symlink_metadata(&path).is_err() {
            c.report(key, format!("{} does not exist", path.display()));
            continue;
        }
        checked.insert(dest.clone(), path);
    }
    checked
}

/// What the step's layer holds: `outputs` (with `exclude`) or the whole `diff`.
fn check_capture(c: &mut Checker<'_>, at: &KeyPath, spec: &StepSpec) -> Capture {
    match spec.capture.as_deref().unwrap_or("outputs") {
        "outputs" => {
            if spec.outputs.is_empty() {
                c.report(
                    at.clone(),
                    "a step needs `outputs` (paths to keep) or `capture = \"diff\"`",
                );
            }
            for (i, o) in spec.outputs.iter().enumerate() {
                if let Err(e) = image_path(o) {
                    c.report(at.join("outputs").join(i), e);
                }
            }
            if let Err(e) = gantry_layer::recipe::TreeFilter::new(&[], &spec.exclude) {
                c.report(at.join("exclude"), e.to_string());
            }
            Capture::Outputs {
                paths: spec.outputs.clone(),
                exclude: spec.exclude.clone(),
            }
        }
        "diff" => {
            if !spec.outputs.is_empty() {
                c.report(
                    at.join("outputs"),
                    "`outputs` and `capture = \"diff\"` exclude each other",
                );
            }
            if !spec.exclude.is_empty() {
                c.report(at.join("exclude"), "`exclude` applies to `outputs` only");
            }
            Capture::Diff
        }
        other => {
            c.report(
                at.join("capture"),
                format!("expected \"outputs\" or \"diff\", found {other:?}"),
            );
            Capture::Diff
        }
    }
}

/// An absolute path inside the image, without `..`.
fn image_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?}: paths in the image are absolute"));
    }
    if p.split('/').any(|s| s == "..") || p.contains('\0') {
        return Err(format!("{p:?}: `..` and NUL are not allowed"));
    }
    Ok(())
}
