//! HTTP/2 floods: rapid reset (CVE-2023-44487) and CONTINUATION floods (2024's CVE family).
//! The connection is cut in bounded time, little or nothing reaches the upstream, and the proxy
//! keeps serving other clients.

use tokio::io::AsyncWriteExt;

use crate::h2raw::{
    self, CANCEL, CONTINUATION, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM,
};
use crate::{exchange, report, statuses};
use serve_guard_proxy::test_util::*;

/// Streams opened and reset at once in the rapid-reset case.
const RAPID_RESETS: u32 = 2000;
/// CONTINUATION frames sent after a HEADERS frame without END_HEADERS.
const CONTINUATIONS: usize = 5000;

async fn still_serves(proxy: &TestProxy) {
    let head = format!(
        "GET /echo HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        proxy.token()
    );
    assert_eq!(
        statuses(&exchange(proxy.addr, head.as_bytes()).await),
        vec![200]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let auth = format!("Bearer {}", proxy.token());
    let mut conn = h2raw::connect(proxy.addr).await;
    let block = h2raw::request("/echo", &[("authorization", &auth)]);
    let mut burst = Vec::new();
    for i in 0..RAPID_RESETS {
        let id = 1 + 2 * i;
        burst.extend(h2raw::frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(h2raw::frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The proxy may close mid-burst: that is the point.
    let _ = conn.write_all(&burst).await;
    let (frames, closed) = h2raw::read_frames(&mut conn, WAIT, |_, _| false).await;
    assert!(
        closed && frames.iter().any(|(k, _)| *k == GOAWAY),
        "the rapid-reset connection was not cut: closed {closed}, {} frames",
        frames.len()
    );
    let reached = up.seen_count();
    assert!(
        reached < (RAPID_RESETS / 10) as usize,
        "{reached} of {RAPID_RESETS} reset streams reached the upstream"
    );
    println!(
        "rapid reset: {reached} of {RAPID_RESETS} reset streams reached the upstream; GOAWAY after {} frames",
        frames.len()
    );
    still_serves(&proxy).await;
    report("HTTP/2 rapid reset", 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_are_cut_off() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let auth = format!("Bearer {}", proxy.token());
    let filler = "a".repeat(1000);
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty CONTINUATION frames", Vec::new()),
        (
            "large header fields",
            h2raw::block(&[("x-filler", filler.as_str())]),
        ),
        ("one-byte fragments", vec![0x00]),
    ];
    for (what, fragment) in &cases {
        let mut conn = h2raw::connect(proxy.addr).await;
        let mut flood = h2raw::frame(
            HEADERS,
            END_STREAM,
            1,
            &h2raw::request("/echo", &[("authorization", &auth)]),
        );
        for _ in 0..CONTINUATIONS {
            flood.extend(h2raw::frame(CONTINUATION, 0, 1, fragment));
        }
        let _ = conn.write_all(&flood).await;
        let (frames, closed) = h2raw::read_frames(&mut conn, WAIT, |_, _| false).await;
        assert!(closed, "{what}: the connection stayed open ({frames:?})");
        assert!(
            !frames.contains(&(HEADERS, 1)),
            "{what}: the flooded stream was answered"
        );
        assert_eq!(up.seen_count(), 0, "{what}: reached the upstream");
    }
    still_serves(&proxy).await;
    report("HTTP/2 CONTINUATION flood", cases.len());
}
