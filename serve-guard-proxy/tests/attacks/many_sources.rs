//! Many sources (issue 17): thousands of IPv4 addresses and IPv6 /64s flood the proxy with idle,
//! slow (one header byte every 2 s) and handshake-only connections, reconnecting whenever one is
//! closed, while a client with the token sends one request every 0.5 s on a new connection.
//! Every one of its requests must be answered.
//!
//! Each scene runs in a network namespace of its own (unique name, deleted on drop) where
//! 198.18.64.0/18 and fd00:17::/48 are routed to `lo` as local (AnyIP), so a client socket can
//! bind any address in them; the proxy, its upstream and every client thread join it. Only
//! 198.18.0.0/15 and fd00::/8 are used. Needs root (namespaces); skipped otherwise.
//!
//! The CI slice runs N = 10, 100 and 1,000 sources for a few seconds each; the long run
//! (`cargo xtask bench --many-sources`, or `--ignored`) goes to 10,000 and prints the latency
//! table of docs/BENCHMARKS.md.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::report;
use serve_guard_proxy::test_util::*;

/// The proxy's addresses, on `lo` in the scene's namespace.
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
/// The client with the token: its own /24 and /48, outside the flood's.
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
/// The flood's blocks: 64 /24s, and 65,536 /64s of one /48.
const FLOOD_V4: &str = "198.18.64.0/18";
const FLOOD_V6: &str = "fd00:17::/48";
/// How often the client with the token sends a request.
const PERIOD: Duration = Duration::from_millis(500);
/// A request of the client with the token that takes longer than this counts as unanswered.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// The slow flood sends one header byte this often.
const TRICKLE: Duration = Duration::from_secs(2);
/// A flooding client that was closed waits this long before it connects again: the flood is
/// bounded by what the test's own CPUs can drive, not a busy loop against them.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// One scene at a time: each takes the machine's CPUs, and the figures would mix.
static SCENE: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The namespace.

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with AnyIP routes for the flood; deleted on drop.
struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// `None` (and a note) when the test cannot make namespaces.
    fn create() -> Option<Arc<Netns>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("many sources: skipped (network namespaces need root)");
            return None;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "sg-many-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(status.success(), "ip netns add {name}");
        // From here on the namespace is deleted however the test ends.
        let file = File::open(format!("/run/netns/{name}"));
        let ns = Netns {
            name: name.clone(),
            file: file.unwrap_or_else(|e| {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                panic!("open /run/netns/{name}: {e}")
            }),
        };
        let server_v4 = format!("{SERVER_V4}/32");
        let client_v4 = format!("{CLIENT_V4}/32");
        let server_v6 = format!("{SERVER_V6}/128");
        let client_v6 = format!("{CLIENT_V6}/128");
        ip(&name, &["link", "set", "lo", "up"]);
        ip(&name, &["addr", "add", &server_v4, "dev", "lo"]);
        ip(&name, &["addr", "add", &client_v4, "dev", "lo"]);
        ip(
            &name,
            &["-6", "addr", "add", &server_v6, "dev", "lo", "nodad"],
        );
        ip(
            &name,
            &["-6", "addr", "add", &client_v6, "dev", "lo", "nodad"],
        );
        ip(&name, &["route", "add", "local", FLOOD_V4, "dev", "lo"]);
        ip(
            &name,
            &["-6", "route", "add", "local", FLOOD_V6, "dev", "lo"],
        );
        // IPv4 binds any address of a local route; IPv6 needs non-local binds allowed (in
        // this namespace only).
        let sysctl = Command::new("ip")
            .args(["netns", "exec", &name, "sysctl", "-qw"])
            .arg("net.ipv6.ip_nonlocal_bind=1")
            .status()
            .expect("sysctl runs");
        assert!(sysctl.success(), "sysctl in {name}");
        Some(Arc::new(ns))
    }

    /// Moves the calling thread into the namespace (sockets it makes from now on are there).
    fn enter(&self) {
        // SAFETY: a valid namespace fd; setns changes only the calling thread.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// A runtime whose threads all live in the namespace.
    fn runtime(self: &Arc<Self>, workers: usize) -> tokio::runtime::Runtime {
        let ns = self.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_start(move || ns.enter())
            .build()
            .expect("runtime")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Lets the test hold as many sockets as the hard limit allows (the flood holds thousands).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sources and connections.

/// Flood source `i`: even ones IPv4, spread over the 64 /24s first (the attacker's best
/// spread), odd ones the /64s of the one /48.
fn source(i: usize) -> IpAddr {
    let k = i / 2;
    if i.is_multiple_of(2) {
        let (block, host) = (k % 64, 1 + k / 64);
        assert!(host < 255, "more IPv4 sources than the /18 holds");
        IpAddr::V4(Ipv4Addr::new(198, 18, 64 + block as u8, host as u8))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x17, 0, k as u16, 0, 0, 0, 1))
    }
}

