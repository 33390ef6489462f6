//! Path confusion: targets that try to reach a protected path through the unauthenticated one
//! (`/-/healthz`), or make the upstream see another path than the one checked.

use crate::{exchange, report, statuses, upstream_targets};
use serve_guard_proxy::test_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_trick_reaches_a_protected_path_without_the_token() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let bypasses = [
        "/-/healthz/../echo",
        "/-/healthz/..%2fecho",
        "/-/healthz/..%2Fecho",
        "/-/healthz%2f..%2fecho",
        "/-/healthz/%2e%2e/echo",
        "/-/healthz/%2E%2E/echo",
        "/-/healthz/.%2e/echo",
        "/-/healthz\\..\\echo",
        "/-/healthz%5c..%5cecho",
        "/-/healthz/x",
        "/-/healthzx",
        "/-/healthz%00",
        "/-/healthz%00/../../echo",
        "/-/healthz%2fx",
        "/-/HEALTHZ",
        "/-/Healthz",
        "/-/healthz;x",
        "/-/healthz;/../echo",
        "//-/healthz/../../echo",
        "/-/healthz%23/../echo",
        "/-/healthz/%252e%252e/echo",
        "/-/healthz/..;/echo",
        "/-/healthz%09",
        "/-/healthz%0d%0a",
        "/-/healthz/%c0%ae%c0%ae/echo",
        "http://h/-/healthz/../echo",
        "http://h/-/healthz%2f..%2fecho",
        "*",
    ];
    for target in bypasses {
        let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
        assert!(
            got.len() == 1 && (got[0] == 401 || got[0] == 400),
            "{target}: {got:?}"
        );
    }
    assert_eq!(up.seen_count(), 0, "a path trick reached the upstream");

    // Served forms: the upstream sees the normal form that was checked, never the raw one.
    let served = [
        ("/-/healthz", "/-/healthz"),
        ("/-/healthz/", "/-/healthz"),
        ("//-//healthz", "/-/healthz"),
        ("/-/./healthz", "/-/healthz"),
        ("/-/%68ealthz", "/-/healthz"),
        ("/echo/../-/healthz", "/-/healthz"),
        ("/echo/..%2f-/healthz", "/-/healthz"),
        ("http://h/-/healthz", "/-/healthz"),
    ];
    for (target, want) in served {
        let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
        assert_eq!(got, vec![200], "{target}");
        assert_eq!(upstream_targets(&up).last().unwrap(), want, "{target}");
    }
    report("path confusion", bypasses.len() + served.len());
}
