//! The HTTP layer: one `reqwest` client per registry, authentication, retries and redirects.
//!
//! See the crate documentation for where credentials go.
//!
//! Nothing here logs headers, tokens or credentials: `tracing::debug!` gets the method, the
//! redacted URL and the status.

mod describe;
mod origin;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

pub(crate) use self::describe::chain;
use self::describe::tls_hint;
use self::origin::redirect_policy;
pub(crate) use self::origin::{private_target, same_origin, validate_registry};
use crate::challenge::{Challenge, parse_challenges};
use crate::config::DOCKER_HUB_HOST;
use crate::redact::{redact_url, scrub_urls};
use crate::repo::Repo;
use crate::retry::{backoff, parse_retry_after};
use crate::{CredentialSource, Credentials, Error, RegistryConfig, Result, Secret};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// Cap on token responses and error bodies.
pub const MAX_SMALL_BODY: u64 = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A registry client. Cheap to clone; `Send + Sync`. HTTP clients, learned auth schemes,
/// credentials and tokens are shared between clones.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    anonymous: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RegistryConfig,
    credentials: Arc<dyn CredentialSource>,
    /// Shared with the clients made by [`Client::with_credentials`].
    hosts: Arc<Mutex<HashMap<String, Arc<Host>>>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
    tokens: Mutex<HashMap<TokenKey, Token>>,
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct TokenKey {
    registry: String,
    scopes: String,
    anonymous: bool,
}

struct Token {
    value: Secret,
    expires: Instant,
}

/// One registry: its base URL and HTTP client, and the auth scheme learned from it.
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) base: Url,
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) insecure: bool,
    challenge: Mutex<Option<Challenge>>,
}

/// What a request needs to be allowed to do, which decides the token scope.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// `/v2/` itself.
    Registry,
    /// Read a repository.
    Pull(String),
    /// Read and write a repository.
    Push(String),
    /// Write `to`, read `from`.
    Mount { to: String, from: String },
}

impl Access {
    fn scopes(&self) -> Vec<String> {
        match self {
            Access::Registry => Vec::new(),
            Access::Pull(r) => vec![format!("repository:{r}:pull")],
            Access::Push(r) => vec![format!("repository:{r}:pull,push")],
            Access::Mount { to, from } => vec![
                format!("repository:{to}:pull,push"),
                format!("repository:{from}:pull"),
            ],
        }
    }

    fn repository(&self) -> Option<&str> {
        match self {
            Access::Registry => None,
            Access::Pull(r) | Access::Push(r) | Access::Mount { to: r, .. } => Some(r),
        }
    }
}

/// A request body.
pub(crate) enum ReqBody {
    Empty,
    /// Bytes that can be sent again (cloning them is cheap).
    Bytes(bytes::Bytes),
    /// A stream that can be sent once, of a known length.
    Stream(Option<Box<dyn Read + Send>>, u64),
}

/// How long one request (one attempt of it) may take, from connecting to the last body byte.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deadline {
    /// [`RegistryConfig::request_timeout`]: manifests, tokens, error documents, tag lists,
    /// upload sessions. Enforced by the HTTP client for the whole exchange.
    Small,
    /// This long for the whole exchange (a blob upload or one chunk of it).
    Whole(Duration),
    /// A blob download: headers within the stall timeout (or the deadline when it is
    /// shorter), each read within the stall timeout; the reader ([`crate::BlobReader`])
    /// enforces the deadline between reads.
    Streamed(Duration),
}

/// A request's deadline and what to name when it is reached.
pub(crate) struct Limit<'a> {
    pub(crate) registry: &'a str,
    pub(crate) what: &'a str,
    pub(crate) deadline: Duration,
}

impl Limit<'_> {
    pub(crate) fn error(&self, method: &Method, url: &str) -> Error {
        Error::Timeout {
            registry: self.registry.to_owned(),
            what: self.what.to_owned(),
            method: method.to_string(),
            url: url.to_owned(),
            deadline: self.deadline,
        }
    }
}

/// Whether an I/O error from a response body is a timeout (a read that stalled, or the
/// request's deadline).
pub(crate) fn is_timeout_io(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|r| r.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

/// A reader that fails with `TimedOut` once `deadline` has passed (checked before each read;
/// each read itself is bounded by the HTTP client's stall timeout).
pub(crate) struct Within<R> {
    pub(crate) inner: R,
    pub(crate) deadline: Instant,
}

impl<R: Read> Read for Within<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request's deadline has passed",
            ));
        }
        self.inner.read(buf)
    }
}

