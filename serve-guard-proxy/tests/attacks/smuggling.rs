//! Request smuggling: CL/TE desync over HTTP/1.1, and forbidden or malformed framing over
//! HTTP/2. A smuggled request must never reach the upstream as a request of its own, and no
//! injected header may reach it.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::h2raw::{self, END_HEADERS, END_STREAM, HEADERS};
use crate::{exchange, report, statuses, upstream_targets};
use serve_guard_proxy::test_util::*;

const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";

fn never_smuggled(up: &TestUpstream, what: &str) {
    let targets = upstream_targets(up);
    assert!(
        !targets.iter().any(|t| t.contains("smuggled")),
        "{what}: the upstream saw a smuggled request: {targets:?}"
    );
    let seen = up.state.seen.lock().unwrap();
    for s in seen.iter() {
        assert!(
            s.header("x-injected").is_none(),
            "{what}: injected header: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_cl_te_desync_never_smuggles_a_request() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let token = proxy.token();
    let n = HIDDEN.len();
    let chunked_hidden = format!("0\r\n\r\n{HIDDEN}");
    let framings: Vec<(&str, String, String)> = vec![
        (
            "CL.TE",
            "Content-Length: 4\r\nTransfer-Encoding: chunked".to_owned(),
            chunked_hidden.clone(),
        ),
        (
            "TE.CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 4".to_owned(),
            chunked_hidden.clone(),
        ),
        (
            "two different CL",
            format!("Content-Length: 0\r\nContent-Length: {n}"),
            HIDDEN.into(),
        ),
        ("CL list", format!("Content-Length: 0, {n}"), HIDDEN.into()),
        (
            "CL plus sign",
            format!("Content-Length: +{n}"),
            HIDDEN.into(),
        ),
        ("CL with NUL", "Content-Length: 0\0".into(), HIDDEN.into()),
        (
            "TE xchunked",
            "Transfer-Encoding: xchunked".into(),
            chunked_hidden.clone(),
        ),
        (
            "TE chunked, identity",
            "Transfer-Encoding: chunked, identity".into(),
            chunked_hidden.clone(),
        ),
        (
            "TE identity, chunked + CL",
            "Transfer-Encoding: identity, chunked\r\nContent-Length: 3".to_owned(),
            chunked_hidden.clone(),
        ),
        (
            "TE space before colon",
            "Transfer-Encoding : chunked".into(),
            chunked_hidden.clone(),
        ),
        (
            "TE tab value",
            "Transfer-Encoding:\tchunked".into(),
            chunked_hidden.clone(),
        ),
        (
            "TE twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x".into(),
            chunked_hidden.clone(),
        ),
        (
            "TE obs-fold",
            "Transfer-Encoding:\r\n chunked".into(),
            chunked_hidden.clone(),
        ),
        (
            "TE vertical tab",
            "Transfer-Encoding:\x0bchunked".into(),
            chunked_hidden.clone(),
        ),
        (
            "chunk size overflow",
            "Transfer-Encoding: chunked".into(),
            format!("ffffffffffffffff1\r\n{HIDDEN}\r\n0\r\n\r\n"),
        ),
        (
            "chunk extension",
            "Transfer-Encoding: chunked".into(),
            format!("0;x=\"\r\n{HIDDEN}\"\r\n\r\n"),
        ),
        (
            "chunk LF only",
            "Transfer-Encoding: chunked".into(),
            format!("0\n\n{HIDDEN}"),
        ),
        (
            "chunk size with space",
            "Transfer-Encoding: chunked".into(),
            format!("0 \r\n\r\n{HIDDEN}"),
        ),
        (
            "Expect 100-continue",
            format!("Expect: 100-continue\r\nContent-Length: {n}"),
            HIDDEN.into(),
        ),
    ];
    // Kept-alive connections wait out the header timeout after their answer: all cases at once.
    let mut attempts = Vec::new();
    for (path, auth) in [
        ("/-/healthz", String::new()),
        ("/echo", format!("Authorization: Bearer {token}\r\n")),
    ] {
        for (what, framing, body) in &framings {
            let request =
                format!("POST {path} HTTP/1.1\r\nHost: h\r\n{auth}{framing}\r\n\r\n{body}");
            let addr = proxy.addr;
            attempts.push(async move {
                (
                    format!("{path} {what}"),
                    exchange(addr, request.as_bytes()).await,
                )
            });
        }
    }
    let mut cases = 0;
    for (what, answer) in futures_util::future::join_all(attempts).await {
        // Refused (400/501), or served once with the rest read as its body or refused.
        assert!(!statuses(&answer).is_empty(), "{what}: no answer");
        never_smuggled(&up, &what);
        cases += 1;
    }
    // Line-ending tricks in the head itself.
    let heads = [
        "GET /-/healthz HTTP/1.1\nHost: h\n\nGET /smuggled HTTP/1.1\nHost: h\n\n",
        "GET /-/healthz HTTP/1.1\rHost: h\r\n\r\n",
        "GET /-/healthz HTTP/1.1\r\nHost: h\r\nX: a\rGET /smuggled HTTP/1.1\r\n\r\n",
        "GET /-/healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /-/healthz HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n X-Injected: 1\r\n\r\n",
    ];
    for head in heads {
        let _ = exchange(proxy.addr, head.as_bytes()).await;
        never_smuggled(&up, head);
        cases += 1;
    }
    // A pipelined second request is checked like any other: without the token it is refused.
    let pipelined = format!(
        "GET /echo HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    );
    let got = statuses(&exchange(proxy.addr, pipelined.as_bytes()).await);
    assert_eq!(got, vec![200, 401], "pipelined");
    never_smuggled(&up, "pipelined");
    cases += 1;
    assert_not_logged(&token);
    report("CL/TE smuggling over HTTP/1.1", cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_framing_tricks_never_reach_the_upstream() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let auth = format!("Bearer {token}");
    // (what, extra header fields, request body)
    type Case<'a> = (&'a str, Vec<(String, String)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "content-length shorter than DATA",
            vec![("content-length".into(), "0".into())],
            Some(HIDDEN),
        ),
        (
            "content-length longer than DATA",
            vec![("content-length".into(), "999".into())],
            Some(HIDDEN),
        ),
        (
            "transfer-encoding in h2",
            vec![("transfer-encoding".into(), "chunked".into())],
            Some("0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        ),
        (
            "connection in h2",
            vec![("connection".into(), "keep-alive".into())],
            None,
        ),
        (
            "CRLF in a value",
            vec![("x-a".into(), "1\r\nx-injected: 1".into())],
            None,
        ),
        (
            "LF in a value",
            vec![("x-a".into(), "1\nx-injected: 1".into())],
            None,
        ),
        (
            "upper-case name",
            vec![("X-Injected".into(), "1".into())],
            None,
        ),
        (
            "colon in a name",
            vec![("x-injected:x".into(), "1".into())],
            None,
        ),
        (
            "te other than trailers",
            vec![("te".into(), "chunked".into())],
            None,
        ),
    ];
    // One fresh connection per case: stream 1 each time.
    let stream_id = 1u32;
    for (what, extra, body) in &cases {
        let mut conn = h2raw::connect(proxy.addr).await;
        let mut fields: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
        fields.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let method = if body.is_some() { "POST" } else { "GET" };
        let mut block_fields = vec![
            (":method", method),
            (":scheme", "http"),
            (":path", "/echo"),
            (":authority", "h"),
        ];
        block_fields.extend(fields);
        let block = h2raw::block(&block_fields);
        let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
        let mut out = h2raw::frame(HEADERS, flags, stream_id, &block);
        if let Some(body) = body {
            out.extend(h2raw::frame(
                h2raw::DATA,
                END_STREAM,
                stream_id,
                body.as_bytes(),
            ));
        }
        conn.write_all(&out).await.unwrap();
        // Wait for the stream's answer or reset (or the connection's end).
        let _ = h2raw::read_frames(&mut conn, Duration::from_secs(5), |kind, id| {
            id == stream_id && (kind == HEADERS || kind == h2raw::RST_STREAM)
                || kind == h2raw::GOAWAY
        })
        .await;
        never_smuggled(&up, what);
        let seen = up.state.seen.lock().unwrap();
        for s in seen.iter() {
            assert!(
                s.header("te").is_none_or(|v| v == "trailers"),
                "{what}: {s:?}"
            );
        }
    }
    assert!(!crate::upstream_saw(&up, &token));
    report("smuggling over HTTP/2", cases.len());
}
