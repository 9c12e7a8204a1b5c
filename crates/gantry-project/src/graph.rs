//! The target graph: dependencies, build order, cycles, and finding targets by name.

use std::collections::{BTreeMap, BTreeSet};

use crate::check::{Checker, kp};
use crate::{
    BaseRef, Error, ImageTarget, Pin, Project, PullSource, PullTarget, StepTarget, TargetRef,
};

/// Whether the layer `name` stands alone: it is the first layer of a scratch image (or step)
/// wherever it is used, or it is used nowhere. Only such a layer carries its implicit parent
/// directories (root, 0755); a layer that goes on top of a base or of other layers leaves out
/// the directories it does not describe, so the base's `/tmp` (1777) or `/home/app` (0700,
/// owned by 1000) keep their metadata. A layer used both ways leaves them out: extractors create a
/// missing parent as root 0755 anyway, while an entry would change an existing directory.
pub(crate) fn stands_alone(
    name: &str,
    images: &BTreeMap<String, ImageTarget>,
    steps: &BTreeMap<String, StepTarget>,
) -> bool {
    let uses = images
        .values()
        .map(|i| (&i.base, &i.layers))
        .chain(steps.values().map(|s| (&s.base, &s.layers)));
    let mut alone = true;
    for (base, layers) in uses {
        for (i, l) in layers.iter().enumerate() {
            if l == name {
                alone &= i == 0 && *base == BaseRef::Scratch;
            }
        }
    }
    alone
}

impl Project {
    fn pull_ref_ok(&self, name: &str) -> bool {
        let (base, variant) = split_variant(name);
        match (self.pulls.get(base).map(|p| &p.source), variant) {
            (Some(PullSource::Variants(v)), Some(var)) => v.contains_key(var),
            (Some(PullSource::Variants(_)), None) | (None, _) => false,
            (Some(_), variant) => variant.is_none(),
        }
    }

    /// The pull target of a `NAME` or `NAME#variant` reference, and what it resolves to now
    /// (the project's digest, the variant's, the lock's pin, or an unpinned tag).
    pub fn pin(&self, reference: &str) -> Option<(&PullTarget, Pin)> {
        let (name, variant) = split_variant(reference);
        let pull = self.pulls.get(name)?;
        let pin = match (&pull.source, variant) {
            (PullSource::Digest(d, _), None) => Pin::Digest(d.clone()),
            (PullSource::Variants(v), Some(var)) => Pin::Digest(v.get(var)?.clone()),
            (PullSource::Tag(t), None) => {
                match self.lock.pinned(name, &pull.repository.name(), t) {
                    Some(d) => Pin::Digest(d.clone()),
                    None => Pin::Unpinned(t.clone()),
                }
            }
            _ => return None,
        };
        Some((pull, pin))
    }

    /// The direct dependencies of a target.
    pub fn deps(&self, t: &TargetRef) -> Vec<TargetRef> {
        match t {
            TargetRef::Layer(_) | TargetRef::Pull(_) => Vec::new(),
            TargetRef::Image(n) => {
                let img = &self.images[n];
                self.base_and_layers(&img.base, &img.layers)
            }
            TargetRef::Step(n) => {
                let step = &self.steps[n];
                self.base_and_layers(&step.base, &step.layers)
            }
        }
    }

    fn base_and_layers(&self, base: &BaseRef, layers: &[String]) -> Vec<TargetRef> {
        let mut d: Vec<TargetRef> = Vec::new();
        match base {
            BaseRef::Image(b) => d.push(TargetRef::Image(b.clone())),
            BaseRef::Pull(p) => d.push(TargetRef::Pull(p.clone())),
            BaseRef::Scratch | BaseRef::Fixed(_) => {}
        }
        for l in layers {
            let r = self.layer_ref(l);
            if !d.contains(&r) {
                d.push(r);
            }
        }
        d
    }

    /// The target of a name in a `layers` list: a layer or a step.
    pub fn layer_ref(&self, name: &str) -> TargetRef {
        if self.steps.contains_key(name) {
            TargetRef::Step(name.to_owned())
        } else {
            TargetRef::Layer(name.to_owned())
        }
    }

