//! Parsing of `WWW-Authenticate` challenges (RFC 9110 §11.6.1).
//!
//! A header may hold several challenges (`Basic realm="x", Bearer realm="y",service="z"`) and a
//! response may carry several headers. Parameters are `name=token` or `name="quoted \" string"`;
//! a scheme may instead be followed by a token68 (`Negotiate abc==`), which is kept as the
//! parameter `token68`. Scheme and parameter names are case-insensitive and returned in lower
//! case. The parser is lenient: it never fails and never panics, skipping what it cannot read.

use std::collections::BTreeMap;

/// One authentication challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme in lower case: `basic`, `bearer`, …
    pub scheme: String,
    /// Parameters by lower-case name. The first occurrence of a name wins.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// A parameter by (lower-case) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The `realm` parameter.
    pub fn realm(&self) -> Option<&str> {
        self.param("realm")
    }

    /// Whether this is a Basic challenge.
    pub fn is_basic(&self) -> bool {
        self.scheme == "basic"
    }

    /// Whether this is a Bearer challenge.
    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer"
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/".contains(c)
}

struct Cursor {
    chars: Vec<char>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | ',')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// A quoted string starting at the opening quote; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        let mut out = String::new();
        self.pos += 1;
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                '"' => return out,
                '\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.pos += 1;
                    }
                }
                c => out.push(c),
            }
        }
        out
    }

    /// Skips an unreadable character sequence up to the next comma.
    fn skip_junk(&mut self) {
        while let Some(c) = self.peek() {
            if c == ',' {
                break;
            }
            self.pos += 1;
        }
    }
}

/// Parses every challenge of one `WWW-Authenticate` header value.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut cur = Cursor {
        chars: header.chars().collect(),
        pos: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        cur.skip_ws_and_commas();
        if cur.peek().is_none() {
            break;
        }
        let scheme = cur.take_while(is_tchar);
        if scheme.is_empty() {
            // Not a token where a scheme should start: skip to the next comma.
            cur.pos += 1;
            cur.skip_junk();
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        cur.skip_ws();
        // `Scheme token68`: token68 characters, optional '=' padding, then the end or a comma.
        // A bare word without '=' or token68-only characters is a new scheme instead.
        let save = cur.pos;
        let t68 = cur.take_while(is_token68_char);
        let eqs = cur.take_while(|c| c == '=');
        cur.skip_ws();
        let at_end = matches!(cur.peek(), None | Some(','));
        if !t68.is_empty() && at_end && (!eqs.is_empty() || !t68.chars().all(is_tchar)) {
            challenge
                .params
                .insert("token68".to_owned(), format!("{t68}{eqs}"));
            out.push(challenge);
            continue;
        }
        cur.pos = save;
        // auth-params
        loop {
            cur.skip_ws_and_commas();
            let start = cur.pos;
            let name = cur.take_while(is_tchar);
            if name.is_empty() {
                if cur.peek().is_some() {
                    cur.pos += 1;
                    cur.skip_junk();
                    continue;
                }
                break;
            }
            cur.skip_ws();
            if cur.peek() != Some('=') {
                // A new challenge starts with this token.
                cur.pos = start;
                break;
            }
            cur.pos += 1;
            cur.skip_ws();
            let value = match cur.peek() {
                Some('"') => cur.quoted(),
                _ => cur.take_while(is_tchar_or_slash),
            };
            challenge
                .params
                .entry(name.to_ascii_lowercase())
                .or_insert(value);
        }
        out.push(challenge);
    }
    out
}

/// Unquoted parameter values in the wild carry characters outside `tchar` (`realm=https://x/y`).
fn is_tchar_or_slash(c: char) -> bool {
    is_tchar(c) || matches!(c, '/' | ':' | '=' | '@' | '?' | ';')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str) -> Challenge {
        let v = parse_challenges(h);
        assert_eq!(v.len(), 1, "{h}: {v:?}");
        v.into_iter().next().unwrap()
    }

    #[test]
    fn docker_hub_bearer() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert!(c.is_bearer());
        assert_eq!(c.realm(), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn basic_and_case() {
        let c = one(r#"BASIC Realm="basic-realm""#);
        assert!(c.is_basic());
        assert_eq!(c.realm(), Some("basic-realm"));
        assert!(one("Basic").is_basic());
    }

    #[test]
    fn several_challenges_and_spaces() {
        let v = parse_challenges(
            r#"Basic realm="a, b", Bearer  realm = "https://t/x" , service=reg, error="invalid_token""#,
        );
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].realm(), Some("a, b"));
        assert!(v[1].is_bearer());
        assert_eq!(v[1].realm(), Some("https://t/x"));
        assert_eq!(v[1].param("service"), Some("reg"));
        assert_eq!(v[1].param("error"), Some("invalid_token"));
    }

    #[test]
    fn escapes_and_unterminated_quotes() {
        let c = one(r#"Bearer realm="a\"b\\c",scope="x"#);
        assert_eq!(c.realm(), Some(r#"a"b\c"#));
        assert_eq!(c.param("scope"), Some("x"));
    }

    #[test]
    fn unquoted_urls_and_token68() {
        let c = one("Bearer realm=https://auth.example/token?x=1,service=s");
        assert_eq!(c.realm(), Some("https://auth.example/token?x=1"));
        assert_eq!(c.param("service"), Some("s"));
        let v = parse_challenges("Negotiate abc+/==, Basic realm=r");
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].param("token68"), Some("abc+/=="));
        assert!(v[1].is_basic());
        let v = parse_challenges("Negotiate, Basic");
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn duplicate_params_first_wins_and_garbage_is_skipped() {
        let c = one(r#"Bearer realm="one", realm="two""#);
        assert_eq!(c.realm(), Some("one"));
        let v = parse_challenges(r#"=== ,"x", Bearer realm="r""#);
        assert!(
            v.iter().any(|c| c.is_bearer() && c.realm() == Some("r")),
            "{v:?}"
        );
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(" , ,").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn never_panics_on_challenge_like_input(s in r#"[A-Za-z ,="\\=/:+]{0,64}"#) {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn quoted_values_roundtrip(v in r#"[ -~]{0,40}"#) {
            let quoted = v.replace('\\', "\\\\").replace('"', "\\\"");
            let c = parse_challenges(&format!("Bearer realm=\"{quoted}\",service=x"));
            proptest::prop_assert_eq!(c.len(), 1);
            proptest::prop_assert_eq!(c[0].realm(), Some(v.as_str()));
            proptest::prop_assert_eq!(c[0].param("service"), Some("x"));
        }
    }
}
