//! The agent's side of the proxy process: binds the listeners and reads the TLS files (as
//! root), then runs the proxy (`serve_guard_proxy`) as a separate process of this binary
//! (`serve-guard proxy-worker`, named `serve-guard-proxy`) that gets the sockets as inherited
//! file descriptors and everything else over a socketpair (`serve_guard_proxy::worker::protocol`,
//! shared by both ends). It forwards every token and TLS change, restarts the process with
//! back-off when it dies, and stops it on shutdown. What the process does itself (checking its
//! descriptors, dropping privileges) is `serve_guard_proxy::worker`.
//!
//! - `account`: `[public] proxy_user` looked up in the user database.
//!
//! While no proxy process runs the agent holds the listening sockets but never accepts on them:
//! new connections wait in the kernel's backlog unanswered, and the next process starts with
//! the token set in force at that moment, never an older one.

#![allow(
    unsafe_code,
    reason = "the proxy process's start (pre_exec) and signals"
)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

pub mod account;

use serve_guard_proxy::config::PublicConfig;
use serve_guard_proxy::tls::TlsFiles;
use serve_guard_proxy::token::TokenReceiver;
use serve_guard_proxy::worker::privileges::Account;
use serve_guard_proxy::worker::protocol::{self, FromWorker, ToWorker, WireTokens};
use serve_guard_proxy::worker::{PROCESS_NAME, SUBCOMMAND};
use serve_guard_proxy::{ProxyError, Sockets};

pub use account::AccountError;
/// The running binary, even if the file on disk was replaced by an upgrade.
const SELF_EXE: &str = "/proc/self/exe";
/// First restart delay after a crash, doubled per crash in a row up to the maximum.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A process that served this long is stable: the next crash restarts at the minimum delay.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// From spawn to the process's Ready (it drops privileges and binds nothing: quick).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown the process drains (4 s, see `server`); beyond this it is killed.
const STOP_TIMEOUT: Duration = Duration::from_millis(4500);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("cannot start the proxy process: {0}")]
    Spawn(std::io::Error),
    /// Its own log line says why (e.g. privileges that cannot be dropped).
    #[error("the proxy process {0}")]
    NotReady(String),
}

/// The proxy run as a process, and what it is restarted with.
pub struct Supervisor {
    config: PublicConfig,
    account: Account,
    sockets: Sockets,
    tokens: TokenReceiver,
    tls: Option<TlsFiles>,
    log_level: String,
    /// The process started by [`Supervisor::start`], until [`Supervisor::run`] takes it over.
    first: Option<Running>,
}

/// A proxy process that reported ready, and its channel.
struct Running {
    child: Child,
    from_worker: OwnedReadHalf,
    to_worker: OwnedWriteHalf,
    tls_changes: Option<watch::Receiver<u64>>,
}

/// How one proxy process ended.
enum Ended {
    Shutdown,
    Exited(String),
}

