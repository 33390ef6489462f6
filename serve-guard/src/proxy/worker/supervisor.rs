//! The agent's side: binds the listeners and reads the TLS files (as root), then runs the proxy
//! as a separate process (`serve-guard proxy-worker`) that gets the sockets as inherited file
//! descriptors and everything else over a socketpair. It forwards every token and TLS change,
//! restarts the process with back-off when it dies, and stops it on shutdown.
//!
//! While no proxy process runs the agent holds the listening sockets but never accepts on them:
//! new connections wait in the kernel's backlog unanswered, and the next process starts with
//! the token set in force at that moment, never an older one.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::privileges::{Account, PrivilegeError};
use super::protocol::{self, FromWorker, ToWorker, WireTokens};
use crate::config::public::PublicConfig;
use crate::proxy::tls::TlsFiles;
use crate::proxy::{ProxyError, Sockets};
use crate::token::TokenReceiver;

/// The hidden subcommand the agent runs.
pub const SUBCOMMAND: &str = "proxy-worker";
/// The running binary, even if the file on disk was replaced by an upgrade.
const SELF_EXE: &str = "/proc/self/exe";
/// First restart delay after a crash, doubled per crash in a row up to the maximum.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A process that served this long is stable: the next crash restarts at the minimum delay.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// On shutdown the process drains (4 s, see `server`); beyond this it is killed.
const STOP_TIMEOUT: Duration = Duration::from_millis(4500);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error("cannot start the proxy process: {0}")]
    Spawn(std::io::Error),
}

/// The proxy, ready to be run as a process.
pub struct Supervisor {
    config: PublicConfig,
    account: Account,
    sockets: Sockets,
    tokens: TokenReceiver,
    tls: Option<TlsFiles>,
    log_level: String,
}

/// How one proxy process ended.
enum Ended {
    Shutdown,
    Exited(String),
}

