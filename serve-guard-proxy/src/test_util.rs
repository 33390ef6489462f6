//! The proxy's test harness (feature `test-util`), shared by this crate's integration tests and
//! the agent's public-mode tests: a real local upstream (hyper) that records and echoes what it
//! receives, streams on command and speaks WebSocket; an h2c gRPC-style upstream; the proxy
//! itself, started in-process on 127.0.0.1; raw and hyper clients; log capture; self-signed
//! certificates.
//!
//! The proxy under test gets its tokens on a channel, as in the proxy process: a fresh token of
//! its own ([`start_proxy`], changed with [`TestProxy::publish`]), or the sets of a source the
//! caller runs, such as the agent's token file ([`start_proxy_with_tokens`]).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::Proxy;
use crate::config::{PublicConfig, Upstream as UpstreamUrl};
use crate::token::{Token, TokenReceiver, TokenSet};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Every wait in these tests is bounded by this; a hang is a failure, not a slow pass.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often the upstream's endless streams (`/events`, gRPC `Watch`) send.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(50);

pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------------
// Log capture: every test's proxy logs go to one buffer, checked for the token.

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
}

/// Everything logged so far (at TRACE) by every proxy in this test binary.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

pub fn assert_not_logged(secret: &str) {
    let logs = captured_logs();
    assert!(
        !logs.is_empty(),
        "the log capture saw nothing: is it wired?"
    );
    assert!(!logs.contains(secret), "the token appeared in the logs");
}

// ---------------------------------------------------------------------------------------------
// Unique temporary directories, removed on drop.

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sg-proxy-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// Self-signed TLS certificates.

/// A certificate and its key as PEM files, from [`self_signed_cert`].
pub struct TestCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM), mode 0600.
    pub key: PathBuf,
    /// The certificate, for a client's root store.
    pub der: CertificateDer<'static>,
}

/// Writes a new self-signed certificate for `names` (host names or IP addresses) to
/// `dir/cert.pem` and its key to `dir/key.pem` (mode 0600), replacing what is there: calling it
/// again renews the certificate in place.
pub fn self_signed_cert(dir: &Path, names: &[&str]) -> std::io::Result<TestCert> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let generated = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem())?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&key)?;
    // A file that was already there keeps its mode through open(2).
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(generated.signing_key.serialize_pem().as_bytes())?;
    Ok(TestCert {
        cert,
        key,
        der: generated.cert.der().clone(),
    })
}

// ---------------------------------------------------------------------------------------------
// The upstream: a real HTTP/1.1 server standing in for Ray Serve.

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

/// The values of the headers called `name` (case-insensitive), in order.
fn named<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        named(&self.headers, name).first().copied()
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        named(&self.headers, name)
    }
}

#[derive(Default)]
pub struct UpstreamState {
    pub seen: Mutex<Vec<Seen>>,
    /// `/stream` sends its last chunk only after this is notified.
    pub release_stream: Notify,
    /// `/upload` reports each request-body chunk as it arrives.
    pub upload_chunks: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// Connections accepted, to see keep-alive reuse.
    pub connections: std::sync::atomic::AtomicUsize,
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    _stop: oneshot::Sender<()>,
}

impl TestUpstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn last_seen(&self) -> Seen {
        self.state
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
    pub fn seen_count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
}

pub async fn start_upstream() -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpstreamState::default());
    let (stop, mut stopped) = oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => break,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            st.connections
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(upstream_handle(st, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    TestUpstream {
        addr,
        state,
        _stop: stop,
    }
}

fn full_body(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).boxed_unsync()
}

