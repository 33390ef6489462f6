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
//! Tokens go to stdout alone (for `$(serve-guard token show)`); notes go to stderr.

use std::path::Path;

use hyper::Method;

use crate::config::{Config, Overrides, public::PublicConfig};
use crate::control::client::{Client, ClientError};
use crate::control::{TokenReloaded, routes};
use crate::token::{Token, TokenError, prune_file, read_token_file, rotate_file};

/// The control socket's answer when the agent has no token (private mode).
const CONFLICT: u16 = 409;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
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

pub async fn exec(config: &Path, args: Args) -> anyhow::Result<()> {
    let config = Config::load(config, &Overrides::default())?;
    let public = config.public.clone().unwrap_or_else(PublicConfig::default);
    match args.command {
        Command::Show { all } => show(&public, all),
        Command::Rotate => rotate(&config, &public).await,
        Command::Prune => prune(&config, &public).await,
    }
}

fn show(public: &PublicConfig, all: bool) -> anyhow::Result<()> {
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
    for token in shown {
        println!("{}", token.expose());
    }
    Ok(())
}

async fn rotate(config: &Config, public: &PublicConfig) -> anyhow::Result<()> {
    let token: Token = rotate_file(&public.token_file).map_err(|e| {
        anyhow::Error::new(e).context("cannot rotate the token; the tokens in force stay")
    })?;
    println!("{}", token.expose());
    let accepted = read_token_file(&public.token_file).map_or(1, |s| s.len());
    let what = if accepted > 1 {
        format!(
            "token rotated: the new token is the primary; {} older one(s) stay accepted until `serve-guard token prune`",
            accepted - 1
        )
    } else {
        "token created".to_owned()
    };
    tell_agent(config, public, &what).await
}

async fn prune(config: &Config, public: &PublicConfig) -> anyhow::Result<()> {
    let removed = prune_file(&public.token_file).map_err(|e| {
        anyhow::Error::new(e).context("cannot prune the tokens; the tokens in force stay")
    })?;
    if removed == 0 {
        eprintln!("nothing to prune: the token file lists only the primary token");
        return Ok(());
    }
    tell_agent(
        config,
        public,
        &format!("{removed} older token(s) removed: only the primary is accepted"),
    )
    .await
}

/// Asks the running agent to reload the file now, so the change is in force when the command
/// returns (the agent's watcher would pick it up within a second anyway).
async fn tell_agent(config: &Config, public: &PublicConfig, what: &str) -> anyhow::Result<()> {
    let client = Client::new(&config.control_socket);
    match client
        .send::<_, TokenReloaded>(Method::POST, routes::TOKEN_RELOAD, &())
        .await
    {
        Ok(_) => {
            eprintln!("{what} (the running agent applied it)");
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            eprintln!("{what}; no agent is running: it applies at the next start");
            Ok(())
        }
        // 409: the agent runs in private mode and uses no token.
        Err(ClientError::Refused {
            status: CONFLICT,
            message,
        }) => {
            eprintln!("{what}; {message}");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "{} is changed, but the running agent could not be told: it applies the file within a second on its own (check `serve-guard status`)",
            public.token_file.display()
        ))),
    }
}
