//! Finding the token in a request (Authorization: Bearer, or the SERVE_TOKEN cookie), checking
//! it in constant time, removing it before the request goes upstream, and the 401 answers.

#![forbid(unsafe_code)]

use http::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use super::reply::{Body, plain};
use crate::metrics::Outcome;
use crate::token::{TokenIndex, TokenSet};

/// The cookie the docs link sets, as Anyscale names it.
pub const COOKIE_NAME: &str = "SERVE_TOKEN";
/// Its name when users reach the proxy over HTTPS: the `__Host-` prefix makes browsers accept it
/// only with `Secure`, `Path=/` and no `Domain`, so neither a sibling subdomain nor a plain-HTTP
/// page can plant or overwrite it.
pub const SECURE_COOKIE_NAME: &str = "__Host-SERVE_TOKEN";
/// RFC 6750 §3 challenges.
pub const CHALLENGE_MISSING: &str = "Bearer realm=\"serve-guard\"";
pub const CHALLENGE_INVALID: &str = "Bearer realm=\"serve-guard\", error=\"invalid_token\", error_description=\"the token is not valid\"";

/// The docs-link cookie's name: with the `__Host-` prefix when it is `secure`.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}

/// Where a request may carry the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carriers {
    /// HTTP: the Authorization header or the cookie ([`cookie_name`] of `secure`).
    HeaderOrCookie { secure: bool },
    /// gRPC: the `authorization` metadata only.
    HeaderOnly,
}

/// Which credential carried the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Bearer`: a browser never sends it on its own, so no CSRF check applies.
    Header,
    /// The cookie alone: a browser sends it on cross-site requests too.
    Cookie,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let through, by which credential and which token of the set: what the request opens
    /// (a stream, a tunnel) ends when a later set no longer holds that token.
    Allowed(Via, TokenIndex),
    /// No credential at all.
    Missing,
    /// A credential that is not the token.
    Invalid,
}

impl Verdict {
    /// The token that let the request through, if one did.
    pub fn token(self) -> Option<TokenIndex> {
        match self {
            Verdict::Allowed(_, token) => Some(token),
            _ => None,
        }
    }
}

/// RFC 9110 whitespace (SP / HTAB): what separates an auth-scheme from its credentials.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The credential of an `Authorization: Bearer <credential>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1) and may be followed by any run of spaces and tabs.
/// `None` for other schemes.
pub fn bearer_credential(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes().trim_ascii();
    let end = bytes.iter().position(|&b| is_ows(b)).unwrap_or(bytes.len());
    let (scheme, rest) = bytes.split_at(end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    // A bare `Bearer` is an attempt with an empty token, not another scheme.
    Some(rest.trim_ascii())
}

/// Checks the request's credentials against `tokens` (any one of them) and removes the token from
/// the headers: Authorization values that carry one (another Bearer token belongs to the app and
/// stays), and every SERVE_TOKEN cookie (other cookies stay). An empty set allows nothing.
pub fn authenticate(headers: &mut HeaderMap, tokens: &TokenSet, carriers: Carriers) -> Verdict {
    let mut presented = false;
    let mut by_header = None;
    let mut by_cookie = None;

    let mut kept_auth = Vec::new();
    for value in headers.get_all(AUTHORIZATION) {
        match bearer_credential(value) {
            Some(credential) => {
                presented = true;
                if let Some(index) = tokens.position(credential) {
                    by_header = Some(index);
                    continue;
                }
                kept_auth.push(value.clone());
            }
            None => kept_auth.push(value.clone()),
        }
    }
    headers.remove(AUTHORIZATION);
    for value in kept_auth {
        headers.append(AUTHORIZATION, value);
    }

    let mut kept_cookies: Vec<&[u8]> = Vec::new();
    let cookie_values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    for value in &cookie_values {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let (name, cookie_value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()),
                None => (pair, &b""[..]),
            };
            // Both names always go: neither ever reaches the upstream.
            if name == COOKIE_NAME.as_bytes() || name == SECURE_COOKIE_NAME.as_bytes() {
                if let Carriers::HeaderOrCookie { secure } = carriers
                    && name == cookie_name(secure).as_bytes()
                {
                    presented = true;
                    let unquoted = cookie_value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(cookie_value);
                    if let Some(index) = tokens.position(unquoted) {
                        by_cookie = Some(index);
                    }
                }
                continue;
            }
            kept_cookies.push(pair);
        }
    }
    if !cookie_values.is_empty() {
        // One Cookie header upstream (RFC 9113 §8.2.3 when HTTP/2 split it), without ours.
        let joined = kept_cookies.join(&b"; "[..]);
        headers.remove(COOKIE);
        if !joined.is_empty()
            && let Ok(value) = HeaderValue::from_bytes(&joined)
        {
            headers.insert(COOKIE, value);
        }
    }

    match (by_header, by_cookie, presented) {
        (Some(index), _, _) => Verdict::Allowed(Via::Header, index),
        (None, Some(index), _) => Verdict::Allowed(Via::Cookie, index),
        (None, None, true) => Verdict::Invalid,
        (None, None, false) => Verdict::Missing,
    }
}

