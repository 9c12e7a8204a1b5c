//! The registry-backed remote cache (`--cache-from`, `--cache-to`): two stores ("machines")
//! building the same project share layer results through a repository of the real
//! distribution registry, without moving layer bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gantry_test::registry::{Registry, RegistryOptions, free_port};
use gantry_test::{CmdExt, TestEnv, assert_mentions, json, tool};
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A machine: its own store, and the project (three layers, one image tagged `HOST/team/app:1`).
fn machine(host: &str) -> TestEnv {
    let t = crate::env();
    t.write("src/c.txt", "c\n");
    t.write(
        "gantry.toml",
        format!(
            r#"[layer.a]
content = {{ "/a.txt" = "a\n" }}

[layer.b]
content = {{ "/b.txt" = "b\n" }}

[layer.c]
files = {{ "/c.txt" = "src/c.txt" }}

[image.app]
platform = "linux/amd64"
layers = ["a", "b", "c"]
tags = ["{host}/team/app:1"]
"#
        ),
    );
    t
}

/// `gantry --insecure-registry HOST build --json EXTRA…`: the summary and stderr.
fn build(t: &TestEnv, host: &str, extra: &[&str]) -> (Value, String) {
    let o = t
        .gantry()
        .args(["--insecure-registry", host, "build", "--json"])
        .args(extra)
        .ok();
    (json(&o.stdout), o.stderr)
}

fn digest(r: &Value) -> String {
    r["images"][0]["digest"].as_str().unwrap().to_owned()
}

/// Per layer target: whether it came from the remote cache.
fn remote_hits(r: &Value) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let hit = l["remoteHit"].as_bool();
            (
                l["name"].as_str().unwrap().to_owned(),
                hit.unwrap_or_else(|| panic!("remoteHit in {r:#}")),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
    v.iter().map(|(n, h)| ((*n).to_owned(), *h)).collect()
}

/// The blob digest of a layer target.
fn layer_digest(r: &Value, name: &str) -> String {
    r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {r:#}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The registry's access log: (method, path, status) per request. The registry logs a request
/// just after answering it, so this waits until the log stops growing.
fn access(reg: &Registry) -> Vec<(String, String, u16)> {
    let mut log = reg.log();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let again = reg.log();
        if again == log {
            break;
        }
        log = again;
    }
    log.lines()
        .filter_map(|l| {
            let start = l.find("] \"")? + 3;
            let rest = &l[start..];
            let end = rest.find('"')?;
            let mut req = rest[..end].split(' ');
            let (method, path) = (req.next()?.to_owned(), req.next()?.to_owned());
            let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
            Some((method, path, status))
        })
        .collect()
}

/// One plain HTTP/1.0 request to the registry: (status, body).
fn http(
    reg: &Registry,
    method: &str,
    path: &str,
    header: (&str, &str),
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(reg.host()).expect("connect to the registry");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {}\r\n{}: {}\r\nContent-Length: {}\r\n\r\n",
        reg.host(),
        header.0,
        header.1,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let status = String::from_utf8_lossy(&resp[..end])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, resp[end + 4..].to_vec())
}

