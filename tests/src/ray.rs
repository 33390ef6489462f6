//! Real Ray Serve (and a real gRPC server) for the end-to-end tests, run from the pinned venv
//! (`tests/python/requirements.txt`, installed by `cargo xtask setup` into target/ray-venv and
//! named by env `SERVE_GUARD_RAY_VENV`):
//! - [`RayServe`]: one driver with Ray and the echo app (tests/python/serve_app.py).
//! - [`RayHead`]: a whole Ray head node as `ray up` starts one (deploy/ray/cluster.yaml), with
//!   Serve's HAProxy ingress and a two-deployment app (tests/python/ray_node_app.py) deployed and
//!   scaled through the dashboard's REST API.
//!
//! Each server runs inside a test namespace (only the network namespace is entered, see
//! [`Netns::command`]) in a process group of its own, so [`Drop`] can stop Ray's whole process
//! tree (driver, GCS, raylet, workers, HAProxy) without touching anything else on the machine:
//! SIGTERM to the leader, a bounded wait, then SIGKILL to what is left of its tree (a whole
//! head: SIGKILL at once, see [`RayHead`]).

use crate::netns::Netns;
use crate::probe;
use crate::workspace_root;
use serde::Deserialize;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
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
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: &'static str,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{what}: {detail}")]
    Api { what: &'static str, detail: String },
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

/// tests/python: the test apps and clients.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// A script under tests/python.
pub fn script(name: &str) -> PathBuf {
    python_dir().join(name)
}

/// A Python server process in a namespace, in its own process group, stopped on drop.
#[derive(Debug)]
struct PyServer {
    what: &'static str,
    child: Child,
    log_path: PathBuf,
    /// How [`PyServer::stop`] goes about it.
    stop_plan: StopPlan,
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
        Self::spawn_program(what, ns, &python, |dir, cmd| {
            cmd.arg(script(script_name)).args(args(dir));
        })
    }

    /// Any program of the venv; `configure` adds its arguments and environment, given the
    /// server's own temporary directory.
    fn spawn_program(
        what: &'static str,
        ns: &Netns,
        program: &Path,
        configure: impl FnOnce(&Path, &mut Command),
    ) -> Result<Self, RayError> {
        // Short path: Ray puts Unix sockets under its temp dir (107-byte sun_path limit).
        let dir = tempfile::Builder::new()
            .prefix("sgpy")
            .tempdir_in("/tmp")
            .map_err(RayError::TempDir)?;
        let log_path = dir.path().join("server.log");
        let log = File::create(&log_path).map_err(RayError::TempDir)?;
        let log_err = log.try_clone().map_err(RayError::TempDir)?;
        let mut cmd: Command = ns.command(program);
        configure(dir.path(), &mut cmd);
        cmd.current_dir(dir.path())
            .env("PYTHONUNBUFFERED", "1")
            // Ray must not phone home or look for a cluster of the developer's.
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .env_remove("RAY_ADDRESS")
            // Explicit, as `ray start` has it by default: with the mode unset, `ray.init()`
            // turns token auth on and writes ~/.ray/auth_token, and every later `ray start` on
            // the machine then finds that token and locks its dashboard (401).
            .env(RAY_AUTH_MODE, RAY_AUTH_DISABLED)
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
            stop_plan: StopPlan::Leader,
            dir,
        })
    }

    fn pgid(&self) -> libc::pid_t {
        // process_group(0) made the child the leader of a group with its own pid.
        self.child.id() as libc::pid_t
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
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

    /// Stops the server and everything it started, as its [`StopPlan`] says. Ray's workers run
    /// in process groups of their own, so what is left after the grace period is killed by PID
    /// from a snapshot of the leader's process tree, plus the group.
    fn stop(&mut self) {
        let pgid = self.pgid();
        let tree = process::Tree::of(pgid);
        if let StopPlan::Leader = self.stop_plan {
            process::signal(pgid, libc::SIGTERM);
            if self.wait_gone(&tree, STOP_GRACE) {
                return;
            }
            eprintln!(
                "warning: {} (pid {pgid}) still running {STOP_GRACE:?} after SIGTERM; killing",
                self.what
            );
        }
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

/// How a [`PyServer`] is stopped.
#[derive(Debug, Clone, Copy)]
enum StopPlan {
    /// SIGTERM to the leader, which shuts the rest down in order (a driver: SIGTERM to the
    /// whole group would kill the raylet under it and leave the driver waiting); SIGKILL to
    /// what is left after [`STOP_GRACE`].
    Leader,
    /// SIGKILL to every process of the tree at once, as `ray stop --force` does: a Ray head
    /// that gets SIGTERM drains the node for up to 30 s first, and SIGTERM to all of it at
    /// once leaves `ray start` waiting that long for a GCS that is gone.
    Kill,
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

    /// `pid name` (the kernel's `comm`), for a message.
    pub fn describe(pid: libc::pid_t) -> String {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        format!("{pid} {}", comm.trim())
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

    /// A process and all its descendants at one moment, with the members of the process groups
    /// they lead: a child whose parent already exited (HAProxy, once Serve's HAProxy manager is
    /// gone) keeps the group of the process that started it. Such a group was made by a
    /// process of the tree (the root's own, or a worker's), so nothing else is in it; the
    /// group of a root that leads none (it shares its parent's) is not included.
    #[derive(Debug)]
    pub struct Tree(Vec<Stat>);

    impl Tree {
        pub fn of(root: libc::pid_t) -> Tree {
            let procs = all();
            let mut tree: Vec<Stat> = procs.iter().filter(|p| p.pid == root).copied().collect();
            let mut i = 0;
            while i < tree.len() {
                let member = tree[i];
                for p in &procs {
                    // A child, or a member of the group this member leads.
                    let related = p.ppid == member.pid || p.pgrp == member.pid;
                    if related && !tree.iter().any(|t| t.pid == p.pid) {
                        tree.push(*p);
                    }
                }
                i += 1;
            }
            Tree(tree)
        }

        /// Pids of the members still running.
        pub fn alive(&self) -> Vec<libc::pid_t> {
            self.0
                .iter()
                .filter(|p| Self::alive_one(p))
                .map(|p| p.pid)
                .collect()
        }

        /// Still running: the same pid with the same start time, not a zombie.
        fn alive_one(p: &Stat) -> bool {
            stat(p.pid).is_some_and(|now| now.start == p.start && !now.zombie)
        }

        pub fn any_alive(&self) -> bool {
            self.0.iter().any(Self::alive_one)
        }

        /// SIGKILL to every member still running (checked by start time, so never a stranger
        /// that reused a pid).
        pub fn kill(&self) {
            for p in self.0.iter().filter(|p| Self::alive_one(p)) {
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

/// Ray's head ports as deploy/ray/cluster.yaml starts the head: GCS.
pub const GCS_PORT: u16 = 6379;
/// The object manager's port in the recipe.
pub const OBJECT_MANAGER_PORT: u16 = 8076;
/// The dashboard (and its Jobs and Serve REST APIs).
pub const DASHBOARD_PORT: u16 = 8265;
/// Serve's direct-ingress HTTP ports: an ingress replica listens on one of them, on every
/// address (ray/serve/_private/constants.py, RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT).
pub const DIRECT_INGRESS_HTTP: RangeInclusive<u16> = 30000..=31000;
/// The two-deployment app of tests/python/ray_node_app.py: its name, route, deployments.
pub const NODE_APP: &str = "node";
pub const NODE_ROUTE: &str = "/node";
pub const NODE_INGRESS: &str = "Ingress";
pub const NODE_GREETER: &str = "Greeter";
/// `serve start`: connecting to Ray, starting the controller, the proxy and HAProxy.
pub const SERVE_START: Duration = Duration::from_secs(180);
/// A deploy or a scale through the dashboard until every replica runs; a scale-down includes
/// Serve's drain of direct-ingress replicas (30 s by default).
pub const APP_SETTLE: Duration = Duration::from_secs(240);
/// One call to the dashboard's REST API.
const API_CALL: Duration = Duration::from_secs(30);

/// A Ray head node in a namespace, started as deploy/ray/cluster.yaml's
/// `head_start_ray_commands` start it, plus `--dashboard-host=0.0.0.0` (Ray's own AWS defaults)
/// and Serve's HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY=1`):
///
/// ```text
/// ray start --head --port=6379 --object-manager-port=8076 --dashboard-host=0.0.0.0
/// serve start --http-host 0.0.0.0 --http-port 8000 --proxy-location EveryNode
/// ```
///
/// `ray start` runs with `--block`, so it is the leader of Ray's process tree (GCS, raylet,
/// dashboard, workers, HAProxy), and it gets SIGTERM if the test process dies (it then shuts
/// Ray down). At drop the whole tree is killed by PID, as `ray stop --force` does (see
/// [`process::Tree`]); HAProxy, which `ray stop --force` leaves running, is in the tree.
/// HAProxy's files go to the head's own temporary directory, not the machine-wide
/// /tmp/haproxy-serve. Apps are deployed and scaled through the dashboard's Serve REST API, as
/// `serve deploy` does.
#[derive(Debug)]
pub struct RayHead {
    server: PyServer,
    ns: Netns,
    node_ip: Ipv4Addr,
    haproxy_dir: PathBuf,
}

impl RayHead {
    /// Starts the head with `node_ip` (an address of the namespace), then Serve, and waits
    /// until Serve's HTTP port (HAProxy) answers.
    pub fn start(ns: &Netns, node_ip: Ipv4Addr) -> Result<Self, RayError> {
        let ray = venv_program("ray")?;
        let mut haproxy_dir = PathBuf::new();
        let mut server = PyServer::spawn_program("Ray head", ns, &ray, |dir, cmd| {
            haproxy_dir = dir.join("haproxy");
            cmd.args([
                "start",
                "--head",
                "--block",
                &format!("--port={GCS_PORT}"),
                &format!("--object-manager-port={OBJECT_MANAGER_PORT}"),
                "--dashboard-host=0.0.0.0",
                &format!("--node-ip-address={node_ip}"),
            ])
            .arg(format!("--temp-dir={}", dir.join("ray").display()));
            head_env(cmd, &haproxy_dir);
        })?;
        server.stop_plan = StopPlan::Kill;
        let log = server.log_path.clone();
        let dashboard = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DASHBOARD_PORT);
        // `ray start` says so once GCS, raylet and dashboard are up; the dashboard answers.
        server.wait_ready(RAY_READY, || {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if !said.contains("Ray runtime started.") {
                return Err("`ray start` has not reported the runtime started".into());
            }
            let r = ns
                .run(|| probe::here::http_request(dashboard, "/api/version", &[], PROBE_TIMEOUT))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("dashboard: {e}"))?;
            match r.status {
                200 => Ok(()),
                s => Err(format!("dashboard /api/version: {s}")),
            }
        })?;
        let head = RayHead {
            server,
            ns: ns.clone(),
            node_ip,
            haproxy_dir,
        };
        head.serve_start()?;
        Ok(head)
    }

    /// `serve start` as the recipe runs it, then waits for Serve's HTTP port to answer (with
    /// no app deployed yet, HAProxy's `/-/healthz` is 503: any HTTP answer will do).
    fn serve_start(&self) -> Result<(), RayError> {
        let what = "serve start";
        let mut cmd = self.ns.command(venv_program("serve")?);
        cmd.args([
            "start",
            "--address",
            &format!("{}:{GCS_PORT}", self.node_ip),
        ])
        .args(["--http-host", "0.0.0.0"])
        .args(["--http-port", &SERVE_HTTP_PORT.to_string()])
        .args(["--proxy-location", "EveryNode"])
        .current_dir(self.server.dir.path())
        .stdin(Stdio::null());
        head_env(&mut cmd, &self.haproxy_dir);
        let out = output_bounded(what, &mut cmd, SERVE_START)?;
        if !out.status.success() {
            return Err(RayError::Failed {
                what,
                status: out.status,
                output: tail(&String::from_utf8_lossy(&out.stderr)),
            });
        }
        let healthz = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), SERVE_HTTP_PORT);
        self.wait(what, SERVE_START, || {
            self.local(|| probe::here::http_request(healthz, "/-/healthz", &[], PROBE_TIMEOUT))
                .map(drop)
        })
    }

    /// Deploys (or re-deploys) the two-deployment app with `ingress_replicas` replicas of its
    /// ingress through `PUT /api/serve/applications/` and waits until the app runs exactly
    /// those replicas (and one greeter), every other replica stopped, and answers through
    /// Serve's HTTP port. The same config with another count is a scale: Serve keeps the
    /// replicas it has.
    pub fn deploy_node_app(&self, ingress_replicas: usize) -> Result<NodeApp, RayError> {
        let what = "deploying the node app";
        let config = serde_json::json!({
            "proxy_location": "EveryNode",
            "http_options": {"host": "0.0.0.0", "port": SERVE_HTTP_PORT},
            "applications": [{
                "name": NODE_APP,
                "route_prefix": NODE_ROUTE,
                "import_path": "ray_node_app:app",
                "runtime_env": {"env_vars": {
                    "PYTHONPATH": python_dir().display().to_string(),
                }},
                "deployments": [{"name": NODE_INGRESS, "num_replicas": ingress_replicas}],
            }],
        });
        let body = config.to_string();
        let dashboard = self.dashboard();
        let r = self
            .local(|| {
                probe::here::http_send(
                    dashboard,
                    "PUT",
                    "/api/serve/applications/",
                    &[("Content-Type", "application/json")],
                    Some(body.as_bytes()),
                    API_CALL,
                )
            })
            .map_err(|detail| RayError::Api { what, detail })?;
        if r.status != 200 {
            return Err(RayError::Api {
                what,
                detail: format!(
                    "PUT /api/serve/applications/: {} {}",
                    r.status,
                    r.body_text()
                ),
            });
        }
        let mut last = None;
        self.wait(what, APP_SETTLE, || {
            let app = self.node_app()?;
            let settled = app.status == "RUNNING"
                && app.running(NODE_INGRESS) == ingress_replicas
                && app.replicas(NODE_INGRESS).len() == ingress_replicas
                && app.running(NODE_GREETER) == 1
                && app.replicas(NODE_GREETER).len() == 1;
            let state = format!("{app:?}");
            last = Some(app);
            if settled { Ok(()) } else { Err(state) }
        })?;
        let front = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), SERVE_HTTP_PORT);
        let path = format!("{NODE_ROUTE}/");
        self.wait(what, APP_SETTLE, || {
            let r = self.local(|| probe::here::http_request(front, &path, &[], PROBE_TIMEOUT))?;
            match r.status {
                200 => Ok(()),
                s => Err(format!("GET {path}: {s} {}", r.body_text())),
            }
        })?;
        Ok(last.expect("set before the wait succeeds"))
    }

    /// The node app as the dashboard reports it now.
    pub fn node_app(&self) -> Result<NodeApp, String> {
        let dashboard = self.dashboard();
        let r = self.local(|| {
            probe::here::http_request(dashboard, "/api/serve/applications/", &[], API_CALL)
        })?;
        if r.status != 200 {
            return Err(format!("GET /api/serve/applications/: {}", r.status));
        }
        let details: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("GET /api/serve/applications/: {e}"))?;
        let app = &details["applications"][NODE_APP];
        let mut replicas = std::collections::BTreeMap::new();
        for (name, deployment) in app["deployments"].as_object().into_iter().flatten() {
            let states = deployment["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["state"].as_str().unwrap_or("?").to_owned())
                .collect();
            replicas.insert(name.clone(), states);
        }
        Ok(NodeApp {
            status: app["status"].as_str().unwrap_or("absent").to_owned(),
            replicas,
        })
    }

    /// Serve's direct-ingress HTTP ports the node listens on now (one per ingress replica).
    pub fn direct_ingress_ports(&self) -> anyhow::Result<std::collections::BTreeSet<u16>> {
        Ok(self
            .ns
            .listeners()?
            .into_iter()
            .map(|l| l.port)
            .filter(|p| DIRECT_INGRESS_HTTP.contains(p))
            .collect())
    }

    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// `ray start`'s output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.server.log_path).unwrap_or_default()
    }

    /// Ray's whole process tree now: all gone once this is dropped.
    pub fn process_tree(&self) -> process::Tree {
        process::Tree::of(self.server.pgid())
    }

    fn dashboard(&self) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DASHBOARD_PORT)
    }

    /// A probe from inside the head's namespace.
    fn local<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, probe::ProbeError> + Send,
    ) -> Result<T, String> {
        self.ns
            .run(f)
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Polls `ready` while the head runs, bounded by `timeout`.
    fn wait(
        &self,
        what: &'static str,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<(), String>,
    ) -> Result<(), RayError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match ready() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(RayError::NotReady {
                    what,
                    timeout,
                    last,
                    log: self.server.log_tail(),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }
}

/// The node app's state: the app's status and each deployment's replica states.
#[derive(Debug, Clone)]
pub struct NodeApp {
    /// `RUNNING`, `DEPLOYING`, ... (`absent` when the app is not there).
    pub status: String,
    pub replicas: std::collections::BTreeMap<String, Vec<String>>,
}

impl NodeApp {
    pub fn replicas(&self, deployment: &str) -> &[String] {
        self.replicas.get(deployment).map_or(&[], Vec::as_slice)
    }

    pub fn running(&self, deployment: &str) -> usize {
        self.replicas(deployment)
            .iter()
            .filter(|s| *s == "RUNNING")
            .count()
    }
}

/// The node app's answer to `GET /node/?name=<name>` checked: the greeting came back through
/// both deployments. Gives the ingress replica that answered.
pub fn node_answer(resp: &probe::HttpResponse, name: &str) -> Result<String, String> {
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.body_text()));
    }
    let body: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("not JSON ({e}): {}", resp.body_text()))?;
    if body["greeting"] != format!("hello {name}").as_str() {
        return Err(format!("unexpected answer {body}"));
    }
    Ok(body["replica"].as_str().unwrap_or("?").to_owned())
}

