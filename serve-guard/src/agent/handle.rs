//! The running agent as the control socket and the metrics endpoint see it: the agent's side of
//! [`AgentView`], the seam they declare. It lives here, not in control/, because it holds the
//! agent's own state (the shared filter, the port rules in force, the token source).

use super::{SharedFilter, SharedPorts};
use crate::config::{Config, Mode};
use crate::control::agent_view::{AgentView, Allowed, ViewFuture};
use crate::control::public_status::PublicStatus;
use crate::filter::{CounterSnapshot, FilterError, FilterStatus};
use crate::node::listeners::Snapshot;
use crate::node::{AuditError, Exposure, ListenerAudit, ScanError};
use crate::token::{TokenError, TokenSource};
use std::sync::Arc;

pub struct AgentHandle {
    pub config: Arc<Config>,
    pub filter: SharedFilter,
    /// The port rules in force (SIGHUP replaces them): what the exposure audit judges by.
    pub ports: SharedPorts,
    /// The public-mode token source the proxy follows; `None` in private mode.
    pub tokens: Option<Arc<TokenSource>>,
}

impl AgentView for AgentHandle {
    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn filter_status(&self) -> ViewFuture<'_, FilterStatus> {
        Box::pin(async move { self.filter.lock().await.status() })
    }

    fn stats(&self) -> ViewFuture<'_, Result<CounterSnapshot, FilterError>> {
        Box::pin(async move { self.filter.lock().await.counters() })
    }

    fn public_status(&self) -> ViewFuture<'_, Option<PublicStatus>> {
        Box::pin(async move {
            if self.config.mode != Mode::Public {
                return None;
            }
            let public = self.config.public.clone().unwrap_or_default();
            let Ok(status) = crate::control::public_status::public_status(&public).await;
            Some(status)
        })
    }

    fn exposures(&self) -> Result<Vec<Exposure>, ScanError> {
        crate::node::scan(&self.config.interfaces)
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

    fn reload_token(&self) -> Option<Result<(), TokenError>> {
        self.tokens.as_ref().map(|t| t.reload().map(|_| ()))
    }

    fn token_reload_errors(&self) -> Option<u64> {
        self.tokens.as_ref().map(|t| t.reload_errors())
    }
}
