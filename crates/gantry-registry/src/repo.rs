//! Operations on one repository: manifests, blobs, uploads, mounts, tags.

use std::io::Read;
use std::sync::Arc;

use gantry_oci::json::MAX_MANIFEST_SIZE;
use gantry_oci::{Algorithm, Descriptor, Digest, media_types, validate_tag};
use reqwest::header::{self, HeaderName};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::blob::BlobReader;
use crate::client::{
    Access, Client, Deadline, Host, Limit, Req, ReqBody, content_length, read_capped, status_error,
};
use crate::redact::redact_url;
use crate::retry::backoff;
use crate::{Error, Result};

/// The `Accept` header of manifest requests: every manifest and index type gantry reads.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Blobs up to this size are uploaded with one `PUT`; larger ones in chunks of
/// [`UPLOAD_CHUNK`] bytes, one `PATCH` each, and a closing `PUT`.
pub const MONOLITHIC_UPLOAD_MAX: u64 = 8 << 20;

/// The size of one `PATCH` of a chunked upload (unless the registry asks for larger chunks
/// with `OCI-Chunk-Min-Length`, up to [`UPLOAD_CHUNK_MAX`]). Chunks, rather than one streamed
/// `PATCH`, because the blocking HTTP client reads a streamed body 8 KiB at a time and hands
/// each piece to another thread: a 700 MB push then spent more CPU in 85 000 writes and
/// 190 000 futex calls than the registry spent storing the bytes. A chunk held in memory goes
/// out in a few large writes, can be sent again after a 401, and bounds memory to one chunk
/// per concurrent upload.
pub const UPLOAD_CHUNK: u64 = 16 << 20;

/// The largest chunk gantry agrees to hold in memory; a registry demanding more gets one
/// streamed `PATCH`.
pub const UPLOAD_CHUNK_MAX: u64 = 128 << 20;

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const MAX_TAG_PAGES: usize = 1000;

/// A manifest or index as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes (at most 4 MiB).
    pub bytes: Vec<u8>,
    /// The `Content-Type` the registry declared (a manifest or index media type). Pass it to
    /// `gantry_oci::parse_document`, which checks it against the document's own `mediaType`.
    pub media_type: String,
    /// The digest of the bytes (computed here, never taken from a header).
    pub digest: Digest,
}

impl Manifest {
    /// The descriptor of this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone(),
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// A tag or a digest.
enum ManifestRef {
    Tag,
    Digest(Digest),
}

/// A repository on a registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Repo {
    client: Client,
    registry: String,
    repository: String,
}

impl Repo {
    pub(crate) fn new(client: Client, registry: &str, repository: &str) -> Self {
        Repo {
            client,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
        }
    }

