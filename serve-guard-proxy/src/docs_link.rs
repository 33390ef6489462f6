//! The API docs link: `GET <path>?token=<token>` — the only place a token is accepted in a URL.
//! A valid token gets a 303 to the same path without the token (other parameters kept) and the
//! SERVE_TOKEN cookie; an invalid one a 401 and no cookie.

#![forbid(unsafe_code)]

use http::header::{HeaderValue, LOCATION, REFERRER_POLICY, SET_COOKIE};
use http::{Method, Response, StatusCode, Uri};

use super::auth::{Verdict, cookie_name, unauthorized};
use super::path::safe_redirect_path;
use super::reply::{Body, plain};
use crate::token::TokenSet;

/// The query parameter the docs link carries.
pub const QUERY_PARAM: &str = "token";

/// How the cookie is set.
#[derive(Debug, Clone, Copy)]
pub struct CookieSettings {
    pub max_age_secs: u64,
    /// Over TLS, or when users reach the proxy through https (`external_url`): the cookie is
    /// `Secure` and named with the `__Host-` prefix.
    pub secure: bool,
}

/// Answers the request if it is a docs link (its query has a `token` parameter), else `None`.
pub fn handle(
    method: &Method,
    uri: &Uri,
    tokens: &TokenSet,
    cookie: CookieSettings,
) -> Option<Response<Body>> {
    let query = uri.query()?;
    let mut candidates = Vec::new();
    let mut kept = Vec::new();
    for part in query.split('&') {
        let is_token = form_urlencoded::parse(part.as_bytes())
            .next()
            .is_some_and(|(key, _)| key == QUERY_PARAM);
        if is_token {
            let value = form_urlencoded::parse(part.as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            candidates.push(value);
        } else if !part.is_empty() {
            kept.push(part);
        }
    }
    if candidates.is_empty() {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the token is accepted in a URL only on GET (the API docs link); send it as `Authorization: Bearer <token>`\n",
        ));
    }
    // Every `token` parameter must hold the same accepted token: an ambiguous link sets no
    // cookie. The cookie carries the token the link did (one of the set, not always the primary).
    let token = candidates
        .first()
        .filter(|first| candidates.iter().all(|c| c == *first) && tokens.matches(first.as_bytes()));
    let Some(token) = token else {
        tracing::debug!(path = uri.path(), "docs link with an invalid token");
        return Some(no_referrer(unauthorized(Verdict::Invalid)));
    };

    let mut location = safe_redirect_path(uri.path());
    if !kept.is_empty() {
        location.push('?');
        location.push_str(&kept.join("&"));
    }
    // Over HTTPS the `__Host-` name: browsers then require the `Secure` and `Path=/` set here.
    let mut set_cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        cookie_name(cookie.secure),
        token,
        cookie.max_age_secs
    );
    if cookie.secure {
        set_cookie.push_str("; Secure");
    }
    let (Ok(location), Ok(set_cookie)) = (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&set_cookie),
    ) else {
        // Not reachable (both are built from visible ASCII), but never answer half-built.
        return Some(plain(StatusCode::BAD_REQUEST, "400 Bad Request\n"));
    };
    let mut resp = plain(StatusCode::SEE_OTHER, "303 See Other\n");
    resp.headers_mut().insert(LOCATION, location);
    resp.headers_mut().insert(SET_COOKIE, set_cookie);
    tracing::debug!(path = uri.path(), "docs link accepted, cookie set");
    Some(no_referrer(resp))
}

/// The page that carried the token in its URL must not leak it through Referer.
fn no_referrer(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;

    const TOKEN: &str = "abcdefghijklmnopqrstuvwxyz012345";
    const COOKIE: CookieSettings = CookieSettings {
        max_age_secs: 60,
        secure: false,
    };

    fn set() -> TokenSet {
        TokenSet::new([Token::parse(TOKEN).unwrap()])
    }

    fn run(method: Method, target: &str) -> Option<Response<Body>> {
        handle(&method, &target.parse().unwrap(), &set(), COOKIE)
    }

    #[test]
    fn only_requests_with_a_token_parameter_are_docs_links() {
        assert!(run(Method::GET, "/echo/docs").is_none());
        assert!(run(Method::GET, "/echo/docs?tokens=1&x=token").is_none());
        // An encoded key is still the token parameter (and never reaches the upstream).
        let resp = run(Method::GET, &format!("/d?%74oken={TOKEN}&k=v")).unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[LOCATION], "/d?k=v");
    }

    #[test]
    fn other_parameters_are_kept_verbatim_and_in_order() {
        let resp = run(Method::GET, &format!("/d?b=2&token={TOKEN}&a=%2F&&c")).unwrap();
        assert_eq!(resp.headers()[LOCATION], "/d?b=2&a=%2F&c");
        let cookie = resp.headers()[SET_COOKIE].to_str().unwrap();
        assert_eq!(
            cookie,
            format!("SERVE_TOKEN={TOKEN}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60")
        );
    }

    #[test]
    fn secure_cookie_when_asked() {
        let secure = CookieSettings {
            max_age_secs: 60,
            secure: true,
        };
        let target = format!("/d?token={TOKEN}").parse().unwrap();
        let resp = handle(&Method::GET, &target, &set(), secure).unwrap();
        let cookie = resp.headers()[SET_COOKIE].to_str().unwrap();
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        assert!(cookie.starts_with("__Host-SERVE_TOKEN="), "{cookie}");
    }

    #[test]
    fn invalid_or_non_get_links_set_no_cookie() {
        for (method, target) in [
            (Method::GET, "/d?token=wrong".to_owned()),
            (Method::GET, format!("/d?token={TOKEN}&token=")),
            (Method::POST, format!("/d?token={TOKEN}")),
            (Method::PUT, format!("/d?token={TOKEN}")),
        ] {
            let resp = run(method.clone(), &target).unwrap();
            assert!(
                resp.headers().get(SET_COOKIE).is_none(),
                "{method} {target}"
            );
            assert!(resp.headers().get(LOCATION).is_none(), "{method} {target}");
            assert!(resp.status().is_client_error(), "{method} {target}");
        }
        // No token loaded: every link is refused.
        let target = format!("/d?token={TOKEN}").parse().unwrap();
        let resp = handle(&Method::GET, &target, &TokenSet::default(), COOKIE).unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_secondary_token_sets_its_own_cookie() {
        const OLD: &str = "0ldt0ken0ldt0ken0ldt0ken0ldt0ken";
        let tokens = TokenSet::new([Token::parse(TOKEN).unwrap(), Token::parse(OLD).unwrap()]);
        let target = format!("/d?token={OLD}").parse().unwrap();
        let resp = handle(&Method::GET, &target, &tokens, COOKIE).unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert!(
            resp.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .starts_with(&format!("SERVE_TOKEN={OLD};"))
        );
        let mixed = format!("/d?token={OLD}&token={TOKEN}").parse().unwrap();
        let resp = handle(&Method::GET, &mixed, &tokens, COOKIE).unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}
