use std::path::Path;

use super::*;

fn load(dir: &Path, text: &str) -> Result<Project, Error> {
    Project::from_text(&dir.join("gantry.toml"), text)
}

fn errors(dir: &Path, text: &str) -> Vec<String> {
    match load(dir, text) {
        Ok(_) => panic!("expected errors"),
        Err(Error::Invalid(d)) => d
            .iter()
            .map(|d| {
                let s = d.to_string();
                // Drop the directory: tests compare "gantry.toml:L:C: ...".
                s[s.find("gantry.toml").unwrap()..].to_owned()
            })
            .collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn dir_with_files() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("server"), "bin").unwrap();
    std::fs::create_dir_all(d.path().join("web")).unwrap();
    d
}

const GOOD: &str = r#"
[settings]
compression = "zstd"
source-date-epoch = 1700000000
auto-labels = true

[layer.app]
files = { "/app/server" = "server" }
dirs = { "/app/static" = "web" }

[layer.conf]
content = { "/etc/app.conf" = "x=1\n" }
compression = "gzip"

[image.base]
layers = ["conf"]
platform = "linux/arm64"

[image.server]
base = "base"
layers = ["app"]
entrypoint = ["/app/server"]
labels = { "org.opencontainers.image.source" = "https://example.com" }
ports = ["8080"]
tags = ["registry.example.com/team/server:1.4"]
auto-labels = { ref-name = "none", revision = "abc123" }
"#;

#[test]
fn a_good_project_loads_with_defaults_and_a_dependency_order() {
    let d = dir_with_files();
    let p = load(d.path(), GOOD).unwrap();
    assert_eq!(p.layers["app"].spec.compression.as_deref(), Some("zstd"));
    assert_eq!(p.layers["conf"].spec.compression.as_deref(), Some("gzip"));
    assert_eq!(
        p.settings.source_date_epoch,
        Some(Epoch::Seconds(1_700_000_000))
    );
    let server = &p.images["server"];
    assert_eq!(server.base, BaseRef::Image("base".into()));
    assert_eq!(server.output, d.path().join("gantry-out/server"));
    assert_eq!(server.layout_tag, "latest");
    assert_eq!(
        server.tags[0].to_string(),
        "registry.example.com/team/server:1.4"
    );
    assert_eq!(
        server.auto_labels,
        AutoLabels {
            revision: LabelValue::Fixed("abc123".into()),
            ref_name: LabelValue::Off,
            created: LabelValue::Derive,
        }
    );
    assert_eq!(p.images["base"].auto_labels, AutoLabels::derive_all());
    let order: Vec<String> = p
        .plan(&[])
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        order,
        ["layer.conf", "image.base", "layer.app", "image.server"]
    );
    let only: Vec<String> = p
        .plan(&["app".into()])
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(only, ["layer.app"]);
    let e = p.plan(&["nope".into()]).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("server"), "{e}");
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let d = dir_with_files();
    let e = errors(d.path(), "[image.a]\nlayers = [\"x\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("gantry.toml:2:"), "{e:?}");
}

#[test]
fn unknown_keys_and_wrong_types_name_the_line() {
    let d = dir_with_files();
    let e = errors(d.path(), "[image.a]\nlayers = []\nentrypiont = [\"x\"]\n");
    assert!(
        e[0].starts_with("gantry.toml:3:1:") && e[0].contains("entrypiont"),
        "{e:?}"
    );
    let e = errors(
        d.path(),
        "[layer.a]\ncontent = { \"/x\" = \"1\" }\nparents = \"yes\"\n",
    );
    assert!(
        e[0].starts_with("gantry.toml:3:") && e[0].contains("bool"),
        "{e:?}"
    );
    let e = errors(d.path(), "[settings]\nauto-labels = { revison = \"x\" }\n");
    assert!(
        e[0].starts_with("gantry.toml:2:") && e[0].contains("revison"),
        "{e:?}"
    );
}