    /// Whether this repository's requests carry no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.client.is_anonymous()
    }

    /// The registry name.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository name.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// `registry/repository`, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub(crate) fn host(&self) -> Result<Arc<Host>> {
        validate_repository(&self.repository)?;
        self.client.host(&self.registry)
    }

    pub(crate) fn url(&self, host: &Host, tail: &str) -> Result<Url> {
        host.base
            .join(&format!("v2/{}/{tail}", self.repository))
            .map_err(|e| Error::InvalidName {
                what: "repository",
                input: self.repository.clone(),
                reason: e.to_string(),
            })
    }

    fn invalid(&self, what: &str, reason: impl Into<String>) -> Error {
        Error::InvalidResponse {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what: what.to_owned(),
            reason: reason.into(),
        }
    }

    fn not_found(&self, what: String) -> Error {
        Error::NotFound {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what,
        }
    }

    fn mismatch(&self, what: String, expected: Digest, actual: Digest) -> Error {
        Error::DigestMismatch {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what,
            expected: Box::new(expected),
            actual: Box::new(actual),
        }
    }

    /// `manifest v1 of library/alpine`: what a [`Error::Timeout`] names.
    pub(crate) fn asked_for(&self, kind: &str, reference: &str) -> String {
        format!("{kind} {reference} of {}", self.repository)
    }

    /// The deadline of a small document's request, for reading its body.
    fn limit<'a>(&'a self, what: &'a str) -> Limit<'a> {
        Limit {
            registry: &self.registry,
            what,
            deadline: self.client.request_timeout(),
        }
    }

    /// `GET /v2/`: checks that the registry answers and accepts our credentials.
    pub fn ping(&self) -> Result<()> {
        self.client.ping(&self.registry)
    }

    /// Fetches a manifest or index by tag or digest. The body is capped at 4 MiB; a digest
    /// reference must match the bytes; a `Docker-Content-Digest` header, when present, must too.
    pub fn get_manifest(&self, reference: &str) -> Result<Manifest> {
        let r = parse_reference(reference)?;
        let host = self.host()?;
        let url = self.url(&host, &format!("manifests/{reference}"))?;
        let asked = self.asked_for("manifest", reference);
        let req = Req::new(Method::GET, url, Access::Pull(self.repository.clone()))
            .header(header::ACCEPT, ACCEPT_MANIFESTS)
            .what(asked.clone());
        let resp = self.client.execute(&host, req)?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.not_found(format!("manifest {reference}")));
        }
        if !status.is_success() {
            return Err(status_error(&Method::GET, resp, 1));
        }
        let what = format!("manifest {reference}");
        let media_type = self.manifest_content_type(&resp, &what)?;
        let announced = header_str(&resp, DOCKER_CONTENT_DIGEST);
        let limit = self.limit(&asked);
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE, &what, &Method::GET, Some(&limit))?;
        let requested = match &r {
            ManifestRef::Digest(d) => Some(d),
            ManifestRef::Tag => None,
        };
        let digest = self.check_manifest_digest(&bytes, requested, announced.as_deref(), &what)?;
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    fn manifest_content_type(
        &self,
        resp: &reqwest::blocking::Response,
        what: &str,
    ) -> Result<String> {
        let ct = header_str(resp, header::CONTENT_TYPE.as_str())
            .ok_or_else(|| self.invalid(what, "no Content-Type"))?;
        let mt = ct.split(';').next().unwrap_or("").trim().to_owned();
        if !(media_types::is_manifest(&mt) || media_types::is_index(&mt)) {
            let shown: String = mt.chars().take(100).collect();
            return Err(self.invalid(
                what,
                format!("Content-Type {shown:?} is not an image manifest or index type"),
            ));
        }
        Ok(mt)
    }

    fn check_manifest_digest(
        &self,
        bytes: &[u8],
        requested: Option<&Digest>,
        announced: Option<&str>,
        what: &str,
    ) -> Result<Digest> {
        let algorithm = requested.map_or(Algorithm::Sha256, Digest::algorithm);
        let computed = Digest::compute(algorithm, bytes);
        if let Some(r) = requested
            && *r != computed
        {
            return Err(self.mismatch(what.to_owned(), r.clone(), computed));
        }
        if let Some(a) = announced {
            let a = Digest::parse(a.trim()).map_err(|e| {
                self.invalid(what, format!("bad Docker-Content-Digest header: {e}"))
            })?;
            let actual = if a.algorithm() == algorithm {
                computed.clone()
            } else {
                Digest::compute(a.algorithm(), bytes)
            };
            if actual != a {
                return Err(self.mismatch(format!("{what} (Docker-Content-Digest)"), a, actual));
            }
        }
        Ok(computed)
    }

    /// Resolves a tag (or checks a digest) with `HEAD`: the descriptor from
    /// `Docker-Content-Digest`, `Content-Type` and `Content-Length`, or, when the registry
    /// sends no digest header, from a `GET` of the manifest. `None` if there is no such
    /// manifest.
    pub fn head_manifest(&self, reference: &str) -> Result<Option<Descriptor>> {
        let r = parse_reference(reference)?;
        let host = self.host()?;
        let url = self.url(&host, &format!("manifests/{reference}"))?;
        let req = Req::new(Method::HEAD, url, Access::Pull(self.repository.clone()))
            .header(header::ACCEPT, ACCEPT_MANIFESTS)
            .what(self.asked_for("manifest", reference));
        let resp = self.client.execute(&host, req)?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error(&Method::HEAD, resp, 1));
        }
        let what = format!("manifest {reference}");
        let media_type = self.manifest_content_type(&resp, &what)?;
        let announced = header_str(&resp, DOCKER_CONTENT_DIGEST);
        let size = content_length(&resp);
        drop(resp);
        if let (Some(a), Some(size)) = (announced, size) {
            let d = Digest::parse(a.trim()).map_err(|e| {
                self.invalid(&what, format!("bad Docker-Content-Digest header: {e}"))
            })?;
            if let ManifestRef::Digest(want) = &r
                && *want != d
                && want.algorithm() == d.algorithm()
            {
                return Err(self.mismatch(
                    format!("{what} (Docker-Content-Digest)"),
                    want.clone(),
                    d,
                ));
            }
            if size > MAX_MANIFEST_SIZE {
                return Err(Error::TooLarge {
                    url: redact_url(&self.url(&host, &format!("manifests/{reference}"))?),
                    what,
                    limit: MAX_MANIFEST_SIZE,
                });
            }
            if !matches!(&r, ManifestRef::Digest(w) if w.algorithm() != d.algorithm()) {
                return Ok(Some(Descriptor::new(media_type, d, size)));
            }
        }
        match self.get_manifest(reference) {
            Ok(m) => Ok(Some(m.descriptor())),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pushes a manifest under a tag or its digest; returns its digest.
    pub fn put_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<Digest> {
        let r = parse_reference(reference)?;
        gantry_oci::validate_media_type(media_type).map_err(|reason| Error::InvalidName {
            what: "media type",
            input: media_type.to_owned(),
            reason,
        })?;
        let what = format!("manifest {reference}");
        let algorithm = match &r {
            ManifestRef::Digest(d) => d.algorithm(),
            ManifestRef::Tag => Algorithm::Sha256,
        };
        let digest = Digest::compute(algorithm, bytes);
        if let ManifestRef::Digest(want) = &r
            && *want != digest
        {
            return Err(self.mismatch(format!("{what} to push"), want.clone(), digest));
        }
        let host = self.host()?;
        let url = self.url(&host, &format!("manifests/{reference}"))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge {
                url: redact_url(&url),
                what,
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let mut req = Req::new(Method::PUT, url, Access::Push(self.repository.clone()))
            .header(header::CONTENT_TYPE, media_type);
        req.body = ReqBody::Bytes(bytes::Bytes::copy_from_slice(bytes));
        let resp = self.client.execute(&host, req)?;
        if !resp.status().is_success() {
            return Err(status_error(&Method::PUT, resp, 1));
        }
        self.check_announced(&resp, &digest, &what)?;
        Ok(digest)
    }

    /// A `Docker-Content-Digest` in a push response must name what we pushed.
    fn check_announced(
        &self,
        resp: &reqwest::blocking::Response,
        digest: &Digest,
        what: &str,
    ) -> Result<()> {
        if let Some(a) = header_str(resp, DOCKER_CONTENT_DIGEST)
            && let Ok(a) = Digest::parse(a.trim())
            && a.algorithm() == digest.algorithm()
            && a != *digest
        {
            return Err(self.mismatch(
                format!("{what} (Docker-Content-Digest)"),
                digest.clone(),
                a,
            ));
        }
        Ok(())
    }

    /// The size of a blob, or `None` if the repository does not have it.
    pub fn head_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let host = self.host()?;
        let url = self.url(&host, &format!("blobs/{digest}"))?;
        let resp = self.client.execute(
            &host,
            Req::new(Method::HEAD, url, Access::Pull(self.repository.clone())),
        )?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error(&Method::HEAD, resp, 1));
        }
        content_length(&resp)
            .map(Some)
            .ok_or_else(|| self.invalid(&format!("blob {digest}"), "no Content-Length"))
    }

    /// Streams a blob. The reader follows redirects (signed storage URLs get no credentials),
    /// resumes a broken download with `Range`, and checks the size and digest at the end: a
    /// mismatch is an error at EOF and on every later read.
    pub fn get_blob(&self, desc: &Descriptor) -> Result<BlobReader> {
        BlobReader::open(self.clone(), desc)
    }

    /// The URL of a blob.
    pub(crate) fn blob_url(&self, host: &Host, digest: &Digest) -> Result<Url> {
        self.url(host, &format!("blobs/{digest}"))
    }

    /// Asks the registry to mount a blob from another repository of the same registry:
    /// `true` if it did (201). When it opens an upload session instead (202), the session is
    /// cancelled and the answer is `false`.
    pub fn mount_blob(&self, desc: &Descriptor, from_repository: &str) -> Result<bool> {
        validate_repository(from_repository)?;
        let host = self.host()?;
        let mut url = self.url(&host, "blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", &desc.digest.to_string())
            .append_pair("from", from_repository);
        let access = Access::Mount {
            to: self.repository.clone(),
            from: from_repository.to_owned(),
        };
        let mut req = Req::new(Method::POST, url, access.clone());
        req.retry = true;
        let resp = self.client.execute(&host, req)?;
        match resp.status() {
            StatusCode::CREATED => {
                self.check_announced(
                    &resp,
                    &desc.digest,
                    &format!("mounted blob {}", desc.digest),
                )?;
                Ok(true)
            }
            StatusCode::ACCEPTED => {
                if let Ok(loc) = self.location(&host, &resp, "mount") {
                    drop(resp);
                    // Best effort: the session expires anyway, and under token auth a DELETE
                    // needs a `delete` grant that we do not ask for.
                    let mut req = Req::new(Method::DELETE, loc, access);
                    req.retry = false;
                    req.reauthenticate = false;
                    match self.client.execute(&host, req) {
                        Ok(r) => tracing::debug!(
                            status = r.status().as_u16(),
                            "cancelled the upload session of a refused mount"
                        ),
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot cancel the upload session of a refused mount")
                        }
                    }
                }
                Ok(false)
            }
            _ => Err(status_error(&Method::POST, resp, 1)),
        }
    }

    /// The `Location` of an upload response, resolved against the response's URL and checked.
    fn location(&self, host: &Host, resp: &reqwest::blocking::Response, what: &str) -> Result<Url> {
        let loc = header_str(resp, header::LOCATION.as_str())
            .ok_or_else(|| self.invalid(what, "no Location header"))?;
        let url = resp
            .url()
            .join(loc.trim())
            .map_err(|e| self.invalid(what, format!("bad Location header: {e}")))?;
        self.client().check_target(host, &url)?;
        Ok(url)
    }

    /// Uploads a blob from `body`, which must yield exactly `desc.size` bytes. Blobs up to
    /// [`MONOLITHIC_UPLOAD_MAX`] are read into memory and sent with one `PUT` (a failed session
    /// is restarted, up to the retry count); larger ones are read and sent one chunk at a time
    /// (see [`UPLOAD_CHUNK`]), so a failure after the first chunk is an error (see
    /// [`Repo::upload_blob_reopen`]).
    pub fn upload_blob(&self, desc: &Descriptor, body: impl Read + Send + 'static) -> Result<()> {
        if desc.size <= MONOLITHIC_UPLOAD_MAX {
            let mut buf = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
            body.take(desc.size + 1)
                .read_to_end(&mut buf)
                .map_err(|e| self.upload_error(desc, format!("cannot read the blob: {e}")))?;
            self.check_source(desc, &buf)?;
            let sessions = self.client.retries() + 1;
            let buf = bytes::Bytes::from(buf);
            return self
                .upload_sessions(desc, sessions, &mut || Ok(UploadBody::Bytes(buf.clone())));
        }
        let mut once: Option<Box<dyn Read + Send>> = Some(Box::new(body));
        self.upload_sessions(desc, 1, &mut || {
            once.take()
                .map(UploadBody::Stream)
                .ok_or_else(|| std::io::Error::other("the blob stream was already consumed"))
        })
    }

    /// Like [`Repo::upload_blob`], but `open` is called once per upload session, so a session
    /// that fails mid-stream is restarted from the beginning (up to the retry count).
    pub fn upload_blob_reopen<R, F>(&self, desc: &Descriptor, mut open: F) -> Result<()>
    where
        R: Read + Send + 'static,
        F: FnMut() -> std::io::Result<R>,
    {
        let sessions = self.client.retries() + 1;
        if desc.size <= MONOLITHIC_UPLOAD_MAX {
            let mut buf = Vec::new();
            open()
                .and_then(|r| r.take(desc.size + 1).read_to_end(&mut buf))
                .map_err(|e| self.upload_error(desc, format!("cannot read the blob: {e}")))?;
            self.check_source(desc, &buf)?;
            let buf = bytes::Bytes::from(buf);
            return self
                .upload_sessions(desc, sessions, &mut || Ok(UploadBody::Bytes(buf.clone())));
        }
        self.upload_sessions(desc, sessions, &mut || {
            open().map(|r| UploadBody::Stream(Box::new(r)))
        })
    }

    fn upload_error(&self, desc: &Descriptor, reason: String) -> Error {
        Error::Upload {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest: desc.digest.clone(),
            reason,
        }
    }

    fn check_source(&self, desc: &Descriptor, buf: &[u8]) -> Result<()> {
        if buf.len() as u64 != desc.size {
            return Err(self.upload_error(
                desc,
                format!(
                    "the source has {}{} bytes, the descriptor says {}",
                    buf.len()
                        .min(usize::try_from(desc.size).unwrap_or(usize::MAX)),
                    if buf.len() as u64 > desc.size {
                        "+"
                    } else {
                        ""
                    },
                    desc.size
                ),
            ));
        }
        let actual = Digest::compute(desc.digest.algorithm(), buf);
        if actual != desc.digest {
            return Err(self.upload_error(
                desc,
                format!("the source hashes to {actual}, not to the descriptor's digest"),
            ));
        }
        Ok(())
    }

    fn upload_sessions(
        &self,
        desc: &Descriptor,
        sessions: u32,
        source: &mut dyn FnMut() -> std::io::Result<UploadBody>,
    ) -> Result<()> {
        let mut session = 0;
        loop {
            session += 1;
            let err = match self.upload_once(desc, source) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let restartable = match &err {
                Error::Http { .. } | Error::Unauthorized { .. } => true,
                Error::Status { status, .. } => {
                    matches!(status, 404 | 408 | 429) || (500..600).contains(status)
                }
                _ => false,
            };
            tracing::debug!(digest = %desc.digest, session, error = %err, "upload session failed");
            if !restartable || session >= sessions {
                return Err(self.upload_error(desc, err.to_string()));
            }
            // The failure may have hidden a success (a lost response to the final PUT).
            if let Ok(Some(size)) = self.head_blob(&desc.digest)
                && size == desc.size
            {
                return Ok(());
            }
            std::thread::sleep(backoff(session - 1, self.client.retry_base()));
        }
    }

    fn upload_once(
        &self,
        desc: &Descriptor,
        source: &mut dyn FnMut() -> std::io::Result<UploadBody>,
    ) -> Result<()> {
        let host = self.host()?;
        let what = format!("upload of {}", desc.digest);
        let start = self.url(&host, "blobs/uploads/")?;
        let access = Access::Push(self.repository.clone());
        let mut post = Req::new(Method::POST, start, access.clone());
        post.retry = true;
        let resp = self.client.execute(&host, post)?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&Method::POST, resp, 1));
        }
        let location = self.location(&host, &resp, &what)?;
        let chunk_min = header_str(&resp, "oci-chunk-min-length");
        drop(resp);
        let body =
            source().map_err(|e| self.upload_error(desc, format!("cannot open the blob: {e}")))?;
        let octets = "application/octet-stream";
        let final_location = match body {
            UploadBody::Bytes(bytes) => {
                let mut put = Req::new(Method::PUT, with_digest(location, &desc.digest), access)
                    .header(header::CONTENT_TYPE, octets)
                    .what(what.clone());
                put.retry = false;
                put.deadline =
                    Deadline::Whole(self.client.config().blob_deadline(bytes.len() as u64));
                put.body = ReqBody::Bytes(bytes);
                put
            }
            UploadBody::Stream(stream) => {
                let chunk = chunk_size(chunk_min.as_deref());
                let next = match chunk {
                    Some(chunk) => {
                        self.upload_chunks(&host, desc, location, stream, chunk, &what)?
                    }
                    None => {
                        let mut patch = Req::new(Method::PATCH, location.clone(), access.clone())
                            .header(header::CONTENT_TYPE, octets)
                            .what(what.clone());
                        patch.body =
                            ReqBody::Stream(Some(Box::new(stream.take(desc.size))), desc.size);
                        patch.deadline =
                            Deadline::Whole(self.client.config().blob_deadline(desc.size));
                        let resp = self.client.execute(&host, patch)?;
                        if resp.status() != StatusCode::ACCEPTED {
                            return Err(status_error(&Method::PATCH, resp, 1));
                        }
                        match header_str(&resp, header::LOCATION.as_str()) {
                            Some(_) => self.location(&host, &resp, &what)?,
                            None => location,
                        }
                    }
                };
                let mut put = Req::new(Method::PUT, with_digest(next, &desc.digest), access)
                    .header(header::CONTENT_TYPE, octets);
                put.retry = false;
                put.body = ReqBody::Bytes(bytes::Bytes::new());
                put
            }
        };
        let resp = self.client.execute(&host, final_location)?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, resp, 1));
        }
        self.check_announced(&resp, &desc.digest, &what)?;
        Ok(())
    }

    /// Sends `desc.size` bytes of `stream` to the upload session at `location` in chunks of
    /// `chunk` bytes, one `PATCH` each with its `Content-Range`, and returns the session's
    /// last location for the closing `PUT`.
    fn upload_chunks(
        &self,
        host: &Host,
        desc: &Descriptor,
        mut location: Url,
        stream: Box<dyn Read + Send>,
        chunk: u64,
        what: &str,
    ) -> Result<Url> {
        let access = Access::Push(self.repository.clone());
        let mut stream = stream.take(desc.size);
        let mut offset = 0u64;
        while offset < desc.size {
            let len = chunk.min(desc.size - offset);
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            (&mut stream)
                .take(len)
                .read_to_end(&mut buf)
                .map_err(|e| self.upload_error(desc, format!("cannot read the blob: {e}")))?;
            if buf.len() as u64 != len {
                return Err(self.upload_error(
                    desc,
                    format!(
                        "the source ended after {} bytes, the descriptor says {}",
                        offset + buf.len() as u64,
                        desc.size
                    ),
                ));
            }
            let range = format!("{}-{}", offset, offset + len - 1);
            let mut patch = Req::new(Method::PATCH, location.clone(), access.clone())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_RANGE, &range)
                .what(what.to_owned());
            patch.body = ReqBody::Bytes(bytes::Bytes::from(buf));
            patch.deadline = Deadline::Whole(self.client.config().blob_deadline(len));
            let resp = self.client.execute(host, patch)?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(status_error(&Method::PATCH, resp, 1));
            }
            if header_str(&resp, header::LOCATION.as_str()).is_some() {
                location = self.location(host, &resp, what)?;
            }
            offset += len;
        }
        Ok(location)
    }

    /// Lists the repository's tags, following `Link` pagination.
    pub fn tags(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let host = self.host()?;
        let mut url = self.url(&host, "tags/list")?;
        let mut out = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let resp = self.client.execute(
                &host,
                Req::new(
                    Method::GET,
                    url.clone(),
                    Access::Pull(self.repository.clone()),
                )
                .what(format!("the tag list of {}", self.repository)),
            )?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(self.not_found("tag list".to_owned()));
            }
            if !status.is_success() {
                return Err(status_error(&Method::GET, resp, 1));
            }
            let next = header_str(&resp, header::LINK.as_str())
                .and_then(|l| next_link(&l))
                .and_then(|l| resp.url().join(&l).ok());
            let asked = format!("the tag list of {}", self.repository);
            let limit = self.limit(&asked);
            let body = read_capped(
                resp,
                MAX_MANIFEST_SIZE,
                "tag list",
                &Method::GET,
                Some(&limit),
            )?;
            let list: TagList =
                gantry_oci::json::parse_strict(&body, "tag list", MAX_MANIFEST_SIZE)
                    .map_err(|e| self.invalid("tag list", e.to_string()))?;
            out.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) if crate::client::same_origin(&n, &host.base) => url = n,
                _ => return Ok(out),
            }
        }
        Err(self.invalid("tag list", format!("more than {MAX_TAG_PAGES} pages")))
    }
}

