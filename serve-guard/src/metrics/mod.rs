//! The Prometheus endpoint (`[metrics] listen`, default 127.0.0.1:9464): `GET /metrics` in the
//! Prometheus text format 0.0.4, or OpenMetrics when the scraper asks for it (`Accept`), and
//! `GET /ready`: 200 once the filter is attached and its maps are filled, 503 before.
//!
//! - `agent`: the filter's counters, the CIDR list, readiness, attachment, build info;
//! - the public-mode proxy's requests and connections and the token reloads are
//!   `serve_guard_proxy::metrics`: the proxy process sends its figures as snapshots, the agent
//!   adds them up (its supervisor) and renders them here;
//! - `process`: the standard `process_*` metrics;
//! - `format`: content negotiation and the 0.0.4 text.
//!
//! Each scrape builds a registry from fresh snapshots (kernel counters, store, /proc) plus the
//! proxy's long-lived metrics.

pub mod agent;
pub mod format;
pub mod process;

use crate::control::agent_view::AgentView;
use crate::store::Store;
use bytes::Bytes;
use format::Format;
use http_body_util::Full;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Where the filter's links are pinned (`serve_guard_filter_attached`).
    pub pin_dir: PathBuf,
}

/// Renders one scrape in OpenMetrics text: the filter and CIDR figures, the proxy metrics, the
/// build and the process.
pub async fn render(state: &MetricsState) -> Result<String, std::fmt::Error> {
    let mut root = Registry::default();
    process::register(&mut root);
    let registry = root.sub_registry_with_prefix(PREFIX);
    agent::register(state, registry).await;
    if state.view.mode() == crate::config::Mode::Public {
        serve_guard_proxy::metrics::agent_totals().register(registry);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &root)?;
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
            Ok(body) => {
                let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
                match Format::negotiate(accept) {
                    Format::OpenMetrics => text(StatusCode::OK, format::OPENMETRICS, body),
                    Format::Text004 => {
                        text(StatusCode::OK, format::TEXT_004, format::to_text_004(&body))
                    }
                }
            }
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
    use crate::config::Mode;
    use crate::control::agent_view::{Allowed, ViewFuture};
    use crate::control::public_status::PublicStatus;
    use crate::filter::{CounterEntry, CounterSnapshot, FilterError, FilterStatus};
    use crate::node::{AuditError, Exposure, ListenerAudit, ScanError};
    use crate::token::TokenError;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Counters;

    impl AgentView for Counters {
        fn mode(&self) -> Mode {
            Mode::Private
        }
        fn filter_status(&self) -> ViewFuture<'_, FilterStatus> {
            Box::pin(async { unreachable!("a scrape does not read the filter's status") })
        }
        fn stats(&self) -> ViewFuture<'_, Result<CounterSnapshot, FilterError>> {
            use serve_guard_common::{Family, Reason};
            Box::pin(async {
                Ok(CounterSnapshot {
                    counters: vec![CounterEntry {
                        reason: Reason::DropOutsideVpc,
                        family: Family::Ipv6,
                        packets: 12,
                        bytes: 960,
                    }],
                })
            })
        }
        fn public_status(&self) -> ViewFuture<'_, Option<PublicStatus>> {
            Box::pin(async { None })
        }
        fn reload_token(&self) -> Option<Result<(), TokenError>> {
            None
        }
        fn exposures(&self) -> Result<Vec<Exposure>, ScanError> {
            Ok(Vec::new())
        }
        fn listener_audit<'a>(
            &'a self,
            _allowed: &'a Allowed<'a>,
        ) -> ViewFuture<'a, Result<ListenerAudit, AuditError>> {
            use crate::node::listeners::{Consequence, Listener, SessionAtRisk};
            use crate::node::sockets::{Process, Protocol};
            use crate::ports::PortClass;
            let dashboard = Process {
                pid: 300,
                comm: "python".into(),
                cmdline: "python /ray/dashboard/dashboard.py".into(),
            };
            let listener = |port: u16, class: PortClass| Listener {
                protocol: Protocol::Tcp,
                local: SocketAddr::from(([0, 0, 0, 0], port)),
                port,
                owners: vec![dashboard.clone()],
                what: None,
                class,
                reason: String::new(),
                reachable: class == PortClass::Open,
                would_close: false,
            };
            let audit = ListenerAudit {
                audit_mode: false,
                listeners: vec![
                    listener(8265, PortClass::Open),
                    listener(6379, PortClass::Guarded),
                ],
                sessions_at_risk: vec![SessionAtRisk {
                    local: "198.18.0.1:6379".parse().unwrap(),
                    peer: "203.0.113.8:50000".parse().unwrap(),
                    owners: Vec::new(),
                    what: None,
                    class: PortClass::Guarded,
                    reason: String::new(),
                    consequence: Consequence::NewConnectionsRefused,
                }],
                blind_spots: Vec::new(),
            };
            Box::pin(async move { Ok(audit) })
        }
    }

    struct Fixture {
        dir: PathBuf,
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
        let pin_dir = dir.join("pins");
        Fixture {
            dir,
            state: MetricsState {
                store,
                view: Arc::new(Counters),
                ready: Arc::new(move || flag.load(Ordering::Relaxed)),
                pin_dir,
            },
            ready,
        }
    }

    async fn get(state: &MetricsState, path: &str) -> (StatusCode, String) {
        get_as(state, path, None).await.0
    }

    async fn get_as(
        state: &MetricsState,
        path: &str,
        accept: Option<&str>,
    ) -> ((StatusCode, String), String) {
        let mut req = Request::get(path);
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        let resp = answer(state, req.body(()).unwrap()).await;
        let content_type = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            (status, String::from_utf8(body.to_vec()).unwrap()),
            content_type,
        )
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
        let ((status, body), content_type) =
            get_as(&f.state, METRICS_PATH, Some("application/openmetrics-text")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, format::OPENMETRICS);
        for line in [
            "serve_guard_packets_total{reason=\"drop_outside_vpc\",family=\"ipv6\"} 12",
            "serve_guard_bytes_total{reason=\"drop_outside_vpc\",family=\"ipv6\"} 960",
            "serve_guard_cidrs{family=\"ipv4\"} 1",
            "serve_guard_cidrs{family=\"ipv6\"} 2",
            "serve_guard_cidr_revision 1",
            "serve_guard_cidr_apply_errors_total 0",
            "serve_guard_cidr_last_apply_timestamp_seconds 0",
            "serve_guard_ready 0",
            "serve_guard_exposed_listeners{protocol=\"tcp\",port=\"8265\",process=\"python\"} 1",
            "serve_guard_sessions_at_risk 1",
            "serve_guard_build_info{version=\"",
            "process_resident_memory_bytes ",
        ] {
            assert!(body.contains(line), "missing {line:?} in:\n{body}");
        }
        assert!(
            !body.contains("port=\"6379\""),
            "a guarded listener is not exposed:\n{body}"
        );
        assert!(
            body.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
    }

    #[tokio::test]
    async fn plain_scrapers_get_text_004() {
        let f = fixture();
        let ((status, body), content_type) = get_as(&f.state, METRICS_PATH, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, format::TEXT_004);
        assert!(
            body.contains("# TYPE serve_guard_packets_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE serve_guard_build_info gauge\n"),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
    }
}
