//! Upgrade tunnels: only an authenticated WebSocket upgrade is forwarded as an upgrade. h2c,
//! other protocols, protocol lists and any upgrade on an unauthenticated path go upstream as
//! plain requests (no `Upgrade`, no `Connection: upgrade`), and an upstream that switches
//! protocols anyway opens no tunnel.

use crate::{exchange, report, statuses};
use serve_guard_proxy::test_util::*;

const WS_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_websocket_upgrades_tunnel() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let auth = format!("Authorization: Bearer {}", proxy.token());
    let none = String::new();
    // (path, credentials, Connection, Upgrade): none of these may become a tunnel.
    let cases: Vec<(&str, &String, &str, &str)> = vec![
        ("/-/healthz", &none, "Upgrade, HTTP2-Settings", "h2c"),
        ("/-/healthz", &none, "Upgrade", "websocket"),
        ("/-/healthz", &auth, "Upgrade", "websocket"),
        ("/-/healthz/", &none, "upgrade", "WebSocket"),
        ("/-/healthz", &none, "Upgrade", "foo/1"),
        ("/echo", &auth, "Upgrade, HTTP2-Settings", "h2c"),
        ("/echo", &auth, "Upgrade", "foo/1"),
        ("/echo", &auth, "Upgrade", "websocket, h2c"),
        ("/echo", &auth, "Upgrade", "h2c, websocket"),
        ("/echo", &auth, "Upgrade", "TLS/1.0"),
        ("/switch", &auth, "Upgrade", "h2c"),
        ("/switch", &auth, "Upgrade", "foo/1"),
        ("/switch", &auth, "keep-alive", "websocket"),
        ("/switch", &auth, "keep-alive", ""),
        ("/-/healthz", &none, "Upgrade", "h2c"),
    ];
    for (path, creds, connection, upgrade) in &cases {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: {connection}\r\n");
        if !upgrade.is_empty() {
            head.push_str(&format!(
                "Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n{WS_KEY}\r\n"
            ));
        }
        if !creds.is_empty() {
            head.push_str(&format!("{creds}\r\n"));
        }
        head.push_str("\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let before = up.seen_count();
        let bytes = exchange(proxy.addr, head.as_bytes()).await;
        let got = statuses(&bytes);
        assert!(
            !got.contains(&101),
            "{path} {upgrade}: switched protocols: {got:?}"
        );
        if path.starts_with("/switch") {
            assert_eq!(got.first(), Some(&502), "{path} {upgrade}");
        }
        let seen = up.state.seen.lock().unwrap();
        for s in &seen[before..] {
            assert!(
                s.header("upgrade").is_none(),
                "{path} {upgrade}: Upgrade reached the upstream: {s:?}"
            );
            assert!(s.header("http2-settings").is_none(), "{path}: {s:?}");
            assert!(
                s.header("connection")
                    .is_none_or(|c| !c.to_ascii_lowercase().contains("upgrade")),
                "{path}: {s:?}"
            );
            assert!(
                !s.target.starts_with("PRI"),
                "{path}: the preface became a request"
            );
        }
    }
    // The one thing that tunnels: an authenticated WebSocket upgrade (the upstream's /ws).
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{WS_KEY}\r\n{auth}\r\n\r\n"
    );
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(statuses(&buf[..n]), vec![101]);
    assert_eq!(up.last_seen().header("upgrade"), Some("websocket"));
    assert_eq!(
        statuses(
            &exchange(
                proxy.addr,
                b"GET /-/healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            .await
        ),
        vec![200]
    );
    report("upgrade tunnels", cases.len() + 1);
}
