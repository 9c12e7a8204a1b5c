//! The glue between commands and gantry-transport: a registry client configured from the
//! command line and the project, and a [`Transfer`] that reports progress through the
//! command's reporter.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use gantry_project::Project;
use gantry_registry::{AuthFiles, Client, RegistryConfig};
use gantry_store::Store;
use gantry_transport::Transfer;

use crate::Context;

/// A registry client for the command line's options and, if given, a project's settings.
pub fn client(ctx: &Context, project: Option<&Project>) -> Result<Client> {
    let mut config = RegistryConfig::default();
    config
        .insecure
        .extend(ctx.registry.insecure.iter().cloned());
    config.auth_file.clone_from(&ctx.registry.auth_file);
    for (host, file) in &ctx.registry.ca_files {
        config
            .ca_files
            .entry(host.clone())
            .or_default()
            .push(file.clone());
    }
    if let Some(p) = project {
        config
            .insecure
            .extend(p.settings.insecure_registries.iter().cloned());
        for (host, file) in &p.settings.registry_ca {
            config
                .ca_files
                .entry(host.clone())
                .or_default()
                .push(file.clone());
        }
    }
    let timeout = match ctx.registry.timeout {
        Some(t) if !(1..=gantry_project::MAX_REGISTRY_TIMEOUT).contains(&t) => bail!(
            "--registry-timeout / GANTRY_REGISTRY_TIMEOUT {t}: expected seconds from 1 to {}",
            gantry_project::MAX_REGISTRY_TIMEOUT
        ),
        Some(t) => Some(t),
        None => project.and_then(|p| p.settings.registry_timeout),
    };
    if let Some(t) = timeout {
        config.request_timeout = Duration::from_secs(t);
    }
    let credentials = Arc::new(AuthFiles::new(config.auth_file.clone()));
    Ok(Client::new(config, credentials)?)
}

impl gantry_transport::Reporter for Context {
    fn blob_progress(&self, label: &str, total: u64) -> Box<dyn gantry_layer::Progress> {
        self.reporter.layer_progress(label, total)
    }
}

impl Context {
    /// Image transfers through `store` and `client` (needed only when a registry is
    /// involved), reporting progress here, following a layout's `base.name` as the command line
    /// says.
    pub(crate) fn transfer<'a>(
        &'a self,
        store: &'a Store,
        client: Option<&'a Client>,
    ) -> Transfer<'a> {
        Transfer {
            store,
            client,
            reporter: self,
            follow_base_name: self.registry.follow_base_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoReporter;

    #[test]
    fn registry_timeout_comes_from_the_flag_then_the_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("gantry.toml");
        std::fs::write(&file, "[settings]\nregistry-timeout = 300\n").unwrap();
        let project = Project::load(&file).unwrap();
        let mut ctx =
            Context::new(Some(tmp.path().join("home")), Some(1), Arc::new(NoReporter)).unwrap();
        let timeout =
            |ctx: &Context, p: Option<&Project>| client(ctx, p).unwrap().config().request_timeout;
        assert_eq!(
            timeout(&ctx, None),
            gantry_registry::DEFAULT_REQUEST_TIMEOUT
        );
        assert_eq!(timeout(&ctx, Some(&project)), Duration::from_secs(300));
        ctx.registry.timeout = Some(7);
        assert_eq!(timeout(&ctx, Some(&project)), Duration::from_secs(7));
        ctx.registry.timeout = Some(0);
        let e = client(&ctx, None).unwrap_err().to_string();
        assert!(e.contains("--registry-timeout"), "{e}");
    }
}
