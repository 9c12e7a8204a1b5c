//! `gantry lock`: pin the tags of pull targets to digests in gantry.lock.

use anyhow::{Context as _, Result, bail};
use gantry_cli::LockArgs;
use gantry_oci::Digest;
use gantry_project::{LockedPull, PullSource};
use serde::Serialize;

use crate::Context;
use crate::build::load_project;

/// What happened to one pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "change")]
pub enum LockChange {
    /// Newly pinned.
    Added,
    /// Moved from an older digest.
    Updated {
        /// The digest it pointed to before.
        from: Digest,
    },
    /// Kept as it was.
    Unchanged,
}

/// One pull target's pin.
#[derive(Debug, Clone, Serialize)]
pub struct LockEntry {
    /// The pull target.
    pub name: String,
    /// `registry/repository:tag`.
    pub reference: String,
    /// The digest it is pinned to.
    pub digest: Digest,
    /// What changed.
    #[serde(flatten)]
    pub change: LockChange,
}

/// What `gantry lock` did.
#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    /// The lock file.
    pub file: String,
    /// Every pinned tag.
    pub entries: Vec<LockEntry>,
    /// Pins removed because their pull target is gone or no longer uses a tag.
    pub removed: Vec<String>,
}

/// Runs `gantry lock`: pins tags that are not pinned yet; with `--update`, moves the pins of
/// all (or the named) pull targets to what their tags point to now.
pub fn run(ctx: &Context, args: &LockArgs) -> Result<LockReport> {
    let project = load_project(ctx, &args.project)?;
    if !args.names.is_empty() && !args.update {
        bail!("pull target names are for `gantry lock --update NAME…`");
    }
    for n in &args.names {
        match project.pulls.get(n).map(|p| &p.source) {
            Some(PullSource::Tag(_)) => {}
            Some(_) => bail!("pull.{n} is pinned by digest in the project file, not by a tag"),
            None => bail!("{}: no pull target named {n:?}", project.file.display()),
        }
    }
    let mut lock = project.lock.clone();
    let mut removed = Vec::new();
    lock.pull.retain(|name, _| {
        let keep = matches!(
            project.pulls.get(name).map(|p| &p.source),
            Some(PullSource::Tag(_))
        );
        if !keep {
            removed.push(name.clone());
        }
        keep
    });
    let mut client = None;
    let mut entries = Vec::new();
    for (name, pull) in &project.pulls {
        let PullSource::Tag(tag) = &pull.source else {
            continue;
        };
        let repository = pull.repository.name();
        let reference = format!("{repository}:{tag}");
        let existing = lock.pinned(name, &repository, tag).cloned();
        let refresh = existing.is_none()
            || (args.update && (args.names.is_empty() || args.names.contains(name)));
        if !refresh {
            let digest = existing.expect("not refreshed, so pinned");
            entries.push(LockEntry {
                name: name.clone(),
                reference,
                digest,
                change: LockChange::Unchanged,
            });
            continue;
        }
        let client = match &client {
            Some(c) => c,
            None => client.insert(crate::registry::client(ctx, Some(&project))?),
        };
        let repo = client.repo(
            pull.repository.registry(),
            pull.repository.repository(),
            pull.anonymous,
        );
        let desc = repo
            .head_manifest(tag)
            .with_context(|| format!("pull.{name}: cannot resolve {reference}"))?
            .with_context(|| format!("pull.{name}: {reference} does not exist"))?;
        let change = match existing {
            None => LockChange::Added,
            Some(d) if d == desc.digest => LockChange::Unchanged,
            Some(d) => LockChange::Updated { from: d },
        };
        lock.pull.insert(
            name.clone(),
            LockedPull {
                repository,
                tag: tag.clone(),
                digest: desc.digest.clone(),
            },
        );
        entries.push(LockEntry {
            name: name.clone(),
            reference,
            digest: desc.digest,
            change,
        });
    }
    if lock != project.lock || !lock.path.exists() {
        lock.save()?;
    }
    Ok(LockReport {
        file: lock.path.display().to_string(),
        entries,
        removed,
    })
}
