//! The public-mode proxy over TLS (rustls, ALPN h2 and http/1.1, TLS 1.2 and 1.3) and the gRPC
//! listener (h2c upstream, token in the `authorization` metadata, grpc-status 16 without it).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serve_guard_proxy::test_util::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost`, written as PEM files into `dir`.
fn write_cert(dir: &std::path::Path) -> TestCert {
    self_signed_cert(dir, &["localhost"]).unwrap()
}

fn connector(
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_proxy(up: &TestUpstream) -> (TestProxy, CertificateDer<'static>) {
    let mut root = None;
    let proxy = start_proxy(&up.url(), |c, dir| {
        let cert = write_cert(dir);
        c.tls_cert = Some(cert.cert);
        c.tls_key = Some(cert.key);
        root = Some(cert.der);
    })
    .await;
    (proxy, root.unwrap())
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2_over_tls(proxy: &TestProxy, root: &CertificateDer<'static>) -> Sender {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = connector(root, &[b"h2", b"http/1.1"], &[&rustls::version::TLS13])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN chose h2"
    );
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_by_alpn_checks_the_token_and_sets_secure_cookies() {
    let up = start_upstream().await;
    let (proxy, root) = tls_proxy(&up).await;
    let token = proxy.token();
    let mut sender = h2_over_tls(&proxy, &root).await;
    let base = format!("https://localhost:{}", proxy.addr.port());

    let resp = sender
        .send_request(
            Request::get(format!("{base}/echo"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"serve-guard\""
    );

    let resp = sender
        .send_request(
            Request::get(format!("{base}/echo"))
                .header("authorization", format!("Bearer {token}"))
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let headers = echo_headers(&echo_json(&body));
    assert_eq!(headers["x-forwarded-proto"], vec!["https".to_owned()]);
    assert_eq!(
        headers["x-forwarded-host"],
        vec![format!("localhost:{}", proxy.addr.port())]
    );
    // HTTP/2 split cookies are joined into one header for the HTTP/1.1 upstream.
    assert_eq!(headers["cookie"], vec!["a=1; b=2".to_owned()]);
    assert!(!headers.contains_key("authorization"));

    // The docs link over TLS: the cookie carries Secure and the `__Host-` prefix.
    let resp = sender
        .send_request(
            Request::get(format!("{base}/echo/docs?token={token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/echo/docs");
    assert_eq!(
        resp.headers()["set-cookie"],
        format!(
            "__Host-SERVE_TOKEN={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=604800; Secure"
        )
        .as_str()
    );
    let resp = sender
        .send_request(
            Request::get(format!("{base}/echo/docs"))
                .header("cookie", format!("__Host-SERVE_TOKEN={token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Over HTTPS the unprefixed name is no credential.
    let resp = sender
        .send_request(
            Request::get(format!("{base}/echo/docs"))
                .header("cookie", format!("SERVE_TOKEN={token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http11_and_tls12_works_too() {
    let up = start_upstream().await;
    let (proxy, root) = tls_proxy(&up).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = connector(&root, &[b"http/1.1"], &[&rustls::version::TLS12])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/echo")
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", proxy.token()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_external_url_makes_the_cookie_secure_even_over_plain_http() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.external_url = Some(
            serve_guard_proxy::config::ExternalUrl::parse("https://serve.example.com").unwrap(),
        );
    })
    .await;
    let resp = raw(
        proxy.addr,
        &format!("GET /x?token={} HTTP/1.1\r\nHost: h", proxy.token()),
    )
    .await;
    assert_eq!(resp.status, 303);
    let set_cookie = resp.header("set-cookie").unwrap();
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
    assert!(
        set_cookie.starts_with("__Host-SERVE_TOKEN="),
        "{set_cookie}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_clear_errors() {
    let up = start_upstream().await;
    let dir = temp_dir();
    let TestCert { cert, key, .. } = write_cert(dir.path());
    let (_publisher, tokens) = fresh_tokens();
    let base = serve_guard_proxy::config::PublicConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: serve_guard_proxy::config::Upstream::parse(&up.url()).unwrap(),
        ..Default::default()
    };
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem").unwrap();
    for (c, k, needle) in [
        (dir.path().join("missing.pem"), key.clone(), "missing.pem"),
        (garbage.clone(), key.clone(), "no CERTIFICATE"),
        (cert.clone(), garbage.clone(), "no PRIVATE KEY"),
        (key.clone(), cert.clone(), "TLS certificate"),
    ] {
        let config = serve_guard_proxy::config::PublicConfig {
            tls_cert: Some(c),
            tls_key: Some(k),
            ..base.clone()
        };
        let err = match serve_guard_proxy::Proxy::bind(&config, tokens.clone()).await {
            Ok(_) => panic!("bad TLS files were accepted ({needle})"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "`{err}` lacks `{needle}`");
    }
}

/// What SIGHUP does to the TLS files: a renewed certificate serves new connections, a broken
/// one is refused and the certificate in use stays, the same files again change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_a_renewed_certificate_and_keeps_the_old_one_on_errors() {
    use serve_guard_proxy::tls::TlsReload;
    let up = start_upstream().await;
    let dir = temp_dir();
    let TestCert {
        cert,
        key,
        der: first,
    } = write_cert(dir.path());
    let (_publisher, tokens) = fresh_tokens();
    let config = serve_guard_proxy::config::PublicConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: serve_guard_proxy::config::Upstream::parse(&up.url()).unwrap(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..Default::default()
    };
    let proxy = serve_guard_proxy::Proxy::bind(&config, tokens)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let tls = proxy.tls().expect("TLS is configured");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(proxy.serve(async move {
        let _ = stopped.await;
    }));
    let handshake = |root: CertificateDer<'static>| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector(&root, &[b"http/1.1"], &[&rustls::version::TLS13])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .is_ok()
    };
    assert!(handshake(first.clone()).await);

    let renewed = write_cert(dir.path()).der;
    assert_eq!(tls.reload().unwrap(), TlsReload::Changed);
    assert!(handshake(renewed.clone()).await, "the renewed certificate");
    assert!(
        !handshake(first).await,
        "the old certificate is still served"
    );
    assert_eq!(tls.reload().unwrap(), TlsReload::Unchanged);

    std::fs::write(&cert, "not pem").unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("no CERTIFICATE"), "{err}");
    assert!(
        handshake(renewed).await,
        "a broken file replaced the certificate in use"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// gRPC

async fn grpc_proxy() -> (TestUpstream, TestProxy) {
    let (_, grpc_up, proxy) = start_grpc_proxy().await;
    (grpc_up, proxy)
}

async fn grpc_call(
    proxy: &TestProxy,
    authorization: Option<&str>,
) -> (http::response::Parts, Vec<Bytes>, Option<http::HeaderMap>) {
    let metadata: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    grpc_unary(proxy.grpc_addr.unwrap(), &metadata).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_without_or_with_a_wrong_token_gets_unauthenticated() {
    let (up, proxy) = grpc_proxy().await;
    let token = proxy.token();
    for auth in [
        None,
        Some("Bearer wrong-token-value".to_owned()),
        Some(format!("Basic {token}")),
    ] {
        let (parts, data, trailers) = grpc_call(&proxy, auth.as_deref()).await;
        assert_eq!(parts.status, StatusCode::OK, "{auth:?}");
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.headers["content-type"], "application/grpc");
        // Trailers-only: the status is in the only HEADERS frame, no data, no trailers.
        assert_eq!(parts.headers["grpc-status"], "16", "{auth:?}");
        assert!(data.is_empty() && trailers.is_none(), "{auth:?}");
    }
    assert_eq!(up.seen_count(), 0);
    // A cookie is not a gRPC credential.
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_with_the_token_reaches_the_upstream_without_it() {
    let (up, proxy) = grpc_proxy().await;
    let token = proxy.token();
    let (parts, data, trailers) = grpc_call(&proxy, Some(&format!("Bearer {token}"))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.get("grpc-status").is_none());
    assert_eq!(
        data.concat(),
        grpc_frame(b"\x0a\x00").to_vec(),
        "the upstream's answer"
    );
    assert_eq!(
        trailers.expect("the upstream's trailers")["grpc-status"],
        "0"
    );
    let seen = up.last_seen();
    assert_eq!(seen.target, "/grpc.health.v1.Health/Check");
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.header("te"), Some("trailers"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_upstream_down_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        c.grpc_upstream = Some(
            serve_guard_proxy::config::Upstream::parse(&format!("http://127.0.0.1:{port}"))
                .unwrap(),
        );
    })
    .await;
    let (parts, _, _) = grpc_call(&proxy, Some(&format!("Bearer {}", proxy.token()))).await;
    assert_eq!(parts.headers["grpc-status"], "14");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_uses_the_same_certificate_and_check() {
    let http_up = start_upstream().await;
    let grpc_up = start_grpc_upstream().await;
    let grpc_url = grpc_up.url();
    let mut root = None;
    let proxy = start_proxy(&http_up.url(), |c, dir| {
        let cert = write_cert(dir);
        c.tls_cert = Some(cert.cert);
        c.tls_key = Some(cert.key);
        root = Some(cert.der);
        c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        c.grpc_upstream = Some(serve_guard_proxy::config::Upstream::parse(&grpc_url).unwrap());
    })
    .await;
    let root = root.unwrap();
    let call = |auth: Option<String>| {
        let root = root.clone();
        let addr = proxy.grpc_addr.unwrap();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = connector(&root, &[b"h2"], &[&rustls::version::TLS13])
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = Request::post(format!(
                "https://localhost:{}/grpc.health.v1.Health/Check",
                addr.port()
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = sender
                .send_request(req.body(Full::new(grpc_frame(b""))).unwrap())
                .await
                .unwrap();
            let (parts, body) = resp.into_parts();
            let collected = tokio::time::timeout(WAIT, body.collect())
                .await
                .unwrap()
                .unwrap();
            (parts, collected.trailers().cloned())
        }
    };
    let (parts, _) = call(None).await;
    assert_eq!(parts.headers["grpc-status"], "16");
    let (parts, trailers) = call(Some(format!("Bearer {}", proxy.token()))).await;
    assert!(parts.headers.get("grpc-status").is_none());
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(grpc_up.seen_count(), 1);
}