#[test]
fn semantic_errors_name_line_column_and_key_all_at_once() {
    let d = dir_with_files();
    let text = r#"[layer.app]
files = { "/app/server" = "server", "/app/missing" = "nope" }
metadata."/app/server" = { mode = "0999" }

[image.one]
base = "two"
layers = ["app", "ghost"]
labels = { "bad key" = "x" }
ports = ["70000"]

[image.two]
base = "one"

[image.app]
base = "oci:does-not-exist:v1"
"#;
    let e = errors(d.path(), text);
    let want = [
        "gantry.toml:2:37: layer.app.files.\"/app/missing\": cannot read",
        "gantry.toml:3:10: layer.app.metadata.\"/app/server\": invalid mode \"0999\"",
        "gantry.toml:6:1: image.one.base: targets depend on each other in a cycle: one -> two -> one",
        "gantry.toml:7:18: image.one.layers[1]: no layer or step named \"ghost\"",
        "gantry.toml:8:12: image.one.labels.\"bad key\": invalid label key",
        "gantry.toml:9:10: image.one.ports[0]: invalid port \"70000\"",
        "gantry.toml:14:8: image.app: the name \"app\" is also a layer",
        "gantry.toml:15:1: image.app.base: ",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for (got, want) in e.iter().zip(want) {
        assert!(got.starts_with(want), "got {got:?}\nwant prefix {want:?}");
    }
}

#[test]
fn names_and_bases_are_checked() {
    let d = dir_with_files();
    let e = errors(d.path(), "[image.\"bad name\"]\n");
    assert!(e[0].contains("target names"), "{e:?}");
    let e = errors(
        d.path(),
        "[layer.l]\ncontent = {\"/x\" = \"1\"}\n[image.i]\nbase = \"l\"\n",
    );
    assert!(e[0].contains("makes a layer, not an image"), "{e:?}");
    let e = errors(d.path(), "[image.i]\nbase = \"elsewhere\"\n");
    assert!(e[0].contains("unknown base"), "{e:?}");
    let e = errors(d.path(), "[image.i]\nbase = \"i\"\n");
    assert!(e[0].contains("cycle: i -> i"), "{e:?}");
}

const PULLS: &str = r#"
[pull.python]
repository = "docker.io/library/python"
tag = "3.12-slim"
platform = "linux/amd64"

[pull.debian]
repository = "debian"
variants = { bookworm = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", trixie = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" }

[pull.fixed]
repository = "ghcr.io/o/r"
digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
anonymous = true

[image.a]
base = "python"

[image.b]
base = "debian#trixie"

[image.c]
base = "fixed"
"#;

#[test]
fn pull_targets_resolve_through_the_lock_and_variants() {
    let d = dir_with_files();
    let p = load(d.path(), PULLS).unwrap();
    assert_eq!(
        p.pulls["debian"].repository.to_string(),
        "docker.io/library/debian"
    );
    assert_eq!(p.images["b"].base, BaseRef::Pull("debian#trixie".into()));
    let order: Vec<String> = p
        .plan(&["a".into(), "b".into()])
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        order,
        ["pull.python", "image.a", "pull.debian#trixie", "image.b"]
    );
    assert_eq!(
        p.pin("python").unwrap().1,
        Pin::Unpinned("3.12-slim".into())
    );
    assert!(matches!(p.pin("debian#trixie").unwrap().1, Pin::Digest(_)));
    assert!(p.pin("debian").is_none());
    assert!(p.pin("debian#sid").is_none());
    assert!(p.pulls["fixed"].anonymous);
    // A lock for the same repository and tag pins it; for another tag it does not.
    let pinned = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    std::fs::write(
        d.path().join(LOCK_FILE),
        format!("version = 1\n[pull.python]\nrepository = \"docker.io/library/python\"\ntag = \"3.12-slim\"\ndigest = \"{pinned}\"\n"),
    )
    .unwrap();
    let p = Project::load(&d.path().join("gantry.toml"));
    assert!(p.is_err(), "no gantry.toml on disk yet");
    std::fs::write(d.path().join("gantry.toml"), PULLS).unwrap();
    let p = Project::load(&d.path().join("gantry.toml")).unwrap();
    assert_eq!(
        p.pin("python").unwrap().1,
        Pin::Digest(Digest::parse(pinned).unwrap())
    );
    std::fs::write(
        d.path().join("gantry.toml"),
        PULLS.replace("3.12-slim", "3.13"),
    )
    .unwrap();
    let p = Project::load(&d.path().join("gantry.toml")).unwrap();
    assert_eq!(p.pin("python").unwrap().1, Pin::Unpinned("3.13".into()));
}

