//! Request deadlines against a real `docker-registry` behind the fault proxy: answers trickled
//! one byte at a time (headers or body) end within their deadline, blob downloads that reach
//! theirs resume with `Range`, and slow but steady transfers within budget succeed.

mod common;

use std::time::{Duration, Instant};

use common::{client, config, data, push_blob, push_image, read_blob};
use gantry_registry::{Client, Error, NoCredentials, RegistryConfig};
use gantry_test::proxy::{Fault, FaultProxy};
use gantry_test::registry::{Registry, RegistryOptions};

/// A registry, a fault proxy in front of it, and what was pushed directly.
struct Slow {
    reg: Registry,
    proxy: FaultProxy,
}

impl Slow {
    fn start() -> Slow {
        let reg = Registry::start(RegistryOptions::plain());
        let proxy = FaultProxy::start(&reg.host());
        Slow { reg, proxy }
    }

    /// A client of the registry itself (no proxy).
    fn direct(&self) -> Client {
        client(config(&[&self.reg.host()]), NoCredentials)
    }

    /// A client through the proxy with `request_timeout` and `min_rate`.
    fn via(&self, request_timeout: Duration, min_rate: u64, retries: u32) -> Client {
        let cfg = RegistryConfig {
            request_timeout,
            min_rate,
            retries,
            ..config(&[&self.proxy.host()])
        };
        client(cfg, NoCredentials)
    }
}

