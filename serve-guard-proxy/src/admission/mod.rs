//! Fair admission: which connections the proxy serves when more arrive than it can hold, as
//! edge proxies do it under a many-source attack.
//!
//! - Nested limits: `max_connections_per_source` (an IPv4 address, an IPv6 /64) within
//!   `max_connections_per_prefix` (an IPv4 /24, an IPv6 `ipv6_aggregate_prefix`) within
//!   `max_connections`.
//! - A full limit does not turn newcomers away while connections that have not completed a
//!   request head hold places: the newcomer displaces the oldest such *fresh* connection (of its
//!   own source or prefix when that is what is full, else of the heaviest prefix), whose task is
//!   cancelled at once. It is refused only when nobody can be displaced. A connection that has
//!   completed a request (*proven*), or one with the token (*authenticated*), is never displaced.
//! - Deadlines shorten as the pool fills ([`under_pressure`]): the first request's, and the idle
//!   limit of connections that never showed the token.
//! - TLS handshakes are bounded in number in progress (from CPUs) and in rate per prefix, and a
//!   connection over either bound is closed before any crypto.
//!
//! `keys`: what a connection counts under; `table`: the counts and the choice of victims;
//! `bucket`: the handshake rate per prefix.

#![forbid(unsafe_code)]

pub mod bucket;
pub mod keys;
pub mod table;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::config::Limits;
use crate::metrics::{self as metrics, Family, Limit};
use bucket::{Buckets, Rate};
use keys::{Grouping, PrefixKey, Scope};
use table::{Caps, Displaced, Full, Stage, Table};

/// TLS handshakes in progress per CPU. A full handshake costs about a millisecond of CPU (the
/// key exchange and the signature), so 32 per CPU is at most ~32 ms of handshake work queued
/// ahead of an established client's request on each CPU.
pub const HANDSHAKES_PER_CPU: usize = 32;
/// Handshakes one IPv4 /24 or IPv6 aggregate prefix may start per second, and in a burst. A
/// client reuses its connections (keep-alive, HTTP/2): 32 new TLS connections a second is a
/// busy office behind one NAT, while a flood from one block gets ~32 ms of CPU a second.
pub const HANDSHAKE_RATE: Rate = Rate {
    per_second: 32.0,
    burst: 64.0,
};
/// Under pressure a deadline shortens to this, never less (nor more than the configured one):
/// enough for a TLS handshake and a request head across a continent.
pub const PRESSURE_FLOOR: Duration = Duration::from_secs(1);
/// While the pool is under pressure, a connection that never showed the token looks at its idle
/// limit again at least this often, so pressure that builds up later reaches it.
pub const PRESSURE_RECHECK: Duration = Duration::from_secs(1);

/// A deadline as the pool fills: `full` up to half occupancy, then straight down to
/// [`PRESSURE_FLOOR`] at full occupancy.
pub fn under_pressure(full: Duration, open: usize, max: usize) -> Duration {
    let floor = PRESSURE_FLOOR.min(full);
    let occupancy = open as f64 / max.max(1) as f64;
    if occupancy <= 0.5 {
        return full;
    }
    let toward_floor = ((occupancy - 0.5) * 2.0).min(1.0);
    floor + (full - floor).mul_f64(1.0 - toward_floor)
}

/// Why a connection was closed at accept, or before its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} reached for {} sources counted by /{prefix_len}, and no connection could be displaced", limit.as_str(), family.as_str())]
pub struct Refused {
    pub limit: Limit,
    pub family: Family,
    /// The prefix length the full count is kept by (0: all sources together).
    pub prefix_len: u8,
}

impl Refused {
    /// Counts and logs the refused connection (see `observe::connection_refused`).
    pub fn report(&self, listener: metrics::Listener, client: std::net::SocketAddr) {
        super::observe::connection_refused(
            listener,
            client,
            self.limit,
            self.family,
            self.prefix_len,
        );
    }
}

/// The limits admission applies, from `[public.limits]` and the CPUs.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub caps: Caps,
    pub grouping: Grouping,
    pub handshake_rate: Rate,
}

impl AdmissionLimits {
    pub fn from_config(limits: &Limits) -> AdmissionLimits {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        AdmissionLimits {
            caps: Caps::new(
                limits.max_connections,
                limits.max_connections_per_prefix,
                limits.max_connections_per_source,
                HANDSHAKES_PER_CPU * cpus,
            ),
            grouping: Grouping {
                ipv6_aggregate_prefix: limits.ipv6_aggregate_prefix,
            },
            handshake_rate: HANDSHAKE_RATE,
        }
    }
}

struct Inner {
    table: Mutex<Table>,
    buckets: Mutex<Buckets>,
    grouping: Grouping,
    /// Connections held, readable without the lock (the deadlines' pressure).
    open: AtomicUsize,
    max: usize,
}

