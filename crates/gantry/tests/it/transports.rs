//! Every command that takes an image, with every transport: `oci:` (including a layout
//! directory literally named `oci`, as `oci:oci:t` and as the bare `oci`), `oci-archive:`,
//! `docker-archive:` and `docker://` on the real docker-registry. Results are checked with a
//! peer where one exists (skopeo, umoci, podman load), not only with gantry's own readers.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use gantry_test::registry::{Registry, RegistryOptions};
use gantry_test::{CmdExt, TestEnv, assert_mentions, json, require, tool};

/// A busybox image (from `steps::project`), built into `gantry-out/base`, copied by gantry into
/// every transport, with what its peers must see.
struct Fixture {
    t: TestEnv,
    reg: Registry,
    /// The manifest digest of the built image.
    digest: String,
    /// Its config digest.
    config: String,
    /// Every path of the image, as umoci unpacks it.
    paths: BTreeSet<String>,
}

/// One way to name the image.
struct Source {
    /// The argument, as a user types it (relative to the test's root).
    arg: String,
    /// Whether the manifest is the built one byte for byte (a docker-archive has no manifest;
    /// gantry makes one, with the same config and layers).
    same_manifest: bool,
}

impl Fixture {
    fn new() -> Self {
        let reg = Registry::start(RegistryOptions::plain());
        let t = crate::env();
        crate::steps::project(&t, "");
        let built = json(&t.run(&["build", "--json", "base"]));
        let digest = built["images"][0]["digest"].as_str().unwrap().to_owned();
        let inspect = json(&t.run(&["inspect", "--json", "gantry-out/base"]));
        let config = inspect["manifest"]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let paths = umoci_paths(&t, "gantry-out/base:latest", "peer-original");
        let f = Fixture {
            t,
            reg,
            digest,
            config,
            paths,
        };
        // The same image in every transport, written by gantry; the registry copy is checked
        // by skopeo here, the others by the tests that read them.
        for dest in [
            "oci:oci:t".to_owned(),
            "oci-archive:img.tar:t".to_owned(),
            "docker-archive:img-docker.tar:example.com/lib/img:t".to_owned(),
            f.docker("lib/img:t"),
        ] {
            f.g(&["copy", "oci:gantry-out/base:latest", &dest]);
        }
        assert_eq!(f.skopeo_digest(&f.docker("lib/img:t")), f.digest);
        f
    }

    /// gantry, allowed to reach the test registry over plain HTTP.
    fn g(&self, args: &[&str]) -> String {
        let host = self.reg.host();
        let mut a = vec!["--insecure-registry", host.as_str()];
        a.extend(args);
        self.t.run(&a)
    }

    fn docker(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.reg.host())
    }

    fn sources(&self) -> Vec<Source> {
        let same = |arg: String| Source {
            arg,
            same_manifest: true,
        };
        vec![
            same("oci:oci:t".to_owned()),
            same("oci".to_owned()),
            same("oci-archive:img.tar:t".to_owned()),
            Source {
                arg: "docker-archive:img-docker.tar".to_owned(),
                same_manifest: false,
            },
            same(self.docker("lib/img:t")),
        ]
    }

    /// The manifest digest skopeo reads at a transport reference.
    fn skopeo_digest(&self, reference: &str) -> String {
        let o = tool("skopeo")
            .args(["inspect", "--tls-verify=false", reference])
            .current_dir(self.t.root())
            .ok();
        json(&o.stdout)["Digest"].as_str().unwrap().to_owned()
    }

    /// The config digest skopeo reads at a transport reference.
    fn skopeo_config(&self, reference: &str) -> String {
        let o = tool("skopeo")
            .args([
                "inspect",
                "--tls-verify=false",
                "--raw",
                "--config",
                reference,
            ])
            .current_dir(self.t.root())
            .ok();
        gantry_oci::Digest::sha256(o.stdout.as_bytes()).to_string()
    }

    /// Checks what a copy, export or pull wrote at `dest` with skopeo (and, for a layout, umoci):
    /// the manifest digest `digest` (where the format keeps manifests), the built config.
    fn check_written(&self, dest: &str, digest: &str, label: &str) {
        assert_eq!(self.skopeo_config(dest), self.config, "{label}: config");
        if !dest.starts_with("docker-archive:") {
            assert_eq!(self.skopeo_digest(dest), digest, "{label}: manifest");
        }
        if let Some(layout) = dest.strip_prefix("oci:") {
            let bundle = format!("peer-{}", label.replace(['/', ':', ' '], "-"));
            assert_eq!(umoci_paths(&self.t, layout, &bundle), self.paths, "{label}");
        }
    }

    /// The manifest digest gantry reads at `arg`.
    fn digest_of(&self, arg: &str) -> String {
        let i = json(&self.g(&["inspect", "--json", arg]));
        i["digest"].as_str().unwrap().to_owned()
    }
}

