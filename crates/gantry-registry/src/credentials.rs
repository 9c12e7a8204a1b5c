//! Where credentials come from: auth files, credential helpers, `login` and `logout`.
//!
//! [`AuthFiles`] reads the files skopeo and podman read, then docker's, and the first file that
//! knows the registry answers (`credHelpers` for that host, then its `auths` entry, then the
//! file's default `credsStore`). A credential helper that is missing, fails, hangs or prints
//! garbage is a hard error naming the helper (CVE-2021-41092): we never fall back to
//! anonymous access or to another registry's credentials. The one non-error answer of a helper
//! is docker's own "credentials not found in native keychain", which means "none".

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::{Credentials, Error, Result, Secret};

/// A source of credentials for registries.
pub trait CredentialSource: Send + Sync {
    /// The credentials for `registry` (`host[:port]`, `docker.io` for Docker Hub), or `None`
    /// for anonymous access. An error stops the operation that needed credentials.
    fn credentials(&self, registry: &str) -> Result<Option<Credentials>>;
}

/// No credentials for any registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCredentials;

impl CredentialSource for NoCredentials {
    fn credentials(&self, _registry: &str) -> Result<Option<Credentials>> {
        Ok(None)
    }
}

/// Fixed credentials per registry (used by `login` to check a password before storing it).
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials {
    map: BTreeMap<String, Credentials>,
}

impl StaticCredentials {
    /// Credentials for one registry.
    pub fn new(registry: &str, credentials: Credentials) -> Self {
        StaticCredentials::default().with(registry, credentials)
    }

    /// Adds credentials for another registry.
    pub fn with(mut self, registry: &str, credentials: Credentials) -> Self {
        self.map.insert(normalize_registry(registry), credentials);
        self
    }
}

impl CredentialSource for StaticCredentials {
    fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        Ok(self.map.get(&normalize_registry(registry)).cloned())
    }
}

/// How long a credential helper may run.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Cap on an auth file and on a helper's output.
const MAX_AUTH_FILE: u64 = 16 << 20;
const MAX_HELPER_OUTPUT: u64 = 1 << 20;
/// The helper answer docker treats as "no credentials" rather than an error.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";
/// The key and server URL docker uses for Docker Hub.
const DOCKER_HUB_LEGACY_KEY: &str = "https://index.docker.io/v1/";

/// Credentials from auth files and the credential helpers they name.
#[derive(Debug, Clone)]
pub struct AuthFiles {
    files: Vec<PathBuf>,
    helper_timeout: Duration,
}

impl AuthFiles {
    /// [`AuthFiles::explicit`] for `Some(path)`, else [`AuthFiles::discover`].
    pub fn new(explicit: Option<std::path::PathBuf>) -> Self {
        match explicit {
            Some(p) => Self::explicit(p),
            None => Self::discover(),
        }
    }

    /// The files skopeo reads, in its order: `$REGISTRY_AUTH_FILE` (or, when unset,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`), `~/.config/containers/auth.json`, then docker's
    /// `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`). Missing files are skipped.
    pub fn discover() -> Self {
        Self::discover_with(|k| std::env::var_os(k))
    }

    /// Like [`AuthFiles::discover`], with the environment given as a function.
    pub fn discover_with(env: impl Fn(&str) -> Option<OsString>) -> Self {
        let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut files = Vec::new();
        if let Some(f) = var("REGISTRY_AUTH_FILE") {
            files.push(f);
        } else if let Some(x) = var("XDG_RUNTIME_DIR") {
            files.push(x.join("containers/auth.json"));
        }
        let home = var("HOME");
        if let Some(h) = &home {
            files.push(h.join(".config/containers/auth.json"));
        }
        if let Some(d) = var("DOCKER_CONFIG") {
            files.push(d.join("config.json"));
        } else if let Some(h) = &home {
            files.push(h.join(".docker/config.json"));
        }
        AuthFiles {
            files,
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
        }
    }

    /// Exactly one file (an explicit `--authfile`), which replaces the search.
    pub fn explicit(path: impl Into<PathBuf>) -> Self {
        AuthFiles {
            files: vec![path.into()],
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
        }
    }

    /// [`AuthFiles::explicit`] when the configuration names an auth file, else
    /// [`AuthFiles::discover`].
    pub fn from_config(config: &crate::RegistryConfig) -> Self {
        Self::new(config.auth_file.clone())
    }