/// One request to a registry (or to a URL it pointed us to).
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) access: Access,
    pub(crate) headers: HeaderMap,
    pub(crate) body: ReqBody,
    /// Retry on transient failures (idempotent requests).
    pub(crate) retry: bool,
    /// How long the request may take.
    pub(crate) deadline: Deadline,
    /// What is asked for, for a [`Error::Timeout`] (`manifest v1 of library/alpine`).
    pub(crate) what: Option<String>,
    /// Answer a 401 by (re)authenticating and retrying once. Off for best-effort requests that
    /// may need more than their scope grants (cancelling an upload needs `delete` under token
    /// auth, which we do not ask for).
    pub(crate) reauthenticate: bool,
}

impl Req {
    pub(crate) fn new(method: Method, url: Url, access: Access) -> Self {
        let retry = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE
        );
        Req {
            method,
            url,
            access,
            headers: HeaderMap::new(),
            body: ReqBody::Empty,
            retry,
            deadline: Deadline::Small,
            what: None,
            reauthenticate: true,
        }
    }

    pub(crate) fn what(mut self, what: String) -> Self {
        self.what = Some(what);
        self
    }

    pub(crate) fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

impl Client {
    /// A client with `config`, asking `credentials` when a registry wants them.
    pub fn new(config: RegistryConfig, credentials: Arc<dyn CredentialSource>) -> Result<Client> {
        for host in config.insecure.iter().chain(config.ca_files.keys()) {
            validate_registry(host)?;
        }
        for registry in config.ca_files.keys() {
            config.extra_roots(registry)?;
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                credentials,
                hosts: Arc::new(Mutex::new(HashMap::new())),
                creds: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
            }),
            anonymous: false,
        })
    }

    /// This client, never sending credentials (but sharing HTTP connections and caches).
    pub fn anonymous(&self) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            anonymous: true,
        }
    }

    /// Whether this client sends no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// A repository on a registry (`docker.io`, `ghcr.io`, `127.0.0.1:5000`); with `anonymous`,
    /// its requests carry no credentials (public pulls). Names are checked when an operation
    /// runs.
    pub fn repo(&self, registry: &str, repository: &str, anonymous: bool) -> Repo {
        let client = if anonymous {
            self.anonymous()
        } else {
            self.clone()
        };
        Repo::new(client, registry, repository)
    }

    /// A client with the same configuration and HTTP connections, asking `credentials`
    /// instead (to check a password before `login` stores it). Credentials and tokens are not
    /// shared with this client.
    pub fn with_credentials(&self, credentials: Arc<dyn CredentialSource>) -> Client {
        Client {
            inner: Arc::new(Inner {
                config: self.inner.config.clone(),
                credentials,
                hosts: Arc::clone(&self.inner.hosts),
                creds: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
            }),
            anonymous: false,
        }
    }

    /// `GET /v2/` with authentication: checks that the registry answers and accepts our
    /// credentials (a 401 after trying them is [`Error::Unauthorized`]).
    pub fn ping(&self, registry: &str) -> Result<()> {
        let host = self.host(registry)?;
        let url = host.base.join("v2/").map_err(|e| Error::Config {
            reason: e.to_string(),
        })?;
        let resp = self.execute(&host, Req::new(Method::GET, url, Access::Registry))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error(&Method::GET, resp, 1))
        }
    }

    pub(crate) fn retries(&self) -> u32 {
        self.inner.config.retries
    }

    pub(crate) fn retry_base(&self) -> Duration {
        self.inner.config.retry_base
    }

    /// The deadline of a small document's request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// The host state of `registry`, built on first use.
    pub(crate) fn host(&self, registry: &str) -> Result<Arc<Host>> {
        if let Some(h) = lock(&self.inner.hosts).get(registry) {
            return Ok(Arc::clone(h));
        }
        let built = Arc::new(self.build_host(registry)?);
        let mut hosts = lock(&self.inner.hosts);
        Ok(Arc::clone(
            hosts.entry(registry.to_owned()).or_insert(built),
        ))
    }

    fn build_host(&self, registry: &str) -> Result<Host> {
        validate_registry(registry)?;
        let config = &self.inner.config;
        let request_host = if registry == gantry_oci::DEFAULT_REGISTRY {
            DOCKER_HUB_HOST
        } else {
            registry
        };
        let insecure = config.is_insecure(registry);
        let roots = config.extra_roots(registry)?;
        let https =
            Url::parse(&format!("https://{request_host}/")).map_err(|e| Error::InvalidName {
                what: "registry",
                input: registry.to_owned(),
                reason: e.to_string(),
            })?;
        let http = reqwest::blocking::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            // Bounds the headers and each read of a body; requests set their own deadline.
            .timeout(config.stall_timeout())
            .redirect(redirect_policy(https.clone()))
            .referer(false)
            .https_only(!insecure)
            .tls_certs_merge(roots)
            .tls_danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|e| Error::Config {
                reason: format!("cannot build the HTTP client for {registry}: {}", chain(&e)),
            })?;
        let base = if insecure {
            // HTTPS (with any certificate) when it answers at all, else plain HTTP.
            let probe = https.join("v2/").expect("static path");
            match http.get(probe).timeout(config.connect_timeout).send() {
                Ok(_) => {
                    tracing::info!(
                        registry,
                        "insecure registry: using HTTPS without certificate verification"
                    );
                    https
                }
                Err(e) => {
                    tracing::info!(registry, error = %chain(&e), "insecure registry: HTTPS failed, using plain HTTP");
                    Url::parse(&format!("http://{request_host}/")).expect("checked above")
                }
            }
        } else {
            https
        };
        Ok(Host {
            name: registry.to_owned(),
            base,
            http,
            insecure,
            challenge: Mutex::new(None),
        })
    }

    /// The credentials for `registry` (looked up once per client).
    fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if self.anonymous {
            return Ok(None);
        }
        if let Some(c) = lock(&self.inner.creds).get(registry) {
            return Ok(c.clone());
        }
        let c = self.inner.credentials.credentials(registry)?;
        lock(&self.inner.creds).insert(registry.to_owned(), c.clone());
        Ok(c)
    }

    /// The `Authorization` header for a request to `host` needing `access`, if we know the
    /// registry's scheme.
    fn auth_header(&self, host: &Host, access: &Access) -> Result<Option<HeaderValue>> {
        let Some(challenge) = lock(&host.challenge).clone() else {
            return Ok(None);
        };
        if challenge.is_basic() {
            return match self.credentials(&host.name)? {
                Some(Credentials::Basic { username, password }) => {
                    Ok(Some(basic_header(&username, &password)))
                }
                Some(Credentials::IdentityToken(_)) => Err(Error::Unauthorized {
                    registry: host.name.clone(),
                    repository: access.repository().map(str::to_owned),
                    detail: "the registry wants Basic authentication but the credentials are \
                             an identity token"
                        .to_owned(),
                }),
                None => Ok(None),
            };
        }
        let key = TokenKey {
            registry: host.name.clone(),
            scopes: access.scopes().join(" "),
            anonymous: self.anonymous,
        };
        if let Some(t) = lock(&self.inner.tokens).get(&key)
            && t.expires > Instant::now()
        {
            return Ok(Some(bearer_header(&t.value)));
        }
        let token = self.fetch_token(host, &challenge, access)?;
        let header = bearer_header(&token.value);
        lock(&self.inner.tokens).insert(key, token);
        Ok(Some(header))
    }

    fn forget_token(&self, host: &Host, access: &Access) {
        lock(&self.inner.tokens).remove(&TokenKey {
            registry: host.name.clone(),
            scopes: access.scopes().join(" "),
            anonymous: self.anonymous,
        });
    }

    /// Gets a token from a Bearer challenge's realm.
    fn fetch_token(&self, host: &Host, challenge: &Challenge, access: &Access) -> Result<Token> {
        let realm_str = challenge.realm().unwrap_or("");
        let mut realm = self.check_realm(host, realm_str)?;
        let shown = redact_url(&realm);
        let token_err = |reason: String| Error::Token {
            registry: host.name.clone(),
            realm: shown.clone(),
            reason,
        };
        let service = challenge.param("service").map(str::to_owned);
        let scopes = access.scopes();
        let creds = self.credentials(&host.name)?;
        let started = Instant::now();
        let limit = Limit {
            registry: &host.name,
            what: "the token",
            deadline: self.request_timeout(),
        };
        let resp = match &creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "gantry"),
                    ("refresh_token", refresh.expose()),
                ];
                if let Some(s) = &service {
                    form.push(("service", s));
                }
                let scope = scopes.join(" ");
                if !scope.is_empty() {
                    form.push(("scope", &scope));
                }
                let body: String = url_form(&form);
                self.send_attempts(&Method::POST, &realm, true, Some(&limit), |_| {
                    Ok(host
                        .http
                        .post(realm.clone())
                        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body.clone()))
                })?
            }
            basic => {
                {
                    let mut q = realm.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    for s in &scopes {
                        q.append_pair("scope", s);
                    }
                }
                if realm.query() == Some("") {
                    realm.set_query(None);
                }
                let auth = match basic {
                    Some(Credentials::Basic { username, password }) => {
                        Some(basic_header(username, password))
                    }
                    _ => None,
                };
                self.send_attempts(&Method::GET, &realm, true, Some(&limit), |_| {
                    let mut rb = host.http.get(realm.clone());
                    if let Some(a) = &auth {
                        rb = rb.header(header::AUTHORIZATION, a.clone());
                    }
                    Ok(rb)
                })?
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let summary = summarize(resp);
            return Err(Error::Unauthorized {
                registry: host.name.clone(),
                repository: access.repository().map(str::to_owned),
                detail: match &creds {
                    Some(c) => format!(
                        "the token server {shown} refused {} ({summary}); wrong username or password?",
                        c.describe()
                    ),
                    None => format!(
                        "the token server {shown} refused anonymous access ({summary}); \
                         no credentials for {} were found (log in with `gantry login {}`)",
                        host.name, host.name
                    ),
                },
            });
        }
        if !status.is_success() {
            return Err(token_err(summarize(resp)));
        }
        let body = read_capped(
            resp,
            MAX_SMALL_BODY,
            "token response",
            &Method::GET,
            Some(&limit),
        )?;
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| token_err("the response is not a JSON token document".to_owned()))?;
        let value = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| token_err("the response has no token".to_owned()))?;
        // The spec's default lifetime is 60 s; keep a margin so a token never expires in flight.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(1, 86_400));
        let margin = (lifetime / 5).min(Duration::from_secs(30));
        Ok(Token {
            value: Secret::new(value),
            expires: started + lifetime - margin,
        })
    }

    fn check_realm(&self, host: &Host, realm: &str) -> Result<Url> {
        let refused = |url: String, reason: &str| Error::Refused {
            registry: host.name.clone(),
            url,
            reason: reason.to_owned(),
        };
        let url = Url::parse(realm)
            .map_err(|_| refused(scrub_urls(realm), "the token realm is not a valid URL"))?;
        match url.scheme() {
            "https" => {}
            "http" if host.insecure => {}
            _ => {
                return Err(refused(
                    redact_url(&url),
                    "the token realm of a secure registry must use https",
                ));
            }
        }
        if let Some(reason) = private_target(&host.base, &url) {
            return Err(refused(redact_url(&url), reason));
        }
        Ok(url)
    }

    /// Refuses a URL a registry pointed us to (upload `Location`) that we will not contact.
    pub(crate) fn check_target(&self, host: &Host, url: &Url) -> Result<()> {
        let refused = |reason: &str| Error::Refused {
            registry: host.name.clone(),
            url: redact_url(url),
            reason: reason.to_owned(),
        };
        match url.scheme() {
            "https" => {}
            "http" if host.insecure => {}
            _ => return Err(refused("a secure registry may only send us to https URLs")),
        }
        if let Some(reason) = private_target(&host.base, url) {
            return Err(refused(reason));
        }
        Ok(())
    }

    /// Sends `req` with authentication and retries. Returns the response whatever its status,
    /// except: a 401 from the registry after (re)trying our credentials is
    /// [`Error::Unauthorized`], and transient failures that outlast the retries are errors.
    pub(crate) fn execute(&self, host: &Host, mut req: Req) -> Result<Response> {
        let same = same_origin(&req.url, &host.base);
        let replayable = !matches!(req.body, ReqBody::Stream(..));
        let mut reauthenticated = false;
        loop {
            let auth = if same {
                self.auth_header(host, &req.access)?
            } else {
                None
            };
            let retry = req.retry && replayable;
            let (timeout, deadline) = match req.deadline {
                Deadline::Small => (Some(self.request_timeout()), self.request_timeout()),
                Deadline::Whole(d) => (Some(d), d),
                // Longer than the stall timeout, the deadline is the reader's to enforce: as
                // the HTTP client's timeout it would also be the bound of each read.
                Deadline::Streamed(d) => ((d <= self.inner.config.stall_timeout()).then_some(d), d),
            };
            let what = req
                .what
                .clone()
                .unwrap_or_else(|| "the response".to_owned());
            let limit = timeout.map(|_| Limit {
                registry: &host.name,
                what: &what,
                deadline,
            });
            let resp = self.send_attempts(&req.method, &req.url, retry, limit.as_ref(), |_| {
                let mut rb = host
                    .http
                    .request(req.method.clone(), req.url.clone())
                    .headers(req.headers.clone());
                if let Some(a) = &auth {
                    rb = rb.header(header::AUTHORIZATION, a.clone());
                }
                Ok(match &mut req.body {
                    ReqBody::Empty => rb,
                    ReqBody::Bytes(b) => rb.body(b.clone()),
                    ReqBody::Stream(s, len) => {
                        let s = s.take().ok_or_else(|| Error::Http {
                            method: req.method.to_string(),
                            url: redact_url(&req.url),
                            detail: "a streamed body cannot be sent twice".to_owned(),
                            attempts: 1,
                        })?;
                        rb.body(reqwest::blocking::Body::sized(s, *len))
                    }
                })
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED || !same_origin(resp.url(), &host.base) {
                return Ok(resp);
            }
            if reauthenticated || !replayable || !req.reauthenticate {
                return Err(self.unauthorized(host, &req.access, resp));
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .flat_map(|v| parse_challenges(&String::from_utf8_lossy(v.as_bytes())))
                .collect();
            let chosen = challenges
                .iter()
                .find(|c| c.is_bearer() && c.realm().is_some())
                .or_else(|| challenges.iter().find(|c| c.is_basic()))
                .cloned();
            let Some(chosen) = chosen else {
                return Err(self.unauthorized(host, &req.access, resp));
            };
            drop(resp);
            if chosen.is_basic() && self.credentials(&host.name)?.is_none() {
                return Err(Error::Unauthorized {
                    registry: host.name.clone(),
                    repository: req.access.repository().map(str::to_owned),
                    detail: if self.anonymous {
                        "the registry requires authentication (anonymous access was asked for)"
                            .to_owned()
                    } else {
                        format!(
                            "the registry requires authentication and no credentials for {} \
                             were found (log in with `gantry login {}`)",
                            host.name, host.name
                        )
                    },
                });
            }
            *lock(&host.challenge) = Some(chosen);
            self.forget_token(host, &req.access);
            reauthenticated = true;
        }
    }

    fn unauthorized(&self, host: &Host, access: &Access, resp: Response) -> Error {
        let summary = summarize(resp);
        let creds = match self.credentials(&host.name) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let detail = match creds {
            Some(c) => format!(
                "the registry refused {} ({summary}); wrong username or password, or no access?",
                c.describe()
            ),
            None if self.anonymous => format!("anonymous access was refused ({summary})"),
            None => format!(
                "authentication required and no credentials for {} were found ({summary}); \
                 log in with `gantry login {}`",
                host.name, host.name
            ),
        };
        Error::Unauthorized {
            registry: host.name.clone(),
            repository: access.repository().map(str::to_owned),
            detail,
        }
    }

    /// Sends the request `build` makes, retrying (when `retry`) on connect errors, timeouts,
    /// 429 and 5xx, honouring `Retry-After`. An attempt that reaches the deadline of `limit`
    /// (the timeout `build` set) is an [`Error::Timeout`], not retried: the deadline is far
    /// beyond what a working registry needs, and a trickling one would hold us for every retry.
    pub(crate) fn send_attempts(
        &self,
        method: &Method,
        url: &Url,
        retry: bool,
        limit: Option<&Limit<'_>>,
        mut build: impl FnMut(u32) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let max = if retry { self.retries() } else { 0 };
        let shown = redact_url(url);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut rb = build(attempt)?;
            if let Some(l) = limit {
                rb = rb.timeout(l.deadline);
            }
            let started = Instant::now();
            match rb.send() {
                Err(e) => {
                    let detail = chain(&e);
                    tracing::debug!(%method, url = %shown, attempt, error = %detail, "registry request failed");
                    if let Some(l) = limit
                        && e.is_timeout()
                        && started.elapsed() >= l.deadline
                    {
                        return Err(l.error(method, &shown));
                    }
                    if attempt <= max && transient(&e) {
                        std::thread::sleep(backoff(attempt - 1, self.retry_base()));
                        continue;
                    }
                    let detail = match tls_hint(&detail, url) {
                        Some(hint) => format!("{detail} ({hint})"),
                        None => detail,
                    };
                    return Err(Error::Http {
                        method: method.to_string(),
                        url: shown,
                        detail,
                        attempts: attempt,
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    tracing::debug!(%method, url = %shown, status = status.as_u16(), attempt, "registry request");
                    let transient_status = status == StatusCode::TOO_MANY_REQUESTS
                        || (status.is_server_error()
                            && status != StatusCode::NOT_IMPLEMENTED
                            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED);
                    if transient_status && attempt <= max {
                        let delay = resp
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, SystemTime::now()))
                            .unwrap_or_else(|| backoff(attempt - 1, self.retry_base()));
                        drop(resp);
                        std::thread::sleep(delay);
                        continue;
                    }
                    if transient_status && attempt > 1 {
                        return Err(status_error(method, resp, attempt));
                    }
                    return Ok(resp);
                }
            }
        }
    }
}

fn basic_header(username: &str, password: &Secret) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{username}:{}", password.expose()));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &Secret) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    v.set_sensitive(true);
    v
}

