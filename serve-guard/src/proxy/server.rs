//! The accept loop shared by the HTTP and gRPC listeners: connection slots (total and per
//! source), then one task per connection that bounds every stage of it:
//!
//! - until its first request head is complete (TLS handshake, the HTTP/1-or-2 sniffing step,
//!   partial prefaces, slow headers): `header_read_timeout` for the whole stage, then closed;
//! - later HTTP/1.1 heads: `header_read_timeout` each (hyper's timer);
//! - no request in flight (idle keep-alive, an HTTP/2 connection without streams):
//!   `idle_timeout`, then a graceful close, itself bounded;
//! - on shutdown: a graceful close, bounded by the drain timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::Handler;
use super::limits::{ConnectionLimit, Slot};
use super::reply::Body;
use super::tls::TlsFiles;

/// After an accept error (e.g. out of file descriptors), wait this long before the next
/// accept instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// On shutdown, open connections get this long to finish their requests (within the agent's
/// 5 s shutdown grace).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);
/// After the idle timeout, a connection gets this long to close gracefully (HTTP/2 GOAWAY)
/// before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The connection's place under `max_connections` and `max_connections_per_source`, held until
/// the connection and any tunnel upgraded from it end.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<Slot>);

/// What a request handler knows about its connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's address the client connected to.
    pub local: SocketAddr,
    pub tls: bool,
}

pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsFiles>,
    pub handler: Arc<Handler>,
}

/// The time limits of a connection's stages.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// From accept until the first request head is complete.
    pub first_request: Duration,
    /// With no request in flight.
    pub idle: Duration,
}

/// Serves `listener` until `shutdown` turns true, then drains open connections (bounded).
pub async fn run(
    listener: Listener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limit: ConnectionLimit,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = TaskTracker::new();
    let local = listener.tcp.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = limit.try_acquire(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            tls: listener.tls.is_some(),
        };
        let conn = Connection {
            info,
            handler: listener.handler.clone(),
            builder: builder.clone(),
            slot: ConnectionSlot(Arc::new(slot)),
            timing,
            shutdown: shutdown.clone(),
        };
        // Per connection: a certificate reloaded by SIGHUP serves the next handshake.
        let tls = listener.tls.as_ref().map(TlsFiles::acceptor);
        connections.spawn(conn.run(stream, tls));
    }
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    info: ConnInfo,
    handler: Arc<Handler>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    slot: ConnectionSlot,
    timing: Timing,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let peer = self.info.peer;
        // One deadline for the TLS handshake and the first request head together.
        let first_deadline = Instant::now() + self.timing.first_request;
        let result = match tls {
            None => self.serve(stream, first_deadline).await,
            Some(tls) => match tokio::time::timeout_at(first_deadline, tls.accept(stream)).await {
                Ok(Ok(stream)) => self.serve(stream, first_deadline).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    async fn serve<I>(
        mut self,
        io: I,
        first_deadline: Instant,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let (handler, info, slot) = (self.handler.clone(), self.info, self.slot.clone());
        let requests = activity.clone();
        let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            let in_flight = requests.begin();
            // An upgraded connection outlives hyper's connection task; its tunnel keeps the slot.
            req.extensions_mut().insert(slot.clone());
            async move {
                let resp = handler.handle(req, info).await;
                Ok::<_, Infallible>(resp.map(|body| in_flight.hold(body)))
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let peer = self.info.peer;
        let mut close_by: Option<Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => return result,
                expiry = activity.expired(first_deadline, self.timing.idle), if close_by.is_none() => {
                    match expiry {
                        Expiry::FirstRequest => {
                            tracing::debug!(%peer, "no complete request head in time; closing");
                            return Ok(());
                        }
                        Expiry::Idle => {
                            tracing::debug!(%peer, "idle; closing");
                            conn.as_mut().graceful_shutdown();
                            close_by = Some(Instant::now() + IDLE_CLOSE_GRACE);
                        }
                    }
                }
                _ = self.shutdown.wait_for(|stop| *stop), if close_by.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    close_by = Some(Instant::now() + DRAIN_TIMEOUT);
                }
                _ = tokio::time::sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => {
                    return Ok(());
                }
            }
        }
    }
}

/// Which time limit ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    FirstRequest,
    Idle,
}

/// Requests a connection has had and has in flight (from the complete head until the
/// response body is sent or dropped).
#[derive(Default)]
struct Activity {
    started: AtomicBool,
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Returns when the connection has run out of time: no first request by `first_deadline`,
    /// or nothing in flight for `idle`.
    async fn expired(&self, first_deadline: Instant, idle: Duration) -> Expiry {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read, so no change is missed.
            changed.as_mut().enable();
            if !self.started.load(Ordering::Acquire) {
                tokio::select! {
                    _ = tokio::time::sleep_until(first_deadline) => return Expiry::FirstRequest,
                    _ = changed => continue,
                }
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => return Expiry::Idle,
                _ = changed => {}
            }
        }
    }
}

/// One request in flight; ends when dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    /// Keeps the request in flight until `body` is sent or dropped.
    fn hold(self, body: Body) -> Body {
        body.map_frame(move |frame| {
            let _in_flight = &self;
            frame
        })
        .boxed_unsync()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}
