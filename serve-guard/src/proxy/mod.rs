//! Public mode: the token-checking reverse proxy in front of Ray Serve.
//!
//! A request reaches the upstream only with the cluster's token (Authorization: Bearer, or the
//! SERVE_TOKEN cookie the API docs link sets), or when its normalised path is one of
//! `unauthenticated_paths`. The token is removed before the request goes upstream.
//!
//! - `auth`: finding, checking and stripping the token; the 401s.
//! - `scrub`: the token never goes upstream, wherever else a client put it.
//! - `csrf`: cookie-authenticated unsafe requests need the proxy's own Origin.
//! - `docs_link`: `?token=` → 303 + cookie.
//! - `path`: path normal form and safe redirect paths.
//! - `forward`: the upstream client, header hygiene, streaming, upgrades.
//! - `grpc`: the gRPC listener's answers.
//! - `tls`, `limits`, `server`: listeners, limits and the accept loop.
//! - `routes`, `status`: what `serve-guard status` shows in public mode.
//! - `worker`: the agent runs the proxy as a separate unprivileged process (no capabilities,
//!   no files); its supervisor, the channel to it, and the process's own start.

pub mod auth;
pub mod csrf;
pub mod docs_link;
pub mod forward;
pub mod grpc;
pub mod limits;
pub mod path;
pub mod reply;
pub mod routes;
pub mod scrub;
pub mod server;
pub mod status;
pub mod tls;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::public::{PublicConfig, PublicConfigError, Upstream};
use crate::token::TokenReceiver;
use auth::{Carriers, Verdict, Via};
use docs_link::CookieSettings;
use forward::{Forward, ForwardError, UpstreamClient};
use reply::{Body, plain};
use server::{ConnInfo, Listener};

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

/// What the checks decided about a request.
enum Decision {
    /// The proxy answers itself (401, 403, the docs link, ...).
    Answer(Response<Body>),
    /// Forward upstream.
    Forward(Route),
}

/// Where and how an allowed request goes upstream.
struct Route {
    /// Path and query for the upstream: unauthenticated paths in normal form, the query
    /// without the token.
    path_and_query: String,
    /// A WebSocket upgrade, authenticated: the only upgrade ever forwarded.
    websocket: bool,
}

/// `path` and `query` as one request target.
fn target(path: &str, query: Option<&str>) -> String {
    let path = if path.is_empty() { "/" } else { path };
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
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
}

impl Handler {
    async fn handle(&self, mut req: Request<Incoming>, info: ConnInfo) -> Response<Body> {
        let method = req.method().clone();
        // Only the path is logged: a query may hold the docs link's token.
        let path = req.uri().path().to_owned();
        let decision = match self.kind {
            Kind::Http => self.check_http(&mut req, info),
            Kind::Grpc => self.check_grpc(&mut req),
        };
        let resp = match decision {
            Decision::Answer(resp) => resp,
            Decision::Forward(route) => self.send(req, info, route).await,
        };
        tracing::debug!(peer = %info.peer, %method, %path, status = resp.status().as_u16(), "request");
        resp
    }

    /// The docs link, the token check, unauthenticated paths, upgrades and CSRF; strips the
    /// token. The one place an HTTP request's outcome is decided.
    fn check_http(&self, req: &mut Request<Incoming>, info: ConnInfo) -> Decision {
        // A reverse proxy is no tunnel to arbitrary hosts.
        if req.method() == Method::CONNECT {
            return Decision::Answer(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: CONNECT is not supported\n",
            ));
        }
        let tokens = self.tokens.borrow().clone();
        let secure = info.tls || self.external_https;
        let cookie = CookieSettings {
            max_age_secs: self.cookie_max_age_secs,
            secure,
        };
        if let Some(resp) = docs_link::handle(req.method(), req.uri(), &tokens, cookie) {
            return Decision::Answer(resp);
        }
        let verdict = auth::authenticate(
            req.headers_mut(),
            &tokens,
            Carriers::HeaderOrCookie { secure },
        );
        let is_token = |word: &[u8]| tokens.matches(word);
        scrub::headers(req.headers_mut(), &is_token);
        let query = req.uri().query().map(|q| scrub::query(q, &is_token));
        let query = query.as_deref();

