//! Public-mode proxy metrics: requests by listener and outcome, request duration, open and
//! rejected connections, tunnels and streams ended by a token's revocation, token reloads (the
//! reload errors are the token source's own count, see `agent`).
//!
//! The proxy runs in its own unprivileged process: it records into that process's
//! [`ProxyMetrics`] where a request's outcome or a connection's acceptance is decided and sends a
//! [`Snapshot`] to the agent every [`SNAPSHOT_INTERVAL`]; the agent keeps the totals
//! ([`AgentTotals`], summed across restarts of the process) and each scrape renders them. So a
//! scrape is at most one interval behind the proxy.

#![forbid(unsafe_code)]

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How often the proxy process sends its figures to the agent.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bounds of the request-duration buckets, in seconds: 1 ms to the upstream timeouts.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The listener a request or connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Http,
    Grpc,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Http, Listener::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Grpc => "grpc",
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Sent upstream and its answer relayed (whatever its status).
    Forwarded,
    /// 401 (gRPC: UNAUTHENTICATED): no token at all.
    MissingToken,
    /// 401 (gRPC: UNAUTHENTICATED): a token that is not the cluster's.
    InvalidToken,
    /// 303 + cookie: a valid API docs link.
    DocsLink,
    /// 400: a request the proxy cannot forward, or one hyper could not parse.
    BadRequest,
    /// 403: a cookie-authenticated unsafe request from another origin (CSRF).
    Forbidden,
    /// 405: CONNECT.
    MethodNotAllowed,
    /// 431: request head over the size limit.
    HeaderTooLarge,
    /// 502 (gRPC: UNAVAILABLE): the upstream is unreachable.
    BadGateway,
    /// 504 (gRPC: DEADLINE_EXCEEDED): the upstream did not answer in time.
    GatewayTimeout,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Forwarded,
        Outcome::MissingToken,
        Outcome::InvalidToken,
        Outcome::DocsLink,
        Outcome::BadRequest,
        Outcome::Forbidden,
        Outcome::MethodNotAllowed,
        Outcome::HeaderTooLarge,
        Outcome::BadGateway,
        Outcome::GatewayTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::MissingToken => "missing_token",
            Outcome::InvalidToken => "invalid_token",
            Outcome::DocsLink => "docs_link",
            Outcome::BadRequest => "bad_request",
            Outcome::Forbidden => "forbidden",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::HeaderTooLarge => "header_too_large",
            Outcome::BadGateway => "bad_gateway",
            Outcome::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The HTTP status the proxy answers with (gRPC answers 200 with a grpc-status).
    pub fn status(self) -> u16 {
        match self {
            Outcome::Forwarded => 200,
            Outcome::MissingToken | Outcome::InvalidToken => 401,
            Outcome::DocsLink => 303,
            Outcome::BadRequest => 400,
            Outcome::Forbidden => 403,
            Outcome::MethodNotAllowed => 405,
            Outcome::HeaderTooLarge => 431,
            Outcome::BadGateway => 502,
            Outcome::GatewayTimeout => 504,
        }
    }

    /// Refused by the proxy because of the client (logged as a refused request).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Outcome::MissingToken
                | Outcome::InvalidToken
                | Outcome::BadRequest
                | Outcome::Forbidden
                | Outcome::MethodNotAllowed
                | Outcome::HeaderTooLarge
        )
    }
}

/// What a revocation ended: what a removed token had opened and that outlives a request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// A WebSocket tunnel: both connections closed.
    Tunnel,
    /// A request in flight: its response (a stream, server-sent events, a gRPC stream) reset or
    /// cut, its upload stopped, or, before the upstream answered, a 401 instead.
    Stream,
}

impl Revoked {
    pub const ALL: [Revoked; 2] = [Revoked::Tunnel, Revoked::Stream];

    pub fn as_str(self) -> &'static str {
        match self {
            Revoked::Tunnel => "tunnel",
            Revoked::Stream => "stream",
        }
    }
}

/// An address family, as admission counts it (an IPv4-mapped IPv6 address is IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// The admission limit that displaced or refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_connections`, all sources together.
    Connections,
    /// `max_connections_per_prefix`: an IPv4 /24, an IPv6 `ipv6_aggregate_prefix`.
    ConnectionsPerPrefix,
    /// `max_connections_per_source`: an IPv4 address, an IPv6 /64.
    ConnectionsPerSource,
    /// TLS handshakes in progress, all sources together.
    TlsHandshakes,
    /// TLS handshakes started per second by one prefix.
    TlsHandshakeRate,
}

