//! Sending an authenticated request to the upstream and its response back: pooled keep-alive
//! connections, header hygiene (hop-by-hop and client-supplied proxy headers out, X-Forwarded-*
//! and X-Real-IP set by the proxy), bodies streamed both ways, WebSocket upgrades (and no other
//! protocol) tunnelled after the check; all of it ended when the token that admitted it is
//! revoked (see `revoke`).

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::admission::ConnectionSlot;
use super::pool::{self, Pool};
use super::reply::Body;
use super::revoke::{self, Grant};
use crate::config::{Limits, Upstream};
use crate::metrics::Outcome;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies still meet.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // h2c upgrade's settings (RFC 7540 §3.2): never a request for the upstream.
    HeaderName::from_static("http2-settings"),
];

/// Client-supplied forwarding headers: this proxy is the edge, so they are not trusted and are
/// replaced.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers through which a front proxy tells an app who the client is or what it asked for.
/// Frameworks and middlewares trust them from the proxy's address, so a client must never set
/// them: they are removed; the proxy sets the X-Forwarded-* ones and X-Real-IP itself.
const PROXY_HEADERS: [&str; 20] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-real-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
];

/// The protocol name of a WebSocket upgrade (RFC 6455 §4.1).
const WEBSOCKET: &str = "websocket";

/// How one listener reaches its upstream.
pub enum UpstreamClient {
    /// Serve's HTTP port: pooled HTTP/1.1 keep-alive connections.
    Http1(Arc<Pool>),
    /// Serve's gRPC port: prior-knowledge HTTP/2 (h2c), streams multiplexed on a connection.
    Http2(Box<Client<HttpConnector, Body>>),
}

/// The client for `upstream`: HTTP/1.1, or HTTP/2 when `grpc`.
pub fn client(limits: &Limits, upstream: &Upstream, grpc: bool) -> UpstreamClient {
    if !grpc {
        return UpstreamClient::Http1(Pool::new(
            upstream.authority(),
            limits.upstream_connect_timeout,
        ));
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(limits.upstream_connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    UpstreamClient::Http2(Box::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool::IDLE_TIMEOUT)
            .pool_max_idle_per_host(pool::MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector),
    ))
}

