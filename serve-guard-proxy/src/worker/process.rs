//! The proxy process itself (`serve-guard proxy-worker`, hidden, started only by the agent):
//! names itself, checks it inherited nothing but its sockets, drops every privilege while still
//! single-threaded, then serves what the agent sends over the channel until SIGTERM or until
//! the agent goes away.

#![forbid(unsafe_code)]

use std::os::fd::RawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::bootstrap::{self, Inherited};
use super::privileges::{self, Account};
use super::protocol::{self, FromWorker, ToWorker};
use crate::tls::TlsFiles;
use crate::{Proxy, Sockets};

/// The agent sends the start message right after the spawn.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The file descriptors and account the agent passes on the command line.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub channel_fd: RawFd,
    #[arg(long)]
    pub http_fd: RawFd,
    #[arg(long)]
    pub grpc_fd: Option<RawFd>,
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
    /// The agent's pid: the process exits if the agent is gone before it is watched.
    #[arg(long)]
    pub parent: i32,
    #[arg(long)]
    pub log_level: Option<String>,
    /// The agent's log format.
    #[arg(long, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("unexpected open file descriptor {0} ({1}): the proxy process holds only its sockets")]
    StrayFd(RawFd, String),
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Adopt(#[from] bootstrap::AdoptError),
    #[error("the channel to the agent: {0}")]
    Channel(#[from] protocol::ChannelError),
    #[error("the agent sent no start message within {0:?}")]
    NoStart(Duration),
    #[error("the agent's first message was not the start message")]
    NotStart,
    #[error(transparent)]
    Proxy(#[from] crate::ProxyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Entry point, before any thread exists.
pub fn main(args: Args) -> ExitCode {
    // First, so that even a process that fails to start shows under its own name. A name it
    // cannot set is no reason not to serve.
    let named = bootstrap::set_comm(super::COMM);
    let _ = crate::logging::init(args.log_level.as_deref(), args.log_format);
    if let Err(e) = named {
        tracing::warn!("proxy process: cannot set its name: {e}");
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("proxy process: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), WorkerError> {
    let mut own = vec![0, 1, 2, args.channel_fd, args.http_fd];
    own.extend(args.grpc_fd);
    only_these_fds(&own)?;
    privileges::drop_to(
        Account {
            uid: args.uid,
            gid: args.gid,
        },
        args.parent,
    )?;
    let Inherited {
        channel,
        http,
        grpc,
    } = bootstrap::adopt(args.channel_fd, args.http_fd, args.grpc_fd)?;
    let sockets = Sockets { http, grpc };
    runtime()?.block_on(serve(channel, sockets))
}

/// One runtime thread per CPU the process may run on (its affinity: systemd's `CPUAffinity=`,
/// taskset, a cgroup's cpuset). On one CPU, the single-threaded scheduler: a work-stealing pool
/// of threads sharing one core only adds wake-ups and context switches to every request.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(cpus);
        multi
    };
    builder.enable_all().build()
}

/// Fails if any descriptor other than `own` is open: a leaked BPF map, pin or control socket
/// would hand the proxy a way to change the filter.
fn only_these_fds(own: &[RawFd]) -> Result<(), WorkerError> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        // The directory being listed is itself open while it is read.
        if own.contains(&fd) || target.starts_with("/proc/") {
            continue;
        }
        return Err(WorkerError::StrayFd(fd, target));
    }
    Ok(())
}

async fn serve(
    channel: std::os::unix::net::UnixStream,
    sockets: Sockets,
) -> Result<(), WorkerError> {
    channel.set_nonblocking(true)?;
    let channel = UnixStream::from_std(channel)?;
    let (mut from_agent, mut to_agent) = channel.into_split();
    let start = tokio::time::timeout(START_TIMEOUT, protocol::recv(&mut from_agent))
        .await
        .map_err(|_| WorkerError::NoStart(START_TIMEOUT))??;
    let ToWorker::Start {
        config,
        tokens,
        tls,
    } = start
    else {
        return Err(WorkerError::NotStart);
    };
    let (token_tx, token_rx) = watch::channel(Arc::new(tokens.to_set()));
    let tls = tls.map(TlsFiles::from_pem).transpose()?;
    let proxy = Proxy::with_sockets(&config, token_rx, sockets, tls.clone())?;
    protocol::send(&mut to_agent, &FromWorker::Ready).await?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let updates = async {
        loop {
            match protocol::recv::<_, ToWorker>(&mut from_agent).await {
                Ok(ToWorker::Tokens(tokens)) => {
                    token_tx.send_replace(Arc::new(tokens.to_set()));
                    tracing::debug!("proxy process: new token set");
                }
                Ok(ToWorker::Tls(pem)) => match tls.as_ref().map(|t| t.replace(pem)) {
                    Some(Ok(_)) => tracing::debug!("proxy process: new TLS material"),
                    Some(Err(e)) => {
                        tracing::error!("proxy process: {e}; the certificate in use stays");
                    }
                    None => tracing::warn!("proxy process: TLS material without TLS; ignored"),
                },
                Ok(ToWorker::Start { .. }) => {
                    tracing::warn!("proxy process: a second start message; ignored");
                }
                // The agent is gone (or broke the channel): stop serving with a stale set.
                Err(e) => return e,
            }
        }
    };
    let metrics = async {
        let mut every = tokio::time::interval(crate::metrics::SNAPSHOT_INTERVAL);
        loop {
            every.tick().await;
            let snapshot = crate::metrics::global().snapshot();
            if let Err(e) =
                protocol::send(&mut to_agent, &FromWorker::Metrics(Box::new(snapshot))).await
            {
                return e;
            }
        }
    };
    let stop = async {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("proxy process: SIGTERM: stopping"),
            e = updates => tracing::warn!("proxy process: the channel to the agent ended ({e}); stopping"),
            e = metrics => tracing::warn!("proxy process: cannot send metrics to the agent ({e}); stopping"),
        }
    };
    proxy.serve(stop).await;
    Ok(())
}
