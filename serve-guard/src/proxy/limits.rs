//! Applying `[public.limits]` to the listeners: header read timeout (slowloris, also the idle
//! HTTP/1.1 keep-alive limit), header size (431 beyond it), HTTP/2 stream and reset limits, and
//! the connection slots: `max_connections` in total, `max_connections_per_source` per client.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// Streams one HTTP/2 connection may have open at once (each may hold an upstream request).
const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Rapid reset (CVE-2023-44487): streams a client opened and reset before the proxy answered,
/// not yet processed; beyond it the connection gets GOAWAY.
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may reset because of client errors before it closes the connection
/// (CVE-2024-2653-style floods of malformed streams).
const HTTP2_MAX_ERROR_RESETS: usize = 256;
/// An IPv6 client controls at least a /64: it counts as one source.
const IPV6_SOURCE_PREFIX: u32 = 64;

/// The connection server (HTTP/1.1 and HTTP/2, chosen per connection) with the limits applied.
/// CONTINUATION floods are bounded by `max_header_list_size`: the h2 crate refuses a header
/// block beyond it without buffering the rest.
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
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(HTTP2_MAX_ERROR_RESETS)
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    builder
}

/// The address a per-source count is kept under: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by
/// its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX << (128 - IPV6_SOURCE_PREFIX);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// This source has `max_connections_per_source` open.
    Source,
}

/// Bounds the connections served at once across the proxy's listeners, in total and per source.
#[derive(Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    per_source: usize,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    refused: Arc<AtomicU64>,
}

/// A connection's slot: its share of the total and of its source, given back on drop.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    source: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = sources.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

impl ConnectionLimit {
    pub fn new(max: usize, per_source: usize) -> Self {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_source: per_source.min(max),
            sources: Arc::default(),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A slot for one connection from `peer`, held until the connection ends; a [`Refusal`]
    /// when all slots, or all of this source's, are taken (the new connection is closed at once
    /// rather than queued behind slow ones).
    pub fn try_acquire(&self, peer: IpAddr) -> Result<Slot, Refusal> {
        let result = self.acquire(source_key(peer));
        if let Err(refusal) = result {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // A flood must not turn into a log flood: the 1st, 2nd, 4th, 8th... refusal.
            if refused.is_power_of_two() {
                tracing::warn!(
                    max_connections = self.max,
                    max_connections_per_source = self.per_source,
                    ?refusal,
                    refused,
                    "connection limit reached; closing new connections"
                );
            }
        }
        result
    }

    fn acquire(&self, source: IpAddr) -> Result<Slot, Refusal> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(Refusal::Source);
        }
        let total = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        *sources.entry(source).or_insert(0) += 1;
        Ok(Slot {
            _total: total,
            source,
            sources: self.sources.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_total_caps() {
        let limit = ConnectionLimit::new(3, 2);
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let a1 = limit.try_acquire(a).unwrap();
        let _a2 = limit.try_acquire(a).unwrap();
        assert_eq!(limit.try_acquire(a).err(), Some(Refusal::Source));
        let _b1 = limit.try_acquire(b).unwrap();
        assert_eq!(limit.try_acquire(b).err(), Some(Refusal::Total));
        drop(a1);
        assert!(limit.try_acquire(a).is_ok());
        // A refused attempt leaves no count behind.
        assert_eq!(limit.sources.lock().unwrap().len(), 2);
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let limit = ConnectionLimit::new(10, 1);
        let _x = limit.try_acquire("fd00:1::1".parse().unwrap()).unwrap();
        assert_eq!(
            limit.try_acquire("fd00:1::ffff:2".parse().unwrap()).err(),
            Some(Refusal::Source)
        );
        assert!(limit.try_acquire("fd00:2::1".parse().unwrap()).is_ok());
        let _v4 = limit.try_acquire("198.18.0.9".parse().unwrap()).unwrap();
        assert_eq!(
            limit
                .try_acquire("::ffff:198.18.0.9".parse().unwrap())
                .err(),
            Some(Refusal::Source)
        );
    }
}