    /// Sets how long a credential helper may run.
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The files searched, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl CredentialSource for AuthFiles {
    fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        let want = normalize_registry(registry);
        for path in &self.files {
            let Some(doc) = read_auth_file(path)? else {
                continue;
            };
            if let Some(helper) = lookup(&doc.cred_helpers, &want) {
                return run_helper(helper, &want, self.helper_timeout);
            }
            if let Some(entry) = lookup(&doc.auths, &want)
                && let Some(creds) = entry.credentials(path, &want)?
            {
                return Ok(Some(creds));
            }
            if let Some(store) = doc.creds_store.as_deref().filter(|s| !s.is_empty()) {
                return run_helper(store, &want, self.helper_timeout);
            }
        }
        Ok(None)
    }
}

/// The registry part of an auth-file key or registry name: scheme and path dropped, Docker
/// Hub's aliases mapped to `docker.io`. Keys with a path but no scheme are podman's
/// per-namespace entries (`quay.io/org`); they are kept whole and so never match a registry.
pub(crate) fn normalize_registry(key: &str) -> String {
    let (had_scheme, rest) = match key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
    {
        Some(r) => (true, r),
        None => (false, key),
    };
    let host = if had_scheme {
        rest.split('/').next().unwrap_or(rest)
    } else {
        rest
    };
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

/// An exact key match first, then any key that normalises to the registry.
fn lookup<'a, V>(map: &'a BTreeMap<String, V>, want: &str) -> Option<&'a V> {
    map.get(want).or_else(|| {
        map.iter()
            .find(|(k, _)| normalize_registry(k) == want)
            .map(|(_, v)| v)
    })
}

#[derive(Deserialize, Default)]
struct AuthFileDoc {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    fn credentials(&self, path: &Path, registry: &str) -> Result<Option<Credentials>> {
        if let Some(tok) = self.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(Secret::new(tok))));
        }
        let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let bad = |reason: &str| Error::AuthFile {
            path: path.to_owned(),
            reason: format!("the entry for {registry}: {reason}"),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
            .map_err(|_| bad("\"auth\" is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| bad("\"auth\" is not of the form user:password"))?;
        Ok(Some(Credentials::basic(user, pass)))
    }
}

fn read_auth_file(path: &Path) -> Result<Option<AuthFileDoc>> {
    let err = |reason: String| Error::AuthFile {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_AUTH_FILE {
        return Err(err(format!("larger than {MAX_AUTH_FILE} bytes")));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(AuthFileDoc::default()));
    }
    // serde_json's messages quote no input, only positions, so no secret can leak here.
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| err(format!("not a valid auth file: {e}")))
}

/// The server URL a helper is asked about (docker's key for Docker Hub).
fn helper_server_url(registry: &str) -> &str {
    if registry == "docker.io" {
        DOCKER_HUB_LEGACY_KEY
    } else {
        registry
    }
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
fn run_helper(helper: &str, registry: &str, timeout: Duration) -> Result<Option<Credentials>> {
    let fail = |reason: String| Error::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        reason,
    };
    if helper.is_empty()
        || !helper
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(fail("invalid helper name".to_owned()));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                fail(format!("{program} is not installed (not found on PATH)"))
            } else {
                fail(format!("cannot run {program}: {e}"))
            }
        })?;
    let capture = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_HELPER_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = capture(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = capture(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin gives EPIPE here; its status tells more.
        let _ = stdin.write_all(helper_server_url(registry).as_bytes());
    }
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("timed out after {} s", timeout.as_secs_f32())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let said = String::from_utf8_lossy(&stdout);
        if said.trim() == HELPER_NOT_FOUND {
            return Ok(None);
        }
        // Only stderr is quoted: a helper's stdout is where secrets go.
        let msg = String::from_utf8_lossy(&stderr);
        let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let first: String = first.chars().take(200).collect();
        return Err(fail(format!(
            "exited with {status}{}",
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        )));
    }
    // Never quote the output: it may hold the secret.
    let parsed: HelperOutput = serde_json::from_slice(&stdout).map_err(|_| {
        fail("printed something that is not a JSON {\"Username\", \"Secret\"} object".to_owned())
    })?;
    if parsed.secret.is_empty() {
        return Err(fail("returned an empty secret".to_owned()));
    }
    Ok(Some(if parsed.username == "<token>" {
        Credentials::IdentityToken(Secret::new(parsed.secret))
    } else {
        Credentials::basic(parsed.username, parsed.secret)
    }))
}

/// The auth file `login` writes by default: `$REGISTRY_AUTH_FILE`, else
/// `$XDG_RUNTIME_DIR/containers/auth.json` when `XDG_RUNTIME_DIR` is set, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_auth_file() -> PathBuf {
    default_auth_file_with(|k| std::env::var_os(k))
}

fn default_auth_file_with(env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(f) = var("REGISTRY_AUTH_FILE") {
        f
    } else if let Some(x) = var("XDG_RUNTIME_DIR") {
        x.join("containers/auth.json")
    } else if let Some(d) = var("DOCKER_CONFIG") {
        d.join("config.json")
    } else {
        var("HOME")
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".docker/config.json")
    }
}

