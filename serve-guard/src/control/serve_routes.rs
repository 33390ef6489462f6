//! Reading Ray Serve's route table (`GET /-/routes`: `{"/echo": "echo"}`) from the upstream,
//! for the docs links of `status` (the agent asks, through the proxy's upstream pool; the proxy
//! process never serves this).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use serve_guard_proxy::config::{Limits, Upstream};
use serve_guard_proxy::pool::Pool;
use serve_guard_proxy::reply;

/// The route table's path on Ray Serve's HTTP proxy.
pub const ROUTES_PATH: &str = "/-/routes";
/// `status` must answer even when Serve hangs.
pub const ROUTES_TIMEOUT: Duration = Duration::from_secs(5);
/// A route table is small; a bigger answer is not one.
pub const MAX_ROUTES_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("cannot reach {upstream}{ROUTES_PATH}: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("{upstream}{ROUTES_PATH} did not answer within {ROUTES_TIMEOUT:?}")]
    Timeout { upstream: String },
    #[error("{upstream}{ROUTES_PATH} answered {status}")]
    Status {
        upstream: String,
        status: StatusCode,
    },
    #[error("{upstream}{ROUTES_PATH} is not a route table: {reason}")]
    Malformed { upstream: String, reason: String },
}

/// Route prefix → application name, sorted by route.
pub async fn fetch(
    upstream: &Upstream,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, RoutesError> {
    let name = upstream.to_string();
    let pool = Pool::new(upstream.authority(), limits.upstream_connect_timeout);
    let req = Request::get(ROUTES_PATH)
        .header(http::header::HOST, upstream.host().clone())
        .body(reply::empty())
        .map_err(|e| RoutesError::Unreachable {
            upstream: name.clone(),
            reason: e.to_string(),
        })?;
    let work = async {
        let resp = pool.send(req).await.map_err(|e| RoutesError::Unreachable {
            upstream: name.clone(),
            reason: error_chain(&e),
        })?;
        if resp.status() != StatusCode::OK {
            return Err(RoutesError::Status {
                upstream: name.clone(),
                status: resp.status(),
            });
        }
        let bytes = Limited::new(resp.into_body(), MAX_ROUTES_BYTES)
            .collect()
            .await
            .map_err(|e| RoutesError::Malformed {
                upstream: name.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice::<BTreeMap<String, String>>(&bytes).map_err(|e| {
            RoutesError::Malformed {
                upstream: name.clone(),
                reason: e.to_string(),
            }
        })
    };
    tokio::time::timeout(ROUTES_TIMEOUT, work)
        .await
        .map_err(|_| RoutesError::Timeout {
            upstream: name.clone(),
        })?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
