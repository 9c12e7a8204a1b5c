//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.
//!
//! [`Registry::start`] writes a `config.yml` into a temp dir (filesystem storage there,
//! deletes enabled, a free port), optionally with htpasswd Basic auth and TLS from a CA made
//! with the `openssl` CLI, starts the binary with its output captured to a file
//! ([`Registry::log`]), waits until it answers, and kills it on drop.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use base64::Engine as _;

use crate::proxy::{get, parse_head, read_head, write_head};
use crate::{CmdExt, require};

const TOKEN_SERVICE: &str = "gantry-test-registry";
const TOKEN_ISSUER: &str = "gantry-test-issuer";

/// How to run the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Basic auth with this user and password (an htpasswd file made with `htpasswd -Bbn`).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for 127.0.0.1 and localhost from a fresh CA.
    pub tls: bool,
    /// Bearer-token auth, with tokens from a token server the fixture runs.
    pub token_auth: Option<TokenAuth>,
}

/// The accounts of the fixture's token server.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The user that gets every scope it asks for (with `password`, over Basic).
    pub user: String,
    /// Its password.
    pub password: String,
    /// An identity (refresh) token accepted through the OAuth2 `refresh_token` grant.
    pub identity_token: Option<String>,
}

impl RegistryOptions {
    /// Plain HTTP, no auth.
    pub fn plain() -> Self {
        Self::default()
    }

    /// With Basic auth.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// With Bearer-token auth: the token server grants `user` (by password or by
    /// `identity_token`) everything it asks for, and anonymous requests nothing.
    pub fn with_token_auth(
        mut self,
        user: &str,
        password: &str,
        identity_token: Option<&str>,
    ) -> Self {
        self.token_auth = Some(TokenAuth {
            user: user.to_owned(),
            password: password.to_owned(),
            identity_token: identity_token.map(str::to_owned),
        });
        self
    }

    /// With TLS.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    // Dropped after the child is killed (fields drop in order; Drop kills first).
    token: Option<TokenServer>,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
}

impl Registry {
    /// Starts a registry and waits until it accepts connections (panics after 20 s).
    pub fn start(opts: RegistryOptions) -> Registry {
        let bin = require("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("gantry-registry-")
            .tempdir()
            .expect("create a temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("data")).expect("mkdir data");
        let mut auth = String::new();
        if let Some((user, password)) = &opts.basic_auth {
            let out = Command::new(require("htpasswd"))
                .args(["-Bbn", user, password])
                .ok();
            fs::write(d.join("htpasswd"), out.stdout.trim_end().to_owned() + "\n")
                .expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
                d.join("htpasswd").display()
            );
        }
        let mut token = None;
        if let Some(t) = &opts.token_auth {
            let server = TokenServer::start(d, t.clone());
            auth = format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.host(),
                d.join("token.crt").display()
            );
            token = Some(server);
        }
        let mut tls = String::new();
        if opts.tls {
            make_certs(d);
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("server.crt").display(),
                d.join("server.key").display()
            );
        }
        // The port is free when we look; another process could take it before the registry
        // binds, so a start that fails with "address already in use" is retried.
        let log_path = d.join("registry.log");
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: gantry-test-secret\n{tls}\
                 {auth}",
                data = d.join("data").display(),
            );
            fs::write(d.join("config.yml"), &config).expect("write config.yml");
            let log = fs::File::create(&log_path).expect("create the log");
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(d.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup the log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            if wait_ready(&mut child, port, opts.tls) {
                return Registry {
                    child,
                    token,
                    dir,
                    port,
                    tls: opts.tls,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                log.contains("address already in use"),
                "docker-registry did not start:\n{log}"
            );
        }
        panic!("docker-registry found no free port in 5 tries");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host()
        )
    }

    /// The CA certificate (PEM) that signed the server certificate, when TLS is on.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.crt"))
    }

    /// The storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The requests the token server answered, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(|t| {
                t.requests
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default()
    }

    /// The registry's output so far (startup messages and access log).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the registry accepts connections (and, over plain HTTP, answers); `false` if it
/// exited. Panics after 20 s.
fn wait_ready(child: &mut Child, port: u16, tls: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            if tls {
                return true;
            }
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            let mut head = [0u8; 12];
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("docker-registry did not answer within 20 s");
}

