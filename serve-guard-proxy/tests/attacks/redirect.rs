//! Open redirect through the docs link: the 303 after `?token=` must stay on this origin for
//! every target, and the docs link never reaches the upstream.

use crate::{exchange, report};
use serve_guard_proxy::test_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_link_redirect_never_leaves_this_origin() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let base = url::Url::parse(&format!("http://{}/", proxy.addr)).unwrap();
    let targets = [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "/\\/evil.example",
        "/%2F%2Fevil.example",
        "/%5C%5Cevil.example",
        "/%5c/evil.example",
        "/.//evil.example",
        "/../evil.example",
        "/x/..//evil.example",
        "/%2e%2e//evil.example",
        "http://evil.example/",
        "https://evil.example//x",
        "//evil.example@127.0.0.1",
        "/%09/evil.example",
        "/%0d%0aLocation:%20http://evil.example",
        "//%65vil.example",
        "/;//evil.example",
        "/https:%2f%2fevil.example",
        "/%252f%252fevil.example",
        "/\t/evil.example",
        "/%E3%80%82evil.example",
        "/%ef%bc%8f%ef%bc%8fevil.example",
    ];
    let mut cases = 0;
    for target in targets {
        for query in [
            format!("token={token}"),
            format!("next=//evil.example&token={token}"),
        ] {
            let head = format!(
                "GET {target}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            );
            let bytes = exchange(proxy.addr, head.as_bytes()).await;
            cases += 1;
            let Some(resp) = parse_response(&bytes) else {
                continue; // closed without an answer: no redirect either
            };
            let Some(location) = resp.header("location") else {
                assert_ne!(resp.status, 303, "{target}: 303 without Location");
                continue;
            };
            assert_eq!(resp.status, 303, "{target}");
            assert!(
                location.starts_with('/') && !location[1..].starts_with(['/', '\\']),
                "{target} -> {location}"
            );
            assert!(
                !location.contains(&token),
                "{target}: the token in Location"
            );
            let resolved = base.join(location).unwrap();
            assert_eq!(
                resolved.origin(),
                base.origin(),
                "{target} -> {location} -> {resolved}"
            );
        }
    }
    assert_eq!(up.seen_count(), 0, "a docs link reached the upstream");
    assert_not_logged(&token);
    report("open redirect", cases);
}
