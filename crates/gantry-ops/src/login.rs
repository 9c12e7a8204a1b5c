//! `gantry login` and `gantry logout`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use gantry_registry::{CredentialSource, Credentials, Secret};

use crate::Context;

/// Credentials given on the command line, for checking them before they are stored.
struct Given {
    username: String,
    password: Secret,
}

impl CredentialSource for Given {
    fn credentials(&self, _registry: &str) -> gantry_registry::Result<Option<Credentials>> {
        Ok(Some(Credentials::Basic {
            username: self.username.clone(),
            password: self.password.clone(),
        }))
    }
}

fn auth_file(ctx: &Context) -> PathBuf {
    ctx.registry
        .auth_file
        .clone()
        .unwrap_or_else(gantry_registry::default_auth_file)
}

/// Runs `gantry login`: reads the password from stdin, checks it against the registry, stores
/// it. Returns the file written.
pub fn login(ctx: &Context, args: &gantry_cli::LoginArgs, stdin: &mut dyn Read) -> Result<PathBuf> {
    let mut password = String::new();
    stdin
        .read_to_string(&mut password)
        .context("cannot read the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password on stdin");
    }
    let password = Secret::new(password);
    let base = crate::registry::client(ctx, None)?;
    let check = base.with_credentials(Arc::new(Given {
        username: args.username.clone(),
        password: password.clone(),
    }));
    check
        .repo(&args.registry, "", false)
        .ping()
        .with_context(|| format!("cannot log in to {}", args.registry))?;
    let file = auth_file(ctx);
    gantry_registry::login(&file, &args.registry, &args.username, password)?;
    Ok(file)
}

/// Runs `gantry logout`: removes stored credentials. Returns the file and whether there were
/// any.
pub fn logout(ctx: &Context, args: &gantry_cli::LogoutArgs) -> Result<(PathBuf, bool)> {
    let file = auth_file(ctx);
    let removed = gantry_registry::logout(&file, &args.registry)?;
    Ok((file, removed))
}
