//! Auth bypass: requests that try to pass without the token, or with something token-like.
//! Each must get 401 (or 400) and reach the upstream not at all.

use crate::{exchange, report, statuses};
use serve_guard_proxy::test_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_variant_passes() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("user:{token}"))
    };
    // The last character changed (to one that differs from it).
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let near = format!("{}{last}", &token[..token.len() - 1]);
    let cases: Vec<(&str, String)> = vec![
        ("nothing", String::new()),
        ("bare Bearer", "Authorization: Bearer".into()),
        ("Bearer empty", "Authorization: Bearer ".into()),
        (
            "wrong token",
            "Authorization: Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        ),
        ("token + x", format!("Authorization: Bearer {token}x")),
        (
            "token prefix",
            format!("Authorization: Bearer {}", &token[..token.len() - 1]),
        ),
        ("last char changed", format!("Authorization: Bearer {near}")),
        (
            "upper-cased token",
            format!("Authorization: Bearer {}", token.to_uppercase()),
        ),
        ("token quoted", format!("Authorization: Bearer \"{token}\"")),
        (
            "Basic with the token",
            format!("Authorization: Basic {b64}"),
        ),
        ("Token scheme", format!("Authorization: Token {token}")),
        ("scheme glued", format!("Authorization: Bearer{token}")),
        (
            "Proxy-Authorization",
            format!("Proxy-Authorization: Bearer {token}"),
        ),
        ("X-Token header", format!("X-Token: {token}")),
        ("X-Api-Key header", format!("X-Api-Key: {token}")),
        (
            "lower-case cookie name",
            format!("Cookie: serve_token={token}"),
        ),
        (
            "cookie name with space",
            format!("Cookie: SERVE_TOKEN ={token}x"),
        ),
        (
            "__Host- cookie over plain HTTP",
            format!("Cookie: __Host-SERVE_TOKEN={token}"),
        ),
        ("cookie wrong", "Cookie: SERVE_TOKEN=nope".into()),
        ("cookie empty", "Cookie: SERVE_TOKEN=".into()),
        (
            "token in another cookie",
            format!("Cookie: session={token}"),
        ),
        (
            "obs-fold Authorization",
            format!("Authorization: Bearer\r\n {token}"),
        ),
    ];
    for (what, header) in &cases {
        let head = if header.is_empty() {
            "GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_owned()
        } else {
            format!("GET /echo HTTP/1.1\r\nHost: h\r\n{header}\r\nConnection: close\r\n\r\n")
        };
        let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
        assert!(
            got.iter().all(|s| *s == 401 || *s == 400) && !got.is_empty(),
            "{what}: {got:?}"
        );
    }
    // Methods other than GET without a token.
    let methods = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"];
    for method in methods {
        let head = format!(
            "{method} /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
        assert_eq!(got, vec![401], "{method}");
    }
    assert_eq!(up.seen_count(), 0, "a bypass reached the upstream");
    assert_not_logged(&token);
    report("auth bypass", cases.len() + methods.len());
}
