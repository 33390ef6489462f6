//! Real Ray Serve (and a real gRPC server) for the public-mode tests, run from the pinned venv
//! (`tests/python/requirements.txt`, installed by `cargo xtask setup` into target/ray-venv and
//! named by env `SERVE_GUARD_RAY_VENV`).
//!
//! Each server runs inside a test namespace (only the network namespace is entered, see
//! [`Netns::command`]) in a process group of its own, so [`Drop`] can stop Ray's whole process
//! tree (driver, GCS, raylet, workers) without touching anything else on the machine: SIGTERM to
//! the group, a bounded wait, then SIGKILL to the group.

use crate::netns::Netns;
use crate::probe;
use crate::workspace_root;
use serde::Deserialize;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Env var naming the venv (set by `cargo xtask test|demo`).
pub const VENV_ENV: &str = "SERVE_GUARD_RAY_VENV";
/// Ray Serve's default HTTP port, as in production (a port XDP protects).
pub const SERVE_HTTP_PORT: u16 = 8000;
/// Ray Serve's default gRPC port (the other port XDP protects); the test gRPC server uses it.
pub const SERVE_GRPC_PORT: u16 = 9000;
/// The app's route prefix (see tests/python/serve_app.py).
pub const ROUTE: &str = "/echo";
/// gRPC health service name the test server reports SERVING for (see grpc_health_server.py).
pub const GRPC_SERVICE: &str = "serve-guard.test.Echo";

