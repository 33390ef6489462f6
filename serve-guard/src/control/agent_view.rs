//! The seam between the control socket (and the metrics endpoint) and the running agent: what
//! they ask the agent for, besides the CIDR store. A trait so that control/ and metrics/ do not
//! depend on how the agent holds its filter and token (the agent implements it, in
//! `agent::handle`), and so the socket can be tested without a kernel.
//!
//! Answers are the domains' own types and errors; the server decides their shape on the wire
//! (`super::api`).

use crate::config::Mode;
use crate::control::public_status::PublicStatus;
use crate::filter::{CounterSnapshot, FilterError, FilterStatus};
use crate::node::{AuditError, Exposure, ListenerAudit, ScanError};
use crate::token::TokenError;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub type ViewFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a source address is in the allow-list.
pub type Allowed<'a> = dyn Fn(IpAddr) -> bool + Send + Sync + 'a;

/// The running agent as the control socket and the metrics endpoint see it. Errors are the
/// operator's to read: the server answers them with a 500 and their text.
pub trait AgentView: Send + Sync + 'static {
    fn mode(&self) -> Mode;
    /// Interfaces with their XDP mode, ports, audit flag, program.
    fn filter_status(&self) -> ViewFuture<'_, FilterStatus>;
    /// Counters by reason and family, summed over CPUs.
    fn stats(&self) -> ViewFuture<'_, Result<CounterSnapshot, FilterError>>;
    /// The public part of `status` (URL, token, API docs links); `None` in private mode. What
    /// cannot be read is reported inside it.
    fn public_status(&self) -> ViewFuture<'_, Option<PublicStatus>>;
    /// Re-reads the token file; `None` when there is no token (private mode).
    fn reload_token(&self) -> Option<Result<(), TokenError>>;
    /// Paths around the filter on this node (tunnels, SRv6 decapsulation, rp_filter off).
    fn exposures(&self) -> Result<Vec<Exposure>, ScanError>;
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
