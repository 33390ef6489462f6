//! Cross-site request forgery: the docs-link cookie is sent by the browser on requests other
//! sites start too (SameSite=Lax still lets same-site origins and top-level navigations through).
//! A request that the cookie alone authenticates may therefore change state only when the browser
//! says it comes from the proxy's own origin: unsafe methods and WebSocket upgrades need an
//! `Origin` equal to `external_url`'s origin. Bearer-header requests need no check: a browser
//! never adds that header on its own.

#![forbid(unsafe_code)]

use http::header::{HeaderMap, ORIGIN};
use http::{Method, Response, StatusCode};

use super::reply::{Body, plain};

/// Whether a cookie-authenticated request with this method (or a WebSocket upgrade) must show
/// a same-origin `Origin`. Safe methods (RFC 9110 §9.2.1) do not change state.
pub fn needs_origin(method: &Method, websocket: bool) -> bool {
    websocket
        || !matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        )
}

/// Whether the request carries exactly one `Origin` and it is `origin` (`scheme://host[:port]`,
/// compared case-insensitively; a missing or `null` Origin is not the proxy's).
pub fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let mut values = headers.get_all(ORIGIN).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case(origin)),
        _ => false,
    }
}

/// The answer to a cross-origin request that only the cookie authenticates.
pub fn forbidden() -> Response<Body> {
    plain(
        StatusCode::FORBIDDEN,
        "403 Forbidden: a cross-origin request with the SERVE_TOKEN cookie; send the token as `Authorization: Bearer <token>`\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_the_proxys_origin_passes() {
        let origin = "https://serve.example.com";
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(ORIGIN, HeaderValue::from_str(v).unwrap());
            }
            same_origin(&h, origin)
        };
        assert!(with(&["https://serve.example.com"]));
        assert!(with(&["HTTPS://Serve.Example.com"]));
        assert!(!with(&[]));
        assert!(!with(&["null"]));
        assert!(!with(&["https://evil.example"]));
        assert!(!with(&["https://serve.example.com.evil.example"]));
        assert!(!with(&["http://serve.example.com"]));
        assert!(!with(&["https://serve.example.com:8443"]));
        assert!(!with(&[
            "https://serve.example.com",
            "https://serve.example.com"
        ]));
    }

    #[test]
    fn safe_methods_need_no_origin_but_upgrades_do() {
        assert!(!needs_origin(&Method::GET, false));
        assert!(!needs_origin(&Method::HEAD, false));
        assert!(needs_origin(&Method::GET, true));
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(needs_origin(&m, false), "{m}");
        }
    }
}
