//! The public-mode proxy over plain HTTP against a real local upstream: token checks, token
//! stripping, header hygiene, the docs link and open-redirect attempts, unauthenticated paths,
//! streaming both ways, WebSocket, limits and the logs; over TLS and on the gRPC listener
//! (`tls_grpc`). One test binary for both (CI links each binary separately). The token file and
//! `status` are the agent's, tested with this harness in serve-guard/tests/public.

mod tls_grpc;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serve_guard_proxy::test_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CHALLENGE: &str = "Bearer realm=\"serve-guard\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_gets_401_with_bearer_challenge() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let (status, headers, body) = get(&proxy.url("/echo"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], CHALLENGE);
    assert!(!String::from_utf8_lossy(&body).is_empty());
    // A non-bearer Authorization is not a token either.
    let (status, headers, _) = get(&proxy.url("/echo"), &[("authorization", "Basic dTpw")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], CHALLENGE);
    assert_eq!(up.seen_count(), 0, "nothing reached the upstream");
    assert_not_logged(&proxy.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_gets_401_invalid_token() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let wrong = format!("{}x", &token[..token.len() - 1]);
    for headers in [
        vec![("authorization", format!("Bearer {wrong}"))],
        vec![("authorization", format!("Bearer {token}x"))],
        vec![("authorization", "Bearer ".to_owned())],
        vec![("cookie", format!("SERVE_TOKEN={wrong}"))],
        vec![("cookie", "SERVE_TOKEN=".to_owned())],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, resp, _) = get(&proxy.url("/echo"), &h).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        let challenge = resp["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with(CHALLENGE), "{challenge}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    assert_eq!(up.seen_count(), 0);
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_in_any_case_and_cookie_pass_and_the_token_never_reaches_upstream() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    for scheme in ["Bearer", "bearer", "BEARER", "bEArer"] {
        let auth = format!("{scheme} {token}");
        let (status, _, body) = get(
            &proxy.url("/echo?x=1"),
            &[
                ("authorization", &auth),
                ("cookie", "session=abc; theme=dark"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}");
        let echo = echo_json(&body);
        let headers = echo_headers(&echo);
        assert!(
            !headers.contains_key("authorization"),
            "{scheme}: {headers:?}"
        );
        assert_eq!(
            headers["cookie"],
            vec!["session=abc; theme=dark".to_owned()]
        );
        assert_eq!(echo["target"], "/echo?x=1");
        assert!(!body.windows(token.len()).any(|w| w == token.as_bytes()));
    }
    // The cookie alone; it is removed, other cookies stay, the app's own Authorization stays.
    let cookie = format!("a=1; SERVE_TOKEN={token}; b=2");
    let (status, _, body) = get(
        &proxy.url("/echo"),
        &[
            ("cookie", &cookie),
            ("authorization", "Bearer app-own-token"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let headers = echo_headers(&echo_json(&body));
    assert_eq!(headers["cookie"], vec!["a=1; b=2".to_owned()]);
    assert_eq!(
        headers["authorization"],
        vec!["Bearer app-own-token".to_owned()]
    );
    assert!(!body.windows(token.len()).any(|w| w == token.as_bytes()));
    // Only SERVE_TOKEN in the Cookie: no Cookie header upstream at all.
    let cookie = format!("SERVE_TOKEN={token}");
    let (status, _, body) = get(&proxy.url("/echo"), &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!echo_headers(&echo_json(&body)).contains_key("cookie"));
    for seen in up.state.seen.lock().unwrap().iter() {
        for (_, v) in &seen.headers {
            assert!(!v.contains(&token), "the token reached the upstream");
        }
    }
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let resp = raw(
        proxy.addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: serve.example:8443\r\nAuthorization: Bearer {token}\r\n\
             Connection: X-Custom-Hop\r\nX-Custom-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Authorization: Basic eDp5\r\nTE: gzip\r\nX-End-To-End: kept\r\n\
             X-Forwarded-For: 203.0.113.66\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: spoofed.example\r\nForwarded: for=203.0.113.66"
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = up.last_seen();
    for gone in [
        "x-custom-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "forwarded",
        "authorization",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.all("x-forwarded-host"), vec!["serve.example:8443"]);
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    // The upstream's own hop-by-hop header does not reach the client.
    assert!(resp.header("x-upstream-hop").is_none(), "{resp:?}");
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let auth = format!("Bearer {}", proxy.token());
    for _ in 0..5 {
        let (status, _, _) = get(&proxy.url("/echo"), &[("authorization", &auth)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        up.state.connections.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_link_sets_the_cookie_and_redirects_without_the_token() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let resp = raw(
        proxy.addr,
        &format!("GET /echo/docs?a=1&token={token}&b=x%20y HTTP/1.1\r\nHost: h"),
    )
    .await;
    assert_eq!(resp.status, 303, "{resp:?}");
    let location = resp.header("location").unwrap();
    assert_eq!(location, "/echo/docs?a=1&b=x%20y");
    assert_eq!(
        resp.all("set-cookie"),
        vec![format!(
            "SERVE_TOKEN={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=604800"
        )]
    );
    assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(up.seen_count(), 0, "the docs link is answered by the proxy");

    // The browser follows with the cookie alone.
    let cookie = format!("SERVE_TOKEN={token}");
    let (status, _, body) = get(&proxy.url(location), &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
    let echo = echo_json(&body);
    assert_eq!(echo["target"], "/echo/docs?a=1&b=x%20y");
    let (status, _, _) = get(&proxy.url("/echo/openapi.json"), &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);

    // Only the token parameter: no query left. HEAD works too.
    let resp = raw(
        proxy.addr,
        &format!("HEAD /echo/docs?token={token} HTTP/1.1\r\nHost: h"),
    )
    .await;
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location"), Some("/echo/docs"));
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_link_with_a_bad_token_gets_401_and_no_cookie() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    for query in [
        "token=nope".to_owned(),
        "token=".to_owned(),
        format!("token={token}x"),
        // Two token parameters, one wrong: ambiguous, refused.
        format!("token={token}&token=other"),
    ] {
        let resp = raw(
            proxy.addr,
            &format!("GET /echo/docs?{query} HTTP/1.1\r\nHost: h"),
        )
        .await;
        assert_eq!(resp.status, 401, "{query}");
        assert!(resp.header("set-cookie").is_none(), "{query}");
        assert!(resp.header("location").is_none(), "{query}");
        assert!(
            resp.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
    // The token in a URL is a GET-only affair.
    let resp = raw(
        proxy.addr,
        &format!("POST /echo?token={token} HTTP/1.1\r\nHost: h\r\nContent-Length: 0"),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert!(resp.header("set-cookie").is_none());
    assert_eq!(up.seen_count(), 0);
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_link_redirects_never_leave_this_origin() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let base = url::Url::parse(&format!("http://{}/", proxy.addr)).unwrap();
    let attempts = [
        "//evil.example",
        "//evil.example/",
        "///evil.example",
        "////evil.example/x",
        "/\\evil.example",
        "/\\/evil.example",
        "\\\\evil.example",
        "/%2F%2Fevil.example",
        "/%2f%2fevil.example",
        "/%2F/evil.example",
        "/%5C%5Cevil.example",
        "/%5c/evil.example",
        "/%5C/evil.example",
        "/.//evil.example",
        "/./\\evil.example",
        "/../evil.example",
        "/..//evil.example",
        "/x/../../evil.example",
        "/x/..//evil.example",
        "/%2e%2e//evil.example",
        "/%2e/%2fevil.example",
        "http://evil.example/",
        "http://evil.example//x",
        "https://evil.example/docs",
        "//evil.example@127.0.0.1",
        "/@evil.example",
        "/%09/evil.example",
        "/%0d%0aLocation:%20http://evil.example",
        "/%00//evil.example",
        "//%65vil.example",
        "/;//evil.example",
        "/https:%2f%2fevil.example",
        "/%252f%252fevil.example",
        "/echo/docs?next=//evil.example",
    ];
    let mut redirects = 0;
    for target in attempts {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = if query.is_empty() {
            format!("token={token}")
        } else {
            format!("{query}&token={token}")
        };
        let resp = raw(
            proxy.addr,
            &format!("GET {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1"),
        )
        .await;
        println!("{target} -> {} {:?}", resp.status, resp.header("location"));
        let Some(location) = resp.header("location") else {
            // Refused outright (e.g. hyper's 400 for a malformed target): no redirect at all.
            assert_ne!(resp.status, 303, "{target}: 303 without Location");
            continue;
        };
        redirects += 1;
        assert_eq!(resp.status, 303, "{target}");
        assert!(location.starts_with('/'), "{target} -> {location}");
        assert!(
            !location[1..].starts_with(['/', '\\']),
            "{target} -> {location}"
        );
        assert!(!location.contains(&token), "{target} -> {location}");
        assert!(
            location.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
            "{target} -> {location:?}"
        );
        let resolved = base.join(location).unwrap();
        assert_eq!(
            resolved.host_str(),
            Some("127.0.0.1"),
            "{target} -> {location} -> {resolved}"
        );
        assert_eq!(
            resolved.port(),
            Some(proxy.addr.port()),
            "{target} -> {resolved}"
        );
        assert_eq!(resolved.scheme(), "http");
    }
    assert!(
        redirects >= attempts.len() - 4,
        "most attempts are redirected (safely): {redirects}"
    );
    assert_eq!(up.seen_count(), 0);
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_paths_match_exactly_after_normalisation() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    for (target, upstream_sees) in [
        ("/-/healthz", "/-/healthz"),
        ("/-/healthz/", "/-/healthz"),
        ("//-/healthz", "/-/healthz"),
        ("/-/./healthz", "/-/healthz"),
        ("/-/%68ealthz", "/-/healthz"),
        ("/x/../-/healthz", "/-/healthz"),
        ("/-/healthz?probe=1", "/-/healthz?probe=1"),
    ] {
        let resp = raw(proxy.addr, &format!("GET {target} HTTP/1.1\r\nHost: h")).await;
        assert_eq!(resp.status, 200, "{target}");
        assert_eq!(up.last_seen().target, upstream_sees, "{target}");
    }
    let before = up.seen_count();
    for bypass in [
        "/-/healthz/../echo",
        "/-/healthz/..%2fecho",
        "/-/healthz%2f..%2fecho",
        "/-/healthz/%2e%2e/echo",
        "/-/healthz/%2E%2E/echo",
        "/-/healthz\\..\\echo",
        "/-/healthz/x",
        "/-/healthzx",
        "/-/healthz%00",
        "/-/healthz%2fx",
        "/-/HEALTHZ",
        "/-/healthz;x",
        "//-/healthz/../../echo",
    ] {
        let resp = raw(proxy.addr, &format!("GET {bypass} HTTP/1.1\r\nHost: h")).await;
        assert!(
            resp.status == 401 || resp.status == 400,
            "{bypass}: {}",
            resp.status
        );
    }
    assert_eq!(up.seen_count(), before, "no bypass reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_arrive_chunk_by_chunk() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let auth = format!("Bearer {}", proxy.token());
    let req = Request::get(proxy.url("/stream"))
        .header("authorization", &auth)
        .body(http_body_util::Full::new(Bytes::new()).boxed_unsync())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The upstream holds back its last chunk until we have the first: a buffering proxy would
    // deliver nothing and this wait would fail.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the first chunk arrives while the upstream still holds the last")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    up.state.release_stream.notify_one();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"data: last\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_to_the_upstream() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    *up.state.upload_chunks.lock().unwrap() = Some(seen_tx);
    let (body_tx, body_rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
    let stream =
        futures_util::stream::unfold(
            body_rx,
            |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
        );
    let req = Request::post(proxy.url("/upload"))
        .header("authorization", format!("Bearer {}", proxy.token()))
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap();
    let pending = tokio::spawn(client().request(req));
    body_tx
        .send(Ok(Frame::data(Bytes::from_static(b"part one;"))))
        .await
        .unwrap();
    // The upstream gets the first part while the client has not sent the second.
    let got = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .expect("the first part reaches the upstream before the body ends")
        .unwrap();
    assert_eq!(&got[..], b"part one;");
    body_tx
        .send(Ok(Frame::data(Bytes::from_static(b"part two"))))
        .await
        .unwrap();
    drop(body_tx);
    let resp = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"received 17 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_after_the_check() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();

    // Without the token: the handshake is refused with 401 and never reaches the upstream.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("ws://{}/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::client_async(req, stream).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        other => panic!("expected a 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(up.seen_count(), 0);

    let mut ws = open_websocket(proxy.addr, &format!("Bearer {token}")).await;
    for text in ["hello", "through the proxy", "third"] {
        ws.send(tungstenite::Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.to_text().unwrap(), text);
    }
    ws.send(tungstenite::Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
    assert!(up.last_seen().header("authorization").is_none());
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        .await
        .unwrap();
    // Never finish the headers: the proxy must close the connection on its own.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy kept a slowloris connection open");
    if !buf.is_empty() {
        let resp = parse_response(&buf).unwrap();
        assert_eq!(resp.status, 408, "{resp:?}");
    }
    assert_eq!(up.seen_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_do_not_extend_the_header_timeout() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One header byte every 50 ms, far longer in total than the timeout: each byte is progress
    // a naive per-read timeout would accept.
    let trickle = async move {
        let _ = writer
            .write_all(b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Slow: ")
            .await;
        for _ in 0..(WAIT.as_millis() / 50) {
            if writer.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the proxy kept reading a trickled header for the whole wait");
    };
    let closed = async move {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf).await;
    };
    tokio::select! {
        _ = trickle => {}
        _ = closed => {}
    }
    assert_eq!(up.seen_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_get_431() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.max_header_bytes = 8192;
    })
    .await;
    let big = "a".repeat(20_000);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET /echo HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    // The proxy may close before reading everything; the answer is what counts.
    let _ = stream.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .unwrap();
    let resp = parse_response(&buf).expect("an answer");
    assert_eq!(resp.status, 431);
    assert_eq!(up.seen_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_gives_502() {
    // A port nobody listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = start_proxy(&format!("http://127.0.0.1:{port}"), |_, _| {}).await;
    let auth = format!("Bearer {}", proxy.token());
    let (status, headers, body) = get(&proxy.url("/echo"), &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.len() < 200 && body.starts_with(b"502"));
    assert_not_logged(&proxy.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.upstream_response_timeout = Duration::from_millis(300);
    })
    .await;
    let auth = format!("Bearer {}", proxy.token());
    let (status, _, body) = get(&proxy.url("/slow"), &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.starts_with(b"504"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.max_connections = 1;
    })
    .await;
    let auth = format!("Bearer {}", proxy.token());
    let request = format!("GET /echo HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}\r\n\r\n");
    // The first connection is served and stays open (keep-alive).
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The second is closed without an answer.
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = second.write_all(request.as_bytes()).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, second.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "served beyond the limit");
    // Once the first closes, a new connection is served again (poll: the slot frees when the
    // proxy notices the close).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = try_raw(
            proxy.addr,
            &format!("GET /echo HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}"),
        )
        .await;
        if resp.is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_logged_even_when_sent_everywhere() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let auth = format!("Bearer {token}");
    let cookie = format!("SERVE_TOKEN={token}");
    get(&proxy.url("/echo?token-ish=1"), &[("authorization", &auth)]).await;
    get(&proxy.url("/echo"), &[("cookie", &cookie)]).await;
    get(&proxy.url(&format!("/echo/docs?token={token}")), &[]).await;
    get(&proxy.url(&format!("/echo/docs?token={token}x")), &[]).await;
    get(
        &proxy.url("/echo"),
        &[("authorization", &format!("Bearer {token}x"))],
    )
    .await;
    get(&proxy.url("/-/healthz"), &[("authorization", &auth)]).await;
    // A new token set (the same token) makes the proxy sweep what it admitted, and log it.
    proxy.publish(&[&token]);
    assert_not_logged(&token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_against_the_connection_limit() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.max_connections = 1;
    })
    .await;
    let auth = format!("Bearer {}", proxy.token());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut req = format!("ws://{}/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", auth.parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap()
        .unwrap();
    ws.send(tungstenite::Message::text("hold")).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.to_text().unwrap(), "hold");
    // The tunnel holds the only slot.
    let head = format!("GET /echo HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}");
    assert!(
        try_raw(proxy.addr, &head).await.is_none(),
        "served beyond the limit"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if try_raw(proxy.addr, &head)
            .await
            .is_some_and(|r| r.status == 200)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel never gave its slot back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_not_a_tunnel() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let resp = raw(
        proxy.addr,
        &format!(
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: Bearer {}",
            proxy.token()
        ),
    )
    .await;
    assert_eq!(resp.status, 405);
    assert_eq!(up.seen_count(), 0);
}
