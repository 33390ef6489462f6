//! `--proxy`: the agent's token proxy against nginx doing the same bearer check, both in front of
//! the same fast upstream (nginx answering `200 ok`), in one namespace created here.
//!
//! Pinning: the proxy under test (the agent and its proxy process, started on that CPU so that
//! the proxy sizes its runtime for it, as it would under systemd's `CPUAffinity=`; or nginx's
//! one worker) and the upstream share CPU [`SERVER_CPU`]; wrk (one thread, [`CONNECTIONS`]
//! keep-alive connections) runs on [`LOAD_CPU`]. Both proxies are measured over plain HTTP and
//! over TLS 1.3 with the same certificate (handshakes amortised over keep-alive connections).
//! Rounds interleave the eight runs (two proxies, four paths), rotating the first, so drift on
//! this shared machine hits both alike; each round gives one ratio per path, and the report
//! gives their mean with a 95% confidence interval.

use anyhow::{Context as _, Result, bail, ensure};
use serve_guard_proxy::test_util::{TestCert, self_signed_cert};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::topology::{IFACE, Topology};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

pub const ROUNDS: usize = 5;
/// Seconds of load per wrk run.
const SECONDS: u64 = 5;
const CONNECTIONS: u32 = 32;
const SERVER_CPU: usize = 1;
const LOAD_CPU: usize = 0;
const UPSTREAM_PORT: u16 = 18_000;
const NGINX_PORT: u16 = 18_001;
const NGINX_TLS_PORT: u16 = 18_002;
const PROXY_PORT: u16 = 18_443;
/// A token of the length the agent generates (43 base64url characters).
const TOKEN: &str = "sgbenchsgbenchsgbenchsgbenchsgbenchsgbench1";
/// Bound on one wrk run beyond its own duration.
const WRK_SLACK: Duration = Duration::from_secs(20);
/// How long nginx gets to stop on SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(20);
/// The proxies compared.
const SERVE_GUARD: &str = "serve-guard";
const NGINX: &str = "nginx";

/// The paths measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// With the token: forwarded to the upstream.
    Allowed,
    /// Without: answered 401 by the proxy itself.
    Unauthorized,
    /// As `Allowed`, over TLS.
    AllowedTls,
    /// As `Unauthorized`, over TLS.
    UnauthorizedTls,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Allowed,
        Case::Unauthorized,
        Case::AllowedTls,
        Case::UnauthorizedTls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Allowed => "allowed (token, forwarded)",
            Case::Unauthorized => "401 (no token)",
            Case::AllowedTls => "TLS, allowed",
            Case::UnauthorizedTls => "TLS, 401",
        }
    }

    fn token(self) -> bool {
        matches!(self, Case::Allowed | Case::AllowedTls)
    }

    fn tls(self) -> bool {
        matches!(self, Case::AllowedTls | Case::UnauthorizedTls)
    }

    /// The port `proxy` serves this case on.
    fn port(self, proxy: &str) -> u16 {
        match (proxy, self.tls()) {
            (SERVE_GUARD, _) => PROXY_PORT,
            (_, false) => NGINX_PORT,
            (_, true) => NGINX_TLS_PORT,
        }
    }
}

/// One proxy's runs on one path, in round order.
pub struct Series {
    pub proxy: &'static str,
    pub path: Case,
    pub rps: Vec<f64>,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    /// CPU time per request of the proxy process (user, system) and of the upstream, in µs.
    pub user_us: Vec<f64>,
    pub sys_us: Vec<f64>,
    pub upstream_us: Vec<f64>,
}

/// User and system CPU seconds a process (all its threads) has used so far.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf only reads a constant.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at field 3.
    let field = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()? / tick)
    };
    Ok((field(11)?, field(12)?))
}

/// The processes measured in a run: the proxy's request-serving process and the upstream's
/// worker.
#[derive(Clone, Copy)]
struct Measured {
    proxy: u32,
    upstream: u32,
}

impl Measured {
    fn cpu(self) -> Result<[f64; 3]> {
        let (user, sys) = cpu_seconds(self.proxy)?;
        let (up_user, up_sys) = cpu_seconds(self.upstream)?;
        Ok([user, sys, up_user + up_sys])
    }
}

/// A process killed (SIGTERM, then SIGKILL) on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_conf(dir: &Path, name: &str, server: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\n\
         daemon off;\n\
         pid {d}/{name}.pid;\n\
         error_log {d}/{name}.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \taccess_log off;\n\
         \tclient_body_temp_path {d}/{name}-body;\n\
         \tproxy_temp_path {d}/{name}-proxy;\n\
         {server}\n\
         }}\n"
    )
}

fn upstream_server() -> String {
    format!(
        "\tserver {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 \"ok\\n\"; }} }}"
    )
}

