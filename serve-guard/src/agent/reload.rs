//! SIGHUP: re-reads every input that can change while the agent runs (the CIDR file, the token
//! file, the TLS certificate and key), logs what changed, and keeps what is in force for any input
//! that is now invalid. Never stops the agent. The config file itself is read at start only
//! (mode, interfaces and listeners cannot change under a running filter): restart for those.

use std::sync::Arc;

use crate::proxy::tls::{TlsFiles, TlsReload};
use crate::store::Store;
use crate::token::TokenSource;

/// What SIGHUP re-reads.
pub struct Reloadable {
    pub cidrs: Arc<Store>,
    /// Public mode only.
    pub tokens: Option<Arc<TokenSource>>,
    /// Public mode with TLS only.
    pub tls: Option<TlsFiles>,
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
    if let Some(tokens) = &inputs.tokens {
        let source = Arc::clone(tokens);
        match tokio::task::spawn_blocking(move || source.reload()).await {
            Ok(Ok(change)) => {
                tracing::info!("SIGHUP: token file {}: {change}", tokens.path().display())
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
                tracing::info!("SIGHUP: TLS certificate and key: new chain for new connections")
            }
            Ok(TlsReload::Unchanged) => {
                tracing::info!("SIGHUP: TLS certificate and key: unchanged")
            }
            Err(e) => {
                tracing::error!("SIGHUP: {e}; the certificate in use stays");
                failed += 1;
            }
        }
    }
    failed
}