async fn upstream_handle(st: Arc<UpstreamState>, mut req: Request<Incoming>) -> Response<BoxBody> {
    let seen = Seen {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    st.seen.lock().unwrap().push(seen.clone());
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/-/routes" => Response::new(full_body(r#"{"/echo":"echo","/":"root"}"#)),
        "/stream" => {
            // First chunk at once; the last only when the test says it has the first.
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let st = st.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                    .await;
                st.release_stream.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: last\n\n"))))
                    .await;
            });
            let body = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
        "/events" => {
            // Server-sent events without end: one per EVENT_INTERVAL until the client goes.
            let body = StreamBody::new(tokio_stream_from(endless(|n| {
                Bytes::from(format!("data: {n}\n\n"))
            })))
            .boxed_unsync();
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
        "/upload" => {
            let sender = st.upload_chunks.lock().unwrap().clone();
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                    if let Some(s) = &sender {
                        let _ = s.send(data);
                    }
                }
            }
            Response::new(full_body(format!("received {total} bytes")))
        }
        "/switch" => {
            // A hostile or confused upstream: switches protocols whatever was asked.
            let protocol = req
                .headers()
                .get("upgrade")
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static("h2c"));
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", protocol)
                .body(full_body(Bytes::new()))
                .unwrap()
        }
        "/slow" => {
            // Answers long after any test's response timeout.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full_body("late"))
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(full_body("not a websocket request"))
                    .unwrap();
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full_body(Bytes::new()))
                .unwrap()
        }
        _ => {
            // Echo: what arrived, as JSON.
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let echo = serde_json::json!({
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "must not reach the client")
                .body(full_body(echo.to_string()))
                .unwrap()
        }
    }
}

/// Frames made by `make(0)`, `make(1)`, ... one per [`EVENT_INTERVAL`], until the receiver is
/// dropped (the proxy closed the upstream connection or stream).
fn endless(
    make: impl Fn(u64) -> Bytes + Send + 'static,
) -> mpsc::Receiver<Result<Frame<Bytes>, Infallible>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVENT_INTERVAL);
        for n in 0.. {
            every.tick().await;
            if tx.send(Ok(Frame::data(make(n)))).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// An mpsc receiver as a Stream (no tokio-stream dependency needed).
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

// ---------------------------------------------------------------------------------------------
// An h2c gRPC-style upstream: answers every call with a status-0 trailer and echoes the
// message; records the metadata. A method named `Watch` streams messages without end instead.

pub async fn start_grpc_upstream() -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpstreamState::default());
    let (stop, mut stopped) = oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => break,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let st = st.clone();
                    async move {
                        st.seen.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            target: req.uri().path().to_owned(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect(),
                        });
                        if req.uri().path().ends_with("/Watch") {
                            let frames = endless(|n| grpc_frame(&n.to_be_bytes()));
                            let body = StreamBody::new(tokio_stream_from(frames)).boxed_unsync();
                            return Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            );
                        }
                        let message = req.into_body().collect().await.unwrap().to_bytes();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                            vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
                        let body =
                            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestUpstream {
        addr,
        state,
        _stop: stop,
    }
}

/// A gRPC length-prefixed message frame.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

// ---------------------------------------------------------------------------------------------
// The proxy under test, in-process on 127.0.0.1 with a fresh token.