/// The `auths` key `login` writes for `registry` in `file`: docker's legacy URL for Docker Hub
/// in a docker `config.json` (so that docker finds it), the registry name otherwise.
fn login_key(file: &Path, registry: &str) -> String {
    if registry == "docker.io" && file.file_name().is_some_and(|n| n == "config.json") {
        DOCKER_HUB_LEGACY_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// Stores `username` and `password` for `registry` in `auth_file` (`auths.<registry>.auth`, base64
/// `user:password`), keeping every other key of the file. The file is created with mode 0600
/// (its directory 0700) and replaced atomically. Other keys for the same registry (Docker
/// Hub's aliases) are removed.
pub fn login(auth_file: &Path, registry: &str, username: &str, password: Secret) -> Result<()> {
    let err = |reason: String| Error::AuthFile {
        path: auth_file.to_owned(),
        reason,
    };
    if username.contains(':') || username.is_empty() {
        return Err(err(format!(
            "username {username:?} must be non-empty and contain no ':'"
        )));
    }
    let want = normalize_registry(registry);
    let mut doc = read_json_object(auth_file)?;
    let auths = doc
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    let auths = auths
        .as_object_mut()
        .ok_or_else(|| err("\"auths\" is not an object".to_owned()))?;
    auths.retain(|k, _| normalize_registry(k) != want);
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{username}:{}", password.expose()));
    let mut entry = serde_json::Map::new();
    entry.insert("auth".to_owned(), serde_json::Value::String(encoded));
    auths.insert(
        login_key(auth_file, &want),
        serde_json::Value::Object(entry),
    );
    write_json_atomic(auth_file, &doc)
}

/// Removes the credentials of `registry` from `auth_file`; `false` if it had none.
pub fn logout(auth_file: &Path, registry: &str) -> Result<bool> {
    if !auth_file.exists() {
        return Ok(false);
    }
    let want = normalize_registry(registry);
    let mut doc = read_json_object(auth_file)?;
    let removed = match doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
        Some(auths) => {
            let before = auths.len();
            auths.retain(|k, _| normalize_registry(k) != want);
            auths.len() != before
        }
        None => false,
    };
    if removed {
        write_json_atomic(auth_file, &doc)?;
    }
    Ok(removed)
}

fn read_json_object(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let err = |reason: String| Error::AuthFile {
        path: path.to_owned(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(serde_json::Map::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(err("not a JSON object".to_owned())),
        Err(e) => Err(err(format!("not valid JSON: {e}"))),
    }
}

fn write_json_atomic(path: &Path, doc: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |reason: String| Error::AuthFile {
        path: path.to_owned(),
        reason,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| err(e.to_string()))?;
    bytes.push(b'\n');
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "auth.json".to_owned());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(format!("cannot write: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: BTreeMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn discovery_order() {
        let a = AuthFiles::discover_with(env_of(&[
            ("REGISTRY_AUTH_FILE", "/r/auth.json"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("HOME", "/home/u"),
        ]));
        assert_eq!(
            a.files(),
            [
                PathBuf::from("/r/auth.json"),
                PathBuf::from("/home/u/.config/containers/auth.json"),
                PathBuf::from("/home/u/.docker/config.json"),
            ]
        );
        let b = AuthFiles::discover_with(env_of(&[
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("HOME", "/home/u"),
            ("DOCKER_CONFIG", "/d"),
        ]));
        assert_eq!(
            b.files(),
            [
                PathBuf::from("/run/user/1/containers/auth.json"),
                PathBuf::from("/home/u/.config/containers/auth.json"),
                PathBuf::from("/d/config.json"),
            ]
        );
        assert_eq!(
            default_auth_file_with(env_of(&[("HOME", "/h")])),
            PathBuf::from("/h/.docker/config.json")
        );
        assert_eq!(
            default_auth_file_with(env_of(&[("HOME", "/h"), ("XDG_RUNTIME_DIR", "/x")])),
            PathBuf::from("/x/containers/auth.json")
        );
        assert_eq!(
            default_auth_file_with(env_of(&[
                ("REGISTRY_AUTH_FILE", "/a"),
                ("XDG_RUNTIME_DIR", "/x")
            ])),
            PathBuf::from("/a")
        );
    }

    #[test]
    fn normalizes_keys() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry("index.docker.io"), "docker.io");
        assert_eq!(
            normalize_registry("http://reg.example:5000"),
            "reg.example:5000"
        );
        assert_eq!(normalize_registry("quay.io/org"), "quay.io/org");
        assert_eq!(normalize_registry("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn reads_auths_identity_tokens_and_aliases() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"aHViOmh1YnB3"},
                "reg.example:5000":{"auth":"dXNlcjpwYTpzcw=="},
                "tok.example":{"auth":"","identitytoken":"idtok"},
                "quay.io/org":{"auth":"cTpx"},
                "empty.example":{}
            },"other":{"keep":true}}"#,
        )
        .unwrap();
        let a = AuthFiles::explicit(&f);
        assert_eq!(
            a.credentials("docker.io").unwrap(),
            Some(Credentials::basic("hub", "hubpw"))
        );
        assert_eq!(
            a.credentials("reg.example:5000").unwrap(),
            Some(Credentials::basic("user", "pa:ss"))
        );
        assert_eq!(
            a.credentials("tok.example").unwrap(),
            Some(Credentials::IdentityToken(Secret::new("idtok")))
        );
        assert_eq!(a.credentials("quay.io").unwrap(), None);
        assert_eq!(a.credentials("empty.example").unwrap(), None);
        assert_eq!(a.credentials("unknown.example").unwrap(), None);
        // A missing file is no error; a broken one is, naming it.
        assert_eq!(
            AuthFiles::explicit(tmp.path().join("nope.json"))
                .credentials("x")
                .unwrap(),
            None
        );
        std::fs::write(&f, "{not json").unwrap();
        let e = a.credentials("x").unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(&f, r#"{"auths":{"x":{"auth":"!!!"}}}"#).unwrap();
        let e = a.credentials("x").unwrap_err().to_string();
        assert!(e.contains("base64") && !e.contains("!!!"), "{e}");
    }

    #[test]
    fn first_file_that_knows_the_registry_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let one = tmp.path().join("one.json");
        let two = tmp.path().join("two.json");
        std::fs::write(&one, r#"{"auths":{"a.example":{"auth":"YTox"}}}"#).unwrap();
        std::fs::write(
            &two,
            r#"{"auths":{"a.example":{"auth":"YToy"},"b.example":{"auth":"Yjoz"}}}"#,
        )
        .unwrap();
        let files = AuthFiles {
            files: vec![one, two],
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
        };
        assert_eq!(
            files.credentials("a.example").unwrap(),
            Some(Credentials::basic("a", "1"))
        );
        assert_eq!(
            files.credentials("b.example").unwrap(),
            Some(Credentials::basic("b", "3"))
        );
    }

    #[test]
    fn login_and_logout_keep_other_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("sub/dir/auth.json");
        login(&f, "reg.example:5000", "alice", Secret::new("s3cret")).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(f.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let a = AuthFiles::explicit(&f);
        assert_eq!(
            a.credentials("reg.example:5000").unwrap(),
            Some(Credentials::basic("alice", "s3cret"))
        );
        // Other keys survive a login.
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        v["credHelpers"] = serde_json::json!({"helped.example": "x"});
        v["auths"]["other.example"] = serde_json::json!({"auth": "bzpw"});
        std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
        login(&f, "reg.example:5000", "bob", Secret::new("pw2")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["credHelpers"]["helped.example"], "x");
        assert_eq!(v["auths"]["other.example"]["auth"], "bzpw");
        assert_eq!(
            a.credentials("reg.example:5000").unwrap(),
            Some(Credentials::basic("bob", "pw2"))
        );
        assert!(logout(&f, "reg.example:5000").unwrap());
        assert!(!logout(&f, "reg.example:5000").unwrap());
        assert_eq!(a.credentials("reg.example:5000").unwrap(), None);
        assert!(!logout(&tmp.path().join("missing.json"), "x").unwrap());
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(f.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(login(&f, "r", "a:b", Secret::new("x")).is_err());
    }

    #[test]
    fn docker_hub_login_uses_dockers_key_in_config_json() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths":{"index.docker.io":{"auth":"b2xkOm9sZA=="}}}"#,
        )
        .unwrap();
        login(&f, "docker.io", "new", Secret::new("pw")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let auths = v["auths"].as_object().unwrap();
        assert_eq!(auths.len(), 1, "{auths:?}");
        assert!(auths.contains_key(DOCKER_HUB_LEGACY_KEY));
        let p = tmp.path().join("auth.json");
        login(&p, "index.docker.io", "new", Secret::new("pw")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert!(v["auths"].as_object().unwrap().contains_key("docker.io"));
    }

    #[test]
    fn helper_failures_are_hard_errors() {
        let e = run_helper(
            "gantry-test-surely-missing",
            "r.example",
            DEFAULT_HELPER_TIMEOUT,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("docker-credential-gantry-test-surely-missing"),
            "{e}"
        );
        assert!(e.contains("not installed"), "{e}");
        let e = run_helper("../evil", "r.example", DEFAULT_HELPER_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("invalid helper name"));
    }
}
