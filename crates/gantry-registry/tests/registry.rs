//! The client against a real `docker-registry` (plain, Basic auth, TLS), and through a
//! fault-injecting proxy for what a real server does not do on demand.

#![allow(clippy::print_stderr)]

mod common;

use std::ffi::OsString;
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, config, data, layer_desc, push_blob, push_image, read_blob};
use gantry_oci::{Digest, media_types, parse_document};
use gantry_registry::{
    AuthFiles, Client, Credentials, Error, NoCredentials, Secret, StaticCredentials, login, logout,
};
use gantry_test::proxy::{Fault, FaultProxy, Recorder};
use gantry_test::registry::{Registry, RegistryOptions};

/// Everything a push and a pull do, against `host`.
fn roundtrip(client: &Client, host: &str) {
    let repo = client.repo(host, "test/app", false);
    repo.ping().expect("ping");
    let small = data(1000, 1);
    let big = data((9 << 20) + 123, 2);
    let mut descs = Vec::new();
    for bytes in [&small, &big] {
        let desc = layer_desc(bytes);
        assert_eq!(repo.head_blob(&desc.digest).unwrap(), None);
        repo.upload_blob(&desc, Cursor::new(bytes.clone()))
            .unwrap_or_else(|e| panic!("upload of {} bytes: {e}", bytes.len()));
        assert_eq!(repo.head_blob(&desc.digest).unwrap(), Some(desc.size));
        assert_eq!(&read_blob(&repo, &desc).unwrap(), bytes);
        // Mounting into another repository of the same registry.
        let other = client.repo(host, "test/other", false);
        assert_eq!(other.head_blob(&desc.digest).unwrap(), None);
        assert!(other.mount_blob(&desc, "test/app").unwrap(), "mount");
        assert_eq!(other.head_blob(&desc.digest).unwrap(), Some(desc.size));
        descs.push(desc);
    }
    // A mount of a blob the source does not have opens a session, which is cancelled.
    let missing = layer_desc(b"not pushed anywhere");
    assert!(
        !client
            .repo(host, "test/third", false)
            .mount_blob(&missing, "test/app")
            .unwrap()
    );

    let (bytes, digest) = push_image(&repo, "v1", &descs);
    let got = repo.get_manifest("v1").unwrap();
    assert_eq!(got.bytes, bytes);
    assert_eq!(got.media_type, media_types::OCI_MANIFEST);
    assert_eq!(got.digest, digest);
    parse_document(&got.bytes, Some(&got.media_type), "manifest").unwrap();
    let by_digest = repo.get_manifest(&digest.to_string()).unwrap();
    assert_eq!(by_digest, got);
    let head = repo.head_manifest("v1").unwrap().expect("tag exists");
    assert_eq!(head.digest, digest);
    assert_eq!(head.size, bytes.len() as u64);
    assert_eq!(head.media_type, media_types::OCI_MANIFEST);
    assert_eq!(repo.head_manifest("absent").unwrap(), None);
    match repo.get_manifest("absent") {
        Err(Error::NotFound { registry, what, .. }) => {
            assert_eq!(registry, host);
            assert!(what.contains("absent"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Pushing by digest.
    assert_eq!(
        repo.put_manifest(&digest.to_string(), media_types::OCI_MANIFEST, &bytes)
            .unwrap(),
        digest
    );
    // A digest reference that does not match the bytes is refused before any request.
    let wrong = Digest::sha256(b"other");
    assert!(matches!(
        repo.put_manifest(&wrong.to_string(), media_types::OCI_MANIFEST, &bytes),
        Err(Error::DigestMismatch { .. })
    ));
    assert_eq!(repo.tags().unwrap(), vec!["v1".to_owned()]);
}

#[test]
fn plain_registry_roundtrip() {
    let reg = Registry::start(RegistryOptions::plain());
    let c = client(config(&[&reg.host()]), NoCredentials);
    let t = Instant::now();
    roundtrip(&c, &reg.host());
    eprintln!("plain roundtrip: {:?}", t.elapsed());
    // The 9 MiB blob went up as one PATCH (a single chunk), the small ones with a single PUT.
    let log = reg.log();
    assert_eq!(
        log.matches("\"PATCH /v2/test/app/blobs/uploads/").count(),
        1,
        "{log}"
    );
    // The refused mount's upload session was cancelled.
    assert!(
        log.contains("\"DELETE /v2/test/third/blobs/uploads/"),
        "{log}"
    );
}

#[test]
fn basic_auth_over_tls_roundtrip() {
    let reg = Registry::start(
        RegistryOptions::plain()
            .with_basic_auth("alice", "correct-horse")
            .with_tls(),
    );
    let host = reg.host();
    let mut cfg = config(&[]);
    cfg.ca_files
        .insert(host.clone(), vec![reg.ca_cert().unwrap()]);
    let good = StaticCredentials::new(&host, Credentials::basic("alice", "correct-horse"));
    let c = client(cfg.clone(), good);
    let t = Instant::now();
    roundtrip(&c, &host);
    eprintln!("TLS + basic roundtrip: {:?}", t.elapsed());

    // A wrong password is Unauthorized, naming the registry and the user, not the password.
    let bad = client(
        cfg.clone(),
        StaticCredentials::new(&host, Credentials::basic("alice", "pw-that-is-bad")),
    );
    let e = bad.ping(&host).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::Unauthorized { registry, .. } if *registry == host),
        "{e:?}"
    );
    assert!(msg.contains(&host) && msg.contains("alice"), "{msg}");
    assert!(!msg.contains("pw-that-is-bad"), "{msg}");
    assert!(msg.contains("401 UNAUTHORIZED"), "{msg}");
    // A pull with the wrong password fails the same way.
    let e = bad
        .repo(&host, "test/app", false)
        .get_manifest("v1")
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");

    // An anonymous repository sends none even though the client has them.
    let e = c
        .repo(&host, "test/app", true)
        .get_manifest("v1")
        .unwrap_err();
    assert!(e.to_string().contains("anonymous"), "{e}");

    // No credentials at all.
    let e = client(cfg.clone(), NoCredentials).ping(&host).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("no credentials"), "{e}");

    // Without the CA the certificate is not trusted, and nothing falls back to HTTP.
    let e = client(config(&[]), NoCredentials).ping(&host).unwrap_err();
    assert!(matches!(e, Error::Http { .. }), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

/// T27: a secure registry is never contacted over plain HTTP, even when only HTTP answers.
#[test]
fn no_plain_http_fallback_for_secure_registries() {
    let reg = Registry::start(RegistryOptions::plain());
    let before = reg.log();
    let e = client(config(&[]), NoCredentials)
        .ping(&reg.host())
        .unwrap_err();
    assert!(matches!(e, Error::Http { .. }), "{e:?}");
    assert!(e.to_string().contains("--insecure-registry"), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    let after = reg.log();
    assert!(
        !after[before.len()..].contains("\"GET /v2/ HTTP/1.1\""),
        "a plain-HTTP request reached the registry:\n{after}"
    );
}

#[test]
fn login_writes_an_auth_file_the_client_reads() {
    let reg = Registry::start(RegistryOptions::plain().with_basic_auth("bob", "s3cret"));
    let host = reg.host();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("containers/auth.json");
    // What `gantry login` does: check the password, then store it.
    let base = client(config(&[&host]), AuthFiles::explicit(&file));
    let check = base.with_credentials(std::sync::Arc::new(StaticCredentials::new(
        &host,
        Credentials::basic("bob", "s3cret"),
    )));
    check.repo(&host, "", false).ping().unwrap();
    let wrong = base.with_credentials(std::sync::Arc::new(StaticCredentials::new(
        &host,
        Credentials::basic("bob", "nope"),
    )));
    assert!(matches!(
        wrong.repo(&host, "", false).ping(),
        Err(Error::Unauthorized { .. })
    ));
    login(&file, &host, "bob", Secret::new("s3cret")).unwrap();

    let c = client(config(&[&host]), AuthFiles::explicit(&file));
    c.ping(&host).unwrap();
    let repo = c.repo(&host, "test/login", false);
    let desc = push_blob(&repo, b"hello");
    push_image(&repo, "latest", &[desc]);

    assert!(logout(&file, &host).unwrap());
    let e = client(config(&[&host]), AuthFiles::explicit(&file))
        .ping(&host)
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
}

/// Runs the calling test again in a child process with `envs` (PATH for credential helpers:
/// the environment of this process cannot be changed safely). Returns true in the child.
fn in_child(test: &str, envs: &[(&str, OsString)]) -> bool {
    if std::env::var_os("GANTRY_REGISTRY_TEST_CHILD").is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("GANTRY_REGISTRY_TEST_CHILD", "1")
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child run of {test} failed:\n{stdout}\n{stderr}"
    );
    false
}

fn write_script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credential_helpers_from_path() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_script(
        &bin,
        "docker-credential-gtest",
        r#"[ "$1" = get ] || exit 3
read -r server
printf '%s' "$server" > "$(dirname "$0")/asked"
printf '{"ServerURL":"%s","Username":"carol","Secret":"helper-pw"}' "$server""#,
    );
    write_script(
        &bin,
        "docker-credential-gfail",
        "echo 'keychain locked' >&2; exit 1",
    );
    write_script(
        &bin,
        "docker-credential-ggarbage",
        "echo 'this is not json helper-pw'",
    );
    write_script(
        &bin,
        "docker-credential-gnone",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    if !in_child(
        "credential_helpers_from_path",
        &[
            ("PATH", path),
            ("GTEST_DIR", tmp.path().as_os_str().to_owned()),
        ],
    ) {
        return;
    }
    let dir = std::path::PathBuf::from(std::env::var_os("GTEST_DIR").unwrap());
    let reg = Registry::start(RegistryOptions::plain().with_basic_auth("carol", "helper-pw"));
    let host = reg.host();
    let file = dir.join("config.json");
    let with_helper = |helper: &str| {
        std::fs::write(
            &file,
            serde_json::to_vec(&serde_json::json!({
                "auths": {"unrelated.example": {"auth": "eDp5"}},
                "credHelpers": {host.clone(): helper},
            }))
            .unwrap(),
        )
        .unwrap();
        client(config(&[&host]), AuthFiles::explicit(&file))
    };

    let c = with_helper("gtest");
    c.ping(&host).unwrap();
    push_blob(&c.repo(&host, "test/helper", false), b"via a helper");
    assert_eq!(
        std::fs::read_to_string(dir.join("bin/asked")).unwrap(),
        host
    );

    for (helper, needle) in [
        ("gfail", "keychain locked"),
        ("ggarbage", "not a JSON"),
        ("gmissing", "not installed"),
    ] {
        let e = with_helper(helper).ping(&host).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, Error::CredentialHelper { .. }),
            "{helper}: {e:?}"
        );
        assert!(
            msg.contains(&format!("docker-credential-{helper}")),
            "{msg}"
        );
        assert!(msg.contains(needle), "{msg}");
        assert!(!msg.contains("helper-pw"), "{msg}");
    }
    // Docker's "not found" answer means anonymous, which this registry refuses.
    let e = with_helper("gnone").ping(&host).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");

    // credsStore is the default helper for hosts without an entry.
    std::fs::write(
        &file,
        serde_json::to_vec(&serde_json::json!({"credsStore": "gtest"})).unwrap(),
    )
    .unwrap();
    client(config(&[&host]), AuthFiles::explicit(&file))
        .ping(&host)
        .unwrap();
}

/// A registry behind a fault proxy, with a client that talks to the proxy.
struct Proxied {
    _reg: Registry,
    proxy: FaultProxy,
    direct: Client,
    via: Client,
}

impl Proxied {
    fn start(opts: RegistryOptions, creds: Option<Credentials>) -> Proxied {
        let reg = Registry::start(opts);
        let proxy = FaultProxy::start(&reg.host());
        let source = |host: &str| match &creds {
            Some(c) => StaticCredentials::new(host, c.clone()),
            None => StaticCredentials::default(),
        };
        let direct = client(config(&[&reg.host()]), source(&reg.host()));
        let via = client(config(&[&proxy.host()]), source(&proxy.host()));
        Proxied {
            _reg: reg,
            proxy,
            direct,
            via,
        }
    }

    fn host(&self) -> String {
        self.proxy.host()
    }
}

#[test]
fn retries_503_honouring_retry_after() {
    let p = Proxied::start(RegistryOptions::plain(), None);
    let repo = p.via.repo(&p.host(), "test/retry", false);
    let desc = push_blob(&repo, b"layer");
    let (bytes, _) = push_image(&repo, "v1", &[desc]);
    p.proxy
        .fault(Some("GET"), "/manifests/v1", 2, Fault::unavailable());
    let t = Instant::now();
    let m = repo.get_manifest("v1").unwrap();
    let took = t.elapsed();
    assert_eq!(m.bytes, bytes);
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After: 1 twice, took {took:?}"
    );
    let gets: Vec<_> = p
        .proxy
        .matching("/manifests/v1")
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    let statuses: Vec<u16> = gets.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);

    // A 503 that outlasts the retries is an error naming the URL and the attempts.
    let mut cfg = config(&[&p.host()]);
    cfg.retries = 1;
    let c = client(cfg, NoCredentials);
    p.proxy.fault(
        Some("GET"),
        "/manifests/v1",
        5,
        Fault::Status {
            code: 503,
            retry_after: Some("0".to_owned()),
        },
    );
    let e = c
        .repo(&p.host(), "test/retry", false)
        .get_manifest("v1")
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.status(), Some(503), "{e:?}");
    assert!(
        msg.contains("/v2/test/retry/manifests/v1") && msg.contains("after 2 attempts"),
        "{msg}"
    );
    p.proxy.clear_faults();
}

