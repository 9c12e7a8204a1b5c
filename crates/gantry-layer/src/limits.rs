//! Caps on decompressed layer streams, enforced in one place for every decompressor: the reader
//! [`crate::tarread::decoder`] returns counts the compressed bytes the decompressor actually
//! *consumed* (not what was read ahead into buffers) and the bytes it produced, and fails as
//! soon as a layer or an image grows past its absolute cap, or a layer inflates more than
//! [`Limits::max_ratio`] times once past [`Limits::ratio_floor`]. Nothing past a cap is ever
//! handed on, so a bomb stops within one read of the limit.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Caps on what decompressing layers may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed bytes of one layer (the whole tar stream, padding included).
    pub max_layer_size: u64,
    /// Decompressed bytes of all the layers of one image together.
    pub max_image_size: u64,
    /// Decompressed bytes per compressed byte consumed, checked past [`Limits::ratio_floor`].
    pub max_ratio: u64,
    /// Decompressed bytes of a layer allowed whatever the ratio, so that small, very
    /// compressible layers (a few files of zeros) are not refused.
    pub ratio_floor: u64,
}

/// Default [`Limits::max_layer_size`]: 64 GiB, room for the largest real layers (CUDA and ML
/// framework layers are a few GiB to a few tens of GiB uncompressed).
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;
/// Default [`Limits::max_image_size`]: 256 GiB.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 256 << 30;
/// Default [`Limits::max_ratio`]: deflate cannot exceed ~1032:1, so only a stream of almost
/// nothing but zeros (a bomb) trips it; real layers are 2–20:1.
pub const DEFAULT_MAX_RATIO: u64 = 1000;
/// Default [`Limits::ratio_floor`]: 64 MiB, so a bomb is stopped after writing at most that.
pub const DEFAULT_RATIO_FLOOR: u64 = 64 << 20;

impl Default for Limits {
    /// 64 GiB per layer, 256 GiB per image, ratio 1000 above a 64 MiB floor.
    fn default() -> Self {
        Limits {
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            max_ratio: DEFAULT_MAX_RATIO,
            ratio_floor: DEFAULT_RATIO_FLOOR,
        }
    }
}

/// The counters of one decompressed stream, shared with the reader [`crate::tarread::decoder`]
/// returns (which may run on another thread).
#[derive(Debug, Default)]
pub struct Meter {
    /// Decompressed bytes of the earlier layers of the same image.
    before: u64,
    consumed: AtomicU64,
    produced: AtomicU64,
    exceeded: OnceLock<String>,
}

impl Meter {
    /// A meter for a lone layer (or the first of an image).
    pub fn new() -> Arc<Meter> {
        Arc::new(Meter::default())
    }

    /// A meter for a layer of an image whose earlier layers decompressed to `image_bytes`.
    pub fn after(image_bytes: u64) -> Arc<Meter> {
        Arc::new(Meter {
            before: image_bytes,
            ..Meter::default()
        })
    }

    /// Compressed bytes the decompressor consumed.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// Decompressed bytes produced (and handed on).
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Which cap the stream hit, if it hit one: the reader then failed, and keeps failing.
    pub fn exceeded(&self) -> Option<&str> {
        self.exceeded.get().map(String::as_str)
    }
}

/// Counts the compressed bytes a decompressor consumes from its buffered input.
pub(crate) struct CountConsumed<R> {
    pub(crate) inner: R,
    pub(crate) meter: Arc<Meter>,
}

impl<R: Read> Read for CountConsumed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountConsumed<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.meter.consumed.fetch_add(amt as u64, Ordering::Relaxed);
        self.inner.consume(amt);
    }
}

/// Counts and caps a decompressor's output.
pub(crate) struct Capped<D> {
    pub(crate) inner: D,
    pub(crate) meter: Arc<Meter>,
    pub(crate) limits: Limits,
}

