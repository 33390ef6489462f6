//! The accept loop behind the agent's local HTTP/1.1 endpoints (the control socket and metrics):
//! bounded connections, a deadline for the request head and for the whole connection.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// Bounds for one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client must send its request head within this time (slowloris).
    pub header_timeout: Duration,
    /// Longest a connection may live.
    pub connection_timeout: Duration,
    /// Most connections served at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
}

/// A listener the loop can accept from (TCP for metrics, Unix for the control socket).
pub trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// After a failed accept (e.g. out of file descriptors), wait this long before the next one
/// rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `handler` on `listener` until `shutdown` resolves. `name` labels the log lines.
pub async fn serve<L, H, F>(
    name: &'static str,
    listener: &L,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: Accept + Sync,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("{name} connection: {e}"),
                Err(_) => tracing::debug!(
                    "{name} connection closed after {:?}",
                    limits.connection_timeout
                ),
            }
        });
    }
}
