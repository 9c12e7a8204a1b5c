//! Redaction of URLs for errors and logs.
//!
//! Query parameters outside a short allowlist (`digest mount from scope service n last`, the
//! parameters of the distribution protocol itself) are replaced by `REDACTED`, so signed-URL
//! parameters such as `X-Amz-Signature` and upload session state never appear in an error or a
//! log line. User info and fragments are dropped.

use reqwest::Url;

/// Query parameters shown as they are; every other value is redacted.
const ALLOWED_PARAMS: &[&str] = &["digest", "mount", "from", "scope", "service", "n", "last"];

/// The URL with user info and fragment removed and every query value outside the allowlist
/// replaced by `REDACTED`.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    // Only fails for URLs that cannot have user info, which then have none.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if ALLOWED_PARAMS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    "REDACTED".to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if pairs.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    u.to_string()
}

/// Redacts every `http://` or `https://` URL found in free text (error messages of lower
/// layers, which may quote the URL they failed on).
pub(crate) fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let start = match (rest.find("http://"), rest.find("https://")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | '<' | ']'))
            .unwrap_or(tail.len());
        let candidate = &tail[..end];
        match Url::parse(candidate) {
            Ok(u) => out.push_str(&redact_url(&u)),
            Err(_) => match candidate.split_once('?') {
                Some((before, _)) => {
                    out.push_str(before);
                    out.push_str("?REDACTED");
                }
                None => out.push_str(candidate),
            },
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_signed_url_parameters() {
        let u = Url::parse(
            "https://user:pw@s3.example/bucket/blob?X-Amz-Signature=canary123&X-Amz-Credential=AKIA&digest=sha256:ab#frag",
        )
        .unwrap();
        let r = redact_url(&u);
        assert!(!r.contains("canary123"), "{r}");
        assert!(!r.contains("AKIA"), "{r}");
        assert!(!r.contains("pw"), "{r}");
        assert!(!r.contains("frag"), "{r}");
        assert!(r.contains("X-Amz-Signature=REDACTED"), "{r}");
        assert!(r.contains("digest=sha256%3Aab"), "{r}");
    }

    #[test]
    fn keeps_protocol_parameters() {
        let u = Url::parse(
            "https://auth.example/token?scope=repository:a/b:pull&service=reg&n=10&last=x&mount=sha256:00&from=a/c&_state=secretstate",
        )
        .unwrap();
        let r = redact_url(&u);
        for keep in [
            "scope=repository",
            "service=reg",
            "n=10",
            "last=x",
            "mount=",
            "from=a",
        ] {
            assert!(r.contains(keep), "{keep} in {r}");
        }
        assert!(!r.contains("secretstate"));
        let plain = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert_eq!(redact_url(&plain), "http://127.0.0.1:5000/v2/");
    }

    #[test]
    fn scrubs_urls_inside_text() {
        let t = "error sending request for url (https://h.example/x?sig=canary&digest=d): reset; \
                 and http://a/b?token=zzz";
        let s = scrub_urls(t);
        assert!(!s.contains("canary") && !s.contains("zzz"), "{s}");
        assert!(
            s.contains("(https://h.example/x?sig=REDACTED&digest=d)"),
            "{s}"
        );
        assert_eq!(scrub_urls("no urls here"), "no urls here");
        assert_eq!(scrub_urls("https://[bad?x=canary"), "https://[bad?REDACTED");
    }
}
