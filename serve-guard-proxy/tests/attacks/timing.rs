//! Timing: a statistical timing test would be flaky on shared CI, so this checks structure. The
//! only token comparison is `Token::matches_ct`, built on `subtle`'s constant-time `ct_eq`;
//! `TokenSet::matches` folds it over every token without an early exit; the proxy compares
//! presented credentials only through them (never `==` on the token's text); and the compare
//! decides on every byte (a one-byte change anywhere is refused).

use serve_guard_proxy::token::Token;

use crate::report;

const TOKEN_RS: &str = include_str!("../../src/token.rs");
const PROXY_SOURCES: [(&str, &str); 5] = [
    ("auth.rs", include_str!("../../src/auth.rs")),
    ("docs_link.rs", include_str!("../../src/docs_link.rs")),
    ("scrub.rs", include_str!("../../src/scrub.rs")),
    ("lib.rs", include_str!("../../src/lib.rs")),
    ("csrf.rs", include_str!("../../src/csrf.rs")),
];

/// The body of `fn name` in `source` (up to the next line that closes an item at its indent).
fn body_of<'a>(source: &'a str, name: &str) -> &'a str {
    let start = source
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let rest = &source[start..];
    let end = rest.find("\n    }\n").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn token_comparison_is_constant_time_by_construction() {
    let compare = body_of(TOKEN_RS, "matches_ct");
    assert!(
        compare.contains("ct_eq"),
        "matches_ct does not use subtle's ct_eq:\n{compare}"
    );
    for forbidden in ["==", "eq(", "starts_with", "cmp("] {
        let without_ct = compare.replace("ct_eq(", "");
        assert!(
            !without_ct.contains(forbidden),
            "matches_ct uses `{forbidden}`:\n{compare}"
        );
    }
    // Token::matches and TokenSet::matches go through matches_ct, the set without an early exit.
    assert!(body_of(TOKEN_RS, "matches").contains("matches_ct"));
    let set_start = TOKEN_RS.find("impl TokenSet").expect("impl TokenSet");
    let set_matches = body_of(&TOKEN_RS[set_start..], "matches");
    assert!(
        set_matches.contains("fold(") && set_matches.contains("matches_ct"),
        "{set_matches}"
    );
    assert!(
        !set_matches.contains("any(") && !set_matches.contains("find("),
        "{set_matches}"
    );
    assert!(TOKEN_RS.contains("ConstantTimeEq"));
    let mut checks = 4;
    for (file, source) in PROXY_SOURCES {
        for line in source.lines().filter(|l| l.contains("expose()")) {
            assert!(
                !line.contains("==") && !line.contains(".eq(") && !line.contains("starts_with"),
                "{file} compares the token's text directly: {line}"
            );
            checks += 1;
        }
    }
    // Behaviour: every single-byte change anywhere, and every prefix, is refused.
    let text = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let token = Token::parse(text).unwrap();
    assert!(token.matches(text.as_bytes()));
    for i in 0..text.len() {
        let mut changed = text.as_bytes().to_vec();
        changed[i] ^= 0x01;
        assert!(!token.matches(&changed), "byte {i}");
        assert!(!token.matches(&text.as_bytes()[..i]), "prefix {i}");
        checks += 2;
    }
    report("timing (constant-time compare, structural)", checks);
}
