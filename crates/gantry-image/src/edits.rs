//! Config edits: what `gantry image` flags and `[image.NAME]` tables change in a config.

use std::collections::BTreeMap;

use gantry_oci::{ContainerConfig, EmptyObject, ImageConfig};

use crate::Error;

/// Changes to an image config. `None` and empty collections leave the base's value alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigEdits {
    /// Replaces the entrypoint. As in a Dockerfile, setting it without `cmd` clears the base's
    /// cmd (an empty vector clears the entrypoint).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the cmd (an empty vector clears it).
    pub cmd: Option<Vec<String>>,
    /// Sets variables, merged by key with the base's (later wins, order kept).
    pub env: Vec<(String, String)>,
    /// The user (`name`, `uid`, `uid:gid`, …).
    pub user: Option<String>,
    /// The working directory (absolute).
    pub workdir: Option<String>,
    /// Adds exposed ports (`8080`, `8080/tcp`, `53/udp`).
    pub ports: Vec<String>,
    /// Adds volumes (absolute paths).
    pub volumes: Vec<String>,
    /// Sets labels (merged with the base's).
    pub labels: BTreeMap<String, String>,
    /// The stop signal (`SIGTERM`, `15`).
    pub stop_signal: Option<String>,
    /// The operating system.
    pub os: Option<String>,
    /// The CPU architecture.
    pub architecture: Option<String>,
    /// The CPU variant.
    pub variant: Option<String>,
    /// The author.
    pub author: Option<String>,
}

fn bad(field: &'static str, value: &str, reason: &str) -> Error {
    Error::InvalidSetting {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Parses `KEY=VALUE` (the value may be empty or contain `=`).
pub fn parse_env(item: &str) -> Result<(String, String), Error> {
    let (k, v) = item
        .split_once('=')
        .ok_or_else(|| bad("env", item, "expected KEY=VALUE"))?;
    // Name the whole item: for `=x` the key alone would be an empty string.
    check_env_key(k).map_err(|reason| bad("env", item, reason))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn validate_env_key(k: &str) -> Result<(), Error> {
    check_env_key(k).map_err(|reason| bad("env", k, reason))
}

fn check_env_key(k: &str) -> Result<(), &'static str> {
    if k.is_empty() || k.contains(['=', '\0']) || k.chars().any(char::is_whitespace) {
        return Err("names must be non-empty, without '=', NUL or spaces");
    }
    Ok(())
}

/// Checks a label key: non-empty, printable, no spaces or `=` (reverse-DNS is recommended).
pub fn validate_label_key(k: &str) -> Result<(), Error> {
    if k.is_empty()
        || k.len() > 255
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':'))
        || !k.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad(
            "label key",
            k,
            "keys start with a letter or digit and use letters, digits, '.', '-', '_', '/', ':'",
        ));
    }
    Ok(())
}

/// Normalises a port: `8080` → `8080/tcp`; protocol tcp, udp or sctp; number 1–65535.
pub fn normalize_port(p: &str) -> Result<String, Error> {
    let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let n: u32 = num
        .parse()
        .map_err(|_| bad("port", p, "expected PORT or PORT/PROTOCOL, e.g. 8080/tcp"))?;
    if !(1..=65535).contains(&n) {
        return Err(bad("port", p, "port numbers are 1-65535"));
    }
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("port", p, "the protocol is tcp, udp or sctp"));
    }
    Ok(format!("{n}/{proto}"))
}

fn validate_abs(field: &'static str, p: &str) -> Result<(), Error> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(bad(field, p, "must be an absolute path"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(bad(field, p, "must not contain '..'"));
    }
    Ok(())
}

