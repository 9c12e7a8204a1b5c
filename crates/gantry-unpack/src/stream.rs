//! The reader stack under the tar parser. On the calling thread: the caller's blob reader,
//! counted ([`CountIn`]). On a helper thread ([`Pipelined`]): the decompressor from
//! [`gantry_layer::tarread::decoder`], which enforces the size and ratio caps on the bytes it
//! actually consumes and produces, and a sha256 of everything it produces (the diff_id, trailing
//! zeros included). Back on the calling thread: a watch on tar headers ([`Tap`]) that refuses
//! oversized PAX / GNU long-name records (which the `tar` crate would read into memory whole),
//! GNU sparse entries and global PAX headers before their data is read.

use std::cell::{Cell, RefCell};
use std::io::{self, BufReader, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use gantry_layer::limits::{Limits, Meter};
use gantry_oci::{Algorithm, Compression, Digest, HashingReader};

/// The largest PAX extended header or GNU long name/link record accepted. Real ones are a few
/// hundred bytes; xattrs can make PAX headers larger, but not by megabytes.
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;

/// State shared between the readers and the unpacker (on the calling thread).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Compressed bytes read from the caller's reader.
    pub(crate) compressed: Cell<u64>,
    /// Decompressed bytes handed to the tar parser (or read after it).
    pub(crate) decompressed: Cell<u64>,
    /// The stream offset of the next tar header to inspect, if any.
    pub(crate) watch: Cell<Option<u64>>,
    /// Why a header or the stream was refused, if it was.
    pub(crate) refused: RefCell<Option<String>>,
    /// The caller's reader failed (for example a blob digest mismatch), with this message.
    pub(crate) source_error: RefCell<Option<String>>,
    /// The digest of the whole decompressed stream, once it ended.
    pub(crate) diff_id: RefCell<Option<Digest>>,
}

/// Counts the compressed bytes read from the caller's reader and remembers its error.
pub(crate) struct CountIn<R> {
    pub(crate) inner: R,
    pub(crate) shared: Rc<Shared>,
}

impl<R: Read> Read for CountIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    *self.shared.source_error.borrow_mut() = Some(e.to_string());
                }
                return Err(e);
            }
        };
        let c = &self.shared.compressed;
        c.set(c.get() + n as u64);
        Ok(n)
    }
}

/// Counts the decompressed stream and inspects tar headers at the watched offsets.
pub(crate) struct Tap<R> {
    inner: R,
    shared: Rc<Shared>,
    header: Box<[u8; 512]>,
    filled: usize,
}

impl<R: Read> Tap<R> {
    pub(crate) fn new(inner: R, shared: Rc<Shared>) -> Self {
        Tap {
            inner,
            shared,
            header: Box::new([0; 512]),
            filled: 0,
        }
    }

    /// The number of decompressed bytes read so far.
    pub(crate) fn position(&self) -> u64 {
        self.shared.decompressed.get()
    }

    fn refuse(&self, reason: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, reason.clone());
        *self.shared.refused.borrow_mut() = Some(reason);
        e
    }
    /// Feeds the bytes `data`, which start at stream offset `start`, to the header watch.
    fn inspect(&mut self, data: &[u8], start: u64) -> io::Result<()> {
        let end = start + data.len() as u64;
        while let Some(w) = self.shared.watch.get() {
            let next = w + self.filled as u64;
            if next >= end {
                break;
            }
            if next < start {
                // The watched header went by unseen; the parser checks it anyway.
                self.shared.watch.set(None);
                self.filled = 0;
                break;
            }
            let from = (next - start) as usize;
            let take = (512 - self.filled).min(data.len() - from);
            self.header[self.filled..self.filled + take].copy_from_slice(&data[from..from + take]);
            self.filled += take;
            if self.filled < 512 {
                break;
            }
            self.filled = 0;
            let next_watch = self.check_header(w)?;
            self.shared.watch.set(next_watch);
        }
        Ok(())
    }

    /// Checks one header block at offset `at`; returns where the next one to check starts
    /// (after an extension record, the header it describes).
    fn check_header(&self, at: u64) -> io::Result<Option<u64>> {
        let h = &self.header;
        let kind = h[156];
        match kind {
            b'x' | b'L' | b'K' => {
                let Some(size) = header_size(&h[124..136]) else {
                    return Ok(None);
                };
                if size > MAX_EXTENSION {
                    let what = if kind == b'x' {
                        "a PAX extended header"
                    } else {
                        "a GNU long name record"
                    };
                    return Err(self.refuse(format!(
                        "{what} of {size} bytes exceeds the {MAX_EXTENSION}-byte limit"
                    )));
                }
                Ok(Some(at + 512 + size.div_ceil(512) * 512))
            }
            b'S' => Err(self.refuse("GNU sparse files are not supported".to_owned())),
            b'g' => Err(self.refuse(
                "global PAX headers are not supported (tools disagree on them)".to_owned(),
            )),
            _ => Ok(None),
        }
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.shared.decompressed.get();
        self.shared.decompressed.set(start + n as u64);
        self.inspect(&buf[..n], start)?;
        Ok(n)
    }
}

