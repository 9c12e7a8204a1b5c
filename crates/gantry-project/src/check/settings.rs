//! `[settings]`.

use std::path::Path;

use gantry_oci::{Platform, Reference};

use super::{Checker, kp};
use crate::schema::{EpochSpec, ProjectFile};
use crate::{DEFAULT_OUTPUT_DIR, Epoch, MAX_REGISTRY_TIMEOUT, Settings};

/// Checks `[settings]`; what is wrong is reported and left unset.
pub(super) fn check_settings(c: &mut Checker<'_>, parsed: &ProjectFile, dir: &Path) -> Settings {
    let s = &parsed.settings;
    if let Err(e) =
        gantry_layer::Compressor::parse(s.compression.as_deref().unwrap_or("gzip"), s.level)
    {
        c.report(kp(&["settings", "compression"]), e.to_string());
    }
    let source_date_epoch = match &s.source_date_epoch {
        None => None,
        Some(EpochSpec::Seconds(n)) if *n >= 0 => Some(Epoch::Seconds(*n)),
        Some(EpochSpec::Word(w)) if w == "git" => Some(Epoch::Git),
        Some(other) => {
            c.report(
                kp(&["settings", "source-date-epoch"]),
                format!("expected non-negative seconds or \"git\", found {other:?}"),
            );
            None
        }
    };
    let platform = s.platform.as_ref().and_then(|p| match Platform::parse(p) {
        Ok(p) => Some(p),
        Err(e) => {
            c.report(kp(&["settings", "platform"]), e.to_string());
            None
        }
    });
    let mut cache_repo = |key: &str, value: &Option<String>| {
        value.as_ref().and_then(|v| match Reference::parse(v) {
            Ok(r) if r.tag().is_none() && r.digest().is_none() => Some(r),
            Ok(_) => {
                c.report(
                    kp(&["settings", key]),
                    "give a repository (host/path), without a tag or digest",
                );
                None
            }
            Err(e) => {
                c.report(kp(&["settings", key]), e.to_string());
                None
            }
        })
    };
    let cache_from = cache_repo("cache-from", &s.cache_from);
    let cache_to = cache_repo("cache-to", &s.cache_to);
    let registry_timeout = s.registry_timeout.and_then(|t| match u64::try_from(t) {
        Ok(t) if (1..=MAX_REGISTRY_TIMEOUT).contains(&t) => Some(t),
        _ => {
            c.report(
                kp(&["settings", "registry-timeout"]),
                format!("expected seconds from 1 to {MAX_REGISTRY_TIMEOUT}, found {t}"),
            );
            None
        }
    });
    let mut size = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .and_then(|v| match gantry_layer::limits::parse_size(v) {
                Ok(0) => {
                    c.report(kp(&["settings", key]), "must be more than 0");
                    None
                }
                Ok(n) => Some(n),
                Err(e) => {
                    c.report(kp(&["settings", key]), e);
                    None
                }
            })
    };
    let max_layer_size = size("max-layer-size", &s.max_layer_size);
    let max_image_size = size("max-image-size", &s.max_image_size);
    let max_ratio = match s.max_ratio {
        Some(0) => {
            c.report(kp(&["settings", "max-ratio"]), "must be more than 0");
            None
        }
        r => r,
    };
    Settings {
        cache_from,
        cache_to,
        max_layer_size,
        max_image_size,
        max_ratio,
        source_date_epoch,
        output_dir: dir.join(s.output_dir.as_deref().unwrap_or(DEFAULT_OUTPUT_DIR)),
        platform,
        insecure_registries: s.insecure_registries.clone(),
        registry_timeout,
        registry_ca: s
            .registry_ca
            .iter()
            .map(|(h, p)| (h.clone(), dir.join(p)))
            .collect(),
    }
}