impl Inner {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limit(full: Full) -> Limit {
        match full {
            Full::Connections(Scope::All) => Limit::Connections,
            Full::Connections(Scope::Prefix) => Limit::ConnectionsPerPrefix,
            Full::Connections(Scope::Source) => Limit::ConnectionsPerSource,
            Full::Handshakes => Limit::TlsHandshakes,
        }
    }

    fn scope(limit: Limit) -> Scope {
        match limit {
            Limit::Connections | Limit::TlsHandshakes => Scope::All,
            Limit::ConnectionsPerPrefix | Limit::TlsHandshakeRate => Scope::Prefix,
            Limit::ConnectionsPerSource => Scope::Source,
        }
    }

    fn refused(&self, limit: Limit, family: Family) -> Refused {
        metrics::global().admission_refused(limit, family);
        Refused {
            limit,
            family,
            prefix_len: self.grouping.prefix_len(Self::scope(limit), family),
        }
    }

    fn displaced(&self, d: Displaced, by: IpAddr) {
        let limit = Self::limit(d.full);
        let family = d.prefix.family();
        metrics::global().admission_displaced(limit, family);
        super::observe::connection_displaced(by, limit, family);
    }
}

/// The proxy's admission state, shared by both listeners.
#[derive(Clone)]
pub struct Admission(Arc<Inner>);

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission(Arc::new(Inner {
            table: Mutex::new(Table::new(limits.caps)),
            buckets: Mutex::new(Buckets::new(limits.handshake_rate)),
            grouping: limits.grouping,
            open: AtomicUsize::new(0),
            max: limits.caps.total,
        }))
    }

    /// A slot for a connection from `peer`, held until the connection (and any tunnel upgraded
    /// from it) ends; when a limit is full, a fresh connection is displaced to make room, and
    /// `Err` says which limit was full when none could be.
    pub fn admit(&self, peer: IpAddr) -> Result<Slot, Refused> {
        let (source, prefix) = self.0.grouping.keys(peer);
        let family = prefix.family();
        let mut table = self.0.table();
        let admitted = table.admit(source, prefix);
        self.0.open.store(table.open(), Ordering::Relaxed);
        drop(table);
        let (id, cancel, displaced) =
            admitted.map_err(|full| self.0.refused(Inner::limit(full), family))?;
        if let Some(d) = displaced {
            self.0.displaced(d, peer);
        }
        Ok(Slot {
            id,
            prefix,
            peer,
            stage: AtomicU8::new(Stage::Fresh as u8),
            cancel,
            inner: self.0.clone(),
        })
    }
}

/// The connection's place under the connection limits, held until the connection and any
/// tunnel upgraded from it end. Request handling marks it proven (a complete request head) and
/// authenticated (the token), which admission reads when choosing whom to displace.
#[derive(Clone)]
pub struct ConnectionSlot(Arc<Slot>);

impl ConnectionSlot {
    pub fn new(slot: Slot) -> ConnectionSlot {
        ConnectionSlot(Arc::new(slot))
    }
}

impl std::ops::Deref for ConnectionSlot {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        &self.0
    }
}

/// One connection's place: its share of every limit, until dropped.
pub struct Slot {
    id: u64,
    prefix: PrefixKey,
    peer: IpAddr,
    /// A copy of the table's stage, so that every request after the first costs no lock.
    stage: AtomicU8,
    cancel: CancellationToken,
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.inner.table();
        table.release(self.id);
        self.inner.open.store(table.open(), Ordering::Relaxed);
    }
}

impl Slot {
    fn advance(&self, stage: Stage) {
        if self.stage.fetch_max(stage as u8, Ordering::AcqRel) < stage as u8 {
            self.inner.table().advance(self.id, stage);
        }
    }

    /// A request head completed on this connection: it is no longer displaced.
    pub fn mark_proven(&self) {
        self.advance(Stage::Proven);
    }

    /// A request on this connection carried a valid token: it keeps its full idle limit too.
    pub fn mark_authenticated(&self) {
        self.advance(Stage::Authenticated);
    }

    pub fn is_authenticated(&self) -> bool {
        self.stage.load(Ordering::Acquire) == Stage::Authenticated as u8
    }

