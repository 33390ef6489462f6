//! Applying `[public.limits]` to the listeners: header read timeout (slowloris, also the idle
//! keep-alive and TLS handshake limit), header size (431 beyond it), concurrent connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::public::Limits;

/// Most header fields per HTTP/1.1 request (hyper's default is 100); the byte limit is the
/// real bound, this keeps parsing cheap.
const MAX_HEADER_FIELDS: usize = 128;
/// HTTP/2 keep-alive pings find dead clients that hold a connection slot.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection server (HTTP/1.1 and HTTP/2, chosen per connection) with the limits applied.
pub fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer is where the head must fit: beyond it hyper answers 431.
        .max_buf_size(limits.max_header_bytes)
        .max_headers(MAX_HEADER_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    builder
}

/// Bounds the connections served at once across the proxy's listeners.
#[derive(Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    refused: Arc<AtomicU64>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A slot for one connection, held until the connection ends; `None` when all are taken
    /// (the new connection is closed at once rather than queued behind slow ones).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // A flood must not turn into a log flood: the 1st, 2nd, 4th, 8th... refusal.
            if refused.is_power_of_two() {
                tracing::warn!(
                    max_connections = self.max,
                    refused,
                    "connection limit reached; closing new connections"
                );
            }
        }
        permit
    }
}
