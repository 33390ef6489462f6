//! The one HTTP client of cloud discovery: a request, a deadline over all of it (connect, TLS,
//! headers, body), a bounded body, and no redirect followed (a metadata service or an API that
//! redirects is not what it claims to be, and the token must not travel on).

use crate::http_exchange::ExchangeError;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The largest answer read. The biggest is a page of GCP's aggregated subnetwork list.
pub const MAX_BODY: usize = 8 << 20;
/// Where the system's CA bundle is on Debian and its derivatives; `SSL_CERT_FILE` overrides.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: cannot connect: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{url}: TLS: {source}")]
    Tls { url: String, source: std::io::Error },
    #[error("{url}: the answer is larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url}: answered a redirect ({status}); redirects are not followed")]
    Redirect { url: String, status: StatusCode },
    #[error("{url}: not a URL this client can ask ({reason})")]
    Url { url: String, reason: &'static str },
    #[error("cannot read the CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
}

/// An answer: status, headers, the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The client: a timeout per request, TLS roots loaded once.
#[derive(Clone)]
pub struct Client {
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    pub fn new(timeout: Duration) -> Self {
        Client { timeout, tls: None }
    }

    /// For https:// requests: the system's CA bundle (or `SSL_CERT_FILE`).
    pub fn with_tls(mut self) -> Result<Self, HttpError> {
        let path = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_CA_FILE.into());
        let bad = |reason: String| HttpError::CaBundle {
            path: path.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(tokio_rustls::TlsConnector::from(Arc::new(config)));
        Ok(self)
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
        self.send(Method::GET, url, headers).await
    }

    /// One request, bounded by the client's timeout as a whole.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(self.timeout, self.send_unbounded(method, url, headers))
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_owned(),
                timeout: self.timeout,
            })?
    }

    async fn send_unbounded(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        let bad_url = |reason| HttpError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad_url("does not parse"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad_url("http or https only")),
        };
        let host = uri.host().ok_or_else(|| bad_url("no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // `[v6]` in a URL, a bare address to connect to.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let stream =
            TcpStream::connect((bare, port))
                .await
                .map_err(|source| HttpError::Connect {
                    url: url.to_owned(),
                    source,
                })?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()).to_owned());
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        request = request.header(http::header::HOST, authority);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_url("header"))?;
            let value = HeaderValue::from_str(value).map_err(|_| bad_url("header value"))?;
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| bad_url("request"))?;
        if https {
            let tls = self
                .tls
                .as_ref()
                .ok_or_else(|| bad_url("https without a CA bundle"))?;
            let name = ServerName::try_from(bare.to_owned()).map_err(|_| bad_url("host name"))?;
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|source| HttpError::Tls {
                    url: url.to_owned(),
                    source,
                })?;
            exchange(url, TokioIo::new(stream), request).await
        } else {
            exchange(url, TokioIo::new(stream), request).await
        }
    }
}

async fn exchange<T>(
    url: &str,
    io: T,
    request: http::Request<Empty<Bytes>>,
) -> Result<Response, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let answer = crate::http_exchange::exchange(io, request, MAX_BODY)
        .await
        .map_err(|e| match e {
            ExchangeError::Http(source) => HttpError::Http {
                url: url.to_owned(),
                source,
            },
            ExchangeError::TooLarge => HttpError::TooLarge {
                url: url.to_owned(),
            },
        })?;
    if answer.parts.status.is_redirection() {
        return Err(HttpError::Redirect {
            url: url.to_owned(),
            status: answer.parts.status,
        });
    }
    Ok(Response {
        status: answer.parts.status,
        headers: answer.parts.headers,
        body: answer.body,
    })
}
