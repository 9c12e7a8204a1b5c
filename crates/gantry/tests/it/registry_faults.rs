//! Registry faults and bad input through the CLI: a fault proxy in front of the real registry,
//! a fake one for what a real registry will not serve, and references that must be refused.
//! After every failure the store is as it was.

use gantry_test::proxy::{Fault, FaultProxy, Recorder};
use gantry_test::registry::{Registry, RegistryOptions};
use gantry_test::{CmdExt, TestEnv, assert_mentions, json, store_snapshot};

/// Pushes a two-layer image (the second layer 3 MB of incompressible bytes) to
/// `reg/team/app:v1`; returns the manifest digest and the big layer's digest.
fn push_app(t: &TestEnv, reg: &Registry) -> (String, String) {
    let mut big = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while big.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    t.write("src/big.bin", &big);
    t.run(&["layer", "--content", "/etc/app=1\n", "--info", "l1.json"]);
    t.run(&[
        "layer",
        "--file",
        "/big.bin=src/big.bin",
        "--info",
        "l2.json",
    ]);
    let l2 = json(&std::fs::read_to_string(t.path("l2.json")).unwrap());
    t.run(&[
        "image",
        "--platform",
        "linux/amd64",
        "--layer",
        "l1.json",
        "--layer",
        "l2.json",
        "-o",
        "app",
        "-t",
        "v1",
    ]);
    let host = reg.host();
    let out = t.run(&[
        "--insecure-registry",
        &host,
        "push",
        "oci:app:v1",
        &format!("{host}/team/app:v1"),
    ]);
    let digest = out.trim().rsplit('@').next().unwrap().to_owned();
    (digest, l2["digest"].as_str().unwrap().to_owned())
}

/// `gantry --insecure-registry HOST pull HOST/team/app@DIGEST -o oci:pulled:v1` in a fresh store.
fn pull(t: &TestEnv, host: &str, digest: &str) -> std::process::Command {
    let mut c = t.gantry();
    c.env("GANTRY_HOME", t.path("pull-home")).args([
        "--insecure-registry",
        host,
        "pull",
        &format!("{host}/team/app@{digest}"),
        "-o",
        "oci:pulled:v1",
    ]);
    c
}

#[test]
fn unavailable_then_success_is_retried_after_the_delay() {
    let reg = Registry::start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&reg.host());
    let t = crate::env();
    let (digest, big) = push_app(&t, &reg);
    proxy.fault(Some("GET"), "/manifests/", 1, Fault::unavailable());
    proxy.fault(
        Some("GET"),
        &format!("/blobs/{big}"),
        2,
        Fault::unavailable(),
    );
    let start = std::time::Instant::now();
    pull(&t, &proxy.host(), &digest).ok();
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(
        json(&t.run(&["inspect", "--json", "pulled:v1"]))["digest"],
        digest.as_str()
    );
    let gets: Vec<u16> = proxy
        .matching(&format!("/blobs/{big}"))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(gets, [503, 503, 200], "{gets:?}");
}

#[test]
fn a_blob_cut_mid_body_is_resumed_and_verified() {
    let reg = Registry::start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&reg.host());
    let t = crate::env();
    let (digest, big) = push_app(&t, &reg);
    proxy.fault(
        Some("GET"),
        &format!("/blobs/{big}"),
        1,
        Fault::CutAfter(1 << 20),
    );
    pull(&t, &proxy.host(), &digest).ok();
    assert_eq!(
        json(&t.run(&["inspect", "--json", "pulled:v1"]))["digest"],
        digest.as_str()
    );
    let gets = proxy.matching(&format!("/blobs/{big}"));
    assert_eq!(gets.len(), 2, "one cut request, one resumed");
    let range = gets[1].header("Range").unwrap_or_default().to_owned();
    assert!(
        range.starts_with("bytes=") && !range.starts_with("bytes=0-"),
        "resumed with {range:?}"
    );
    t.gantry()
        .env("GANTRY_HOME", t.path("pull-home"))
        .arg("fsck")
        .ok();
}

#[test]
fn wrong_bytes_for_a_blob_fail_and_store_nothing() {
    let reg = Registry::start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&reg.host());
    let t = crate::env();
    let (digest, big) = push_app(&t, &reg);
    // Corrupt every answer for the big layer (retries included).
    proxy.fault(
        Some("GET"),
        &format!("/blobs/{big}"),
        usize::MAX,
        Fault::FlipByte(12345),
    );
    // The store already holds something: it must be exactly the same afterwards.
    t.gantry()
        .env("GANTRY_HOME", t.path("pull-home"))
        .args(["layer", "--content", "/x=1\n"])
        .ok();
    let before = store_snapshot(&t.path("pull-home"));
    let o = pull(&t, &proxy.host(), &digest).fails();
    assert_mentions(&o.stderr, &[&big, "digest"]);
    // The corrupt blob is not stored, no temporary file is left, and everything that was there
    // is unchanged. Blobs that were fetched and verified stay (a retry starts from them).
    let after = store_snapshot(&t.path("pull-home"));
    for (path, state) in &before {
        assert_eq!(after.get(path), Some(state), "{path} changed");
    }
    for path in after.keys() {
        assert!(
            path.starts_with("blobs/sha256/") || before.contains_key(path),
            "new file {path}"
        );
        assert!(
            !path.contains(big.trim_start_matches("sha256:")),
            "the corrupt blob was stored"
        );
    }
    t.gantry()
        .env("GANTRY_HOME", t.path("pull-home"))
        .arg("fsck")
        .ok();
    assert!(!t.path("pulled").exists(), "no output for a failed pull");
}