fn assert_timeout(e: &Error, registry: &str, what: &str, deadline: Duration) {
    match e {
        Error::Timeout {
            registry: r,
            what: w,
            deadline: d,
            ..
        } => {
            assert_eq!(r, registry, "{e}");
            assert!(w.contains(what), "{e}");
            assert_eq!(*d, deadline, "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(registry) && msg.contains(what) && msg.contains("--registry-timeout"),
        "{msg}"
    );
}

#[test]
fn regression_trickled_manifest_kept_the_request_alive() {
    let s = Slow::start();
    let repo = s.direct().repo(&s.reg.host(), "test/slow", false);
    let desc = push_blob(&repo, b"layer");
    push_image(&repo, "v1", &[desc]);
    let deadline = Duration::from_secs(2);
    let c = s.via(deadline, 32 << 10, 4);
    let repo = c.repo(&s.proxy.host(), "test/slow", false);

    // The body at 5 bytes a second: a few hundred bytes would take over a minute, and each
    // read comes well within the read timeout.
    s.proxy.fault(
        Some("GET"),
        "/manifests/v1",
        10,
        Fault::TrickleBody(Duration::from_millis(200)),
    );
    let t = Instant::now();
    let e = repo.get_manifest("v1").unwrap_err();
    let took = t.elapsed();
    assert_timeout(&e, &s.proxy.host(), "manifest v1 of test/slow", deadline);
    assert!(
        took >= deadline - Duration::from_millis(100) && took < deadline + Duration::from_secs(4),
        "took {took:?}"
    );
    // Not retried: a trickle would hold us for every retry.
    let gets: Vec<_> = s
        .proxy
        .matching("/manifests/v1")
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 1, "{gets:#?}");
    s.proxy.clear_faults();
    repo.get_manifest("v1").expect("without the fault");
}

#[test]
fn trickled_manifest_headers_reach_the_deadline() {
    let s = Slow::start();
    let repo = s.direct().repo(&s.reg.host(), "test/slow", false);
    let desc = push_blob(&repo, b"layer");
    push_image(&repo, "v1", &[desc]);
    let deadline = Duration::from_secs(2);
    let c = s.via(deadline, 32 << 10, 4);
    let repo = c.repo(&s.proxy.host(), "test/slow", false);
    s.proxy.fault(
        Some("GET"),
        "/manifests/v1",
        10,
        Fault::TrickleHead(Duration::from_millis(100)),
    );
    let t = Instant::now();
    let e = repo.get_manifest("v1").unwrap_err();
    let took = t.elapsed();
    assert_timeout(&e, &s.proxy.host(), "manifest v1 of test/slow", deadline);
    assert!(took < deadline + Duration::from_secs(4), "took {took:?}");
    // HEAD too (tags are resolved with HEAD before a push or a copy).
    s.proxy.fault(
        Some("HEAD"),
        "/manifests/v1",
        10,
        Fault::TrickleHead(Duration::from_millis(100)),
    );
    let t = Instant::now();
    let e = repo.head_manifest("v1").unwrap_err();
    assert_timeout(&e, &s.proxy.host(), "manifest v1 of test/slow", deadline);
    assert!(t.elapsed() < deadline + Duration::from_secs(4));
    s.proxy.clear_faults();
}

#[test]
fn trickled_blob_resumes_then_fails_within_its_scaled_deadline() {
    let s = Slow::start();
    let bytes = data(64 << 10, 3);
    let desc = push_blob(&s.direct().repo(&s.reg.host(), "test/blob", false), &bytes);
    let path = format!("/blobs/{}", desc.digest);
    // 1 s + 64 KiB at 32 KiB/s: a 3 s deadline for the first request.
    let c = s.via(Duration::from_secs(1), 32 << 10, 1);
    let deadline = c.config().blob_deadline(desc.size);
    assert_eq!(deadline, Duration::from_secs(3));
    let repo = c.repo(&s.proxy.host(), "test/blob", false);

    s.proxy.fault(
        Some("GET"),
        &path,
        10,
        Fault::TrickleBody(Duration::from_millis(10)),
    );
    let t = Instant::now();
    let e = read_blob(&repo, &desc).unwrap_err();
    let took = t.elapsed();
    let inner = e
        .get_ref()
        .and_then(|x| x.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not a registry error: {e:?}"));
    // The second request's deadline is scaled by what was left: a little under 3 s.
    match inner {
        Error::Timeout { deadline: d, .. } => {
            assert!(*d < deadline && *d > Duration::from_millis(2900), "{d:?}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let msg = inner.to_string();
    assert!(
        msg.contains(&desc.digest.to_string())
            && msg.contains("test/blob")
            && msg.contains("--registry-timeout")
            && msg.contains("stopped at byte"),
        "{msg}"
    );
    // Two deadlines (the first, and the one resumption `retries = 1` allows), no more.
    assert!(
        took >= Duration::from_millis(5800) && took < Duration::from_secs(12),
        "took {took:?}"
    );
    let gets = s.proxy.matching(&path);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!(gets[0].header("range"), None);
    let resumed_at: u64 = gets[1]
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume: {:?}", gets[1]));
    assert!(
        resumed_at > 0 && resumed_at <= gets[0].body_bytes,
        "resumed at {resumed_at}, first request sent {}",
        gets[0].body_bytes
    );
    s.proxy.clear_faults();
}

#[test]
fn trickled_blob_completes_when_the_resumed_request_is_fast() {
    let s = Slow::start();
    let bytes = data(64 << 10, 4);
    let desc = push_blob(&s.direct().repo(&s.reg.host(), "test/blob", false), &bytes);
    let path = format!("/blobs/{}", desc.digest);
    let c = s.via(Duration::from_secs(1), 32 << 10, 2);
    let repo = c.repo(&s.proxy.host(), "test/blob", false);
    s.proxy.fault(
        Some("GET"),
        &path,
        1,
        Fault::TrickleBody(Duration::from_millis(10)),
    );
    let t = Instant::now();
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    let took = t.elapsed();
    // The first request's 3 s deadline, then the rest at full speed (slack for a busy machine).
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let gets = s.proxy.matching(&path);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(gets[1].header("range").is_some(), "{:?}", gets[1]);
    assert_eq!(gets[1].status, 206);
}

#[test]
fn slow_but_steady_transfers_within_budget_succeed() {
    let s = Slow::start();
    let bytes = data(256 << 10, 5);
    let direct = s.direct().repo(&s.reg.host(), "test/steady", false);
    let desc = push_blob(&direct, &bytes);
    let (manifest, _) = push_image(&direct, "v1", std::slice::from_ref(&desc));
    // A 1 s floor; 256 KiB at 64 KiB/s gives the blob 5 s.
    let c = s.via(Duration::from_secs(1), 64 << 10, 0);
    assert_eq!(c.config().blob_deadline(desc.size), Duration::from_secs(5));
    let repo = c.repo(&s.proxy.host(), "test/steady", false);
    let path = format!("/blobs/{}", desc.digest);
    // 128 KiB/s: 2 s, twice the floor, well within the blob's deadline.
    s.proxy
        .fault(Some("GET"), &path, 1, Fault::Throttle(128 << 10));
    let t = Instant::now();
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1500), "throttled? {took:?}");
    assert_eq!(s.proxy.matching(&path).len(), 1);

    // A manifest trickled steadily within a generous deadline arrives whole.
    let c = s.via(Duration::from_secs(10), 64 << 10, 0);
    let repo = c.repo(&s.proxy.host(), "test/steady", false);
    let rate = u64::try_from(manifest.len()).unwrap();
    s.proxy
        .fault(Some("GET"), "/manifests/v1", 1, Fault::Throttle(rate));
    let t = Instant::now();
    assert_eq!(repo.get_manifest("v1").unwrap().bytes, manifest);
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn regression_a_resume_answered_in_full_had_the_deadline_of_the_bytes_left() {
    let s = Slow::start();
    let bytes = data(256 << 10, 6);
    let desc = push_blob(&s.direct().repo(&s.reg.host(), "test/full", false), &bytes);
    let path = format!("/blobs/{}", desc.digest);
    // 1 s + 256 KiB at 64 KiB/s: 5 s for the whole blob, 1.5 s for its last 32 KiB.
    let c = s.via(Duration::from_secs(1), 64 << 10, 1);
    assert_eq!(c.config().blob_deadline(desc.size), Duration::from_secs(5));
    let repo = c.repo(&s.proxy.host(), "test/full", false);
    // Cut near the end, then a server that ignores Range and sends the whole blob again at
    // 128 KiB/s: 2 s, within the whole blob's deadline but not the remaining bytes'.
    s.proxy
        .fault(Some("GET"), &path, 1, Fault::CutAfter(224 << 10));
    s.proxy.fault(
        Some("GET"),
        &path,
        1,
        Fault::ThrottleIgnoringRange(128 << 10),
    );
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    // The proxy logs what it sent when it is done, just after the client.
    let t = Instant::now();
    let gets = loop {
        let gets = s.proxy.matching(&path);
        let done = gets.len() == 2 && gets[1].body_bytes == desc.size;
        if done || t.elapsed() > Duration::from_secs(5) {
            break gets;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!(gets[1].status, 200);
    assert_eq!(gets[1].body_bytes, desc.size);
}
