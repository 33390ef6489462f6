//! What the control socket asks the running agent for, besides the CIDR store. A trait so the
//! server does not depend on how the agent holds its filter and token (and so the socket can be
//! tested without a kernel).

use crate::node::listeners::{AuditError, ListenerAudit, Snapshot};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub type ViewFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a source address is in the allow-list.
pub type Allowed<'a> = dyn Fn(IpAddr) -> bool + Send + Sync + 'a;

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
    /// The exposure audit of this node's sockets under the agent's port rules; `allowed` says
    /// whether a source is in the allow-list in force (the caller holds the list).
    fn listener_audit<'a>(
        &'a self,
        allowed: &'a Allowed<'a>,
    ) -> ViewFuture<'a, Result<ListenerAudit, AuditError>>;
    /// Re-reads of the token file that found it invalid; `None` in private mode.
    fn token_reload_errors(&self) -> Option<u64> {
        None
    }
}

/// The running agent as the control socket and the metrics endpoint see it.
pub struct AgentHandle {
    pub config: std::sync::Arc<crate::config::Config>,
    pub filter: crate::agent::SharedFilter,
    /// The port rules in force (SIGHUP replaces them): what the exposure audit judges by.
    pub ports: crate::agent::SharedPorts,
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

    fn listener_audit<'a>(
        &'a self,
        allowed: &'a Allowed<'a>,
    ) -> ViewFuture<'a, Result<ListenerAudit, AuditError>> {
        Box::pin(async move {
            // The socket tables and a walk of /proc/*/fd: off the async workers. The blocking
            // pool's threads are the agent's, in its network namespace.
            let snapshot = match tokio::task::spawn_blocking(Snapshot::take).await {
                Ok(taken) => taken?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(AuditError::Cancelled),
            };
            let policy = self.ports.lock().await.clone();
            Ok(snapshot.audit(&policy, allowed, self.config.audit))
        })
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
