//! Where requests may go: registry names, origins, private addresses, redirects.

use std::net::IpAddr;

use reqwest::Url;

use super::MAX_REDIRECTS;
use crate::redact::redact_url;
use crate::{Error, Result};

/// Checks a registry name: `host`, `host:port` or `[v6]:port`, nothing else.
pub(crate) fn validate_registry(registry: &str) -> Result<()> {
    let ok = !registry.is_empty()
        && registry.len() <= 255
        && registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
        && Url::parse(&format!("https://{registry}/"))
            .is_ok_and(|u| u.path() == "/" && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "registry",
            input: registry.to_owned(),
            reason: "expected host or host:port".to_owned(),
        })
    }
}

/// Whether two URLs share scheme, host and port.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Loopback, private, link-local, unique-local, unspecified or shared addresses.
fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

fn host_is_local(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => is_local_ip(ip),
        Err(_) => bare == "localhost" || bare.ends_with(".localhost"),
    }
}

/// Why `target` may not be contacted on behalf of a registry at `origin`: a registry on a
/// public name or address may not send us to a local or private address (SSRF, T24).
pub(crate) fn private_target(origin: &Url, target: &Url) -> Option<&'static str> {
    if host_is_local(target) && !host_is_local(origin) {
        Some("a registry on a public address may not send us to a local or private address")
    } else {
        None
    }
}

#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

pub(super) fn redirect_policy(registry: Url) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(RedirectRefused(format!(
                "more than {MAX_REDIRECTS} redirects"
            )));
        }
        let next = attempt.url().clone();
        let downgrade =
            attempt.previous().iter().any(|p| p.scheme() == "https") && next.scheme() != "https";
        if downgrade {
            return attempt.error(RedirectRefused(format!(
                "refusing a redirect from https to {}",
                redact_url(&next)
            )));
        }
        let origin = attempt.previous().first().unwrap_or(&registry);
        if let Some(reason) = private_target(origin, &next) {
            return attempt.error(RedirectRefused(format!(
                "refusing a redirect to {}: {reason}",
                redact_url(&next)
            )));
        }
        attempt.follow()
    })
}