/// Where the proxy is for a client of `from`'s family.
#[derive(Clone, Copy)]
struct Target {
    port: u16,
}

impl Target {
    fn for_source(self, from: IpAddr) -> SocketAddr {
        match from {
            IpAddr::V4(_) => SocketAddr::from((SERVER_V4, self.port)),
            IpAddr::V6(_) => SocketAddr::from((SERVER_V6, self.port)),
        }
    }
}

async fn connect(from: IpAddr, target: Target) -> std::io::Result<TcpStream> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(ANSWER_WITHIN, socket.connect(target.for_source(from)))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

fn tls_connector(root: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

// ---------------------------------------------------------------------------------------------
// The flood.

/// What a flooding connection does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing at all (not even a ClientHello on a TLS listener).
    Idle,
    /// A request head, one byte every 2 s (after the TLS handshake on a TLS listener).
    Slow,
    /// The TLS handshake, then nothing.
    HandshakeOnly,
}

#[derive(Debug, Clone)]
struct Flood {
    /// Each connection comes from the next of these.
    sources: Vec<IpAddr>,
    /// Connections the flood keeps open (or trying to).
    connections: usize,
    kinds: Vec<Kind>,
}

/// Counts of what the flood did.
#[derive(Default)]
struct FloodStats {
    connected: AtomicUsize,
    refused: AtomicUsize,
}

