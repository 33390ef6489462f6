//! What the control socket asks the running agent for, besides the CIDR store. A trait so the
//! server does not depend on how the agent holds its filter and token (and so the socket can be
//! tested without a kernel).

use std::future::Future;
use std::pin::Pin;

pub type ViewFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors here are messages for the operator; the server answers them with a 500.
pub trait AgentView: Send + Sync + 'static {
    /// `private` or `public`.
    fn mode(&self) -> &str;
    /// Interfaces with their XDP mode, ports, audit flag, pinned state.
    fn filter_status(&self) -> ViewFuture<'_, Result<serde_json::Value, String>>;
    /// Counters by reason and family, summed over CPUs.
    fn stats(&self) -> ViewFuture<'_, Result<serde_json::Value, String>>;
    /// The public part of `status` (URL, token, API docs links); `None` in private mode.
    fn public_status(&self) -> ViewFuture<'_, Option<Result<serde_json::Value, String>>>;
    /// Re-reads the token file; `None` when there is no token (private mode).
    fn reload_token(&self) -> Option<Result<(), String>>;
    /// Paths around the filter on this node (tunnels, SRv6 decapsulation, rp_filter off).
    fn exposures(&self) -> Result<Vec<crate::node::Exposure>, String>;
    /// Re-reads of the token file that found it invalid; `None` in private mode.
    fn token_reload_errors(&self) -> Option<u64> {
        None
    }
}

/// The running agent as the control socket and the metrics endpoint see it.
pub struct AgentHandle {
    pub config: std::sync::Arc<crate::config::Config>,
    pub filter: crate::agent::SharedFilter,
    /// The public-mode token source the proxy follows; `None` in private mode.
    pub tokens: Option<std::sync::Arc<crate::token::TokenSource>>,
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

impl AgentView for AgentHandle {
    fn mode(&self) -> &str {
        self.config.mode.name()
    }

    fn filter_status(&self) -> ViewFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move { to_json(&self.filter.lock().await.status()) })
    }

    fn stats(&self) -> ViewFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let snapshot = self.filter.lock().await.counters();
            snapshot
                .map_err(|e| e.to_string())
                .and_then(|s| to_json(&s))
        })
    }

    fn public_status(&self) -> ViewFuture<'_, Option<Result<serde_json::Value, String>>> {
        Box::pin(async move {
            if self.config.mode != crate::config::Mode::Public {
                return None;
            }
            let public = self.config.public.clone().unwrap_or_default();
            Some(
                crate::proxy::status::public_status(&public)
                    .await
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|s| to_json(&s)),
            )
        })
    }

    fn exposures(&self) -> Result<Vec<crate::node::Exposure>, String> {
        crate::node::scan(&self.config.interfaces).map_err(|e| e.to_string())
    }

    fn reload_token(&self) -> Option<Result<(), String>> {
        self.tokens
            .as_ref()
            .map(|t| t.reload().map(|_| ()).map_err(|e| e.to_string()))
    }

    fn token_reload_errors(&self) -> Option<u64> {
        self.tokens.as_ref().map(|t| t.reload_errors())
    }
}
