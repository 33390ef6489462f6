//! The `serve-guard` agent as a process under test: its own config, CIDR file, pin dir (under
//! /sys/fs/bpf), state dir and control socket per test, started inside a namespace (setns, not
//! `ip netns exec`, so bpffs stays visible), its output captured to a log file, and everything
//! removed on drop: the process (SIGKILL, by PID), the kernel side (`serve-guard detach`), the pins.

use crate::limits;
use crate::netns::{Netns, owner_pid, pid_alive, unique_name};
use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, PerCpuArray};
use serve_guard::config::defaults::METRICS_LISTEN;
use serve_guard::control::StatsReport;
use serve_guard::metrics::READY_PATH;
use serve_guard_common::{Counter, Family, Reason, counter_index, maps};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Env var naming the agent binary (set by `cargo xtask test|demo`).
pub const BIN_ENV: &str = "SERVE_GUARD_BIN";
/// Where pin dirs of test agents go: a per-test folder under the bpffs mount.
const BPFFS: &str = "/sys/fs/bpf";

static PIN_SWEEP: Once = Once::new();
/// Prefix of per-test pin dirs under bpffs.
const PIN_PREFIX: &str = "sg-test-";

/// Removes pin dirs of test processes that were killed before their guards ran (the name holds
/// the pid; the pid is gone). Unpinning frees the maps, program and links.
fn sweep_stale_pins() {
    let Ok(entries) = fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name, PIN_PREFIX)
            && !pid_alive(pid)
            && fs::remove_dir_all(entry.path()).is_ok()
        {
            eprintln!("removed pins {name} left by a killed test process {pid}");
        }
    }
}

/// The agent binary: `$SERVE_GUARD_BIN`, else the workspace's debug build.
pub fn agent_bin() -> Result<PathBuf> {
    let path = match std::env::var_os(BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/serve-guard"),
    };
    if !path.is_file() {
        bail!(
            "agent binary {} not found: build it with `cargo build -p serve-guard` or set {BIN_ENV}",
            path.display()
        );
    }
    Ok(path)
}

/// The settings a test chooses. The harness adds per-test paths for `cidr_file`, `pin_dir`,
/// `state_dir` and `control_socket` unless the test set them; other keys left unset are not
/// written, so the agent's defaults apply.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    table: toml::Table,
    cidrs: Vec<String>,
    /// Extra environment of the agent process (e.g. `NOTIFY_SOCKET`).
    env: Vec<(String, String)>,
    /// Extra environment of the agent and of its CLI verbs (e.g. `SSL_CERT_FILE`).
    shared_env: Vec<(String, String)>,
}

impl AgentConfig {
    /// `mode = "private"` on `interfaces`.
    pub fn private(interfaces: &[&str]) -> Self {
        Self::new("private", interfaces)
    }

    /// `mode = "public"` on `interfaces`; add the `[public]` table with [`AgentConfig::set`].
    pub fn public(interfaces: &[&str]) -> Self {
        Self::new("public", interfaces)
    }

    fn new(mode: &str, interfaces: &[&str]) -> Self {
        let mut table = toml::Table::new();
        table.insert("mode".into(), mode.into());
        table.insert(
            "interfaces".into(),
            interfaces
                .iter()
                .map(|i| toml::Value::from(*i))
                .collect::<Vec<_>>()
                .into(),
        );
        AgentConfig {
            table,
            cidrs: Vec::new(),
            env: Vec::new(),
            shared_env: Vec::new(),
        }
    }

    /// The lines of the harness's CIDR file (CIDRs, comments, anything: written as given). Not
    /// written when the test sets `cidr_file` itself.
    pub fn cidrs<S: AsRef<str>>(mut self, lines: &[S]) -> Self {
        self.cidrs = lines.iter().map(|l| l.as_ref().to_owned()).collect();
        self
    }

    pub fn serve_ports(self, ports: &[u16]) -> Self {
        let ports: Vec<toml::Value> = ports.iter().map(|&p| i64::from(p).into()).collect();
        self.set("serve_ports", ports)
    }

    /// `guard = "node" | "ports"`: what the filter guards beyond `serve_ports`.
    pub fn guard(self, guard: &str) -> Self {
        self.set("guard", guard)
    }

