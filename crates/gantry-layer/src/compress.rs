//! Compression of layer streams.
//!
//! gzip is written as a sequence of independent gzip members, one per fixed 1 MiB block of
//! input, each compressed by libdeflate on a pool of worker threads and written in input order.
//! Block boundaries depend only on the input, so the bytes are identical for any thread count.
//! (We write this ourselves: the `gzp` crate's output differed between runs.) Multi-member gzip
//! is plain RFC 1952; Go's `compress/gzip` (containerd, Docker), GNU gzip and flate2's
//! `MultiGzDecoder` read it.
//!
//! zstd always runs in multi-threaded mode with at least one worker: libzstd's output differs
//! between 0 workers and ≥ 1, but not between 1, 2 or 4.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use gantry_oci::Compression;

use crate::Error;

/// Input bytes per gzip member.
pub const GZIP_BLOCK_SIZE: usize = 1 << 20;
/// libdeflate's version, part of the compressor identity.
const LIBDEFLATE_VERSION: &str = "1.26";

/// A compression choice with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compressor {
    compression: Compression,
    level: i32,
}

impl Compressor {
    /// No compression.
    pub const NONE: Compressor = Compressor {
        compression: Compression::None,
        level: 0,
    };

    /// A compressor with the default level (gzip 6, zstd 3).
    pub fn new(compression: Compression) -> Self {
        let level = match compression {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        };
        Compressor { compression, level }
    }

    /// A compressor with an explicit level: gzip 1–12 (libdeflate), zstd 1–19.
    pub fn with_level(compression: Compression, level: i32) -> Result<Self, Error> {
        let range = match compression {
            Compression::None => 0..=0,
            Compression::Gzip => 1..=12,
            Compression::Zstd => 1..=19,
        };
        if !range.contains(&level) {
            return Err(Error::InvalidCompression {
                name: format!("{compression} level {level}"),
                reason: format!(
                    "{compression} levels are {}..={}",
                    range.start(),
                    range.end()
                ),
            });
        }
        Ok(Compressor { compression, level })
    }

    /// Parses a compression name (`gzip`, `zstd`, `none`) with an optional level.
    pub fn parse(name: &str, level: Option<i32>) -> Result<Self, Error> {
        let compression =
            Compression::from_name(name).ok_or_else(|| Error::InvalidCompression {
                name: name.to_owned(),
                reason: "known compressions are gzip, zstd and none".to_owned(),
            })?;
        match level {
            None => Ok(Compressor::new(compression)),
            Some(l) => Compressor::with_level(compression, l),
        }
    }

    /// The compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The level (0 for none).
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The layer media type this compressor produces.
    pub fn media_type(&self) -> &'static str {
        self.compression.oci_layer_media_type()
    }

    /// Everything that determines the output bytes: library, version, level, block size.
    /// Part of every cache key, so a compressor upgrade never serves stale digests.
    pub fn identity(&self) -> String {
        match self.compression {
            Compression::None => "none".to_owned(),
            Compression::Gzip => format!(
                "gzip/libdeflate-{LIBDEFLATE_VERSION}/level-{}/members-{GZIP_BLOCK_SIZE}",
                self.level
            ),
            Compression::Zstd => format!(
                "zstd/libzstd-{}/level-{}/mt",
                zstd::zstd_safe::version_string(),
                self.level
            ),
        }
    }

    /// Runs `produce` with a writer whose bytes are compressed into `sink`; returns the sink
    /// and what `produce` returned. `jobs` is the number of compression threads (≥ 1); it never
    /// changes the output.
    pub fn compress<W, T>(
        &self,
        jobs: usize,
        sink: W,
        produce: impl FnOnce(&mut dyn Write) -> Result<T, Error>,
    ) -> Result<(W, T), Error>
    where
        W: Write + Send,
    {
        let jobs = jobs.max(1);
        match self.compression {
            Compression::None => {
                let mut sink = sink;
                let t = produce(&mut sink)?;
                Ok((sink, t))
            }
            Compression::Zstd => {
                let mut enc =
                    zstd::stream::Encoder::new(sink, self.level).map_err(Error::output)?;
                enc.multithread(u32::try_from(jobs).unwrap_or(u32::MAX))
                    .map_err(Error::output)?;
                enc.include_checksum(false).map_err(Error::output)?;
                let t = produce(&mut enc)?;
                let sink = enc.finish().map_err(Error::output)?;
                Ok((sink, t))
            }
            Compression::Gzip => gzip_parallel(self.level, jobs, sink, produce),
        }
    }
}

impl std::fmt::Display for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.compression {
            Compression::None => f.write_str("none"),
            c => write!(f, "{c} (level {})", self.level),
        }
    }
}

type Member = io::Result<Vec<u8>>;
type Job = (Vec<u8>, SyncSender<Member>);

/// Recycled block buffers. Without it every 1 MiB block is a fresh allocation, which glibc
/// serves with mmap, and every page of it faults on first touch: measurable system time.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn get(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_else(|| Vec::with_capacity(GZIP_BLOCK_SIZE))
    }

    fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut v) = self.0.lock() {
            v.push(buf);
        }
    }
}

