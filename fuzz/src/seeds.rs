//! The seed corpora, made here rather than vendored: small tars of every entry kind gantry
//! reads (built with the `tar` crate, plain, gzip and zstd), an oci-archive and a
//! docker-archive, manifests, configs, references and `WWW-Authenticate` values.
//! `cargo run --release --bin gen_seeds -- DIR` writes them to `DIR/<target>/<name>`.

use std::io::Write;
use std::sync::OnceLock;

use gantry_oci::Digest;

/// `(target, name, bytes)` for every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let layers = layer_tars();
    for (name, tar) in &layers {
        for target in ["tar_layer", "tar_unpack"] {
            out.push((target, name.clone(), tar.clone()));
        }
    }
    out.push(("tar_archive", "oci-archive".into(), oci_archive()));
    out.push((
        "tar_archive",
        "docker-archive".into(),
        docker_archive(&docker_manifest_json()),
    ));
    out.push(("tar_archive", "plain-tar".into(), layers[0].1.clone()));
    out.push((
        "docker_manifest",
        "one-image".into(),
        docker_manifest_json(),
    ));
    let ((config, _), (layer, _), _) = docker_parts();
    out.push((
        "docker_manifest",
        "two-images-null-tags".into(),
        format!(
            r#"[{{"Config":"{c}","RepoTags":null,"Layers":["layer.tar"]}},{{"Config":"{c}","RepoTags":["app:1","example.com/x/y:2"],"Layers":["blobs/sha256/{l}"]}}]"#,
            c = config,
            l = layer.hex()
        )
        .into_bytes(),
    ));
    for (name, doc) in oci_documents() {
        out.push(("oci_json", name.into(), doc));
    }
    for (i, r) in REFERENCES.iter().enumerate() {
        out.push(("reference", format!("ref-{i}"), r.as_bytes().to_vec()));
    }
    for (i, h) in CHALLENGES.iter().enumerate() {
        out.push((
            "www_authenticate",
            format!("challenge-{i}"),
            h.as_bytes().to_vec(),
        ));
    }
    out
}

const REFERENCES: &[&str] = &[
    "busybox",
    "docker.io/library/busybox:1.36",
    "localhost:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "[::1]:5000/a/b:tag",
    "ghcr.io/o/r:v1@sha512:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    "docker://quay.io/x/y:latest",
    "oci:dir:tag",
    "oci-archive:/tmp/f.tar:v1",
    "docker-archive:f.tar:busybox:latest",
    "linux/arm64/v8",
    "oci:./layout@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

const CHALLENGES: &[&str] = &[
    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
    r#"Basic realm="Registry Realm", Bearer realm="https://ghcr.io/token",service="ghcr.io""#,
    r#"Negotiate abc==, Basic realm="a \"quoted\" realm""#,
    "Retry-After: Sun, 06 Nov 1994 08:49:37 GMT",
    "120",
];

/// A tar entry for [`tar_of`].
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str, u32, u32),
    /// A file with PAX records (path, xattrs).
    Pax(&'a str, Vec<(&'a str, &'a [u8])>, &'a [u8]),
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A tar of `entries`, deterministic.
fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, p, &[][..]).expect("dir");
            }
            E::File(p, c) => {
                let mut h = header(tar::EntryType::Regular, c.len() as u64, 0o644);
                b.append_data(&mut h, p, *c).expect("file");
            }
            E::Symlink(p, t) => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, p, t).expect("symlink");
            }
            E::Hardlink(p, t) => {
                let mut h = header(tar::EntryType::Link, 0, 0o644);
                b.append_link(&mut h, p, t).expect("hardlink");
            }
            E::Fifo(p) => {
                let mut h = header(tar::EntryType::Fifo, 0, 0o600);
                b.append_data(&mut h, p, &[][..]).expect("fifo");
            }
            E::Char(p, major, minor) => {
                let mut h = header(tar::EntryType::Char, 0, 0o666);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                b.append_data(&mut h, p, &[][..]).expect("char");
            }
            E::Pax(p, records, c) => {
                b.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
                    .expect("pax");
                let mut h = header(tar::EntryType::Regular, c.len() as u64, 0o644);
                b.append_data(&mut h, p, *c).expect("pax file");
            }
        }
    }
    b.into_inner().expect("finish tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Layer tars: every entry kind, whiteouts, long names, PAX records, compressed forms.
pub fn layer_tars() -> Vec<(String, Vec<u8>)> {
    let long = format!("deep/{}/file", "d".repeat(150));
    let basic = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/app.conf", b"key=value\n"),
        E::Symlink("etc/link", "app.conf"),
        E::Hardlink("etc/hard", "etc/app.conf"),
        E::Dir("usr/bin/"),
        E::File("usr/bin/tool", b"#!/bin/sh\necho hi\n"),
    ]);
    let whiteouts = tar_of(&[
        E::Dir("a/"),
        E::File("a/.wh..wh..opq", b""),
        E::File("a/.wh.gone", b""),
        E::File("a/kept", b"x"),
        E::Symlink("abs", "/etc/passwd"),
        E::Symlink("up", "../../.."),
    ]);
    let special = tar_of(&[
        E::Fifo("run/fifo"),
        E::Char("dev/null", 1, 3),
        E::File(&long, b"long name"),
        E::Pax(
            "x/pax",
            vec![
                ("SCHILY.xattr.user.k", b"v".as_slice()),
                ("path", b"x/renamed-by-pax".as_slice()),
                ("mtime", b"1700000000.5".as_slice()),
            ],
            b"pax data",
        ),
    ]);
    let zstd = zstd::encode_all(&basic[..], 1).expect("zstd");
    vec![
        ("basic.tar".into(), basic.clone()),
        ("whiteouts.tar".into(), whiteouts),
        ("special.tar".into(), special),
        ("basic.tar.gz".into(), gzip(&basic)),
        ("basic.tar.zst".into(), zstd),
    ]
}

