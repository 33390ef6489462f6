//! `serve-guard run`: validate, lock, start the filter, run the subsystems, stop.
//!
//! Order matters for failing closed:
//! 1. everything in the config is validated (interfaces exist, CIDR file parses) before the
//!    kernel is touched, so a bad config attaches nothing;
//! 2. the agent lock makes sure no other agent manages the same state;
//! 3. the filter starts (adopting pinned maps and links) and only then do the subsystems run;
//! 4. READY=1 goes to systemd (`Type=notify`) once everything runs; SIGHUP re-reads the CIDR,
//!    token and TLS files between RELOADING=1 and READY=1 (see [`reload`]) and never stops the
//!    agent;
//! 5. on SIGINT/SIGTERM (STOPPING=1) the subsystems stop, then the filter stays pinned (`on_stop = "keep"`)
//!    or is removed (`"detach"`). A crash skips step 5, which leaves the filter pinned: the node
//!    keeps filtering with the last list.
//!
//! Subsystems (token watcher, public-mode proxy here; CIDR store and watcher, control socket and
//! metrics in `subsystems`) are started in [`start_subsystems`]; each gets an [`AgentContext`].
//! The control socket and the metrics endpoint see the agent through [`handle::AgentHandle`].

mod cloud_refresh;
pub mod handle;
pub mod lock;
pub mod notify;
pub mod reload;
mod subsystems;

pub use lock::{AgentLock, agent_running, running_agent_pid};
pub use reload::{ConfigSource, Reloadable};

