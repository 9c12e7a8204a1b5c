//! A fault-injecting HTTP/1.1 proxy for registry tests, and a recording server.
//!
//! [`FaultProxy`] listens on 127.0.0.1 and forwards each request to an upstream (a real
//! registry over plain HTTP), one connection per request: it forces `Connection: close` both
//! ways, so it never has to frame keep-alive or chunked streams. Faults are programmed per
//! request: the next N requests whose path contains a pattern get a status (503 with
//! `Retry-After: 1`), a redirect, a cut after K body bytes, a flipped body byte, their `Range`
//! stripped or a wrong `Content-Range`, or a slow answer: headers or body trickled one byte at
//! a time, or the body throttled to a steady rate. Every request is logged with its headers,
//! the status returned and the body bytes sent.
//!
//! [`Recorder`] is a second tiny server (on 127.0.0.2 when possible, so it is another origin
//! by host and port) that logs what it receives and answers GETs with a fixed body, like a
//! storage backend serving a signed URL.
#![allow(clippy::missing_panics_doc)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// A fault applied to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` when given) without forwarding.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` value.
        retry_after: Option<String>,
    },
    /// Close the connection after this many bytes of the response body.
    CutAfter(u64),
    /// Flip (xor 0xff) the response body byte at this offset.
    FlipByte(u64),
    /// Answer `307 Temporary Redirect` to this URL without forwarding.
    Redirect(String),
    /// Forward without the request's `Range` header (a server that ignores ranges).
    IgnoreRange,
    /// Replace the response's `Content-Range` by a wrong one.
    BogusContentRange,
    /// Send the response head one byte per interval (a server that never finishes its
    /// headers), then the body at full speed. Stops when the client hangs up.
    TrickleHead(Duration),
    /// Send the response body one byte per interval. Stops when the client hangs up.
    TrickleBody(Duration),
    /// Send the response body at this many bytes per second, in twentieths of a second.
    Throttle(u64),
    /// [`Fault::IgnoreRange`] and [`Fault::Throttle`] together: a slow server that always
    /// sends the whole blob.
    ThrottleIgnoringRange(u64),
}

impl Fault {
    /// `503 Service Unavailable` with `Retry-After: 1`.
    pub fn unavailable() -> Fault {
        Fault::Status {
            code: 503,
            retry_after: Some("1".to_owned()),
        }
    }
}

/// One request as the proxy or recorder saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The request headers, in order.
    pub headers: Vec<(String, String)>,
    /// The status returned (0 if none was).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub body_bytes: u64,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// Whether the proxy is done with the request: `status` and `body_bytes` are final.
    pub complete: bool,
}

impl Logged {
    /// A request header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Rule {
    method: Option<String>,
    path: String,
    remaining: usize,
    fault: Fault,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Logged>>,
    body: Mutex<Option<Vec<u8>>>,
    content_type: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Listener {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn spawn(
        listener: TcpListener,
        handler: impl Fn(TcpStream, Arc<Shared>) + Send + Sync + 'static,
    ) -> Listener {
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (Arc::clone(&shared), Arc::clone(&stop));
        let handler = Arc::new(handler);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s3, h) = (Arc::clone(&s2), Arc::clone(&handler));
                thread::spawn(move || h(conn, s3));
            }
        });
        Listener { addr, shared, stop }
    }

    fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A fault-injecting proxy in front of an upstream `host:port`.
pub struct FaultProxy {
    l: Listener,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (free port) forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let upstream = upstream.to_owned();
        FaultProxy {
            l: Listener::spawn(listener, move |c, s| {
                let _ = proxy_one(c, &upstream, &s);
            }),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.l.addr.to_string()
    }

    /// Applies `fault` to the next `times` requests whose path contains `path_contains` (and,
    /// when given, whose method is `method`). Rules are tried in the order they were added.
    pub fn fault(&self, method: Option<&str>, path_contains: &str, times: usize, fault: Fault) {
        lock(&self.l.shared.rules).push(Rule {
            method: method.map(str::to_owned),
            path: path_contains.to_owned(),
            remaining: times,
            fault,
        });
    }

    /// Drops every rule not yet used up.
    pub fn clear_faults(&self) {
        lock(&self.l.shared.rules).clear();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.l.requests()
    }

