//! The agent's side of the tokens: loads the token file, re-reads it when it changes on disk
//! (the watcher), on SIGHUP and on `POST /v1/token/reload`, and publishes every new set on a
//! `tokio::sync::watch` channel. The proxy holds a [`TokenReceiver`] and reads the current set
//! per request, so a change reaches new requests on every open connection at once, bearer and
//! cookie alike. Nothing here is proxy code, and the proxy reads no files: the set could as well
//! arrive over a channel from another process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use serve_guard_proxy::token::{TokenReceiver, TokenSet};

use super::TokenError;
use super::file::{create, read_token_file};

/// What a reload found, for the log (counts only, never tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenChange {
    /// Tokens in force after the reload.
    pub tokens: usize,
    pub added: usize,
    pub removed: usize,
    pub primary_changed: bool,
}

impl TokenChange {
    pub fn changed(&self) -> bool {
        self.added > 0 || self.removed > 0 || self.primary_changed
    }
}

impl std::fmt::Display for TokenChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.changed() {
            return write!(f, "unchanged ({} accepted)", self.tokens);
        }
        write!(
            f,
            "{} accepted ({} added, {} removed{})",
            self.tokens,
            self.added,
            self.removed,
            if self.primary_changed {
                ", new primary"
            } else {
                ""
            }
        )
    }
}

/// The token file and the set it holds.
pub struct TokenSource {
    path: PathBuf,
    sender: watch::Sender<Arc<TokenSet>>,
    /// Re-reads that found the file invalid (the tokens in force stayed).
    reload_errors: AtomicU64,
    /// One reload at a time (watcher, SIGHUP, control socket), so the published set is always
    /// the newest reading.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The agent's start: reads the token file, creating it (0600, one fresh token) when
    /// missing. A single node is ready to go; a cluster distributes one file to every node.
    pub fn load_or_create(path: &Path) -> Result<TokenSource, TokenError> {
        let set = match read_token_file(path) {
            Ok(set) => set,
            Err(TokenError::Missing { .. }) => {
                let token = create(path)?;
                tracing::info!(path = %path.display(), "created a new token file (a cluster needs the same file on every node)");
                TokenSet::new([token])
            }
            Err(e) => return Err(e),
        };
        Ok(Self::with_set(path, set))
    }

    /// Reads an existing token file; a missing file is an error.
    pub fn open(path: &Path) -> Result<TokenSource, TokenError> {
        Ok(Self::with_set(path, read_token_file(path)?))
    }

    fn with_set(path: &Path, set: TokenSet) -> TokenSource {
        TokenSource {
            path: path.to_owned(),
            sender: watch::Sender::new(Arc::new(set)),
            reload_errors: AtomicU64::new(0),
            reloading: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A receiver of every set from now on (the proxy's handle).
    pub fn subscribe(&self) -> TokenReceiver {
        self.sender.subscribe()
    }

    /// The set in force.
    pub fn current(&self) -> Arc<TokenSet> {
        self.sender.borrow().clone()
    }

    /// How many re-reads found an invalid file.
    pub fn reload_errors(&self) -> u64 {
        self.reload_errors.load(Ordering::Relaxed)
    }

    /// Re-reads the file and publishes the set if it changed. An invalid file (missing, empty,
    /// malformed, too short, a wrong mode) keeps the tokens in force, is logged (the file and
    /// line, never a token) and counted.
    pub fn reload(&self) -> Result<TokenChange, TokenError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let next = match read_token_file(&self.path) {
            Ok(set) => set,
            Err(e) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("the token file was not applied, the tokens in force stay: {e}");
                return Err(e);
            }
        };
        serve_guard_proxy::metrics::agent_totals().token_reloaded();
        let current = self.current();
        let change = TokenChange {
            tokens: next.len(),
            added: next
                .tokens()
                .iter()
                .filter(|t| !current.tokens().contains(t))
                .count(),
            removed: current
                .tokens()
                .iter()
                .filter(|t| !next.tokens().contains(t))
                .count(),
            primary_changed: next.primary() != current.primary(),
        };
        if change.changed() {
            self.sender.send_replace(Arc::new(next));
            tracing::info!(path = %self.path.display(), "token file reloaded: {change}");
        } else {
            tracing::debug!(path = %self.path.display(), "token file re-read: {change}");
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::test_support::{A, B, tmpdir, write_mode};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, text: &str) {
        write_mode(path, text, 0o600);
    }

    #[test]
    fn reload_publishes_changes_and_keeps_the_set_on_errors() {
        let dir = tmpdir();
        let path = dir.path().join("token");
        write(&path, &format!("{A}\n"));
        let source = TokenSource::load_or_create(&path).unwrap();
        let mut rx = source.subscribe();
        assert!(rx.borrow_and_update().matches(A.as_bytes()));

        // Unchanged: nothing is published.
        assert!(!source.reload().unwrap().changed());
        assert!(!rx.has_changed().unwrap());

        write(&path, &format!("{B}\n{A}\n"));
        let change = source.reload().unwrap();
        assert_eq!(
            change,
            TokenChange {
                tokens: 2,
                added: 1,
                removed: 0,
                primary_changed: true
            }
        );
        assert!(rx.has_changed().unwrap());
        let set = rx.borrow_and_update().clone();
        assert!(set.matches(A.as_bytes()) && set.matches(B.as_bytes()));
        assert_eq!(set.primary().unwrap().expose(), B);

        for broken in ["", "# nothing\n", "short\n"] {
            write(&path, broken);
            assert!(source.reload().is_err());
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(source.reload().is_err());
        fs::remove_file(&path).unwrap();
        assert!(matches!(source.reload(), Err(TokenError::Missing { .. })));
        assert_eq!(source.reload_errors(), 5);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*source.current(), *set);

        write(&path, &format!("{B}\n"));
        assert_eq!(source.reload().unwrap().removed, 1);
        assert!(!rx.borrow_and_update().matches(A.as_bytes()));
    }

    #[test]
    fn first_start_creates_a_0600_file_with_one_token() {
        let dir = tmpdir();
        let path = dir.path().join("token");
        assert!(matches!(
            TokenSource::open(&path),
            Err(TokenError::Missing { .. })
        ));
        let source = TokenSource::load_or_create(&path).unwrap();
        assert_eq!(source.current().len(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = TokenSource::load_or_create(&path).unwrap();
        assert_eq!(*again.current(), *source.current());
    }
}
