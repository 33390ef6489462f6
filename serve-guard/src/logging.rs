//! The tracing subscriber: human-readable lines on stderr (journald adds its own timestamps, but
//! a terminal run wants them too). `RUST_LOG` wins over the `--log-level` option so that a
//! developer can turn up one module without touching the service's command line.
//!
//! `log` records (aya-log forwards the XDP program's debug messages through the `log` crate) are
//! bridged into tracing by the subscriber's log compatibility layer.

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

/// Installs the global subscriber. `level` is a tracing directive such as `info`, `debug` or
/// `serve_guard=debug,aya=info`; `RUST_LOG`, when set, takes precedence.
pub fn init(level: Option<&str>) -> Result<(), LoggingError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(env) if !env.trim().is_empty() => parse_filter(&env)?,
        _ => parse_filter(level.unwrap_or(DEFAULT_LEVEL))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init()
        .map_err(|e| LoggingError::Install(e.to_string()))
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
