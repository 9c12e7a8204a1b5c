//! Streaming blob downloads that resume and verify.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_oci::{Descriptor, Digest, VerifyingReader};
use reqwest::blocking::Response;
use reqwest::header;
use reqwest::{Method, StatusCode, Url};

use crate::client::{
    Access, Deadline, Host, Req, Within, content_length, is_timeout_io, status_error_within,
};
use crate::redact::redact_url;
use crate::repo::Repo;
use crate::retry::backoff;
use crate::{Error, Result};

/// The most reconnections of one download, whatever progress they make.
const MAX_RESUMES: u32 = 100;

/// A blob being downloaded. Reads deliver each byte of the blob once, in order; a broken
/// connection is resumed with `Range: bytes=N-` (or, when the server ignores `Range`, by
/// skipping the first N bytes of a full response). Each request has a deadline scaled by the
/// bytes it still has to deliver ([`crate::RegistryConfig::blob_deadline`]); one that reaches
/// it is resumed the same way, at most `retries` times in all, then the download fails with
/// [`Error::Timeout`]. At the end, size and digest are checked:
/// a mismatch is an `InvalidData` error wrapping a `gantry_oci::Error`, returned again by
/// every later read.
pub struct BlobReader {
    inner: VerifyingReader<Resuming>,
    size: u64,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    pub(crate) fn open(repo: Repo, desc: &Descriptor) -> Result<BlobReader> {
        let host = repo.host()?;
        let url = repo.blob_url(&host, &desc.digest)?;
        let mut r = Resuming {
            repo,
            host,
            url,
            digest: desc.digest.clone(),
            size: desc.size,
            pos: 0,
            resp: None,
            failures: 0,
            resumes: 0,
            pos_at_failure: 0,
            deadline: Duration::ZERO,
            deadline_at: Instant::now(),
            expiries: 0,
        };
        r.connect()?;
        let what = format!("blob {} from {}", desc.digest, r.repo.name());
        Ok(BlobReader {
            inner: VerifyingReader::new(r, desc.digest.clone(), desc.size, what),
            size: desc.size,
        })
    }

    /// The blob's size (from the descriptor).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

struct Resuming {
    repo: Repo,
    host: Arc<Host>,
    url: Url,
    digest: Digest,
    size: u64,
    /// Bytes delivered so far.
    pos: u64,
    resp: Option<Response>,
    /// Consecutive failures without progress.
    failures: u32,
    resumes: u32,
    pos_at_failure: u64,
    /// The deadline of the current request, and when it is reached.
    deadline: Duration,
    deadline_at: Instant,
    /// Requests that reached their deadline.
    expiries: u32,
}

impl Resuming {
    fn invalid(&self, reason: String) -> Error {
        Error::InvalidResponse {
            registry: self.repo.registry().to_owned(),
            repository: self.repo.repository().to_owned(),
            what: format!("blob {}", self.digest),
            reason,
        }
    }