/// A program of the venv (`ray`, `serve`), checked to exist.
fn venv_program(name: &str) -> Result<PathBuf, RayError> {
    let path = venv_dir().join("bin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(RayError::NoVenv(venv_dir()))
    }
}

/// The environment of every command of a [`RayHead`]: the HAProxy ingress, with its files in
/// `haproxy_dir`; no usage stats; no cluster of the developer's.
fn head_env(cmd: &mut Command, haproxy_dir: &Path) {
    let file = |name: &str| haproxy_dir.join(name).display().to_string();
    cmd.env("RAY_SERVE_ENABLE_HA_PROXY", "1")
        .env("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", file("haproxy.cfg"))
        .env("RAY_SERVE_HAPROXY_SOCKET_PATH", file("admin.sock"))
        .env("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", file(""))
        .env("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", file("server-state"))
        .env(
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
            file("metrics.sock"),
        )
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env("PYTHONUNBUFFERED", "1")
        .env(RAY_AUTH_MODE, RAY_AUTH_DISABLED)
        .env_remove("RAY_ADDRESS");
}

/// Ray's token authentication switch (Ray 2.52+), and the value this kit's Ray always runs with.
const RAY_AUTH_MODE: &str = "RAY_AUTH_MODE";
const RAY_AUTH_DISABLED: &str = "disabled";

/// The last lines of a command's output, for an error.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
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
    let out = output_bounded("gRPC client", &mut cmd, GRPC_CALL_TIMEOUT)?;
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
fn output_bounded(
    what: &'static str,
    cmd: &mut Command,
    timeout: Duration,
) -> Result<std::process::Output, RayError> {
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
        return Err(RayError::Timeout { what, timeout });
    }
    out.map_err(|source| RayError::Spawn { what, source })
}

/// Held by a test for as long as it runs Ray: one Ray at a time in a test binary. Two heads share
/// Ray's session folders under /tmp/ray, and each takes both CPUs while it starts.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static RAY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it has cleaned up by its Drop guards.
    RAY.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
