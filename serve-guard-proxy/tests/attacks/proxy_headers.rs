//! Hop-by-hop and proxy header spoofing: what a client says about its address, scheme, host,
//! prefix, port or original URL never reaches the upstream; the proxy's own values do.

use crate::{exchange, report, statuses};
use serve_guard_proxy::test_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_proxy_headers_are_replaced_or_removed() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let auth = format!("Authorization: Bearer {}", proxy.token());
    let spoofed = [
        "X-Real-IP",
        "X-Original-URL",
        "X-Original-URI",
        "X-Rewrite-URL",
        "X-Forwarded-Prefix",
        "X-Forwarded-Port",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Server",
        "X-Forwarded-Scheme",
        "X-Forwarded-Ssl",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "Forwarded",
        "X-Original-Host",
        "X-Client-IP",
        "True-Client-IP",
        "CF-Connecting-IP",
        "X-Cluster-Client-IP",
        "X_Forwarded_For",
        "X_Real_IP",
        "X_Forwarded_Prefix",
        "X_Original_URL",
        "Proxy-Connection",
        "Keep-Alive",
        "Proxy-Authorization",
        "HTTP2-Settings",
        "Trailer",
        "X-Named-Hop",
    ];
    for public in [false, true] {
        let path = if public { "/-/healthz" } else { "/echo" };
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: serve.example\r\nConnection: close, X-Named-Hop\r\n"
        );
        if !public {
            head.push_str(&format!("{auth}\r\n"));
        }
        for name in spoofed {
            head.push_str(&format!("{name}: 203.0.113.66\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(
            statuses(&exchange(proxy.addr, head.as_bytes()).await),
            vec![200],
            "{path}"
        );
        let seen = up.last_seen();
        assert!(
            !seen.headers.iter().any(|(_, v)| v.contains("203.0.113.66")),
            "{path}: a spoofed value reached the upstream: {seen:?}"
        );
        assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"]);
        assert_eq!(seen.all("x-real-ip"), vec!["127.0.0.1"]);
        assert_eq!(seen.all("x-forwarded-proto"), vec!["http"]);
        assert_eq!(seen.all("x-forwarded-host"), vec!["serve.example"]);
        let port = proxy.addr.port().to_string();
        assert_eq!(seen.all("x-forwarded-port"), vec![port.as_str()]);
        for gone in [
            "x-forwarded-prefix",
            "x-original-url",
            "x-rewrite-url",
            "forwarded",
        ] {
            assert!(seen.header(gone).is_none(), "{path}: {gone}");
        }
    }
    report("proxy/hop header spoofing", spoofed.len() * 2);
}
