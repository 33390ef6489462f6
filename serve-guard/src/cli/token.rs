//! `serve-guard token show|rotate|prune`: the public-mode tokens, in the token file.
//!
//! The token file lists every token in force, one a line; the first is the primary. `show`
//! prints the primary (`--all`: every token). `rotate` puts a new token first and keeps the
//! previous ones accepted, so clients can move over without a 401; `prune` then removes all but
//! the primary (that is the revocation). Both edit the file in place (comments kept) and ask a
//! running agent to reload it, which it would also do on its own within a second (it follows the
//! file). A file managed elsewhere (read-only: 0400/0440, or on a read-only file system such as
//! a Kubernetes Secret) is left alone with an error saying so.
//!
//! Tokens go to stdout alone (for `$(serve-guard token show)`); notes go to stderr. `--json`
//! prints one object instead. Every verb refuses a private-mode config and creates nothing: a
//! token file there would suggest a proxy that does not run.

use std::path::Path;

use hyper::Method;

use super::output::{self, Coded, Exit, outln};
use crate::config::{Config, Mode, Overrides};
use crate::control::client::{Client, ClientError};
use crate::control::{TokenReloaded, routes};
use crate::token::{TokenError, prune_file, read_token_file, rotate_file};
use serve_guard_proxy::config::PublicConfig;
use serve_guard_proxy::token::Token;

/// The control socket's answer when the agent has no token (private mode).
const CONFLICT: u16 = 409;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// Print JSON: `tokens` (show), `token` (rotate), `removed` (prune), `token_file`, `agent`.
    #[arg(long, global = true)]
    json: bool,
}

/// The `--json` answer of every token verb.
#[derive(Default, serde::Serialize)]
struct Answer {
    token_file: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tokens: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<usize>,
    /// rotate/prune: `applied` (the running agent reloaded), `not_running` (applies at its
    /// next start), or the agent's refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the primary token (the first in the token file).
    Show {
        /// Print every accepted token, primary first, one a line.
        #[arg(long)]
        all: bool,
    },
    /// Put a new random token first (the primary); the previous ones stay accepted until
    /// `token prune`.
    Rotate,
    /// Remove every token but the primary: clients still using an older one get 401.
    Prune,
}

pub async fn exec(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let config = Config::load(config_path, &Overrides::default())?;
    if config.mode != Mode::Public {
        return Err(Coded::error(
            Exit::BadInput,
            format!(
                "{} sets mode = \"{}\": there is no token in private mode; nothing was created",
                config_path.display(),
                config.mode.name()
            ),
        ));
    }
    let public = config.public.clone().unwrap_or_else(PublicConfig::default);
    let mut answer = Answer {
        token_file: public.token_file.display().to_string(),
        ..Answer::default()
    };
    match args.command {
        Command::Show { all } => show(&public, all, &mut answer, args.json)?,
        Command::Rotate => rotate(&config, &public, &mut answer, args.json).await?,
        Command::Prune => prune(&config, &public, &mut answer).await?,
    }
    if args.json {
        output::json(&answer)?;
    }
    Ok(())
}

fn show(public: &PublicConfig, all: bool, answer: &mut Answer, json: bool) -> anyhow::Result<()> {
    let set = match read_token_file(&public.token_file) {
        Ok(set) => set,
        Err(TokenError::Missing { path }) => anyhow::bail!(
            "no token yet at {}: the agent creates it at its first start in public mode (a cluster puts the same file on every node)",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let shown = if all {
        set.tokens()
    } else {
        &set.tokens()[..1]
    };
    answer.tokens = shown.iter().map(|t| t.expose().to_owned()).collect();
    if !json {
        for token in &answer.tokens {
            outln!("{token}");
        }
    }
    Ok(())
}

async fn rotate(
    config: &Config,
    public: &PublicConfig,
    answer: &mut Answer,
    json: bool,
) -> anyhow::Result<()> {
    let token: Token = rotate_file(&public.token_file).map_err(|e| {
        anyhow::Error::new(e).context("cannot rotate the token; the tokens in force stay")
    })?;
    // Printed at once: the file holds it now, whatever the agent says next.
    if !json {
        outln!("{}", token.expose());
    }
    answer.token = Some(token.expose().to_owned());
    let accepted = read_token_file(&public.token_file).map_or(1, |s| s.len());
    let what = if accepted > 1 {
        format!(
            "token rotated: the new token is the primary; {} older one(s) stay accepted until `serve-guard token prune`",
            accepted - 1
        )
    } else {
        "token created".to_owned()
    };
    answer.agent = Some(tell_agent(config, public, &what).await?);
    Ok(())
}

async fn prune(config: &Config, public: &PublicConfig, answer: &mut Answer) -> anyhow::Result<()> {
    let removed = prune_file(&public.token_file).map_err(|e| {
        anyhow::Error::new(e).context("cannot prune the tokens; the tokens in force stay")
    })?;
    answer.removed = Some(removed);
    if removed == 0 {
        eprintln!("nothing to prune: the token file lists only the primary token");
        return Ok(());
    }
    let what = format!("{removed} older token(s) removed: only the primary is accepted");
    answer.agent = Some(tell_agent(config, public, &what).await?);
    Ok(())
}

/// Asks the running agent to reload the file now, so the change is in force when the command
/// returns (the agent's watcher would pick it up within a second anyway).
async fn tell_agent(config: &Config, public: &PublicConfig, what: &str) -> anyhow::Result<String> {
    let client = Client::new(&config.control_socket);
    match client
        .send::<_, TokenReloaded>(Method::POST, routes::TOKEN_RELOAD, &())
        .await
    {
        Ok(_) => {
            eprintln!("{what} (the running agent applied it)");
            Ok("applied".into())
        }
        Err(ClientError::NotRunning { .. }) => {
            eprintln!("{what}; no agent is running: it applies at the next start");
            Ok("not_running".into())
        }
        // 409: the agent runs in private mode and uses no token.
        Err(ClientError::Refused {
            status: CONFLICT,
            message,
        }) => {
            eprintln!("{what}; {message}");
            Ok(message)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "{} is changed, but the running agent could not be told: it applies the file within a second on its own (check `serve-guard status`)",
            public.token_file.display()
        ))),
    }
}
