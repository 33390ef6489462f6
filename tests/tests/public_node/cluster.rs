//! A cluster of two nodes sharing one token source (issue 9): two server namespaces on one
//! segment, each with a Serve stand-in on 8000 and its own agent in public mode. Node A reads the
//! token from a Kubernetes-Secret-style mount (`token -> ..data/token`, `..data` swapped to a new
//! timestamped directory on every change, mode 0440); node B gets Ansible-style copies (a temp
//! file renamed over its own 0600 file). Every rollout writes the same text to both.
//!
//! One client outside the VPC alternates between the nodes (IPv4 and IPv6, bearer and cookie):
//! - with one token it gets 200 on both;
//! - a rolling rotation (add the new token first everywhere, switch the client, remove the old
//!   one) gives it zero non-200 answers;
//! - the removed token is refused on both nodes within [`APPLY_BOUND`] (polled);
//! - an invalid rollout (an emptied file) keeps the tokens in force, is counted in /metrics and
//!   logged without the token;
//! - SIGHUP keeps both agents serving and logs the reload;
//! - `token rotate` on the Secret-fed node says the file is managed elsewhere and changes nothing.

use anyhow::{Context as _, Result, bail, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::netns::Netns;
use serve_guard_tests::probe::{self, HttpResponse};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{Host, IFACE, Ip, Topology};
use serve_guard_tests::{limits, wait_for};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where each node's proxy listens (the agent's default port).
const PROXY_PORT: u16 = 8443;
/// Ray Serve's HTTP port: the stand-in listens here, the proxy forwards here.
const SERVE_PORT: u16 = 8000;
/// The promise: a token file change applies to new requests within a second.
const APPLY_BOUND: Duration = Duration::from_secs(1);
/// Safety bound on the background client, whatever happens to the test.
const PROBER_MAX: Duration = Duration::from_secs(120);
/// Requests the client makes in a phase before the test moves on (per phase, both nodes).
const PHASE_REQUESTS: u64 = 8;
/// The agents' metrics endpoint (default), inside each node's namespace.
const METRICS: &str = "127.0.0.1:9464";
const COOKIE: &str = "SERVE_TOKEN";

/// Test tokens (base64url, 43 characters like generated ones).
const T1: &str = "clusterTokenOne_aaaaaaaaaaaaaaaaaaaaaaaaaaa";
const T2: &str = "clusterTokenTwo_bbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A Kubernetes Secret volume as the kubelet lays it out and updates it.
struct SecretMount {
    dir: PathBuf,
    generation: u32,
}

impl SecretMount {
    fn new(dir: PathBuf, text: &str) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut mount = SecretMount { dir, generation: 0 };
        mount.publish(text)?;
        symlink("..data/token", mount.dir.join("token"))?;
        Ok(mount)
    }

    fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// A new timestamped directory, `..data` swapped to it by rename, the old one removed.
    fn publish(&mut self, text: &str) -> Result<()> {
        let old = self.dir.join(format!("..gen{}", self.generation));
        self.generation += 1;
        let name = format!("..gen{}", self.generation);
        let new = self.dir.join(&name);
        std::fs::create_dir(&new)?;
        std::fs::write(new.join("token"), text)?;
        // The kubelet applies `defaultMode`; 0440 is what the docs tell operators to set.
        std::fs::set_permissions(new.join("token"), std::fs::Permissions::from_mode(0o440))?;
        symlink(&name, self.dir.join("..data_tmp"))?;
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data"))?;
        if old.exists() {
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    }
}

