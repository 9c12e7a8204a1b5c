//! `[pull.NAME]` targets.

use std::collections::BTreeMap;

use gantry_oci::{Digest, Platform, Reference};

use super::{Checker, check_name, kp, valid_name};
use crate::schema::{ProjectFile, PullSpec};
use crate::spans::Seg;
use crate::{PullSource, PullTarget};

/// Checks a pull target; `None` when it cannot be used at all.
pub(super) fn check_pull(
    c: &mut Checker<'_>,
    name: &str,
    spec: &PullSpec,
    parsed: &ProjectFile,
) -> Option<PullTarget> {
    let at = kp(&["pull", name]);
    check_name(c, &at, name);
    if parsed.layer.contains_key(name) || parsed.image.contains_key(name) {
        c.report(
            at.clone(),
            format!("the name {name:?} is also a layer or image; target names must be unique"),
        );
    }
    let repository = match Reference::parse(&spec.repository) {
        Ok(r) if r.tag().is_some() || r.digest().is_some() => {
            c.report(
                at.join("repository"),
                "give the repository alone; put a tag in `tag` and a digest in `digest`",
            );
            return None;
        }
        Ok(r) => r,
        Err(e) => {
            c.report(at.join("repository"), e.to_string());
            return None;
        }
    };
    if let Some(t) = &spec.tag
        && let Err(e) = gantry_oci::validate_tag(t)
    {
        c.report(at.join("tag"), e);
    }
    let digest = spec.digest.as_ref().and_then(|d| match Digest::parse(d) {
        Ok(d) => Some(d),
        Err(e) => {
            c.report(at.join("digest"), e.to_string());
            None
        }
    });
    let mut variants = BTreeMap::new();
    for (v, d) in &spec.variants {
        if !valid_name(v) {
            c.report(
                at.join("variants").join(Seg::Key(v.clone())),
                "variant names follow target names",
            );
        }
        match Digest::parse(d) {
            Ok(d) => {
                variants.insert(v.clone(), d);
            }
            Err(e) => c.report(at.join("variants").join(Seg::Key(v.clone())), e.to_string()),
        }
    }
    let source = match (&spec.tag, digest, spec.variants.is_empty()) {
        (_, Some(d), true) => PullSource::Digest(d, spec.tag.clone()),
        (Some(t), None, true) if spec.digest.is_none() => PullSource::Tag(t.clone()),
        (None, None, false) => PullSource::Variants(variants),
        (_, _, false) => {
            c.report(
                at.join("variants"),
                "`variants` replace `tag` and `digest`; give one",
            );
            return None;
        }
        (None, None, true) if spec.digest.is_none() => {
            c.report(
                at.clone(),
                "a pull target needs a `tag`, a `digest` or `variants`",
            );
            return None;
        }
        _ => return None,
    };
    let platform = spec
        .platform
        .as_ref()
        .and_then(|p| match Platform::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.report(at.join("platform"), e.to_string());
                None
            }
        });
    Some(PullTarget {
        name: name.to_owned(),
        repository,
        source,
        platform,
        anonymous: spec.anonymous,
        at: c.spans.locate(&at),
    })
}
