//! Sending an authenticated request to the upstream and its response back: pooled keep-alive
//! connections, header hygiene (hop-by-hop out, X-Forwarded-* in), bodies streamed both ways,
//! HTTP/1.1 upgrades (WebSocket) tunnelled after the check.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::reply::{self, Body};
use super::server::ConnectionSlot;
use crate::config::public::{Limits, Upstream};

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections kept per upstream.
const POOL_MAX_IDLE: usize = 64;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies still meet.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Client-supplied forwarding headers: this proxy is the edge, so they are not trusted and are
/// replaced.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub type UpstreamClient = Client<HttpConnector, Body>;

/// A pooled upstream client. `http2_only`: prior-knowledge HTTP/2 (h2c), for gRPC.
pub fn client(limits: &Limits, http2_only: bool) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(limits.upstream_connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2_only)
        .build(connector)
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream unreachable: {0}")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot build the upstream request: {0}")]
    Build(#[from] http::Error),
}

/// One forwarding: where to, over what, and what the client connection looks like.
pub struct Forward<'a> {
    pub client: &'a UpstreamClient,
    pub upstream: &'a Upstream,
    pub peer: SocketAddr,
    /// The client reached us over TLS.
    pub tls: bool,
    pub response_timeout: Duration,
    /// Version spoken to the upstream: HTTP/1.1 for Serve's HTTP port, HTTP/2 for gRPC.
    pub upstream_version: Version,
}

impl Forward<'_> {
    /// Forwards `req` (already authenticated and stripped of the token). `path_and_query`
    /// replaces the request's own when set (unauthenticated paths go upstream in normal form).
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
        path_and_query: Option<String>,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let slot = req.extensions_mut().remove::<ConnectionSlot>();

        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let target = path_and_query.unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
        });
        parts.uri = self.upstream.join(&target)?;
        parts.version = self.upstream_version;

        let headers = &mut parts.headers;
        let te_trailers = wants_trailers(headers);
        strip_hop_by_hop(headers);
        if te_trailers {
            // gRPC requires `te: trailers`; it is the one TE value that may pass.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        headers.remove(header::FORWARDED);
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_str(&self.peer.ip().to_string()).expect("an IP is a valid value"),
        );
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.tls { "https" } else { "http" }),
        );
        headers.remove(X_FORWARDED_HOST);
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        headers.remove(header::HOST);
        if self.upstream_version == Version::HTTP_11 {
            let authority = HeaderValue::from_str(self.upstream.authority().as_str())
                .expect("an authority is a valid value");
            headers.insert(header::HOST, authority);
        }

        let upstream_req = Request::from_parts(parts, reply::stream(body));
        let mut resp =
            match tokio::time::timeout(self.response_timeout, self.client.request(upstream_req))
                .await
            {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return Err(ForwardError::Unreachable(e)),
                Err(_) => return Err(ForwardError::Timeout(self.response_timeout)),
            };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let protocol = resp.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(resp.headers_mut());
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                resp.headers_mut().insert(header::UPGRADE, protocol);
            }
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, slot));
        } else {
            strip_hop_by_hop(resp.headers_mut());
        }
        Ok(resp.map(reply::stream))
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections until either
/// side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _slot: Option<ConnectionSlot>,
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
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
        Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
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
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