    /// Requests whose path contains `path_contains`, once the proxy is done with each of them
    /// (a client can have read a whole body before the proxy records how much it sent); waits
    /// at most 10 s, then returns them as they are.
    pub fn matching(&self, path_contains: &str) -> Vec<Logged> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Logged> = self
                .requests()
                .into_iter()
                .filter(|r| r.path.contains(path_contains))
                .collect();
            if found.iter().all(|r| r.complete) || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A server that records requests and answers GET and HEAD with a fixed body (404 until
/// [`Recorder::serve`] sets one).
pub struct Recorder {
    l: Listener,
}

impl Recorder {
    /// Starts on 127.0.0.2 (another host than 127.0.0.1), or on 127.0.0.1 when 127.0.0.2
    /// cannot be bound; the port differs from everything else's either way.
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.2:0")
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .expect("bind the recorder");
        Recorder {
            l: Listener::spawn(listener, |c, s| {
                let _ = record_one(c, &s);
            }),
        }
    }

    /// `IP:PORT`.
    pub fn host(&self) -> String {
        self.l.addr.to_string()
    }

    /// The body GET requests get from now on.
    pub fn serve(&self, body: Vec<u8>) {
        *lock(&self.l.shared.body) = Some(body);
    }

    /// The body GET requests get from now on, with this `Content-Type` (instead of
    /// `application/octet-stream`): a registry serving a manifest, for instance.
    pub fn serve_as(&self, body: Vec<u8>, content_type: &str) {
        *lock(&self.l.shared.content_type) = Some(content_type.to_owned());
        self.serve(body);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.l.requests()
    }
}

/// Reads up to the end of an HTTP head; returns the head (without the blank line) and the
/// bytes read past it.
pub(crate) fn read_head(s: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            buf.truncate(i);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 256 << 10 {
            return Err(io::Error::other("head too large"));
        }
        // Not HTTP (a TLS ClientHello, say): close at once, as a plain HTTP server would.
        if buf.first().is_some_and(|b| !b.is_ascii_uppercase()) {
            return Err(io::Error::other("not an HTTP request"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub(crate) fn parse_head(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (first, headers)
}

pub(crate) fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub(crate) fn write_head(first: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("{first}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Reads and discards the rest of a request body with a `Content-Length`.
fn drain_body(s: &mut TcpStream, headers: &[(String, String)], already: usize) {
    let len: u64 = get(headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let left = len.saturating_sub(already as u64);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = io::copy(&mut s.take(left), &mut io::sink());
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        307 => "Temporary Redirect",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn proxy_one(mut client: TcpStream, upstream: &str, shared: &Shared) -> io::Result<()> {
    let (head, leftover) = read_head(&mut client)?;
    let (first, mut headers) = parse_head(&head);
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let fault = {
        let mut rules = lock(&shared.rules);
        rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0
                    && path.contains(&r.path)
                    && r.method.as_deref().is_none_or(|m| m == method)
            })
            .map(|r| {
                r.remaining -= 1;
                r.fault.clone()
            })
    };
    let idx = {
        let mut log = lock(&shared.log);
        log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            status: 0,
            body_bytes: 0,
            fault: fault.clone(),
            complete: false,
        });
        log.len() - 1
    };
    let set_status = |status: u16, body: u64, complete: bool| {
        let mut log = lock(&shared.log);
        log[idx].status = status;
        log[idx].body_bytes = body;
        log[idx].complete = complete;
    };

    let canned = match &fault {
        Some(Fault::Status { code, retry_after }) => {
            let mut h = vec![("Content-Length".to_owned(), "0".to_owned())];
            if let Some(r) = retry_after {
                h.push(("Retry-After".to_owned(), r.clone()));
            }
            Some((*code, h))
        }
        Some(Fault::Redirect(to)) => Some((
            307,
            vec![
                ("Location".to_owned(), to.clone()),
                ("Content-Length".to_owned(), "0".to_owned()),
            ],
        )),
        _ => None,
    };
    if let Some((code, mut h)) = canned {
        drain_body(&mut client, &headers, leftover.len());
        h.push(("Connection".to_owned(), "close".to_owned()));
        client.write_all(&write_head(
            &format!("HTTP/1.1 {code} {}", status_text(code)),
            &h,
        ))?;
        set_status(code, 0, true);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    headers.retain(|(k, _)| {
        let strip_range = matches!(
            fault,
            Some(Fault::IgnoreRange | Fault::ThrottleIgnoringRange(_))
        ) && k.eq_ignore_ascii_case("range");
        !(k.eq_ignore_ascii_case("connection")
            || k.eq_ignore_ascii_case("keep-alive")
            || strip_range)
    });
    headers.push(("Connection".to_owned(), "close".to_owned()));
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&write_head(&first, &headers))?;
    up.write_all(&leftover)?;
    let mut c2 = client.try_clone()?;
    let mut u2 = up.try_clone()?;
    let copier = thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
    });

    let (rhead, rleft) = read_head(&mut up)?;
    let (status_line, mut rheaders) = parse_head(&rhead);
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    rheaders.retain(|(k, _)| !k.eq_ignore_ascii_case("connection"));
    rheaders.push(("Connection".to_owned(), "close".to_owned()));
    if fault == Some(Fault::BogusContentRange) {
        for (k, v) in &mut rheaders {
            if k.eq_ignore_ascii_case("content-range") {
                *v = "bytes 0-0/1".to_owned();
            }
        }
    }
    let head = write_head(&status_line, &rheaders);
    match &fault {
        Some(Fault::TrickleHead(every)) => trickle(&mut client, &head, *every, &mut 0)?,
        _ => client.write_all(&head)?,
    }
    // Logged now: a client that has the whole body may look before the upstream closes.
    set_status(status, 0, false);

    let cut = match fault {
        Some(Fault::CutAfter(k)) => Some(k),
        _ => None,
    };
    let flip = match fault {
        Some(Fault::FlipByte(k)) => Some(k),
        _ => None,
    };
    let mut sent: u64 = 0;
    let mut pending = rleft;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if pending.is_empty() {
            let n: usize = up.read(&mut chunk).unwrap_or_default();
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        if let Some(f) = flip
            && f >= sent
            && f < sent + pending.len() as u64
        {
            pending[(f - sent) as usize] ^= 0xff;
        }
        let mut take = pending.len();
        if let Some(k) = cut {
            take = take.min(k.saturating_sub(sent) as usize);
        }
        let written = match &fault {
            Some(Fault::TrickleBody(every)) => {
                trickle(&mut client, &pending[..take], *every, &mut sent)
            }
            Some(Fault::Throttle(rate) | Fault::ThrottleIgnoringRange(rate)) => {
                throttle(&mut client, &pending[..take], *rate, &mut sent)
            }
            _ => client
                .write_all(&pending[..take])
                .map(|()| sent += take as u64),
        };
        if written.is_err() {
            break;
        }
        pending.clear();
        if cut.is_some_and(|k| sent >= k) {
            break;
        }
    }
    set_status(status, sent, true);
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = copier.join();
    Ok(())
}

/// Writes `bytes` one at a time, `every` apart, counting them in `sent`.
fn trickle(
    client: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    for b in bytes {
        client.write_all(std::slice::from_ref(b))?;
        *sent += 1;
        thread::sleep(every);
    }
    Ok(())
}

/// Writes `bytes` at about `rate` bytes per second, a twentieth of a second's worth at a time,
/// counting them in `sent`.
fn throttle(client: &mut TcpStream, bytes: &[u8], rate: u64, sent: &mut u64) -> io::Result<()> {
    let step = usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1);
    for piece in bytes.chunks(step) {
        client.write_all(piece)?;
        *sent += piece.len() as u64;
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn record_one(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    let (head, leftover) = read_head(&mut client)?;
    let (first, headers) = parse_head(&head);
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    drain_body(&mut client, &headers, leftover.len());
    let body = lock(&shared.body).clone();
    let (status, body) = match body {
        Some(b) if method == "GET" || method == "HEAD" => (200, b),
        _ => (404, Vec::new()),
    };
    let h = vec![
        ("Content-Length".to_owned(), body.len().to_string()),
        (
            "Content-Type".to_owned(),
            lock(&shared.content_type)
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
        ),
        ("Connection".to_owned(), "close".to_owned()),
    ];
    client.write_all(&write_head(
        &format!("HTTP/1.1 {status} {}", status_text(status)),
        &h,
    ))?;
    let sent = if method == "GET" {
        client.write_all(&body)?;
        body.len() as u64
    } else {
        0
    };
    lock(&shared.log).push(Logged {
        method,
        path,
        headers,
        status,
        body_bytes: sent,
        fault: None,
        complete: true,
    });
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
