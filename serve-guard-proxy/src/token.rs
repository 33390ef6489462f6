//! The public-mode tokens as the proxy holds them: one set per cluster, compared in constant
//! time.
//!
//! - [`Token`], [`TokenSet`]: what the proxy checks a request against. A set holds every token
//!   the file lists; the first is the primary (the one `token show`, `status` and the docs links
//!   use), the others are accepted too, so a fleet can roll a new token in before the old one
//!   goes.
//! - [`TokenReceiver`]: where each new set arrives. The token file, its watcher and the reloads
//!   are the agent's (`serve_guard::token`); the proxy reads no file, and in the proxy process
//!   the sets come over the channel from the agent.
//!
//! Tokens never appear in logs, metrics, error messages or `Debug` output: [`Token`] has a
//! redacting `Debug`, no `Display`, and no error here holds content.

#![forbid(unsafe_code)]

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// What the proxy holds: the current set, replaced as a whole on every change, read per
/// request, so a change reaches new requests on every open connection at once.
pub type TokenReceiver = watch::Receiver<Arc<TokenSet>>;

/// The OS random source could not be read, so no token was made.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the OS random source: {0}")]
pub struct RandomError(#[from] getrandom::Error);

/// Random bytes in a generated token (256 bits).
pub const TOKEN_BYTES: usize = 32;
/// Length of a generated token: 32 bytes in base64url without padding.
pub const TOKEN_LEN: usize = 43;
/// Shortest token accepted from a file (an operator may supply their own): 128 bits of base64url.
pub const MIN_TOKEN_LEN: usize = 22;
/// Longest token accepted from a file; keeps headers and cookies small.
pub const MAX_TOKEN_LEN: usize = 512;

/// A token. `Debug` is redacted; the only way to the text is [`Token::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A fresh token: [`TOKEN_BYTES`] bytes from the OS random source, base64url, no padding.
    pub fn generate() -> Result<Token, RandomError> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        getrandom::fill(bytes.as_mut())?;
        Ok(Token(Zeroizing::new(
            URL_SAFE_NO_PAD.encode(bytes.as_ref()),
        )))
    }

    /// Checks a token's text. The reason never contains the text.
    pub fn parse(text: &str) -> Result<Token, &'static str> {
        if text.len() < MIN_TOKEN_LEN {
            return Err("token is too short (at least 22 characters)");
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err("token is too long (at most 512 characters)");
        }
        // base64url only: the same text must be valid in a header, a cookie and a query string.
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("token has characters outside A-Z a-z 0-9 - _");
        }
        Ok(Token(Zeroizing::new(text.to_owned())))
    }

    /// The token's text, for the places that must show or send it (`token show`, `status`,
    /// the Set-Cookie of the docs link).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with what a client presented. Only the length may leak, which
    /// is not secret (generated tokens are all [`TOKEN_LEN`] long).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.matches_ct(candidate).into()
    }

    fn matches_ct(&self, candidate: &[u8]) -> Choice {
        self.0.as_bytes().ct_eq(candidate)
    }
}

/// Which token of a set matched a credential: its place in that set, meaningful only together
/// with that set. What a request admitted by a token carries instead of the token's text, so a
/// later set can be asked whether that token is still in force ([`TokenSet::keeps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenIndex(u32);

/// The tokens in force: every one is accepted; the first is the primary. Empty only before a
/// token was loaded (or in tests): then nothing is accepted (fail closed).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenSet(Vec<Token>);

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet(<{} redacted>)", self.0.len())
    }
}

impl TokenSet {
    /// A set of `tokens`, the first being the primary. Duplicates are dropped (the first one
    /// stays in place).
    pub fn new(tokens: impl IntoIterator<Item = Token>) -> TokenSet {
        let mut set: Vec<Token> = Vec::new();
        for token in tokens {
            if !set.contains(&token) {
                set.push(token);
            }
        }
        TokenSet(set)
    }

    /// The token `token show`, `status` and the docs links use.
    pub fn primary(&self) -> Option<&Token> {
        self.0.first()
    }

