//! serve-guard-proxy: public mode's internet-facing request path, the token-checking reverse
//! proxy in front of Ray Serve. The agent (`serve-guard`, root) runs it as a separate process
//! with no privileges (uid `proxy_user`, no capabilities, no files); this crate is everything
//! that process runs and nothing more: no aya, no filter, no CIDR store, no control socket.
//!
//! A request reaches the upstream only with the cluster's token (Authorization: Bearer, or the
//! SERVE_TOKEN cookie the API docs link sets), or when its normalised path is one of
//! `unauthenticated_paths`. The token is removed before the request goes upstream.
//!
//! - `config`: the `[public]` section of the config file (the agent parses the file and embeds
//!   it), its defaults and validation.
//! - `token`: [`token::Token`] and [`token::TokenSet`], compared in constant time, and the
//!   receiving end of the channel each new set arrives on (the token file is the agent's).
//! - `auth`: finding, checking and stripping the token; the 401s.
//! - `scrub`: the token never goes upstream, wherever else a client put it.
//! - `csrf`: cookie-authenticated unsafe requests need the proxy's own Origin.
//! - `fields`: HTTP/2 field validity (RFC 9113 §8.2.1), checked before the token.
//! - `revoke`: what a token admitted (tunnels, streams, requests in flight) ends when the token
//!   leaves the token file.
//! - `docs_link`: `?token=` → 303 + cookie.
//! - `path`: path normal form and safe redirect paths.
//! - `forward`: header hygiene, streaming, upgrades; `pool`: the upstream's HTTP/1.1
//!   keep-alive connections.
//! - `grpc`: the gRPC listener's answers.
//! - `tls`, `limits`, `admission`, `server`: listeners, limits, fair admission under
//!   many-source floods, and the accept loop.
//! - `observe`: metrics and log lines for each request's outcome; `metrics`: the figures
//!   themselves, sent to the agent as snapshots and rendered by the agent's `/metrics`.
//! - `logging`: the tracing subscriber, shared with the agent so both log alike.
//! - `worker`: the process's side: its start (the only unsafe code: adopting the inherited
//!   descriptors, dropping privileges), and the socketpair protocol shared with the agent's
//!   supervisor.
//! - `test_util` (feature `test-util`): the in-process harness of the proxy's tests.
//!
//! Layers, top down: the crate root (`Proxy`, `Handler`) and `worker` → `server` → `forward`
//! (with `pool`, `revoke`) and `admission` (which holds each connection's `ConnectionSlot`) →
//! `observe` → `config`, `token`, `metrics` → `path`, `logging`. No two modules import each
//! other, directly or around a circle (`cargo test -p xtask` checks it). Nothing here imports the
//! agent.

// Unsafe code is an error everywhere but `worker::bootstrap`, which allows it for the few calls
// the process's start must make; every other module forbids it outright.
#![deny(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod config;
pub mod csrf;
pub mod docs_link;
pub mod fields;
pub mod forward;
pub mod grpc;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod path;
pub mod pool;
pub mod reply;
pub mod revoke;
pub mod scrub;
pub mod server;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tls;
pub mod token;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{PublicConfig, PublicConfigError, Upstream};
use crate::metrics::Outcome;
use crate::token::TokenReceiver;
use auth::{Carriers, Verdict, Via};
use docs_link::CookieSettings;
use forward::{Forward, ForwardError, UpstreamClient};
use reply::{Body, plain};
use revoke::{Credential, Revocations};
use server::{ConnInfo, Listener, Shared};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] PublicConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Grpc,
}

impl Kind {
    fn metric(self) -> metrics::Listener {
        match self {
            Kind::Http => metrics::Listener::Http,
            Kind::Grpc => metrics::Listener::Grpc,
        }
    }
}

/// What the checks decided about a request.
enum Decision {
    /// The proxy answers itself (401, 403, the docs link, ...), and what that answer counts as.
    Answer(Response<Body>, Outcome),
    /// Forward upstream.
    Forward(Route),
}

