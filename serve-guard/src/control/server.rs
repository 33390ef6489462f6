//! The control socket's server: hyper HTTP/1.1 over a Unix listener.

use super::agent_view::AgentView;
use super::api::{
    AgentInfo, CidrSummary, CidrsRequest, ErrorBody, FilterReport, ModeReport, ReplaceRequest,
    StatsReport, StatusReport, TokenReloaded,
};
use super::routes;
use crate::store::{Change, Store, StoreError};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the control socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "another process already answers on the control socket {path}; is another agent running?"
    )]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
}

/// What the routes work on.
pub struct ControlState {
    pub store: Arc<Store>,
    pub view: Arc<dyn AgentView>,
    pub started_at: SystemTime,
}

/// A bound control socket; [`ControlServer::serve`] answers on it until shutdown.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    state: Arc<ControlState>,
}

impl ControlServer {
    /// Binds `path` with mode 0600. The directory is created 0700 if missing. A stale socket
    /// (nobody answering) is replaced; a live one is an error.
    pub async fn bind(path: &Path, state: ControlState) -> Result<Self, ServerError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(super::SOCKET_DIR_MODE)
            .create(dir)
            .map_err(|source| ServerError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    return Err(ServerError::InUse {
                        path: path.to_owned(),
                    });
                }
                tracing::info!(path = %path.display(), "replacing a stale control socket");
            }
            Ok(_) => {
                return Err(ServerError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Err(_) => {}
        }
        // Bind under a temporary name and rename into place once the mode is 0600, so the socket
        // is never reachable with the umask's mode.
        let tmp = dir.join(format!(".control.{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let bind_err = |source| ServerError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
        let placed =
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(super::SOCKET_MODE))
                .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(bind_err(e));
        }
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
            state: Arc::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers until `shutdown` resolves, then removes the socket. Each connection is bounded by
    /// [`super::HEADER_TIMEOUT`] and [`super::CONNECTION_TIMEOUT`]; at most
    /// [`super::MAX_CONNECTIONS`] are served at once.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        tracing::info!(path = %self.path.display(), "control socket listening");
        let limits = crate::admin_http::Limits {
            header_timeout: super::HEADER_TIMEOUT,
            connection_timeout: super::CONNECTION_TIMEOUT,
            max_connections: super::MAX_CONNECTIONS,
        };
        let state = self.state.clone();
        let handler = move |req| {
            let state = state.clone();
            async move { route(&state, req).await }
        };
        crate::admin_http::serve("control socket", &self.listener, limits, handler, shutdown).await;
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove the control socket: {e}");
        }
        tracing::info!("control socket closed");
    }
}

type Answer = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        serde_json::to_vec(&ErrorBody {
            error: format!("cannot encode the answer: {e}"),
        })
        .unwrap_or_default()
    });
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn method_not_allowed(allow: &'static str) -> Answer {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn store_error(e: &StoreError) -> Answer {
    let status = match e {
        StoreError::Stale { .. } => StatusCode::CONFLICT,
        StoreError::LockTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        e if e.is_client_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// The request's JSON body; the error is the answer to send (boxed: it is large).
async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Box<Answer>> {
    let bytes = match Limited::new(req.into_body(), super::MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than the limit of {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )));
        }
        Err(e) => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad JSON body: {e}"),
        ))
    })
}

async fn change(
    state: &ControlState,
    change: Change,
    if_revision: Option<u64>,
    allow_everyone: bool,
) -> Answer {
    match state
        .store
        .apply_with(change, if_revision, allow_everyone)
        .await
    {
        Ok(outcome) => json(StatusCode::OK, &outcome),
        Err(e) => store_error(&e),
    }
}

async fn route(state: &ControlState, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    tracing::debug!(%method, %path, "control request");
    match (path.as_str(), method) {
        (routes::STATUS, Method::GET) => status(state).await,
        (routes::STATUS, _) => method_not_allowed("GET"),
        (routes::STATS, Method::GET) => match state.view.stats().await {
            Ok(snapshot) => json(StatusCode::OK, &StatsReport::from(&snapshot)),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (routes::STATS, _) => method_not_allowed("GET"),
        (routes::CIDRS, Method::GET) => json(StatusCode::OK, &state.store.listing()),
        (routes::CIDRS, Method::PUT) => match body::<ReplaceRequest>(req).await {
            Ok(r) => {
                change(
                    state,
                    Change::Replace(r.text),
                    r.if_revision,
                    r.allow_everyone,
                )
                .await
            }
            Err(answer) => *answer,
        },
        (routes::CIDRS, _) => method_not_allowed("GET, PUT"),
        (routes::CIDRS_ADD, Method::POST) => match body::<CidrsRequest>(req).await {
            Ok(r) => change(state, Change::Add(r.cidrs), r.if_revision, r.allow_everyone).await,
            Err(answer) => *answer,
        },
        (routes::CIDRS_REMOVE, Method::POST) => match body::<CidrsRequest>(req).await {
            Ok(r) => change(state, Change::Remove(r.cidrs), r.if_revision, false).await,
            Err(answer) => *answer,
        },
        (routes::CIDRS_RELOAD, Method::POST) => change(state, Change::Reload, None, false).await,
        (routes::CIDRS_ADD | routes::CIDRS_REMOVE | routes::CIDRS_RELOAD, _) => {
            method_not_allowed("POST")
        }
        (routes::TOKEN_RELOAD, Method::POST) => match state.view.reload_token() {
            Some(Ok(())) => json(StatusCode::OK, &TokenReloaded { reloaded: true }),
            Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            None => error(
                StatusCode::CONFLICT,
                format!(
                    "there is no token to reload: the agent runs in {} mode",
                    state.view.mode()
                ),
            ),
        },
        (routes::TOKEN_RELOAD, _) => method_not_allowed("POST"),
        (routes::MODE, Method::GET) => json(
            StatusCode::OK,
            &ModeReport {
                mode: state.view.mode(),
            },
        ),
        (routes::MODE, _) => error(
            StatusCode::CONFLICT,
            format!(
                "the mode is fixed for the life of the agent (it runs in {} mode); to change it, stop the agent and start it with a config that sets `mode`",
                state.view.mode()
            ),
        ),
        (other, _) => error(StatusCode::NOT_FOUND, format!("no route {other}")),
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn status(state: &ControlState) -> Answer {
    let filter = FilterReport::from(state.view.filter_status().await);
    // Never an error: what the public part cannot read (the token file, Serve's routes) it
    // reports inside, so the filter's state is shown either way.
    let public = state.view.public_status().await;
    let (exposures, exposures_error) = match state.view.exposures() {
        Ok(found) => (found, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let allowed = |ip| state.store.allows(ip);
    let (listener_audit, listener_audit_error) = match state.view.listener_audit(&allowed).await {
        Ok(audit) => (Some(audit), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let listing = state.store.summary();
    let now = SystemTime::now();
    let report = StatusReport {
        mode: state.view.mode(),
        agent: Some(AgentInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: unix_seconds(state.started_at),
            uptime_seconds: now
                .duration_since(state.started_at)
                .map_or(0, |d| d.as_secs()),
        }),
        cidrs: CidrSummary {
            file: state.store.cidr_file().display().to_string(),
            revision: listing.revision,
            ipv4: listing.ipv4,
            ipv6: listing.ipv6,
            from_file: listing.from_file,
            from_cloud: listing.from_cloud,
            cloud: state.store.cloud_status(),
        },
        filter,
        public,
        exposures,
        exposures_error,
        listener_audit,
        listener_audit_error,
    };
    json(StatusCode::OK, &report)
}