    /// `public_ports`: numbers, `"LO-HI"` ranges or presets, as written in the config.
    pub fn public_ports(self, ports: &[&str]) -> Self {
        let ports: Vec<toml::Value> = ports.iter().map(|&p| p.into()).collect();
        self.set("public_ports", ports)
    }

    /// `guarded_ports` (with `guard = "ports"`).
    pub fn guarded_ports(self, ports: &[&str]) -> Self {
        let ports: Vec<toml::Value> = ports.iter().map(|&p| p.into()).collect();
        self.set("guarded_ports", ports)
    }

    pub fn audit(self, on: bool) -> Self {
        self.set("audit", on)
    }

    /// `"auto" | "driver" | "skb"`.
    pub fn xdp_mode(self, mode: &str) -> Self {
        self.set("xdp_mode", mode)
    }

    /// `"keep" | "detach"`.
    pub fn on_stop(self, what: &str) -> Self {
        self.set("on_stop", what)
    }

    /// `[metrics] listen = addr` (inside the agent's namespace).
    pub fn metrics_listen(self, addr: &str) -> Self {
        let mut metrics = toml::Table::new();
        metrics.insert("listen".into(), addr.into());
        self.set("metrics", metrics)
    }

    /// An environment variable of the agent process (not of the CLI verbs).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// An environment variable of the agent process and of the CLI verbs run through it.
    pub fn env_all(mut self, key: &str, value: impl Into<String>) -> Self {
        self.shared_env.push((key.to_owned(), value.into()));
        self
    }