    /// Every token, primary first.
    pub fn tokens(&self) -> &[Token] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is one of the tokens. Compares against every token without an early
    /// exit, so the time taken does not tell which token matched (or how far down the list).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(Choice::from(0), |any, token| {
                any | token.matches_ct(candidate)
            })
            .into()
    }

    /// Which token `candidate` is, like [`TokenSet::matches`]: every token is compared and the
    /// place is picked with a constant-time select, so neither the time nor the memory accessed
    /// tells which one matched.
    pub fn position(&self, candidate: &[u8]) -> Option<TokenIndex> {
        let mut found = Choice::from(0);
        let mut at = 0u32;
        for (i, token) in self.0.iter().enumerate() {
            let hit = token.matches_ct(candidate);
            // A set holds at most a few thousand lines; no index overflows a u32.
            at.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), hit);
            found |= hit;
        }
        bool::from(found).then_some(TokenIndex(at))
    }

    /// Whether the token at `index` of `earlier` is in this set too (compared in constant time):
    /// whether what that token admitted may go on.
    pub fn keeps(&self, earlier: &TokenSet, index: TokenIndex) -> bool {
        usize::try_from(index.0)
            .ok()
            .and_then(|i| earlier.0.get(i))
            .is_some_and(|token| self.matches(token.expose().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_base64url_43_and_distinct() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert!(Token::parse(a.expose()).is_ok());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(),
            TOKEN_BYTES
        );
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::generate().unwrap();
        let set = TokenSet::new([t.clone()]);
        assert!(!format!("{t:?}").contains(t.expose()));
        assert!(!format!("{set:?}").contains(t.expose()));
    }

    #[test]
    fn matches_only_the_exact_token() {
        let t = Token::parse("abcdefghijklmnopqrstuvwxyz012345").unwrap();
        assert!(t.matches(b"abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!t.matches(b"abcdefghijklmnopqrstuvwxyz01234"));
        assert!(!t.matches(b"abcdefghijklmnopqrstuvwxyz0123456"));
        assert!(!t.matches(b"Abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!t.matches(b""));
        assert!(!TokenSet::default().matches(b""));
        assert!(!TokenSet::default().matches(b"abcdefghijklmnopqrstuvwxyz012345"));
    }

    #[test]
    fn a_set_accepts_every_listed_token_and_keeps_the_first_as_primary() {
        let a = Token::parse("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let b = Token::parse("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        let set = TokenSet::new([b.clone(), a.clone(), b.clone()]);
        assert_eq!(set.len(), 2, "duplicates are dropped");
        assert_eq!(set.primary(), Some(&b));
        assert!(set.matches(a.expose().as_bytes()));
        assert!(set.matches(b.expose().as_bytes()));
        assert!(!set.matches(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!set.matches(b""));
    }

    #[test]
    fn position_names_the_matching_token_and_keeps_follows_it_into_a_new_set() {
        let a = Token::parse("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let b = Token::parse("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        let c = Token::parse("cccccccccccccccccccccccccccccccc").unwrap();
        let old = TokenSet::new([a.clone(), b.clone()]);
        let at_a = old.position(a.expose().as_bytes()).unwrap();
        let at_b = old.position(b.expose().as_bytes()).unwrap();
        assert_ne!(at_a, at_b);
        assert_eq!(old.position(c.expose().as_bytes()), None);
        assert_eq!(old.position(b""), None);
        // The new set drops `a` and reorders: `b` is still in force, wherever it is now.
        let new = TokenSet::new([c, b]);
        assert!(!new.keeps(&old, at_a));
        assert!(new.keeps(&old, at_b));
        assert!(old.keeps(&old, at_a));
        assert!(!TokenSet::default().keeps(&old, at_b));
    }

    #[test]
    fn parse_rejects_bad_tokens_without_echoing_them() {
        for bad in [
            "abc12",
            "has space in it 0123456789",
            "plus+plus+plus+plus+plus+",
            &"a".repeat(600),
        ] {
            let reason = Token::parse(bad).unwrap_err();
            assert!(!reason.contains(bad));
        }
    }
}