/// Where and how an allowed request goes upstream.
struct Route {
    /// Path and query for the upstream: unauthenticated paths in normal form, the query
    /// without the token.
    path_and_query: PathAndQuery,
    /// A WebSocket upgrade, authenticated: the only upgrade ever forwarded.
    websocket: bool,
    /// The token that admitted the request; `None` on an unauthenticated path.
    credential: Option<Credential>,
}

/// The request target upstream: the client's own when neither the path nor the query changed
/// (a reference-counted copy, no parsing), else `path` and `query` put together. An error (a
/// normal form with characters a request target cannot hold) is answered 400.
fn target(
    original: &http::Uri,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, http::uri::InvalidUri> {
    if let Some(unchanged) = original
        .path_and_query()
        .filter(|pq| pq.path() == path && pq.query() == query)
    {
        return Ok(unchanged.clone());
    }
    let path = if path.is_empty() { "/" } else { path };
    match query {
        Some(q) if !q.is_empty() => PathAndQuery::try_from(format!("{path}?{q}")),
        _ => PathAndQuery::try_from(path),
    }
}

/// Answers the requests of one listener.
pub struct Handler {
    kind: Kind,
    /// The tokens in force, read per request: a change applies to the next request on every
    /// connection.
    tokens: TokenReceiver,
    client: UpstreamClient,
    upstream: Upstream,
    unauthenticated_paths: Vec<String>,
    cookie_max_age_secs: u64,
    external_https: bool,
    /// `external_url`'s origin: what a cookie-authenticated unsafe request must come from.
    origin: String,
    response_timeout: Duration,
    /// `[public] access_log`: one log line per forwarded request.
    access_log: bool,
    /// What tokens admitted, shared by both listeners: ended when a token is removed.
    revocations: Revocations,
}

impl Handler {
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        info: ConnInfo,
        shared: &Shared,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let decision = match fields::check(req.version(), req.headers()) {
            Err(malformed) => self.malformed(&malformed),
            Ok(()) => match self.kind {
                Kind::Http => self.check_http(&mut req, info, &shared.slot),
                Kind::Grpc => self.check_grpc(&mut req, &shared.slot),
            },
        };
        let method = req.method().clone();
        match decision {
            Decision::Answer(resp, outcome) => {
                // Only the path is logged: a query may hold the docs link's token.
                self.record(&method, req.uri().path(), outcome, &resp, info, started);
                resp
            }
            Decision::Forward(route) => {
                // Copied only when a line will be written: forwarded requests (and the
                // upstream's failures) are logged only with `access_log`.
                let path = if self.access_log {
                    req.uri().path().to_owned()
                } else {
                    String::new()
                };
                // Boxed: the forwarding future is large, and hyper moves the request's future
                // around by value; the proxy's own answers then never carry its size.
                let (resp, outcome) = Box::pin(self.send(req, info, shared, route)).await;
                self.record(&method, &path, outcome, &resp, info, started);
                resp
            }
        }
    }

    fn record(
        &self,
        method: &Method,
        path: &str,
        outcome: Outcome,
        resp: &Response<Body>,
        info: ConnInfo,
        started: std::time::Instant,
    ) {
        observe::request(
            &observe::Request {
                listener: self.kind.metric(),
                client: info.peer,
                method: method.as_str(),
                path,
                outcome,
                status: resp.status().as_u16(),
                elapsed: Some(started.elapsed()),
            },
            self.access_log,
        );
    }

    /// A malformed HTTP/2 request: never forwarded (RFC 9113 §8.1.1), refused as the listener
    /// refuses (400, or gRPC's INTERNAL, its mapping of 400).
    fn malformed(&self, malformed: &fields::MalformedField) -> Decision {
        tracing::debug!(error = %malformed, "malformed HTTP/2 request");
        let resp = match self.kind {
            Kind::Http => plain(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: a header field value starts or ends with whitespace\n",
            ),
            Kind::Grpc => grpc::malformed(),
        };
        Decision::Answer(resp, Outcome::BadRequest)
    }

    /// The path as `unauthenticated_paths` are written, when it is one of them. A path already
    /// in normal form (the usual case) is compared as it is, without building its normal form.
    fn unauthenticated_path(&self, path: &str) -> Option<std::borrow::Cow<'_, str>> {
        if self.unauthenticated_paths.is_empty() {
            return None;
        }
        if path::is_normal(path) {
            return self
                .unauthenticated_paths
                .iter()
                .find(|p| *p == path)
                .map(|p| std::borrow::Cow::Borrowed(p.as_str()));
        }
        path::normalize(path)
            .filter(|p| self.unauthenticated_paths.contains(p))
            .map(std::borrow::Cow::Owned)
    }

    /// The docs link, the token check, unauthenticated paths, upgrades and CSRF; strips the
    /// token. The one place an HTTP request's outcome is decided.
    fn check_http(
        &self,
        req: &mut Request<Incoming>,
        info: ConnInfo,
        slot: &admission::ConnectionSlot,
    ) -> Decision {
        // A reverse proxy is no tunnel to arbitrary hosts.
        if req.method() == Method::CONNECT {
            return Decision::Answer(
                plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "405 Method Not Allowed: CONNECT is not supported\n",
                ),
                Outcome::MethodNotAllowed,
            );
        }
        let tokens = self.tokens.borrow().clone();
        let secure = info.tls || self.external_https;
        let cookie = CookieSettings {
            max_age_secs: self.cookie_max_age_secs,
            secure,
        };
        if let Some(resp) = docs_link::handle(req.method(), req.uri(), &tokens, cookie) {
            let outcome = observe::outcome(&resp);
            return Decision::Answer(resp, outcome);
        }
        let verdict = auth::authenticate(
            req.headers_mut(),
            &tokens,
            Carriers::HeaderOrCookie { secure },
        );
        let public = self.unauthenticated_path(req.uri().path());
        if public.is_none() && !matches!(verdict, Verdict::Allowed(..)) {
            return Decision::Answer(auth::unauthorized(verdict), auth::outcome(verdict));
        }
        if matches!(verdict, Verdict::Allowed(..)) {
            slot.mark_authenticated();
        }
        // Forwarded: the token goes from wherever else the client put it.
        let is_token = |word: &[u8]| tokens.matches(word);
        scrub::headers(req.headers_mut(), &is_token);
        let query = req.uri().query().map(|q| scrub::query(q, &is_token));
        let query = query.as_deref();

        if let Some(public) = public {
            // Upstream sees exactly the path that was checked, and never an upgrade: without a
            // token, a tunnel would be a way past the check. Public: nothing to revoke.
            return self.forward(req.uri(), &public, query, false, None);
        }
        let websocket = forward::is_websocket_upgrade(req);
        if matches!(verdict, Verdict::Allowed(Via::Cookie, _))
            && csrf::needs_origin(req.method(), websocket)
            && !csrf::same_origin(req.headers(), &self.origin)
        {
            return Decision::Answer(csrf::forbidden(), Outcome::Forbidden);
        }
        let credential = verdict.token().map(|t| Credential::new(tokens.clone(), t));
        self.forward(req.uri(), req.uri().path(), query, websocket, credential)
    }

    /// Forward to `path` and `query`, or 400 when they make no request target.
    fn forward(
        &self,
        original: &http::Uri,
        path: &str,
        query: Option<&str>,
        websocket: bool,
        credential: Option<Credential>,
    ) -> Decision {
        match target(original, path, query) {
            Ok(path_and_query) => Decision::Forward(Route {
                path_and_query,
                websocket,
                credential,
            }),
            Err(_) => Decision::Answer(
                plain(StatusCode::BAD_REQUEST, "400 Bad Request\n"),
                Outcome::BadRequest,
            ),
        }
    }

    /// The token check on the `authorization` metadata; strips the token.
    fn check_grpc(
        &self,
        req: &mut Request<Incoming>,
        slot: &admission::ConnectionSlot,
    ) -> Decision {
        let tokens = self.tokens.borrow().clone();
        match auth::authenticate(req.headers_mut(), &tokens, Carriers::HeaderOnly) {
            Verdict::Allowed(_, token) => {
                slot.mark_authenticated();
                let is_token = |word: &[u8]| tokens.matches(word);
                scrub::headers(req.headers_mut(), &is_token);
                let credential = Credential::new(tokens.clone(), token);
                let (path, query) = (req.uri().path(), req.uri().query());
                self.forward(req.uri(), path, query, false, Some(credential))
            }
            verdict => Decision::Answer(
                grpc::unauthenticated(verdict == Verdict::Invalid),
                auth::outcome(verdict),
            ),
        }
    }

    /// The upstream's answer, or the proxy's own when forwarding failed; and what it counts as.
    async fn send(
        &self,
        req: Request<Incoming>,
        info: ConnInfo,
        shared: &Shared,
        route: Route,
    ) -> (Response<Body>, Outcome) {
        let forward = Forward {
            client: &self.client,
            upstream: &self.upstream,
            client_ip: &shared.client_ip,
            slot: &shared.slot,
            local_port: info.local.port(),
            tls: info.tls,
            response_timeout: self.response_timeout,
        };
        let grant = route.credential.map(|credential| {
            let held = match route.websocket {
                true => metrics::Revoked::Tunnel,
                false => metrics::Revoked::Stream,
            };
            self.revocations.admit(credential, held)
        });
        match forward
            .send(req, route.path_and_query, route.websocket, grant)
            .await
        {
            Ok(resp) => (resp, Outcome::Forwarded),
            Err(e) => {
                if !matches!(e, ForwardError::Revoked) {
                    tracing::warn!(upstream = %self.upstream, error = %e, "cannot forward");
                }
                let resp = match (self.kind, &e) {
                    (Kind::Http, ForwardError::Revoked) => auth::unauthorized(Verdict::Invalid),
                    (Kind::Grpc, ForwardError::Revoked) => grpc::unauthenticated(true),
                    (Kind::Http, ForwardError::Unreachable(_)) => plain(
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: the upstream (Ray Serve) is unreachable\n",
                    ),
                    (Kind::Http, ForwardError::Timeout(_)) => plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 Gateway Timeout: the upstream (Ray Serve) did not answer in time\n",
                    ),
                    (Kind::Http, ForwardError::UnexpectedUpgrade) => plain(
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: the upstream switched protocols unexpectedly\n",
                    ),
                    (Kind::Grpc, ForwardError::Timeout(_)) => grpc::status(
                        grpc::STATUS_DEADLINE_EXCEEDED,
                        "upstream did not answer in time",
                    ),
                    (Kind::Grpc, _) => {
                        grpc::status(grpc::STATUS_UNAVAILABLE, "upstream unreachable")
                    }
                };
                (resp, e.outcome())
            }
        }
    }
}