/// Waits until the proxy closes `io` (or `stop`).
async fn until_closed(io: &mut (impl AsyncRead + Unpin), stop: &CancellationToken) {
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            read = io.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// Sends a request head one byte per [`TRICKLE`] until the proxy closes `io` (or `stop`).
async fn trickle(io: &mut (impl AsyncRead + AsyncWrite + Unpin), stop: &CancellationToken) {
    let head = b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut buf = [0u8; 1024];
    for byte in head.iter().cycle() {
        if io.write_all(&[*byte]).await.is_err() {
            return;
        }
        let wait = tokio::time::sleep(TRICKLE);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut wait => break,
                read = io.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
    }
}

/// One flooding client: connects from its next source, does its kind until closed, again.
async fn attacker(
    worker: usize,
    flood: Arc<Flood>,
    target: Target,
    tls: Option<TlsConnector>,
    stats: Arc<FloodStats>,
    stop: CancellationToken,
) {
    let kind = flood.kinds[worker % flood.kinds.len()];
    let mut next = worker;
    while !stop.is_cancelled() {
        let from = flood.sources[next % flood.sources.len()];
        next += flood.connections;
        let Ok(mut tcp) = connect(from, target).await else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        stats.connected.fetch_add(1, Ordering::Relaxed);
        match (kind, &tls) {
            (Kind::Idle, _) => until_closed(&mut tcp, &stop).await,
            (Kind::Slow, None) => trickle(&mut tcp, &stop).await,
            (Kind::HandshakeOnly, None) => until_closed(&mut tcp, &stop).await,
            (Kind::Slow | Kind::HandshakeOnly, Some(tls)) => {
                let handshake =
                    tokio::time::timeout(ANSWER_WITHIN, tls.connect(localhost(), tcp)).await;
                if let Ok(Ok(mut stream)) = handshake {
                    if kind == Kind::Slow {
                        trickle(&mut stream, &stop).await;
                    } else {
                        until_closed(&mut stream, &stop).await;
                    }
                }
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The client with the token.

/// One request on a new connection from `from`: its latency when answered 200, else the
/// step that failed.
async fn token_request(
    from: IpAddr,
    target: Target,
    tls: Option<&TlsConnector>,
    request: &[u8],
) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let tcp = connect(from, target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut reply = Vec::new();
        match tls {
            None => {
                let mut tcp = tcp;
                tcp.write_all(request)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                tcp.read_to_end(&mut reply)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
            }
            Some(tls) => {
                let mut stream = tls
                    .connect(localhost(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                stream
                    .write_all(request)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                // A TLS peer may close without close_notify: what arrived counts.
                let _ = stream.read_to_end(&mut reply).await;
            }
        }
        Ok::<_, String>(reply)
    };
    let reply = tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .map_err(|_| format!("no answer within {ANSWER_WITHIN:?}"))??;
    if reply.starts_with(b"HTTP/1.1 200") {
        Ok(started.elapsed())
    } else {
        Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(12)])
        ))
    }
}

/// Latencies of the answered requests and the count of unanswered ones.
#[derive(Debug, Default, Clone)]
struct Answers {
    latencies: Vec<Duration>,
    unanswered: usize,
}

impl Answers {
    fn sent(&self) -> usize {
        self.latencies.len() + self.unanswered
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn merge(&mut self, other: Answers) {
        self.latencies.extend(other.latencies);
        self.unanswered += other.unanswered;
    }

    fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        format!(
            "{}/{} | {} | {} | {}",
            self.latencies.len(),
            self.sent(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0))
        )
    }
}

/// The client with the token, from `from`, for `duration`: one request per [`PERIOD`], each on
/// a new connection. Runs on a runtime of its own (in the namespace), so the flood's tasks do
/// not queue ahead of it in the test; only the proxy's CPU time is shared.
fn token_client(
    ns: &Arc<Netns>,
    from: IpAddr,
    target: Target,
    tls: Option<TlsConnector>,
    token: &str,
    duration: Duration,
) -> std::thread::JoinHandle<Answers> {
    let ns = ns.clone();
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    std::thread::spawn(move || {
        ns.enter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut answers = Answers::default();
            let mut ticks = tokio::time::interval(PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + duration;
            while Instant::now() < end {
                ticks.tick().await;
                match token_request(from, target, tls.as_ref(), request.as_bytes()).await {
                    Ok(latency) => answers.latencies.push(latency),
                    Err(why) => {
                        println!(
                            "many sources: a request with the token from {from} failed: {why}"
                        );
                        answers.unanswered += 1;
                    }
                }
            }
            answers
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Scenes.

/// The proxy (plain or TLS, default limits unless `tweak`ed) in a fresh namespace, its runtime,
/// and what the clients need.
struct Scene {
    // Field order is drop order: the proxy stops on its runtime before the namespace goes.
    proxy: TestProxy,
    _upstream: TestUpstream,
    _proxy_rt: tokio::runtime::Runtime,
    tls: Option<TlsConnector>,
    ns: Arc<Netns>,
}

impl Scene {
    fn start(
        with_tls: bool,
        tweak: impl FnOnce(&mut serve_guard_proxy::config::PublicConfig),
    ) -> Option<Scene> {
        let ns = Netns::create()?;
        raise_fd_limit();
        // This thread binds the listeners: it joins the namespace for good (each test has a
        // thread of its own).
        ns.enter();
        // The proxy process runs one worker per CPU; so does this one.
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let proxy_rt = ns.runtime(cpus);
        let root = Arc::new(Mutex::new(None));
        let (upstream, proxy) = proxy_rt.block_on(async {
            let upstream = start_upstream().await;
            let root = root.clone();
            let proxy = start_proxy(&upstream.url(), move |c, dir| {
                c.listen = "[::]:0".parse().unwrap();
                if with_tls {
                    let cert = self_signed_cert(dir, &["localhost"]).unwrap();
                    c.tls_cert = Some(cert.cert);
                    c.tls_key = Some(cert.key);
                    *root.lock().unwrap() = Some(cert.der);
                }
                tweak(c);
            })
            .await;
            (upstream, proxy)
        });
        let tls = root.lock().unwrap().as_ref().map(tls_connector);
        Some(Scene {
            proxy,
            _upstream: upstream,
            _proxy_rt: proxy_rt,
            tls,
            ns,
        })
    }

    fn target(&self) -> Target {
        Target {
            port: self.proxy.addr.port(),
        }
    }

    /// The clients with the token (one IPv4, one IPv6) for `duration`, under `flood` if any.
    fn measure(&self, flood: Option<&Flood>, duration: Duration) -> (Answers, Option<FloodStats>) {
        let stop = CancellationToken::new();
        let flood_rt = flood.map(|_| self.ns.runtime(1));
        let stats = Arc::new(FloodStats::default());
        if let (Some(flood), Some(rt)) = (flood, &flood_rt) {
            let flood = Arc::new(flood.clone());
            for worker in 0..flood.connections {
                rt.spawn(attacker(
                    worker,
                    flood.clone(),
                    self.target(),
                    self.tls.clone(),
                    stats.clone(),
                    stop.clone(),
                ));
            }
            // The flood is on before the measurement starts: it holds what it can hold.
            let goal = flood
                .connections
                .min(self.proxy.config.limits.max_connections);
            let deadline = std::time::Instant::now() + WAIT;
            while stats.connected.load(Ordering::Relaxed) < goal {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the flood never got going"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let token = self.proxy.token();
        let clients = [IpAddr::V4(CLIENT_V4), IpAddr::V6(CLIENT_V6)].map(|from| {
            token_client(
                &self.ns,
                from,
                self.target(),
                self.tls.clone(),
                &token,
                duration,
            )
        });
        let mut answers = Answers::default();
        for client in clients {
            answers.merge(client.join().expect("the token client ran"));
        }
        stop.cancel();
        if let Some(rt) = flood_rt {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let stats = Arc::into_inner(stats).unwrap_or_default();
        (answers, flood.map(|_| stats))
    }
}

/// The mixed flood of `n` sources against a TLS proxy: idle, slow and handshake-only.
fn mixed(n: usize, connections: usize) -> Flood {
    Flood {
        sources: (0..n).map(source).collect(),
        connections,
        kinds: vec![Kind::Idle, Kind::Slow, Kind::HandshakeOnly],
    }
}

/// The rows of the latency table: no flood, then each N.
fn many_sources_table(ns: &[usize], duration: Duration) -> Vec<(String, Answers)> {
    let _one = SCENE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(scene) = Scene::start(true, |_| {}) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    let (baseline, _) = scene.measure(None, duration);
    rows.push(("no flood".to_owned(), baseline));
    // Enough to keep the pool (1,024) full while the proxy displaces and reaps.
    let connections = 3 * scene.proxy.config.limits.max_connections / 2;
    for &n in ns {
        let before = admission_counts();
        let (answers, stats) = scene.measure(Some(&mixed(n, connections)), duration);
        let stats = stats.unwrap_or_default();
        let after = admission_counts();
        println!(
            "many sources: N = {n}: {} (flood: {} connections made, {} connects failed; proxy: \
             {} displaced, {} refused, {} TLS handshakes refused)",
            answers.row(),
            stats.connected.load(Ordering::Relaxed),
            stats.refused.load(Ordering::Relaxed),
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
        );
        rows.push((format!("N = {n}"), answers));
    }
    rows
}

/// The proxy's admission counters so far (this process): displaced connections, connections
/// refused at accept, TLS handshakes refused.
fn admission_counts() -> (u64, u64, u64) {
    let snapshot = serve_guard_proxy::metrics::global().snapshot();
    let sum = |rows: &[Vec<u64>], handshake: bool| -> u64 {
        rows.iter()
            .enumerate()
            // Rows follow Limit::ALL: the last two are the TLS handshake limits.
            .filter(|(l, _)| (*l >= 3) == handshake)
            .map(|(_, r)| r.iter().sum::<u64>())
            .sum()
    };
    let displaced = snapshot.displaced.iter().flatten().sum();
    (
        displaced,
        sum(&snapshot.refused, false),
        sum(&snapshot.refused, true),
    )
}

fn print_table(rows: &[(String, Answers)]) {
    println!("| flood | answered | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (what, answers) in rows {
        println!("| {what} | {} |", answers.row());
    }
    flush();
}

fn assert_all_answered(rows: &[(String, Answers)]) {
    for (what, answers) in rows {
        assert_eq!(
            answers.unanswered,
            0,
            "{what}: {} of {} requests with the token went unanswered",
            answers.unanswered,
            answers.sent()
        );
    }
}

/// The measured failure: 40 sources each holding 64 idle connections (the per-source
/// cap), reconnecting when reaped, over plain HTTP with the default limits. Before fair
/// admission, 2 of 47 requests with the token were answered.
#[test]
fn forty_sources_holding_64_idle_connections_each_lock_nobody_out() {
    let _one = SCENE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(scene) = Scene::start(false, |_| {}) else {
        return;
    };
    for (family, first) in [("IPv4 addresses", 0), ("IPv6 /64s of one /48", 1)] {
        let flood = Flood {
            sources: (0..40).map(|i| source(2 * i + first)).collect(),
            connections: 40 * 64,
            kinds: vec![Kind::Idle],
        };
        let (answers, _) = scene.measure(Some(&flood), Duration::from_secs(6));
        println!("many sources: 40 {family} x 64 idle: {}", answers.row());
        assert_all_answered(&[(format!("40 {family} x 64 idle"), answers)]);
    }
    report("many sources (issue 17 lock-out, IPv4 and IPv6)", 2);
}

#[test]
fn a_many_source_flood_leaves_every_request_with_the_token_answered() {
    let rows = many_sources_table(&[10, 100, 1000], Duration::from_secs(4));
    if rows.is_empty() {
        return;
    }
    print_table(&rows);
    assert_all_answered(&rows);
    report(
        "many sources (idle, slow, handshake-only; N = 10, 100, 1000)",
        rows.len(),
    );
}

/// The long run behind docs/BENCHMARKS.md: `cargo xtask bench --many-sources`.
#[test]
#[ignore = "minutes long; cargo xtask bench --many-sources"]
fn many_sources_long_run() {
    let rows = many_sources_table(&[10, 100, 1000, 10_000], Duration::from_secs(20));
    if rows.is_empty() {
        return;
    }
    print_table(&rows);
    assert_all_answered(&rows);
}
