//! Revocation is total: what a token opened ends within a second of the token leaving the token
//! file, whatever it is: a WebSocket tunnel, a streaming response over HTTP/1.1 (chunked) and
//! HTTP/2 (on a connection whose other streams go on), one admitted by the SERVE_TOKEN cookie,
//! a gRPC stream. What the token still in the file opened goes on. The new set arrives as the
//! agent sends it (the channel the proxy reads); the agent's tests (serve-guard/tests/public)
//! edit the token file on disk, both ways operators do, with the agent's watcher following it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use serve_guard_proxy::metrics::{Revoked, global};
use serve_guard_proxy::token::Token;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use crate::{eventually, report};
use serve_guard_proxy::test_util::*;

/// The bound: from the new token set to the end of what the removed token opened.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

type WebSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn websocket(proxy: &TestProxy, token: &str) -> WebSocket {
    let mut ws = open_websocket(proxy.addr, &format!("Bearer {token}")).await;
    echoes(&mut ws, "opened").await;
    ws
}

async fn echoes(ws: &mut WebSocket, text: &str) {
    ws.send(tungstenite::Message::text(text)).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an echo within the wait")
        .expect("the tunnel is open")
        .expect("the tunnel is open");
    assert_eq!(echoed.to_text().unwrap(), text);
}

fn events_request(
    uri: String,
    credential: (&'static str, String),
) -> Request<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>> {
    Request::get(uri)
        .header(credential.0, credential.1)
        .body(Empty::new().boxed_unsync())
        .unwrap()
}

/// The response `sent` brings, once it is open and flowing: 200 and a first event.
async fn flowing<E: std::fmt::Debug>(
    sent: impl Future<Output = Result<http::Response<Incoming>, E>>,
    what: &str,
) -> Incoming {
    let resp = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{what}");
    assert!(
        resp.headers().get("grpc-status").is_none(),
        "{what}: {resp:?}"
    );
    let mut body = resp.into_body();
    more_events(&mut body, 1, what).await;
    body
}

/// `/events` over HTTP/1.1 on a connection of its own.
async fn events_h1(proxy: &TestProxy, credential: (&'static str, String)) -> Incoming {
    let req = events_request(proxy.url("/events"), credential);
    flowing(client().request(req), "HTTP/1.1 stream").await
}

/// `/events` as one more stream of the HTTP/2 connection `h2`.
async fn events_h2(
    h2: &hyper::client::conn::http2::SendRequest<BoxBody>,
    proxy: &TestProxy,
    token: &str,
) -> Incoming {
    let bearer = ("authorization", format!("Bearer {token}"));
    let req = events_request(proxy.url("/events"), bearer);
    flowing(h2.clone().send_request(req), "HTTP/2 stream").await
}

/// The gRPC `Watch` call: a stream of messages without end, on a connection of its own (which
/// lives while its stream does).
async fn grpc_watch(proxy: &TestProxy, token: &str) -> Incoming {
    let addr = proxy.grpc_addr.unwrap();
    let req = Request::post(format!("http://{addr}/test.Events/Watch"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new().boxed_unsync())
        .unwrap();
    flowing(h2c(addr).await.send_request(req), "gRPC stream").await
}

/// Reads `count` more data frames: the stream is open and flowing.
async fn more_events(body: &mut Incoming, count: usize, what: &str) {
    for _ in 0..count {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{what}: no event within the wait"))
            .unwrap_or_else(|| panic!("{what}: ended"))
            .unwrap_or_else(|e| panic!("{what}: failed: {e}"));
        assert!(frame.is_data(), "{what}: {frame:?}");
    }
}

/// Reads what is left until `deadline`: the stream must end by then, with an error (a reset
/// HTTP/2 stream, an HTTP/1.1 message cut short), never as if it were complete.
async fn ends_by(body: &mut Incoming, deadline: Instant, what: &str) {
    let end = tokio::time::timeout_at(deadline, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Ok(e),
                None => return Err(()),
            }
        }
    })
    .await;
    match end {
        Err(_) => panic!("{what}: still open {REVOKED_WITHIN:?} after its token was removed"),
        Ok(Err(())) => panic!("{what}: ended as if complete"),
        Ok(Ok(_error)) => {}
    }
}

