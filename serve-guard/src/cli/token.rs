//! `serve-guard token show|rotate`: the public-mode token.
//!
//! `show` prints the token. `rotate` writes a new one (atomically, 0600), prints it, and asks
//! the running agent to reload it through the control socket, so the old token and cookies
//! carrying it are refused at once. Without a running agent the new token applies at the next
//! start. The token goes to stdout alone (for `$(serve-guard token show)`); notes go to stderr.
//!
//! Both refuse a private-mode config and create nothing: a token file there would suggest a
//! proxy that does not run.

use std::path::Path;

use anyhow::Context;
use hyper::Method;

use super::output::{self, Coded, Exit, outln};
use crate::config::{Config, Mode, Overrides, public::PublicConfig};
use crate::control::client::{Client, ClientError};
use crate::control::{TokenReloaded, routes};
use crate::token::{TokenError, read_token_file, rotate_file};

/// The control socket's answer when the agent has no token (private mode).
const CONFLICT: u16 = 409;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// Print JSON: `{"schema_version", "token", "token_file"}` (rotate adds `agent`).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the token.
    Show,
    /// Replace the token with a new random one; the running agent switches at once.
    Rotate,
}

#[derive(serde::Serialize)]
struct TokenAnswer<'a> {
    token: &'a str,
    token_file: String,
    /// rotate: `reloaded` (the agent switched), `not_running` (applies at its next start).
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'static str>,
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
    match args.command {
        Command::Show => show(&public, args.json),
        Command::Rotate => rotate(&config, &public, args.json).await,
    }
}

fn print(
    token: &str,
    public: &PublicConfig,
    agent: Option<&'static str>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        return output::json(&TokenAnswer {
            token,
            token_file: public.token_file.display().to_string(),
            agent,
        });
    }
    outln!("{token}");
    Ok(())
}

fn show(public: &PublicConfig, json: bool) -> anyhow::Result<()> {
    match read_token_file(&public.token_file) {
        Ok(token) => print(token.expose(), public, None, json),
        Err(TokenError::Missing { path }) => anyhow::bail!(
            "no token yet at {}: the agent creates it at its first start in public mode",
            path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

async fn rotate(config: &Config, public: &PublicConfig, json: bool) -> anyhow::Result<()> {
    let token = rotate_file(&public.token_file)
        .with_context(|| "cannot rotate the token; the old one stays in force")?;
    let client = Client::new(&config.control_socket);
    match client
        .send::<_, TokenReloaded>(Method::POST, routes::TOKEN_RELOAD, &())
        .await
    {
        Ok(_) => {
            print(token.expose(), public, Some("reloaded"), json)?;
            eprintln!(
                "token rotated: the running agent accepts only the new token (old cookies are refused)"
            );
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            print(token.expose(), public, Some("not_running"), json)?;
            eprintln!(
                "token rotated: no agent is running; the new token applies at its next start"
            );
            Ok(())
        }
        // 409: the agent runs in private mode although this config says public.
        Err(ClientError::Refused {
            status: CONFLICT,
            message,
        }) => {
            print(token.expose(), public, Some("private_mode"), json)?;
            eprintln!("token rotated; {message}");
            Ok(())
        }
        Err(e) => {
            print(token.expose(), public, None, json)?;
            Err(anyhow::Error::new(e).context(format!(
            "the new token is written to {}, but the running agent could not be told: it still accepts the old one until it reloads (retry `serve-guard token rotate` or restart the agent)",
            public.token_file.display()
        )))
        }
    }
}