pub struct TestProxy {
    pub addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    /// The token sets the proxy reads, as it reads them.
    pub tokens: TokenReceiver,
    pub config: PublicConfig,
    /// Where the token sets come from when the harness made them ([`start_proxy`]).
    publisher: Option<watch::Sender<Arc<TokenSet>>>,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// The primary token in force.
    pub fn token(&self) -> String {
        self.tokens.borrow().primary().unwrap().expose().to_owned()
    }
    /// Every token in force, primary first.
    pub fn token_set(&self) -> Arc<TokenSet> {
        self.tokens.borrow().clone()
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    /// Puts `tokens` in force, as the agent does after the token file changed. Only for a
    /// proxy whose tokens the harness made.
    pub fn publish(&self, tokens: &[&str]) {
        let set = TokenSet::new(tokens.iter().map(|t| Token::parse(t).unwrap()));
        self.publisher
            .as_ref()
            .expect("this proxy's tokens come from elsewhere (start_proxy_with_tokens)")
            .send_replace(Arc::new(set));
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A channel holding a set of one fresh token, as the agent would publish it.
pub fn fresh_tokens() -> (watch::Sender<Arc<TokenSet>>, TokenReceiver) {
    let token = Token::generate().unwrap();
    watch::channel(Arc::new(TokenSet::new([token])))
}

/// A proxy in front of `upstream` with a fresh token; `tweak` adjusts the config (listen is
/// 127.0.0.1:0) and may put files in the folder it gets.
pub async fn start_proxy(
    upstream: &str,
    tweak: impl FnOnce(&mut PublicConfig, &Path),
) -> TestProxy {
    let (publisher, tokens) = fresh_tokens();
    let mut proxy = start_proxy_with_tokens(upstream, tweak, tokens).await;
    proxy.publisher = Some(publisher);
    proxy
}

/// A proxy in front of `upstream` that reads its tokens from `tokens` (the caller publishes
/// them, e.g. the agent's token source); otherwise as [`start_proxy`].
pub async fn start_proxy_with_tokens(
    upstream: &str,
    tweak: impl FnOnce(&mut PublicConfig, &Path),
    tokens: TokenReceiver,
) -> TestProxy {
    log_buffer();
    let dir = temp_dir();
    let mut config = PublicConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: UpstreamUrl::parse(upstream).unwrap(),
        token_file: dir.path().join("token"),
        ..PublicConfig::default()
    };
    tweak(&mut config, dir.path());
    let proxy = Proxy::bind(&config, tokens.clone()).await.unwrap();
    let addr = proxy.local_addr();
    let grpc_addr = proxy.grpc_local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.serve(async move {
        let _ = stopped.await;
    }));
    TestProxy {
        addr,
        grpc_addr,
        tokens,
        config,
        publisher: None,
        _dir: dir,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A proxy with both listeners: HTTP in front of a [`start_upstream`], gRPC in front of a
/// [`start_grpc_upstream`]. Returns (HTTP upstream, gRPC upstream, proxy).
pub async fn start_grpc_proxy() -> (TestUpstream, TestUpstream, TestProxy) {
    let http_up = start_upstream().await;
    let grpc_up = start_grpc_upstream().await;
    let grpc_url = grpc_up.url();
    let proxy = start_proxy(&http_up.url(), |c, _| {
        c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        c.grpc_upstream = Some(UpstreamUrl::parse(&grpc_url).unwrap());
    })
    .await;
    (http_up, grpc_up, proxy)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A WebSocket through the proxy to the upstream's `/ws` echo, opened with `authorization`.
pub async fn open_websocket(
    addr: SocketAddr,
    authorization: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", authorization.parse().unwrap());
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// A parsed HTTP/1.1 response head (and whatever body came with it).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        named(&self.headers, name).first().copied()
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        named(&self.headers, name)
    }
}

/// Sends `head` (request line and headers, without the final blank line) exactly as written,
/// with `Connection: close`, and reads the whole response. For request targets a library
/// client would normalise.
pub async fn raw(addr: SocketAddr, head: &str) -> RawResponse {
    try_raw(addr, head)
        .await
        .unwrap_or_else(|| panic!("no HTTP response to {head:?}"))
}

/// [`raw`], but `None` when the connection closes without an answer.
pub async fn try_raw(addr: SocketAddr, head: &str) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response within the wait");
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET with extra headers; returns the status, headers and the whole body.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut builder = Request::get(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(full_body(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(WAIT, client().request(req))
        .await
        .expect("response within the wait")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body within the wait")
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// The upstream's JSON echo of a request.
pub fn echo_json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).expect("an echo from the upstream")
}

pub fn echo_headers(echo: &serde_json::Value) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for pair in echo["headers"].as_array().unwrap() {
        let k = pair[0].as_str().unwrap().to_ascii_lowercase();
        map.entry(k)
            .or_default()
            .push(pair[1].as_str().unwrap().to_owned());
    }
    map
}

/// An HTTP/2 connection by prior knowledge (h2c), as gRPC clients and
/// `curl --http2-prior-knowledge` open it. One connection carries many streams.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A unary gRPC call (`grpc.health.v1.Health/Check`) over h2c with `metadata`: the response
/// head, the messages and the trailers (`None` for a trailers-only answer).
pub async fn grpc_unary(
    addr: SocketAddr,
    metadata: &[(&str, &str)],
) -> (http::response::Parts, Vec<Bytes>, Option<http::HeaderMap>) {
    let mut req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in metadata {
        req = req.header(*k, *v);
    }
    let req = req.body(full_body(grpc_frame(b"\x0a\x00"))).unwrap();
    let mut connection = h2c(addr).await;
    let resp = tokio::time::timeout(WAIT, connection.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame()).await.unwrap() {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => data.push(d),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (parts, data, trailers)
}

/// Flushes stdout so a failing test's prints show.
pub fn flush() {
    let _ = std::io::stdout().flush();
}
