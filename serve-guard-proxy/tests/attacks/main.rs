//! The attack suite: hostile clients against the public-mode proxy, one file per class. Every
//! case asserts what the upstream received (nothing, or exactly what it should), not only the
//! status the client got. Each class prints how many cases it ran.
//!
//! The proxy runs in-process in front of the recording upstream of the crate's harness
//! (`serve_guard_proxy::test_util`); raw HTTP/1.1 and raw HTTP/2 frames are written by hand
//! where a library client would refuse or normalise the attack. Every wait is bounded by `WAIT`;
//! nothing sleeps where polling works.

mod auth_bypass;
mod csrf;
mod field_rules;
mod h2_floods;
mod h2raw;
mod lockout;
mod many_sources;
mod path_confusion;
mod proxy_headers;
mod redirect;
mod revocation;
mod smuggling;
mod timing;
mod token_leak;
mod upgrades;

use std::net::SocketAddr;
use std::time::Duration;

use serve_guard_proxy::test_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Sends `bytes` exactly as given and reads until the proxy closes or `WAIT` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_all(&mut stream).await
}

/// Reads until EOF (or a reset); fails the test if the proxy keeps it open beyond `WAIT`.
pub async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the proxy kept the connection open");
    buf
}

/// Status codes of every HTTP/1.1 response in `bytes` (pipelined answers included).
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok())
        .collect()
}

/// A TCP connection from a chosen loopback source address (127.0.0.0/8 all reach the proxy).
pub async fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// Whether anything the upstream has seen holds `secret` (target or any header).
pub fn upstream_saw(up: &TestUpstream, secret: &str) -> bool {
    up.state.seen.lock().unwrap().iter().any(|seen| {
        seen.target.contains(secret)
            || seen
                .headers
                .iter()
                .any(|(k, v)| k.contains(secret) || v.contains(secret))
    })
}

/// Targets the upstream has seen, in order.
pub fn upstream_targets(up: &TestUpstream) -> Vec<String> {
    up.state
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.target.clone())
        .collect()
}

/// Polls `cond` every 20 ms until true, failing after `WAIT` with `what`.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line per class in the output: the case count the closing note reports.
pub fn report(class: &str, cases: usize) {
    println!("attack class {class}: {cases} cases held");
    flush();
}