impl<D> Capped<D> {
    fn check(&self, produced: u64) -> Result<(), String> {
        let l = &self.limits;
        if produced > l.max_layer_size {
            return Err(format!(
                "the layer decompresses to more than {} (the layer size limit; raise it with \
                 --max-layer-size or max-layer-size in [settings])",
                format_size(l.max_layer_size)
            ));
        }
        if self.meter.before.saturating_add(produced) > l.max_image_size {
            return Err(format!(
                "the image decompresses to more than {} (the image size limit; raise it with \
                 --max-image-size or max-image-size in [settings])",
                format_size(l.max_image_size)
            ));
        }
        let consumed = self.meter.consumed();
        if produced > l.ratio_floor && produced > consumed.saturating_mul(l.max_ratio.max(1)) {
            return Err(format!(
                "the layer decompresses to more than {} times its compressed size \
                 ({produced} bytes from {consumed}; the ratio limit: a decompression bomb? If \
                 it is a real layer of almost nothing but zeros, raise it with --max-ratio or \
                 max-ratio in [settings])",
                l.max_ratio
            ));
        }
        Ok(())
    }
}

impl<D: Read> Read for Capped<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = self.meter.exceeded() {
            return Err(io::Error::other(reason.to_owned()));
        }
        let n = self.inner.read(buf)?;
        let produced = self.meter.produced() + n as u64;
        if let Err(reason) = self.check(produced) {
            let _ = self.meter.exceeded.set(reason.clone());
            return Err(io::Error::other(reason));
        }
        self.meter.produced.store(produced, Ordering::Relaxed);
        Ok(n)
    }
}

const UNITS: [(&str, u32); 5] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)];

/// A size as people write it: `64GiB`, `512 MiB`, `10GB`, `1048576`. Binary (KiB, MiB, GiB,
/// TiB) and decimal (kB, MB, GB, TB) units, any case; no unit means bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let bad = || {
        format!(
            "invalid size {text:?}: expected a number of bytes with an optional unit \
             (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB), such as \"64GiB\""
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// A size in the largest binary unit that divides it (`64 GiB`), else in bytes.
pub fn format_size(n: u64) -> String {
    for (unit, shift) in UNITS {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("512 mib"), Ok(512 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1k"), Ok(1024));
        for bad in ["", "GiB", "1.5GiB", "-1", "12 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(64 << 30), "64 GiB");
        assert_eq!(format_size(1536 << 20), "1536 MiB");
        assert_eq!(format_size(1000), "1000 B");
        assert_eq!(format_size(0), "0 B");
    }

    fn capped(
        data: Vec<u8>,
        consumed: u64,
        limits: Limits,
    ) -> (Capped<io::Cursor<Vec<u8>>>, Arc<Meter>) {
        let meter = Meter::new();
        meter.consumed.store(consumed, Ordering::Relaxed);
        (
            Capped {
                inner: io::Cursor::new(data),
                meter: meter.clone(),
                limits,
            },
            meter,
        )
    }

    #[test]
    fn the_size_cap_trips_before_handing_on_bytes_past_it() {
        let limits = Limits {
            max_layer_size: 1000,
            ..Limits::default()
        };
        let (mut r, meter) = capped(vec![0; 5000], 5000, limits);
        let mut buf = [0u8; 600];
        assert_eq!(r.read(&mut buf).unwrap(), 600);
        let err = r.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("layer size limit"), "{err}");
        assert_eq!(
            meter.produced(),
            600,
            "nothing past the cap is counted as handed on"
        );
        assert!(meter.exceeded().is_some());
        assert!(r.read(&mut buf).is_err(), "it keeps failing");
    }

    #[test]
    fn the_image_cap_counts_earlier_layers() {
        let limits = Limits {
            max_image_size: 1000,
            ..Limits::default()
        };
        let meter = Meter::after(900);
        meter.consumed.store(u64::MAX / 2, Ordering::Relaxed);
        let mut r = Capped {
            inner: io::Cursor::new(vec![0; 200]),
            meter,
            limits,
        };
        let err = r.read(&mut [0u8; 200]).unwrap_err();
        assert!(err.to_string().contains("image size limit"), "{err}");
    }

    #[test]
    fn the_ratio_is_against_consumed_bytes_above_the_floor() {
        let limits = Limits {
            max_ratio: 10,
            ratio_floor: 100,
            ..Limits::default()
        };
        let (mut r, _) = capped(vec![0; 5000], 10, limits);
        let mut buf = [0u8; 100];
        assert_eq!(r.read(&mut buf).unwrap(), 100, "within the floor");
        let err = r.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("ratio limit"), "{err}");
    }
}
