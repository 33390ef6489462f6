//! Applying `[public.limits]` to hyper's connection server: header read timeout (slowloris,
//! also the idle HTTP/1.1 keep-alive limit), header size (431 beyond it), HTTP/2 stream and
//! reset limits. The connection limits are `admission`'s.

#![forbid(unsafe_code)]

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::Limits;

/// Most header fields per HTTP/1.1 request (hyper's default is 100); the byte limit is the
/// real bound, this keeps parsing cheap.
const MAX_HEADER_FIELDS: usize = 128;
/// HTTP/2 keep-alive pings find dead clients that hold a connection slot.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 connection may have open at once (each may hold an upstream request).
const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Rapid reset (CVE-2023-44487): streams a client opened and reset before the proxy answered,
/// not yet processed; beyond it the connection gets GOAWAY.
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may reset because of client errors before it closes the connection
/// (CVE-2024-2653-style floods of malformed streams).
const HTTP2_MAX_ERROR_RESETS: usize = 256;

/// The connection server (HTTP/1.1 and HTTP/2, chosen per connection) with the limits applied.
/// CONTINUATION floods are bounded by `max_header_list_size`: the h2 crate refuses a header
/// block beyond it without buffering the rest.
pub fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer is where the head must fit: beyond it hyper answers 431.
        .max_buf_size(limits.max_header_bytes)
        .max_headers(MAX_HEADER_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(HTTP2_MAX_ERROR_RESETS)
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    builder
}
