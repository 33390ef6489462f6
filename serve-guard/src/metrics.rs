//! The Prometheus endpoint (`[metrics] listen`, default 127.0.0.1:9464): `GET /metrics` in the
//! OpenMetrics text format (prometheus-client), `GET /ready` 200 once the filter is attached and
//! its maps are filled, 503 before.
//!
//! The packet counters live in the kernel (per-CPU map) and the CIDR figures in the store, so each
//! scrape builds a registry from a fresh snapshot rather than mirroring them continuously.

use crate::control::StatsReport;
use crate::control::view::AgentView;
use crate::store::Store;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;

/// Prefix of every metric name.
pub const PREFIX: &str = "serve_guard";
pub const METRICS_PATH: &str = "/metrics";
pub const READY_PATH: &str = "/ready";
/// A scraper must send its request head within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a scrape connection may live.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most scrape connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Whether the filter is attached and its maps filled; the agent owns the flag.
pub type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a scrape reads.
pub struct MetricsState {
    pub store: Arc<Store>,
    pub view: Arc<dyn AgentView>,
    pub ready: ReadyFn,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    reason: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    mode: String,
    version: String,
}

/// Renders one scrape. Counters that cannot be read are left out (and logged) so the CIDR and
/// readiness figures still reach the scraper.
pub async fn render(state: &MetricsState) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);

    let stats = match state.view.stats().await {
        Ok(json) => match serde_json::from_value::<StatsReport>(json) {
            Ok(stats) => Some(stats),
            Err(e) => {
                tracing::warn!("metrics: unexpected counter snapshot: {e}");
                None
            }
        },
        Err(e) => {
            tracing::warn!("metrics: cannot read the counters: {e}");
            None
        }
    };
    if let Some(stats) = stats {
        let packets = Family::<CounterLabels, Counter>::default();
        let bytes = Family::<CounterLabels, Counter>::default();
        for row in &stats.counters {
            let labels = CounterLabels {
                reason: row.reason.clone(),
                family: row.family.clone(),
            };
            // A fresh registry per scrape: inc_by from zero sets the kernel's running total.
            packets.get_or_create(&labels).inc_by(row.packets);
            bytes.get_or_create(&labels).inc_by(row.bytes);
        }
        registry.register(
            "packets",
            "Packets seen by the XDP filter, by verdict reason and address family, summed over CPUs",
            packets,
        );
        registry.register(
            "bytes",
            "Bytes seen by the XDP filter, by verdict reason and address family, summed over CPUs",
            bytes,
        );
    }

    let listing = state.store.listing();
    let cidrs = Family::<FamilyLabel, Gauge>::default();
    for (family, count) in [("ipv4", listing.ipv4), ("ipv6", listing.ipv6)] {
        cidrs
            .get_or_create(&FamilyLabel {
                family: family.into(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register("cidrs", "CIDRs in the allow-list, by address family", cidrs);

    let revision = Gauge::<i64>::default();
    revision.set(i64::try_from(listing.revision).unwrap_or(i64::MAX));
    registry.register(
        "cidr_revision",
        "Revision of the CIDR allow-list (counts list changes; survives restarts)",
        revision,
    );

    let stats = state.store.stats();
    let last_apply = Gauge::<i64>::default();
    last_apply
        .set(i64::try_from(stats.last_apply_unix.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register(
        "cidr_last_apply_timestamp_seconds",
        "Unix time of the last CIDR list change applied by this agent (0: none since start)",
        last_apply,
    );

    let errors = Counter::<u64>::default();
    errors.inc_by(stats.apply_errors.load(Ordering::Relaxed));
    registry.register(
        "cidr_apply_errors",
        "CIDR changes that failed to apply: map updates refused, invalid edits of the file",
        errors,
    );

    if let Some(count) = state.view.token_reload_errors() {
        let errors = Counter::<u64>::default();
        errors.inc_by(count);
        registry.register(
            "token_reload_errors",
            "Re-reads of the token file that found it invalid (the tokens in force stayed)",
            errors,
        );
    }

    let ready = Gauge::<i64>::default();
    ready.set(i64::from((state.ready)()));
    registry.register(
        "ready",
        "1 once the filter is attached and its maps are filled",
        ready,
    );

    let info = Family::<InfoLabels, Gauge>::default();
    info.get_or_create(&InfoLabels {
        mode: state.view.mode().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
    .set(1);
    registry.register("agent", "The agent's mode and version", info);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A bound metrics endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    state: Arc<MetricsState>,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr, state: MetricsState) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer {
            listener,
            state: Arc::new(state),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "metrics listening");
        }
        let limits = crate::admin_http::Limits {
            header_timeout: HEADER_TIMEOUT,
            connection_timeout: CONNECTION_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        };
        let state = self.state.clone();
        let handler = move |req| {
            let state = state.clone();
            async move { answer(&state, req).await }
        };
        crate::admin_http::serve("metrics", &self.listener, limits, handler, shutdown).await;
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn answer<B>(state: &MetricsState, req: Request<B>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "use GET\n".into());
    }
    match req.uri().path() {
        METRICS_PATH => match render(state).await {
            Ok(body) => text(StatusCode::OK, OPENMETRICS, body),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                PLAIN,
                format!("cannot encode the metrics: {e}\n"),
            ),
        },
        READY_PATH if (state.ready)() => text(StatusCode::OK, PLAIN, "ready\n".into()),
        READY_PATH => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not ready: the filter is not attached or its maps are not filled yet\n".into(),
        ),
        other => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("no route {other}; try {METRICS_PATH} or {READY_PATH}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::view::ViewFuture;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    struct Counters;

    impl AgentView for Counters {
        fn mode(&self) -> &str {
            "private"
        }
        fn filter_status(&self) -> ViewFuture<'_, Result<serde_json::Value, String>> {
            Box::pin(async { Ok(serde_json::json!({})) })
        }
        fn stats(&self) -> ViewFuture<'_, Result<serde_json::Value, String>> {
            Box::pin(async {
                Ok(serde_json::json!({ "counters": [
                    {"reason": "drop_outside_vpc", "family": "ipv6", "packets": 12, "bytes": 960}
                ]}))
            })
        }
        fn public_status(&self) -> ViewFuture<'_, Option<Result<serde_json::Value, String>>> {
            Box::pin(async { None })
        }
        fn reload_token(&self) -> Option<Result<(), String>> {
            None
        }
        fn exposures(&self) -> Result<Vec<crate::node::Exposure>, String> {
            Ok(Vec::new())
        }
    }

    struct Fixture {
        dir: std::path::PathBuf,
        state: MetricsState,
        ready: Arc<AtomicBool>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture() -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sg-metrics-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cidrs"), "10.0.0.0/8\nfd00::/8\nfd01::/16\n").unwrap();
        let store = Arc::new(Store::open(&dir.join("cidrs"), &dir.join("state")).unwrap());
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        Fixture {
            dir,
            state: MetricsState {
                store,
                view: Arc::new(Counters),
                ready: Arc::new(move || flag.load(Ordering::Relaxed)),
            },
            ready,
        }
    }

    async fn get(state: &MetricsState, path: &str) -> (StatusCode, String) {
        let resp = answer(state, Request::get(path).body(()).unwrap()).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_is_503_until_the_agent_says_so() {
        let f = fixture();
        assert_eq!(
            get(&f.state, READY_PATH).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        f.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&f.state, READY_PATH).await.0, StatusCode::OK);
        assert_eq!(get(&f.state, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_scrape_has_counters_cidrs_revision_and_errors() {
        let f = fixture();
        let (status, body) = get(&f.state, METRICS_PATH).await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "serve_guard_packets_total{reason=\"drop_outside_vpc\",family=\"ipv6\"} 12",
            "serve_guard_bytes_total{reason=\"drop_outside_vpc\",family=\"ipv6\"} 960",
            "serve_guard_cidrs{family=\"ipv4\"} 1",
            "serve_guard_cidrs{family=\"ipv6\"} 2",
            "serve_guard_cidr_revision 1",
            "serve_guard_cidr_apply_errors_total 0",
            "serve_guard_cidr_last_apply_timestamp_seconds 0",
            "serve_guard_ready 0",
            "serve_guard_agent{mode=\"private\",version=",
        ] {
            assert!(body.contains(line), "missing {line:?} in:\n{body}");
        }
        assert!(
            body.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
    }
}