/// The same job the agent does: exactly `Authorization: Bearer <token>`, else 401; the token
/// not forwarded; the client's address, scheme, port and host told to the upstream in the same
/// headers (what an operator would configure nginx to do in serve-guard's place). Over plain
/// HTTP and over TLS 1.3 with the proxy's certificate.
fn nginx_peer_server(cert: &Path, key: &Path) -> String {
    let (cert, key) = (cert.display(), key.display());
    format!(
        "\tupstream fast {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}\n\
         \tserver {{\n\
         \t\tlisten 127.0.0.1:{NGINX_PORT};\n\
         \t\tlisten 127.0.0.1:{NGINX_TLS_PORT} ssl;\n\
         \t\tssl_certificate {cert};\n\
         \t\tssl_certificate_key {key};\n\
         \t\tssl_protocols TLSv1.3;\n\
         \t\tlocation / {{\n\
         \t\t\tif ($http_authorization != \"Bearer {TOKEN}\") {{ return 401; }}\n\
         \t\t\tproxy_pass http://fast;\n\
         \t\t\tproxy_http_version 1.1;\n\
         \t\t\tproxy_set_header Connection \"\";\n\
         \t\t\tproxy_set_header Authorization \"\";\n\
         \t\t\tproxy_set_header X-Forwarded-For $remote_addr;\n\
         \t\t\tproxy_set_header X-Forwarded-Proto $scheme;\n\
         \t\t\tproxy_set_header X-Forwarded-Port $server_port;\n\
         \t\t\tproxy_set_header X-Real-IP $remote_addr;\n\
         \t\t\tproxy_set_header X-Forwarded-Host $http_host;\n\
         \t\t}}\n\
         \t}}"
    )
}

/// Runs `f` with this thread allowed only on `cpu`, then restores its affinity: whatever `f`
/// spawns starts on `cpu` (and inherits it), from its first instruction.
fn on_cpu<T>(cpu: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // SAFETY: cpu_set_t is plain data; the calls only read and write this thread's mask.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        ensure!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) == 0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) == 0,
            "sched_setaffinity to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
        let result = f();
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &old);
        result
    }
}

/// The CPUs `pid` may run on, as /proc shows them (`1`, `0-1`).
fn cpus_allowed(pid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
        .context("no Cpus_allowed_list")
}

/// The agent's child processes (its proxy process).
fn children(pid: u32) -> Result<Vec<u32>> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let children = std::fs::read_to_string(task?.path().join("children"))?;
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    Ok(all)
}

fn start_nginx(topo: &Topology, dir: &Path, name: &str, server: &str) -> Result<Process> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, nginx_conf(dir, name, server))?;
    let child = on_cpu(SERVER_CPU, || {
        topo.server
            .ns
            .command("nginx")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs nginx-light)")
    })?;
    Ok(Process(child))
}

/// What one wrk run measured.
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: bool,
    /// Proxy user, proxy system and upstream CPU µs per request.
    cpu_us: [f64; 3],
}

fn wrk(topo: &Topology, proxy: &str, case: Case, measured: Measured) -> Result<Run> {
    let mut cmd = topo.server.ns.command("timeout");
    cmd.arg((SECONDS + WRK_SLACK.as_secs()).to_string())
        .args([
            "taskset",
            "-c",
            &LOAD_CPU.to_string(),
            "wrk",
            "-t1",
            "--latency",
        ])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{SECONDS}s"));
    if case.token() {
        cmd.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    let scheme = if case.tls() { "https" } else { "http" };
    cmd.arg(format!("{scheme}://127.0.0.1:{}/", case.port(proxy)));
    let before = measured.cpu()?;
    let out = cmd.output().context("running wrk")?;
    let after = measured.cpu()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && !text.contains("Socket errors"),
        "wrk against {proxy} ({}) failed: {}{}",
        case.name(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .with_context(|| format!("no `{prefix}` in wrk's output:\n{text}"))
    };
    let requests: f64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_owned())
        })
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?
        .parse()
        .context("request count")?;
    ensure!(requests > 0.0, "wrk completed no request:\n{text}");
    let run = Run {
        cpu_us: [0, 1, 2].map(|i| (after[i] - before[i]) * 1e6 / requests),
        rps: field("Requests/sec:")?.parse().context("Requests/sec")?,
        p50_ms: millis(&field("50%")?)?,
        p99_ms: millis(&field("99%")?)?,
        non_2xx: text.contains("Non-2xx or 3xx responses"),
    };
    ensure!(
        run.non_2xx != case.token(),
        "{proxy} on the {} path answered unexpectedly:\n{text}",
        case.name()
    );
    Ok(run)
}

