//! Layers say exactly what their inputs say: times before 1970 and after 2038, and names
//! that are not one line of UTF-8. Checked with the real peers: GNU tar, umoci unpack.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine as _;
use gantry_test::{CmdExt, TestEnv, json, tool};

fn umoci_unpack(t: &TestEnv, image: &str, bundle: &str) {
    tool("umoci")
        .args(["unpack", "--image", image, bundle])
        .current_dir(t.root())
        .ok();
}

/// One crafted tar member: name bytes, PAX records, content.
type Member<'a> = (&'a [u8], Vec<(&'a str, &'a [u8])>, &'a [u8]);

/// A tar built by hand with the `tar` crate.
fn craft_tar(entries: &[Member<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, pax, data) in entries {
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in pax {
                let body = k.len() + v.len() + 3;
                let mut len = body + body.to_string().len();
                if len.to_string().len() > body.to_string().len() {
                    len += 1;
                }
                data.extend_from_slice(format!("{len} {k}=").as_bytes());
                data.extend_from_slice(v);
                data.push(b'\n');
            }
            let mut h = tar::Header::new_ustar();
            h.set_path("PaxHeaders/x").unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// GNU tar's view of a tar file, with full UTC times.
fn gnu_listing(t: &TestEnv, tar: &str) -> String {
    tool("tar")
        .args(["--full-time", "-tvf", tar])
        .env("TZ", "UTC")
        .current_dir(t.root())
        .ok()
        .stdout
}

const TIMES: &[(&str, i64, &str)] = &[
    ("/t/minus-one", -1, "1969-12-31 23:59:59"),
    ("/t/y1950", -631_152_000, "1950-01-01 00:00:00"),
    ("/t/y2038", 2_147_483_648, "2038-01-19 03:14:08"),
    ("/t/y2300", 10_413_792_000, "2300-01-01 00:00:00"),
];

/// Checks the mtimes of [`TIMES`] under `root`; `past_2262`: also the one after 2262 (Go
/// tools such as umoci set times through nanoseconds in an `int64`, which ends in 2262).
fn check_times(root: &Path, who: &str, past_2262: bool) {
    for (path, secs, _) in TIMES {
        if !past_2262 && *secs > i64::MAX / 1_000_000_000 {
            continue;
        }
        let md = fs::symlink_metadata(root.join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(md.mtime(), *secs, "{who}: {path}");
    }
}

#[test]
fn times_before_1970_and_after_2038_round_trip() {
    let t = crate::env();
    let mut args: Vec<String> = vec!["layer".into()];
    for (path, secs, _) in TIMES {
        args.extend([
            "--content".into(),
            format!("{path}=x"),
            "--metadata".into(),
            format!(r#"{path}={{"mtime":{secs}}}"#),
        ]);
    }
    args.extend(
        [
            "--compression",
            "none",
            "-o",
            "times.tar",
            "--info",
            "times.json",
        ]
        .map(String::from),
    );
    t.gantry().args(&args).ok();
    let listing = gnu_listing(&t, "times.tar");
    for (path, _, shown) in TIMES {
        let line = listing
            .lines()
            .find(|l| l.ends_with(path.trim_start_matches('/')))
            .unwrap_or_else(|| panic!("{path} in {listing}"));
        assert!(line.contains(shown), "GNU tar: {line}, want {shown}");
    }
    fs::create_dir(t.path("tarx")).unwrap();
    tool("tar")
        .args(["-xf", "times.tar", "-C", "tarx"])
        .current_dir(t.root())
        .ok();
    check_times(&t.path("tarx"), "GNU tar", true);
    t.run(&["image", "--layer", "times.json", "-o", "img", "-t", "t"]);
    t.run(&["unpack", "oci:img:t", "unpacked"]);
    check_times(&t.path("unpacked"), "gantry unpack", true);
    umoci_unpack(&t, "img:t", "bundle");
    check_times(&t.path("bundle/rootfs"), "umoci unpack", false);
    let ls = t.run(&["ls", "--json", "img:t"]);
    for (path, secs, _) in TIMES {
        let row = ls.lines().map(json).find(|r| r["path"] == *path).unwrap();
        assert_eq!(row["mtime"], *secs, "gantry ls {path}");
    }
}

#[test]
fn regression_gnu_base256_times_before_1970_unpacked_as_the_year_2446() {
    let t = crate::env();
    t.write("src/old", "old\n");
    // GNU tar writes times before 1970 in base-256 in its own format.
    tool("touch")
        .args(["-d", "@-631152000", "src/old"])
        .current_dir(t.root())
        .ok();
    tool("tar")
        .args(["--format=gnu", "-cf", "gnu.tar", "-C", "src", "old"])
        .current_dir(t.root())
        .ok();
    let raw = fs::read(t.path("gnu.tar")).unwrap();
    assert_eq!(raw[136] & 0x80, 0x80, "GNU tar used base-256 for the mtime");
    assert!(gnu_listing(&t, "gnu.tar").contains("1950-01-01 00:00:00"));
    t.run(&["layer", "--tar", "gnu.tar", "--info", "gnu.json"]);
    t.run(&["image", "--layer", "gnu.json", "-o", "img", "-t", "t"]);
    t.run(&["unpack", "oci:img:t", "unpacked"]);
    assert_eq!(
        fs::metadata(t.path("unpacked/old")).unwrap().mtime(),
        -631_152_000
    );
    umoci_unpack(&t, "img:t", "bundle");
    assert_eq!(
        fs::metadata(t.path("bundle/rootfs/old")).unwrap().mtime(),
        -631_152_000
    );
    let ls = t.run(&["ls", "--json", "gnu.json"]);
    assert_eq!(json(ls.lines().next().unwrap())["mtime"], -631_152_000);
}

/// 35 names a listing must keep apart: control characters, escapes, bytes that are not
/// UTF-8 (which all look like U+FFFD as text), and a name that fakes a second line.
fn crafted_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = vec![
        b"fake\n-rw-r--r--  root root  1 sha256:000000000000 passwd".to_vec(),
        b"tab\there".to_vec(),
        b"back\\slash".to_vec(),
        b"back\\134slash".to_vec(),
        b"cr\rname".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        "line\u{2028}sep".as_bytes().to_vec(),
    ];
    for c in [1u8, 7, 8, 11, 12, 27, 127] {
        names.push(vec![b'c', c]);
    }
    for b in 0x80u8..0x95 {
        names.push(vec![b'u', b]);
    }
    assert_eq!(names.len(), 35);
    names
}

#[test]
fn regression_ls_printed_crafted_names_raw_and_merged_them() {
    let t = crate::env();
    let names = crafted_names();
    let entries: Vec<Member<'_>> = names
        .iter()
        .map(|n| (n.as_slice(), vec![], &b"x"[..]))
        .collect();
    t.write("names.tar", craft_tar(&entries));
    // GNU tar: one line per entry.
    assert_eq!(gnu_listing(&t, "names.tar").lines().count(), 35);

    let text = t.run(&["ls", "names.tar"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 35, "{text}");
    let shown: BTreeSet<&str> = lines
        .iter()
        .map(|l| l.rsplit_once(" /").unwrap().1)
        .collect();
    assert_eq!(shown.len(), 35, "{text}");
    assert!(shown.contains("fake\\n-rw-r--r--  root root  1 sha256:000000000000 passwd"));
    for want in [
        "tab\\there",
        "back\\\\slash",
        "back\\\\134slash",
        "cr\\rname",
        "u\\200",
        "u\\224",
        "c\\001",
        "c\\177",
        "café",
        "line\\342\\200\\250sep",
    ] {
        assert!(shown.contains(want), "{want} in {shown:?}");
    }

    let exact = |ls: &str| -> BTreeSet<Vec<u8>> {
        ls.lines()
            .map(json)
            .map(|r| match r.get("pathBase64") {
                Some(b) => base64::engine::general_purpose::STANDARD
                    .decode(b.as_str().unwrap())
                    .unwrap(),
                None => r["path"].as_str().unwrap().as_bytes().to_vec(),
            })
            .collect()
    };
    let want: BTreeSet<Vec<u8>> = names
        .iter()
        .map(|n| [b"/".as_slice(), n].concat())
        .collect();
    let json_ls = t.run(&["ls", "--json", "names.tar"]);
    assert_eq!(json_ls.lines().count(), 35);
    assert_eq!(exact(&json_ls), want);

    // A second layer whites out one name that is not UTF-8: exactly that one goes.
    t.write("wh.tar", craft_tar(&[(b".wh.u\x85", vec![], b"")]));
    t.run(&["layer", "--tar", "names.tar", "--info", "names.json"]);
    t.run(&["layer", "--tar", "wh.tar", "--info", "wh.json"]);
    t.run(&[
        "image",
        "--layer",
        "names.json",
        "--layer",
        "wh.json",
        "-o",
        "img",
        "-t",
        "t",
    ]);
    let merged = exact(&t.run(&["ls", "--json", "img:t"]));
    let mut expected = want.clone();
    assert!(expected.remove(b"/u\x85".as_slice()));
    assert_eq!(merged, expected);
    // umoci agrees.
    umoci_unpack(&t, "img:t", "bundle");
    let on_disk: BTreeSet<Vec<u8>> = fs::read_dir(t.path("bundle/rootfs"))
        .unwrap()
        .map(|e| [b"/".as_slice(), e.unwrap().file_name().as_bytes()].concat())
        .collect();
    assert_eq!(on_disk, expected);
}