/// The entries of the cache repository `cache`: (tag, manifest), by tag.
fn entries(reg: &Registry) -> Vec<(String, Value)> {
    let (status, body) = http(reg, "GET", "/v2/cache/tags/list", ("Accept", "*/*"), b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut tags: Vec<String> = serde_json::from_slice::<Value>(&body).unwrap()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    tags.into_iter()
        .map(|tag| {
            let path = format!("/v2/cache/manifests/{tag}");
            let (status, body) = http(reg, "GET", &path, ("Accept", OCI_MANIFEST), b"");
            assert_eq!(status, 200, "{tag}: {}", String::from_utf8_lossy(&body));
            (tag, serde_json::from_slice(&body).unwrap())
        })
        .collect()
}

#[test]
fn machine_b_reuses_machine_a_layers_without_downloading_blobs() {
    let reg = Registry::start(RegistryOptions::plain());
    let (host, cache) = (reg.host(), format!("{}/cache", reg.host()));
    let a = machine(&host);
    let before = access(&reg).len();
    let (built_a, _) = build(&a, &host, &["--cache-to", &cache]);
    assert_eq!(built_a["cache"]["misses"], 3, "{built_a:#}");
    assert_eq!(built_a["cache"]["remoteHits"], 0);
    assert_eq!(
        remote_hits(&built_a),
        pairs(&[("a", false), ("b", false), ("c", false)])
    );
    let layer_bytes: u64 = built_a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert!(
        built_a["cache"]["remoteBytes"].as_u64().unwrap() >= layer_bytes,
        "{built_a:#}"
    );
    let puts = access(&reg)[before..]
        .iter()
        .filter(|(m, p, s)| m == "PUT" && p.starts_with("/v2/cache/manifests/sha256-") && *s == 201)
        .count();
    assert_eq!(puts, 3, "one entry per layer");

    // Machine B, empty store: three remote hits, from manifests and HEADs only (a shallow
    // build: its layout leaves the layers in the cache registry).
    let b = machine(&host);
    let before = access(&reg).len();
    let (built_b, _) = build(&b, &host, &["--cache-from", &cache, "--shallow"]);
    let log = access(&reg)[before..].to_vec();
    assert_eq!(built_b["cache"]["remoteHits"], 3, "{built_b:#}");
    assert_eq!(built_b["cache"]["misses"], 0);
    assert_eq!(
        remote_hits(&built_b),
        pairs(&[("a", true), ("b", true), ("c", true)])
    );
    assert_eq!(digest(&built_b), digest(&built_a));
    assert!(
        !log.iter()
            .any(|(m, p, _)| m == "GET" && p.contains("/blobs/")),
        "no blob is downloaded: {log:#?}"
    );

    // Pushing mounts the layers from the cache repository; only the config is uploaded.
    let before = access(&reg).len();
    let o = b
        .gantry()
        .args([
            "--insecure-registry",
            &host,
            "push",
            "--json",
            "app",
            "--cache-from",
            &cache,
        ])
        .ok();
    let pushed = json(&o.stdout);
    let blobs = &pushed["pushed"][0]["blobs"];
    assert_eq!(blobs["mounted"], 3, "{pushed:#}");
    assert!(blobs["uploaded"].as_u64().unwrap() <= 1, "{pushed:#}");
    assert_eq!(pushed["pushed"][0]["digest"], digest(&built_a).as_str());
    let log = access(&reg)[before..].to_vec();
    let mounts = log
        .iter()
        .filter(|(m, p, s)| {
            m == "POST" && p.contains("mount=sha256") && p.contains("from=cache") && *s == 201
        })
        .count();
    assert_eq!(mounts, 3, "{log:#?}");
    assert!(
        !log.iter()
            .any(|(m, p, _)| m == "GET" && p.contains("/blobs/")),
        "{log:#?}"
    );
    let inspect = tool("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/team/app:1"),
        ])
        .ok();
    assert_eq!(json(&inspect.stdout)["Digest"], digest(&built_a).as_str());
}

