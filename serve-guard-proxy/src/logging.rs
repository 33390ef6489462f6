//! The tracing subscriber on stderr: human-readable lines (`log_format = "text"`, the default)
//! or one JSON object a line (`"json"`, for log shippers). Colour escape codes only when stderr
//! is a terminal and `NO_COLOR` is unset: the journal and log files get plain text. `RUST_LOG`
//! wins over the `--log-level` option so that a developer can turn up one module without
//! touching the service's command line.
//!
//! `log` records (aya-log forwards the XDP program's debug messages through the `log` crate) are
//! bridged into tracing by the subscriber's log compatibility layer.

#![forbid(unsafe_code)]

use serde::Deserialize;
use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

/// Level used when neither `RUST_LOG` nor `--log-level` says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log level `{level}` is invalid: {reason}")]
    BadLevel { level: String, reason: String },
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// Installs the global subscriber. `level` is a tracing directive such as `info`, `debug` or
/// `serve_guard=debug,aya=info`; `RUST_LOG`, when set, takes precedence.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), LoggingError> {
    let _ = FORMAT.set(format);
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(env) if !env.trim().is_empty() => parse_filter(&env)?,
        _ => parse_filter(level.unwrap_or(DEFAULT_LEVEL))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.with_ansi(colour()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    result.map_err(|e| LoggingError::Install(e.to_string()))
}

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format [`init`] installed (text before): the proxy process logs the same way.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Colour only for a person at a terminal: not for the journal, a file or a pipe, and not when
/// `NO_COLOR` (no-color.org) is set to anything non-empty.
fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

fn parse_filter(directives: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LoggingError::BadLevel {
            level: directives.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_levels_and_directives() {
        for ok in ["info", "debug", "serve_guard=debug,aya=warn", "warn"] {
            parse_filter(ok).unwrap();
        }
    }

    #[test]
    fn names_a_bad_level() {
        let e = parse_filter("serve_guard=loud").unwrap_err().to_string();
        assert!(
            e.starts_with("log level `serve_guard=loud` is invalid"),
            "{e}"
        );
    }
}
