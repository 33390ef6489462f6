//! What the proxy tells the operator about each request: the metrics, a log line for every
//! refused request (client, listener, path, reason; rate-limited so a 401 storm cannot flood the
//! journal), the same for connections refused or displaced by admission, and, when
//! `[public] access_log` is on, one line per forwarded request.
//!
//! Never the token: only the path is logged (a docs link carries the token in its query), and
//! no header.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::{self as metrics, Listener, Outcome};

/// At most this many refused-request lines per [`REFUSAL_LOG_WINDOW`]; the rest are counted and
/// the count is given on the next line that is logged.
pub const REFUSAL_LOG_BURST: u32 = 20;
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(1);
/// Longest path logged; longer ones are cut (a client chooses the path).
pub const MAX_LOGGED_PATH: usize = 256;
/// The tracing target of access-log lines, so they can be routed or filtered
/// (`RUST_LOG=serve_guard::access=off`).
pub const ACCESS_TARGET: &str = "serve_guard::access";

/// One request as it ends.
pub struct Request<'a> {
    pub listener: Listener,
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub outcome: Outcome,
    pub status: u16,
    /// From arrival to the response head; `None` when hyper refused the request head itself.
    pub elapsed: Option<Duration>,
}

/// Records `req` in the metrics and the log.
pub fn request(req: &Request<'_>, access_log: bool) {
    metrics::global().request(req.listener, req.outcome, req.elapsed);
    let path = cut(req.path);
    if req.outcome.is_refusal() {
        if let Some(suppressed) = refusal_limiter().admit(Instant::now()) {
            tracing::warn!(
                client = %req.client,
                listener = req.listener.as_str(),
                path,
                reason = req.outcome.as_str(),
                status = req.status,
                suppressed_since_last = suppressed,
                "request refused"
            );
        }
    } else if access_log {
        tracing::info!(
            target: ACCESS_TARGET,
            client = %req.client,
            listener = req.listener.as_str(),
            method = req.method,
            path,
            outcome = req.outcome.as_str(),
            status = req.status,
            duration_ms = req.elapsed.map_or(0, |d| d.as_millis() as u64),
            "request"
        );
    }
}

/// What an answer the proxy made itself counts as, read from the answer (the docs link's 303
/// or 400; the handler knows the other outcomes without reading them back).
pub fn outcome<B>(resp: &http::Response<B>) -> Outcome {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    // gRPC answers 200 with its status in `grpc-status`; the proxy only answers
    // UNAUTHENTICATED itself.
    if header("grpc-status") == super::grpc::STATUS_UNAUTHENTICATED.to_string() {
        return if header("grpc-message").starts_with("invalid") {
            Outcome::InvalidToken
        } else {
            Outcome::MissingToken
        };
    }
    match resp.status().as_u16() {
        401 if header("www-authenticate").contains("invalid_token") => Outcome::InvalidToken,
        401 => Outcome::MissingToken,
        303 => Outcome::DocsLink,
        403 => Outcome::Forbidden,
        405 => Outcome::MethodNotAllowed,
        431 => Outcome::HeaderTooLarge,
        _ => Outcome::BadRequest,
    }
}

/// A connection closed at accept or before its TLS handshake because an admission limit was
/// full: counted, and logged like a refused request (rate-limited, with the client's address).
pub fn connection_refused(
    listener: Listener,
    client: SocketAddr,
    limit: metrics::Limit,
    family: metrics::Family,
    prefix_len: u8,
) {
    metrics::global().connection_rejected(listener);
    if let Some(suppressed) = refusal_limiter().admit(Instant::now()) {
        tracing::warn!(
            %client,
            listener = listener.as_str(),
            reason = limit.as_str(),
            family = family.as_str(),
            prefix_len,
            suppressed_since_last = suppressed,
            "connection refused"
        );
    }
}

/// A connection that had not completed a request head was closed to make room for one from
/// `by`: logged at most [`REFUSAL_LOG_BURST`] times a window, on a budget of its own so that a
/// displacement storm does not hide refusals.
pub fn connection_displaced(by: std::net::IpAddr, limit: metrics::Limit, family: metrics::Family) {
    static LIMITER: Limiter = Limiter::new(REFUSAL_LOG_BURST, REFUSAL_LOG_WINDOW);
    if let Some(suppressed) = LIMITER.admit(Instant::now()) {
        tracing::info!(
            newcomer = %by,
            limit = limit.as_str(),
            victim_family = family.as_str(),
            suppressed_since_last = suppressed,
            "fresh connection displaced"
        );
    }
}

fn cut(path: &str) -> &str {
    if path.len() <= MAX_LOGGED_PATH {
        return path;
    }
    let mut end = MAX_LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// A fixed-window limiter: `admit` says whether to log, with how many lines were dropped since
/// the last one that was.
struct Limiter {
    state: Mutex<Window>,
    burst: u32,
    window: Duration,
}

struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Limiter {
    const fn new(burst: u32, window: Duration) -> Self {
        Limiter {
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
            burst,
            window,
        }
    }

    fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= self.burst {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

fn refusal_limiter() -> &'static Limiter {
    static LIMITER: Limiter = Limiter::new(REFUSAL_LOG_BURST, REFUSAL_LOG_WINDOW);
    &LIMITER
}

/// A connection hyper ended with an error: when it answered a bad request head itself (400,
/// 431), which the handler never saw, that request is recorded like any other.
pub fn connection_error(
    listener: Listener,
    client: SocketAddr,
    error: &(dyn std::error::Error + 'static),
    access_log: bool,
) {
    if let Some(outcome) = connection_error_outcome(error) {
        let req = Request {
            listener,
            client,
            method: "-",
            path: "-",
            outcome,
            status: outcome.status(),
            elapsed: None,
        };
        request(&req, access_log);
    }
}

/// The outcome of a connection that hyper ended with an error before the handler saw a
/// request: a head over the size limit (431) or one it could not parse (400). `None` for other
/// errors (the client went away, a timeout).
fn connection_error_outcome(error: &(dyn std::error::Error + 'static)) -> Option<Outcome> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_parse_too_large() {
                return Some(Outcome::HeaderTooLarge);
            }
            if e.is_parse() {
                return Some(Outcome::BadRequest);
            }
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_logs_a_burst_then_counts_what_it_drops() {
        let limiter = Limiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), None);
        assert_eq!(limiter.admit(t0), None);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            limiter.admit(t1),
            Some(2),
            "the next line says how many were dropped"
        );
        assert_eq!(limiter.admit(t1), Some(0));
    }

    #[test]
    fn long_paths_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_LOGGED_PATH);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_LOGGED_PATH);
        assert!(long.starts_with(cut));
        assert_eq!(super::cut("/echo"), "/echo");
    }
}
