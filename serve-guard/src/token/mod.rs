//! The agent's side of the public-mode tokens: the token file, the source of truth, and the
//! source that follows it and publishes each new set to the proxy. The tokens themselves
//! ([`Token`], [`TokenSet`]) are the proxy's (`serve_guard_proxy::token`): the proxy process
//! holds them, the agent reads, checks and edits the file they come from.
//!
//! - `file`: reading, checking (mode, format) and editing the token file.
//! - `source`: loads the file, follows it on disk, and publishes each new set on a
//!   `tokio::sync::watch` channel that the proxy reads per request.
//!
//! Tokens never appear in logs, metrics, error messages or `Debug` output: every error here
//! names the file and line, never content.

pub mod file;
pub mod source;
#[cfg(test)]
mod test_support;

pub use file::{prune_file, read_token_file, rotate_file};
pub use source::TokenSource;

use std::io;
use std::path::PathBuf;

use serve_guard_proxy::token::RandomError;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "token file {path} has mode {mode:04o}: nobody but its owner (and its group, read-only) may read it; \
         set 0600 or 0640 (`chmod 600 {path}`), or 0400/0440 for a file managed elsewhere; \
         for a Kubernetes Secret volume set `defaultMode: 0440` (288 in JSON)"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("token file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("token file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("token file {path}, line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("token file {path} holds no token (only comments and blank lines)")]
    Empty { path: PathBuf },
    #[error("token file {path} is missing")]
    Missing { path: PathBuf },
    #[error(
        "token file {path} is managed elsewhere ({why}): change it where it comes from \
         (config management, the Kubernetes Secret); nothing was changed"
    )]
    ManagedElsewhere { path: PathBuf, why: &'static str },
    #[error(transparent)]
    Random(#[from] RandomError),
}
