//! Private mode: a server namespace with HTTP servers on Ray Serve's ports (8000 HTTP, 9000 gRPC)
//! and on an unprotected port; the agent filters its interface; a client inside the VPC ranges
//! and one outside try every port over IPv4 and IPv6.

use crate::interrupt;
use crate::table::Table;
use anyhow::{Context as _, Result};
use serve_guard_common::{Family, Reason};
use serve_guard_tests::agent::{Agent, AgentConfig, Counters};
use serve_guard_tests::limits;
use serve_guard_tests::probe::{ConnectError, ProbeError, here};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{Host, IFACE, Ip, Topology, VPC_V4, VPC_V6};
use std::time::Instant;

/// Ray Serve's HTTP and gRPC ports, protected by the filter.
const PROTECTED: [u16; 2] = [8000, 9000];
/// Another service on the node that serve-guard leaves alone.
const UNPROTECTED: u16 = 8080;
const PORTS: [u16; 3] = [PROTECTED[0], PROTECTED[1], UNPROTECTED];

/// What one client saw on one port.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Http(u16),
    /// No answer to the SYN within the timeout: the filter dropped it.
    Dropped,
    Refused,
    Failed(String),
}

impl Outcome {
    /// `GET /` with the short timeout where a drop is expected (a veth answers in microseconds)
    /// and the generous one elsewhere (a busy machine must not turn a success into "dropped").
    fn probe(client: &Host, addr: std::net::SocketAddr, expect: &Outcome) -> Result<Outcome> {
        let timeout = match expect {
            Outcome::Dropped => limits::DROPPED_CONNECT,
            _ => limits::PROBE_IO,
        };
        let result = client.ns.run(|| here::http_get(addr, timeout))?;
        Ok(match result {
            Ok(status) => Outcome::Http(status),
            Err(ProbeError::Connect(ConnectError::TimedOut(_))) => Outcome::Dropped,
            Err(ProbeError::Connect(ConnectError::Refused)) => Outcome::Refused,
            Err(e) => Outcome::Failed(e.to_string()),
        })
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Http(status) => format!("HTTP {status}"),
            Outcome::Dropped => "dropped".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Failed(e) => format!("error: {e}"),
        }
    }
}

const OK: &str = "✓";
const WRONG: &str = "✗ expected";

pub fn run() -> Result<bool> {
    println!("serve-guard demo: private mode");
    println!("==============================\n");
    println!("Building a small network of namespaces (addresses from 198.18.0.0/15 and fd00::/8):");
    let topo = Topology::new().context("creating the namespaces")?;
    println!(
        "  server   {:<16} {:<16} HTTP servers on 8000 (Ray Serve HTTP), 9000 (Ray Serve gRPC), {UNPROTECTED} (another service)",
        topo.server.v4.to_string(),
        topo.server.v6.to_string()
    );
    println!(
        "  inside   {:<16} {:<16} a client inside the VPC",
        topo.inside.v4.to_string(),
        topo.inside.v6.to_string()
    );
    println!(
        "  outside  {:<16} {:<16} a client on the internet",
        topo.outside.v4.to_string(),
        topo.outside.v6.to_string()
    );
    println!("  VPC CIDRs (the allow-list): {VPC_V4}, {VPC_V6}\n");
    let servers =
        HttpServer::start(&topo.server.ns, &PORTS).context("starting the HTTP servers")?;
    interrupt::check()?;

    println!(
        "Starting `serve-guard run` in the server namespace: mode = \"private\", interfaces = [\"{IFACE}\"], serve_ports = [{}, {}]",
        PROTECTED[0], PROTECTED[1]
    );
    let started = Instant::now();
    let config = AgentConfig::private(&[IFACE])
        .serve_ports(&PROTECTED)
        .cidrs(&Topology::vpc_cidrs());
    let mut agent = Agent::start(&topo.server.ns, config).context("starting the agent")?;
    let attachment = topo.server.ns.xdp_attachment(IFACE)?;
    println!(
        "  ready after {:.1} s: XDP program {} attached to {IFACE} ({} mode)\n",
        started.elapsed().as_secs_f64(),
        attachment.map_or("?".into(), |a| a.prog_id.to_string()),
        attachment.map_or("?", |a| a.mode.name()),
    );
    interrupt::check()?;

    println!(
        "Each client sends GET / to each port (a connection attempt without an answer within {:?} counts as dropped):\n",
        limits::DROPPED_CONNECT
    );
    let before = agent.counters()?;
    let mut results = Table::new(&["client", "from", "port 8000", "port 9000", "port 8080"]);
    let mut all_good = true;
    for (label, client, inside) in [
        ("inside", &topo.inside, true),
        ("outside", &topo.outside, false),
    ] {
        for ip in Ip::BOTH {
            let mut row = vec![label.to_owned(), client.addr(ip).to_string()];
            for port in PORTS {
                interrupt::check()?;
                let want = if inside || !PROTECTED.contains(&port) {
                    Outcome::Http(200)
                } else {
                    Outcome::Dropped
                };
                let got = Outcome::probe(client, topo.server.sock(ip, port), &want)?;
                row.push(if got == want {
                    format!("{} {OK}", got.describe())
                } else {
                    all_good = false;
                    format!("{} {WRONG} {}", got.describe(), want.describe())
                });
            }
            results.row(row);
        }
    }
    results.print(2);
    let served: Vec<String> = PORTS
        .iter()
        .map(|&p| format!("{p}: {}", servers.requests(p)))
        .collect();
    println!("\n  Requests the servers answered: {}", served.join(", "));
    println!(
        "  (\"dropped\" means the SYN never reached the server's TCP stack: no reply, not even a reset.)\n"
    );

    let counters = agent.counters()?.since(&before);
    print_counters(&counters);

    println!("\nTearing down: stopping the agent, detaching the filter, deleting the namespaces.");
    agent.stop().context("stopping the agent")?;
    drop(agent);
    drop(servers);
    drop(topo);
    println!("Done.\n");
    Ok(all_good)
}

fn print_counters(counters: &Counters) {
    println!(
        "Filter counters for these requests (packets, summed over CPUs, read from the kernel):\n"
    );
    let mut table = Table::new(&["reason", "IPv4", "IPv6", "other", "meaning"]);
    for reason in Reason::ALL {
        let meaning = match reason {
            Reason::PassAllowed => "to a Serve port from inside the VPC: passed",
            Reason::PassUnprotected => "not for a Serve port (other ports, ARP, ND): passed",
            Reason::DropOutsideVpc => "to a Serve port from outside the VPC: dropped",
            Reason::DropUnparseable => "could not be parsed, untrusted source: dropped",
            Reason::AuditWouldDrop => "audit mode: would have been dropped, passed",
        };
        table.row(vec![
            reason.name().to_owned(),
            counters.packets(reason, Family::Ipv4).to_string(),
            counters.packets(reason, Family::Ipv6).to_string(),
            counters.packets(reason, Family::Other).to_string(),
            meaning.to_owned(),
        ]);
    }
    table.print(2);
    println!(
        "\n  On a node, `serve-guard stats` shows these counters; README.md has the config and the CLI."
    );
}