fn validate_signal(s: &str) -> Result<(), Error> {
    let ok = s.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
        || (s.starts_with("SIG")
            && s.len() > 3
            && s[3..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'));
    if !ok {
        return Err(bad(
            "stop signal",
            s,
            "expected a name such as SIGTERM or a number",
        ));
    }
    Ok(())
}

impl ConfigEdits {
    /// Validates every value without applying anything.
    pub fn validate(&self) -> Result<(), Error> {
        for (k, _) in &self.env {
            validate_env_key(k)?;
        }
        for k in self.labels.keys() {
            validate_label_key(k)?;
        }
        for p in &self.ports {
            normalize_port(p)?;
        }
        for v in &self.volumes {
            validate_abs("volume", v)?;
        }
        if let Some(w) = &self.workdir {
            validate_abs("workdir", w)?;
        }
        if let Some(u) = &self.user
            && (u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(bad("user", u, "expected USER, UID, USER:GROUP or UID:GID"));
        }
        if let Some(s) = &self.stop_signal {
            validate_signal(s)?;
        }
        Ok(())
    }

    /// Applies the edits to `config`.
    pub fn apply(&self, config: &mut ImageConfig) -> Result<(), Error> {
        self.validate()?;
        if let Some(os) = &self.os {
            config.os.clone_from(os);
        }
        if let Some(a) = &self.architecture {
            config.architecture = gantry_oci::normalize_arch(a).to_owned();
        }
        if self.variant.is_some() {
            config.variant.clone_from(&self.variant);
        }
        if self.author.is_some() {
            config.author.clone_from(&self.author);
        }
        let c = config.config.get_or_insert_with(ContainerConfig::default);
        if let Some(ep) = &self.entrypoint {
            c.entrypoint = (!ep.is_empty()).then(|| ep.clone());
            if self.cmd.is_none() {
                c.cmd = None;
            }
        }
        if let Some(cmd) = &self.cmd {
            c.cmd = (!cmd.is_empty()).then(|| cmd.clone());
        }
        if !self.env.is_empty() {
            let env = c.env.get_or_insert_with(Vec::new);
            for (k, v) in &self.env {
                let item = format!("{k}={v}");
                let prefix = format!("{k}=");
                match env.iter_mut().find(|e| e.starts_with(&prefix) || **e == *k) {
                    Some(slot) => *slot = item,
                    None => env.push(item),
                }
            }
        }
        if self.user.is_some() {
            c.user.clone_from(&self.user);
        }
        if self.workdir.is_some() {
            c.working_dir.clone_from(&self.workdir);
        }
        for p in &self.ports {
            c.exposed_ports
                .get_or_insert_with(BTreeMap::new)
                .insert(normalize_port(p)?, EmptyObject);
        }
        for v in &self.volumes {
            c.volumes
                .get_or_insert_with(BTreeMap::new)
                .insert(v.clone(), EmptyObject);
        }
        if !self.labels.is_empty() {
            let labels = c.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &self.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        if self.stop_signal.is_some() {
            c.stop_signal.clone_from(&self.stop_signal);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ImageConfig {
        let mut c = ImageConfig::new("linux", "amd64");
        c.config = Some(ContainerConfig {
            env: Some(vec!["PATH=/usr/bin".into(), "A=1".into()]),
            cmd: Some(vec!["/bin/sh".into()]),
            labels: Some([("keep".to_owned(), "1".to_owned())].into()),
            ..Default::default()
        });
        c
    }

    #[test]
    fn env_merges_by_key_and_entrypoint_clears_cmd() {
        let mut c = base();
        let edits = ConfigEdits {
            env: vec![parse_env("A=2").unwrap(), parse_env("B=x=y").unwrap()],
            entrypoint: Some(vec!["/app".into()]),
            labels: [("new".to_owned(), "2".to_owned())].into(),
            ports: vec!["8080".into(), "53/UDP".into()],
            ..Default::default()
        };
        edits.apply(&mut c).unwrap();
        let cc = c.config.unwrap();
        assert_eq!(cc.env.unwrap(), ["PATH=/usr/bin", "A=2", "B=x=y"]);
        assert_eq!(cc.entrypoint.unwrap(), ["/app"]);
        assert_eq!(cc.cmd, None);
        assert_eq!(cc.labels.unwrap().len(), 2);
        let ports: Vec<String> = cc.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, ["53/udp", "8080/tcp"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_env("NOEQUALS").is_err());
        // The error names the whole item, not just its (empty) key.
        let e = parse_env("=x").unwrap_err().to_string();
        assert!(e.contains("\"=x\""), "{e}");
        assert!(normalize_port("0").is_err());
        assert!(normalize_port("70000/tcp").is_err());
        assert!(normalize_port("80/icmp").is_err());
        assert!(validate_label_key("").is_err());
        assert!(validate_label_key("has space").is_err());
        assert!(validate_label_key("org.opencontainers.image.source").is_ok());
        let e = ConfigEdits {
            volumes: vec!["/../../etc".into()],
            ..Default::default()
        };
        assert!(e.validate().is_err());
        let e = ConfigEdits {
            workdir: Some("relative".into()),
            ..Default::default()
        };
        assert!(e.validate().is_err());
        let e = ConfigEdits {
            stop_signal: Some("TERM".into()),
            ..Default::default()
        };
        assert!(e.validate().is_err());
    }
}
