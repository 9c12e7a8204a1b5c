//! How transport failures read in messages.

use reqwest::Url;

use crate::redact::scrub_urls;

/// An error's message with its sources, every URL in it redacted.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    scrub_urls(&s)
}

/// What to do about a TLS failure: a plain-HTTP server answering a TLS handshake, or a
/// certificate from an unknown authority.
pub(super) fn tls_hint(detail: &str, url: &Url) -> Option<String> {
    if url.scheme() != "https" {
        return None;
    }
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return None,
    };
    let text = detail.to_ascii_lowercase();
    if text.contains("invalidcontenttype") || text.contains("corrupt message") {
        Some(format!(
            "{host} does not speak TLS; if it is a plain-HTTP registry, mark it insecure with \
             --insecure-registry {host} or settings.insecure-registries"
        ))
    } else if text.contains("certificate") {
        Some(format!(
            "to trust a private CA, give it with --registry-ca {host}=FILE, settings.registry-ca \
             or /etc/containers/certs.d/{host}/ca.crt"
        ))
    } else {
        None
    }
}