impl UpstreamClient {
    /// Sends `parts` and `body` to `path_and_query` on `upstream`, in the form its protocol
    /// wants: origin-form with a Host header for HTTP/1.1, an absolute URI for HTTP/2 (its
    /// `:authority`). The response body ends when `grant` is revoked.
    async fn send(
        &self,
        upstream: &Upstream,
        path_and_query: PathAndQuery,
        mut parts: http::request::Parts,
        body: Body,
        grant: Option<&Grant>,
    ) -> Result<Response<Body>, UpstreamError> {
        match self {
            UpstreamClient::Http1(pool) => {
                parts.uri = Uri::from(path_and_query);
                parts.version = Version::HTTP_11;
                parts.headers.insert(header::HOST, upstream.host().clone());
                let resp = pool.send(Request::from_parts(parts, body)).await?;
                Ok(resp.map(|b| revoke::body(b, grant)))
            }
            UpstreamClient::Http2(client) => {
                parts.uri = upstream.join(path_and_query);
                parts.version = Version::HTTP_2;
                parts.headers.remove(header::HOST);
                let resp = client.request(Request::from_parts(parts, body)).await?;
                Ok(resp.map(|b| revoke::body(b, grant)))
            }
        }
    }
}

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Http1(#[from] pool::PoolError),
    #[error(transparent)]
    Http2(#[from] hyper_util::client::legacy::Error),
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream unreachable: {0}")]
    Unreachable(#[source] UpstreamError),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The upstream answered 101 to a request that was not forwarded as a WebSocket upgrade,
    /// or switched to another protocol: no tunnel is opened.
    #[error("the upstream switched protocols without a WebSocket upgrade")]
    UnexpectedUpgrade,
    /// The token that admitted the request left the token file before the upstream answered.
    #[error("the request's token was revoked before the upstream answered")]
    Revoked,
}

impl ForwardError {
    /// The outcome the metrics and the log give a request the proxy could not forward.
    pub fn outcome(&self) -> Outcome {
        match self {
            ForwardError::Timeout(_) => Outcome::GatewayTimeout,
            // Answered 401: the token went while the request was on its way.
            ForwardError::Revoked => Outcome::InvalidToken,
            _ => Outcome::BadGateway,
        }
    }
}

/// One forwarding: where to, over what, and what the client connection looks like.
pub struct Forward<'a> {
    pub client: &'a UpstreamClient,
    pub upstream: &'a Upstream,
    /// The client's address as a header value.
    pub client_ip: &'a HeaderValue,
    /// The client connection's slot, for a tunnel to keep.
    pub slot: &'a ConnectionSlot,
    /// The proxy's port the client connected to (X-Forwarded-Port).
    pub local_port: u16,
    /// The client reached us over TLS.
    pub tls: bool,
    pub response_timeout: Duration,
}

impl Forward<'_> {
    /// Forwards `req` (already authenticated and stripped of the token) to `path_and_query`
    /// on the upstream. `websocket`: the request is a WebSocket upgrade the checks allow
    /// ([`is_websocket_upgrade`] and authenticated); any other upgrade goes upstream as a plain
    /// request, without `Upgrade`. `grant`: the token that admitted it (none on an
    /// unauthenticated path); its revocation ends the request wherever it is.
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
        path_and_query: PathAndQuery,
        websocket: bool,
        grant: Option<Grant>,
    ) -> Result<Response<Body>, ForwardError> {
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        let headers = &mut parts.headers;
        let te_trailers = wants_trailers(headers);
        strip_hop_by_hop(headers);
        if te_trailers {
            // gRPC requires `te: trailers`; it is the one TE value that may pass.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
        }
        strip_proxy_headers(headers);
        headers.insert(X_FORWARDED_FOR, self.client_ip.clone());
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.tls { "https" } else { "http" }),
        );
        headers.insert(X_FORWARDED_PORT, HeaderValue::from(self.local_port));
        headers.insert(X_REAL_IP, self.client_ip.clone());
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }

        let grant = grant.as_ref();
        let body = revoke::body(body, grant);
        let sent = tokio::time::timeout(
            self.response_timeout,
            self.client
                .send(self.upstream, path_and_query, parts, body, grant),
        );
        let sent = match grant {
            Some(grant) => grant.unless_revoked(sent).await,
            None => Some(sent.await),
        };
        let mut resp = match sent {
            // Revoked while waiting, or as the answer came (the upload's end may be why it
            // failed): the client gets the refusal, not the upstream's words.
            None => return Err(ForwardError::Revoked),
            Some(_) if grant.is_some_and(Grant::is_revoked) => return Err(ForwardError::Revoked),
            Some(Ok(Ok(resp))) => resp,
            Some(Ok(Err(e))) => return Err(ForwardError::Unreachable(e)),
            Some(Err(_)) => return Err(ForwardError::Timeout(self.response_timeout)),
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel only where a WebSocket upgrade was asked for and the upstream agreed to
            // exactly that: anything else would be a raw pipe past the checks (h2c smuggling).
            let agreed = resp.headers().get(header::UPGRADE).is_some_and(|p| {
                p.as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(WEBSOCKET.as_bytes())
            });
            let Some(client_upgrade) = client_upgrade.filter(|_| agreed) else {
                return Err(ForwardError::UnexpectedUpgrade);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            strip_hop_by_hop(resp.headers_mut());
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
            tokio::spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                self.slot.clone(),
                grant.cloned(),
            ));
        } else {
            strip_hop_by_hop(resp.headers_mut());
        }
        Ok(resp)
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections until either
/// side closes, or the token that opened it is revoked: then both connections are dropped
/// (closed) with whatever was in flight.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _slot: ConnectionSlot,
    grant: Option<Grant>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let copied = match &grant {
        Some(grant) => grant.unless_revoked(copy).await,
        None => Some(copy.await),
    };
    match copied {
        Some(Ok((up, down))) => tracing::debug!(up, down, "upgraded connection closed"),
        Some(Err(e)) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        None => tracing::debug!("upgraded connection closed: its token was revoked"),
    }
}

