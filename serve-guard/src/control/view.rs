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
}