impl Supervisor {
    /// Validates the config, resolves `proxy_user`, loads the TLS files, binds the listeners
    /// and starts the first proxy process, waiting until it serves without privileges: every
    /// error (a busy port, bad TLS files, an unknown user, privileges that cannot be dropped)
    /// shows before the agent reports ready.
    pub async fn start(
        config: &PublicConfig,
        tokens: TokenReceiver,
    ) -> Result<Supervisor, SupervisorError> {
        config.validate().map_err(ProxyError::from)?;
        let account = account::lookup(&config.proxy_user)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles::load(cert, key).map_err(ProxyError::from)?),
            _ => None,
        };
        let sockets = Sockets::bind(config)?;
        let mut supervisor = Supervisor {
            config: config.clone(),
            account,
            sockets,
            tokens,
            tls,
            log_level: tracing::level_filters::LevelFilter::current().to_string(),
            first: None,
        };
        supervisor.first = Some(supervisor.launch().await?);
        Ok(supervisor)
    }

    /// The TLS files, for SIGHUP to reload; each change is sent to the proxy process.
    pub fn tls(&self) -> Option<TlsFiles> {
        self.tls.clone()
    }

    /// Supervises proxy processes until `shutdown` completes: a process that dies is replaced
    /// after a back-off that doubles per crash in a row.
    pub async fn run<F>(mut self, shutdown: F) -> Result<(), SupervisorError>
    where
        F: Future<Output = ()> + Send,
    {
        tokio::pin!(shutdown);
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let running = match self.first.take() {
                Some(running) => Ok(running),
                None => self.launch().await,
            };
            let how = match running {
                Ok(running) => {
                    let ended = self.supervise(running, &mut shutdown).await;
                    // Its counts stay in the totals; its connections are gone.
                    serve_guard_proxy::metrics::agent_totals().process_ended();
                    match ended {
                        Ended::Shutdown => return Ok(()),
                        Ended::Exited(how) => how,
                    }
                }
                Err(e) => e.to_string(),
            };
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

    /// Spawns a proxy process, sends it the start message with the token set and TLS material
    /// in force now (never an older one), and waits until it reports ready.
    async fn launch(&mut self) -> Result<Running, SupervisorError> {
        let (mut child, channel) = self.spawn()?;
        let (mut from_worker, mut to_worker) = channel.into_split();
        let mut tls_changes = self.tls.as_ref().map(TlsFiles::subscribe);
        if let Some(rx) = tls_changes.as_mut() {
            rx.borrow_and_update();
        }
        let start = ToWorker::Start {
            config: Box::new(self.config.clone()),
            tokens: WireTokens::from(&**self.tokens.borrow_and_update()),
            tls: self.tls.as_ref().map(TlsFiles::pem),
        };
        let ready = async {
            protocol::send(&mut to_worker, &start).await?;
            protocol::recv::<_, FromWorker>(&mut from_worker).await
        };
        match tokio::time::timeout(START_TIMEOUT, ready).await {
            Ok(Ok(FromWorker::Ready)) => {
                tracing::info!(
                    pid = child.id(),
                    user = %self.config.proxy_user,
                    "proxy process serving, without privileges"
                );
                Ok(Running {
                    child,
                    from_worker,
                    to_worker,
                    tls_changes,
                })
            }
            failed => {
                let _ = child.start_kill();
                let status = child.wait().await;
                let how = match (failed, status) {
                    (_, Ok(s)) if !s.success() => format!("exited ({s})"),
                    (Err(_), _) => format!("did not report ready within {START_TIMEOUT:?}"),
                    (Ok(Err(e)), _) => format!("did not report ready: {e}"),
                    (Ok(Ok(_)), _) => "did not report ready".to_owned(),
                };
                Err(SupervisorError::NotReady(how))
            }
        }
    }

    /// Forwards changes to a running proxy process until it exits or `shutdown` completes.
    async fn supervise<F>(
        &mut self,
        running: Running,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Ended
    where
        F: Future<Output = ()> + Send,
    {
        let Running {
            mut child,
            mut from_worker,
            mut to_worker,
            mut tls_changes,
        } = running;
        let mut tokens_open = true;
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => {
                    stop(&mut child).await;
                    return Ended::Shutdown;
                }
                status = child.wait() => {
                    return Ended::Exited(match status {
                        Ok(s) => format!("exited ({s})"),
                        Err(e) => format!("could not be waited for ({e})"),
                    });
                }
                changed = self.tokens.changed(), if tokens_open => {
                    // Closed: the token source is gone, the agent is stopping.
                    tokens_open = changed.is_ok();
                    if tokens_open {
                        let tokens = WireTokens::from(&**self.tokens.borrow_and_update());
                        if let Err(e) = protocol::send(&mut to_worker, &ToWorker::Tokens(tokens)).await {
                            tracing::warn!("cannot send the new token set to the proxy process ({e}); restarting it");
                            let _ = child.start_kill();
                        }
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
                        tracing::warn!("cannot send the new TLS material to the proxy process ({e}); restarting it");
                        let _ = child.start_kill();
                    }
                }
                // After Ready the process sends only metrics: anything else, or the end of the
                // channel, means it is dying or compromised.
                message = protocol::recv::<_, FromWorker>(&mut from_worker) => {
                    if let Ok(FromWorker::Metrics(snapshot)) = message {
                        serve_guard_proxy::metrics::agent_totals().absorb(*snapshot);
                        continue;
                    }
                    tracing::warn!("the proxy process's channel: {}; restarting it", match message {
                        Ok(m) => format!("unexpected {m:?}"),
                        Err(e) => e.to_string(),
                    });
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Ended::Exited("closed its channel".to_owned());
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
        // Its own name in `ps -f` and /proc/<pid>/cmdline rather than `/proc/self/exe`; the
        // process sets its comm itself (`ps`, `ss -ltnp`).
        cmd.arg0(PROCESS_NAME)
            .arg(SUBCOMMAND)
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
            .arg(&self.log_level)
            .arg("--log-format")
            .arg(serve_guard_proxy::logging::format().name());
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
