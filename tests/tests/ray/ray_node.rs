//! Issue 16 ("Tests"): a real Ray head node is private as a whole, and public only through the
//! token proxy (and the ports the operator declares public), while the node's own outbound TCP
//! and UDP keep working.
//!
//! One Ray head (the pinned Ray, started as deploy/ray/cluster.yaml starts it plus
//! `--dashboard-host=0.0.0.0`, with Serve's HAProxy ingress and a two-deployment app) serves
//! every phase, since a Ray start costs 20-40 s on two cores:
//!
//! 1. private, the default config (nothing about ports: `guard = "node"`): from the moment Ray
//!    starts until the ingress has scaled 1 -> 3 -> 1, the outside client tries every port the
//!    server namespace listens on beyond loopback, read from its socket table each round (so
//!    Serve's direct-ingress replica ports are tried while they exist), and never connects; the
//!    inside client reaches the same ports and gets every Serve request through HAProxy (8000)
//!    answered.
//! 2. the node's own outbound TCP and connected UDP to the outside host work; a reply to an
//!    unconnected UDP socket is dropped (that socket would take datagrams from anyone).
//! 3. public mode with `public_ports = ["ssh", "dhcp", "8080"]` (the defaults plus 8080): from
//!    outside only the proxy and 8080 answer; Serve through the proxy (upstream: HAProxy on
//!    8000) works with the token only.
//!
//! Each phase reports its failure and the next still runs; every resource is a Drop guard, and
//! at the end no process Ray started is left in the namespace.

use anyhow::{Context as _, Result, bail, ensure};
use serve_guard_common::Reason;
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe::{self, ConnectError, ProbeError, RequestLoop};
use serve_guard_tests::ray::{self, RayHead, process};
use serve_guard_tests::server::{HttpServer, UdpEchoServer, body_for};
use serve_guard_tests::sweep::{self, Sweep, SweepReport};
use serve_guard_tests::topology::{IFACE, Ip, SERVER_V4, Topology};
use serve_guard_tests::{limits, wait_for};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The token proxy's port in public mode (the recipe's).
const PROXY_PORT: u16 = 8443;
/// A port the operator declares public in phase 3; a plain HTTP server listens on it in the
/// node's namespace for the whole run (so phase 1 shows it closed under the default config).
const DECLARED_PUBLIC_PORT: u16 = 8080;
/// Servers of the outside host, for the node's own outbound traffic.
const OUTSIDE_HTTP_PORT: u16 = 8088;
const OUTSIDE_UDP_PORT: u16 = 5300;
/// The ingress deployment's replicas at the top of the scale.
const MAX_INGRESS: usize = 3;
/// Between two sweep rounds (a round itself lasts about one connect timeout).
const SWEEP_GAP: Duration = Duration::from_millis(200);
/// Between two rounds of the inside client's sweep: it only shows the ports answer there, and
/// each of its rounds connects to every one of them.
const INSIDE_SWEEP_GAP: Duration = Duration::from_secs(1);
/// An address the inside client tried this often must have answered it at least once.
const INSIDE_MIN_TRIES: u64 = 3;
/// Sweep rounds in public mode (nothing changes there: a few rounds show it is steady).
const PUBLIC_SWEEP_ROUNDS: u64 = 3;
/// Between two Serve requests of the inside client.
const REQUEST_GAP: Duration = Duration::from_millis(100);
/// One Serve request (slow on two busy cores while replicas start).
const REQUEST: Duration = Duration::from_secs(30);
/// From the agent's start to its proxy answering.
const PROXY_READY: Duration = Duration::from_secs(30);

/// Everything the phases share. Field order is drop order: agent, Ray, servers, namespaces.
struct Node {
    agent: Option<Agent>,
    ray: Option<RayHead>,
    _published: HttpServer,
    outside_http: HttpServer,
    outside_udp: UdpEchoServer,
    topo: Topology,
    /// The token file of phase 3.
    dir: TempDir,
}

impl Node {
    /// The namespaces, the servers, and the agent with the default config.
    fn setup() -> Result<Node> {
        let topo = Topology::new().context("creating the namespaces")?;
        let published = HttpServer::start(&topo.server.ns, &[DECLARED_PUBLIC_PORT])?;
        let outside_http = HttpServer::start(&topo.outside.ns, &[OUTSIDE_HTTP_PORT])?;
        let outside_udp = UdpEchoServer::start(&topo.outside.ns, &[OUTSIDE_UDP_PORT])?;
        let dir = tempfile::Builder::new().prefix("sg-ray-node-").tempdir()?;
        // The example config's shape: private, the allow-list, nothing about ports.
        let cfg = AgentConfig::private(&[IFACE]).cidrs(&Topology::vpc_cidrs());
        let agent = Agent::start(&topo.server.ns, cfg)?;
        Ok(Node {
            agent: Some(agent),
            ray: None,
            _published: published,
            outside_http,
            outside_udp,
            topo,
            dir,
        })
    }