fn url_form(pairs: &[(&str, &str)]) -> String {
    let mut u = Url::parse("http://x/").expect("static URL");
    u.query_pairs_mut().extend_pairs(pairs);
    u.query().unwrap_or("").to_owned()
}

fn transient(e: &reqwest::Error) -> bool {
    if e.is_redirect() || e.is_builder() || e.is_status() || e.is_decode() {
        return false;
    }
    let text = chain(e).to_ascii_lowercase();
    if text.contains("certificate")
        || text.contains("handshake")
        || text.contains("corrupt message")
    {
        return false;
    }
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// Reads a whole body of at most `cap` bytes. A timeout while reading is the request's
/// deadline (`limit`): for small documents the HTTP client's timeout is the deadline.
pub(crate) fn read_capped(
    resp: Response,
    cap: u64,
    what: &str,
    method: &Method,
    limit: Option<&Limit<'_>>,
) -> Result<Vec<u8>> {
    let url = redact_url(resp.url());
    let too_large = || Error::TooLarge {
        url: url.clone(),
        what: what.to_owned(),
        limit: cap,
    };
    if content_length(&resp).is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    resp.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| match limit {
            Some(l) if is_timeout_io(&e) => l.error(method, &url),
            _ => Error::Http {
                method: method.to_string(),
                url: url.clone(),
                detail: chain(&e),
                attempts: 1,
            },
        })?;
    if buf.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(buf)
}

