//! The command line: `serve-guard [-c FILE] <verb>`. One file per verb; each exposes `Args` and
//! `exec`. This is the binary's edge, so verbs return anyhow errors.

mod check;
mod cidr;
mod detach;
pub mod output;
mod run;
mod stats;
mod status;
mod token;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where every verb looks for the config unless `-c` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/serve-guard/serve-guard.toml";

#[derive(Debug, Parser)]
#[command(name = "serve-guard", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file. Global: every verb reads it, so it finds the same files and control socket as
    /// the agent.
    #[arg(short = 'c', long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "SERVE_GUARD_CONFIG")]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach the filter (and, in public mode, the token proxy) until stopped.
    Run(run::Args),
    /// Validate the config and every file `run` reads (CIDR, token, TLS), attach nothing.
    /// Exit 0: valid; 1: invalid (the error names the input); 2: bad command line.
    Check(check::Args),
    /// Mode, interfaces, ports, CIDR revision; in public mode the URL, token and API docs links.
    Status(status::Args),
    /// List or change the VPC CIDR allow-list (live, through the running agent).
    Cidr(cidr::Args),
    /// Show, rotate or prune the public-mode tokens (the token file).
    Token(token::Args),
    /// Packet counters by reason and address family.
    Stats(stats::Args),
    /// Remove the filter: XDP links, program and pinned maps.
    Detach(detach::Args),
    /// The public-mode proxy process, started by the agent with its sockets (never by hand).
    #[command(name = "proxy-worker", hide = true)]
    ProxyWorker(serve_guard_proxy::worker::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any runtime thread exists: it drops privileges, which is per thread.
    let command = match cli.command {
        Command::ProxyWorker(args) => return serve_guard_proxy::worker::main(args),
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serve-guard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `check` reports any invalid input with exit 1 (its documented contract, as `nginx -t`).
    let is_check = matches!(command, Command::Check(_));
    let result = runtime.block_on(async move {
        let config = cli.config;
        match command {
            Command::ProxyWorker(_) => unreachable!("handled before the runtime"),
            Command::Run(args) => run::exec(&config, args).await,
            Command::Check(args) => check::exec(&config, args).await,
            Command::Status(args) => status::exec(&config, args).await,
            Command::Cidr(args) => cidr::exec(&config, args).await,
            Command::Token(args) => token::exec(&config, args).await,
            Command::Stats(args) => stats::exec(&config, args).await,
            Command::Detach(args) => detach::exec(&config, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve-guard: {}", error_chain(&e));
            let exit = if is_check {
                output::Exit::Failure
            } else {
                output::exit_code(&e)
            };
            ExitCode::from(exit as u8)
        }
    }
}

/// The error and its causes on one line. Many messages already quote their cause (`cannot bind
/// X: <io error>`); a cause whose text is already on the line is not repeated.
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_quoted_cause_is_not_repeated() {
        let io = std::io::Error::other("Address in use");
        let e = anyhow::Error::new(io).context("cannot bind /run/x.sock: Address in use");
        let e = e.context("the agent stopped with an error");
        assert_eq!(
            super::error_chain(&e),
            "the agent stopped with an error: cannot bind /run/x.sock: Address in use"
        );
    }
}
