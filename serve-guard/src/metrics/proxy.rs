//! Public-mode proxy metrics: requests by listener and outcome, request duration, open and
//! rejected connections, token reloads (the reload errors are the token source's own count, see
//! `agent`).
//!
//! One set per process: the proxy records into it where a request's outcome or a connection's
//! acceptance is decided, and every scrape registers clones of the same metrics (they share
//! their values).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

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
    pub const ALL: [Outcome; 9] = [
        Outcome::Forwarded,
        Outcome::MissingToken,
        Outcome::InvalidToken,
        Outcome::DocsLink,
        Outcome::BadRequest,
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
                | Outcome::MethodNotAllowed
                | Outcome::HeaderTooLarge
        )
    }
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

/// The process's proxy metrics.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<ListenerLabel, Histogram>,
    open_connections: Family<ListenerLabel, Gauge>,
    rejected_connections: Family<ListenerLabel, Counter>,
    token_reloads: Counter,
}

fn new_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl ProxyMetrics {
    fn new() -> Self {
        let metrics = ProxyMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(new_histogram),
            open_connections: Family::default(),
            rejected_connections: Family::default(),
            token_reloads: Counter::default(),
        };
        // Every series exists from the start at 0, so rates and alerts see the first event.
        for listener in Listener::ALL {
            let label = ListenerLabel {
                listener: listener.as_str(),
            };
            for outcome in Outcome::ALL {
                let _ = metrics.requests.get_or_create(&RequestLabels {
                    listener: listener.as_str(),
                    outcome: outcome.as_str(),
                });
            }
            let _ = metrics.duration.get_or_create(&label);
            let _ = metrics.open_connections.get_or_create(&label);
            let _ = metrics.rejected_connections.get_or_create(&label);
        }
        metrics
    }

    /// Adds the metrics to a scrape's registry (prefix `serve_guard_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "proxy_requests",
            "Requests answered by the public-mode proxy, by listener and outcome",
            self.requests.clone(),
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Time from a request's arrival to its response head (upstream time included), by listener",
            self.duration.clone(),
        );
        registry.register(
            "proxy_open_connections",
            "Client connections the proxy holds open, by listener",
            self.open_connections.clone(),
        );
        registry.register(
            "proxy_rejected_connections",
            "Client connections closed at accept because max_connections were open, by listener",
            self.rejected_connections.clone(),
        );
        registry.register(
            "token_reloads",
            "Re-reads of the public-mode token file that found it valid",
            self.token_reloads.clone(),
        );
    }

    pub fn request(&self, listener: Listener, outcome: Outcome, elapsed: Option<Duration>) {
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
        if let Some(elapsed) = elapsed {
            self.duration
                .get_or_create(&ListenerLabel {
                    listener: listener.as_str(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn connection_rejected(&self, listener: Listener) {
        self.rejected_connections
            .get_or_create(&ListenerLabel {
                listener: listener.as_str(),
            })
            .inc();
    }

    /// Counts an open connection until the guard drops.
    pub fn connection_opened(&self, listener: Listener) -> OpenConnection {
        let gauge = self
            .open_connections
            .get_or_create(&ListenerLabel {
                listener: listener.as_str(),
            })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// A re-read of the token file that found it valid.
    pub fn token_reloaded(&self) {
        self.token_reloads.inc();
    }
}

/// Holds one count of `serve_guard_proxy_open_connections`.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's proxy metrics.
pub fn global() -> &'static ProxyMetrics {
    static METRICS: OnceLock<ProxyMetrics> = OnceLock::new();
    METRICS.get_or_init(ProxyMetrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_requests_connections_and_reloads() {
        let m = ProxyMetrics::new();
        m.request(
            Listener::Http,
            Outcome::MissingToken,
            Some(Duration::from_millis(2)),
        );
        m.connection_rejected(Listener::Grpc);
        let open = m.connection_opened(Listener::Http);
        m.token_reloaded();
        let mut registry = Registry::with_prefix("sg");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "sg_proxy_requests_total{listener=\"http\",outcome=\"missing_token\"} 1",
            "sg_proxy_requests_total{listener=\"grpc\",outcome=\"forwarded\"} 0",
            "sg_proxy_request_duration_seconds_count{listener=\"http\"} 1",
            "sg_proxy_request_duration_seconds_bucket{le=\"0.0025\",listener=\"http\"} 1",
            "sg_proxy_rejected_connections_total{listener=\"grpc\"} 1",
            "sg_proxy_open_connections{listener=\"http\"} 1",
            "sg_token_reloads_total 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(open);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("sg_proxy_open_connections{listener=\"http\"} 0"));
    }
}