/// The `Content-Length` header (reqwest's own accessor reports the body's size hint, which is
/// zero for HEAD).
pub(crate) fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `401 UNAUTHORIZED: authentication required` from the registry's error document (at most
/// 1 MiB is read), or `503 Service Unavailable`.
pub(crate) fn summarize(resp: Response) -> String {
    summarize_within(resp, None)
}

/// [`summarize`], reading the error document only until `deadline` (for responses to
/// requests whose deadline the HTTP client does not enforce: blob downloads).
pub(crate) fn summarize_within(resp: Response, deadline: Option<Instant>) -> String {
    let status = resp.status();
    let mut body = Vec::new();
    let mut capped = resp.take(MAX_SMALL_BODY);
    let _ = match deadline {
        Some(deadline) => Within {
            inner: capped,
            deadline,
        }
        .read_to_end(&mut body),
        None => capped.read_to_end(&mut body),
    };
    summarize_body(status, &body)
}

pub(crate) fn summarize_body(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    let clean = |s: &str| -> String {
        let s: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
        scrub_urls(&s)
    };
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && !e.errors.is_empty()
    {
        let parts: Vec<String> = e
            .errors
            .iter()
            .take(5)
            .map(|x| match (&x.code, &x.message) {
                (Some(c), Some(m)) if !m.is_empty() => format!("{}: {}", clean(c), clean(m)),
                (Some(c), _) => clean(c),
                (None, Some(m)) => clean(m),
                (None, None) => "unknown error".to_owned(),
            })
            .collect();
        return format!("{} {}", status.as_u16(), parts.join("; "));
    }
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// The error for a response whose status the operation does not accept.
pub(crate) fn status_error(method: &Method, resp: Response, attempts: u32) -> Error {
    status_error_within(method, resp, attempts, None)
}

/// [`status_error`], reading the error document only until `deadline`.
pub(crate) fn status_error_within(
    method: &Method,
    resp: Response,
    attempts: u32,
    deadline: Option<Instant>,
) -> Error {
    let url = redact_url(resp.url());
    let status = resp.status().as_u16();
    Error::Status {
        method: method.to_string(),
        url,
        status,
        summary: summarize_within(resp, deadline),
        attempts,
    }
}

#[cfg(test)]
mod tests;
