//! Secrets and credentials.
//!
//! A [`Secret`] prints as `<redacted>` through both `Debug` and `Display`, so it can sit in any
//! struct that is logged or printed without leaking. The only way to read it is
//! [`Secret::expose`], which this crate calls only to build an `Authorization` header, a token
//! request or an auth file.

use std::fmt;

/// A password, identity token or bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Never log or print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Credentials {
    /// A username and password (sent with HTTP Basic, or to the token realm).
    Basic {
        /// The username (not secret).
        username: String,
        /// The password.
        password: Secret,
    },
    /// An identity (refresh) token, as `docker login` stores for some registries; exchanged for
    /// an access token with an OAuth2 `refresh_token` grant at the token realm.
    IdentityToken(Secret),
}

impl Credentials {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A short description for error messages: `user "alice"` or `an identity token`.
    pub fn describe(&self) -> String {
        match self {
            Credentials::Basic { username, .. } => format!("user {username:?}"),
            Credentials::IdentityToken(_) => "an identity token".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-canary");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let c = Credentials::basic("alice", "hunter2-canary");
        let dbg = format!("{c:?} {c:#?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("alice"));
        let t = Credentials::IdentityToken(Secret::new("tok-canary"));
        assert!(!format!("{t:?}").contains("canary"));
        assert_eq!(s.expose(), "hunter2-canary");
    }
}
