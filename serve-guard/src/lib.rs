//! serve-guard: keeps Ray Serve's ports private to the VPC with an XDP filter, or (public mode)
//! behind a per-cluster bearer token.
//!
//! Where things live:
//! - `config`: the TOML config file and its validation.
//! - `cidr`: the VPC CIDR list: parsing, normalisation, limits.
//! - `ports`: the port policy: which ports are open, guarded or strict (Serve's).
//! - `filter`: the XDP program: loading, pinning, attaching, maps, counters.
//! - `agent`: `serve-guard run`, wiring the filter, the control socket, metrics and the proxy;
//!   systemd notifications and the SIGHUP reload; `agent::handle`, the agent as the control
//!   socket and the metrics endpoint see it.
//! - `control`: the agent's control socket (HTTP/1.1 + JSON over a Unix socket): its request and
//!   answer types (`control::api`, shared with the CLI), what it asks the agent
//!   (`control::agent_view`, a trait), server and client.
//! - `node`: the node's links and routes, and the paths around the filter they open.
//! - `store`: the CIDR file as the source of truth: revisions, atomic writes, live apply.
//! - `follow`: follows the CIDR file and the token file on disk (inotify).
//! - `admin_http`: the accept loop shared by the control socket and metrics endpoints.
//! - `metrics`: the Prometheus /metrics and /ready endpoint.
//! - `token`: public mode's token file, and its source that publishes each new set to the proxy.
//! - `proxy_supervisor`: public mode's proxy run as an unprivileged process: binding its
//!   listeners, starting, feeding and restarting it. The proxy itself (the request path, its
//!   config section, `Token`/`TokenSet`, its metrics, the process's side of the socketpair, the
//!   tracing subscriber both share) is the `serve_guard_proxy` crate, which imports nothing of
//!   this one.
//! - `cli`: one file per verb.
//!
//! Layers: a module imports (`crate::`) only from its own layer's neighbours named here or from
//! the layers below it, never from above.
//! 1. `cli`
//! 2. `agent`
//! 3. the agent's subsystems: `control` (which presents `filter`'s state), `metrics` (which asks
//!    the agent through `control::agent_view`, the declared seam), `follow`, `proxy_supervisor`
//! 4. `filter` (which updates the maps for `store` through `store::CidrSink`, the declared
//!    seam), `token`
//! 5. `config`, `store`
//! 6. `node`, then `cidr`, `ports`, `admin_http`, `serve_guard_common`
//! 7. `serve_guard_proxy` (another crate, below all of these: any layer may use it)

#![deny(unsafe_code)]

pub mod admin_http;
pub mod agent;
pub mod cidr;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod control;
pub mod filter;
pub mod follow;
pub mod http_exchange;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod proxy_supervisor;
pub mod store;
pub mod token;
