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
        "gantry.toml:6:1: image.one.base: images are built on each other in a cycle: one -> two -> one",
        "gantry.toml:7:18: image.one.layers[1]: no layer named \"ghost\"",
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
    assert!(e[0].contains("is a layer, not an image"), "{e:?}");
    let e = errors(d.path(), "[image.i]\nbase = \"elsewhere\"\n");
    assert!(e[0].contains("unknown base"), "{e:?}");
    let e = errors(d.path(), "[image.i]\nbase = \"i\"\n");
    assert!(e[0].contains("cycle: i -> i"), "{e:?}");
}
