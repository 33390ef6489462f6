//! serve-guard: keeps Ray Serve's ports private to the VPC with an XDP filter, or (public mode)
//! behind a per-cluster bearer token.
//!
//! Where things live:
//! - `config`: the TOML config file and its validation.
//! - `cidr`: the VPC CIDR list: parsing, normalisation, limits.
//! - `ports`: the port policy: which ports are open, guarded or strict (Serve's).
//! - `filter`: the XDP program: loading, pinning, attaching, maps, counters.
//! - `agent`: `serve-guard run`, wiring the filter, the control socket, metrics and the proxy;
//!   systemd notifications and the SIGHUP reload.
//! - `control`: the agent's control socket (HTTP/1.1 + JSON over a Unix socket), server and client.
//! - `node`: the node's links and routes, and the paths around the filter they open.
//! - `store`: the CIDR file as the source of truth: revisions, atomic writes, live apply.
//! - `watch`: follows the CIDR file and the token file on disk (inotify).
//! - `admin_http`: the accept loop shared by the control socket and metrics endpoints.
//! - `metrics`: the Prometheus /metrics and /ready endpoint.
//! - `token`, `proxy`: public mode, the cluster's tokens (the file, its source on the agent side)
//!   and the token-checking reverse proxy.
//! - `logging`: the tracing subscriber (RUST_LOG / --log-level).
//! - `cli`: one file per verb.

pub mod admin_http;
pub mod agent;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod control;
pub mod filter;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod proxy;
pub mod store;
pub mod token;
pub mod watch;