    /// The targets to build for `requested` names (every image when empty), with all their
    /// dependencies, each listed after its dependencies.
    pub fn plan(&self, requested: &[String]) -> Result<Vec<TargetRef>, Error> {
        let roots: Vec<TargetRef> = if requested.is_empty() {
            self.images.keys().cloned().map(TargetRef::Image).collect()
        } else {
            requested
                .iter()
                .map(|n| self.target(n))
                .collect::<Result<_, _>>()?
        };
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for r in roots {
            self.visit(&r, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, t: &TargetRef, seen: &mut BTreeSet<TargetRef>, order: &mut Vec<TargetRef>) {
        if !seen.insert(t.clone()) {
            return;
        }
        for d in self.deps(t) {
            self.visit(&d, seen, order);
        }
        order.push(t.clone());
    }

    /// The target with this name.
    pub fn target(&self, name: &str) -> Result<TargetRef, Error> {
        if self.layers.contains_key(name) {
            Ok(TargetRef::Layer(name.to_owned()))
        } else if self.images.contains_key(name) {
            Ok(TargetRef::Image(name.to_owned()))
        } else if self.steps.contains_key(name) {
            Ok(TargetRef::Step(name.to_owned()))
        } else if self.pull_ref_ok(name) {
            Ok(TargetRef::Pull(name.to_owned()))
        } else {
            let known: Vec<&str> = self
                .images
                .keys()
                .chain(self.layers.keys())
                .chain(self.steps.keys())
                .chain(self.pulls.keys())
                .map(String::as_str)
                .collect();
            Err(Error::UnknownTarget {
                file: self.file.clone(),
                name: name.to_owned(),
                known: known.join(", "),
            })
        }
    }
}

/// Splits `NAME#variant`.
pub fn split_variant(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('#') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    }
}

/// Reports every cycle between images and steps (through `base` and `layers`), once, at the
/// first target of the cycle.
pub(crate) fn check_cycles(
    c: &mut Checker<'_>,
    images: &BTreeMap<String, ImageTarget>,
    steps: &BTreeMap<String, StepTarget>,
) {
    // Edges between images and steps only: layers and pulls have no dependencies.
    let node = |n: &str| -> Option<(String, Vec<String>)> {
        let (kind, base, layers) = if let Some(i) = images.get(n) {
            ("image", &i.base, &i.layers)
        } else if let Some(s) = steps.get(n) {
            ("step", &s.base, &s.layers)
        } else {
            return None;
        };
        let mut next = Vec::new();
        if let BaseRef::Image(b) = base {
            next.push(b.clone());
        }
        next.extend(layers.iter().filter(|l| steps.contains_key(*l)).cloned());
        Some((kind.to_owned(), next))
    };
    let mut state: BTreeMap<String, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
    let mut reported = BTreeSet::new();
    let names: Vec<String> = images.keys().chain(steps.keys()).cloned().collect();
    for start in names {
        if state.contains_key(&start) {
            continue;
        }
        // Iterative DFS: (name, its successors, next index).
        let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
        let succ = node(&start).map(|n| n.1).unwrap_or_default();
        state.insert(start.clone(), 1);
        stack.push((start, succ, 0));
        while let Some((name, succ, i)) = stack.last_mut() {
            if *i == succ.len() {
                state.insert(name.clone(), 2);
                stack.pop();
                continue;
            }
            let next = succ[*i].clone();
            *i += 1;
            match state.get(&next) {
                Some(1) => {
                    let pos = stack.iter().position(|(n, _, _)| *n == next).unwrap_or(0);
                    let cycle: Vec<String> =
                        stack[pos..].iter().map(|(n, _, _)| n.clone()).collect();
                    let mut key = cycle.clone();
                    key.sort();
                    if reported.insert(key) {
                        let first = &cycle[0];
                        let kind = node(first).map(|n| n.0).unwrap_or_default();
                        let second = cycle.get(1).unwrap_or(&next);
                        let base = images
                            .get(first)
                            .map(|i| &i.base)
                            .or_else(|| steps.get(first).map(|s| &s.base));
                        let edge = if base == Some(&BaseRef::Image(second.clone())) {
                            "base"
                        } else {
                            "layers"
                        };
                        let mut shown = cycle.clone();
                        shown.push(next.clone());
                        c.report(
                            kp(&[&kind, first, edge]),
                            format!(
                                "targets depend on each other in a cycle: {}",
                                shown.join(" -> ")
                            ),
                        );
                    }
                }
                Some(_) => {}
                None => {
                    let succ = node(&next).map(|n| n.1).unwrap_or_default();
                    state.insert(next.clone(), 1);
                    stack.push((next, succ, 0));
                }
            }
        }
    }
}
