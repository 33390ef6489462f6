//! The agent's control socket: HTTP/1.1 + JSON over a Unix socket (mode 0600, root), so the CLI
//! and `curl --unix-socket` drive the same routes:
//!
//! | route                    | body              | answer                       |
//! |--------------------------|-------------------|------------------------------|
//! | `GET /v1/status`         |                   | [`StatusReport`]             |
//! | `GET /v1/stats`          |                   | the filter's counters        |
//! | `GET /v1/cidrs`          |                   | [`crate::store::Listing`]    |
//! | `POST /v1/cidrs/add`     | [`CidrsRequest`]  | [`crate::store::Outcome`]    |
//! | `POST /v1/cidrs/remove`  | [`CidrsRequest`]  | [`crate::store::Outcome`]    |
//! | `PUT /v1/cidrs`          | [`ReplaceRequest`]| [`crate::store::Outcome`]    |
//! | `POST /v1/cidrs/reload`  |                   | [`crate::store::Outcome`]    |
//! | `POST /v1/token/reload`  |                   | `{"reloaded": true}`         |
//! | `PUT /v1/mode`           | anything          | 409: the mode is fixed       |
//!
//! Errors are `{"error": "..."}` with a message that names the bad input.

pub mod client;
pub mod server;
pub mod view;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest request body: a full list at the largest `max_cidrs` (2 x 2^20 CIDRs) as JSON-escaped
/// file text fits.
pub const MAX_BODY_BYTES: usize = 128 * 1024 * 1024;
/// Largest answer the client reads (a full `cidr list --json`).
pub const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// A client must send its request head within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may live, request and answer included. A full-list replace writes and
/// fsyncs the file and rewrites the maps (2 x 2^20 entries at the largest `max_cidrs`, a few
/// seconds); that takes well under this.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the client waits for a connection and an answer.
pub const CLIENT_TIMEOUT: Duration = CONNECTION_TIMEOUT;
/// Most control connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Mode of the socket's directory when the agent creates it.
pub const SOCKET_DIR_MODE: u32 = 0o700;
/// Mode of the socket: only root may change the allow-list.
pub const SOCKET_MODE: u32 = 0o600;

/// Routes, shared by server and client.
pub mod routes {
    pub const STATUS: &str = "/v1/status";
    pub const STATS: &str = "/v1/stats";
    pub const CIDRS: &str = "/v1/cidrs";
    pub const CIDRS_ADD: &str = "/v1/cidrs/add";
    pub const CIDRS_REMOVE: &str = "/v1/cidrs/remove";
    pub const CIDRS_RELOAD: &str = "/v1/cidrs/reload";
    pub const TOKEN_RELOAD: &str = "/v1/token/reload";
    pub const MODE: &str = "/v1/mode";
}

/// Body of `cidr add` and `cidr remove`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CidrsRequest {
    pub cidrs: Vec<String>,
    /// Refuse the change unless the list is at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// Allow an entry that allows every source (`0.0.0.0/0`, `::/0`); ignored by remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_everyone: bool,
}

/// Body of `cidr replace`: the new list in the CIDR file format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_everyone: bool,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// Answer of `POST /v1/token/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenReloaded {
    pub reloaded: bool,
}

/// The agent process, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub pid: u32,
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
    pub uptime_seconds: u64,
}

/// The CIDR list's state, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CidrSummary {
    pub file: String,
    pub revision: u64,
    pub ipv4: usize,
    pub ipv6: usize,
}

/// Answer of `GET /v1/status`. The filter and public parts are what those modules report, kept
/// as JSON so the CLI shows whatever they add.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub mode: String,
    pub agent: Option<AgentInfo>,
    pub cidrs: CidrSummary,
    pub filter: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<serde_json::Value>,
    /// Paths around the filter on the agent's node (docs/filter.md); empty when none.
    #[serde(default)]
    pub exposures: Vec<crate::node::Exposure>,
    /// Set when the exposures could not be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposures_error: Option<String>,
    /// The node's listeners beyond loopback and who outside the allow-list reaches them,
    /// sessions the port rules put at risk, what the audit cannot see; `None` when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_audit: Option<crate::node::ListenerAudit>,
    /// Set when the listeners could not be audited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_audit_error: Option<String>,
}

/// One counter of `GET /v1/stats` (the filter's counter snapshot, summed over CPUs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterRow {
    pub reason: String,
    pub family: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Answer of `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsReport {
    pub counters: Vec<CounterRow>,
}

#[cfg(test)]
mod tests;
