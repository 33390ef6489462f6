//! The token never goes upstream, wherever a client put it: after the credentials are checked
//! and removed ([`super::auth`]), every header value, cookie and query parameter that still holds
//! the token is dropped, and so is every query parameter whose name is close to `token`.
//!
//! "Holds the token" means: the token is one of its words, words being split at every byte that
//! cannot appear in a token (anything outside base64url). `Bearer\t<token>`, `x=<token>`,
//! `"<token>"` and `a=1;token=<token>` all hold it. Each word of the token's length is compared
//! in constant time ([`crate::token::Token::matches`]).

#![forbid(unsafe_code)]

use std::borrow::Cow;

use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};

use super::docs_link::QUERY_PARAM;

/// A byte that can be part of a token (base64url).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether `text` has the token as one of its words. `is_token` is the constant-time check.
pub fn holds_token(text: &[u8], is_token: &dyn Fn(&[u8]) -> bool) -> bool {
    text.split(|&b| !is_token_byte(b))
        .any(|word| !word.is_empty() && is_token(word))
}

/// Removes every header value that holds the token; for `Cookie`, only the cookies that do.
pub fn headers(headers: &mut HeaderMap, is_token: &dyn Fn(&[u8]) -> bool) {
    let tainted: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, value)| holds_token(value.as_bytes(), is_token))
        .map(|(name, _)| name.clone())
        .collect();
    for name in tainted {
        let kept: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .filter_map(|value| {
                if name == COOKIE {
                    clean_cookie(value, is_token)
                } else if holds_token(value.as_bytes(), is_token) {
                    None
                } else {
                    Some(value.clone())
                }
            })
            .collect();
        headers.remove(&name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }
}

/// A Cookie value without the cookies that hold the token; `None` when none is left.
fn clean_cookie(value: &HeaderValue, is_token: &dyn Fn(&[u8]) -> bool) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = value
        .as_bytes()
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty() && !holds_token(pair, is_token))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// Whether a decoded query key is close enough to `token` that some framework could read it
/// as the token parameter: any case, surrounding spaces, an array suffix (`token[]`,
/// `token[0]`).
fn is_token_like_key(key: &str) -> bool {
    let base = key.split('[').next().unwrap_or(key).trim();
    base.eq_ignore_ascii_case(QUERY_PARAM)
}

/// Whether one `&`-separated query part must not go upstream. Its `;`-separated pieces are
/// checked too: some frameworks split on `;` (and Python's `parse_qsl` did until 3.10).
fn is_tainted_part(part: &str, is_token: &dyn Fn(&[u8]) -> bool) -> bool {
    if holds_token(part.as_bytes(), is_token) {
        return true;
    }
    part.split(';').any(|piece| {
        form_urlencoded::parse(piece.as_bytes()).any(|(key, value)| {
            is_token_like_key(&key)
                || holds_token(key.as_bytes(), is_token)
                || holds_token(value.as_bytes(), is_token)
        })
    })
}

/// The query to send upstream: `query` without the parts that hold the token or have a
/// token-like key. Other parts are kept verbatim and in order.
pub fn query<'q>(query: &'q str, is_token: &dyn Fn(&[u8]) -> bool) -> Cow<'q, str> {
    let parts: Vec<&str> = query.split('&').collect();
    if !parts.iter().any(|p| is_tainted_part(p, is_token)) {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = parts
        .into_iter()
        .filter(|p| !p.is_empty() && !is_tainted_part(p, is_token))
        .collect();
    Cow::Owned(kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyz012345";

    fn is_token(word: &[u8]) -> bool {
        word == TOKEN
    }

    #[test]
    fn words_are_split_at_non_token_bytes() {
        let t = std::str::from_utf8(TOKEN).unwrap();
        for text in [
            t.to_owned(),
            format!("Bearer\t{t}"),
            format!("x={t};y"),
            format!("\"{t}\""),
            format!("a=1;token={t}"),
        ] {
            assert!(holds_token(text.as_bytes(), &is_token), "{text}");
        }
        for text in [format!("{t}x"), format!("x{t}"), "other".to_owned()] {
            assert!(!holds_token(text.as_bytes(), &is_token), "{text}");
        }
    }

    #[test]
    fn header_values_and_cookies_holding_the_token_go() {
        let t = std::str::from_utf8(TOKEN).unwrap();
        let mut h = HeaderMap::new();
        h.append("x-api-key", HeaderValue::from_str(t).unwrap());
        h.append("x-api-key", HeaderValue::from_static("kept"));
        h.append(
            COOKIE,
            HeaderValue::from_str(&format!("a=1; serve_token={t}; b=2")).unwrap(),
        );
        h.append(COOKIE, HeaderValue::from_str(&format!("c={t}")).unwrap());
        h.append("x-other", HeaderValue::from_static("fine"));
        headers(&mut h, &is_token);
        assert_eq!(h.get_all("x-api-key").iter().collect::<Vec<_>>(), ["kept"]);
        assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        assert_eq!(h["x-other"], "fine");
    }

    #[test]
    fn token_like_query_keys_and_token_values_go() {
        let t = std::str::from_utf8(TOKEN).unwrap();
        let cases = [
            ("a=1&b=2".to_owned(), "a=1&b=2"),
            ("TOKEN=x&a=1".to_owned(), "a=1"),
            ("Token=x&a=1".to_owned(), "a=1"),
            ("token%5B%5D=x&a=1".to_owned(), "a=1"),
            ("token[]=x&token[0]=y&a=1".to_owned(), "a=1"),
            ("a=1;token=x&b=2".to_owned(), "b=2"),
            ("%54oken=x&b=2".to_owned(), "b=2"),
            (format!("q={t}&b=2"), "b=2"),
            (format!("q=%20{t}&b=2"), "b=2"),
            ("tokens=1&mytoken=2".to_owned(), "tokens=1&mytoken=2"),
        ];
        for (input, want) in cases {
            assert_eq!(query(&input, &is_token), want, "{input}");
        }
    }
}
