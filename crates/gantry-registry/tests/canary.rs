//! T38: canary secrets (passwords, an identity token, a signed-URL signature) appear in no
//! error message, no `Debug` output and no log line, with every `tracing` and `log` record of
//! every crate captured at TRACE level. Its own test binary, because it installs a global
//! subscriber.

mod common;

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::{client, config, data, push_blob, push_image};
use gantry_registry::{AuthFiles, Credentials, NoCredentials, Secret, StaticCredentials, login};
use gantry_test::proxy::{Fault, FaultProxy, Recorder};
use gantry_test::registry::{Registry, RegistryOptions};

const PASSWORD: &str = "pw-canary-5e1f0c";
const WRONG: &str = "pw-wrong-canary-9c2d4b";
const SIGNATURE: &str = "sig-canary-77aa31";
const AMZ_CREDENTIAL: &str = "AKIA-canary-0b9e";
const IDENTITY_TOKEN: &str = "idtok-canary-31ab8f";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn canaries_appear_in_no_error_and_no_log() {
    let buf = Buf::default();
    let writer = buf.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("install the subscriber");

    let reg = Registry::start(RegistryOptions::plain().with_basic_auth("alice", PASSWORD));
    let proxy = FaultProxy::start(&reg.host());
    let host = proxy.host();
    let good = client(
        config(&[&host]),
        StaticCredentials::new(&host, Credentials::basic("alice", PASSWORD)),
    );
    let mut errors: Vec<String> = Vec::new();
    let mut keep = |e: &dyn std::fmt::Debug, d: String| {
        errors.push(d);
        errors.push(format!("{e:?}"));
    };

    // A normal push and pull.
    good.ping(&host).unwrap();
    let repo = good.repo(&host, "test/canary", false);
    let bytes = data(300_000, 5);
    let desc = push_blob(&repo, &bytes);
    let big = data((8 << 20) + 1, 6);
    push_blob(&repo, &big);
    push_image(&repo, "v1", std::slice::from_ref(&desc));
    repo.get_manifest("v1").unwrap();

    // A redirect to a signed URL.
    let storage = Recorder::start();
    storage.serve(bytes.clone());
    let path = format!("/blobs/{}", desc.digest);
    proxy.fault(
        Some("GET"),
        &path,
        1,
        Fault::Redirect(format!(
            "http://{}/bucket/blob?X-Amz-Credential={AMZ_CREDENTIAL}&X-Amz-Signature={SIGNATURE}",
            storage.host()
        )),
    );
    let mut out = Vec::new();
    repo.get_blob(&desc).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, bytes);

    // The same redirect, but storage serves the wrong bytes: the digest error.
    storage.serve(data(300_000, 99));
    proxy.fault(
        Some("GET"),
        &path,
        1,
        Fault::Redirect(format!(
            "http://{}/bucket/blob?X-Amz-Signature={SIGNATURE}",
            storage.host()
        )),
    );
    let e = repo
        .get_blob(&desc)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    keep(&e, e.to_string());

    // A redirect to a storage that is down: a transport error on the signed URL.
    let gone = format!("127.0.0.1:{}", gantry_test::registry::free_port());
    proxy.fault(
        Some("GET"),
        &path,
        10,
        Fault::Redirect(format!(
            "http://{gone}/bucket/blob?X-Amz-Signature={SIGNATURE}"
        )),
    );
    let e = repo.get_blob(&desc).unwrap_err();
    keep(&e, e.to_string());
    proxy.clear_faults();

    // 503s that outlast the retries.
    proxy.fault(None, "/manifests/v1", 100, Fault::unavailable());
    let mut cfg = config(&[&host]);
    cfg.retries = 1;
    let impatient = client(
        cfg,
        StaticCredentials::new(&host, Credentials::basic("alice", PASSWORD)),
    );
    let e = impatient
        .repo(&host, "test/canary", false)
        .get_manifest("v1")
        .unwrap_err();
    keep(&e, e.to_string());
    proxy.clear_faults();

    // A wrong password.
    let bad = client(
        config(&[&host]),
        StaticCredentials::new(&host, Credentials::basic("alice", WRONG)),
    );
    let e = bad.ping(&host).unwrap_err();
    keep(&e, e.to_string());
    let e = bad
        .repo(&host, "test/canary", false)
        .upload_blob(&desc, Cursor::new(bytes.clone()))
        .unwrap_err();
    keep(&e, e.to_string());

    // An identity token where the registry wants Basic.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("auth.json");
    std::fs::write(
        &file,
        serde_json::to_vec(
            &serde_json::json!({"auths": {host.clone(): {"identitytoken": IDENTITY_TOKEN}}}),
        )
        .unwrap(),
    )
    .unwrap();
    let e = client(config(&[&host]), AuthFiles::explicit(&file))
        .ping(&host)
        .unwrap_err();
    keep(&e, e.to_string());

    // Credentials from a file written by login.
    login(&file, &host, "alice", Secret::new(PASSWORD)).unwrap();
    let from_file = client(config(&[&host]), AuthFiles::explicit(&file));
    from_file.ping(&host).unwrap();
    let creds = AuthFiles::explicit(&file).credentials_debug(&host);
    keep(&creds, creds.clone());

    // Anonymous, for completeness.
    let e = client(config(&[&host]), NoCredentials)
        .ping(&host)
        .unwrap_err();
    keep(&e, e.to_string());

    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("registry request"),
        "the subscriber captured nothing:\n{log}"
    );
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    let wrong_basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{WRONG}"));
    let all = format!("{}\n{log}", errors.join("\n"));
    for canary in [
        PASSWORD,
        WRONG,
        SIGNATURE,
        AMZ_CREDENTIAL,
        IDENTITY_TOKEN,
        &basic,
        &wrong_basic,
    ] {
        assert!(!all.contains(canary), "{canary} leaked:\n{all}");
    }
    // The errors still say what failed.
    assert!(
        errors.iter().any(|e| e.contains("digest mismatch")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("Connection refused")),
        "{errors:#?}"
    );
    // The signed URL was really used (so the canary was in play).
    assert!(
        storage
            .requests()
            .iter()
            .any(|r| r.path.contains(SIGNATURE)),
        "{:#?}",
        storage.requests()
    );
    assert!(
        errors.iter().any(|e| e.contains("unauthorized")),
        "{errors:#?}"
    );
}

trait DebugCreds {
    fn credentials_debug(&self, host: &str) -> String;
}

impl DebugCreds for AuthFiles {
    fn credentials_debug(&self, host: &str) -> String {
        use gantry_registry::CredentialSource;
        let c = self.credentials(host).unwrap();
        assert!(c.is_some());
        format!("{c:?} {self:?}")
    }
}
