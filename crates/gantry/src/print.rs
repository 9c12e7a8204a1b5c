//! Human and JSON output. Results go to stdout, summaries and progress to stderr.

use std::io::{self, Write};

use anyhow::Result;
use gantry_layer::tarread::escape_name;
use gantry_ops::build::BuildReport;
use gantry_ops::image::ImageResult;
use gantry_ops::inspect::{ImageReport, InspectReport, LayerReport};
use gantry_ops::layer::LayerResult;
use gantry_ops::lock::{LockChange, LockReport};
use gantry_ops::ls::LsRow;
use gantry_ops::maintenance::GcResult;
use gantry_ops::push::PushReport;
use gantry_store::FsckReport;

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub(crate) fn layer(r: &LayerResult, quiet: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    match &r.info_path {
        None => {
            out.write_all(&r.info.to_json())?;
            writeln!(out)?;
        }
        Some(p) => {
            writeln!(out, "{}", r.info.digest)?;
            if !quiet {
                eprintln!("wrote layer info {}", p.display());
            }
        }
    }
    if !quiet {
        let plain = r
            .uncompressed_size
            .map(|s| format!(" from {} of tar", human_bytes(s)))
            .unwrap_or_default();
        eprintln!(
            "layer {} ({}, {}{plain})",
            r.info.digest,
            r.info.media_type,
            human_bytes(r.info.size)
        );
        if let Some(o) = &r.output {
            eprintln!("wrote blob {}", o.display());
        }
    }
    Ok(())
}

