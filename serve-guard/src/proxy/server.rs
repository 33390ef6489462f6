//! The accept loop shared by the HTTP and gRPC listeners: connection limit, optional TLS
//! handshake (bounded), one HTTP/1.1-or-HTTP/2 connection task each, graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::Handler;
use super::limits::ConnectionLimit;
use super::tls::TlsFiles;

/// After an accept error (e.g. out of file descriptors), wait this long before the next
/// accept instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// On shutdown, open connections get this long to finish their requests (within the agent's
/// 5 s shutdown grace).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// The connection's place under `max_connections`, held until the connection and any tunnel
/// upgraded from it end.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// What a request handler knows about its connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsFiles>,
    pub handler: Arc<Handler>,
}

/// Serves `listener` until `shutdown` turns true, then drains open connections (bounded).
pub async fn run(
    listener: Listener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limit: ConnectionLimit,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
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
        let Some(permit) = limit.try_acquire() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            tls: listener.tls.is_some(),
        };
        let handler = listener.handler.clone();
        let slot = ConnectionSlot(Arc::new(permit));
        let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            // An upgraded connection outlives hyper's connection task; its tunnel keeps the slot.
            req.extensions_mut().insert(slot.clone());
            async move { Ok::<_, Infallible>(handler.handle(req, info).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        // Per connection: a certificate reloaded by SIGHUP serves the next handshake.
        let tls = listener.tls.as_ref().map(TlsFiles::acceptor);
        tokio::spawn(async move {
            let result = match tls {
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}