/// Ray on 2 busy cores: ~15 s to a ready app when idle, much more while others compile.
pub const RAY_READY: Duration = Duration::from_secs(180);
/// The gRPC server is one Python process.
pub const GRPC_READY: Duration = Duration::from_secs(30);
/// SIGTERM to an empty process group: Serve and Ray shut down in ~5 s.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// After SIGKILL, until the kernel has reaped the group.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Between readiness probes: Ray answers slowly while starting; no need to hurry it.
const READY_POLL: Duration = Duration::from_millis(250);
/// One readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of a server's log shown in an error.
const LOG_TAIL_LINES: usize = 40;
/// A gRPC health check call (the script's own deadline is 10 s).
const GRPC_CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RayError {
    #[error("no Python venv with Ray Serve at {0} (run `cargo xtask setup`, or set {VENV_ENV})")]
    NoVenv(PathBuf),
    #[error("starting {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} exited before it was ready ({status}); log tail:\n{log}")]
    Exited {
        what: &'static str,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{what} not ready after {timeout:?}: {last}; log tail:\n{log}")]
    NotReady {
        what: &'static str,
        timeout: Duration,
        last: String,
        log: String,
    },
    #[error("gRPC client: {0}")]
    GrpcClient(String),
    #[error("temporary directory: {0}")]
    TempDir(#[source] io::Error),
}

/// The venv holding the pinned Ray Serve: `$SERVE_GUARD_RAY_VENV`, else target/ray-venv.
pub fn venv_dir() -> PathBuf {
    std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("ray-venv"))
}

/// The venv's interpreter, checked to exist.
pub fn python() -> Result<PathBuf, RayError> {
    let py = venv_dir().join("bin").join("python");
    if py.exists() {
        Ok(py)
    } else {
        Err(RayError::NoVenv(venv_dir()))
    }
}

/// A script under tests/python.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// A Python server process in a namespace, in its own process group, stopped on drop.
#[derive(Debug)]
struct PyServer {
    what: &'static str,
    child: Child,
    log_path: PathBuf,
    /// Holds the log (and, for Ray, its session directory) until the processes are gone.
    dir: TempDir,
}

impl PyServer {
    /// `args` gets the server's own temporary directory (for Ray's session files).
    fn spawn(
        what: &'static str,
        ns: &Netns,
        script_name: &str,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Result<Self, RayError> {
        let python = python()?;
        // Short path: Ray puts Unix sockets under its temp dir (107-byte sun_path limit).
        let dir = tempfile::Builder::new()
            .prefix("sgpy")
            .tempdir_in("/tmp")
            .map_err(RayError::TempDir)?;
        let log_path = dir.path().join("server.log");
        let log = File::create(&log_path).map_err(RayError::TempDir)?;
        let log_err = log.try_clone().map_err(RayError::TempDir)?;
        let mut cmd: Command = ns.command(&python);
        cmd.arg(script(script_name))
            .args(args(dir.path()))
            .current_dir(dir.path())
            .env("PYTHONUNBUFFERED", "1")
            // Ray must not phone home or look for a cluster of the developer's.
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .env_remove("RAY_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        process::terminate_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|source| RayError::Spawn { what, source })?;
        Ok(PyServer {
            what,
            child,
            log_path,
            dir,
        })
    }

    fn pgid(&self) -> libc::pid_t {
        // process_group(0) made the child the leader of a group with its own pid.
        self.child.id() as libc::pid_t
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Polls `ready` until it says yes, the process exits, or `timeout` passes.
    fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<(), String>,
    ) -> Result<(), RayError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(RayError::Exited {
                    what: self.what,
                    status,
                    log: self.log_tail(),
                });
            }
            let last = match ready() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(RayError::NotReady {
                    what: self.what,
                    timeout,
                    last,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// Stops the server and everything it started. The leader gets SIGTERM first: Ray's driver
    /// then shuts Serve and Ray down in order (SIGTERM to the whole group would kill the raylet
    /// under it and leave the driver waiting). Ray's workers run in process groups of their own,
    /// so what is left after the grace period is killed by PID from a snapshot of the leader's
    /// process tree, plus the group.
    fn stop(&mut self) {
        let pgid = self.pgid();
        let tree = process::Tree::of(pgid);
        process::signal(pgid, libc::SIGTERM);
        if self.wait_gone(&tree, STOP_GRACE) {
            return;
        }
        eprintln!(
            "warning: {} (pid {pgid}) still running {STOP_GRACE:?} after SIGTERM; killing",
            self.what
        );
        tree.kill();
        signal_group(pgid, libc::SIGKILL);
        if !self.wait_gone(&tree, KILL_GRACE) {
            eprintln!("warning: {} (pid {pgid}) survived SIGKILL", self.what);
        }
    }

    /// Waits until the leader, its group and every process of `tree` are gone.
    fn wait_gone(&mut self, tree: &process::Tree, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Reap the leader: a zombie leader would keep the group "alive".
            let _ = self.child.try_wait();
            if !group_alive(self.pgid()) && !tree.any_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(crate::limits::POLL_INTERVAL);
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.stop();
        // `dir` (log, Ray session) is removed after this, once nothing writes into it.
        let _ = &self.dir;
    }
}

pub(crate) fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain syscall; a negative pid addresses only the group we created.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// True while a live (non-zombie) process is in group `pgid`. Reads /proc rather than kill(0):
/// reparented zombies would count as alive there until init reaps them.
pub fn group_alive(pgid: libc::pid_t) -> bool {
    process::all().iter().any(|p| p.pgrp == pgid && !p.zombie)
}

/// Processes as /proc shows them: enough to find a server's whole tree and to kill exactly it.
pub mod process {
    /// One /proc/PID/stat line, the fields used here.
    #[derive(Debug, Clone, Copy)]
    pub struct Stat {
        pub pid: libc::pid_t,
        pub ppid: libc::pid_t,
        pub pgrp: libc::pid_t,
        pub zombie: bool,
        /// Start time since boot (clock ticks): with the pid, names one process even if the
        /// pid is reused later.
        pub start: u64,
    }

    pub fn stat(pid: libc::pid_t) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime ...; comm may
        // hold spaces and parentheses, so split after the last ')'.
        let (_, rest) = text.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(Stat {
            pid,
            zombie: *f.first()? == "Z",
            ppid: f.get(1)?.parse().ok()?,
            pgrp: f.get(2)?.parse().ok()?,
            start: f.get(19)?.parse().ok()?,
        })
    }

    pub fn all() -> Vec<Stat> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .filter_map(stat)
            .collect()
    }

    /// The child gets SIGTERM if the thread that spawned it dies: a test process killed
    /// without unwinding (Ctrl-C) still stops its servers, which shut down cleanly on SIGTERM.
    pub fn terminate_with_parent(cmd: &mut std::process::Command) {
        // SAFETY: prctl(2) is async-signal-safe and allocates nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    pub fn signal(pid: libc::pid_t, sig: libc::c_int) {
        // SAFETY: plain syscall on a pid of a process this test started (see callers).
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// A process and all its descendants at one moment.
    #[derive(Debug)]
    pub struct Tree(Vec<Stat>);

    impl Tree {
        pub fn of(root: libc::pid_t) -> Tree {
            let procs = all();
            let mut tree: Vec<Stat> = procs.iter().filter(|p| p.pid == root).copied().collect();
            let mut i = 0;
            while i < tree.len() {
                let parent = tree[i].pid;
                tree.extend(procs.iter().filter(|p| p.ppid == parent).copied());
                i += 1;
            }
            Tree(tree)
        }

        /// Still running: the same pid with the same start time, not a zombie.
        fn alive(p: &Stat) -> bool {
            stat(p.pid).is_some_and(|now| now.start == p.start && !now.zombie)
        }

        pub fn any_alive(&self) -> bool {
            self.0.iter().any(Self::alive)
        }

        /// SIGKILL to every member still running (checked by start time, so never a stranger
        /// that reused a pid).
        pub fn kill(&self) {
            for p in self.0.iter().filter(|p| Self::alive(p)) {
                signal(p.pid, libc::SIGKILL);
            }
        }
    }
}

/// Ray Serve with the echo app (tests/python/serve_app.py) in a namespace.
#[derive(Debug)]
pub struct RayServe {
    server: PyServer,
    ns: Netns,
    port: u16,
}

impl RayServe {
    /// Starts Ray and Serve's HTTP proxy on `bind`:[`SERVE_HTTP_PORT`] inside `ns` and waits
    /// until the app answers (`GET /-/routes` lists [`ROUTE`] and `GET /echo/` is 200), bounded
    /// by [`RAY_READY`]. Bind 0.0.0.0 so the raw port is reachable (absent XDP) from clients.
    pub fn start(ns: &Netns, bind: IpAddr) -> Result<Self, RayError> {
        Self::start_on(ns, bind, SERVE_HTTP_PORT)
    }

    pub fn start_on(ns: &Netns, bind: IpAddr, port: u16) -> Result<Self, RayError> {
        let mut server = PyServer::spawn("Ray Serve", ns, "serve_app.py", |dir| {
            vec![
                "--host".into(),
                bind.to_string(),
                "--port".into(),
                port.to_string(),
                "--temp-dir".into(),
                dir.join("ray").display().to_string(),
            ]
        })?;
        let local = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        server.wait_ready(RAY_READY, || {
            ns.run(|| app_ready(local)).map_err(|e| e.to_string())?
        })?;
        Ok(RayServe {
            server,
            ns: ns.clone(),
            port,
        })
    }

    /// Serve's HTTP port inside the namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The upstream URL for the agent's `[public] upstream` (the agent runs in the same namespace).
    pub fn upstream_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The namespace Serve runs in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The driver's output so far (Serve's and the replicas' logs are forwarded to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.server.log_path).unwrap_or_default()
    }

    /// Ray's whole process tree now (driver, GCS, raylet, workers): all gone once this is
    /// dropped.
    pub fn process_tree(&self) -> process::Tree {
        process::Tree::of(self.server.pgid())
    }
}

/// One readiness probe from inside the namespace.
fn app_ready(addr: SocketAddr) -> Result<(), String> {
    let routes = probe::here::http_request(addr, "/-/routes", &[], PROBE_TIMEOUT)
        .map_err(|e| format!("GET /-/routes: {e}"))?;
    let listed: serde_json::Value = serde_json::from_slice(&routes.body)
        .map_err(|e| format!("GET /-/routes: {} {e}", routes.status))?;
    if listed.get(ROUTE).is_none() {
        return Err(format!("GET /-/routes lists no {ROUTE} yet: {listed}"));
    }
    // Routes are published before the replica is up; the app is ready when it answers.
    let echo = probe::here::http_request(addr, &format!("{ROUTE}/"), &[], PROBE_TIMEOUT)
        .map_err(|e| format!("GET {ROUTE}/: {e}"))?;
    if echo.status != 200 {
        return Err(format!("GET {ROUTE}/: status {}", echo.status));
    }
    Ok(())
}

/// grpcio's health service (tests/python/grpc_health_server.py) in a namespace: plaintext HTTP/2.
#[derive(Debug)]
pub struct GrpcHealthServer {
    server: PyServer,
    addr: SocketAddr,
}

impl GrpcHealthServer {
    pub fn start(ns: &Netns, listen: SocketAddr) -> Result<Self, RayError> {
        let mut server =
            PyServer::spawn("gRPC health server", ns, "grpc_health_server.py", |_| {
                vec!["--listen".into(), listen.to_string()]
            })?;
        let mut probe_addr = listen;
        if probe_addr.ip().is_unspecified() {
            probe_addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        server.wait_ready(GRPC_READY, || {
            let check =
                grpc_health_check_in(ns, probe_addr, None, None).map_err(|e| e.to_string())?;
            if check.status.as_deref() == Some("SERVING") {
                Ok(())
            } else {
                Err(format!("health check answered {check:?}"))
            }
        })?;
        Ok(GrpcHealthServer {
            server,
            addr: listen,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream URL for the agent's `[public] grpc_upstream`.
    pub fn upstream_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.server.log_path).unwrap_or_default()
    }

    /// The server's process tree now: gone once this is dropped.
    pub fn process_tree(&self) -> process::Tree {
        process::Tree::of(self.server.pgid())
    }
}

/// What one `grpc.health.v1.Health/Check` call got (see grpc_health_check.py).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GrpcCheck {
    /// gRPC status name: "OK", "UNAUTHENTICATED", ...
    pub code: String,
    /// Numeric gRPC status (16 = UNAUTHENTICATED).
    pub code_value: u32,
    pub details: Option<String>,
    /// Health status when the call succeeded ("SERVING").
    pub status: Option<String>,
}

/// TLS settings for [`grpc_health_check_in`].
#[derive(Debug, Clone)]
pub struct GrpcTls<'a> {
    pub ca_file: &'a Path,
    pub server_name: &'a str,
}

/// One health check from namespace `ns` to `target` with a real gRPC client (grpcio), optionally
/// carrying `authorization: Bearer <token read from token_file>` and over TLS.
pub fn grpc_health_check_in(
    ns: &Netns,
    target: SocketAddr,
    token_file: Option<&Path>,
    tls: Option<GrpcTls<'_>>,
) -> Result<GrpcCheck, RayError> {
    let mut cmd = ns.command(python()?);
    cmd.arg(script("grpc_health_check.py"))
        .arg("--target")
        .arg(target.to_string())
        .arg("--service")
        .arg(GRPC_SERVICE)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    if let Some(file) = token_file {
        cmd.arg("--token-file").arg(file);
    }
    if let Some(tls) = tls {
        cmd.arg("--tls")
            .arg("--ca-file")
            .arg(tls.ca_file)
            .arg("--server-name")
            .arg(tls.server_name);
    }
    let out = output_bounded(&mut cmd, GRPC_CALL_TIMEOUT)?;
    if !out.status.success() {
        return Err(RayError::GrpcClient(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .map_err(|e| RayError::GrpcClient(format!("bad output {line:?}: {e}")))
}

/// Runs `cmd` to completion in a process group of its own, killing the group after `timeout`.
fn output_bounded(cmd: &mut Command, timeout: Duration) -> Result<std::process::Output, RayError> {
    let what = "gRPC client";
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RayError::Spawn { what, source })?;
    let pgid = child.id() as libc::pid_t;
    // wait_with_output blocks; a watchdog thread kills the group if it overruns.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            signal_group(pgid, libc::SIGKILL);
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    if killed {
        return Err(RayError::GrpcClient(format!(
            "no answer within {timeout:?}"
        )));
    }
    out.map_err(|source| RayError::Spawn { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_server_answers_in_its_namespace_and_stops_with_its_group() {
        let ns = Netns::new("g").unwrap();
        let listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), SERVE_GRPC_PORT);
        let server = GrpcHealthServer::start(&ns, listen).unwrap();
        let check = grpc_health_check_in(&ns, listen, None, None).unwrap();
        assert_eq!(check.code, "OK");
        assert_eq!(check.status.as_deref(), Some("SERVING"));
        // The server lives in the namespace only: the host's loopback has no such listener
        // (unless something else on the host uses the port, which the namespace cannot see).
        let tree = server.process_tree();
        drop(server);
        assert!(!tree.any_alive(), "a server process survived the drop");
    }
}