#[test]
fn resumes_a_download_cut_mid_body() {
    let p = Proxied::start(RegistryOptions::plain(), None);
    let bytes = data(3 << 20, 7);
    let repo = p.via.repo(&p.host(), "test/resume", false);
    let desc = push_blob(&p.direct.repo(&p._reg.host(), "test/resume", false), &bytes);
    let path = format!("/blobs/{}", desc.digest);

    // Range honoured: 206 from the cut point.
    p.proxy
        .fault(Some("GET"), &path, 1, Fault::CutAfter(1 << 20));
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    let gets = p.proxy.matching(&path);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!(gets[0].body_bytes, 1 << 20);
    assert_eq!(gets[1].header("range"), Some("bytes=1048576-"));
    assert_eq!(gets[1].status, 206);

    // Range ignored: a full 200 whose first part is skipped.
    p.proxy
        .fault(Some("GET"), &path, 1, Fault::CutAfter(1 << 20));
    p.proxy.fault(Some("GET"), &path, 1, Fault::IgnoreRange);
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    let gets = p.proxy.matching(&path);
    assert_eq!(gets.len(), 4);
    assert_eq!(gets[3].status, 200);
    assert_eq!(gets[3].body_bytes, desc.size);

    // A wrong Content-Range is an error, not a silent splice.
    p.proxy
        .fault(Some("GET"), &path, 1, Fault::CutAfter(1 << 20));
    p.proxy
        .fault(Some("GET"), &path, 1, Fault::BogusContentRange);
    let e = read_blob(&repo, &desc).unwrap_err();
    assert!(e.to_string().contains("Content-Range"), "{e}");

    // A connection that keeps breaking without progress ends in an error.
    let mut cfg = config(&[&p.host()]);
    cfg.retries = 2;
    let c = client(cfg, NoCredentials);
    p.proxy.fault(Some("GET"), &path, 1, Fault::CutAfter(1000));
    p.proxy.fault(Some("GET"), &path, 10, Fault::CutAfter(0));
    let e = read_blob(&c.repo(&p.host(), "test/resume", false), &desc).unwrap_err();
    assert!(e.to_string().contains("broke at byte 1000"), "{e}");
    p.proxy.clear_faults();
}