/// The tunnel must close by `deadline`.
async fn tunnel_ends_by(ws: &mut WebSocket, deadline: Instant) {
    let closed = tokio::time::timeout_at(deadline, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the WebSocket was still open {REVOKED_WITHIN:?} after its token was removed"
    );
}

fn revoked_so_far() -> (u64, u64) {
    let snapshot = global().snapshot();
    let at = |what: Revoked| {
        let i = Revoked::ALL.iter().position(|r| *r == what).unwrap();
        snapshot.revoked.get(i).copied().unwrap_or(0)
    };
    (at(Revoked::Tunnel), at(Revoked::Stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_tunnels_and_streams_within_a_second() {
    let (_up, _grpc_up, proxy) = start_grpc_proxy().await;
    let old = proxy.token();
    let new = Token::generate().unwrap().expose().to_owned();
    proxy.publish(&[&new, &old]);
    eventually("the new token is added", async || {
        proxy.token_set().len() == 2
    })
    .await;

    let cookie = |t: &str| ("cookie", format!("SERVE_TOKEN={t}"));
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let h2 = h2c(proxy.addr).await;
    let mut ws_old = websocket(&proxy, &old).await;
    let mut ws_new = websocket(&proxy, &new).await;
    let mut h1_old = events_h1(&proxy, bearer(&old)).await;
    let mut h1_cookie_old = events_h1(&proxy, cookie(&old)).await;
    let mut h1_new = events_h1(&proxy, bearer(&new)).await;
    let mut h1_cookie_new = events_h1(&proxy, cookie(&new)).await;
    // Both on one HTTP/2 connection: the old one's stream is reset, the connection stays.
    let mut h2_old = events_h2(&h2, &proxy, &old).await;
    let mut h2_new = events_h2(&h2, &proxy, &new).await;
    let mut grpc_old = grpc_watch(&proxy, &old).await;
    let mut grpc_new = grpc_watch(&proxy, &new).await;
    let (tunnels_before, streams_before) = revoked_so_far();

    proxy.publish(&[&new]);
    let removed = Instant::now();
    let deadline = removed + REVOKED_WITHIN;
    tunnel_ends_by(&mut ws_old, deadline).await;
    ends_by(&mut h1_old, deadline, "HTTP/1.1 stream, bearer").await;
    ends_by(&mut h1_cookie_old, deadline, "HTTP/1.1 stream, cookie").await;
    ends_by(&mut h2_old, deadline, "HTTP/2 stream").await;
    ends_by(&mut grpc_old, deadline, "gRPC stream").await;
    println!(
        "all five ended {:?} after the new token set",
        removed.elapsed()
    );

    // What the remaining token opened goes on, the shared HTTP/2 connection included.
    echoes(&mut ws_new, "still open").await;
    more_events(&mut h1_new, 3, "HTTP/1.1 stream of the new token").await;
    more_events(
        &mut h1_cookie_new,
        3,
        "HTTP/1.1 stream of the new token's cookie",
    )
    .await;
    more_events(&mut h2_new, 3, "HTTP/2 stream of the new token").await;
    more_events(&mut grpc_new, 3, "gRPC stream of the new token").await;
    let mut h2_again = events_h2(&h2, &proxy, &new).await;
    more_events(&mut h2_again, 1, "a new stream on the same connection").await;

    let (tunnels, streams) = revoked_so_far();
    // At least: other tests in this binary may revoke too.
    assert!(tunnels > tunnels_before, "revoked tunnels are counted");
    assert!(streams >= streams_before + 4, "revoked streams are counted");
    let (status, _, _) = get(&proxy.url("/echo"), &[("authorization", &bearer(&old).1)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let logs = captured_logs();
    assert!(logs.contains("new token set: ended"), "one line per sweep");
    assert_not_logged(&old);
    assert_not_logged(&new);
    report("revocation", 11);
}