    /// Completes when the connection has been displaced: its task must close it.
    pub fn displaced(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    fn pressure(&self, full: Duration) -> Duration {
        under_pressure(
            full,
            self.inner.open.load(Ordering::Relaxed),
            self.inner.max,
        )
    }

    /// Until the first request head, given how full the pool is now.
    pub fn first_request_timeout(&self, full: Duration) -> Duration {
        self.pressure(full)
    }

    /// With no request in flight: `full` once the token was shown, else shortened by
    /// pressure. Also when to look again (pressure may build up meanwhile).
    pub fn idle_timeout(&self, full: Duration) -> (Duration, Duration) {
        if self.is_authenticated() {
            return (full, full);
        }
        let limit = self.pressure(full);
        (limit, limit.min(PRESSURE_RECHECK))
    }

    /// A place for this connection's TLS handshake, taken once its ClientHello is in and
    /// before any crypto: `Err` when its prefix has started too many handshakes lately, or
    /// when the handshakes in progress are at their bound and none is old enough to displace.
    pub fn begin_handshake(&self) -> Result<HandshakePermit<'_>, Refused> {
        let family = self.prefix.family();
        let now = Instant::now();
        let taken = self
            .inner
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(self.prefix, now);
        if !taken {
            return Err(self.inner.refused(Limit::TlsHandshakeRate, family));
        }
        let begun = self.inner.table().begin_handshake(self.id, now);
        match begun {
            Ok(displaced) => {
                if let Some(d) = displaced {
                    self.inner.displaced(d, self.peer);
                }
                Ok(HandshakePermit(self))
            }
            Err(full) => Err(self.inner.refused(Inner::limit(full), family)),
        }
    }
}

/// A place among the TLS handshakes in progress, given back on drop.
pub struct HandshakePermit<'a>(&'a Slot);

impl Drop for HandshakePermit<'_> {
    fn drop(&mut self) {
        self.0.inner.table().end_handshake(self.0.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per_prefix: usize, per_source: usize) -> Admission {
        Admission::new(AdmissionLimits {
            caps: Caps::new(total, per_prefix, per_source, 2),
            grouping: Grouping {
                ipv6_aggregate_prefix: 48,
            },
            handshake_rate: Rate {
                per_second: 1.0,
                burst: 3.0,
            },
        })
    }

    #[test]
    fn the_deadline_curve() {
        let full = Duration::from_secs(10);
        assert_eq!(under_pressure(full, 0, 100), full);
        assert_eq!(under_pressure(full, 50, 100), full);
        assert_eq!(under_pressure(full, 75, 100), Duration::from_millis(5500));
        assert_eq!(under_pressure(full, 100, 100), PRESSURE_FLOOR);
        // Never above the configured value.
        let short = Duration::from_millis(300);
        assert_eq!(under_pressure(short, 100, 100), short);
    }

    #[tokio::test]
    async fn a_displaced_connection_is_told_and_refusals_name_their_limit() {
        let a = admission(2, 2, 2);
        let first = a.admit("198.18.64.1".parse().unwrap()).unwrap();
        let second = a.admit("198.18.64.2".parse().unwrap()).unwrap();
        second.mark_authenticated();
        let third = a.admit("198.18.65.1".parse().unwrap()).unwrap();
        // The fresh connection was displaced; its task hears it at once.
        tokio::time::timeout(Duration::from_secs(1), first.displaced())
            .await
            .expect("displaced");
        third.mark_proven();
        let refused = a.admit("198.18.66.1".parse().unwrap()).err().unwrap();
        assert_eq!(
            refused,
            Refused {
                limit: Limit::Connections,
                family: Family::Ipv4,
                prefix_len: 0
            }
        );
        assert!(second.is_authenticated() && !third.is_authenticated());
        // The full pool shortens a fresh connection's deadlines, not an authenticated one's.
        let full = Duration::from_secs(10);
        assert_eq!(third.first_request_timeout(full), PRESSURE_FLOOR);
        assert_eq!(second.idle_timeout(full), (full, full));
        assert_eq!(third.idle_timeout(full), (PRESSURE_FLOOR, PRESSURE_FLOOR));
        drop(first);
        drop(third);
        assert!(a.admit("fd00:17::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn handshakes_are_refused_over_the_prefix_rate_and_the_bound() {
        let a = admission(10, 10, 10);
        let x = a.admit("fd00:17:0:1::1".parse().unwrap()).unwrap();
        let y = a.admit("198.18.64.1".parse().unwrap()).unwrap();
        let z = a.admit("198.18.65.1".parse().unwrap()).unwrap();
        let px = x.begin_handshake().unwrap();
        let _py = y.begin_handshake().unwrap();
        // Both places taken by young handshakes of other prefixes, one each.
        let refused = z.begin_handshake().err().unwrap();
        assert_eq!(refused.limit, Limit::TlsHandshakes);
        drop(px);
        // The /48's burst of 3: x took one, x and w one more each, then it is spent.
        let w = a.admit("fd00:17:0:2::1".parse().unwrap()).unwrap();
        drop(x.begin_handshake().unwrap());
        drop(w.begin_handshake().unwrap());
        let refused = w.begin_handshake().err().unwrap();
        assert_eq!(
            (refused.limit, refused.prefix_len),
            (Limit::TlsHandshakeRate, 48)
        );
    }
}