#[test]
fn bad_pull_targets_are_reported() {
    let d = dir_with_files();
    let e = errors(d.path(), "[pull.p]\nrepository = \"debian:12\"\n");
    assert!(
        e[0].contains("pull.p.repository") && e[0].contains("put a tag in `tag`"),
        "{e:?}"
    );
    let e = errors(d.path(), "[pull.p]\nrepository = \"debian\"\n");
    assert!(
        e[0].contains("needs a `tag`, a `digest` or `variants`"),
        "{e:?}"
    );
    let e = errors(
        d.path(),
        "[pull.p]\nrepository = \"debian\"\ndigest = \"sha256:nope\"\n",
    );
    assert!(e[0].contains("pull.p.digest"), "{e:?}");
    let e = errors(
        d.path(),
        "[pull.p]\nrepository = \"debian\"\ntag = \"x\"\nvariants = { a = \"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\" }\n",
    );
    assert!(e[0].contains("variants"), "{e:?}");
    let text = PULLS.replace("base = \"debian#trixie\"", "base = \"debian\"");
    let e = errors(d.path(), &text);
    assert!(
        e[0].contains("choose one: debian#bookworm, debian#trixie"),
        "{e:?}"
    );
    let text = PULLS.replace("base = \"debian#trixie\"", "base = \"debian#sid\"");
    let e = errors(d.path(), &text);
    assert!(e[0].contains("no variant \"sid\""), "{e:?}");
}

const STEPS: &str = r#"
[layer.tools]
files = { "/bin/tool" = "server" }

[image.builder]
layers = ["tools"]

[step.compile]
base = "builder"
layers = ["tools"]
script = "make > /out/app"
env = { CC = "cc" }
workdir = "/src"
inputs = { "/src" = "web" }
outputs = ["/out/app"]
exclude = ["*.o"]

[step.setup]
base = "builder"
layers = ["compile"]
run = ["/bin/tool", "--install"]
capture = "diff"
network = true

[image.app]
base = "builder"
layers = ["compile", "setup"]
"#;

#[test]
fn steps_are_targets_that_make_layers() {
    let d = dir_with_files();
    let p = load(d.path(), STEPS).unwrap();
    let compile = &p.steps["compile"];
    assert_eq!(compile.base, BaseRef::Image("builder".to_owned()));
    assert_eq!(compile.command.argv(), ["/bin/sh", "-c", "make > /out/app"]);
    assert_eq!(compile.inputs["/src"], d.path().join("web"));
    assert!(!compile.network);
    assert_eq!(
        compile.capture,
        Capture::Outputs {
            paths: vec!["/out/app".to_owned()],
            exclude: vec!["*.o".to_owned()]
        }
    );
    let setup = &p.steps["setup"];
    assert_eq!(setup.capture, Capture::Diff);
    assert!(setup.network);
    assert_eq!(
        setup.command,
        StepCommand::Run(vec!["/bin/tool".to_owned(), "--install".to_owned()])
    );
    let order = p.plan(&["app".to_owned()]).unwrap();
    let pos = |t: TargetRef| order.iter().position(|o| *o == t).unwrap();
    assert!(pos(TargetRef::Image("builder".into())) < pos(TargetRef::Step("compile".into())));
    assert!(pos(TargetRef::Step("compile".into())) < pos(TargetRef::Step("setup".into())));
    assert!(pos(TargetRef::Step("setup".into())) < pos(TargetRef::Image("app".into())));
    assert_eq!(
        p.target("compile").unwrap(),
        TargetRef::Step("compile".into())
    );
}

