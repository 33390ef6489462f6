//! Keep-alive HTTP/1.1 connections to Serve's HTTP port, reused from request to request.
//!
//! A connection goes back to the pool only when its response has been read to the end (so the
//! next request never waits behind a slow body) and was not an upgrade; at most
//! [`MAX_IDLE`] wait there, each for at most [`IDLE_TIMEOUT`]. A parked connection the upstream
//! has closed in the meantime is skipped, and a request that could not be written on it is
//! sent again on the next one: hyper hands back a request it did not start to write.
//!
//! Why not hyper-util's pooled client: it keys its pool by scheme and authority and hashes both
//! on every request, races a new connection against every checkout, and moves the request
//! through several large futures. The proxy has one upstream per listener; this is that case
//! alone.

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::reply::Body;

/// Idle connections kept for reuse.
pub const MAX_IDLE: usize = 64;
/// A connection idle this long is closed rather than reused: under any keep-alive timeout Serve
/// is likely to have (Ray Serve's `keep_alive_timeout_s` is 90 s by default; uvicorn's own
/// default is 5 s), so a request is not sent on a connection Serve is closing at that moment (a
/// request it already took cannot be sent again). A new connection on loopback costs little.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {authority}: no answer within {timeout:?}")]
    ConnectTimeout {
        authority: String,
        timeout: Duration,
    },
    #[error("HTTP/1.1 with {authority}: {source}")]
    Http {
        authority: String,
        #[source]
        source: hyper::Error,
    },
}

/// A connection waiting for its next request.
struct Parked {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// The connections to one upstream (`host:port`).
pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Parked>>,
}

impl Pool {
    pub fn new(authority: &http::uri::Authority, connect_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            authority: authority.as_str().to_owned(),
            connect_timeout,
            idle_timeout: IDLE_TIMEOUT,
            idle: Mutex::new(Vec::with_capacity(MAX_IDLE)),
        })
    }

    #[cfg(test)]
    fn with_idle_timeout(
        authority: &http::uri::Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Pool> {
        let mut pool = Pool::new(authority, connect_timeout);
        Arc::get_mut(&mut pool)
            .expect("not shared yet")
            .idle_timeout = idle_timeout;
        pool
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection, or a new one.
    pub async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Pooled>, PoolError> {
        let mut req = req;
        while let Some(mut sender) = self.checkout() {
            // Parked once its body ended, it is ready as soon as hyper's connection task has
            // seen that end; or it closed meanwhile.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.track(sender, resp)),
                // Not written at all: the connection closed under it; the next one gets it.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(self.http_error(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.track(sender, resp)),
            Err(e) => Err(self.http_error(e)),
        }
    }

    fn http_error(&self, source: hyper::Error) -> PoolError {
        PoolError::Http {
            authority: self.authority.clone(),
            source,
        }
    }

    /// The most recently parked connection (the warmest one); closed and stale ones are dropped
    /// on the way.
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(parked) = idle.pop() {
            if parked.since.elapsed() < self.idle_timeout && !parked.sender.is_closed() {
                return Some(parked.sender);
            }
        }
        None
    }

    fn park(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Parked {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Body>, PoolError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| PoolError::ConnectTimeout {
            authority: self.authority.clone(),
            timeout: self.connect_timeout,
        })?
        .map_err(|source| PoolError::Connect {
            authority: self.authority.clone(),
            source,
        })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e))?;
        // The connection's own task: reads and writes until the upstream or the pool drops it.
        // Upgrades: a WebSocket tunnel takes the connection over after a 101.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The response, with a body that parks the connection once it has been read to the end.
    fn track(
        self: &Arc<Self>,
        sender: http1::SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<Pooled> {
        // After a 101 the connection belongs to the tunnel.
        let reusable = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|body| {
            let parker = reusable.then(|| Parker {
                pool: self.clone(),
                sender,
            });
            Pooled { body, parker }
        })
    }
}

/// A connection and the pool it goes back to once its response has been read to the end.
struct Parker {
    pool: Arc<Pool>,
    sender: http1::SendRequest<Body>,
}

impl Parker {
    fn park(self) {
        self.pool.park(self.sender);
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body; its connection is parked once the body has ended.
    pub struct Pooled {
        #[pin]
        body: Incoming,
        parker: Option<Parker>,
    }

    impl PinnedDrop for Pooled {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped before its end leaves the connection mid-response: never reused.
            if this.body.is_end_stream()
                && let Some(parker) = this.parker.take()
            {
                parker.park();
            }
        }
    }
}

impl hyper::body::Body for Pooled {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(None) => {
                // Ended: the connection can take the next request as soon as hyper sees it.
                if let Some(parker) = this.parker.take() {
                    parker.park();
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test upstream treats a connection after its first response.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// `Connection: close`, then closes.
        Close,
        /// Keeps the connection open but closes it silently before the next request.
        DropIdle,
    }

    /// A raw HTTP/1.1 upstream answering `ok` (or a long body for `/long`); counts connections.
    async fn upstream(after: After) -> (http::uri::Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let body = if head.starts_with("GET /long ") {
                            "x".repeat(1 << 20)
                        } else {
                            "ok".to_owned()
                        };
                        let close = matches!(after, After::Close);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{body}",
                            body.len(),
                            if close { "connection: close\r\n" } else { "" }
                        );
                        if stream.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if !matches!(after, After::KeepAlive) {
                            return;
                        }
                    }
                });
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    fn get(authority: &http::uri::Authority, path: &str) -> Request<Body> {
        Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .body(super::super::reply::empty())
            .unwrap()
    }

    async fn body_of(resp: Response<Pooled>) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    const CONNECT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (authority, accepted) = upstream(After::KeepAlive).await;
        let pool = Pool::new(&authority, CONNECT);
        for _ in 0..5 {
            let resp = pool.send(get(&authority, "/")).await.unwrap();
            assert_eq!(body_of(resp).await, b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn closed_connections_are_replaced_without_failing_a_request() {
        for after in [After::Close, After::DropIdle] {
            let (authority, accepted) = upstream(after).await;
            let pool = Pool::new(&authority, CONNECT);
            for _ in 0..4 {
                let resp = pool.send(get(&authority, "/")).await.unwrap();
                assert_eq!(body_of(resp).await, b"ok");
                // Let the connection task see the close before the next checkout.
                tokio::task::yield_now().await;
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 4);
        }
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_reused() {
        let (authority, accepted) = upstream(After::KeepAlive).await;
        let idle = Duration::from_millis(50);
        let pool = Pool::with_idle_timeout(&authority, CONNECT, idle);
        let resp = pool.send(get(&authority, "/")).await.unwrap();
        assert_eq!(body_of(resp).await, b"ok");
        tokio::time::sleep(idle * 2).await;
        let resp = pool.send(get(&authority, "/")).await.unwrap();
        assert_eq!(body_of(resp).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_never_serves_another_request() {
        let (authority, accepted) = upstream(After::KeepAlive).await;
        let pool = Pool::new(&authority, CONNECT);
        let resp = pool.send(get(&authority, "/long")).await.unwrap();
        drop(resp);
        let resp = pool.send(get(&authority, "/")).await.unwrap();
        assert_eq!(body_of(resp).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: http::uri::Authority =
            listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let pool = Pool::new(&authority, CONNECT);
        match pool.send(get(&authority, "/")).await {
            Err(PoolError::Connect { .. }) => {}
            Err(other) => panic!("not a connect error: {other}"),
            Ok(resp) => panic!("answered {}", resp.status()),
        }
    }
}