/// wrk's latency with its unit (`812.00us`, `1.44ms`, `1.02s`) in milliseconds.
fn millis(text: &str) -> Result<f64> {
    for (unit, factor) in [("us", 1e-3), ("ms", 1.0), ("s", 1e3)] {
        if let Some(n) = text.strip_suffix(unit) {
            return Ok(n.parse::<f64>().context("latency")? * factor);
        }
    }
    bail!("latency {text:?} has no unit")
}

pub fn compare() -> Result<Vec<Series>> {
    let dir = std::env::temp_dir().join(format!("sg-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_all(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_all(dir: &Path) -> Result<Vec<Series>> {
    let topo = Topology::new()?;
    let token_file: PathBuf = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    // A self-signed certificate for 127.0.0.1, for both proxies.
    let TestCert { cert, key, .. } = self_signed_cert(dir, &["127.0.0.1"])?;

    let upstream = start_nginx(&topo, dir, "upstream", &upstream_server())?;
    let peer = start_nginx(&topo, dir, "peer", &nginx_peer_server(&cert, &key))?;
    let upstream_worker = nginx_worker(&upstream)?;
    let nginx = Measured {
        proxy: nginx_worker(&peer)?,
        upstream: upstream_worker,
    };
    let mut public = toml::Table::new();
    public.insert("listen".into(), format!("127.0.0.1:{PROXY_PORT}").into());
    public.insert(
        "upstream".into(),
        format!("http://127.0.0.1:{UPSTREAM_PORT}").into(),
    );
    public.insert("token_file".into(), token_file.display().to_string().into());
    let config = AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .set("public", public.clone());
    let mut public_tls = public;
    public_tls.insert("tls_cert".into(), cert.display().to_string().into());
    public_tls.insert("tls_key".into(), key.display().to_string().into());
    let config_tls = AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .set("public", public_tls);

    // Warm-up, and a check that every path answers as expected before anything is measured.
    // One agent at a time serves the proxy's port: plain first, then TLS.
    let mut series: Vec<Series> = Vec::new();
    for proxy in [SERVE_GUARD, NGINX] {
        for path in Case::ALL {
            series.push(Series {
                proxy,
                path,
                rps: Vec::new(),
                p50_ms: Vec::new(),
                p99_ms: Vec::new(),
                user_us: Vec::new(),
                sys_us: Vec::new(),
                upstream_us: Vec::new(),
            });
        }
    }
    let mut agent: Option<Agent> = None;
    let mut agent_tls = false;
    let mut serve_guard = nginx;
    for round in 0..=ROUNDS {
        for i in 0..series.len() {
            let k = (round + i) % series.len();
            let (proxy, path) = (series[k].proxy, series[k].path);
            if proxy == SERVE_GUARD && (agent.is_none() || agent_tls != path.tls()) {
                // The old agent stops first: both would listen on PROXY_PORT.
                if let Some(mut old) = agent.take() {
                    let _ = old.stop();
                }
                let config = if path.tls() { &config_tls } else { &config };
                let (started, proxy_process) = start_pinned_agent(&topo, config.clone())?;
                agent = Some(started);
                agent_tls = path.tls();
                serve_guard = Measured {
                    proxy: proxy_process,
                    upstream: upstream_worker,
                };
            }
            let measured = if proxy == SERVE_GUARD {
                serve_guard
            } else {
                nginx
            };
            let run = wrk(&topo, proxy, path, measured)?;
            if round == 0 {
                // Warm-up round: checked, not counted.
                continue;
            }
            eprintln!(
                "  round {round}: {proxy} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, \
                 CPU/request: proxy {:.1} us user + {:.1} us sys, upstream {:.1} us",
                path.name(),
                run.rps,
                run.p50_ms,
                run.p99_ms,
                run.cpu_us[0],
                run.cpu_us[1],
                run.cpu_us[2],
            );
            let one = &mut series[k];
            one.rps.push(run.rps);
            one.p50_ms.push(run.p50_ms);
            one.p99_ms.push(run.p99_ms);
            one.user_us.push(run.cpu_us[0]);
            one.sys_us.push(run.cpu_us[1]);
            one.upstream_us.push(run.cpu_us[2]);
        }
    }
    if let Some(mut agent) = agent {
        let _ = agent.stop();
    }
    Ok(series)
}

/// The agent, started on [`SERVER_CPU`], and its proxy process; checks that both run there
/// only.
fn start_pinned_agent(topo: &Topology, config: AgentConfig) -> Result<(Agent, u32)> {
    let agent = on_cpu(SERVER_CPU, || Agent::start(&topo.server.ns, config))?;
    let pid = agent.pid().context("the agent has no pid")?;
    let proxies = children(pid)?;
    let [proxy] = proxies[..] else {
        bail!(
            "the agent has {} child processes, not its one proxy process",
            proxies.len()
        );
    };
    for p in [pid, proxy] {
        let cpus = cpus_allowed(p)?;
        ensure!(
            cpus == SERVER_CPU.to_string(),
            "process {p} may run on CPUs {cpus}, not only on {SERVER_CPU}"
        );
    }
    Ok((agent, proxy))
}

/// nginx's one worker process (a child of the master `process` started).
fn nginx_worker(process: &Process) -> Result<u32> {
    let deadline = std::time::Instant::now() + STOP_WAIT;
    loop {
        if let [worker] = children(process.0.id())?[..] {
            return Ok(worker);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "nginx {} started no worker",
            process.0.id()
        );
        std::thread::sleep(STOP_POLL);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// serve-guard's and nginx's runs on `path`.
fn pair(series: &[Series], path: Case) -> Result<(&Series, &Series)> {
    let find = |proxy: &str| {
        series
            .iter()
            .find(|s| s.proxy == proxy && s.path == path)
            .context("missing series")
    };
    Ok((find(SERVE_GUARD)?, find(NGINX)?))
}

/// The markdown section, and the figures for the JSON.
pub fn report(series: &[Series]) -> Result<(String, serde_json::Value)> {
    let mut out = String::new();
    writeln!(out, "\n## Token proxy vs nginx\n")?;
    let method = format!(
        "Same job in front of the same upstream (nginx `return 200`): the bearer check, the \
         token not forwarded, X-Forwarded-For/-Proto/-Port/-Host and X-Real-IP set; proxy and \
         upstream pinned to CPU {SERVER_CPU} (serve-guard's agent and proxy process started \
         there, so the proxy runs one single-threaded runtime; nginx with one worker), wrk -t1 \
         -c{CONNECTIONS} ({SECONDS} s per run, keep-alive) on CPU {LOAD_CPU}; plain HTTP and \
         TLS 1.3 (same self-signed certificate; serve-guard: rustls with ring, nginx: OpenSSL); \
         {ROUNDS} interleaved rounds after a warm-up round. Ratio = serve-guard / nginx \
         requests per second in the same round; mean and 95% confidence interval over rounds \
         (Student t)."
    );
    writeln!(out, "{method}\n")?;
    writeln!(
        out,
        "| path | serve-guard req/s | nginx req/s | ratio (mean ± 95% CI) | p50 ms sg / nginx | p99 ms sg / nginx |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    let mut json = Vec::new();
    for path in Case::ALL {
        let (sg, ng) = pair(series, path)?;
        let ratios: Vec<f64> = sg.rps.iter().zip(&ng.rps).map(|(a, b)| a / b).collect();
        let (mean, ci) = super::mean_ci(&ratios);
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {mean:.2} ± {ci:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
            path.name(),
            median(&sg.rps),
            median(&ng.rps),
            median(&sg.p50_ms),
            median(&ng.p50_ms),
            median(&sg.p99_ms),
            median(&ng.p99_ms),
        )?;
        let side = |s: &Series| {
            serde_json::json!({
                "rps": s.rps, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                "cpu_us_per_request": {"user": s.user_us, "sys": s.sys_us, "upstream": s.upstream_us},
            })
        };
        json.push(serde_json::json!({
            "path": path.name(),
            "ratio_rps_mean": mean,
            "ratio_rps_ci95": ci,
            "ratios": ratios,
            "serve_guard": side(sg),
            "nginx": side(ng),
        }));
    }
    writeln!(
        out,
        "\nCPU time per request (µs, median over rounds), from /proc/PID/stat of the process \
         serving the requests (serve-guard's proxy process, nginx's worker) and of the \
         upstream's worker, over each wrk run. Everything in the last three columns runs on the \
         one server CPU, so `ceiling` is the ratio serve-guard would reach with no user-space \
         work at all: nginx's whole time (user + sys + upstream) over serve-guard's sys + \
         upstream time.\n"
    )?;
    writeln!(
        out,
        "| path | serve-guard user | serve-guard sys | nginx user | nginx sys | upstream behind serve-guard / nginx | ceiling |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    for path in Case::ALL {
        let (sg, ng) = pair(series, path)?;
        let ceiling = (median(&ng.user_us) + median(&ng.sys_us) + median(&ng.upstream_us))
            / (median(&sg.sys_us) + median(&sg.upstream_us));
        writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {ceiling:.2} |",
            path.name(),
            median(&sg.user_us),
            median(&sg.sys_us),
            median(&ng.user_us),
            median(&ng.sys_us),
            median(&sg.upstream_us),
            median(&ng.upstream_us),
        )?;
    }
    Ok((out, serde_json::json!({"method": method, "paths": json})))
}