#[test]
fn bad_steps_name_line_and_key() {
    let d = dir_with_files();
    let text = r#"[step.a]
run = []
outputs = ["relative"]

[step.b]
script = "x"
run = ["y"]
capture = "diff"
outputs = ["/o"]

[step.c]
inputs = { "/src" = "missing-dir" }
capture = "everything"
workdir = "w"
layers = ["ghost"]

[step.d]
base = "c"
script = "true"
"#;
    let e = errors(d.path(), text);
    let want = [
        "gantry.toml:2:1: step.a.run: `run` needs at least a program",
        "gantry.toml:3:12: step.a.outputs[0]: \"relative\": paths in the image are absolute",
        "gantry.toml:6:1: step.b.script: give `run` or `script`, not both",
        "gantry.toml:9:1: step.b.outputs: `outputs` and `capture = \"diff\"` exclude each other",
        "gantry.toml:11:7: step.c: a step needs `run` (argv) or `script` (shell text)",
        "gantry.toml:12:12: step.c.inputs.\"/src\":",
        "gantry.toml:13:1: step.c.capture: expected \"outputs\" or \"diff\"",
        "gantry.toml:14:1: step.c.workdir: the working directory must be absolute",
        "gantry.toml:15:11: step.c.layers[0]: no layer or step named \"ghost\"",
        "gantry.toml:18:1: step.d.base: \"c\" makes a layer, not an image",
    ];
    for w in want {
        assert!(
            e.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {e:#?}"
        );
    }

    // A step whose layers include a step built on an image that uses the first step.
    let text = r#"[step.s]
base = "i"
script = "true"
capture = "diff"

[image.i]
layers = ["s"]
"#;
    let e = errors(d.path(), text);
    assert!(
        e.iter().any(
            |g| g.contains("cycle: ") && g.contains("i -> s -> i") || g.contains("s -> i -> s")
        ),
        "{e:#?}"
    );
}

#[test]
fn registry_timeout_is_positive_seconds() {
    let d = dir_with_files();
    let p = load(d.path(), "[settings]\nregistry-timeout = 300\n").unwrap();
    assert_eq!(p.settings.registry_timeout, Some(300));
    let p = load(d.path(), "[settings]\n").unwrap();
    assert_eq!(p.settings.registry_timeout, None);
    for bad in ["0", "-5", "86401"] {
        let e = errors(d.path(), &format!("[settings]\nregistry-timeout = {bad}\n"));
        assert!(
            e[0].starts_with("gantry.toml:2:1: settings.registry-timeout: expected seconds"),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn remote_cache_settings_are_repositories() {
    let d = dir_with_files();
    let p = load(
        d.path(),
        "[settings]\ncache-to = \"registry.example.com/team/cache\"\ncache-from = \"localhost:5000/c\"\n",
    )
    .unwrap();
    assert_eq!(
        p.settings
            .cache_to
            .as_ref()
            .map(|r| r.repository().to_owned()),
        Some("team/cache".to_owned())
    );
    assert_eq!(
        p.settings
            .cache_from
            .as_ref()
            .map(|r| r.registry().to_owned()),
        Some("localhost:5000".to_owned())
    );
    let e = errors(
        d.path(),
        "[settings]\ncache-to = \"registry.example.com/c:tag\"\n",
    );
    assert!(
        e[0].starts_with("gantry.toml:2:1: settings.cache-to: give a repository"),
        "{e:?}"
    );
}

#[test]
fn layers_carry_parents_only_where_they_stand_alone() {
    let d = dir_with_files();
    let p = load(
        d.path(),
        r#"
[layer.first]
content = { "/a/x" = "1" }
[layer.second]
content = { "/a/y" = "2" }
[layer.shared]
content = { "/a/z" = "3" }
[layer.unused]
content = { "/b/x" = "4" }
[layer.forced]
content = { "/c/x" = "5" }
parents = true
[layer.never]
content = { "/d/x" = "6" }
parents = false

[image.bottom]
layers = ["first", "second", "forced"]
[image.top]
base = "bottom"
layers = ["shared"]
[image.alone]
layers = ["shared", "never"]
"#,
    )
    .unwrap();
    let parents = |n: &str| p.layers[n].spec.parents;
    // First on scratch: stands alone. Above other layers or a base: leaves them out.
    assert_eq!(parents("first"), Some(true));
    assert_eq!(parents("second"), Some(false));
    // First on scratch in one image, on a base in another: left out.
    assert_eq!(parents("shared"), Some(false));
    // Built on its own only.
    assert_eq!(parents("unused"), Some(true));
    // What the user says wins.
    assert_eq!(parents("forced"), Some(true));
    assert_eq!(parents("never"), Some(false));
}

#[test]
fn size_caps_are_sizes() {
    let d = dir_with_files();
    let p = load(
        d.path(),
        "[settings]\nmax-layer-size = \"100GiB\"\nmax-image-size = \"1TB\"\n",
    )
    .unwrap();
    assert_eq!(p.settings.max_layer_size, Some(100 << 30));
    assert_eq!(p.settings.max_image_size, Some(1_000_000_000_000));
    let e = errors(
        d.path(),
        "[settings]\nmax-layer-size = \"lots\"\nmax-image-size = \"0\"\n",
    );
    assert!(
        e.iter()
            .any(|g| g.starts_with("gantry.toml:2:1: settings.max-layer-size: invalid size")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|g| g.starts_with("gantry.toml:3:1: settings.max-image-size: must be more")),
        "{e:?}"
    );
}