    /// (Re)connects at `pos`.
    fn connect(&mut self) -> Result<()> {
        let mut req = Req::new(
            Method::GET,
            self.url.clone(),
            Access::Pull(self.repo.repository().to_owned()),
        )
        .what(self.repo.asked_for("blob", &self.digest.to_string()));
        if self.pos > 0 {
            req = req.header(header::RANGE, &format!("bytes={}-", self.pos));
        }
        self.deadline = self
            .repo
            .client()
            .config()
            .blob_deadline(self.size.saturating_sub(self.pos));
        req.deadline = Deadline::Streamed(self.deadline);
        let started = Instant::now();
        self.deadline_at = started + self.deadline;
        let mut resp = self.repo.client().execute(&self.host, req)?;
        let status = resp.status();
        match status {
            StatusCode::OK => {
                if let Some(len) = content_length(&resp)
                    && len != self.size
                {
                    return Err(self.invalid(format!(
                        "the server sends {len} bytes, the descriptor says {}",
                        self.size
                    )));
                }
                if self.pos > 0 {
                    // The server ignored Range: skip what was already delivered, with the
                    // deadline of the whole blob, since the whole blob comes again.
                    tracing::debug!(digest = %self.digest, skip = self.pos, "server ignored Range; skipping");
                    self.deadline = self.repo.client().config().blob_deadline(self.size);
                    self.deadline_at = started + self.deadline;
                    let mut rest = Within {
                        inner: (&mut resp).take(self.pos),
                        deadline: self.deadline_at,
                    };
                    let skipped = io::copy(&mut rest, &mut io::sink()).map_err(|e| {
                        if is_timeout_io(&e) && Instant::now() >= self.deadline_at {
                            self.timeout()
                        } else {
                            self.transport(&e)
                        }
                    })?;
                    if skipped != self.pos {
                        return Err(self.transport(&io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed while skipping to the resume point",
                        )));
                    }
                }
            }
            StatusCode::PARTIAL_CONTENT if self.pos > 0 => {
                let cr = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !content_range_ok(cr, self.pos, self.size) {
                    let shown: String = cr.chars().take(80).collect();
                    return Err(self.invalid(format!(
                        "asked for bytes {}-, got Content-Range {shown:?}",
                        self.pos
                    )));
                }
            }
            StatusCode::PARTIAL_CONTENT => {
                return Err(self.invalid("a 206 answer to a request without Range".to_owned()));
            }
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound {
                    registry: self.repo.registry().to_owned(),
                    repository: self.repo.repository().to_owned(),
                    what: format!("blob {}", self.digest),
                });
            }
            _ => {
                return Err(status_error_within(
                    &Method::GET,
                    resp,
                    1,
                    Some(self.deadline_at),
                ));
            }
        }
        self.resp = Some(resp);
        Ok(())
    }

    fn timeout(&self) -> Error {
        Error::Timeout {
            registry: self.repo.registry().to_owned(),
            what: format!(
                "{} (stopped at byte {} of {})",
                self.repo.asked_for("blob", &self.digest.to_string()),
                self.pos,
                self.size
            ),
            method: "GET".to_owned(),
            url: redact_url(&self.url),
            deadline: self.deadline,
        }
    }

    /// Records a request that reached its deadline; errors once that happened more than
    /// `retries` times. A request that trickles makes some progress each time, so this bound
    /// does not reset with progress as [`Resuming::broken`]'s does.
    fn expired(&mut self) -> io::Result<()> {
        self.resp = None;
        self.expiries += 1;
        self.resumes += 1;
        tracing::debug!(digest = %self.digest, pos = self.pos, size = self.size, deadline = ?self.deadline, expiries = self.expiries, "blob request reached its deadline");
        if self.expiries > self.repo.client().retries() || self.resumes > MAX_RESUMES {
            return Err(io::Error::other(self.timeout()));
        }
        Ok(())
    }

    fn transport(&self, e: &io::Error) -> Error {
        Error::Http {
            method: "GET".to_owned(),
            url: redact_url(&self.url),
            detail: crate::client::chain(e),
            attempts: 1,
        }
    }

    /// Records a broken connection; errors once the bounds are reached.
    fn broken(&mut self, e: &io::Error) -> io::Result<()> {
        self.resp = None;
        if self.pos > self.pos_at_failure {
            self.failures = 0;
        }
        self.pos_at_failure = self.pos;
        self.failures += 1;
        self.resumes += 1;
        let max = self.repo.client().retries();
        tracing::debug!(digest = %self.digest, pos = self.pos, size = self.size, failures = self.failures, error = %crate::client::chain(e), "blob download broke");
        if self.failures > max || self.resumes > MAX_RESUMES {
            return Err(io::Error::other(Error::Http {
                method: "GET".to_owned(),
                url: redact_url(&self.url),
                detail: format!(
                    "the download broke at byte {} of {} ({} times in all): {}",
                    self.pos,
                    self.size,
                    self.resumes,
                    crate::client::chain(e)
                ),
                attempts: self.resumes,
            }));
        }
        std::thread::sleep(backoff(self.failures - 1, self.repo.client().retry_base()));
        Ok(())
    }
}

impl Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.resp.is_none() {
                // A reconnection has its own retries (in `execute`); its failure is final.
                self.connect().map_err(io::Error::other)?;
            }
            if Instant::now() >= self.deadline_at && self.pos < self.size {
                self.expired()?;
                continue;
            }
            let resp = self.resp.as_mut().expect("connected above");
            // Past the end we still read (one byte, from the verifier) to detect extra data.
            let want = if self.pos < self.size {
                buf.len()
                    .min(usize::try_from(self.size - self.pos).unwrap_or(usize::MAX))
            } else {
                buf.len()
            };
            match resp.read(&mut buf[..want]) {
                Ok(0) if self.pos < self.size && want > 0 => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed after {} of {} bytes",
                            self.pos, self.size
                        ),
                    );
                    self.broken(&e)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Everything arrived; a failure after it cannot change the content.
                Err(_) if self.pos >= self.size => return Ok(0),
                Err(e) if is_timeout_io(&e) && Instant::now() >= self.deadline_at => {
                    self.expired()?;
                }
                Err(e) => self.broken(&e)?,
            }
        }
    }
}

/// Whether `Content-Range` is `bytes <pos>-<size-1>/<size or *>`.
fn content_range_ok(value: &str, pos: u64, size: u64) -> bool {
    let Some(rest) = value.trim().strip_prefix("bytes ") else {
        return false;
    };
    let Some((range, total)) = rest.split_once('/') else {
        return false;
    };
    let Some((first, last)) = range.split_once('-') else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>().ok() == Some(size);
    first.parse::<u64>().ok() == Some(pos)
        && last.parse::<u64>().ok() == size.checked_sub(1)
        && total_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert!(content_range_ok("bytes 10-99/100", 10, 100));
        assert!(content_range_ok("bytes 10-99/*", 10, 100));
        assert!(!content_range_ok("bytes 0-99/100", 10, 100));
        assert!(!content_range_ok("bytes 10-98/100", 10, 100));
        assert!(!content_range_ok("bytes 10-99/101", 10, 100));
        assert!(!content_range_ok("items 10-99/100", 10, 100));
        assert!(!content_range_ok("", 10, 100));
        assert!(!content_range_ok("bytes 10-/100", 10, 100));
    }
}
