//! The accept loop shared by the HTTP and gRPC listeners: admission (a slot under the nested
//! connection limits, see `admission`), then one task per connection that bounds every stage
//! of it:
//!
//! - until its first request head is complete (TLS handshake, the HTTP/1-or-2 sniffing step,
//!   partial prefaces, slow headers): `header_read_timeout`, shortened when the pool is under
//!   pressure, for the whole stage, then closed; the TLS handshake proper (after the
//!   ClientHello) only with a handshake place, else closed before any crypto;
//! - later HTTP/1.1 heads: `header_read_timeout` each (hyper's timer);
//! - no request in flight (idle keep-alive, an HTTP/2 connection without streams):
//!   `idle_timeout` (shortened under pressure until the token was shown), then a graceful
//!   close, itself bounded;
//! - displaced by a newcomer before its first request head: closed at once;
//! - on shutdown: a graceful close, bounded by the drain timeout.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_util::task::TaskTracker;

use super::Handler;
use super::admission::{Admission, ConnectionSlot};
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

/// What a request handler knows about its connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's address the client connected to.
    pub local: SocketAddr,
    pub tls: bool,
}

/// What the requests of one connection share beyond [`ConnInfo`]: made once per connection.
pub struct Shared {
    /// The client's address as a header value (X-Forwarded-For, X-Real-IP).
    pub client_ip: http::HeaderValue,
    /// The connection's slot: a WebSocket tunnel upgraded from it keeps it.
    pub slot: ConnectionSlot,
}

pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsFiles>,
    pub handler: Arc<Handler>,
}

/// The time limits of a connection's stages.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// From accept until the first request head is complete, with the pool at most half full.
    pub first_request: Duration,
    /// With no request in flight, for a connection that showed the token or without pressure.
    pub idle: Duration,
}

/// Serves `listener` until `shutdown` turns true, then drains open connections (bounded).
pub async fn run(
    listener: Listener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    admission: Admission,
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
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                refused.report(listener.handler.kind.metric(), peer);
                drop(stream);
                continue;
            }
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
            slot: ConnectionSlot::new(slot),
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
        let slot = self.slot.clone();
        let peer = self.info.peer;
        // Dropping the connection's future closes its socket: a displaced connection is gone
        // as soon as its task runs next.
        tokio::select! {
            biased;
            _ = slot.displaced() => tracing::debug!(%peer, "displaced by a newcomer; closing"),
            _ = self.run_until_closed(stream, tls) => {}
        }
    }

    async fn run_until_closed(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let peer = self.info.peer;
        let (listener, access_log) = (self.handler.kind.metric(), self.handler.access_log);
        let _open = crate::metrics::global().connection_opened(listener);
        // One deadline for the TLS handshake and the first request head together, set by how
        // full the pool is as the connection arrives.
        let first_deadline =
            Instant::now() + self.slot.first_request_timeout(self.timing.first_request);
        let result = match tls {
            None => self.serve(stream, first_deadline).await,
            Some(tls) => {
                let Some(stream) = self.handshake(stream, tls, first_deadline).await else {
                    return;
                };
                self.serve(stream, first_deadline).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            super::observe::connection_error(listener, peer, e.as_ref(), access_log);
        }
    }

    /// The TLS handshake: the ClientHello is read (no crypto) before a handshake place is
    /// taken, so a connection over the handshake bounds costs the proxy no key exchange and no
    /// signature. `None` when the connection ends there.
    async fn handshake(
        &self,
        stream: TcpStream,
        tls: TlsAcceptor,
        deadline: Instant,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let peer = self.info.peer;
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout_at(deadline, hello).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "no valid ClientHello");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        };
        let _place = match self.slot.begin_handshake() {
            Ok(place) => place,
            Err(refused) => {
                refused.report(self.handler.kind.metric(), peer);
                return None;
            }
        };
        let accept = start.into_stream(tls.config().clone());
        match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
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
        let activity = Arc::new(Activity::new());
        let (handler, info) = (self.handler.clone(), self.info);
        let shared = Arc::new(Shared {
            client_ip: super::forward::client_ip_value(info.peer.ip()),
            // An upgraded connection outlives hyper's connection task; its tunnel keeps the slot.
            slot: self.slot.clone(),
        });
        let requests = activity.clone();
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (handler, shared) = (handler.clone(), shared.clone());
            // A complete request head: from now on the connection is not displaced.
            shared.slot.mark_proven();
            let in_flight = requests.begin();
            async move {
                let resp = handler.handle(req, info, &shared).await;
                Ok::<_, Infallible>(resp.map(|body| in_flight.hold(body)))
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let peer = self.info.peer;
        let (slot, full_idle) = (self.slot.clone(), self.timing.idle);
        let idle = move || slot.idle_timeout(full_idle);
        let mut close_by: Option<Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => return result,
                expiry = activity.expired(first_deadline, &idle), if close_by.is_none() => {
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
/// response body is sent or dropped), and when the last one ended.
///
/// Requests only update counters; the timer is checked and re-armed when it fires
/// ([`Activity::expired`]), so a busy keep-alive connection pays no timer or wake-up per
/// request.
struct Activity {
    /// What `last_end` counts from.
    epoch: Instant,
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last request in flight ended, in nanoseconds after `epoch`.
    last_end: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn end(&self) {
        let since = Instant::now().saturating_duration_since(self.epoch);
        // Written before the count drops, so whoever reads no request in flight reads the
        // time the last one ended.
        self.last_end.store(
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Returns when the connection has run out of time: no first request by `first_deadline`,
    /// or nothing in flight for the idle limit. `idle` gives that limit and how soon to look
    /// again at the latest (both change with the pool's pressure).
    async fn expired(
        &self,
        first_deadline: Instant,
        idle: &impl Fn() -> (Duration, Duration),
    ) -> Expiry {
        let timer = tokio::time::sleep_until(first_deadline);
        tokio::pin!(timer);
        loop {
            timer.as_mut().await;
            if !self.started.load(Ordering::Acquire) {
                return Expiry::FirstRequest;
            }
            let now = Instant::now();
            let (limit, recheck) = idle();
            let next = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again after a whole idle period at the earliest (or sooner, when
                // pressure may shorten it).
                now + recheck
            } else {
                let last_end =
                    self.epoch + Duration::from_nanos(self.last_end.load(Ordering::Acquire));
                if now >= last_end + limit {
                    return Expiry::Idle;
                }
                (last_end + limit).min(now + recheck)
            };
            timer.as_mut().reset(next);
        }
    }
}

/// One request in flight; ends when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is sent or dropped.
    pub struct Tracked {
        #[pin]
        body: Body,
        in_flight: InFlight,
    }
}

impl InFlight {
    fn hold(self, body: Body) -> Tracked {
        Tracked {
            body,
            in_flight: self,
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = super::reply::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
