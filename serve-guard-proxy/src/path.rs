//! Request paths: the normal form `unauthenticated_paths` are compared in, and the safe,
//! same-origin form the docs link redirects to.

#![forbid(unsafe_code)]

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Normal form of a request path, as a server would resolve it: %-escapes decoded, `\` taken
/// as `/` (as some stacks do), empty and `.` segments dropped, `..` resolved, no trailing `/`.
/// `None` when the decoded path is not UTF-8 or holds control characters: such a path matches
/// no unauthenticated path, so it needs the token.
pub fn normalize(path: &str) -> Option<String> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    if decoded.chars().any(char::is_control) {
        return None;
    }
    let unified = decoded.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in unified.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// Whether `path` is already its own [`normalize`]d form: `/`, or `/`-separated segments that
/// are neither empty, `.` nor `..`, all printable ASCII with no `%` or `\\`.
pub fn is_normal(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !path
        .bytes()
        .any(|b| b == b'%' || b == b'\\' || !b.is_ascii_graphic())
        && rest
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
}

/// Characters kept as they are in a redirect path: RFC 3986 `pchar` plus `/` and `%` (existing
/// escapes stay escapes). Everything else, notably `\`, is %-encoded.
const LOCATION_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/')
    .remove(b'%');

/// A redirect target for `path` that can only ever be a path on this origin: one leading `/`,
/// never followed by `/` or `\` (which browsers would read as another host), no dot segments,
/// no empty segments, anything outside `pchar` %-encoded. The raw path is not decoded, so
/// `%2F%2Fhost` stays a harmless single segment.
pub fn safe_redirect_path(path: &str) -> String {
    let escaped = utf8_percent_encode(path, LOCATION_ESCAPE).to_string();
    let trailing_slash = escaped.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in escaped.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    if trailing_slash && out.len() > 1 {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_tricks() {
        let cases = [
            ("/-/healthz", "/-/healthz"),
            ("/-/healthz/", "/-/healthz"),
            ("//-/healthz", "/-/healthz"),
            ("/-/./healthz", "/-/healthz"),
            ("/x/../-/healthz", "/-/healthz"),
            ("/-/healthz/../x", "/-/x"),
            ("/-/healthz/..%2fx", "/-/x"),
            ("/-/healthz%2f..%2fx", "/-/x"),
            ("/-/%68ealthz", "/-/healthz"),
            ("/-\\healthz", "/-/healthz"),
            ("/-/healthz/%2e%2e/x", "/-/x"),
            ("/../../..", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Some(want), "{input}");
        }
        assert_eq!(normalize("/%ff"), None);
        assert_eq!(normalize("/-/healthz%00"), None);
        assert_eq!(normalize("/-/healthz%0a"), None);
    }

    /// Every path over an alphabet of the characters that matter, up to 6 long: a path
    /// `is_normal` says is normal is its own normal form (the proxy compares it as it is).
    #[test]
    fn is_normal_only_for_paths_that_normalize_to_themselves() {
        const ALPHABET: &[u8] = b"/.a%2e\\ ";
        let mut paths = vec![String::new()];
        let mut normal = 0;
        for _ in 0..6 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| ALPHABET.iter().map(move |&c| format!("{p}{}", c as char)))
                .collect();
            for path in &longer {
                if is_normal(path) {
                    normal += 1;
                    assert_eq!(normalize(path).as_deref(), Some(path.as_str()), "{path:?}");
                }
            }
            paths = longer;
        }
        assert!(
            normal > 100,
            "the alphabet must reach normal paths ({normal})"
        );
        assert!(is_normal("/-/healthz") && is_normal("/"));
        assert!(!is_normal("/-/healthz/") && !is_normal("") && !is_normal("-/healthz"));
    }

    #[test]
    fn redirect_paths_stay_on_this_origin() {
        for attempt in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\\/evil.example",
            "/./\\evil.example",
            "/../evil.example",
            "/.//evil.example",
            "/%2f%2fevil.example",
            "/%5c%5cevil.example",
            "https://evil.example",
            "/https://evil.example",
            "/\t/evil.example",
        ] {
            let out = safe_redirect_path(attempt);
            assert!(out.starts_with('/'), "{attempt} -> {out}");
            assert!(!out[1..].starts_with(['/', '\\']), "{attempt} -> {out}");
            assert!(
                !out.contains('\\') && !out.contains('\t'),
                "{attempt} -> {out}"
            );
        }
        assert_eq!(safe_redirect_path("/echo/docs"), "/echo/docs");
        assert_eq!(safe_redirect_path("/echo/docs/"), "/echo/docs/");
        assert_eq!(safe_redirect_path("/"), "/");
        assert_eq!(safe_redirect_path("/a%20b"), "/a%20b");
    }
}
