//! The agent's control socket: HTTP/1.1 + JSON over a Unix socket (mode 0600, root), so the CLI
//! and `curl --unix-socket` drive the same routes:
//!
//! | route                    | body              | answer                       |
//! |--------------------------|-------------------|------------------------------|
//! | `GET /v1/status`         |                   | [`StatusReport`]             |
//! | `GET /v1/stats`          |                   | [`StatsReport`]              |
//! | `GET /v1/cidrs`          |                   | [`crate::store::Listing`]    |
//! | `POST /v1/cidrs/add`     | [`CidrsRequest`]  | [`crate::store::Outcome`]    |
//! | `POST /v1/cidrs/remove`  | [`CidrsRequest`]  | [`crate::store::Outcome`]    |
//! | `PUT /v1/cidrs`          | [`ReplaceRequest`]| [`crate::store::Outcome`]    |
//! | `POST /v1/cidrs/reload`  |                   | [`crate::store::Outcome`]    |
//! | `POST /v1/token/reload`  |                   | [`TokenReloaded`]            |
//! | `GET /v1/mode`           |                   | [`ModeReport`]               |
//! | `PUT /v1/mode`           | anything          | 409: the mode is fixed       |
//!
//! Errors are [`ErrorBody`] (`{"error": "..."}`) with a message that names the bad input.
//!
//! - `api`: the request and answer types, shared by the agent and the CLI;
//! - `public_status`: the public-mode part of `status` (URL, token, API docs links), built by
//!   the agent or, without one, by the CLI; `serve_routes` reads Serve's route table for it;
//! - `agent_view`: what the server asks the running agent (a trait the agent implements);
//! - `server`, `client`: the two ends of the socket.

pub mod agent_view;
pub mod api;
pub mod client;
pub mod public_status;
pub mod serve_routes;
pub mod server;

pub use api::{
    AgentInfo, CidrSummary, CidrsRequest, CounterRow, ErrorBody, FilterReport, FilterSource,
    ModeReport, PinnedFilter, PinnedInterface, ReplaceRequest, RunningFilter, StatsReport,
    StatusReport, TokenReloaded,
};

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

#[cfg(test)]
mod tests;