/// Every path (with its type) of the rootfs umoci unpacks from `image` into `bundle`.
fn umoci_paths(t: &TestEnv, image: &str, bundle: &str) -> BTreeSet<String> {
    tool("umoci")
        .args(["unpack", "--image", image, bundle])
        .current_dir(t.root())
        .ok();
    tree_paths(&t.path(bundle).join("rootfs"))
}

/// Every path under `root`, with a `/` after directories.
fn tree_paths(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                todo.push(e.path());
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

#[test]
fn inspect_ls_run_and_unpack_read_every_transport() {
    let f = Fixture::new();
    let runc = require("runc");
    for (n, s) in f.sources().iter().enumerate() {
        let arg = s.arg.as_str();
        // inspect: the manifest and config, as skopeo reads them.
        let i = json(&f.g(&["inspect", "--json", arg]));
        assert_eq!(
            i["manifest"]["config"]["digest"],
            f.config.as_str(),
            "{arg}"
        );
        if s.same_manifest {
            assert_eq!(i["digest"], f.digest.as_str(), "{arg}");
        }
        let peer_form = if arg == "oci" { "oci:oci" } else { arg };
        if s.same_manifest {
            assert_eq!(f.skopeo_digest(peer_form), f.digest, "skopeo {arg}");
        }
        assert_eq!(f.skopeo_config(peer_form), f.config, "skopeo {arg}");
        // ls: the merged files.
        let listing = f.g(&["ls", arg]);
        for p in ["/bin/busybox", "/etc/motd", "/etc/passwd"] {
            assert!(listing.contains(p), "{arg}: {p} in\n{listing}");
        }
        // run: the image's files, under runc.
        let out =
            f.t.gantry()
                .arg("--insecure-registry")
                .arg(f.reg.host())
                .arg("--runtime")
                .arg(&runc)
                .args(["run", arg, "--", "cat", "/etc/motd"])
                .ok();
        assert_eq!(out.stdout, "hello\n", "{arg}");
        // unpack: the same tree umoci unpacks from the original.
        let dest = format!("unpacked-{n}");
        f.g(&["unpack", arg, &dest]);
        assert_eq!(tree_paths(&f.t.path(&dest)), f.paths, "{arg}");
        assert_eq!(
            fs::read_to_string(f.t.path(&dest).join("etc/motd")).unwrap(),
            "hello\n"
        );
    }
}

#[test]
fn copy_export_and_push_write_every_transport() {
    let f = Fixture::new();
    for (n, s) in f.sources().iter().enumerate() {
        let arg = s.arg.as_str();
        let digest = f.digest_of(arg);
        fs::create_dir_all(f.t.path(format!("c{n}"))).unwrap();
        // copy to each transport; a layout directory named `oci` among them.
        let dests = [
            format!("oci:c{n}/oci:t"),
            format!("oci-archive:c{n}/img.tar:t"),
            format!("docker-archive:c{n}/img-docker.tar:example.com/c{n}:t"),
            f.docker(&format!("copies/c{n}:t")),
        ];
        for dest in &dests {
            f.g(&["copy", arg, dest]);
            f.check_written(dest, &digest, &format!("copy {arg} {dest}"));
        }
        // gantry reads back what it wrote, with the same digest.
        assert_eq!(f.digest_of(&format!("oci:c{n}/oci:t")), digest, "{arg}");
        // export (here in the busybox project, whose targets have other names).
        for (format, out, dest) in [
            ("oci", format!("e{n}/oci"), format!("oci:e{n}/oci:latest")),
            (
                "oci-archive",
                format!("e{n}/img.tar"),
                format!("oci-archive:e{n}/img.tar:latest"),
            ),
            (
                "docker-archive",
                format!("e{n}/img-docker.tar"),
                format!("docker-archive:e{n}/img-docker.tar"),
            ),
        ] {
            fs::create_dir_all(f.t.path(format!("e{n}"))).unwrap();
            f.g(&["export", arg, "--format", format, "-o", &out]);
            f.check_written(&dest, &digest, &format!("export {arg} {format}"));
        }
        // push: the registry holds the same manifest.
        let pushed = f.g(&["push", arg, &format!("{}/pushed/p{n}:t", f.reg.host())]);
        assert!(pushed.contains(&digest), "{arg}: {pushed}");
        assert_eq!(
            f.skopeo_digest(&f.docker(&format!("pushed/p{n}:t"))),
            digest
        );
    }
    // podman loads a docker-archive gantry wrote, under the name it was given.
    let root = f.t.path("podman-root");
    let runroot = f.t.path("podman-run");
    let podman = |args: &[&str]| {
        tool("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .current_dir(f.t.root())
            .ok()
    };
    podman(&["load", "-i", "c0/img-docker.tar"]);
    let inspect = json(&podman(&["image", "inspect", "example.com/c0:t"]).stdout);
    assert_eq!(inspect[0]["Id"], f.config.trim_start_matches("sha256:"));
}

#[test]
fn pull_writes_every_transport() {
    let f = Fixture::new();
    let source = f.docker("lib/img:t");
    for dest in [
        "oci:pulled/oci:t",
        "oci-archive:pulled/img.tar:t",
        "docker-archive:pulled/img-docker.tar:example.com/pulled:t",
    ] {
        fs::create_dir_all(f.t.path("pulled")).unwrap();
        f.g(&["pull", &source, "-o", dest]);
        f.check_written(dest, &f.digest, &format!("pull {dest}"));
    }
    // Without -o: a layout named after the repository.
    f.g(&["pull", &source]);
    assert_eq!(f.digest_of("oci:img:t"), f.digest);
}

#[test]
fn image_base_and_project_base_accept_every_transport() {
    let f = Fixture::new();
    f.t.run(&[
        "layer",
        "--content",
        "/extra.txt=extra\n",
        "--info",
        "extra.json",
    ]);
    let mut want = f.paths.clone();
    want.insert("extra.txt".to_owned());
    for (n, s) in f.sources().iter().enumerate() {
        let arg = s.arg.as_str();
        // gantry image --base: a registry base stays there (the output is shallow), so a
        // complete copy is what umoci reads.
        let out = format!("img-{n}");
        f.g(&["image", "--base", arg, "--layer", "extra.json", "-o", &out]);
        let complete = format!("img-{n}-complete");
        f.g(&["copy", &format!("oci:{out}"), &format!("oci:{complete}")]);
        let paths = umoci_paths(&f.t, &complete, &format!("peer-img-{n}"));
        assert_eq!(paths, want, "--base {arg}");
        // base = in a project: a registry base is pinned by digest.
        let base = match arg.strip_prefix("docker://") {
            Some(r) => format!("docker://{}@{}", r.rsplit_once(':').unwrap().0, f.digest),
            None if arg == "oci" => "oci:../oci".to_owned(),
            None => {
                let (transport, rest) = arg.split_once(':').unwrap();
                format!("{transport}:../{rest}")
            }
        };
        f.t.write(
            format!("p{n}/gantry.toml"),
            format!(
                "[settings]\ninsecure-registries = [\"{}\"]\n\n[layer.extra]\ncontent = {{ \"/extra.txt\" = \"extra\\n\" }}\n\n[image.on]\nbase = \"{base}\"\nlayers = [\"extra\"]\n",
                f.reg.host()
            ),
        );
        f.t.gantry()
            .current_dir(f.t.path(format!("p{n}")))
            .args(["build"])
            .ok();
        let paths = umoci_paths(&f.t, &format!("p{n}/gantry-out/on"), &format!("peer-p{n}"));
        assert_eq!(paths, want, "base = {base}");
        let i = json(&f.t.run(&["inspect", "--json", &format!("p{n}/gantry-out/on")]));
        assert_eq!(
            i["manifest"]["annotations"]["org.opencontainers.image.base.digest"],
            f.digest_of(arg).as_str(),
            "base = {base}"
        );
    }
    // A registry base named by a tag is refused when the project loads: it could move.
    f.t.write(
        "tagged/gantry.toml",
        format!("[image.on]\nbase = \"{}\"\n", f.docker("lib/img:t")),
    );
    let o =
        f.t.gantry()
            .current_dir(f.t.path("tagged"))
            .args(["build"])
            .fails();
    assert_mentions(
        &o.stderr,
        &["gantry.toml:2:1", "names a tag", "[pull.NAME]"],
    );
}

/// `inspect` and `ls` took only layouts: `inspect oci-archive:x.tar`, `ls oci-archive:x.tar`
/// and `inspect docker://…` failed with "invalid base … layout tag".
#[test]
fn regression_inspect_and_ls_refused_archives_and_registries() {
    let f = Fixture::new();
    for arg in [
        "oci-archive:img.tar".to_owned(),
        "docker-archive:img-docker.tar:example.com/lib/img:t".to_owned(),
        f.docker("lib/img:t"),
    ] {
        let i = json(&f.g(&["inspect", "--json", &arg]));
        assert_eq!(
            i["manifest"]["config"]["digest"],
            f.config.as_str(),
            "{arg}"
        );
        assert_eq!(
            i["source"].as_str().unwrap().split(':').next(),
            arg.split(':').next()
        );
        let listing = f.g(&["ls", "--layers", &arg]);
        assert!(listing.contains("/etc/motd"), "{arg}: {listing}");
    }
    // The text form names where the image is.
    let text = f.g(&["inspect", &f.docker("lib/img:t")]);
    assert_mentions(&text, &["Image", "docker://", &f.digest]);
}

/// `unpack oci:oci:t` and `copy oci:oci:t …` stripped the `oci:` prefix twice and looked for a
/// directory `t`.
#[test]
fn regression_the_oci_prefix_was_stripped_twice() {
    let f = Fixture::new();
    // The fixture's `copy … oci:oci:t` wrote the directory `oci`.
    assert!(f.t.path("oci/index.json").is_file() && !f.t.path("t").exists());
    f.g(&["unpack", "oci:oci:t", "rootfs"]);
    assert_eq!(tree_paths(&f.t.path("rootfs")), f.paths);
    f.g(&["copy", "oci:oci:t", "oci:again:t"]);
    assert_eq!(f.skopeo_digest("oci:again:t"), f.digest);
    // And `oci:t` is the directory `t`, not `oci` with tag `t`.
    let e = f.t.fail(&["unpack", "oci:t", "rootfs2"]);
    assert_mentions(
        &e,
        &[&f.t.path("t").display().to_string(), "not a directory"],
    );
}

/// `push` and `export` read the project file quietly and, when it did not load, said "no
/// gantry.toml here" (a typo in a key) or "app: not a directory" (a layer and an image both
/// named `app`), where `build` reports the error with its line and column.
#[test]
fn regression_push_and_export_hid_project_errors() {
    let t = crate::env();
    t.write("src/a.txt", "a\n");
    let typo = "[layer.app-files]\nfiles = { \"/a.txt\" = \"src/a.txt\" }\n\n[image.app]\nlayers = [\"app-files\"]\ntagz = [\"example.com/app:1\"]\n";
    let twice =
        "[layer.app]\nfiles = { \"/a.txt\" = \"src/a.txt\" }\n\n[image.app]\nlayers = [\"app\"]\n";
    for (project, needle) in [(typo, "tagz"), (twice, "app")] {
        t.write("gantry.toml", project);
        let build = t.fail(&["build"]);
        let at = location(&build);
        assert_mentions(&build, &[needle]);
        for args in [
            &["push"][..],
            &["push", "app", "example.com/app:2"],
            &["export", "app", "-o", "out"],
        ] {
            let e = t.fail(args);
            assert_mentions(&e, &[&at, needle]);
            for hidden in ["no gantry.toml here", "not a directory"] {
                assert!(!e.contains(hidden), "{args:?}: {e}");
            }
        }
    }
    // A reference that names its transport is not about the project: a broken project file
    // does not stop it.
    t.run(&["layer", "--content", "/b=b\n", "--info", "b.json"]);
    t.run(&["image", "--layer", "b.json", "-o", "lay"]);
    t.run(&[
        "export",
        "oci:lay",
        "--format",
        "oci-archive",
        "-o",
        "lay.tar",
    ]);
    assert!(t.path("lay.tar").is_file());
    assert!(!t.path("out").exists());
}

/// `gantry.toml:LINE:COL` of the first error in `err`.
fn location(err: &str) -> String {
    let rest = err
        .split("gantry.toml:")
        .nth(1)
        .unwrap_or_else(|| panic!("no location in {err}"));
    let mut parts = rest.split(':');
    let (line, col) = (parts.next().unwrap(), parts.next().unwrap());
    assert!(
        line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok(),
        "{err}"
    );
    format!("gantry.toml:{line}:{col}")
}

/// `gantry run nosuch` in a project said "not a directory; name the transport".
#[test]
fn regression_run_of_an_unknown_name_blamed_the_transport() {
    let t = crate::env();
    crate::steps::project(&t, "");
    let e = t.fail(&["run", "nosuch"]);
    assert_mentions(
        &e,
        &["no target named nosuch", "targets: base", "docker://"],
    );
    assert!(!e.contains("not a directory"), "{e}");
    // Other kinds of targets are named as such.
    let e = t.fail(&["run", "seed"]);
    assert_mentions(&e, &["layer.seed is not an image"]);
    // Outside a project, a bare word is a layout directory or an error naming the transports.
    let other = crate::env();
    let e = other.fail(&["run", "nosuch"]);
    assert_mentions(&e, &["nosuch", "not a directory", "oci-archive:"]);
}