impl Limit {
    pub const ALL: [Limit; 5] = [
        Limit::Connections,
        Limit::ConnectionsPerPrefix,
        Limit::ConnectionsPerSource,
        Limit::TlsHandshakes,
        Limit::TlsHandshakeRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::ConnectionsPerPrefix => "max_connections_per_prefix",
            Limit::ConnectionsPerSource => "max_connections_per_source",
            Limit::TlsHandshakes => "tls_handshakes",
            Limit::TlsHandshakeRate => "tls_handshake_rate",
        }
    }

    fn is_handshake(self) -> bool {
        matches!(self, Limit::TlsHandshakes | Limit::TlsHandshakeRate)
    }

    /// The prefix length the limit counts `family` by (0: all sources together).
    fn prefix_len(self, family: Family, ipv6_aggregate_prefix: u8) -> u8 {
        match (self, family) {
            (Limit::Connections | Limit::TlsHandshakes, _) => 0,
            (Limit::ConnectionsPerPrefix | Limit::TlsHandshakeRate, Family::Ipv4) => 24,
            (Limit::ConnectionsPerPrefix | Limit::TlsHandshakeRate, Family::Ipv6) => {
                ipv6_aggregate_prefix
            }
            (Limit::ConnectionsPerSource, Family::Ipv4) => 32,
            (Limit::ConnectionsPerSource, Family::Ipv6) => 64,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    limit: &'static str,
    family: &'static str,
    prefix_len: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevokedLabel {
    kind: &'static str,
}

const LISTENERS: usize = Listener::ALL.len();
const LIMITS: usize = Limit::ALL.len();
const FAMILIES: usize = Family::ALL.len();
const OUTCOMES: usize = Outcome::ALL.len();
const BUCKETS: usize = DURATION_BUCKETS.len();

fn index<T: PartialEq>(all: &[T], item: &T) -> usize {
    all.iter().position(|x| x == item).unwrap_or(0)
}

/// What the proxy records, in the process that runs it (the unprivileged proxy process).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    requests: [[AtomicU64; OUTCOMES]; LISTENERS],
    buckets: [[AtomicU64; BUCKETS]; LISTENERS],
    count: [AtomicU64; LISTENERS],
    /// Seconds, as f64 bits.
    sum: [AtomicU64; LISTENERS],
    open: [AtomicI64; LISTENERS],
    rejected: [AtomicU64; LISTENERS],
    revoked: [AtomicU64; Revoked::ALL.len()],
    displaced: [[AtomicU64; FAMILIES]; LIMITS],
    refused: [[AtomicU64; FAMILIES]; LIMITS],
    /// The IPv6 prefix `max_connections_per_prefix` counts by, for the `prefix_len` label.
    ipv6_aggregate_prefix: std::sync::atomic::AtomicU8,
}

/// The proxy process's figures as it sends them to the agent. Counters only grow within one
/// proxy process; the agent adds them up across restarts of the process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub requests: Vec<Vec<u64>>,
    pub buckets: Vec<Vec<u64>>,
    pub count: Vec<u64>,
    pub sum: Vec<f64>,
    pub open: Vec<i64>,
    pub rejected: Vec<u64>,
    /// By [`Revoked::ALL`].
    #[serde(default)]
    pub revoked: Vec<u64>,
    /// Per [`Limit`], per [`Family`].
    #[serde(default)]
    pub displaced: Vec<Vec<u64>>,
    #[serde(default)]
    pub refused: Vec<Vec<u64>>,
    #[serde(default)]
    pub ipv6_aggregate_prefix: u8,
}

fn load(a: &[AtomicU64]) -> Vec<u64> {
    a.iter().map(|v| v.load(Ordering::Relaxed)).collect()
}