#[test]
fn large_uploads_go_in_ranged_chunks_and_restart_whole() {
    let p = Proxied::start(RegistryOptions::plain(), None);
    let chunk = gantry_registry::UPLOAD_CHUNK;
    let bytes = data((2 * chunk + 123) as usize, 11);
    let desc = layer_desc(&bytes);
    let repo = p.via.repo(&p.host(), "test/chunks", false);
    repo.upload_blob(&desc, Cursor::new(bytes.clone())).unwrap();
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    let patches: Vec<_> = p
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    let ranges: Vec<_> = patches
        .iter()
        .map(|r| {
            (
                r.header("content-range").unwrap_or("none").to_owned(),
                r.header("content-length").unwrap_or("none").to_owned(),
            )
        })
        .collect();
    let c = chunk;
    assert_eq!(
        ranges,
        [
            (format!("0-{}", c - 1), c.to_string()),
            (format!("{}-{}", c, 2 * c - 1), c.to_string()),
            (format!("{}-{}", 2 * c, 2 * c + 122), "123".to_owned()),
        ]
    );

    // A chunk refused mid-upload restarts the session from the first byte (the source is
    // opened again) and the blob still arrives whole.
    let bytes = data((chunk + 77) as usize, 12);
    let desc = layer_desc(&bytes);
    p.proxy.fault(
        Some("PATCH"),
        "/blobs/uploads/",
        1,
        Fault::Status {
            code: 503,
            retry_after: Some("0".to_owned()),
        },
    );
    let mut opened = 0;
    repo.upload_blob_reopen(&desc, || {
        opened += 1;
        Ok(Cursor::new(bytes.clone()))
    })
    .unwrap();
    assert_eq!(opened, 2);
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    p.proxy.clear_faults();
}

