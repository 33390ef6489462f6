//! Token leakage: an authenticated request that also carries the token elsewhere (odd
//! whitespace after Bearer, token-like query keys, other headers, other cookies). The request is
//! served and the token reaches the upstream nowhere: not in a header, a cookie, the path's query.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::h2raw::{self, END_HEADERS, END_STREAM, HEADERS};
use crate::{exchange, report, statuses, upstream_saw};
use serve_guard_proxy::test_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_upstream_over_http1() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let t = proxy.token();
    let cookie = format!("Cookie: SERVE_TOKEN={t}");
    let bearer = format!("Authorization: Bearer {t}");
    // (target, headers): each authenticates and carries the token somewhere else too.
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            "/echo".into(),
            vec![cookie.clone(), format!("Authorization: Bearer\t{t}")],
        ),
        (
            "/echo".into(),
            vec![cookie.clone(), format!("Authorization: bearer \t {t}")],
        ),
        ("/echo".into(), vec![format!("Authorization: Bearer\t{t}")]),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("Authorization: Bearer {t}")],
        ),
        (
            "/echo".into(),
            vec![
                cookie.clone(),
                format!("Authorization: Bearer {t}, Basic eDp5"),
            ],
        ),
        (
            "/echo".into(),
            vec![cookie.clone(), format!("Authorization: Basic {t}")],
        ),
        (format!("/echo?TOKEN={t}"), vec![bearer.clone()]),
        (format!("/echo?Token={t}"), vec![bearer.clone()]),
        (format!("/echo?a=1;token={t}"), vec![bearer.clone()]),
        (format!("/echo?a=1&token[]={t}"), vec![bearer.clone()]),
        (format!("/echo?token%5B%5D={t}"), vec![bearer.clone()]),
        (format!("/echo?%54OKEN={t}"), vec![bearer.clone()]),
        (format!("/echo?next=/x?token={t}"), vec![bearer.clone()]),
        (format!("/echo?q=%22{t}%22"), vec![bearer.clone()]),
        (format!("/echo?q={t}"), vec![bearer.clone()]),
        (format!("/echo?{t}"), vec![bearer.clone()]),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("X-Api-Key: {t}")],
        ),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("X-Forwarded-Token: x {t} y")],
        ),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("Cookie: serve_token={t}; keep=1")],
        ),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("Cookie: other={t}")],
        ),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("Cookie: __Host-SERVE_TOKEN={t}")],
        ),
        (
            "/echo".into(),
            vec![format!("Cookie: a=1; SERVE_TOKEN={t}; SERVE_TOKEN={t}")],
        ),
        (
            "/echo".into(),
            vec![
                bearer.clone(),
                format!("Referer: https://x/echo/docs?token={t}"),
            ],
        ),
        (
            "/echo".into(),
            vec![bearer.clone(), format!("Proxy-Authorization: Bearer {t}")],
        ),
        ("/-/healthz".into(), vec![bearer.clone()]),
        (format!("/-/healthz?token2={t}"), vec![]),
    ];
    for (target, headers) in &cases {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("Connection: close\r\n\r\n");
        let before = up.seen_count();
        let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
        assert_eq!(got, vec![200], "{}", head.replace(&t, "<TOKEN>"));
        assert_eq!(up.seen_count(), before + 1);
        assert!(
            !upstream_saw(&up, &t),
            "the token reached the upstream: {}",
            head.replace(&t, "<TOKEN>")
        );
    }
    // The app's own values next to it survive.
    let kept = up
        .state
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.header("cookie") == Some("keep=1"));
    assert!(kept, "the app's own cookie was dropped");
    assert_not_logged(&t);
    report("token leakage over HTTP/1.1", cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_upstream_over_http2() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let t = proxy.token();
    let cases: Vec<Vec<(String, String)>> = vec![
        vec![("authorization".into(), format!("Bearer\t{t}"))],
        vec![
            ("cookie".into(), format!("SERVE_TOKEN={t}")),
            ("authorization".into(), format!("Bearer\t{t}")),
        ],
        vec![
            ("authorization".into(), format!("Bearer {t}")),
            ("cookie".into(), format!("x={t}")),
            ("cookie".into(), "keep=1".into()),
        ],
        vec![
            ("authorization".into(), format!("Bearer {t}")),
            ("x-api-key".into(), t.clone()),
        ],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let mut conn = h2raw::connect(proxy.addr).await;
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let block = h2raw::request(&format!("/echo?Token={t}"), &extra);
        conn.write_all(&h2raw::frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await
            .unwrap();
        let (frames, _) = h2raw::read_frames(&mut conn, Duration::from_secs(10), |kind, id| {
            id == 1 && kind == HEADERS
        })
        .await;
        assert!(
            frames.contains(&(HEADERS, 1)),
            "case {i}: no response: {frames:?}"
        );
        assert_eq!(up.seen_count(), i + 1, "case {i}");
        assert!(
            !upstream_saw(&up, &t),
            "case {i}: the token reached the upstream"
        );
    }
    report("token leakage over HTTP/2", cases.len());
}
