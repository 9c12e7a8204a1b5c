//! Helpers shared by the registry integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io::{Cursor, Read};
use std::sync::Arc;
use std::time::Duration;

use gantry_oci::{Descriptor, Digest, media_types};
use gantry_registry::{Client, CredentialSource, RegistryConfig, Repo};

/// A configuration with short backoff, insecure for the given hosts.
pub fn config(insecure: &[&str]) -> RegistryConfig {
    let mut c = RegistryConfig {
        retry_base: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(20),
        ..RegistryConfig::default()
    };
    for h in insecure {
        c.insecure.insert((*h).to_owned());
    }
    c
}

pub fn client(config: RegistryConfig, creds: impl CredentialSource + 'static) -> Client {
    Client::new(config, Arc::new(creds)).expect("client")
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

pub fn layer_desc(bytes: &[u8]) -> Descriptor {
    Descriptor::of_bytes(media_types::OCI_LAYER_GZIP, bytes)
}

pub fn push_blob(repo: &Repo, bytes: &[u8]) -> Descriptor {
    let desc = layer_desc(bytes);
    repo.upload_blob(&desc, Cursor::new(bytes.to_vec()))
        .unwrap_or_else(|e| panic!("upload {}: {e}", desc.digest));
    desc
}

pub fn read_blob(repo: &Repo, desc: &Descriptor) -> std::io::Result<Vec<u8>> {
    let mut r = repo.get_blob(desc).map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

/// Pushes a config blob and a manifest with `layers` under `tag`; returns the manifest bytes
/// and digest.
pub fn push_image(repo: &Repo, tag: &str, layers: &[Descriptor]) -> (Vec<u8>, Digest) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cdesc = Descriptor::of_bytes(media_types::OCI_CONFIG, config);
    repo.upload_blob(&cdesc, Cursor::new(config.to_vec()))
        .expect("upload config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": cdesc,
        "layers": layers,
    });
    let bytes = gantry_oci::json::to_canonical_vec(&manifest);
    let d = repo
        .put_manifest(tag, media_types::OCI_MANIFEST, &bytes)
        .expect("put manifest");
    assert_eq!(d, Digest::sha256(&bytes));
    (bytes, d)
}