/// The proxy with its listeners bound, ready to serve.
pub struct Proxy {
    http: Listener,
    grpc: Option<Listener>,
    local_addr: SocketAddr,
    grpc_local_addr: Option<SocketAddr>,
    tls: Option<tls::TlsFiles>,
    config: PublicConfig,
    /// Ends what removed tokens admitted; runs while the proxy serves.
    sweeper: revoke::Sweeper,
}

/// The listening sockets, bound before anything is served. The agent binds them and hands
/// them to the proxy process, which could not bind a privileged port itself.
pub struct Sockets {
    pub http: std::net::TcpListener,
    pub grpc: Option<std::net::TcpListener>,
}

impl Sockets {
    /// Binds `listen` and, if set, `grpc_listen`.
    pub fn bind(config: &PublicConfig) -> Result<Sockets, ProxyError> {
        let bind = |addr: SocketAddr, what| {
            std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind {
                addr,
                what,
                source,
            })
        };
        Ok(Sockets {
            http: bind(config.listen, "public listen")?,
            grpc: config
                .grpc_listen
                .map(|addr| bind(addr, "grpc_listen"))
                .transpose()?,
        })
    }
}

impl Proxy {
    /// Validates `config`, loads the TLS files and binds the listeners, so that every error
    /// shows before anything is served. (In-process; the agent runs [`worker`] instead.)
    pub async fn bind(config: &PublicConfig, tokens: TokenReceiver) -> Result<Proxy, ProxyError> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::TlsFiles::load(cert, key)?),
            _ => None,
        };
        Proxy::with_sockets(config, tokens, Sockets::bind(config)?, tls)
    }

    /// The proxy on sockets bound elsewhere, with TLS material loaded elsewhere: what the proxy
    /// process runs with. Reads no files.
    pub fn with_sockets(
        config: &PublicConfig,
        tokens: TokenReceiver,
        sockets: Sockets,
        tls: Option<tls::TlsFiles>,
    ) -> Result<Proxy, ProxyError> {
        config.validate()?;
        let (revocations, sweeper) = Revocations::new(&tokens);
        let handler = |kind, upstream: Upstream| {
            Arc::new(Handler {
                kind,
                tokens: tokens.clone(),
                client: forward::client(&config.limits, &upstream, kind == Kind::Grpc),
                upstream,
                unauthenticated_paths: config.unauthenticated_paths.clone(),
                cookie_max_age_secs: config.cookie_max_age.as_secs(),
                external_https: config.external_url().is_https(),
                origin: config.external_url().origin(),
                response_timeout: config.limits.upstream_response_timeout,
                access_log: config.access_log,
                revocations: revocations.clone(),
            })
        };
        let listener = |std: std::net::TcpListener, addr: SocketAddr, what| {
            let io = |source| ProxyError::Bind { addr, what, source };
            std.set_nonblocking(true).map_err(io)?;
            let local = std.local_addr().map_err(io)?;
            Ok::<_, ProxyError>((TcpListener::from_std(std).map_err(io)?, local))
        };
        let (tcp, local_addr) = listener(sockets.http, config.listen, "public listen")?;
        let http = Listener {
            tcp,
            tls: tls.clone(),
            handler: handler(Kind::Http, config.upstream.clone()),
        };
        let (grpc, grpc_local_addr) = match (sockets.grpc, config.grpc_listen) {
            (Some(std), Some(addr)) => {
                let (tcp, local) = listener(std, addr, "grpc_listen")?;
                let listener = Listener {
                    tcp,
                    tls: tls.clone(),
                    handler: handler(Kind::Grpc, config.grpc_upstream()),
                };
                (Some(listener), Some(local))
            }
            _ => (None, None),
        };
        Ok(Proxy {
            http,
            grpc,
            local_addr,
            grpc_local_addr,
            tls,
            config: config.clone(),
            sweeper,
        })
    }

    /// The TLS files both listeners serve, for SIGHUP to reload; `None` without TLS.
    pub fn tls(&self) -> Option<tls::TlsFiles> {
        self.tls.clone()
    }

    /// The HTTP listener's address (useful when `listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gRPC listener's address, when gRPC is on.
    pub fn grpc_local_addr(&self) -> Option<SocketAddr> {
        self.grpc_local_addr
    }

    /// Serves until `shutdown` completes, then drains open connections (bounded) and returns.
    pub async fn serve<F>(self, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        let limits = &self.config.limits;
        let builder = Arc::new(limits::server_builder(limits));
        // One budget for both listeners: they share the process's file descriptors.
        let admission = admission::Admission::new(admission::AdmissionLimits::from_config(limits));
        metrics::global().set_ipv6_aggregate_prefix(limits.ipv6_aggregate_prefix);
        let timing = server::Timing {
            first_request: limits.header_read_timeout,
            idle: limits.idle_timeout,
        };
        let (stop, stopped) = watch::channel(false);
        // Aborted when serving ends, after the drain: a removed token ends tunnels then too.
        let _sweeper = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(self.sweeper.run()));
        tracing::info!(
            listen = %self.local_addr,
            upstream = %self.config.upstream,
            tls = self.config.tls_enabled(),
            grpc_listen = ?self.grpc_local_addr,
            "public proxy serving"
        );
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(server::run(
            self.http,
            builder.clone(),
            admission.clone(),
            timing,
            stopped.clone(),
        ));
        if let Some(grpc) = self.grpc {
            tasks.spawn(server::run(grpc, builder, admission, timing, stopped));
        }
        shutdown.await;
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("public proxy stopped");
    }
}