/// A port that is free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A CA (`ca.crt`, `ca.key`) and a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.crt`, `server.key`), with P-256 keys.
pub fn make_certs(dir: &Path) {
    let openssl = || {
        let mut c = Command::new(require("openssl"));
        c.current_dir(dir);
        c
    };
    openssl()
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3",
            "-subj",
            "/CN=gantry test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .ok();
    openssl()
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .ok();
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl()
        .args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3",
            "-extfile",
            "server.ext",
        ])
        .ok();
}

/// One request to the token server.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `GET` (Basic or anonymous) or `POST` (OAuth2 refresh-token grant).
    pub method: String,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `scope` parameters.
    pub scopes: Vec<String>,
    /// Whether an `Authorization` header came with it.
    pub had_authorization: bool,
    /// The account authenticated, if any.
    pub account: Option<String>,
    /// The status returned.
    pub status: u16,
}

/// A token server for distribution's token auth: RS256 JWTs carrying the signing certificate
/// in `x5c`, signed with the `openssl` CLI.
struct TokenServer {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenServer {
    fn start(dir: &Path, auth: TokenAuth) -> TokenServer {
        Command::new(require("openssl"))
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "3",
                "-subj",
                "/CN=gantry test token signer",
            ])
            .ok();
        Command::new(require("openssl"))
            .current_dir(dir)
            .args([
                "x509",
                "-in",
                "token.crt",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ])
            .ok();
        let der = fs::read(dir.join("token.der")).expect("read token.der");
        let key = dir.join("token.key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (auth, der, key, log) =
                    (auth.clone(), der.clone(), key.clone(), Arc::clone(&log));
                std::thread::spawn(move || {
                    let _ = serve_token(conn, &auth, &der, &key, &log);
                });
            }
        });
        TokenServer { addr, requests }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn serve_token(
    mut conn: TcpStream,
    auth: &TokenAuth,
    der: &[u8],
    key: &Path,
    log: &Mutex<Vec<TokenRequest>>,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut conn)?;
    let (first, headers) = parse_head(&head);
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let len: usize = get(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut params = form_pairs(target.split_once('?').map_or("", |(_, q)| q));
    if method == "POST" {
        params.extend(form_pairs(&String::from_utf8_lossy(&body)));
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let authorization = get(&headers, "authorization").map(str::to_owned);
    // None: anonymous; Some(Ok(user)): authenticated; Some(Err(())): wrong credentials.
    let account: Option<Result<String, ()>> = if method == "POST" {
        let good = param("grant_type").as_deref() == Some("refresh_token")
            && auth.identity_token.is_some()
            && param("refresh_token") == auth.identity_token;
        Some(if good { Ok(auth.user.clone()) } else { Err(()) })
    } else {
        authorization.as_deref().map(|a| {
            let decoded = a
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if decoded == format!("{}:{}", auth.user, auth.password) {
                Ok(auth.user.clone())
            } else {
                Err(())
            }
        })
    };
    let respond = |conn: &mut TcpStream, status: u16, body: &str| -> std::io::Result<()> {
        let reason = if status == 200 { "OK" } else { "Unauthorized" };
        conn.write_all(&write_head(
            &format!("HTTP/1.1 {status} {reason}"),
            &[
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("Content-Length".to_owned(), body.len().to_string()),
                ("Connection".to_owned(), "close".to_owned()),
            ],
        ))?;
        conn.write_all(body.as_bytes())
    };
    let mut entry = TokenRequest {
        method: method.clone(),
        service: param("service"),
        scopes: scopes.clone(),
        had_authorization: authorization.is_some(),
        account: None,
        status: 401,
    };
    if let Some(Err(())) = account {
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(entry);
        return respond(
            &mut conn,
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}"#,
        );
    }
    let user = account.and_then(Result::ok);
    let access: Vec<serde_json::Value> = if user.is_some() {
        scopes
            .iter()
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (ty, rest) = (p.next()?, p.collect::<Vec<_>>());
                let (name, actions) = (rest.first()?, rest.get(1)?);
                Some(serde_json::json!({"type": ty, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect()
    } else {
        Vec::new()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(der)],
    });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": user.clone().unwrap_or_default(),
        "aud": param("service").unwrap_or_default(),
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new(require("openssl"))
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(signing_input.as_bytes())?;
    let out = child.wait_with_output()?;
    let jwt = format!("{signing_input}.{}", b64url(&out.stdout));
    let body = if method == "POST" {
        serde_json::json!({"access_token": jwt, "expires_in": 600}).to_string()
    } else {
        serde_json::json!({"token": jwt, "expires_in": 600}).to_string()
    };
    entry.account = user;
    entry.status = 200;
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(entry);
    respond(&mut conn, 200, &body)
}
