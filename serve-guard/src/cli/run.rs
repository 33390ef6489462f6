//! `serve-guard run`: the agent. Every scalar config key has an override here; a repeated list
//! option (`--interface`, `--serve-port`) replaces the file's list.

use crate::config::{Config, Mode, OnStop, Overrides, XdpModeSetting};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `private` (XDP keeps the node to the VPC but its public ports) or `public` (token proxy).
    /// Overrides `mode`.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Interface to filter; repeat for several. Replaces `interfaces`.
    #[arg(long = "interface", short = 'i', value_name = "IFNAME")]
    pub interfaces: Vec<String>,
    /// Ray Serve port to close to every packet from outside the VPC; repeat for several. Replaces
    /// `serve_ports`.
    #[arg(
        long = "serve-port",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub serve_ports: Vec<i64>,
    /// VPC CIDR list file. Overrides `cidr_file`.
    #[arg(long, value_name = "FILE")]
    pub cidr_file: Option<PathBuf>,
    /// auto (driver, falling back to skb), driver or skb. Overrides `xdp_mode`.
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<XdpModeSetting>,
    /// Count what would be dropped, drop nothing. `--audit` alone means true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub audit: Option<bool>,
    /// Debug log from the XDP program (costly per packet). `--program-log` alone means true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub program_log: Option<bool>,
    /// bpffs folder for the pinned program, links and maps. Overrides `pin_dir`.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Folder for the agent lock and state. Overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Unix socket for the CLI verbs. Overrides `control_socket`.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// keep (the filter stays after the agent stops) or detach. Overrides `on_stop`.
    #[arg(long, value_name = "ACTION")]
    pub on_stop: Option<OnStop>,
    /// Address of /metrics and /ready. Overrides `[metrics] listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log level or tracing directives (e.g. `debug`, `serve_guard=debug`); RUST_LOG wins.
    #[arg(long, value_name = "LEVEL", env = "SERVE_GUARD_LOG")]
    pub log_level: Option<String>,
    /// `text` or `json` (one object a line). Overrides `log_format`.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<serve_guard_proxy::logging::LogFormat>,
}

impl Args {
    fn overrides(self) -> Overrides {
        Overrides {
            mode: self.mode,
            interfaces: self.interfaces,
            serve_ports: self.serve_ports,
            cidr_file: self.cidr_file,
            xdp_mode: self.xdp_mode,
            audit: self.audit,
            program_log: self.program_log,
            pin_dir: self.pin_dir,
            state_dir: self.state_dir,
            control_socket: self.control_socket,
            on_stop: self.on_stop,
            metrics_listen: self.metrics_listen,
            log_format: self.log_format,
        }
    }
}

pub async fn exec(config: &Path, args: Args) -> anyhow::Result<()> {
    let level = args.log_level.clone();
    // The config names the log format, so it is read first; its errors go to stderr as the
    // binary's one error line either way.
    let overrides = args.overrides();
    let loaded = Config::load(config, &overrides)?;
    serve_guard_proxy::logging::init(level.as_deref(), loaded.log_format)?;
    let source = crate::agent::ConfigSource {
        path: config.to_owned(),
        overrides,
    };
    // AgentError's messages say what failed and whether anything was attached.
    Ok(crate::agent::run(loaded, source).await?)
}