        let public =
            path::normalize(req.uri().path()).filter(|p| self.unauthenticated_paths.contains(p));
        if let Some(public) = public {
            // Upstream sees exactly the path that was checked, and never an upgrade: without a
            // token, a tunnel would be a way past the check.
            return Decision::Forward(Route {
                path_and_query: target(&public, query),
                websocket: false,
            });
        }
        let Verdict::Allowed(via) = verdict else {
            return Decision::Answer(auth::unauthorized(verdict));
        };
        let websocket = forward::is_websocket_upgrade(req);
        if via == Via::Cookie
            && csrf::needs_origin(req.method(), websocket)
            && !csrf::same_origin(req.headers(), &self.origin)
        {
            return Decision::Answer(csrf::forbidden());
        }
        Decision::Forward(Route {
            path_and_query: target(req.uri().path(), query),
            websocket,
        })
    }

    /// The token check on the `authorization` metadata; strips the token.
    fn check_grpc(&self, req: &mut Request<Incoming>) -> Decision {
        let tokens = self.tokens.borrow().clone();
        match auth::authenticate(req.headers_mut(), &tokens, Carriers::HeaderOnly) {
            Verdict::Allowed(_) => {
                let is_token = |word: &[u8]| tokens.matches(word);
                scrub::headers(req.headers_mut(), &is_token);
                Decision::Forward(Route {
                    path_and_query: target(req.uri().path(), req.uri().query()),
                    websocket: false,
                })
            }
            verdict => Decision::Answer(grpc::unauthenticated(verdict == Verdict::Invalid)),
        }
    }

    async fn send(&self, req: Request<Incoming>, info: ConnInfo, route: Route) -> Response<Body> {
        let forward = Forward {
            client: &self.client,
            upstream: &self.upstream,
            peer: info.peer,
            local_port: info.local.port(),
            tls: info.tls,
            response_timeout: self.response_timeout,
            upstream_version: match self.kind {
                Kind::Http => Version::HTTP_11,
                Kind::Grpc => Version::HTTP_2,
            },
        };
        match forward
            .send(req, route.path_and_query, route.websocket)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "cannot forward");
                match (self.kind, &e) {
                    (Kind::Http, ForwardError::Unreachable(_)) => plain(
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: the upstream (Ray Serve) is unreachable\n",
                    ),
                    (Kind::Http, ForwardError::Timeout(_)) => plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 Gateway Timeout: the upstream (Ray Serve) did not answer in time\n",
                    ),
                    (Kind::Http, ForwardError::Build(_)) => {
                        plain(StatusCode::BAD_REQUEST, "400 Bad Request\n")
                    }
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
                }
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
        let handler = |kind, upstream: Upstream| {
            Arc::new(Handler {
                kind,
                tokens: tokens.clone(),
                client: forward::client(&config.limits, kind == Kind::Grpc),
                upstream,
                unauthenticated_paths: config.unauthenticated_paths.clone(),
                cookie_max_age_secs: config.cookie_max_age.as_secs(),
                external_https: config.external_url().is_https(),
                origin: config.external_url().origin(),
                response_timeout: config.limits.upstream_response_timeout,
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
        let limit =
            limits::ConnectionLimit::new(limits.max_connections, limits.max_connections_per_source);
        let timing = server::Timing {
            first_request: limits.header_read_timeout,
            idle: limits.idle_timeout,
        };
        let (stop, stopped) = watch::channel(false);
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
            limit.clone(),
            timing,
            stopped.clone(),
        ));
        if let Some(grpc) = self.grpc {
            tasks.spawn(server::run(grpc, builder, limit, timing, stopped));
        }
        shutdown.await;
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("public proxy stopped");
    }
}