pub(crate) fn image(r: &ImageResult, quiet: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    match &r.metadata_path {
        None => {
            out.write_all(&gantry_oci::json::to_canonical_vec(&r.metadata))?;
            writeln!(out)?;
        }
        Some(_) => writeln!(out, "{}", r.metadata.manifest.digest)?,
    }
    if !quiet {
        let n = r.metadata.layers.len();
        eprintln!(
            "image {} ({}, {n} layer{}) written to {}:{}",
            r.metadata.manifest.digest,
            r.metadata.platform,
            if n == 1 { "" } else { "s" },
            r.output.display(),
            r.metadata.tag.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub(crate) fn inspect(r: &InspectReport, json: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    match r {
        InspectReport::Image(i) => inspect_image(&mut out, i)?,
        InspectReport::Layer(l) => inspect_layer(&mut out, l)?,
    }
    Ok(())
}

fn row(out: &mut impl Write, key: &str, value: impl std::fmt::Display) -> io::Result<()> {
    writeln!(out, "{key:<12} {value}")
}

fn inspect_image(out: &mut impl Write, i: &ImageReport) -> io::Result<()> {
    match &i.layout {
        Some(dir) => row(out, "Layout", dir)?,
        None => row(out, "Image", &i.source)?,
    }
    row(out, "Tags", i.tags.join(", "))?;
    row(out, "Digest", &i.digest)?;
    row(out, "MediaType", &i.media_type)?;
    if let Some(a) = &i.manifest.artifact_type {
        row(out, "ArtifactType", a)?;
    }
    if let Some(p) = &i.platform {
        row(out, "Platform", p)?;
    }
    if let Some(c) = &i.config {
        row(out, "Created", c.created.as_deref().unwrap_or("-"))?;
        if let Some(a) = &c.author {
            row(out, "Author", a)?;
        }
        if let Some(cc) = &c.config {
            let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
            if let Some(e) = &cc.entrypoint {
                row(out, "Entrypoint", json(e))?;
            }
            if let Some(e) = &cc.cmd {
                row(out, "Cmd", json(e))?;
            }
            if let Some(u) = &cc.user {
                row(out, "User", u)?;
            }
            if let Some(w) = &cc.working_dir {
                row(out, "WorkingDir", w)?;
            }
            for e in cc.env.iter().flatten() {
                row(out, "Env", e)?;
            }
            for p in cc.exposed_ports.iter().flat_map(|m| m.keys()) {
                row(out, "Port", p)?;
            }
            for v in cc.volumes.iter().flat_map(|m| m.keys()) {
                row(out, "Volume", v)?;
            }
            for (k, v) in cc.labels.iter().flatten() {
                row(out, "Label", format!("{k}={v}"))?;
            }
            if let Some(s) = &cc.stop_signal {
                row(out, "StopSignal", s)?;
            }
        }
    }
    for (k, v) in &i.manifest.annotations {
        row(out, "Annotation", format!("{k}={v}"))?;
    }
    writeln!(out, "Layers")?;
    let history: Vec<_> = i
        .config
        .iter()
        .flat_map(|c| c.history.iter().filter(|h| h.empty_layer != Some(true)))
        .collect();
    for (n, l) in i.manifest.layers.iter().enumerate() {
        let by = history
            .get(n)
            .and_then(|h| h.created_by.as_deref())
            .unwrap_or("");
        writeln!(
            out,
            "  {n:>3}  {}  {:>10}  {}  {by}",
            l.digest,
            human_bytes(l.size),
            l.media_type.rsplit('.').next().unwrap_or(&l.media_type)
        )?;
    }
    Ok(())
}

fn inspect_layer(out: &mut impl Write, l: &LayerReport) -> io::Result<()> {
    row(out, "Digest", &l.digest)?;
    row(out, "MediaType", &l.media_type)?;
    row(
        out,
        "Size",
        format!("{} ({} bytes)", human_bytes(l.size), l.size),
    )?;
    if let Some(d) = &l.diff_id {
        row(out, "DiffID", d)?;
    }
    if let Some(s) = l.uncompressed_size {
        row(out, "TarSize", format!("{} ({s} bytes)", human_bytes(s)))?;
    }
    if let Some(n) = l.entries {
        row(out, "Entries", n)?;
    }
    for (k, v) in &l.annotations {
        row(out, "Annotation", format!("{k}={v}"))?;
    }
    if let Some(h) = &l.history {
        if let Some(by) = &h.created_by {
            row(out, "CreatedBy", by)?;
        }
        if let Some(c) = &h.comment {
            row(out, "Comment", c)?;
        }
    }
    if let Some(s) = l.in_store {
        row(out, "InStore", if s { "yes" } else { "no" })?;
    }
    Ok(())
}

/// Streams `gantry ls` rows.
pub(crate) struct LsPrinter {
    json: bool,
    out: io::BufWriter<io::Stdout>,
    error: Option<io::Error>,
}

impl LsPrinter {
    pub(crate) fn new(json: bool) -> Self {
        LsPrinter {
            json,
            out: io::BufWriter::new(io::stdout()),
            error: None,
        }
    }

    pub(crate) fn row(&mut self, r: &LsRow) {
        if self.error.is_some() {
            return;
        }
        let res = if self.json {
            serde_json::to_writer(&mut self.out, r)
                .map_err(io::Error::other)
                .and_then(|()| writeln!(self.out))
        } else {
            let e = &r.entry;
            let layer = r.layer.map(|l| format!("{l:>3} ")).unwrap_or_default();
            let digest = e
                .digest
                .as_ref()
                .map_or_else(|| "-".to_owned(), |d| d.short());
            // Names are bytes: escaped as `tar -tv` does, so each entry is one line and
            // distinct names look distinct.
            let link = e
                .raw_link
                .as_ref()
                .map(|l| format!(" -> {}", escape_name(l)))
                .unwrap_or_default();
            writeln!(
                self.out,
                "{layer}{} {:>11} {:>10} {:<19} {}{link}",
                mode_string(e.kind, &e.mode),
                format!("{}/{}", e.uid, e.gid),
                e.size,
                digest,
                escape_name(&e.raw_path)
            )
        };
        if let Err(err) = res {
            self.error = Some(err);
        }
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e.into());
        }
        self.out.flush()?;
        Ok(())
    }
}

fn mode_string(kind: &str, mode: &str) -> String {
    let t = match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "hardlink" => 'h',
        "char" => 'c',
        "block" => 'b',
        "fifo" => 'p',
        _ => '-',
    };
    let m = u32::from_str_radix(mode, 8).unwrap_or(0);
    let mut s = String::with_capacity(10);
    s.push(t);
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (m >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (m & special != 0, x) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

pub(crate) fn build(r: &BuildReport, json: bool, quiet: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    for i in &r.images {
        let own = i.layers.iter().filter(|l| l.name.is_some()).count();
        let cached = i
            .layers
            .iter()
            .filter(|l| l.cache_hit == Some(true))
            .count();
        let n = i.layers.len();
        writeln!(
            out,
            "{} {} {}:{} ({n} layer{}, {own} from the project, {cached} cached{})",
            i.name,
            i.digest,
            i.output,
            i.tag,
            if n == 1 { "" } else { "s" },
            if i.up_to_date { ", up to date" } else { "" }
        )?;
    }
    if !quiet {
        let remote = if r.cache.remote_hits > 0 || r.cache.remote_bytes > 0 {
            format!(
                ", {} from the remote cache ({} moved)",
                r.cache.remote_hits,
                human_bytes(r.cache.remote_bytes)
            )
        } else {
            String::new()
        };
        eprintln!(
            "{} layer(s) from the cache{remote}, {} built; {} input file(s) rehashed; {:.2} s",
            r.cache.hits,
            r.cache.misses,
            r.cache.stat_misses,
            r.duration_ms as f64 / 1000.0
        );
    }
    Ok(())
}

pub(crate) fn lock(r: &LockReport, quiet: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    for e in &r.entries {
        let what = match &e.change {
            LockChange::Added => "pinned".to_owned(),
            LockChange::Updated { from } => format!("moved from {}", from.short()),
            LockChange::Unchanged => "unchanged".to_owned(),
        };
        writeln!(out, "{} {}@{} ({what})", e.name, e.reference, e.digest)?;
    }
    if !quiet {
        for n in &r.removed {
            eprintln!("dropped the pin of {n} (no longer a tagged pull target)");
        }
        eprintln!("wrote {}", r.file);
    }
    Ok(())
}

pub(crate) fn push(r: &PushReport, json: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    for p in &r.pushed {
        writeln!(out, "{}", p.pushed)?;
    }
    Ok(())
}

pub(crate) fn fsck(r: &FsckReport) -> Result<()> {
    let mut out = io::stdout().lock();
    for f in &r.findings {
        let fixed = if f.repaired { " (repaired)" } else { "" };
        writeln!(out, "{}{fixed}", f.problem)?;
    }
    let left = r.unrepaired();
    if r.is_clean() {
        writeln!(out, "checked {} blobs: no problems", r.blobs_checked)?;
    } else if left < r.findings.len() {
        writeln!(
            out,
            "checked {} blobs: {} problem(s), {} repaired, {left} left",
            r.blobs_checked,
            r.findings.len(),
            r.findings.len() - left
        )?;
    } else {
        writeln!(
            out,
            "checked {} blobs: {} problem(s)",
            r.blobs_checked,
            r.findings.len()
        )?;
    }
    Ok(())
}

pub(crate) fn gc(g: &GcResult, dry_run: bool) -> Result<()> {
    let verb = if dry_run { "would remove" } else { "removed" };
    let r = &g.store;
    if g.cache_entries_dropped > 0 {
        println!(
            "{} {} unused build-cache entries",
            if dry_run { "would drop" } else { "dropped" },
            g.cache_entries_dropped
        );
    }
    if g.rootfs_entries_dropped > 0 {
        println!("{verb} {} unused unpacked images", g.rootfs_entries_dropped);
    }
    for p in &r.removed_output_temps {
        println!("{verb} the leftover temp {}", p.display());
    }
    // Bytes freed only: a removed blob that is still hard-linked outside the store frees nothing.
    let linked = if r.still_linked_bytes > 0 {
        format!(
            "; {} still hard-linked outside the store",
            human_bytes(r.still_linked_bytes)
        )
    } else {
        String::new()
    };
    println!(
        "{verb} {} blobs ({} freed{linked}), kept {} ({}); {} stale refs dropped, {} temp entries removed",
        r.removed_blobs,
        human_bytes(r.removed_bytes),
        r.kept_blobs,
        human_bytes(r.kept_bytes),
        r.dropped_refs.len(),
        r.removed_temp
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string("dir", "0755"), "drwxr-xr-x");
        assert_eq!(mode_string("file", "4755"), "-rwsr-xr-x");
        assert_eq!(mode_string("dir", "1777"), "drwxrwxrwt");
        assert_eq!(mode_string("file", "2644"), "-rw-r-Sr--");
    }

    #[test]
    fn bytes_render() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