    /// Any key (a table for a section such as `[public]`). Replaces an earlier value.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.table.insert(key.into(), value.into());
        self
    }

    fn interfaces(&self) -> Vec<String> {
        self.table
            .get("interfaces")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Per-test files of one agent. Kept apart from [`Agent`] so a test can also run the CLI with
/// no agent running (e.g. `cidr add` editing the file directly).
#[derive(Debug)]
pub struct AgentFiles {
    dir: TempDir,
    pub config: PathBuf,
    pub cidr_file: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub log: PathBuf,
}

impl AgentFiles {
    fn create(cfg: &AgentConfig) -> Result<Self> {
        PIN_SWEEP.call_once(sweep_stale_pins);
        let dir = tempfile::Builder::new()
            .prefix("serve-guard-test-")
            .tempdir()
            .context("creating the agent's temp dir")?;
        let mut table = cfg.table.clone();
        // The harness picks per-test paths; a test that set one itself keeps it (and then owns
        // that file: the harness writes the CIDR file only at its own path).
        let mut path_of = |key: &str, default: PathBuf| -> (PathBuf, bool) {
            match table.get(key).and_then(|v| v.as_str()) {
                Some(given) => (PathBuf::from(given), false),
                None => {
                    table.insert(key.into(), default.display().to_string().into());
                    (default, true)
                }
            }
        };
        let (cidr_file, own_cidr_file) = path_of("cidr_file", dir.path().join("vpc-cidrs"));
        let (pin_dir, _) = path_of("pin_dir", Path::new(BPFFS).join(unique_name(PIN_PREFIX)));
        let (state_dir, _) = path_of("state_dir", dir.path().join("state"));
        let (control_socket, _) = path_of("control_socket", dir.path().join("run/control.sock"));
        let files = AgentFiles {
            config: dir.path().join("serve-guard.toml"),
            cidr_file,
            pin_dir,
            state_dir,
            control_socket,
            log: dir.path().join("agent.log"),
            dir,
        };
        fs::write(&files.config, toml::to_string(&table)?).context("writing the agent config")?;
        if own_cidr_file {
            let mut cidrs = cfg.cidrs.join("\n");
            cidrs.push('\n');
            fs::write(&files.cidr_file, cidrs).context("writing the CIDR file")?;
        }
        Ok(files)
    }

    /// The per-test temp dir (config, CIDR file, state, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every pinned object under `pin_dir` as a path relative to it (`prog`, `maps/<name>`, ...),
    /// sorted; empty when nothing is pinned.
    pub fn pins(&self) -> Result<Vec<String>> {
        let mut pins = Vec::new();
        list_files(&self.pin_dir, &self.pin_dir, &mut pins)?;
        pins.sort();
        Ok(pins)
    }

    /// The kernel id of the map pinned as `name` under `pin_dir` (found by name, wherever the
    /// agent pins it): the same id across two reads means the same map.
    pub fn pinned_map_id(&self, name: &str) -> Result<u32> {
        let path = find_file(&self.pin_dir, name)?
            .with_context(|| format!("no pinned {name} under {}", self.pin_dir.display()))?;
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(map.info()?.id())
    }
}

/// A running (or stopped) agent. Declare it after the topology so it is dropped first.
pub struct Agent {
    ns: Netns,
    bin: PathBuf,
    cfg: AgentConfig,
    files: AgentFiles,
    child: Option<Child>,
    /// Length of the log file when the latest process was launched: where its output starts.
    run_log_start: usize,
}

impl Agent {
    /// Writes the files, starts `serve-guard run -c <config>` in `ns` and waits until it is
    /// ready; on failure the error holds the agent's log.
    pub fn start(ns: &Netns, cfg: AgentConfig) -> Result<Agent> {
        let mut agent = Agent::spawn(ns, cfg)?;
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Like [`Agent::start`] without waiting: for tests that expect the agent to fail.
    pub fn spawn(ns: &Netns, cfg: AgentConfig) -> Result<Agent> {
        let mut agent = Agent::new(ns, cfg)?;
        agent.launch()?;
        Ok(agent)
    }

    /// Writes the files without starting anything: for CLI verbs with no agent running. Start
    /// it later with [`Agent::launch`] (+ [`Agent::wait_ready`]).
    pub fn new(ns: &Netns, cfg: AgentConfig) -> Result<Agent> {
        Ok(Agent {
            ns: ns.clone(),
            bin: agent_bin()?,
            files: AgentFiles::create(&cfg)?,
            cfg,
            child: None,
            run_log_start: 0,
        })
    }

    /// Starts `serve-guard run` with this agent's files (the previous process must have exited).
    pub fn launch(&mut self) -> Result<()> {
        self.launch_with(&[])
    }

    /// Like [`Agent::launch`] with extra arguments to `serve-guard run` (e.g. `--xdp-mode auto`).
    pub fn launch_with(&mut self, args: &[&str]) -> Result<()> {
        if self.is_running() {
            bail!("the agent is already running (pid {:?})", self.pid());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.files.log)
            .context("opening the agent log")?;
        self.run_log_start = usize::try_from(log.metadata()?.len())?;
        let mut cmd = self.ns.command(&self.bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&self.files.config)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // The log is read by tests and people, not a terminal.
            .env("NO_COLOR", "1")
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .envs(self.cfg.shared_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // If the test process is killed before its guards run, the agent dies with it rather than
        // filtering a deleted namespace forever. (The signal follows the launching *thread*:
        // launch from the thread that owns the Agent, as start/restart do.)
        // SAFETY: prctl(2) is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the agent again with the same files (after [`Agent::kill9`] or [`Agent::stop`]) and
    /// waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_ready()
    }

    /// Readiness, in one place: the process is alive, the filter is attached to every
    /// configured interface (seen from the kernel) and the agent's `/ready` (on its metrics
    /// listener, default or configured, inside its namespace) answers 200: maps filled,
    /// subsystems up.
    pub fn is_ready(&mut self) -> Result<bool> {
        if !self.is_running() {
            bail!("the agent is not running (exit: {:?})", self.exit_status());
        }
        for iface in self.cfg.interfaces() {
            if self.ns.xdp_program(&iface)?.is_none() {
                return Ok(false);
            }
        }
        let listen = self.metrics_listen();
        let addr = listen
            .parse()
            .with_context(|| format!("metrics listen {listen:?}"))?;
        Ok(matches!(
            crate::probe::http_request(&self.ns, addr, READY_PATH, &[]),
            Ok(r) if r.status == 200
        ))
    }

    /// Polls [`Agent::is_ready`] for at most [`limits::AGENT_READY`].
    pub fn wait_ready(&mut self) -> Result<()> {
        crate::wait_for("the agent to be ready", limits::AGENT_READY, || {
            self.is_ready()
        })
        .with_context(|| format!("agent log:\n{}", self.logs()))
    }

    /// `[metrics] listen`, or the agent's default.
    pub fn metrics_listen(&self) -> String {
        self.cfg
            .table
            .get("metrics")
            .and_then(|m| m.get("listen"))
            .and_then(|l| l.as_str())
            .unwrap_or(METRICS_LISTEN)
            .to_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL (the agent cannot clean up: what stays is what fail-closed leaves) and reap.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("the agent was never started")?;
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        child.kill().context("SIGKILL to the agent")?;
        Ok(child.wait()?)
    }

    /// SIGTERM and wait at most [`limits::AGENT_STOP`] for a clean exit (then SIGKILL and fail).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_exit(limits::AGENT_STOP)
    }

    /// Sends `signal` to the agent's PID (if it is still running).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let pid = self.pid().context("the agent was never started")? as libc::pid_t;
        // SAFETY: kill(2) on our own child's PID, which is not reaped yet (so not reused).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling the agent");
        }
        Ok(())
    }

    /// Waits at most `timeout` for the agent to exit; on timeout kills it and fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("the agent was never started")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the agent did not exit within {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(limits::POLL_INTERVAL);
        }
    }

    /// Runs `serve-guard run <args>` and waits at most [`limits::AGENT_READY`] for it to exit:
    /// for a start that must fail. The process writes its log file itself, so once this returns
    /// [`Agent::run_logs`] holds everything it wrote.
    pub fn run_to_exit(&mut self, args: &[&str]) -> Result<ExitStatus> {
        self.launch_with(args)?;
        self.wait_exit(limits::AGENT_READY)
    }

    /// Everything the agent wrote to stdout and stderr so far, over all its runs.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.files.log).unwrap_or_default()
    }

    /// What the latest process (the running one, or the last to exit) wrote: a restarted agent's
    /// log without its predecessors'. Complete once that process has exited.
    pub fn run_logs(&self) -> String {
        let logs = self.logs();
        logs.get(self.run_log_start..)
            .map(str::to_owned)
            .unwrap_or_default()
    }

    pub fn files(&self) -> &AgentFiles {
        &self.files
    }

    /// Sets the top-level `key` of the agent's config file to `value`, as an operator edits it
    /// before `systemctl reload` (the running agent sees it on SIGHUP).
    pub fn set_config(&self, key: &str, value: impl Into<toml::Value>) -> Result<()> {
        let path = &self.files.config;
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)?;
        table.insert(key.into(), value.into());
        fs::write(path, toml::to_string(&table)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// `serve-guard <args> -c <config>` in the agent's namespace, bounded by [`limits::CLI`].
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        run_cli(
            &self.ns,
            &self.bin,
            &self.files.config,
            args,
            None,
            &self.cfg.shared_env,
        )
    }

    /// Like [`Agent::cli`] with `stdin` fed to the command (e.g. `cidr replace -f -`).
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        run_cli(
            &self.ns,
            &self.bin,
            &self.files.config,
            args,
            Some(stdin),
            &self.cfg.shared_env,
        )
    }

    /// The counters as `serve-guard stats --json` reports them.
    pub fn stats_cli(&self) -> Result<Counters> {
        let out = self.cli(&["stats", "--json"])?;
        if !out.status.success() {
            bail!(
                "serve-guard stats failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report: StatsReport =
            serde_json::from_slice(&out.stdout).context("parsing `serve-guard stats --json`")?;
        Counters::from_report(&report)
    }

    /// The filter's counters, summed over CPUs: from the program attached to the first
    /// interface, else from the pinned map (e.g. nothing attached any more).
    pub fn counters(&self) -> Result<Counters> {
        let iface = self
            .cfg
            .interfaces()
            .into_iter()
            .next()
            .context("no interface configured")?;
        match self.ns.xdp_program(&iface)? {
            Some(_) => Counters::read_attached(&self.ns, &iface),
            None => Counters::read_pinned(&self.files.pin_dir),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.kill9();
        }
        // The kernel side first (links, programs, maps), then whatever pins are left.
        if self.files.pin_dir.exists() {
            if let Err(e) = self.cli(&["detach"]) {
                eprintln!("warning: `serve-guard detach` failed: {e:#}");
            }
            if let Err(e) = fs::remove_dir_all(&self.files.pin_dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("warning: removing {}: {e}", self.files.pin_dir.display());
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n{}",
                self.files.log.display(),
                self.logs()
            );
        }
    }
}

/// Runs a CLI verb in `ns` with a bounded wait; output is captured.
fn run_cli(
    ns: &Netns,
    bin: &Path,
    config: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(String, String)],
) -> Result<Output> {
    let mut cmd = ns.command(bin);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(args)
        .arg("-c")
        .arg(config)
        // The output is read by tests, not a terminal.
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running serve-guard {}", args.join(" ")))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, data)?;
    }
    // Read the pipes on threads so a chatty command cannot block on a full pipe while we wait.
    let out = child.stdout.take().map(read_all);
    let err = child.stderr.take().map(read_all);
    let deadline = Instant::now() + limits::CLI;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "serve-guard {} did not finish within {:?}",
                args.join(" "),
                limits::CLI
            );
        }
        std::thread::sleep(limits::POLL_INTERVAL);
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(out),
        stderr: join(err),
    })
}