#[test]
fn a_flipped_byte_is_a_digest_error() {
    let p = Proxied::start(RegistryOptions::plain(), None);
    let bytes = data(200_000, 9);
    let repo = p.via.repo(&p.host(), "test/flip", false);
    let desc = push_blob(&repo, &bytes);
    let path = format!("/blobs/{}", desc.digest);
    p.proxy
        .fault(Some("GET"), &path, 1, Fault::FlipByte(12_345));
    let mut r = repo.get_blob(&desc).unwrap();
    let mut out = Vec::new();
    let e = r.read_to_end(&mut out).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(e.to_string().contains(&desc.digest.to_string()), "{e}");
    // Every later read fails too.
    assert!(r.read(&mut [0u8; 16]).is_err());
    let served = p.proxy.matching(&path);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].body_bytes, desc.size, "the whole body was served");

    // A manifest with a flipped byte: by digest it does not hash to the reference; by tag it
    // does not match the Docker-Content-Digest header. Nothing is returned either way.
    let (_, digest) = push_image(&repo, "v1", &[desc]);
    p.proxy
        .fault(Some("GET"), "/manifests/", 2, Fault::FlipByte(10));
    for reference in [digest.to_string(), "v1".to_owned()] {
        match repo.get_manifest(&reference) {
            Err(Error::DigestMismatch { what, .. }) => assert!(what.contains(&reference), "{what}"),
            other => panic!("{reference}: expected a digest mismatch, got {other:?}"),
        }
    }
}

