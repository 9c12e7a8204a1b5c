//! Registry authentication through the CLI: `gantry login`/`logout`, basic auth over TLS with a
//! CA the test made, credential helpers, and canary passwords that must never be printed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use gantry_test::registry::{Registry, RegistryOptions};
use gantry_test::{CmdExt, Output, TestEnv, assert_mentions, json};

/// A password no output may contain.
const CANARY: &str = "pw-canary-cli-6b1d93";

/// Builds a one-layer image `gantry-out/app` whose tag points at `host/team/app:v1`.
fn project(t: &TestEnv, host: &str) {
    t.write("src/app.txt", "app\n");
    t.write(
        "gantry.toml",
        format!(
            "[layer.files]\nfiles = {{ \"/app.txt\" = \"src/app.txt\" }}\n\n[image.app]\nplatform = \"linux/amd64\"\nlayers = [\"files\"]\ntags = [\"{host}/team/app:v1\"]\n"
        ),
    );
}

/// `gantry --registry-ca HOST=CA <args>` with `stdin` as standard input.
fn with_ca(
    t: &TestEnv,
    reg: &Registry,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Command {
    let ca = reg.ca_cert().expect("a TLS registry");
    let mut c = t.gantry();
    c.arg("--registry-ca")
        .arg(format!("{}={}", reg.host(), ca.display()));
    c.args(args);
    if let Some(s) = stdin {
        let f = t.write(format!("stdin-{}", rand_name()), s);
        c.stdin(fs::File::open(f).unwrap());
    }
    c
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn assert_no_secret(o: &Output, secret: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"));
    for (name, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        assert!(!text.contains(secret), "the password is in {name}:\n{text}");
        assert!(
            !text.contains(&basic),
            "the Basic credentials are in {name}:\n{text}"
        );
    }
}

#[test]
fn login_push_pull_over_tls_with_basic_auth() {
    let reg = Registry::start(
        RegistryOptions::plain()
            .with_basic_auth("alice", CANARY)
            .with_tls(),
    );
    let host = reg.host();
    let t = crate::env();
    project(&t, &host);
    let built = json(&t.run(&["build", "--json"]))["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without credentials: a clear 401 naming the registry.
    let o = with_ca(&t, &reg, &["push"], None).fails();
    assert_mentions(&o.stderr, &[&host, "unauthorized", "gantry login"]);

    // Without the CA, the certificate is not trusted (and nothing falls back to HTTP).
    let o = t
        .gantry()
        .args(["login", "-u", "alice", "--password-stdin", &host])
        .stdin(fs::File::open(t.write("pw", CANARY)).unwrap())
        .fails();
    assert_mentions(&o.stderr, &[&host, "certificate"]);
    assert_no_secret(&o, CANARY);

    // A wrong password: 401, and nothing is stored.
    let o = with_ca(
        &t,
        &reg,
        &["login", "-u", "alice", "--password-stdin", &host],
        Some("wrong-pw\n"),
    )
    .fails();
    assert_mentions(&o.stderr, &[&host, "401", "alice"]);
    assert!(!o.stderr.contains("wrong-pw"), "{}", o.stderr);
    let auth_file = t.user_home().join(".docker/config.json");
    assert!(
        !auth_file.exists(),
        "a refused login wrote {}",
        auth_file.display()
    );

    // The right one is checked, then stored (mode 0600) where docker and skopeo look.
    let o = with_ca(
        &t,
        &reg,
        &["login", "-u", "alice", "--password-stdin", &host],
        Some(&format!("{CANARY}\n")),
    )
    .ok();
    assert_no_secret(&o, CANARY);
    assert_mentions(&o.stderr, &["logged in", &host]);
    let mode = fs::metadata(&auth_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored = json(&fs::read_to_string(&auth_file).unwrap());
    assert!(stored["auths"][&host]["auth"].is_string(), "{stored:#}");

    // Push at the most verbose level: it works, and the password is nowhere in the output.
    let o = with_ca(&t, &reg, &["-vvv", "push"], None).ok();
    assert_eq!(o.stdout.trim(), format!("{host}/team/app@{built}"));
    assert!(
        o.stderr.contains("TRACE"),
        "-vvv logs at trace level:\n{}",
        o.stderr
    );
    assert_no_secret(&o, CANARY);
    // RUST_LOG=trace turns on every crate's logs, the HTTP stack's included.
    let o = with_ca(
        &t,
        &reg,
        &[
            "pull",
            &format!("{host}/team/app:v1"),
            "-o",
            "oci:pulled:v1",
        ],
        None,
    )
    .env("RUST_LOG", "trace")
    .env("GANTRY_HOME", t.path("other-home"))
    .ok();
    assert!(o.stderr.contains("TRACE"), "{}", o.stderr);
    assert_no_secret(&o, CANARY);
    let pulled = json(&t.run(&["inspect", "--json", "pulled:v1"]));
    assert_eq!(pulled["digest"], built.as_str());

    // Logout removes them; the next push is refused again.
    let o = with_ca(&t, &reg, &["logout", &host], None).ok();
    assert_mentions(&o.stderr, &["removed", &host]);
    let stored = json(&fs::read_to_string(&auth_file).unwrap());
    assert!(stored["auths"].get(&host).is_none(), "{stored:#}");
    let o = with_ca(&t, &reg, &["push"], None).fails();
    assert_mentions(&o.stderr, &[&host, "unauthorized", "gantry login"]);
}

#[test]
fn the_authfile_flag_and_registry_auth_file_choose_the_file() {
    let reg = Registry::start(
        RegistryOptions::plain()
            .with_basic_auth("alice", CANARY)
            .with_tls(),
    );
    let host = reg.host();
    let t = crate::env();
    project(&t, &host);
    t.run(&["build"]);
    let file = t.path("auth/custom.json");
    with_ca(
        &t,
        &reg,
        &[
            "--authfile",
            file.to_str().unwrap(),
            "login",
            "-u",
            "alice",
            "--password-stdin",
            &host,
        ],
        Some(CANARY),
    )
    .ok();
    assert!(file.exists());
    assert!(!t.user_home().join(".docker/config.json").exists());
    with_ca(&t, &reg, &["push"], None).fails();
    with_ca(&t, &reg, &["push"], None)
        .env("REGISTRY_AUTH_FILE", &file)
        .ok();
}

fn write_script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    fs::create_dir_all(dir).unwrap();
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_credential_helper_on_path_is_used() {
    let reg = Registry::start(
        RegistryOptions::plain()
            .with_basic_auth("alice", CANARY)
            .with_tls(),
    );
    let host = reg.host();
    let t = crate::env();
    project(&t, &host);
    t.run(&["build"]);
    let bin = t.path("bin");
    write_script(
        &bin,
        "docker-credential-gantrytest",
        &format!(
            "[ \"$1\" = get ] || exit 3\nread -r server\necho \"$server\" >> \"$(dirname \"$0\")/asked\"\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{CANARY}\"}}' \"$server\""
        ),
    );
    write_script(
        &bin,
        "docker-credential-gantrybroken",
        "echo 'the keychain is locked' >&2; exit 1",
    );
    let docker_config = t.path("docker");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let config = |helper: &str| {
        t.write(
            "docker/config.json",
            serde_json::to_vec(&serde_json::json!({"credHelpers": {host.clone(): helper}}))
                .unwrap(),
        );
    };
    config("gantrytest");
    let o = with_ca(&t, &reg, &["-vvv", "push"], None)
        .env("DOCKER_CONFIG", &docker_config)
        .env("PATH", &path)
        .ok();
    assert_no_secret(&o, CANARY);
    assert!(
        fs::read_to_string(bin.join("asked"))
            .unwrap()
            .contains(&host)
    );
    // A helper that fails is named, with what it said.
    config("gantrybroken");
    let o = with_ca(&t, &reg, &["push"], None)
        .env("DOCKER_CONFIG", &docker_config)
        .env("PATH", &path)
        .fails();
    assert_mentions(
        &o.stderr,
        &["docker-credential-gantrybroken", "the keychain is locked"],
    );
    // So is one that is not installed.
    config("gantrymissing");
    let o = with_ca(&t, &reg, &["push"], None)
        .env("DOCKER_CONFIG", &docker_config)
        .env("PATH", &path)
        .fails();
    assert_mentions(&o.stderr, &["docker-credential-gantrymissing"]);
}