use crate::config::{Config, ConfigError, Mode, OnStop};
use crate::filter::{Filter, FilterError, FilterStatus};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long subsystems get to finish after the shutdown signal before they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("cannot create state directory {path}: {error}")]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot lock {path}: {error}")]
    Lock {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "another agent{} already runs with state_dir {state_dir}; stop it first (systemctl stop serve-guard)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning {
        state_dir: PathBuf,
        pid: Option<u32>,
    },
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
    #[error("the {name} stopped: {detail}")]
    Subsystem { name: &'static str, detail: String },
    #[error("the filter start task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    #[error(transparent)]
    Proxy(#[from] serve_guard_proxy::ProxyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    ProxyProcess(#[from] crate::proxy_supervisor::SupervisorError),
}

/// The filter, shared by every task that reads or changes it.
pub type SharedFilter = Arc<tokio::sync::Mutex<Filter>>;

/// The port rules in force: SIGHUP replaces them; the exposure audit (`status`, metrics) judges
/// the node's listeners by them, not by the rules the agent started with.
pub type SharedPorts = Arc<tokio::sync::Mutex<crate::ports::PortPolicy>>;

/// Error type of subsystem tasks: each module keeps its own typed error.
pub type SubsystemError = Box<dyn std::error::Error + Send + Sync>;

/// Set once the filter is attached, its maps filled and the subsystems started (`/ready`).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What every subsystem gets.
#[derive(Clone)]
pub struct AgentContext {
    pub config: Arc<Config>,
    pub filter: SharedFilter,
    /// The port rules in force (the filter's port map holds them).
    pub ports: SharedPorts,
    /// Cancelled when the agent stops; subsystems finish within [`SHUTDOWN_GRACE`].
    pub shutdown: CancellationToken,
    pub ready: Readiness,
    pub started_at: SystemTime,
}

/// The agent's tasks. A task that ends before shutdown (with an error or not) stops the agent:
/// a half-working agent is worse than a restart by systemd.
pub struct Subsystems {
    tasks: JoinSet<(&'static str, Result<(), SubsystemError>)>,
}

impl Subsystems {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
        }
    }

    /// Runs `task` until it ends or the agent stops. `name` appears in logs and errors.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<SubsystemError>,
    {
        tracing::debug!("starting the {name}");
        self.tasks
            .spawn(async move { (name, task.await.map_err(Into::into)) });
    }

    /// Waits for the first task to end; never returns while all run.
    async fn first_exit(&mut self) -> AgentError {
        match self.tasks.join_next().await {
            Some(Ok((name, Ok(())))) => AgentError::Subsystem {
                name,
                detail: "it ended unexpectedly".into(),
            },
            Some(Ok((name, Err(e)))) => AgentError::Subsystem {
                name,
                detail: crate::filter::error_chain(e.as_ref()),
            },
            Some(Err(e)) => AgentError::Subsystem {
                name: "task",
                detail: e.to_string(),
            },
            None => std::future::pending().await,
        }
    }

    /// After the shutdown signal: lets tasks finish, aborts stragglers.
    async fn stop(mut self) {
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok((name, Err(e))) = joined {
                    tracing::warn!(
                        "the {name} failed while stopping: {}",
                        crate::filter::error_chain(e.as_ref())
                    );
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "subsystems did not stop within {}s; aborting them",
                SHUTDOWN_GRACE.as_secs()
            );
            self.tasks.shutdown().await;
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM or a subsystem failure.
pub async fn run(config: Config, source: ConfigSource) -> Result<(), AgentError> {
    // Listen first: a SIGTERM during start-up then stops the agent after the filter is in a
    // consistent state instead of killing it half-way.
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    // SIGHUP's default action ends the process: handle it from the start.
    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;

    let mut host = config.check_host()?;
    check_cidr_consent(&config, &host.cidrs)?;
    if config.cloud.is_some() {
        // The cloud's last good answer is in force from the first packet, even while the
        // metadata service is down: a reboot during an outage keeps the VPC's clients.
        if let Some(recorded) = crate::store::cloud_state::read(&config.state_dir)? {
            host.cidrs = host.cidrs.union(&recorded.list);
            host.cidrs
                .check_capacity(config.max_cidrs)
                .map_err(|error| ConfigError::Cidr {
                    path: crate::store::cloud_state::path(&config.state_dir),
                    error,
                })?;
        }
    }
    for warning in &host.warnings {
        tracing::warn!("{}: {warning}", config.cidr_file.display());
    }
    // Acquiring may wait out a CLI probe for a moment: off the async workers.
    let _lock = tokio::task::block_in_place(|| AgentLock::acquire(&config.state_dir))?;

    // Scanned now, from the links the host check listed; logged once the filter is up.
    let exposures = crate::node::exposure::scan_links(&host.links, &config.interfaces);
    // Taken before the filter applies the port rules, so the sessions at risk are the ones that
    // exist as it starts (a login the new rules would lock out). Reads /proc: off the workers.
    let listeners = tokio::task::block_in_place(|| {
        crate::node::listeners::audit(&config.ports, &host.cidrs, config.audit)
    });
    let config = Arc::new(config);
    let filter = {
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || Filter::start(&config, &host))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))??
    };
    tracing::info!("{}", summary(&config, &filter.status()));
    warn_about_exposures(exposures);
    warn_about_listeners(listeners);

    let mut filter = filter;
    let program_log = filter.take_program_log();
    let ctx = AgentContext {
        config: Arc::clone(&config),
        filter: Arc::new(tokio::sync::Mutex::new(filter)),
        ports: Arc::new(tokio::sync::Mutex::new(config.ports.clone())),
        shutdown: CancellationToken::new(),
        ready: Readiness::default(),
        started_at: SystemTime::now(),
    };
    let mut subsystems = Subsystems::new();
    if let Some(log) = program_log {
        subsystems.spawn("XDP program log", log.run(ctx.shutdown.clone()));
    }
    let started = start_subsystems(&ctx, &mut subsystems, source).await;

    let outcome = match started {
        Err(e) => {
            // All or nothing: a start that cannot finish takes back what it attached.
            ctx.shutdown.cancel();
            subsystems.stop().await;
            let AgentContext { filter, .. } = ctx;
            undo_start(filter).await;
            return Err(e);
        }
        Ok(reloadable) => {
            ctx.ready.set_ready();
            notify::ready();
            loop {
                tokio::select! {
                    _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break Ok(()) }
                    _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break Ok(()) }
                    _ = sighup.recv() => {
                        tracing::info!("SIGHUP: re-reading the CIDR, token and TLS files and the port rules");
                        notify::reloading();
                        let failed = reload::reload(&reloadable).await;
                        if failed > 0 {
                            tracing::warn!("SIGHUP: {failed} input(s) invalid, kept as they were");
                        }
                        notify::ready();
                    }
                    e = subsystems.first_exit() => break Err(e),
                }
            }
        }
    };

    notify::stopping();
    ctx.shutdown.cancel();
    subsystems.stop().await;
    let AgentContext { filter, .. } = ctx;
    stop_filter(filter, config.on_stop).await;
    outcome
}

/// Refuses a CIDR file that brings in an entry allowing every source without `allow_everyone`
/// (see [`crate::store::check_file_consent`]): what `run` and `check` both check before anything
/// is attached.
pub fn check_cidr_consent(
    config: &Config,
    cidrs: &crate::cidr::CidrList,
) -> Result<(), crate::store::StoreError> {
    crate::store::check_file_consent(
        &config.cidr_file,
        &config.state_dir,
        cidrs,
        config.allow_everyone,
    )
}