fn gzip_parallel<W, T>(
    level: i32,
    jobs: usize,
    sink: W,
    produce: impl FnOnce(&mut dyn Write) -> Result<T, Error>,
) -> Result<(W, T), Error>
where
    W: Write + Send,
{
    let lvl = libdeflater::CompressionLvl::new(level).map_err(|_| Error::InvalidCompression {
        name: format!("gzip level {level}"),
        reason: "libdeflate levels are 1..=12".to_owned(),
    })?;
    // Input blocks go producer → worker → back to `inputs`; compressed members go
    // worker → writer → back to `outputs`.
    let inputs = Pool::default();
    let outputs = Pool::default();
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = sync_channel::<Job>(jobs);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..jobs {
            let job_rx = Arc::clone(&job_rx);
            let (inputs, outputs) = (&inputs, &outputs);
            scope.spawn(move || compress_worker(lvl, &job_rx, inputs, outputs));
        }
        // Bounded: at most this many blocks are in flight, which bounds memory.
        let (order_tx, order_rx) = sync_channel::<Receiver<Member>>(jobs * 2 + 1);
        let outputs_ref = &outputs;
        let writer = scope.spawn(move || write_in_order(sink, &order_rx, outputs_ref));

        let mut blocks = BlockWriter {
            buf: inputs.get(),
            job_tx,
            order_tx,
            sent_any: false,
            pool: &inputs,
        };
        let produced = produce(&mut blocks);
        let flushed = blocks.finish();
        let written = writer
            .join()
            .map_err(|_| Error::Internal("gzip writer thread panicked"))?;
        // The writer's error is the root cause when the producer saw only a closed channel.
        let sink = written.map_err(Error::output)?;
        let t = produced?;
        flushed.map_err(Error::output)?;
        Ok((sink, t))
    })
}

fn compress_worker(
    lvl: libdeflater::CompressionLvl,
    jobs: &Mutex<Receiver<Job>>,
    inputs: &Pool,
    outputs: &Pool,
) {
    let mut c = libdeflater::Compressor::new(lvl);
    loop {
        let next = jobs.lock().map(|rx| rx.recv());
        let Ok(Ok((block, reply))) = next else { return };
        let mut out = outputs.get();
        out.resize(c.gzip_compress_bound(block.len()), 0);
        let member = c
            .gzip_compress(&block, &mut out)
            .map(|n| {
                out.truncate(n);
                out
            })
            .map_err(|e| io::Error::other(format!("libdeflate: {e:?}")));
        inputs.put(block);
        // The receiver is gone only if the whole pipeline is shutting down.
        let _ = reply.send(member);
    }
}

fn write_in_order<W: Write>(
    mut sink: W,
    order: &Receiver<Receiver<Member>>,
    outputs: &Pool,
) -> io::Result<W> {
    for slot in order {
        let member = slot
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))??;
        sink.write_all(&member)?;
        outputs.put(member);
    }
    sink.flush()?;
    Ok(sink)
}

struct BlockWriter<'p> {
    buf: Vec<u8>,
    job_tx: SyncSender<Job>,
    order_tx: SyncSender<Receiver<Member>>,
    sent_any: bool,
    pool: &'p Pool,
}

impl BlockWriter<'_> {
    fn send(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, self.pool.get());
        let (tx, rx) = sync_channel(1);
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "gzip pipeline stopped");
        self.order_tx.send(rx).map_err(|_| closed())?;
        self.job_tx.send((block, tx)).map_err(|_| closed())?;
        self.sent_any = true;
        Ok(())
    }

    /// Sends the last partial block. An empty stream still becomes one (empty) member so the
    /// output is a valid gzip file.
    fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() || !self.sent_any {
            self.send()?;
        }
        Ok(())
    }
}

impl Write for BlockWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = GZIP_BLOCK_SIZE - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == GZIP_BLOCK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter pattern with some noise.
        (0..n).map(|i| ((i * 7 + i / 1000) % 251) as u8).collect()
    }

    fn compress(c: Compressor, jobs: usize, data: &[u8]) -> Vec<u8> {
        let (out, ()) = c
            .compress(jobs, Vec::new(), |w| {
                w.write_all(data).map_err(Error::output)
            })
            .unwrap();
        out
    }

    #[test]
    fn gzip_bytes_do_not_depend_on_jobs_and_roundtrip() {
        let data = sample(3 * GZIP_BLOCK_SIZE + 12345);
        let c = Compressor::new(Compression::Gzip);
        let one = compress(c, 1, &data);
        for jobs in [2, 3, 8] {
            assert_eq!(compress(c, jobs, &data), one, "jobs={jobs}");
        }
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Four members: three full blocks and the tail.
        let members = one.windows(3).filter(|w| *w == [0x1f, 0x8b, 8]).count();
        assert!(members >= 4);
    }

    #[test]
    fn empty_gzip_is_valid() {
        let out = compress(Compressor::new(Compression::Gzip), 2, b"");
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_jobs_and_roundtrip() {
        let data = sample(5 << 20);
        let c = Compressor::new(Compression::Zstd);
        let one = compress(c, 1, &data);
        assert_eq!(compress(c, 2, &data), one);
        assert_eq!(compress(c, 4, &data), one);
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), data);
    }

    #[test]
    fn sink_errors_surface() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = sample(4 * GZIP_BLOCK_SIZE);
        let r = Compressor::new(Compression::Gzip)
            .compress(2, Full, |w| w.write_all(&data).map_err(Error::output));
        let e = r.err().expect("must fail").to_string();
        assert!(e.contains("disk full"), "{e}");
    }

    #[test]
    fn levels_and_names_are_validated() {
        assert!(Compressor::parse("brotli", None).is_err());
        assert!(Compressor::parse("gzip", Some(13)).is_err());
        assert!(Compressor::parse("zstd", Some(0)).is_err());
        assert_eq!(Compressor::parse("zstd", Some(19)).unwrap().level(), 19);
        assert_ne!(
            Compressor::new(Compression::Gzip).identity(),
            Compressor::with_level(Compression::Gzip, 9)
                .unwrap()
                .identity()
        );
    }
}