/// Whether `req` is a WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 GET with
/// `Connection: upgrade` and exactly one `Upgrade` value, `websocket`. Other upgrades (`h2c`,
/// `foo/1`, a list of protocols) are not forwarded as upgrades.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 || req.method() != http::Method::GET {
        return false;
    }
    if !connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return false;
    }
    let mut upgrades = req.headers().get_all(header::UPGRADE).iter();
    match (upgrades.next(), upgrades.next()) {
        (Some(value), None) => value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(WEBSOCKET.as_bytes()),
        _ => false,
    }
}

/// The client's address as a header value (X-Forwarded-For, X-Real-IP): made once per
/// connection, shared by its requests.
pub fn client_ip_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
        .expect("an address is a valid header value")
}

/// Removes the client's proxy headers ([`PROXY_HEADERS`]), also when spelt with `_` for `-`
/// (servers that map both to one CGI-style name would read them as the real ones). One pass
/// over the names present: removing a list of mostly absent names would hash each of them.
fn strip_proxy_headers(headers: &mut HeaderMap) {
    remove_all(headers, |name| {
        let name = name.as_str();
        PROXY_HEADERS.contains(&name)
            || (name.contains('_') && PROXY_HEADERS.contains(&name.replace('_', "-").as_str()))
    });
}

/// Removes every header `doomed` picks: one scan of the names per name removed, and no
/// allocation (a message carries a handful of headers and loses at most a few).
fn remove_all(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|name| doomed(name)).cloned() {
        headers.remove(&name);
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Removes the hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // What Connection lists beyond the standard names: usually nothing (`keep-alive`,
    // `upgrade`), and then nothing is allocated.
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    remove_all(headers, |name| {
        HOP_BY_HOP.contains(name) || listed.contains(name)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_websocket_upgrades_on_get_count() {
        let req = |method: &str, connection: &str, upgrades: &[&str]| {
            let mut b = Request::builder()
                .method(method)
                .uri("/ws")
                .header("connection", connection);
            for u in upgrades {
                b = b.header("upgrade", *u);
            }
            b.body(()).unwrap()
        };
        assert!(is_websocket_upgrade(&req("GET", "Upgrade", &["websocket"])));
        assert!(is_websocket_upgrade(&req(
            "GET",
            "keep-alive, upgrade",
            &["WebSocket"]
        )));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            "Upgrade, HTTP2-Settings",
            &["h2c"]
        )));
        assert!(!is_websocket_upgrade(&req("GET", "Upgrade", &["foo/1"])));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            "Upgrade",
            &["websocket, h2c"]
        )));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            "Upgrade",
            &["websocket", "h2c"]
        )));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            "keep-alive",
            &["websocket"]
        )));
        assert!(!is_websocket_upgrade(&req(
            "POST",
            "Upgrade",
            &["websocket"]
        )));
    }

    #[test]
    fn client_proxy_headers_go_in_any_spelling() {
        let mut h = HeaderMap::new();
        for name in PROXY_HEADERS {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("spoofed"),
            );
        }
        h.insert("x_real_ip", HeaderValue::from_static("spoofed"));
        h.insert("x_forwarded_prefix", HeaderValue::from_static("spoofed"));
        h.insert("x_app_header", HeaderValue::from_static("kept"));
        strip_proxy_headers(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x_app_header"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-end-to-end"));
    }
}