#[test]
fn an_oversized_manifest_is_refused() {
    let fake = Recorder::start();
    let mut body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
    body.resize(body.len() + (5 << 20), b'x');
    body.extend_from_slice(br#""}}"#);
    fake.serve_as(body, "application/vnd.oci.image.manifest.v1+json");
    let t = crate::env();
    let host = fake.host();
    let o = t
        .gantry()
        .args([
            "--insecure-registry",
            &host,
            "pull",
            &format!("{host}/team/app:v1"),
            "-o",
            "oci:out",
        ])
        .fails();
    assert_mentions(&o.stderr, &[&host, "team/app", "manifest", "4194304"]);
    assert!(!t.path("out").exists());
    assert!(
        !t.home().join("blobs").exists()
            || store_snapshot(&t.home())
                .keys()
                .all(|k| !k.starts_with("blobs/sha256/"))
    );
}

#[test]
fn bad_references_and_hosts_are_clear_errors() {
    let t = crate::env();
    t.run(&["image", "--platform", "linux/amd64", "-o", "img"]);
    let before = store_snapshot(&t.home());
    for (reference, needles) in [
        ("Team/App:v1", &["Team/App:v1", "lowercase"][..]),
        ("example.com/app:bad:tag", &["example.com/app:bad:tag"][..]),
        (
            "example.com/app@sha256:abc",
            &["example.com/app@sha256:abc", "digest"][..],
        ),
        ("", &["reference"][..]),
    ] {
        let err = t.fail(&["pull", reference, "-o", "oci:out"]);
        assert_mentions(&err, needles);
    }
    // An unknown host is named.
    let err = t.fail(&[
        "pull",
        "no-such-registry.invalid/team/app:v1",
        "-o",
        "oci:out",
    ]);
    assert_mentions(&err, &["no-such-registry.invalid"]);
    // Push needs a tag (or a repository) to push to, not a digest.
    let err = t.fail(&[
        "push",
        "oci:img",
        &format!("example.com/app@sha256:{}", "a".repeat(64)),
    ]);
    assert_mentions(&err, &["example.com/app@sha256:", "digest"]);
    assert_eq!(store_snapshot(&t.home()), before);
    assert!(!t.path("out").exists());
}

#[test]
fn a_tag_where_a_digest_is_required_is_refused() {
    let t = crate::env();
    for (body, needles) in [
        (
            "[pull.base]\nrepository = \"example.com/base\"\ndigest = \"v1\"\n",
            &["pull.base", "digest", "v1"][..],
        ),
        (
            "[pull.base]\nrepository = \"example.com/base\"\nvariants = { slim = \"latest\" }\n",
            &["pull.base", "slim", "latest"][..],
        ),
        (
            "[pull.base]\nrepository = \"example.com/base:v1\"\n",
            &["pull.base.repository", "tag"][..],
        ),
    ] {
        t.write("gantry.toml", body);
        let err = t.fail(&["lock"]);
        assert_mentions(&err, needles);
        assert!(
            err.contains("gantry.toml:"),
            "the error points into the file: {err}"
        );
        assert!(!t.path("gantry.lock").exists());
    }
}

#[test]
fn a_trickled_manifest_ends_at_the_registry_timeout() {
    let reg = Registry::start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&reg.host());
    let t = crate::env();
    push_app(&t, &reg);
    let host = proxy.host();
    proxy.fault(
        Some("GET"),
        "/manifests/",
        usize::MAX,
        Fault::TrickleBody(std::time::Duration::from_millis(200)),
    );
    let start = std::time::Instant::now();
    let o = t
        .gantry()
        .env("GANTRY_HOME", t.path("pull-home"))
        .args([
            "--insecure-registry",
            &host,
            "--registry-timeout",
            "2",
            "pull",
            &format!("{host}/team/app:v1"),
            "-o",
            "oci:pulled:v1",
        ])
        .fails();
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert_mentions(
        &o.stderr,
        &[
            &host,
            "manifest v1 of team/app",
            "2 s",
            "--registry-timeout",
        ],
    );
    assert!(!t.path("pulled").exists());
    // The environment variable is checked like the flag.
    let o = t
        .gantry()
        .env("GANTRY_HOME", t.path("pull-home"))
        .env("GANTRY_REGISTRY_TIMEOUT", "0")
        .args([
            "--insecure-registry",
            &host,
            "pull",
            &format!("{host}/team/app:v1"),
            "-o",
            "oci:pulled:v1",
        ])
        .fails();
    assert_mentions(&o.stderr, &["GANTRY_REGISTRY_TIMEOUT", "expected seconds"]);
    proxy.clear_faults();
}