pub(crate) enum UploadBody {
    Bytes(bytes::Bytes),
    Stream(Box<dyn Read + Send>),
}

/// The chunk size of a streamed upload, given the registry's `OCI-Chunk-Min-Length`, or
/// `None` for one streamed `PATCH` when the registry wants chunks larger than
/// [`UPLOAD_CHUNK_MAX`].
fn chunk_size(min_length: Option<&str>) -> Option<u64> {
    let min = min_length
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    (min <= UPLOAD_CHUNK_MAX).then(|| min.max(UPLOAD_CHUNK))
}

fn with_digest(mut url: Url, digest: &Digest) -> Url {
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    url
}

fn header_str(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(link: &str) -> Option<String> {
    for part in link.split(',') {
        let (target, params) = part.trim().split_once('>')?;
        let target = target.trim().strip_prefix('<')?;
        if params.split(';').any(|p| {
            matches!(
                p.trim().replace(' ', "").as_str(),
                "rel=\"next\"" | "rel=next"
            )
        }) {
            return Some(target.to_owned());
        }
    }
    None
}

fn parse_reference(reference: &str) -> Result<ManifestRef> {
    if reference.contains(':') {
        Digest::parse(reference)
            .map(ManifestRef::Digest)
            .map_err(|e| Error::InvalidName {
                what: "reference",
                input: reference.to_owned(),
                reason: e.to_string(),
            })
    } else {
        validate_tag(reference).map_err(|reason| Error::InvalidName {
            what: "reference",
            input: reference.to_owned(),
            reason,
        })?;
        Ok(ManifestRef::Tag)
    }
}

/// Checks a repository name: `/`-separated components of lowercase letters and digits joined
/// by `.`, `_`, `__` or dashes, at most 255 characters.
pub(crate) fn validate_repository(name: &str) -> Result<()> {
    let checked = if name.len() > 255 {
        Err("longer than 255 characters".to_owned())
    } else {
        gantry_oci::validate_repository(name)
    };
    checked.map_err(|reason| Error::InvalidName {
        what: "repository",
        input: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["a", "library/alpine", "a-b/c__d/e.f", "x--y", "0/1"] {
            validate_repository(ok).unwrap();
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a/../b", "-a", "a_", "a b", "a?x", "a%2f",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references() {
        assert!(matches!(parse_reference("latest"), Ok(ManifestRef::Tag)));
        let d = Digest::sha256(b"x").to_string();
        assert!(matches!(parse_reference(&d), Ok(ManifestRef::Digest(_))));
        assert!(parse_reference("../x").is_err());
        assert!(parse_reference("sha256:00").is_err());
        assert!(parse_reference("").is_err());
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn chunk_sizes_follow_the_registry_minimum() {
        assert_eq!(chunk_size(None), Some(UPLOAD_CHUNK));
        assert_eq!(chunk_size(Some("junk")), Some(UPLOAD_CHUNK));
        assert_eq!(chunk_size(Some("5242880")), Some(UPLOAD_CHUNK));
        assert_eq!(chunk_size(Some("67108864")), Some(64 << 20));
        assert_eq!(chunk_size(Some(&(UPLOAD_CHUNK_MAX + 1).to_string())), None);
    }
}