#[test]
fn tampered_entries_are_ignored_and_rebuilt() {
    let reg = Registry::start(RegistryOptions::plain());
    let (host, cache) = (reg.host(), format!("{}/cache", reg.host()));
    let (built_a, _) = build(&machine(&host), &host, &["--cache-to", &cache]);

    // The entries, as specified: one manifest per layer, tagged by the cache key.
    let cached = entries(&reg);
    let mut blobs: Vec<String> = Vec::new();
    for (tag, m) in &cached {
        let hex = tag
            .strip_prefix("sha256-")
            .unwrap_or_else(|| panic!("{tag}"));
        assert_eq!(hex.len(), 64, "{tag}");
        assert_eq!(
            m["artifactType"], "application/vnd.gantry.cache.v1",
            "{m:#}"
        );
        assert_eq!(
            m["config"]["mediaType"], "application/vnd.oci.empty.v1+json",
            "{m:#}"
        );
        assert_eq!(
            m["annotations"]["dev.gantry.cache.key"],
            format!("sha256:{hex}")
        );
        let info = m["annotations"]["dev.gantry.cache.layer-info"].as_str();
        assert!(
            info.is_some_and(|i| serde_json::from_str::<Value>(i).is_ok()),
            "{m:#}"
        );
        assert_eq!(m["layers"].as_array().unwrap().len(), 1, "{m:#}");
        blobs.push(m["layers"][0]["digest"].as_str().unwrap().to_owned());
    }
    blobs.sort();
    let mut built: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| layer_digest(&built_a, n))
        .collect();
    built.sort();
    assert_eq!(blobs, built);
    let entry_of = |name: &str| {
        let d = layer_digest(&built_a, name);
        cached
            .iter()
            .find(|(_, m)| m["layers"][0]["digest"] == d.as_str())
            .unwrap()
            .clone()
    };

    // b's entry now names a's blob (which exists): its layer-info no longer matches.
    let (tag, mut m) = entry_of("b");
    m["layers"][0] = entry_of("a").1["layers"][0].clone();
    let path = format!("/v2/cache/manifests/{tag}");
    let body = serde_json::to_vec(&m).unwrap();
    let (status, resp) = http(&reg, "PUT", &path, ("Content-Type", OCI_MANIFEST), &body);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&resp));
    let (r, err) = build(&machine(&host), &host, &["--cache-from", &cache]);
    assert_mentions(&err, &["remote cache", "ignored"]);
    assert_eq!(r["cache"]["misses"], 1, "{r:#}");
    assert_eq!(r["cache"]["remoteHits"], 2);
    assert_eq!(
        remote_hits(&r),
        pairs(&[("a", true), ("b", false), ("c", true)])
    );
    assert_eq!(digest(&r), digest(&built_a));

    // c's blob is gone from the registry's storage: its HEAD is a 404.
    let c = layer_digest(&built_a, "c");
    let hex = c.trim_start_matches("sha256:");
    let data = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::remove_file(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let (r, err) = build(&machine(&host), &host, &["--cache-from", &cache]);
    assert_mentions(&err, &["remote cache", "ignored"]);
    assert_eq!(r["cache"]["misses"], 2, "{r:#}");
    assert_eq!(r["cache"]["remoteHits"], 1);
    assert_eq!(
        remote_hits(&r),
        pairs(&[("a", true), ("b", false), ("c", false)])
    );
    assert_eq!(digest(&r), digest(&built_a));
}

#[test]
fn an_unreachable_cache_falls_back_to_local_work() {
    // Nothing listens on a port that was just free.
    let host = format!("127.0.0.1:{}", free_port());
    let cache = format!("{host}/cache");
    let t = machine(&host);
    let (r, err) = build(&t, &host, &["--cache-from", &cache]);
    assert_mentions(&err, &["remote cache"]);
    assert_eq!(r["cache"]["misses"], 3, "{r:#}");
    assert_eq!(r["cache"]["remoteHits"], 0);
    // Writing back to it fails as gently; the local results stand.
    let (again, err) = build(&t, &host, &["--cache-to", &cache]);
    assert_mentions(&err, &["remote cache"]);
    assert_eq!(again["cache"]["misses"], 0, "{again:#}");
    assert_eq!(digest(&again), digest(&r));
}

#[test]
fn cache_from_never_writes() {
    let reg = Registry::start(RegistryOptions::plain());
    let (host, cache) = (reg.host(), format!("{}/cache", reg.host()));
    let t = machine(&host);
    let before = access(&reg).len();
    let (r, err) = build(&t, &host, &["--cache-from", &cache]);
    assert_eq!(r["cache"]["misses"], 3, "{r:#}");
    assert_eq!(r["cache"]["remoteHits"], 0);
    assert!(
        !err.contains("ignored"),
        "a missing entry is a plain miss:\n{err}"
    );
    // A rebuild (local hits) with --cache-from writes nothing back either.
    build(&t, &host, &["--cache-from", &cache]);
    let log = access(&reg)[before..].to_vec();
    assert!(
        log.iter()
            .any(|(m, p, _)| m == "GET" && p.starts_with("/v2/cache/manifests/sha256-")),
        "the cache was looked up: {log:#?}"
    );
    let writes: Vec<_> = log
        .iter()
        .filter(|(m, _, _)| matches!(m.as_str(), "PUT" | "POST" | "PATCH" | "DELETE"))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
}