impl ProxyMetrics {
    pub fn request(&self, listener: Listener, outcome: Outcome, elapsed: Option<Duration>) {
        let l = index(&Listener::ALL, &listener);
        self.requests[l][index(&Outcome::ALL, &outcome)].fetch_add(1, Ordering::Relaxed);
        if let Some(elapsed) = elapsed {
            let secs = elapsed.as_secs_f64();
            for (bucket, bound) in self.buckets[l].iter().zip(DURATION_BUCKETS) {
                if secs <= bound {
                    bucket.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.count[l].fetch_add(1, Ordering::Relaxed);
            let _ = self.sum[l].try_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + secs).to_bits())
            });
        }
    }

    pub fn connection_rejected(&self, listener: Listener) {
        self.rejected[index(&Listener::ALL, &listener)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn revoked(&self, what: Revoked) {
        self.revoked[index(&Revoked::ALL, &what)].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection displaced by a newcomer because `limit` was full (`family`: the victim's).
    pub fn admission_displaced(&self, limit: Limit, family: Family) {
        self.displaced[index(&Limit::ALL, &limit)][index(&Family::ALL, &family)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed at accept, or before its TLS handshake, because `limit` was full.
    pub fn admission_refused(&self, limit: Limit, family: Family) {
        self.refused[index(&Limit::ALL, &limit)][index(&Family::ALL, &family)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The IPv6 aggregate prefix in force (a label of the admission metrics).
    pub fn set_ipv6_aggregate_prefix(&self, prefix: u8) {
        self.ipv6_aggregate_prefix.store(prefix, Ordering::Relaxed);
    }

    /// Counts an open connection until the guard drops.
    pub fn connection_opened(&'static self, listener: Listener) -> OpenConnection {
        let gauge = &self.open[index(&Listener::ALL, &listener)];
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenConnection(gauge)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.iter().map(|r| load(r)).collect(),
            buckets: self.buckets.iter().map(|b| load(b)).collect(),
            count: load(&self.count),
            sum: self
                .sum
                .iter()
                .map(|s| f64::from_bits(s.load(Ordering::Relaxed)))
                .collect(),
            open: self
                .open
                .iter()
                .map(|o| o.load(Ordering::Relaxed))
                .collect(),
            rejected: load(&self.rejected),
            revoked: load(&self.revoked),
            displaced: self.displaced.iter().map(|r| load(r)).collect(),
            refused: self.refused.iter().map(|r| load(r)).collect(),
            ipv6_aggregate_prefix: self.ipv6_aggregate_prefix.load(Ordering::Relaxed),
        }
    }
}

/// Holds one count of `serve_guard_proxy_open_connections`.
#[derive(Debug)]
pub struct OpenConnection(&'static AtomicI64);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The process's proxy metrics.
pub fn global() -> &'static ProxyMetrics {
    static METRICS: OnceLock<ProxyMetrics> = OnceLock::new();
    METRICS.get_or_init(ProxyMetrics::default)
}

/// The agent's view of the proxy process: the sum over the processes that ended (restarts)
/// plus the latest snapshot of the running one, and the token reloads (done by the agent).
#[derive(Debug, Default)]
pub struct AgentTotals {
    state: Mutex<(Snapshot, Snapshot)>,
    token_reloads: AtomicU64,
}

fn add(into: &mut Vec<u64>, from: &[u64]) {
    into.resize(into.len().max(from.len()), 0);
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

impl Snapshot {
    /// `self + other` for counters; gauges (`open`) from `other`.
    fn plus(&self, other: &Snapshot) -> Snapshot {
        let mut out = self.clone();
        let rows = |into: &mut Vec<Vec<u64>>, from: &[Vec<u64>]| {
            into.resize(into.len().max(from.len()), Vec::new());
            for (a, b) in into.iter_mut().zip(from) {
                add(a, b);
            }
        };
        rows(&mut out.requests, &other.requests);
        rows(&mut out.buckets, &other.buckets);
        rows(&mut out.displaced, &other.displaced);
        rows(&mut out.refused, &other.refused);
        if other.ipv6_aggregate_prefix != 0 {
            out.ipv6_aggregate_prefix = other.ipv6_aggregate_prefix;
        }
        add(&mut out.count, &other.count);
        add(&mut out.rejected, &other.rejected);
        add(&mut out.revoked, &other.revoked);
        out.sum.resize(out.sum.len().max(other.sum.len()), 0.0);
        for (a, b) in out.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        out.open = other.open.clone();
        out
    }
}

impl AgentTotals {
    /// The running proxy process's latest snapshot.
    pub fn absorb(&self, snapshot: Snapshot) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 = snapshot;
    }

    /// The proxy process ended: its counts move into the base, its connections are gone.
    pub fn process_ended(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let last = std::mem::take(&mut state.1);
        state.0 = state.0.plus(&last);
        state.0.open.clear();
    }

    /// A re-read of the token file that found it valid.
    pub fn token_reloaded(&self) {
        self.token_reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the metrics to a scrape's registry (prefix `serve_guard_`); every series exists
    /// from the start at 0, so rates and alerts see the first event.
    pub fn register(&self, registry: &mut Registry) {
        let total = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0.plus(&state.1)
        };
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        let requests = MetricFamily::<RequestLabels, Counter>::default();
        let open = MetricFamily::<ListenerLabel, Gauge>::default();
        let rejected = MetricFamily::<ListenerLabel, Counter>::default();
        let mut histograms = Vec::new();
        for (l, listener) in Listener::ALL.iter().enumerate() {
            let label = ListenerLabel {
                listener: listener.as_str(),
            };
            let row = total.requests.get(l).cloned().unwrap_or_default();
            for (o, outcome) in Outcome::ALL.iter().enumerate() {
                requests
                    .get_or_create(&RequestLabels {
                        listener: listener.as_str(),
                        outcome: outcome.as_str(),
                    })
                    .inc_by(at(&row, o));
            }
            let buckets = total.buckets.get(l).cloned().unwrap_or_default();
            histograms.push((
                label.clone(),
                HistogramView {
                    sum: total.sum.get(l).copied().unwrap_or(0.0),
                    count: at(&total.count, l),
                    buckets: DURATION_BUCKETS
                        .iter()
                        .enumerate()
                        .map(|(i, bound)| (*bound, at(&buckets, i)))
                        .chain([(f64::INFINITY, at(&total.count, l))])
                        .collect(),
                },
            ));
            open.get_or_create(&label)
                .set(total.open.get(l).copied().unwrap_or(0));
            rejected
                .get_or_create(&label)
                .inc_by(at(&total.rejected, l));
        }
        registry.register(
            "proxy_requests",
            "Requests answered by the public-mode proxy, by listener and outcome",
            requests,
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Time from a request's arrival to its response head (upstream time included), by listener",
            HistogramFamily(histograms),
        );
        registry.register(
            "proxy_open_connections",
            "Client connections the proxy holds open, by listener",
            open,
        );
        registry.register(
            "proxy_rejected_connections",
            "Client connections closed at accept because a connection limit was full and nobody could be displaced, or before their TLS handshake, by listener",
            rejected,
        );
        let revoked = MetricFamily::<RevokedLabel, Counter>::default();
        for (i, what) in Revoked::ALL.iter().enumerate() {
            revoked
                .get_or_create(&RevokedLabel {
                    kind: what.as_str(),
                })
                .inc_by(at(&total.revoked, i));
        }
        registry.register(
            "proxy_revoked",
            "Tunnels and requests in flight ended because the token that admitted them left the token file, by kind",
            revoked,
        );
        register_admission(registry, &total);
        let reloads = Counter::<u64>::default();
        reloads.inc_by(self.token_reloads.load(Ordering::Relaxed));
        registry.register(
            "token_reloads",
            "Re-reads of the public-mode token file that found it valid",
            reloads,
        );
    }
}

/// The admission counters: displaced and refused connections per limit, TLS handshakes refused.
fn register_admission(registry: &mut Registry, total: &Snapshot) {
    let displaced = MetricFamily::<AdmissionLabels, Counter>::default();
    let refused = MetricFamily::<AdmissionLabels, Counter>::default();
    let handshakes = MetricFamily::<AdmissionLabels, Counter>::default();
    let v6 = match total.ipv6_aggregate_prefix {
        0 => crate::config::defaults::IPV6_AGGREGATE_PREFIX,
        p => p,
    };
    let at = |rows: &[Vec<u64>], l: usize, f: usize| {
        rows.get(l).and_then(|r| r.get(f)).copied().unwrap_or(0)
    };
    for (l, limit) in Limit::ALL.iter().enumerate() {
        for (f, family) in Family::ALL.iter().enumerate() {
            let labels = AdmissionLabels {
                limit: limit.as_str(),
                family: family.as_str(),
                prefix_len: limit.prefix_len(*family, v6),
            };
            if !matches!(limit, Limit::TlsHandshakeRate) {
                displaced
                    .get_or_create(&labels)
                    .inc_by(at(&total.displaced, l, f));
            }
            let into = if limit.is_handshake() {
                &handshakes
            } else {
                &refused
            };
            into.get_or_create(&labels).inc_by(at(&total.refused, l, f));
        }
    }
    registry.register(
        "proxy_displaced_connections",
        "Connections that had not completed a request head, closed to make room for a new one, by the limit that was full and the family and prefix length it counts by",
        displaced,
    );
    registry.register(
        "proxy_refused_connections",
        "Connections closed at accept because a limit was full and no connection could be displaced, by limit, family and prefix length",
        refused,
    );
    registry.register(
        "proxy_tls_handshakes_refused",
        "Connections closed before their TLS handshake (before any crypto): too many handshakes in progress, or the prefix's handshake rate spent",
        handshakes,
    );
}

/// One histogram from counts already cumulated (bucket bounds with `+Inf` last).
#[derive(Debug)]
struct HistogramView {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

/// The duration histogram of every listener, as one family.
#[derive(Debug)]
struct HistogramFamily(Vec<(ListenerLabel, HistogramView)>);

impl EncodeMetric for HistogramFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (label, h) in &self.0 {
            encoder
                .encode_family(label)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The agent's totals of the proxy process.
pub fn agent_totals() -> &'static AgentTotals {
    static TOTALS: OnceLock<AgentTotals> = OnceLock::new();
    TOTALS.get_or_init(AgentTotals::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(totals: &AgentTotals) -> String {
        let mut registry = Registry::with_prefix("sg");
        totals.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn admission_counters_render_by_limit_family_and_prefix_length() {
        let m = ProxyMetrics::default();
        m.set_ipv6_aggregate_prefix(40);
        m.admission_displaced(Limit::Connections, Family::Ipv4);
        m.admission_refused(Limit::ConnectionsPerPrefix, Family::Ipv6);
        m.admission_refused(Limit::TlsHandshakeRate, Family::Ipv4);
        let totals = AgentTotals::default();
        totals.absorb(m.snapshot());
        let text = render(&totals);
        for line in [
            r#"sg_proxy_displaced_connections_total{limit="max_connections",family="ipv4",prefix_len="0"} 1"#,
            r#"sg_proxy_displaced_connections_total{limit="max_connections_per_source",family="ipv6",prefix_len="64"} 0"#,
            r#"sg_proxy_refused_connections_total{limit="max_connections_per_prefix",family="ipv6",prefix_len="40"} 1"#,
            r#"sg_proxy_tls_handshakes_refused_total{limit="tls_handshake_rate",family="ipv4",prefix_len="24"} 1"#,
            r#"sg_proxy_tls_handshakes_refused_total{limit="tls_handshakes",family="ipv6",prefix_len="0"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn snapshots_add_up_across_proxy_process_restarts() {
        let m = Box::leak(Box::new(ProxyMetrics::default()));
        m.request(
            Listener::Http,
            Outcome::MissingToken,
            Some(Duration::from_millis(2)),
        );
        m.connection_rejected(Listener::Grpc);
        m.revoked(Revoked::Tunnel);
        let open = m.connection_opened(Listener::Http);
        let totals = AgentTotals::default();
        totals.absorb(m.snapshot());
        totals.token_reloaded();
        let text = render(&totals);
        for line in [
            "sg_proxy_requests_total{listener=\"http\",outcome=\"missing_token\"} 1",
            "sg_proxy_requests_total{listener=\"grpc\",outcome=\"forwarded\"} 0",
            "sg_proxy_request_duration_seconds_count{listener=\"http\"} 1",
            "sg_proxy_request_duration_seconds_bucket{le=\"0.001\",listener=\"http\"} 0",
            "sg_proxy_request_duration_seconds_bucket{le=\"0.0025\",listener=\"http\"} 1",
            "sg_proxy_request_duration_seconds_bucket{le=\"+Inf\",listener=\"http\"} 1",
            "sg_proxy_rejected_connections_total{listener=\"grpc\"} 1",
            "sg_proxy_open_connections{listener=\"http\"} 1",
            "sg_proxy_revoked_total{kind=\"tunnel\"} 1",
            "sg_proxy_revoked_total{kind=\"stream\"} 0",
            "sg_token_reloads_total 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(open);
        // The process ends and a new one starts from zero: counters keep their totals.
        totals.process_ended();
        let fresh = ProxyMetrics::default();
        fresh.request(Listener::Http, Outcome::MissingToken, None);
        totals.absorb(fresh.snapshot());
        let text = render(&totals);
        assert!(
            text.contains("sg_proxy_requests_total{listener=\"http\",outcome=\"missing_token\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sg_proxy_open_connections{listener=\"http\"} 0"),
            "{text}"
        );
    }
}