fn read_all(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Counters by (reason, family), summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(BTreeMap<(Reason, Family), Counter>);

impl Counters {
    pub fn get(&self, reason: Reason, family: Family) -> Counter {
        self.0.get(&(reason, family)).copied().unwrap_or_default()
    }

    /// Packets for `reason` and `family`.
    pub fn packets(&self, reason: Reason, family: Family) -> u64 {
        self.get(reason, family).packets
    }

    /// Packets for `reason`, every family.
    pub fn packets_all(&self, reason: Reason) -> u64 {
        Family::ALL.iter().map(|&f| self.packets(reason, f)).sum()
    }

    /// Reads the counters map pinned somewhere under `pin_dir` (found by its name, so the test
    /// does not depend on the agent's layout inside the pin dir).
    pub fn read_pinned(pin_dir: &Path) -> Result<Counters> {
        let path = find_file(pin_dir, maps::COUNTERS)?
            .with_context(|| format!("no pinned {} under {}", maps::COUNTERS, pin_dir.display()))?;
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Counters::from_map(data)
    }

    /// Reads the counters map of the XDP program attached to `iface` in `ns`: the counters of
    /// the program that is filtering right now, pinned or not.
    pub fn read_attached(ns: &Netns, iface: &str) -> Result<Counters> {
        let prog_id = ns
            .xdp_program(iface)?
            .with_context(|| format!("no XDP program on {iface} in {}", ns.name()))?;
        let prog = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| u64::from(p.id()) == prog_id)
            .with_context(|| format!("XDP program {prog_id} is not loaded"))?;
        for map_id in prog.map_ids()?.unwrap_or_default() {
            let data = MapData::from_id(map_id)?;
            if data.info()?.name_as_str() == Some(maps::COUNTERS) {
                return Counters::from_map(data);
            }
        }
        bail!(
            "XDP program {prog_id} on {iface} has no {} map",
            maps::COUNTERS
        )
    }

    /// From the agent's stats report (the control socket's or `stats --json`'s JSON).
    pub fn from_report(report: &StatsReport) -> Result<Counters> {
        let mut out = BTreeMap::new();
        for row in &report.counters {
            let reason = Reason::ALL
                .into_iter()
                .find(|r| r.name() == row.reason)
                .with_context(|| format!("unknown reason {:?}", row.reason))?;
            let family = Family::ALL
                .into_iter()
                .find(|f| f.name() == row.family)
                .with_context(|| format!("unknown family {:?}", row.family))?;
            let counter = Counter {
                packets: row.packets,
                bytes: row.bytes,
            };
            if out.insert((reason, family), counter).is_some() {
                bail!("{} {} reported twice", row.reason, row.family);
            }
        }
        Ok(Counters(out))
    }

    fn from_map(data: MapData) -> Result<Counters> {
        let array: PerCpuArray<MapData, Counter> = Map::from_map_data(data)?.try_into()?;
        let mut out = BTreeMap::new();
        for reason in Reason::ALL {
            for family in Family::ALL {
                let per_cpu = array.get(&counter_index(reason, family), 0)?;
                let sum = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
                out.insert((reason, family), sum);
            }
        }
        Ok(Counters(out))
    }

    /// `self - earlier`, per counter: what happened between two reads.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, c)| {
                    let e = earlier.get(k.0, k.1);
                    (
                        *k,
                        Counter {
                            packets: c.packets.saturating_sub(e.packets),
                            bytes: c.bytes.saturating_sub(e.bytes),
                        },
                    )
                })
                .collect(),
        )
    }
}

/// Adds the files under `dir` to `out`, as paths relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.display().to_string());
        }
    }
    Ok(())
}

/// First file named `name` under `dir`, depth-first.
fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if let Some(found) = find_file(&path, name)? {
                return Ok(Some(found));
            }
        } else if entry.file_name() == name {
            return Ok(Some(path));
        }
    }
    Ok(None)
}
