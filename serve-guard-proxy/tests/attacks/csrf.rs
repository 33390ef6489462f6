//! CSRF: a request the cookie alone authenticates may change state (unsafe method, WebSocket
//! upgrade) only with the proxy's own `Origin`. Cross-origin, same-site, `null`, missing and
//! look-alike origins get 403 and reach the upstream not at all; Bearer requests and safe
//! methods are not affected.

use crate::{exchange, report, statuses};
use serve_guard_proxy::test_util::*;

const ORIGIN: &str = "https://serve.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_requests_need_the_proxys_origin_to_change_state() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |c, _| {
        c.external_url = Some(serve_guard_proxy::config::ExternalUrl::parse(ORIGIN).unwrap());
    })
    .await;
    let t = proxy.token();
    let cookie = format!("Cookie: __Host-SERVE_TOKEN={t}");
    let bearer = format!("Authorization: Bearer {t}");
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13";
    let foreign = [
        None,
        Some("null"),
        Some("https://evil.example"),
        Some("https://app.serve.example.com"),
        Some("https://serve.example.com.evil.example"),
        Some("http://serve.example.com"),
        Some("https://serve.example.com:8443"),
        Some("https://serve.example.co"),
    ];
    let mut cases = 0;
    for origin in foreign {
        for (method, path, extra) in [
            ("POST", "/echo", "Content-Length: 0"),
            ("PUT", "/echo", "Content-Length: 0"),
            ("DELETE", "/echo", "Content-Length: 0"),
            ("PATCH", "/echo", "Content-Length: 0"),
            ("GET", "/ws", ws),
        ] {
            let origin_line = origin
                .map(|o| format!("Origin: {o}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: serve.example.com\r\n{cookie}\r\n{origin_line}{extra}\r\nConnection: close\r\n\r\n"
            );
            let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
            assert_eq!(got, vec![403], "{method} {path} from {origin:?}");
            cases += 1;
        }
    }
    // Two Origin headers, one of them ours: refused too.
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: h\r\n{cookie}\r\nOrigin: {ORIGIN}\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        statuses(&exchange(proxy.addr, head.as_bytes()).await),
        vec![403]
    );
    cases += 1;
    assert_eq!(
        up.seen_count(),
        0,
        "a cross-origin cookie request reached the upstream"
    );

    // Allowed: our Origin with the cookie; Bearer from anywhere; safe methods on the cookie.
    let allowed = [
        format!(
            "POST /echo HTTP/1.1\r\nHost: h\r\n{cookie}\r\nOrigin: {ORIGIN}\r\nContent-Length: 0"
        ),
        format!(
            "POST /echo HTTP/1.1\r\nHost: h\r\n{cookie}\r\nOrigin: HTTPS://SERVE.EXAMPLE.COM\r\nContent-Length: 0"
        ),
        format!(
            "POST /echo HTTP/1.1\r\nHost: h\r\n{bearer}\r\nOrigin: https://evil.example\r\nContent-Length: 0"
        ),
        format!("GET /echo HTTP/1.1\r\nHost: h\r\n{cookie}\r\nOrigin: https://evil.example"),
        format!("GET /echo/openapi.json HTTP/1.1\r\nHost: h\r\n{cookie}"),
    ];
    for head in &allowed {
        let head = format!("{head}\r\nConnection: close\r\n\r\n");
        assert_eq!(
            statuses(&exchange(proxy.addr, head.as_bytes()).await),
            vec![200],
            "{}",
            head.replace(&t, "<T>")
        );
    }
    assert_eq!(up.seen_count(), allowed.len());
    assert!(!crate::upstream_saw(&up, &t));
    report("CSRF via Origin", cases + allowed.len());
}