#[test]
fn redirects_to_another_origin_carry_no_credentials() {
    let creds = Credentials::basic("dave", "redirect-pw");
    let p = Proxied::start(
        RegistryOptions::plain().with_basic_auth("dave", "redirect-pw"),
        Some(creds),
    );
    let bytes = data(50_000, 3);
    let repo = p.via.repo(&p.host(), "test/redirect", false);
    let desc = push_blob(&repo, &bytes);
    let storage = Recorder::start();
    storage.serve(bytes.clone());
    let path = format!("/blobs/{}", desc.digest);
    p.proxy.fault(
        Some("GET"),
        &path,
        1,
        Fault::Redirect(format!(
            "http://{}/storage/blob?X-Amz-Signature=sig-canary&X-Amz-Credential=AKIA-canary",
            storage.host()
        )),
    );
    assert_eq!(read_blob(&repo, &desc).unwrap(), bytes);
    let at_registry = p.proxy.matching(&path);
    assert_eq!(at_registry.len(), 1);
    assert!(
        at_registry[0].header("authorization").is_some(),
        "the registry itself gets the credentials"
    );
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 1, "{at_storage:#?}");
    for h in ["authorization", "cookie", "proxy-authorization"] {
        assert_eq!(at_storage[0].header(h), None, "{h} leaked: {at_storage:#?}");
    }
    assert!(at_storage[0].path.contains("X-Amz-Signature=sig-canary"));
}