    fn agent(&self) -> Result<&Agent> {
        self.agent.as_ref().context("no agent running")
    }

    fn ray(&self) -> Result<&RayHead> {
        self.ray.as_ref().context("the Ray head did not start")
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// The filter's packets for `reason`, every family.
    fn packets(&self, reason: Reason) -> Result<u64> {
        Ok(self.agent()?.counters()?.packets_all(reason))
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let out = f().with_context(|| what.to_owned());
    eprintln!("  {what}: {:.1?}", start.elapsed());
    out
}

// 1. Private, default config: Ray starts, the ingress scales 1 -> 3 -> 1; outside, nothing
//    answers; inside, everything does.
fn private(node: &mut Node) -> Result<()> {
    let topo = &node.topo;
    let outside = Sweep::start(
        &topo.outside.ns,
        &topo.server,
        limits::DROPPED_CONNECT,
        SWEEP_GAP,
    )?;
    let inside = Sweep::start(
        &topo.inside.ns,
        &topo.server,
        limits::PROBE_IO,
        INSIDE_SWEEP_GAP,
    )?;
    let guarded_before = node.packets(Reason::DropGuarded)?;
    let ray = timed("ray start + serve start", || {
        Ok(RayHead::start(&topo.server.ns, SERVER_V4)?)
    })?;
    node.ray = Some(ray);
    let head = node.ray()?;
    let topo = &node.topo;
    let app = timed(
        "deploy (1 ingress replica)",
        || Ok(head.deploy_node_app(1)?),
    )?;
    eprintln!("  app: {app:?}");
    let serve = SocketAddr::new(SERVER_V4.into(), ray::SERVE_HTTP_PORT);
    let path = format!("{}/?name=inside", ray::NODE_ROUTE);
    let requests = RequestLoop::start(
        &topo.inside.ns,
        serve,
        &path,
        &[],
        REQUEST_GAP,
        REQUEST,
        |r| ray::node_answer(r, "inside"),
    )?;
    timed("scale up", || Ok(head.deploy_node_app(MAX_INGRESS)?))?;
    let scaled_up = head.direct_ingress_ports()?;
    timed("scale down", || Ok(head.deploy_node_app(1)?))?;
    let scaled_down = head.direct_ingress_ports()?;
    let requests = requests.finish()?;
    let outside = outside.finish()?;
    let inside = inside.finish()?;
    let guarded = node.packets(Reason::DropGuarded)? - guarded_before;

    eprintln!(
        "  outside sweep: {} rounds, {} ports, {} addresses:\n{}",
        outside.rounds,
        outside.ports().len(),
        outside.tally.len(),
        outside.table()
    );
    eprintln!(
        "  inside sweep: {} rounds, {:?}; requests: {} sent, {} answered, by replica {:?}",
        inside.rounds,
        inside.total(),
        requests.sent,
        requests.answered,
        requests.labels
    );
    eprintln!(
        "  direct ingress ports: {scaled_up:?} at {MAX_INGRESS} replicas, {scaled_down:?} at 1; drop_guarded +{guarded}"
    );

    // The run really had what it is about: Ray's control plane, Serve's ports, and one direct
    // ingress port per replica, each tried from outside while it listened.
    ensure!(
        scaled_up.len() == MAX_INGRESS && scaled_down.len() == 1,
        "direct-ingress ports {scaled_up:?} at {MAX_INGRESS} replicas, {scaled_down:?} at 1"
    );
    let must_cover: BTreeSet<u16> = [
        ray::GCS_PORT,
        ray::DASHBOARD_PORT,
        ray::SERVE_HTTP_PORT,
        DECLARED_PUBLIC_PORT,
    ]
    .into_iter()
    .chain(scaled_up.iter().copied())
    .collect();
    let missed: Vec<u16> = must_cover.difference(&outside.ports()).copied().collect();
    ensure!(
        missed.is_empty(),
        "the outside sweep never tried {missed:?}"
    );

    // Outside: not one connection, and every SYN dropped (no reset either: nothing reached a
    // socket).
    let total = outside.total();
    ensure!(
        total.connected == 0,
        "{} connections from outside succeeded, to {:?}",
        total.connected,
        outside.connected()
    );
    ensure!(
        total.timed_out == total.attempts(),
        "outside connects not dropped: {total:?}; {:?}",
        outside.odd
    );
    ensure!(guarded > 0, "no drop_guarded counted for {total:?}");

    // Inside: the same ports answer. A port may close between the table and the connect (a
    // refusal), and a busy Python listener may miss one SYN; but no port is closed to the
    // inside client: each tried a few times answered at least once.
    let unanswered: Vec<String> = inside
        .tally
        .iter()
        .filter(|(a, t)| {
            t.connected == 0 && (t.attempts() >= INSIDE_MIN_TRIES || must_cover.contains(&a.port()))
        })
        .map(|(a, t)| format!("{a} ({}): {t:?}", inside.owner(a.port())))
        .collect();
    ensure!(
        unanswered.is_empty(),
        "ports closed to the inside client: {unanswered:?}"
    );
    let missed: Vec<u16> = must_cover.difference(&inside.ports()).copied().collect();
    ensure!(missed.is_empty(), "the inside sweep never tried {missed:?}");
    ensure!(
        requests.failed == 0 && requests.answered > 0,
        "{} of {} Serve requests from inside failed: {:?}",
        requests.failed,
        requests.sent,
        requests.failures
    );
    Ok(())
}

// 2. The node's own outbound TCP and UDP to a host outside the list.
fn outbound(node: &mut Node) -> Result<()> {
    let topo = &node.topo;
    let (server, outside) = (&topo.server.ns, &topo.outside);
    let replies_before = node.packets(Reason::PassReply)?;
    let guarded_before = node.packets(Reason::DropGuarded)?;
    for ip in Ip::BOTH {
        let http = outside.sock(ip, OUTSIDE_HTTP_PORT);
        let resp = probe::http_request(server, http, "/", &[])
            .with_context(|| format!("{}: HTTP GET from the node to {http}", ip.name()))?;
        ensure!(
            resp.status == 200 && resp.body_text() == body_for(OUTSIDE_HTTP_PORT),
            "{}: GET {http} answered {} {:?}",
            ip.name(),
            resp.status,
            resp.body_text()
        );
        let udp = outside.sock(ip, OUTSIDE_UDP_PORT);
        probe::udp_echo(server, udp, limits::PROBE_IO)
            .with_context(|| format!("{}: connected UDP from the node to {udp}", ip.name()))?;
        // An unconnected socket: the request goes out, the answer is dropped on the way back.
        let sent = node.outside_udp.datagrams(OUTSIDE_UDP_PORT);
        match probe::udp_echo_unconnected(server, udp, limits::DROPPED_CONNECT) {
            Err(ProbeError::Connect(ConnectError::TimedOut(_))) => {}
            other => bail!(
                "{}: an unconnected UDP socket of the node got {other:?} from {udp} (expected its reply dropped)",
                ip.name()
            ),
        }
        ensure!(
            node.outside_udp.datagrams(OUTSIDE_UDP_PORT) == sent + 1,
            "{}: the unconnected socket's request never reached {udp}",
            ip.name()
        );
    }
    ensure!(
        node.outside_http.requests(OUTSIDE_HTTP_PORT) >= 2,
        "the outside HTTP server saw {} requests",
        node.outside_http.requests(OUTSIDE_HTTP_PORT)
    );
    let replies = node.packets(Reason::PassReply)? - replies_before;
    let guarded = node.packets(Reason::DropGuarded)? - guarded_before;
    eprintln!("  pass_reply +{replies}, drop_guarded +{guarded}");
    ensure!(
        replies > 0,
        "no pass_reply counted for the node's own traffic"
    );
    ensure!(
        guarded >= 2,
        "the unconnected UDP replies were not counted drop_guarded (+{guarded})"
    );
    Ok(())
}

// 3. Public mode: only the proxy and the declared public port answer outside; Serve through the
//    proxy, with the token, via HAProxy on 8000.
fn public(node: &mut Node) -> Result<()> {
    node.ray()?;
    let upstream = format!("http://127.0.0.1:{}", ray::SERVE_HTTP_PORT);
    let mut table = toml::Table::new();
    table.insert("listen".into(), format!("0.0.0.0:{PROXY_PORT}").into());
    table.insert("upstream".into(), upstream.into());
    table.insert(
        "token_file".into(),
        node.token_file().display().to_string().into(),
    );
    let cfg = AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .public_ports(&["ssh", "dhcp", &DECLARED_PUBLIC_PORT.to_string()])
        .set("public", table);
    if let Some(mut private) = node.agent.take() {
        private.stop()?;
    }
    node.agent = Some(timed("public agent start", || {
        Agent::start(&node.topo.server.ns, cfg)
    })?);
    let topo = &node.topo;
    let proxy = SocketAddr::new(SERVER_V4.into(), PROXY_PORT);
    let outside = &topo.outside.ns;
    wait_for("the proxy to answer from outside", PROXY_READY, || {
        Ok(probe::http_request(outside, proxy, "/-/healthz", &[]).is_ok_and(|r| r.status == 200))
    })?;

    // Serve's front on the node is HAProxy: the proxy's upstream is the HAProxy ingress.
    let front = topo
        .server
        .ns
        .listeners()?
        .into_iter()
        .find(|l| l.port == ray::SERVE_HTTP_PORT)
        .context("nothing listens on Serve's port")?;
    ensure!(
        front.process.as_deref() == Some("haproxy"),
        "Serve's port {} is owned by {:?}, not HAProxy",
        ray::SERVE_HTTP_PORT,
        front.process
    );

    let swept: SweepReport = sweep::sweep(
        outside,
        &topo.server,
        PUBLIC_SWEEP_ROUNDS,
        limits::DROPPED_CONNECT,
    )?;
    eprintln!(
        "  outside sweep: {} rounds, {} ports:\n{}",
        swept.rounds,
        swept.ports().len(),
        swept.table()
    );
    let open = BTreeSet::from([PROXY_PORT, DECLARED_PUBLIC_PORT]);
    for (addr, t) in &swept.tally {
        if open.contains(&addr.port()) {
            ensure!(
                t.connected == t.attempts(),
                "{addr} ({}) is public but {t:?}",
                swept.owner(addr.port())
            );
        } else {
            ensure!(
                t.timed_out == t.attempts(),
                "{addr} ({}) answered from outside in public mode: {t:?}",
                swept.owner(addr.port())
            );
        }
    }
    let missed: Vec<u16> = open.difference(&swept.ports()).copied().collect();
    ensure!(missed.is_empty(), "the sweep never tried {missed:?}");

    let token = std::fs::read_to_string(node.token_file())?;
    let token = token.lines().next().unwrap_or_default().trim().to_owned();
    ensure!(!token.is_empty(), "the agent wrote no token");
    let path = format!("{}/?name=public", ray::NODE_ROUTE);
    let auth = format!("Bearer {token}");
    let resp = probe::http_request(outside, proxy, &path, &[("Authorization", &auth)])?;
    let replica = ray::node_answer(&resp, "public").map_err(anyhow::Error::msg)?;
    eprintln!("  through the proxy: answered by replica {replica}");
    let resp = probe::http_request(outside, proxy, &path, &[])?;
    ensure!(
        resp.status == 401,
        "no token: {} {}",
        resp.status,
        resp.body_text()
    );
    Ok(())
}

type Phase = fn(&mut Node) -> Result<()>;

#[test]
fn a_ray_node_is_private_as_a_whole_and_public_only_through_the_proxy() {
    let _ray = ray::exclusive();
    let start = Instant::now();
    let mut node = Node::setup().expect("setting up the namespaces and the agent");
    let phases: [(&str, Phase); 4] = [
        ("1 private (default config), Ray scaling", private),
        ("2 outbound (private)", outbound),
        ("3 public", public),
        ("2 outbound (public)", outbound),
    ];
    let mut failed = Vec::new();
    for (name, phase) in phases {
        eprintln!("phase {name} ...");
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| phase(&mut node)));
        match outcome {
            Ok(Ok(())) => eprintln!("phase {name}: ok ({:.1?})", t.elapsed()),
            Ok(Err(e)) => {
                eprintln!("phase {name}: FAILED ({:.1?}): {e:#}", t.elapsed());
                failed.push(name);
            }
            Err(_) => {
                eprintln!("phase {name}: FAILED (panicked)");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        if let Some(agent) = &node.agent {
            eprintln!("---- agent log ----\n{}", agent.logs());
        }
        if let Some(ray) = &node.ray {
            let log = ray.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- ray start (last lines) ----\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }

    // Ray down first, with the agent still in the namespace: then nothing but the agent (and
    // its proxy process) may be left there (Serve's HAProxy outlives `ray stop`; the head's stop
    // ends it by PID).
    let t = Instant::now();
    let agent = node
        .agent
        .as_ref()
        .and_then(Agent::pid)
        .map(|pid| process::Tree::of(pid as libc::pid_t).alive())
        .unwrap_or_default();
    let tree = node.ray.as_ref().map(RayHead::process_tree);
    node.ray.take();
    eprintln!("Ray stopped in {:.1?}", t.elapsed());
    let left: Vec<String> = node
        .topo
        .server
        .ns
        .pids()
        .expect("listing the namespace's processes")
        .into_iter()
        .filter(|p| !agent.contains(p))
        .map(process::describe)
        .collect();
    drop(node);
    assert!(
        tree.is_none_or(|t| !t.any_alive()),
        "a Ray process survived the head's stop"
    );
    assert!(
        left.is_empty(),
        "processes left in the node's namespace: {left:?}"
    );
    eprintln!("ray_node: {:.1?} in all", start.elapsed());
    assert!(failed.is_empty(), "failed phases: {failed:?}");
}
