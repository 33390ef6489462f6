//! `serve-guard token show|rotate`: the public-mode token.
//!
//! `show` prints the token. `rotate` writes a new one (atomically, 0600), prints it, and asks
//! the running agent to reload it through the control socket, so the old token and cookies
//! carrying it are refused at once. Without a running agent the new token applies at the next
//! start. The token goes to stdout alone (for `$(serve-guard token show)`); notes go to stderr.

use std::path::Path;

use anyhow::Context;
use hyper::Method;

use crate::config::{Config, Overrides, public::PublicConfig};
use crate::control::client::{Client, ClientError};
use crate::control::{TokenReloaded, routes};
use crate::token::{TokenError, read_token_file, rotate_file};

/// The control socket's answer when the agent has no token (private mode).
const CONFLICT: u16 = 409;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the token.
    Show,
    /// Replace the token with a new random one; the running agent switches at once.
    Rotate,
}

pub async fn exec(config: &Path, args: Args) -> anyhow::Result<()> {
    let config = Config::load(config, &Overrides::default())?;
    let public = config.public.clone().unwrap_or_else(PublicConfig::default);
    match args.command {
        Command::Show => show(&public),
        Command::Rotate => rotate(&config, &public).await,
    }
}

fn show(public: &PublicConfig) -> anyhow::Result<()> {
    match read_token_file(&public.token_file) {
        Ok(token) => {
            println!("{}", token.expose());
            Ok(())
        }
        Err(TokenError::Missing { path }) => anyhow::bail!(
            "no token yet at {}: the agent creates it at its first start in public mode",
            path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

async fn rotate(config: &Config, public: &PublicConfig) -> anyhow::Result<()> {
    let token = rotate_file(&public.token_file)
        .with_context(|| "cannot rotate the token; the old one stays in force")?;
    println!("{}", token.expose());
    let client = Client::new(&config.control_socket);
    match client
        .send::<_, TokenReloaded>(Method::POST, routes::TOKEN_RELOAD, &())
        .await
    {
        Ok(_) => {
            eprintln!(
                "token rotated: the running agent accepts only the new token (old cookies are refused)"
            );
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            eprintln!("token rotated: no agent is running; the new token applies at its next start");
            Ok(())
        }
        // 409: the agent runs in private mode and uses no token.
        Err(ClientError::Refused {
            status: CONFLICT,
            message,
        }) => {
            eprintln!("token rotated; {message}");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the new token is written to {}, but the running agent could not be told: it still accepts the old one until it reloads (retry `serve-guard token rotate` or restart the agent)",
            public.token_file.display()
        ))),
    }
}