/// Ansible's `copy`: a temp file in the same directory, renamed over the target.
fn ansible_copy(target: &Path, text: &str) -> Result<()> {
    let tmp = target.with_extension("ansible-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

/// One node: its namespace (from the topology), the Serve stand-in and the agent.
struct Node {
    name: &'static str,
    host: Host,
    agent: Agent,
    _serve: HttpServer,
}

impl Node {
    fn start(name: &'static str, host: Host, token_file: &Path) -> Result<Node> {
        let serve = HttpServer::start(&host.ns, &[SERVE_PORT])?;
        let mut public = toml::Table::new();
        // Dual stack: the client alternates between IPv4 and IPv6.
        public.insert("listen".into(), format!("[::]:{PROXY_PORT}").into());
        public.insert("token_file".into(), token_file.display().to_string().into());
        let cfg = AgentConfig::public(&[IFACE])
            .cidrs(&Topology::vpc_cidrs())
            .set("public", public);
        let agent = Agent::start(&host.ns, cfg).with_context(|| format!("starting node {name}"))?;
        Ok(Node {
            name,
            host,
            agent,
            _serve: serve,
        })
    }

    fn proxy(&self, ip: Ip) -> SocketAddr {
        self.host.sock(ip, PROXY_PORT)
    }

    fn token_reload_errors(&self) -> Result<u64> {
        let resp = probe::http_request(&self.host.ns, METRICS.parse()?, "/metrics", &[])?;
        let text = resp.body_text();
        text.lines()
            .find_map(|l| l.strip_prefix("serve_guard_token_reload_errors_total "))
            .with_context(|| format!("node {}: no token reload counter in\n{text}", self.name))?
            .trim()
            .parse()
            .context("the token reload counter")
    }
}

/// How a request carries the token.
#[derive(Clone, Copy, Debug)]
enum Carrier {
    Bearer,
    Cookie,
}

impl Carrier {
    /// The request header that carries `token`.
    fn header(self, token: &str) -> (&'static str, String) {
        match self {
            Carrier::Bearer => ("Authorization", format!("Bearer {token}")),
            Carrier::Cookie => ("Cookie", format!("{COOKIE}={token}")),
        }
    }
}

fn request(
    client: &Netns,
    addr: SocketAddr,
    token: &str,
    carrier: Carrier,
) -> Result<HttpResponse> {
    let (name, value) = carrier.header(token);
    Ok(probe::http_request(client, addr, "/", &[(name, &value)])?)
}

/// The client, in the background: alternates between the nodes (and families and carriers) with
/// whatever token it is told to use, and records every answer per node.
struct Prober {
    token: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    /// (node, status) -> count; status 0 for a request that failed below HTTP.
    seen: Arc<Mutex<BTreeMap<(usize, u16), u64>>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Prober {
    fn start(client: &Netns, nodes: [&Node; 2], token: &str) -> Result<Prober> {
        let token = Arc::new(Mutex::new(token.to_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let targets: Vec<[SocketAddr; 2]> = nodes
            .iter()
            .map(|n| [n.proxy(Ip::V4), n.proxy(Ip::V6)])
            .collect();
        let thread = {
            let (token, stop, seen) = (token.clone(), stop.clone(), seen.clone());
            client.spawn(move || {
                let started = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < PROBER_MAX {
                    let node = i % 2;
                    let addr = targets[node][(i / 2) % 2];
                    let carrier = if (i / 4).is_multiple_of(2) {
                        Carrier::Bearer
                    } else {
                        Carrier::Cookie
                    };
                    let (name, value) = carrier.header(&token.lock().unwrap());
                    let status =
                        probe::here::http_request(addr, "/", &[(name, &value)], limits::PROBE_IO)
                            .map_or(0, |r| r.status);
                    *seen.lock().unwrap().entry((node, status)).or_insert(0) += 1;
                    i += 1;
                }
            })?
        };
        Ok(Prober {
            token,
            stop,
            seen,
            thread: Some(thread),
        })
    }

    fn switch_to(&self, token: &str) {
        *self.token.lock().unwrap() = token.to_owned();
    }

    fn total(&self, node: usize) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|(_, c)| c)
            .sum()
    }

    /// Lets the client make at least `n` more requests to each node.
    fn run_for(&self, n: u64) -> Result<()> {
        let target = [self.total(0) + n, self.total(1) + n];
        wait_for("the client's requests", limits::CLI, || {
            Ok(self.total(0) >= target[0] && self.total(1) >= target[1])
        })
    }

    /// Stops the client; every answer must have been a 200, and both nodes must have answered.
    fn finish(mut self, what: &str) -> Result<BTreeMap<(usize, u16), u64>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
        }
        let seen = self.seen.lock().unwrap().clone();
        let bad: Vec<_> = seen.iter().filter(|((_, s), _)| *s != 200).collect();
        ensure!(
            bad.is_empty(),
            "{what}: the client got non-200 answers: {seen:?}"
        );
        ensure!(
            seen.contains_key(&(0, 200)) && seen.contains_key(&(1, 200)),
            "{what}: a node was never asked: {seen:?}"
        );
        Ok(seen)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls until `token` gets `want` on both nodes, over both families and carriers, within
/// [`APPLY_BOUND`]; returns how long it took.
fn wait_both(client: &Netns, nodes: [&Node; 2], token: &str, want: u16) -> Result<Duration> {
    let started = Instant::now();
    wait_for(
        &format!("both nodes to answer {want} to the token"),
        APPLY_BOUND,
        || {
            for node in nodes {
                for ip in Ip::BOTH {
                    for carrier in [Carrier::Bearer, Carrier::Cookie] {
                        if request(client, node.proxy(ip), token, carrier)?.status != want {
                            return Ok(false);
                        }
                    }
                }
            }
            Ok(true)
        },
    )?;
    Ok(started.elapsed())
}

#[test]
fn two_nodes_share_one_token_source_and_rotate_without_a_401() -> Result<()> {
    let topo = Topology::new()?;
    let second = topo.add_server()?;
    let dir = tempfile::Builder::new()
        .prefix("sg-cluster-")
        .tempdir()
        .context("creating the shared token directory")?;
    let mut secret = SecretMount::new(dir.path().join("secret"), &format!("{T1}\n"))?;
    let secret_file = secret.token_file();
    let copy = dir.path().join("node-b/token");
    std::fs::create_dir_all(copy.parent().context("the copy's directory")?)?;
    ansible_copy(&copy, &format!("# rolled out by config management\n{T1}\n"))?;
    let mut rollout = |text: &str| -> Result<()> {
        secret.publish(text)?;
        ansible_copy(&copy, text)
    };

    let a = Node::start("A", topo.server.clone(), &secret_file)?;
    let b = Node::start("B", second, &copy)?;
    let client = &topo.outside.ns;
    let nodes = [&a, &b];

    // 1. One token: 200 on both nodes, whichever the client asks.
    let prober = Prober::start(client, nodes, T1)?;
    prober.run_for(PHASE_REQUESTS)?;

    // 2. Rolling rotation: the new token first everywhere, then the client moves, then the old
    //    one goes. The client never sees anything but 200.
    rollout(&format!("{T2}\n{T1}\n"))?;
    let added = wait_both(client, nodes, T2, 200)?;
    prober.run_for(PHASE_REQUESTS)?;
    prober.switch_to(T2);
    prober.run_for(PHASE_REQUESTS)?;
    rollout(&format!("# rotated\n{T2}\n"))?;
    // 3. The removed token is refused on both nodes, bearer and cookie.
    let revoked = wait_both(client, nodes, T1, 401)?;
    prober.run_for(PHASE_REQUESTS)?;
    let seen = prober.finish("rolling rotation")?;
    eprintln!(
        "rotation: new token accepted on both nodes after {added:?}, old one refused after {revoked:?}; client answers {seen:?}"
    );

    // 4. An invalid rollout (an emptied file) changes nothing, is counted and logged.
    let prober = Prober::start(client, nodes, T2)?;
    let before = [a.token_reload_errors()?, b.token_reload_errors()?];
    rollout("# emptied by mistake\n")?;
    wait_for(
        "both nodes to count the invalid token file",
        limits::CLI,
        || Ok(a.token_reload_errors()? > before[0] && b.token_reload_errors()? > before[1]),
    )?;
    prober.run_for(PHASE_REQUESTS)?;
    ensure!(
        request(client, a.proxy(Ip::V4), T1, Carrier::Bearer)?.status == 401,
        "the invalid file brought the removed token back"
    );
    for node in nodes {
        let logs = node.agent.logs();
        ensure!(
            logs.contains("holds no token") && logs.contains("the tokens in force stay"),
            "node {}: the invalid token file is not logged:\n{logs}",
            node.name
        );
        ensure!(
            !logs.contains(T1) && !logs.contains(T2),
            "node {}: a token is in the log",
            node.name
        );
    }
    rollout(&format!("{T2}\n"))?;

    // 5. SIGHUP: both agents re-read their inputs, log it and keep serving.
    let mut a = a;
    let mut b = b;
    let pids = [a.agent.pid(), b.agent.pid()];
    for node in [&mut a, &mut b] {
        node.agent.signal(libc::SIGHUP)?;
    }
    for node in [&a, &b] {
        wait_for("the SIGHUP reload to be logged", limits::CLI, || {
            Ok(node.agent.logs().contains("SIGHUP: token file"))
        })
        .with_context(|| format!("node {}:\n{}", node.name, node.agent.logs()))?;
    }
    prober.run_for(PHASE_REQUESTS)?;
    prober.finish("SIGHUP and the invalid file")?;
    for node in [&mut a, &mut b] {
        ensure!(
            node.agent.is_running(),
            "node {} stopped on SIGHUP:\n{}",
            node.name,
            node.agent.logs()
        );
    }
    ensure!(
        [a.agent.pid(), b.agent.pid()] == pids,
        "an agent was restarted"
    );

    // 6. The CLI leaves a token file managed elsewhere alone.
    let out = a.agent.cli(&["token", "rotate"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("managed elsewhere") && out.stdout.is_empty(),
        "token rotate on a Secret: {} {stderr}",
        out.status
    );
    let now = std::fs::read_to_string(&secret_file)?;
    if now != format!("{T2}\n") {
        bail!("token rotate changed the Secret: {now:?}");
    }
    Ok(())
}
