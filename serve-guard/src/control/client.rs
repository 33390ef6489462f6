//! The control socket's client, used by the CLI verbs.

use super::ErrorBody;
use crate::http_exchange::{ExchangeError, exchange};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens: no socket file, or a stale one. The CLI then works without the agent.
    #[error("no agent answers on {path}")]
    NotRunning { path: PathBuf },
    #[error("cannot connect to the control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the control socket {path} did not answer within {}s", super::CLIENT_TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Http { path: PathBuf, source: hyper::Error },
    #[error("control socket {path}: the answer is not what the CLI expects ({source})")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "control socket {path}: the answer is larger than {} bytes",
        super::MAX_RESPONSE_BYTES
    )]
    TooLarge { path: PathBuf },
    /// The agent refused the request; `message` says why.
    #[error("{message}")]
    Refused { status: u16, message: String },
}

/// A client for one agent's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: &Path) -> Self {
        Client {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn get<T: DeserializeOwned>(&self, route: &str) -> Result<T, ClientError> {
        self.call(Method::GET, route, None).await
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            source,
        })?;
        self.call(method, route, Some(bytes)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(super::CLIENT_TIMEOUT, self.exchange(method, route, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
            })?
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let stream = match tokio::net::UnixStream::connect(&self.path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ClientError::NotRunning {
                    path: self.path.clone(),
                });
            }
            Err(source) => {
                return Err(ClientError::Connect {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(route)
            .header(HOST, "serve-guard");
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("method, route and headers are valid");
        let answer = exchange(TokioIo::new(stream), req, super::MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                ExchangeError::Http(source) => ClientError::Http {
                    path: self.path.clone(),
                    source,
                },
                ExchangeError::TooLarge => ClientError::TooLarge {
                    path: self.path.clone(),
                },
            })?;
        let (status, bytes) = (answer.parts.status, answer.body);
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| {
                    format!(
                        "the agent answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    )
                });
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: self.path.clone(),
            source,
        })
    }
}