/// Distribution's token auth, with the fixture's token server: scopes are minimal (pull for
/// reads, pull+push for writes, both repositories for a mount), tokens are cached per scope,
/// and wrong credentials, identity tokens and anonymous access behave.
#[test]
fn bearer_token_auth() {
    let reg = Registry::start(RegistryOptions::plain().with_token_auth(
        "erin",
        "token-pw",
        Some("refresh-token-value"),
    ));
    let host = reg.host();
    let c = client(
        config(&[&host]),
        StaticCredentials::new(&host, Credentials::basic("erin", "token-pw")),
    );
    roundtrip(&c, &host);
    let reqs = reg.token_requests();
    assert!(
        reqs.iter().all(|r| r.status == 200 && r.had_authorization),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter()
            .all(|r| r.service.as_deref() == Some("gantry-test-registry"))
    );
    let scopes: Vec<Vec<String>> = reqs.iter().map(|r| r.scopes.clone()).collect();
    let has = |want: &[&str]| scopes.iter().any(|s| s == want);
    assert!(has(&[]), "ping asks for no scope: {scopes:?}");
    assert!(has(&["repository:test/app:pull"]), "{scopes:?}");
    assert!(has(&["repository:test/app:pull,push"]), "{scopes:?}");
    assert!(
        has(&[
            "repository:test/other:pull,push",
            "repository:test/app:pull"
        ]),
        "a mount asks for push on the target and pull on the source: {scopes:?}"
    );
    // One token per scope set, reused for every request that needs it.
    let mut unique = scopes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        scopes.len(),
        "tokens were not cached: {scopes:?}"
    );

    // The wrong password: the token server refuses, and the error says so.
    let bad = client(
        config(&[&host]),
        StaticCredentials::new(&host, Credentials::basic("erin", "nope")),
    );
    let e = bad
        .repo(&host, "test/app", false)
        .get_manifest("v1")
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("token server"), "{e}");

    // An identity token goes through the OAuth2 refresh-token grant.
    let idc = client(
        config(&[&host]),
        StaticCredentials::new(
            &host,
            Credentials::IdentityToken(Secret::new("refresh-token-value")),
        ),
    );
    assert!(
        !idc.repo(&host, "test/app", false)
            .get_manifest("v1")
            .unwrap()
            .bytes
            .is_empty()
    );
    assert!(
        reg.token_requests()
            .iter()
            .any(|r| r.method == "POST" && r.status == 200)
    );

    // Anonymous: a token without access, so the registry says no.
    let e = client(config(&[&host]), NoCredentials)
        .repo(&host, "test/app", false)
        .get_manifest("v1")
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    let anon = reg
        .token_requests()
        .into_iter()
        .rev()
        .find(|r| !r.had_authorization);
    assert!(anon.is_some(), "anonymous token request");
}

/// T23: a redirect loop ends after 10 hops with an error.
#[test]
fn redirect_loops_end() {
    let p = Proxied::start(RegistryOptions::plain(), None);
    let repo = p.via.repo(&p.host(), "test/loop", false);
    let desc = push_blob(&repo, b"loop");
    let path = format!("/v2/test/loop/blobs/{}", desc.digest);
    p.proxy.fault(
        Some("GET"),
        &path,
        100,
        Fault::Redirect(format!("http://{}{path}?hop=X", p.host())),
    );
    let e = repo.get_blob(&desc).unwrap_err();
    assert!(e.to_string().contains("more than 10 redirects"), "{e}");
    let hops = p.proxy.matching(&path).len();
    assert_eq!(hops, 11, "the first request and 10 redirects");
    p.proxy.clear_faults();
}