/// An oci-archive with one image: `oci-layout`, `index.json`, manifest, config and a layer.
pub fn oci_archive() -> Vec<u8> {
    let layer = gzip(&tar_of(&[E::File("hello", b"hello\n")]));
    let diff_id = Digest::sha256(&tar_of(&[E::File("hello", b"hello\n")]));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    )
    .into_bytes();
    let (cd, ld) = (Digest::sha256(&config), Digest::sha256(&layer));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    let md = Digest::sha256(&manifest);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
        manifest.len()
    );
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    tar_of(&[
        E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        E::File("index.json", index.as_bytes()),
        E::Dir("blobs/"),
        E::Dir("blobs/sha256/"),
        E::File(&blob(&cd), &config),
        E::File(&blob(&ld), &layer),
        E::File(&blob(&md), &manifest),
    ])
}

type DockerParts = ((String, Vec<u8>), (Digest, Vec<u8>), Vec<u8>);

/// The fixed members of [`docker_archive`]: the config `(name, bytes)`, the layer
/// `(digest, bytes)` and the tar of both (without its end marker).
fn docker_parts() -> &'static DockerParts {
    static PARTS: OnceLock<DockerParts> = OnceLock::new();
    PARTS.get_or_init(|| {
        let layer = tar_of(&[E::Dir("bin/"), E::File("bin/sh", b"not really a shell")]);
        let ld = Digest::sha256(&layer);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
        )
        .into_bytes();
        let config_name = format!("{}.json", Digest::sha256(&config).hex());
        let mut members = tar_of(&[
            E::File(&config_name, &config),
            E::File("layer.tar", &layer),
            E::Dir("blobs/"),
            E::Dir("blobs/sha256/"),
            E::File(&format!("blobs/sha256/{}", ld.hex()), &layer),
        ]);
        // Drop the end marker: manifest.json and the marker follow.
        members.truncate(members.len() - 1024);
        ((config_name, config), (ld, layer), members)
    })
}

/// A valid `manifest.json` for [`docker_archive`].
pub fn docker_manifest_json() -> Vec<u8> {
    let ((config, _), _, _) = docker_parts();
    format!(r#"[{{"Config":"{config}","RepoTags":["busybox:latest"],"Layers":["layer.tar"]}}]"#)
        .into_bytes()
}

/// A docker-archive: a config, a layer (as `layer.tar` and as `blobs/sha256/…`) and
/// `manifest` as `manifest.json`.
pub fn docker_archive(manifest: &[u8]) -> Vec<u8> {
    let (_, _, members) = docker_parts();
    let mut out = members.clone();
    let mut h = header(tar::EntryType::Regular, manifest.len() as u64, 0o644);
    h.set_path("manifest.json").expect("name");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(manifest);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Manifests, indexes and configs, each behind its media-type selector byte (see
/// `oci_json`).
fn oci_documents() -> Vec<(&'static str, Vec<u8>)> {
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":10,"annotations":{{"a":"b"}}}}],"annotations":{{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"}}}}"#
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":100,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
    );
    let docker = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{d}","size":10,"urls":["https://example.com/x"]}}]}}"#
    );
    let config = format!(
        r#"{{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{{"User":"1000:1000","Env":["A=b"],"Entrypoint":["/bin/sh"],"ExposedPorts":{{"80/tcp":{{}}}},"Labels":{{"k":"v"}}}},"rootfs":{{"type":"layers","diff_ids":["{d}"]}},"history":[{{"created_by":"x","empty_layer":true}}]}}"#
    );
    let with = |sel: u8, doc: &str| {
        let mut v = vec![sel];
        v.extend_from_slice(doc.as_bytes());
        v
    };
    vec![
        ("manifest", with(1, &manifest)),
        ("manifest-undeclared", with(0, &manifest)),
        ("index", with(2, &index)),
        ("docker-manifest", with(3, &docker)),
        ("config", with(0, &config)),
    ]
}
