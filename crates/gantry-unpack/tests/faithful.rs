//! Layers unpack to what they say: times before 1970 and after 2038 in every encoding tar
//! tools write, file capabilities, and refusal of the host-only `trusted.*` attributes.

mod common;

use common::{Opt, Tb, header, opts, stat};
use gantry_unpack::Error;
use tar::EntryType;

/// A GNU header whose mtime field is `t` in base-256 (as GNU tar writes times before 1970
/// and after 2242): the marker bit, then a 95-bit two's-complement number.
fn gnu_base256_mtime(name: &[u8], t: i64) -> tar::Header {
    let mut h = header(true, name, EntryType::Regular, 1);
    let field = &mut h.as_old_mut().mtime;
    let sign = if t < 0 { 0xff } else { 0x00 };
    field[..4].fill(sign);
    field[4..].copy_from_slice(&t.to_be_bytes());
    field[0] |= 0x80;
    h
}

#[test]
fn regression_base256_times_before_1970_were_read_as_the_year_2446() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Tb::new();
    for (name, t) in [
        (&b"old"[..], -86_400 * 365 * 20),
        (b"minus-one", -1),
        (b"y2300", 10_413_792_000),
    ] {
        tb.raw(gnu_base256_mtime(name, t), b"x");
    }
    // PAX mtime records, as gantry and Go write them.
    tb.pax(&[("mtime".into(), b"-1234567890".to_vec())]);
    tb.raw(header(false, b"pax-old", EntryType::Regular, 1), b"x");
    tb.pax(&[("mtime".into(), b"10413792000".to_vec())]);
    tb.raw(header(false, b"pax-2300", EntryType::Regular, 1), b"x");
    gantry_unpack::unpack_layer(dir.path(), "times", &tb.finish()[..], &opts()).unwrap();
    for (name, want) in [
        ("old", -86_400 * 365 * 20),
        ("minus-one", -1),
        ("y2300", 10_413_792_000),
        ("pax-old", -1_234_567_890),
        ("pax-2300", 10_413_792_000),
    ] {
        assert_eq!(stat(&dir.path().join(name)).mtime.0, want, "{name}");
    }
}

#[test]
fn trusted_xattrs_are_refused_naming_the_layer_and_entry() {
    for name in [
        "trusted.overlay.opaque",
        "trusted.overlay.redirect",
        "trusted.md5",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut tb = Tb::new();
        tb.file("ok", "x").dir_with(
            "etc",
            &Opt {
                mode: 0o755,
                pax: vec![(format!("SCHILY.xattr.{name}"), b"y".to_vec())],
                ..Opt::default()
            },
        );
        let e = gantry_unpack::unpack_layer(dir.path(), "sha256:abc", &tb.finish()[..], &opts())
            .unwrap_err();
        assert!(matches!(e, Error::Entry { .. }), "{e}");
        let msg = e.to_string();
        for needle in ["sha256:abc", "etc", name] {
            assert!(msg.contains(needle), "{needle:?} in {msg}");
        }
    }
}

#[test]
fn file_capabilities_and_user_xattrs_are_restored_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    // VFS_CAP_REVISION_2 | effective, permitted CAP_NET_RAW (13) and CAP_CHOWN (0).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&((1u32 << 13) | 1).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    let mut tb = Tb::new();
    tb.file_with(
        "bin/ping",
        "ping",
        &Opt {
            mode: 0o755,
            pax: vec![
                ("SCHILY.xattr.security.capability".into(), cap.clone()),
                ("SCHILY.xattr.user.bin".into(), vec![0, 0xff, b'\n']),
            ],
            ..Opt::default()
        },
    );
    gantry_unpack::unpack_layer(dir.path(), "caps", &tb.finish()[..], &opts()).unwrap();
    let st = stat(&dir.path().join("bin/ping"));
    assert_eq!(st.xattrs.get("security.capability"), Some(&cap), "{st:?}");
    assert_eq!(st.xattrs.get("user.bin"), Some(&vec![0, 0xff, b'\n']));
    let getcap = std::process::Command::new("getcap")
        .arg(dir.path().join("bin/ping"))
        .output()
        .expect("getcap (libcap2-bin) is installed");
    let out = String::from_utf8_lossy(&getcap.stdout);
    assert!(out.contains("cap_chown,cap_net_raw=ep"), "{out}");
}