/// Compressed chunks read from the caller (on the calling thread).
const IN_CHUNK: usize = 256 << 10;
/// Decompressed chunks made by the decompression thread.
const OUT_CHUNK: usize = 1 << 20;
/// Chunks in flight each way: memory stays within a few MiB.
const IN_FLIGHT: usize = 4;

/// What the decompression thread sends back.
enum Msg {
    /// Decompressed bytes.
    Data(Vec<u8>),
    /// The end of the decompressed stream, and its digest.
    End(Digest),
}

/// Decompresses on a helper thread while the calling thread parses the tar and writes files.
/// The caller's reader stays on the calling thread (it need not be `Send`): compressed chunks
/// go to the helper through a bounded channel, decompressed chunks come back through another.
/// Every layer goes through here, compressed or not, so every layer is capped and hashed.
pub(crate) struct Pipelined<R> {
    src: CountIn<R>,
    shared: Rc<Shared>,
    meter: Arc<Meter>,
    in_tx: Option<SyncSender<Vec<u8>>>,
    pending: Option<Vec<u8>>,
    out_rx: Option<Receiver<io::Result<Msg>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    thread: Option<JoinHandle<()>>,
}

/// The helper's view of the compressed input.
struct ChanReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                // The sender is gone: the end of the input.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The decompression thread: decodes `input` within `limits`, hashes the output with
/// `algorithm`, and sends it in chunks, then its digest.
fn decompress(
    input: ChanReader,
    compression: Compression,
    limits: Limits,
    meter: Arc<Meter>,
    algorithm: Algorithm,
    out_tx: SyncSender<io::Result<Msg>>,
) {
    let input = BufReader::with_capacity(IN_CHUNK, input);
    let dec = match gantry_layer::tarread::decoder(input, compression, &limits, &meter) {
        Ok(d) => d,
        Err(e) => {
            let _ = out_tx.send(Err(e));
            return;
        }
    };
    let mut dec = HashingReader::new(dec, algorithm);
    loop {
        let mut buf = vec![0u8; OUT_CHUNK];
        let mut n = 0;
        let res = loop {
            match dec.read(&mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(n);
        let end = n == 0;
        if n > 0 && out_tx.send(Ok(Msg::Data(buf))).is_err() {
            return;
        }
        match res {
            Err(e) => {
                let _ = out_tx.send(Err(e));
                return;
            }
            Ok(()) if end => {
                let (_, digest, _) = dec.finish();
                let _ = out_tx.send(Ok(Msg::End(digest)));
                return;
            }
            Ok(()) => {}
        }
    }
}

impl<R: Read> Pipelined<R> {
    /// Starts decompressing `src` (whose first bytes `head` were already read through it) as
    /// `compression`, within `limits`, counting in `meter` and hashing with `algorithm`.
    pub(crate) fn start(
        src: CountIn<R>,
        head: Vec<u8>,
        compression: Compression,
        limits: &Limits,
        meter: &Arc<Meter>,
        algorithm: Algorithm,
    ) -> io::Result<Self> {
        let (in_tx, in_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::sync_channel::<io::Result<Msg>>(IN_FLIGHT);
        let input = ChanReader {
            rx: in_rx,
            cur: Vec::new(),
            pos: 0,
        };
        let (limits, thread_meter) = (*limits, Arc::clone(meter));
        let thread = std::thread::Builder::new()
            .name("gantry-unpack-decompress".into())
            .spawn(move || {
                decompress(input, compression, limits, thread_meter, algorithm, out_tx)
            })?;
        Ok(Pipelined {
            shared: Rc::clone(&src.shared),
            src,
            meter: Arc::clone(meter),
            in_tx: Some(in_tx),
            pending: Some(head),
            out_rx: Some(out_rx),
            cur: Vec::new(),
            pos: 0,
            done: false,
            thread: Some(thread),
        })
    }

    /// Sends a compressed chunk if the helper has room; returns whether progress was made.
    fn feed(&mut self) -> io::Result<bool> {
        let Some(tx) = &self.in_tx else {
            return Ok(false);
        };
        let chunk = match self.pending.take() {
            Some(c) => c,
            None => {
                let mut buf = vec![0u8; IN_CHUNK];
                let n = loop {
                    match self.src.read(&mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                };
                if n == 0 {
                    // Closing the channel tells the helper the input ended.
                    self.in_tx = None;
                    return Ok(true);
                }
                buf.truncate(n);
                buf
            }
        };
        match tx.try_send(chunk) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(c)) => {
                self.pending = Some(c);
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.in_tx = None;
                Ok(false)
            }
        }
    }

    /// The decompressed stream ended: the caller's reader must end where the compressed
    /// stream did. It is read to its end (so that a verifying reader checks the blob's digest
    /// and size), and anything the decompressor did not consume is refused.
    fn finish_input(&mut self) -> io::Result<()> {
        self.in_tx = None;
        self.pending = None;
        let mut buf = vec![0u8; IN_CHUNK];
        loop {
            match self.src.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.shared.compressed.get() != self.meter.consumed() {
            let reason = "data follows the end of the compressed stream".to_owned();
            *self.shared.refused.borrow_mut() = Some(reason.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        Ok(())
    }

    /// Takes one message from the helper: `Ok(true)` when there is data to read.
    fn take(&mut self, msg: io::Result<Msg>) -> io::Result<bool> {
        match msg? {
            Msg::Data(chunk) => {
                self.cur = chunk;
                self.pos = 0;
                Ok(true)
            }
            Msg::End(digest) => {
                self.finish_input()?;
                *self.shared.diff_id.borrow_mut() = Some(digest);
                self.done = true;
                Ok(false)
            }
        }
    }
}

impl<R: Read> Read for Pipelined<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let gone = || io::Error::other("the decompression thread stopped");
        loop {
            if self.pos < self.cur.len() {
                let n = buf.len().min(self.cur.len() - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let rx = self.out_rx.as_ref().ok_or_else(gone)?;
            match rx.try_recv() {
                Ok(msg) => {
                    self.take(msg)?;
                    continue;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Err(gone()),
            }
            if self.feed()? {
                continue;
            }
            // Nothing to send (the input ended or the helper is full): wait for output, but
            // not forever, in case the helper needs input to produce any.
            let rx = self.out_rx.as_ref().ok_or_else(gone)?;
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(msg) => {
                    self.take(msg)?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(gone()),
            }
        }
    }
}

impl<R> Drop for Pipelined<R> {
    fn drop(&mut self) {
        // Closing both channels stops the helper wherever it waits.
        self.in_tx = None;
        self.out_rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tar numeric field: octal text, or base-256 when the high bit is set. `None` when it
/// cannot be parsed (the tar parser reports that).
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            // Negative.
            return Some(u64::MAX);
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes() {
        assert_eq!(header_size(b"00000001000\0"), Some(512));
        assert_eq!(header_size(b"       1000 "), Some(512));
        assert_eq!(header_size(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 2;
        b256[10] = 1;
        assert_eq!(header_size(&b256), Some(258));
        assert_eq!(header_size(&[0xff; 12]), Some(u64::MAX));
        assert_eq!(header_size(b"9999\0\0\0\0\0\0\0\0"), None);
    }

    fn tap_over(data: Vec<u8>) -> (Tap<io::Cursor<Vec<u8>>>, Rc<Shared>) {
        let shared = Rc::new(Shared::default());
        (Tap::new(io::Cursor::new(data), shared.clone()), shared)
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_their_data() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(8 << 20);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend(vec![b'a'; 4096]);
        let (mut tap, shared) = tap_over(data);
        shared.watch.set(Some(0));
        // Fed in small pieces, so the header straddles reads.
        let mut buf = [0u8; 100];
        let mut res = Ok(0);
        for _ in 0..10 {
            res = tap.read(&mut buf);
            if res.is_err() {
                break;
            }
        }
        let err = res.unwrap_err();
        assert!(err.to_string().contains("PAX extended header"), "{err}");
        assert!(shared.refused.borrow().is_some());
    }
}