/// Starts every subsystem. Each one gets a clone of `ctx` (config, filter, shutdown token,
/// readiness) and runs as a task in `subsystems`; an error here stops the agent before it
/// reports ready. Returns what SIGHUP re-reads.
async fn start_subsystems(
    ctx: &AgentContext,
    subsystems: &mut Subsystems,
    source: ConfigSource,
) -> Result<Reloadable, AgentError> {
    // Public mode: the token source, followed on disk, publishing to the proxy; also reloaded by
    // `POST /v1/token/reload`. Created (0600) at the first start when the token file is missing.
    let public = ctx.config.public.clone().unwrap_or_default();
    let tokens = match ctx.config.mode {
        Mode::Public => Some(Arc::new(crate::token::TokenSource::load_or_create(
            &public.token_file,
        )?)),
        Mode::Private => None,
    };
    if let Some(tokens) = &tokens {
        let watcher = crate::follow::Watcher::start_tokens(Arc::clone(tokens)).map_err(|e| {
            AgentError::Subsystem {
                name: "token watcher",
                detail: e.to_string(),
            }
        })?;
        subsystems.spawn(
            "token watcher",
            watcher.run(ctx.shutdown.clone().cancelled_owned()),
        );
        // An edit made between the first read and the start of the watch is picked up here.
        let _ = tokens.reload();
    }
    // CIDR store + file watcher, control socket, Prometheus metrics and /ready.
    let cidrs = subsystems::start(ctx, subsystems, tokens.clone()).await?;
    let mut tls = None;
    if let Some(tokens) = &tokens {
        // Token-checking reverse proxy, as an unprivileged process: its sockets are bound, its
        // TLS files read and the process started here, so a busy port, bad TLS files or
        // privileges that cannot be dropped stop the start.
        let proxy = crate::proxy_supervisor::Supervisor::start(&public, tokens.subscribe()).await?;
        tls = proxy.tls();
        subsystems.spawn(
            "public proxy",
            proxy.run(ctx.shutdown.clone().cancelled_owned()),
        );
    }
    let ports = reload::PortRules {
        source,
        filter: Arc::clone(&ctx.filter),
        in_force: Arc::clone(&ctx.ports),
    };
    Ok(Reloadable {
        cidrs,
        tokens,
        tls,
        ports,
    })
}

/// After a failed start: [`Filter::undo_start`], then the filter's handles close (at the latest
/// when the process exits), which takes this start's links off the interfaces.
async fn undo_start(filter: SharedFilter) {
    let result = filter.lock().await.undo_start();
    drop(filter);
    match result {
        Ok(done) => tracing::error!("the start failed; {done}"),
        Err(e) => tracing::error!("the start failed and undoing it failed too: {e}"),
    }
}

/// Applies `on_stop`. Keep: drop our handles, the pins hold the filter in place. Detach: unpin
/// everything, then drop the handles so the links leave the interfaces.
async fn stop_filter(filter: SharedFilter, on_stop: OnStop) {
    match on_stop {
        OnStop::Keep => {
            tracing::info!(
                "stopped; the filter stays attached with the current list (on_stop = keep)"
            );
        }
        OnStop::Detach => {
            let result = match Arc::try_unwrap(filter) {
                Ok(mutex) => tokio::task::block_in_place(|| mutex.into_inner().detach()),
                // A straggling task still holds a handle; unpin anyway, the handle closes at exit.
                Err(shared) => {
                    let pin_dir = shared.lock().await.layout().root().to_owned();
                    crate::filter::remove_pins(&pin_dir)
                }
            };
            match result {
                Ok(removed) => tracing::info!("stopped; on_stop = detach: {removed}"),
                Err(e) => tracing::error!("on_stop = detach failed: {e}"),
            }
        }
    }
}

/// Names every path around the filter on this node (tunnels it decapsulates, SRv6 decap routes,
/// rp_filter off on a covered interface): the filter works, but these bypass it.
fn warn_about_exposures(scanned: Result<Vec<crate::node::Exposure>, crate::node::ScanError>) {
    match scanned {
        Ok(found) => {
            for exposure in found {
                tracing::warn!("{exposure}");
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Names every listener a source outside the allow-list reaches (in audit mode: what enforcing
/// would close), every session the port rules put at risk, and what the audit cannot see.
fn warn_about_listeners(audited: Result<crate::node::ListenerAudit, crate::node::AuditError>) {
    match audited {
        Ok(audit) => {
            for warning in audit.warnings() {
                tracing::warn!("{warning}");
            }
        }
        Err(e) => tracing::warn!("cannot audit the node's listeners: {e}"),
    }
}

/// The one line that says what the agent does.
fn summary(config: &Config, status: &FilterStatus) -> String {
    let interfaces = status
        .interfaces
        .iter()
        .map(|i| {
            format!(
                "{} ({}, {})",
                i.name,
                i.mode,
                if i.slot.is_some() && i.adopted {
                    "libxdp dispatcher, slot adopted"
                } else if i.slot.is_some() {
                    "libxdp dispatcher"
                } else if i.adopted {
                    "adopted"
                } else {
                    "new"
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "serve-guard running: mode {}, interfaces {interfaces}, {}, CIDRs {} IPv4 + {} IPv6, audit {}, on_stop {}",
        config.mode,
        crate::ports::describe(&config.ports),
        status.cidrs_v4,
        status.cidrs_v6,
        if status.audit { "on" } else { "off" },
        config.on_stop
    )
}