impl Supervisor {
    /// Validates the config, resolves `proxy_user`, loads the TLS files and binds the
    /// listeners, so that every error shows before anything runs.
    pub fn prepare(
        config: &PublicConfig,
        tokens: TokenReceiver,
    ) -> Result<Supervisor, SupervisorError> {
        config.validate().map_err(ProxyError::from)?;
        let account = Account::lookup(&config.proxy_user)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles::load(cert, key).map_err(ProxyError::from)?),
            _ => None,
        };
        let sockets = Sockets::bind(config)?;
        Ok(Supervisor {
            config: config.clone(),
            account,
            sockets,
            tokens,
            tls,
            log_level: tracing::level_filters::LevelFilter::current().to_string(),
        })
    }

    /// The TLS files, for SIGHUP to reload; each change is sent to the proxy process.
    pub fn tls(&self) -> Option<TlsFiles> {
        self.tls.clone()
    }

    /// Runs proxy processes until `shutdown` completes.
    pub async fn run<F>(mut self, shutdown: F) -> Result<(), SupervisorError>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(shutdown);
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let started = Instant::now();
            match self.run_once(&mut shutdown).await? {
                Ended::Shutdown => return Ok(()),
                Ended::Exited(how) => {
                    if started.elapsed() >= STABLE_AFTER {
                        backoff = RESTART_BACKOFF_MIN;
                    }
                    tracing::error!("the proxy process {how}; restarting it in {backoff:?}");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                }
            }
        }
    }

    /// One proxy process, from spawn to exit (or to shutdown).
    async fn run_once<F>(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Result<Ended, SupervisorError>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let (mut child, channel) = self.spawn()?;
        let (mut from_worker, mut to_worker) = channel.into_split();
        let mut tls_changes = self.tls.as_ref().map(TlsFiles::subscribe);
        // The set in force now: a restarted process never serves an older one.
        let tokens = WireTokens::from(&**self.tokens.borrow_and_update());
        let start = ToWorker::Start {
            config: Box::new(self.config.clone()),
            tokens,
            tls: self.tls.as_ref().map(|t| {
                if let Some(rx) = tls_changes.as_mut() {
                    rx.borrow_and_update();
                }
                t.pem()
            }),
        };
        if let Err(e) = protocol::send(&mut to_worker, &start).await {
            tracing::warn!("cannot send the start message to the proxy process: {e}");
        }
        let mut ready = false;
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => {
                    stop(&mut child).await;
                    return Ok(Ended::Shutdown);
                }
                status = child.wait() => {
                    let how = match status {
                        Ok(s) => format!("exited ({s})"),
                        Err(e) => format!("could not be waited for ({e})"),
                    };
                    return Ok(Ended::Exited(how));
                }
                changed = self.tokens.changed() => {
                    if changed.is_err() {
                        // The token source is gone: the agent is stopping.
                        continue;
                    }
                    let tokens = WireTokens::from(&**self.tokens.borrow_and_update());
                    if let Err(e) = protocol::send(&mut to_worker, &ToWorker::Tokens(tokens)).await {
                        tracing::warn!("cannot send the new token set to the proxy process: {e}; restarting it");
                        let _ = child.start_kill();
                    }
                }
                Some(Ok(())) = async {
                    match tls_changes.as_mut() {
                        Some(rx) => Some(rx.changed().await),
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(tls) = &self.tls
                        && let Err(e) = protocol::send(&mut to_worker, &ToWorker::Tls(tls.pem())).await
                    {
                        tracing::warn!("cannot send the new TLS material to the proxy process: {e}; restarting it");
                        let _ = child.start_kill();
                    }
                }
                message = protocol::recv::<_, FromWorker>(&mut from_worker), if !ready => {
                    match message {
                        Ok(FromWorker::Ready) => {
                            ready = true;
                            tracing::info!(pid = child.id(), user = %self.config.proxy_user, "proxy process serving without privileges");
                        }
                        Err(e) => {
                            // Closed or garbage: the process is dying or compromised.
                            tracing::warn!("the proxy process's channel: {e}");
                            let _ = child.start_kill();
                            ready = true;
                        }
                    }
                }
            }
        }
    }

    /// Starts `serve-guard proxy-worker` with the sockets and its end of the channel.
    fn spawn(&self) -> Result<(Child, UnixStream), SupervisorError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(SupervisorError::Spawn)?;
        let theirs = OwnedFd::from(theirs);
        let http = self.sockets.http.as_raw_fd();
        let grpc = self.sockets.grpc.as_ref().map(AsRawFd::as_raw_fd);
        let channel = theirs.as_raw_fd();
        let mut keep = vec![channel, http];
        keep.extend(grpc);

        let mut cmd = Command::new(SELF_EXE);
        cmd.arg(SUBCOMMAND)
            .arg("--channel-fd")
            .arg(channel.to_string())
            .arg("--http-fd")
            .arg(http.to_string())
            .arg("--uid")
            .arg(self.account.uid.to_string())
            .arg("--gid")
            .arg(self.account.gid.to_string())
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--log-level")
            .arg(&self.log_level);
        if let Some(grpc) = grpc {
            cmd.arg("--grpc-fd").arg(grpc.to_string());
        }
        cmd.env_clear()
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Ok(filter) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        // SAFETY: only async-signal-safe calls (close_range, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || inherit_only(&keep));
        }
        let child = cmd.spawn().map_err(SupervisorError::Spawn)?;
        drop(theirs);
        ours.set_nonblocking(true).map_err(SupervisorError::Spawn)?;
        let ours = UnixStream::from_std(ours).map_err(SupervisorError::Spawn)?;
        Ok((child, ours))
    }
}

/// In the child before exec: every descriptor from 3 up closes on exec except `keep`. The
/// agent's BPF maps, pins, lock and control socket must never reach the proxy process (the
/// process checks it again after exec and refuses to run otherwise).
fn inherit_only(keep: &[RawFd]) -> std::io::Result<()> {
    // SAFETY: plain syscalls on integers.
    unsafe {
        let _ = libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        for &fd in keep {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        tracing::warn!("the proxy process did not stop in time; killing it");
        let _ = child.kill().await;
    }
}
