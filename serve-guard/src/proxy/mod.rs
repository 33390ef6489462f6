//! Public mode: the token-checking reverse proxy in front of Ray Serve.
//!
//! A request reaches the upstream only with the cluster's token (Authorization: Bearer, or the
//! SERVE_TOKEN cookie the API docs link sets), or when its normalised path is one of
//! `unauthenticated_paths`. The token is removed before the request goes upstream.
//!
//! - `auth`: finding, checking and stripping the token; the 401s.
//! - `docs_link`: `?token=` → 303 + cookie.
//! - `path`: path normal form and safe redirect paths.
//! - `forward`: the upstream client, header hygiene, streaming, upgrades.
//! - `grpc`: the gRPC listener's answers.
//! - `tls`, `limits`, `server`: listeners, limits and the accept loop.
//! - `routes`, `status`: what `serve-guard status` shows in public mode.

pub mod auth;
pub mod docs_link;
pub mod forward;
pub mod grpc;
pub mod limits;
pub mod path;
pub mod reply;
pub mod routes;
pub mod server;
pub mod status;
pub mod tls;

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
use auth::{Carriers, Verdict};
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
    /// The proxy answers itself (401, the docs link, ...).
    Answer(Response<Body>),
    /// Forward upstream, with this path and query instead of the request's own if set.
    Forward(Option<String>),
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
            Decision::Forward(target) => self.send(req, info, target).await,
        };
        tracing::debug!(peer = %info.peer, %method, %path, status = resp.status().as_u16(), "request");
        resp
    }

    /// The docs link, the token check and unauthenticated paths; strips the token.
    fn check_http(&self, req: &mut Request<Incoming>, info: ConnInfo) -> Decision {
        // A reverse proxy is no tunnel to arbitrary hosts.
        if req.method() == Method::CONNECT {
            return Decision::Answer(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: CONNECT is not supported\n",
            ));
        }
        let tokens = self.tokens.borrow().clone();
        let cookie = CookieSettings {
            max_age_secs: self.cookie_max_age_secs,
            secure: info.tls || self.external_https,
        };
        if let Some(resp) = docs_link::handle(req.method(), req.uri(), &tokens, cookie) {
            return Decision::Answer(resp);
        }
        let verdict = auth::authenticate(req.headers_mut(), &tokens, Carriers::HeaderOrCookie);
        let public =
            path::normalize(req.uri().path()).filter(|p| self.unauthenticated_paths.contains(p));
        if let Some(public) = public {
            // Upstream sees exactly the path that was checked.
            let target = match req.uri().query() {
                Some(q) => format!("{public}?{q}"),
                None => public,
            };
            return Decision::Forward(Some(target));
        }
        if verdict != Verdict::Allowed {
            return Decision::Answer(auth::unauthorized(verdict));
        }
        Decision::Forward(None)
    }

    /// The token check on the `authorization` metadata; strips the token.
    fn check_grpc(&self, req: &mut Request<Incoming>) -> Decision {
        let tokens = self.tokens.borrow().clone();
        match auth::authenticate(req.headers_mut(), &tokens, Carriers::HeaderOnly) {
            Verdict::Allowed => Decision::Forward(None),
            verdict => Decision::Answer(grpc::unauthenticated(verdict == Verdict::Invalid)),
        }
    }

    async fn send(
        &self,
        req: Request<Incoming>,
        info: ConnInfo,
        path_and_query: Option<String>,
    ) -> Response<Body> {
        let forward = Forward {
            client: &self.client,
            upstream: &self.upstream,
            peer: info.peer,
            tls: info.tls,
            response_timeout: self.response_timeout,
            upstream_version: match self.kind {
                Kind::Http => Version::HTTP_11,
                Kind::Grpc => Version::HTTP_2,
            },
        };
        match forward.send(req, path_and_query).await {
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

impl Proxy {
    /// Validates `config`, loads the TLS files and binds the listeners, so that every error
    /// shows before anything is served.
    pub async fn bind(config: &PublicConfig, tokens: TokenReceiver) -> Result<Proxy, ProxyError> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::TlsFiles::load(cert, key)?),
            _ => None,
        };
        let handler = |kind, upstream: Upstream| {
            Arc::new(Handler {
                kind,
                tokens: tokens.clone(),
                client: forward::client(&config.limits, kind == Kind::Grpc),
                upstream,
                unauthenticated_paths: config.unauthenticated_paths.clone(),
                cookie_max_age_secs: config.cookie_max_age.as_secs(),
                external_https: config.external_url().is_https(),
                response_timeout: config.limits.upstream_response_timeout,
            })
        };
        let bind = |addr: SocketAddr, what| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, what, source })
        };
        let tcp = bind(config.listen, "public listen").await?;
        let local_addr = tcp.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            what: "public listen",
            source,
        })?;
        let http = Listener {
            tcp,
            tls: tls.clone(),
            handler: handler(Kind::Http, config.upstream.clone()),
        };
        let (grpc, grpc_local_addr) = match config.grpc_listen {
            Some(addr) => {
                let tcp = bind(addr, "grpc_listen").await?;
                let local = tcp.local_addr().map_err(|source| ProxyError::Bind {
                    addr,
                    what: "grpc_listen",
                    source,
                })?;
                let listener = Listener {
                    tcp,
                    tls: tls.clone(),
                    handler: handler(Kind::Grpc, config.grpc_upstream()),
                };
                (Some(listener), Some(local))
            }
            None => (None, None),
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
        let limit = limits::ConnectionLimit::new(limits.max_connections);
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
            limits.header_read_timeout,
            stopped.clone(),
        ));
        if let Some(grpc) = self.grpc {
            tasks.spawn(server::run(
                grpc,
                builder,
                limit,
                limits.header_read_timeout,
                stopped,
            ));
        }
        shutdown.await;
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("public proxy stopped");
    }
}
