//! HTTP/2 field validity (RFC 9113 §8.2.1), checked before the token is looked for.
//!
//! A field value "MUST NOT start or end with an ASCII whitespace character (SP or HTAB)" and
//! must not hold NUL, CR or LF; a request with such a field is malformed, and an intermediary
//! "MUST NOT forward a malformed request" (§8.1.1). Without this check, `authorization: Bearer
//! <token> ` or a `SERVE_TOKEN` cookie with a trailing space would be read as the token (the
//! credential parsers trim) and the field forwarded as it came.
//!
//! What the HTTP/2 layer already refuses is not checked again: NUL, CR and LF cannot be in an
//! `http::HeaderValue` at all (h2 decodes each value with `HeaderValue::from_bytes`, which
//! refuses them, so the stream or connection fails before a request exists), and names with
//! upper-case letters or other forbidden bytes are refused the same way.
//!
//! HTTP/1.1 is not touched: there, whitespace around a field value is optional whitespace that
//! is not part of the value (RFC 9112 §5, RFC 9110 §5.5), and hyper's parser (httparse) removes
//! it and refuses NUL, CR and LF inside a value with 400.

#![forbid(unsafe_code)]

use http::header::HeaderName;
use http::{HeaderMap, Version};

/// Why an HTTP/2 request is malformed. Names the field, never its value (it may be a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedField {
    #[error("the value of the `{0}` field starts or ends with whitespace (RFC 9113 section 8.2.1)")]
    Whitespace(HeaderName),
}

/// Checks every field of a request that came over `version`; only HTTP/2 has the rule.
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), MalformedField> {
    if version != Version::HTTP_2 {
        return Ok(());
    }
    match headers
        .iter()
        .find(|(_, value)| has_outer_whitespace(value.as_bytes()))
    {
        Some((name, _)) => Err(MalformedField::Whitespace(name.clone())),
        None => Ok(()),
    }
}

fn has_outer_whitespace(value: &[u8]) -> bool {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    value.first().is_some_and(ws) || value.last().is_some_and(ws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn outer_whitespace_is_malformed_over_http2_only() {
        for value in [
            " Bearer abc",
            "Bearer abc ",
            "Bearer abc\t",
            "\tBearer abc",
            " ",
        ] {
            let map = headers(&[("x-ok", "fine"), ("authorization", value)]);
            assert_eq!(
                check(Version::HTTP_2, &map),
                Err(MalformedField::Whitespace(HeaderName::from_static(
                    "authorization"
                ))),
                "{value:?}"
            );
            assert_eq!(check(Version::HTTP_11, &map), Ok(()), "{value:?}");
        }
        let cookie = headers(&[("cookie", "SERVE_TOKEN=abc ")]);
        assert!(check(Version::HTTP_2, &cookie).is_err());
    }

    #[test]
    fn inner_whitespace_and_empty_values_are_fine() {
        let map = headers(&[
            ("authorization", "Bearer\t \tabc"),
            ("cookie", "a=1; SERVE_TOKEN=abc"),
            ("x-empty", ""),
        ]);
        assert_eq!(check(Version::HTTP_2, &map), Ok(()));
    }

    #[test]
    fn the_error_names_the_field_and_not_its_value() {
        let map = headers(&[("authorization", "Bearer secret-token-value ")]);
        let text = check(Version::HTTP_2, &map).unwrap_err().to_string();
        assert!(
            text.contains("authorization") && !text.contains("secret"),
            "{text}"
        );
    }
}