/// What a refused request counts as in the metrics and the log.
pub fn outcome(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Invalid => Outcome::InvalidToken,
        _ => Outcome::MissingToken,
    }
}

/// The 401 for a refused HTTP request.
pub fn unauthorized(verdict: Verdict) -> Response<Body> {
    let (challenge, text) = match verdict {
        Verdict::Invalid => (
            CHALLENGE_INVALID,
            "401 Unauthorized: the token is not valid\n",
        ),
        _ => (
            CHALLENGE_MISSING,
            "401 Unauthorized: send the token as `Authorization: Bearer <token>`\n",
        ),
    };
    let mut resp = plain(StatusCode::UNAUTHORIZED, text);
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;

    const TOKEN: &str = "abcdefghijklmnopqrstuvwxyz012345";

    fn run(pairs: &[(&str, &str)]) -> (Verdict, HeaderMap) {
        let tokens = TokenSet::new([Token::parse(TOKEN).unwrap()]);
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let verdict = authenticate(
            &mut headers,
            &tokens,
            Carriers::HeaderOrCookie { secure: false },
        );
        (verdict, headers)
    }

    #[test]
    fn bearer_any_case_is_accepted_and_stripped() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let (v, h) = run(&[("authorization", &format!("{scheme} {TOKEN}"))]);
            assert!(matches!(v, Verdict::Allowed(Via::Header, _)), "{scheme}");
            assert!(h.get(AUTHORIZATION).is_none());
        }
    }

    #[test]
    fn bearer_after_any_whitespace_is_ours() {
        for value in [
            format!("Bearer\t{TOKEN}"),
            format!("Bearer \t {TOKEN}"),
            format!("bearer\t\t{TOKEN}\t"),
            format!("  Bearer  {TOKEN}"),
        ] {
            let (v, h) = run(&[
                ("authorization", &value),
                ("cookie", &format!("SERVE_TOKEN={TOKEN}")),
            ]);
            assert!(matches!(v, Verdict::Allowed(Via::Header, _)), "{value:?}");
            assert!(h.get(AUTHORIZATION).is_none(), "{value:?}");
        }
        let (v, _) = run(&[("authorization", "Bearer\twrong")]);
        assert_eq!(v, Verdict::Invalid);
        let (v, _) = run(&[("authorization", &format!("Bearerx {TOKEN}"))]);
        assert_eq!(v, Verdict::Missing);
    }

    #[test]
    fn other_credentials_stay_and_wrong_ones_are_invalid() {
        let (v, h) = run(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(v, Verdict::Missing);
        assert_eq!(h.get(AUTHORIZATION).unwrap(), "Basic dXNlcjpwYXNz");
        let (v, _) = run(&[("authorization", "Bearer nope")]);
        assert_eq!(v, Verdict::Invalid);
        let (v, _) = run(&[("authorization", &format!("Bearer {TOKEN}x"))]);
        assert_eq!(v, Verdict::Invalid);
        let (v, _) = run(&[("authorization", &format!("Token {TOKEN}"))]);
        assert_eq!(v, Verdict::Missing);
        // The app's own bearer token goes upstream when the cookie authenticates.
        let (v, h) = run(&[
            ("authorization", "Bearer app-token"),
            ("cookie", &format!("SERVE_TOKEN={TOKEN}")),
        ]);
        assert!(matches!(v, Verdict::Allowed(Via::Cookie, _)));
        assert_eq!(h.get(AUTHORIZATION).unwrap(), "Bearer app-token");
    }

    #[test]
    fn cookie_is_accepted_and_always_stripped() {
        let (v, h) = run(&[("cookie", &format!("a=1; SERVE_TOKEN={TOKEN}; b=2"))]);
        assert!(matches!(v, Verdict::Allowed(Via::Cookie, _)));
        assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=2");
        let (v, h) = run(&[("cookie", "SERVE_TOKEN=wrong"), ("cookie", "c=3")]);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "c=3");
        let (v, h) = run(&[("cookie", &format!("SERVE_TOKEN=\"{TOKEN}\""))]);
        assert!(matches!(v, Verdict::Allowed(Via::Cookie, _)));
        assert!(h.get(COOKIE).is_none());
        let (v, _) = run(&[("cookie", "serve_token=x; other=1")]);
        assert_eq!(v, Verdict::Missing);
    }

    #[test]
    fn the_verdict_names_the_token_that_let_the_request_through() {
        const OTHER: &str = "zyxwvutsrqponmlkjihgfedcba543210";
        let tokens = TokenSet::new([Token::parse(OTHER).unwrap(), Token::parse(TOKEN).unwrap()]);
        let mine = tokens.position(TOKEN.as_bytes());
        let other = tokens.position(OTHER.as_bytes());
        for (pairs, want) in [
            (vec![("authorization", format!("Bearer {TOKEN}"))], mine),
            (vec![("cookie", format!("SERVE_TOKEN={OTHER}"))], other),
            // The header wins over the cookie: it is what the request is admitted by.
            (
                vec![
                    ("cookie", format!("SERVE_TOKEN={OTHER}")),
                    ("authorization", format!("Bearer {TOKEN}")),
                ],
                mine,
            ),
        ] {
            let mut headers = HeaderMap::new();
            for (k, v) in &pairs {
                headers.append(*k, HeaderValue::from_str(v).unwrap());
            }
            let verdict = authenticate(
                &mut headers,
                &tokens,
                Carriers::HeaderOrCookie { secure: false },
            );
            assert_eq!(verdict.token(), want, "{pairs:?}");
        }
        assert_eq!(Verdict::Invalid.token(), None);
    }

    #[test]
    fn no_token_loaded_allows_nothing() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            authenticate(
                &mut headers,
                &TokenSet::default(),
                Carriers::HeaderOrCookie { secure: false }
            ),
            Verdict::Invalid
        );
    }

    #[test]
    fn the_secure_cookie_name_is_read_only_over_https_and_both_are_stripped() {
        let tokens = TokenSet::new([Token::parse(TOKEN).unwrap()]);
        let cookies = format!("SERVE_TOKEN={TOKEN}; __Host-SERVE_TOKEN={TOKEN}; k=v");
        for (secure, via) in [(true, Via::Cookie), (false, Via::Cookie)] {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, HeaderValue::from_str(&cookies).unwrap());
            let v = authenticate(&mut headers, &tokens, Carriers::HeaderOrCookie { secure });
            assert!(matches!(v, Verdict::Allowed(w, _) if w == via));
            assert_eq!(headers.get(COOKIE).unwrap(), "k=v");
        }
        // Over HTTPS the plain name is not a credential (and is still removed).
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("SERVE_TOKEN={TOKEN}")).unwrap(),
        );
        let v = authenticate(
            &mut headers,
            &tokens,
            Carriers::HeaderOrCookie { secure: true },
        );
        assert_eq!(v, Verdict::Missing);
        assert!(headers.get(COOKIE).is_none());
    }

    #[test]
    fn grpc_ignores_cookies() {
        let tokens = TokenSet::new([Token::parse(TOKEN).unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("SERVE_TOKEN={TOKEN}")).unwrap(),
        );
        assert_eq!(
            authenticate(&mut headers, &tokens, Carriers::HeaderOnly),
            Verdict::Missing
        );
        assert!(headers.get(COOKIE).is_none());
    }
}
