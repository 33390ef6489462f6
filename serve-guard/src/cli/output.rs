//! What the verbs print and how the process ends: stdout that a closed pipe ends quietly, JSON
//! with a schema version, and exit codes scripts can branch on.

use std::fmt;
use std::io::Write as _;

/// `schema_version` of every `--json` answer. Raised when a field changes meaning or goes away
/// (new fields do not raise it).
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The documented exit codes (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The node or the agent failed (I/O, kernel, control socket).
    Failure = 1,
    /// The command line or its input is wrong: usage (clap), a bad CIDR or list file, a bad
    /// config, a verb the config's mode does not have, `0.0.0.0/0` without `--allow-everyone`.
    BadInput = 2,
    /// `status`: no agent runs (as `systemctl is-active` says 3 for an inactive unit).
    NotRunning = 3,
    /// `--if-revision`: the list changed since that revision; read it again and retry.
    Stale = 4,
}

/// An error whose exit code the verb chose.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

impl Coded {
    pub fn error(exit: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Coded {
            exit,
            message: message.into(),
        })
    }
}

/// The exit code for an error, from the first cause that says what kind of error it is.
pub fn exit_code(error: &anyhow::Error) -> Exit {
    use crate::control::client::ClientError;
    use crate::store::StoreError;
    for cause in error.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.exit;
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return match e {
                StoreError::Stale { .. } => Exit::Stale,
                e if e.is_client_error() => Exit::BadInput,
                _ => Exit::Failure,
            };
        }
        if let Some(ClientError::Refused { status, .. }) = cause.downcast_ref::<ClientError>() {
            return match *status {
                // The cidr routes answer 409 only for a stale `if_revision`.
                409 => Exit::Stale,
                400 | 413 => Exit::BadInput,
                _ => Exit::Failure,
            };
        }
        if cause.downcast_ref::<crate::config::ConfigError>().is_some()
            || cause.downcast_ref::<crate::cidr::CidrError>().is_some()
        {
            return Exit::BadInput;
        }
    }
    Exit::Failure
}

/// Writes one line to stdout. A reader that went away (`serve-guard cidr list | head -1`) ends
/// the process quietly with success: it has what it wanted.
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(Exit::Ok as i32),
        Err(e) => {
            eprintln!("serve-guard: cannot write to stdout: {e}");
            std::process::exit(Exit::Failure as i32)
        }
    }
}

/// `println!` through [`line`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}
pub(crate) use outln;

/// Prints `value` as pretty JSON with `schema_version` first.
pub fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    let mut object = serde_json::Map::new();
    object.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
    match value {
        serde_json::Value::Object(fields) => object.extend(fields),
        other => {
            object.insert("value".into(), other);
        }
    }
    line(format_args!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(object))?
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_first_typed_cause() {
        let stale = anyhow::Error::new(crate::store::StoreError::Stale {
            expected: 1,
            current: 2,
        })
        .context("cidr add");
        assert_eq!(exit_code(&stale), Exit::Stale);
        let refused = anyhow::Error::new(crate::control::client::ClientError::Refused {
            status: 400,
            message: "argument 1: bad".into(),
        });
        assert_eq!(exit_code(&refused), Exit::BadInput);
        assert_eq!(
            exit_code(&Coded::error(Exit::NotRunning, "no agent")),
            Exit::NotRunning
        );
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), Exit::Failure);
    }
}
