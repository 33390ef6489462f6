//! SIGHUP: re-reads every input that can change while the agent runs (the CIDR file, the token
//! file, the TLS certificate and key, the config file's port rules), logs what changed, and keeps
//! what is in force for any input that is now invalid. Never stops the agent. The rest of the
//! config file is read at start only (mode, interfaces and listeners cannot change under a
//! running filter): restart for those.

use std::path::PathBuf;
use std::sync::Arc;

use super::SharedFilter;
use crate::config::{Config, Overrides};
use crate::ports::PortPolicy;
use crate::store::Store;
use crate::token::TokenSource;
use serve_guard_proxy::tls::{TlsFiles, TlsReload};

/// Where the config came from, to read its port rules again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub overrides: Overrides,
}

/// The port rules: re-read from the config file, applied to the running filter.
pub struct PortRules {
    pub source: ConfigSource,
    pub filter: SharedFilter,
    /// The policy in force, shared with the exposure audit ([`super::SharedPorts`]).
    pub in_force: super::SharedPorts,
}

enum PortsReload {
    Changed(PortPolicy),
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
enum PortsReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot write the port map: {0}")]
    Filter(#[from] crate::filter::FilterError),
    #[error("the reload task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl PortRules {
    /// Reads the config file again and applies its port policy when it changed. The proxy's
    /// listeners stay open as they run (they change with a restart only). An invalid file
    /// changes nothing.
    async fn reload(&self) -> Result<PortsReload, PortsReloadError> {
        let source = self.source.clone();
        let config =
            tokio::task::spawn_blocking(move || Config::load(&source.path, &source.overrides))
                .await??;
        let mut in_force = self.in_force.lock().await;
        let mut policy = config.ports;
        policy.proxy = in_force.proxy.clone();
        if policy == *in_force {
            return Ok(PortsReload::Unchanged);
        }
        let filter = Arc::clone(&self.filter);
        let table = policy.clone();
        tokio::task::spawn_blocking(move || filter.blocking_lock().apply_ports(&table)).await??;
        *in_force = policy.clone();
        Ok(PortsReload::Changed(policy))
    }
}

/// What SIGHUP re-reads.
pub struct Reloadable {
    pub cidrs: Arc<Store>,
    /// Public mode only.
    pub tokens: Option<Arc<TokenSource>>,
    /// Public mode with TLS only.
    pub tls: Option<TlsFiles>,
    pub ports: PortRules,
}

/// How many inputs were found invalid (each is logged with its file and kept as it was).
pub async fn reload(inputs: &Reloadable) -> usize {
    let mut failed = 0;
    match inputs.cidrs.reload_from_disk().await {
        Ok(outcome) if outcome.changed => tracing::info!(
            "SIGHUP: CIDR file {}: revision {} ({} added, {} removed)",
            inputs.cidrs.cidr_file().display(),
            outcome.revision,
            outcome.added.len(),
            outcome.removed.len()
        ),
        Ok(outcome) => tracing::info!(
            "SIGHUP: CIDR file {}: unchanged (revision {})",
            inputs.cidrs.cidr_file().display(),
            outcome.revision
        ),
        // The store logged the error and counted it.
        Err(_) => failed += 1,
    }
    match inputs.ports.reload().await {
        Ok(PortsReload::Changed(policy)) => tracing::info!(
            "SIGHUP: config file {}: port rules applied: {}",
            inputs.ports.source.path.display(),
            crate::ports::describe(&policy)
        ),
        Ok(PortsReload::Unchanged) => tracing::info!(
            "SIGHUP: config file {}: port rules unchanged",
            inputs.ports.source.path.display()
        ),
        Err(e) => {
            tracing::error!(
                "SIGHUP: config file {}: {e}; the port rules in force stay",
                inputs.ports.source.path.display()
            );
            failed += 1;
        }
    }
    if let Some(tokens) = &inputs.tokens {
        let source = Arc::clone(tokens);
        match tokio::task::spawn_blocking(move || source.reload()).await {
            Ok(Ok(change)) => {
                tracing::info!("SIGHUP: token file {}: {change}", tokens.path().display());
            }
            // The source logged the error and counted it.
            Ok(Err(_)) => failed += 1,
            Err(e) => {
                tracing::error!("SIGHUP: the token reload task failed: {e}");
                failed += 1;
            }
        }
    }
    if let Some(tls) = &inputs.tls {
        match tls.reload() {
            Ok(TlsReload::Changed) => {
                tracing::info!("SIGHUP: TLS certificate and key: new chain for new connections");
            }
            Ok(TlsReload::Unchanged) => {
                tracing::info!("SIGHUP: TLS certificate and key: unchanged");
            }
            Err(e) => {
                tracing::error!("SIGHUP: {e}; the certificate in use stays");
                failed += 1;
            }
        }
    }
    failed
}
