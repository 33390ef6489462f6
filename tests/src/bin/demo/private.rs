//! Private mode with the default port policy (`guard = "node"`, `public_ports = ["ssh", "dhcp"]`): a
//! server namespace with HTTP servers on Ray Serve's ports (8000 HTTP, 9000 gRPC), on another port
//! nobody listed (8080) and on SSH's port 22 (a stand-in for sshd); the agent filters its
//! interface; a client inside the VPC ranges and one outside try every port over IPv4 and IPv6;
//! then the server opens a connection of its own to the outside client.

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

/// Ray Serve's HTTP and gRPC ports (`serve_ports`): closed to every packet from outside.
const PROTECTED: [u16; 2] = [8000, 9000];
/// Another service on the node, in no list (a dashboard, an exporter, Ray's GCS): guarded by the
/// default `guard = "node"`, so closed to new connections from outside.
const GUARDED: u16 = 8080;
/// SSH's port: public by default (`public_ports = ["ssh", "dhcp"]`), so an operator outside the VPC is
/// never locked out. An HTTP server stands in for sshd.
const PUBLIC: u16 = 22;
const PORTS: [u16; 4] = [PROTECTED[0], PROTECTED[1], GUARDED, PUBLIC];
/// Where the outside client serves the server's own outbound connection.
const REMOTE: u16 = 7000;

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
        "  server   {:<16} {:<16} HTTP servers on 8000 (Ray Serve HTTP), 9000 (Ray Serve gRPC), {GUARDED} (another service, in no list), {PUBLIC} (stand-in for sshd)",
        topo.server.v4.to_string(),
        topo.server.v6.to_string()
    );
    println!(
        "  inside   {:<16} {:<16} a client inside the VPC",
        topo.inside.v4.to_string(),
        topo.inside.v6.to_string()
    );
    println!(
        "  outside  {:<16} {:<16} a client on the internet (and an HTTP server on {REMOTE})",
        topo.outside.v4.to_string(),
        topo.outside.v6.to_string()
    );
    println!("  VPC CIDRs (the allow-list): {VPC_V4}, {VPC_V6}\n");
    let servers =
        HttpServer::start(&topo.server.ns, &PORTS).context("starting the HTTP servers")?;
    let remote =
        HttpServer::start(&topo.outside.ns, &[REMOTE]).context("starting the remote server")?;
    interrupt::check()?;

    println!(
        "Starting `serve-guard run` in the server namespace: mode = \"private\", interfaces = [\"{IFACE}\"], serve_ports = [{}, {}],",
        PROTECTED[0], PROTECTED[1]
    );
    println!(
        "  and the default port policy: guard = \"node\" (every other port is guarded), public_ports = [\"ssh\", \"dhcp\"] ({PUBLIC}; 68, 546)"
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
        attachment.map_or_else(|| "?".into(), |a| a.prog_id.to_string()),
        attachment.map_or("?", |a| a.mode.name()),
    );
    interrupt::check()?;

    println!(
        "Each client sends GET / to each port (a connection attempt without an answer within {:?} counts as dropped):\n",
        limits::DROPPED_CONNECT
    );
    let before = agent.counters()?;
    let mut results = Table::new(&[
        "client",
        "from",
        "port 8000 (Serve)",
        "port 9000 (Serve)",
        "port 8080 (guarded)",
        "port 22 (public)",
    ]);
    let mut all_good = true;
    for (label, client, inside) in [
        ("inside", &topo.inside, true),
        ("outside", &topo.outside, false),
    ] {
        for ip in Ip::BOTH {
            let mut row = vec![label.to_owned(), client.addr(ip).to_string()];
            for port in PORTS {
                interrupt::check()?;
                let want = if inside || port == PUBLIC {
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
        "  (\"dropped\" means the SYN never reached the server's TCP stack: no reply, not even a reset.)"
    );
    println!(
        "  8080 is in no list: guard = \"node\" closes it to new connections from outside; public_ports opens a port.\n"
    );

    // Guarded ports still carry the node's own connections: their replies come from outside
    // to an ephemeral port, and the filter lets through what belongs to a connection the node
    // opened (pass_reply).
    for ip in Ip::BOTH {
        interrupt::check()?;
        let addr = topo.outside.sock(ip, REMOTE);
        let want = Outcome::Http(200);
        let got = Outcome::probe(&topo.server, addr, &want)?;
        let mark = if got == want {
            OK.to_owned()
        } else {
            all_good = false;
            format!("{WRONG} {}", want.describe())
        };
        println!(
            "  The server's own GET http://{addr}/ (a client outside the VPC): {} {mark}",
            got.describe()
        );
    }
    println!(
        "  (the replies come from outside to an ephemeral port, which is guarded: they belong to the server's own connection, so they pass.)\n"
    );

    let counters = agent.counters()?.since(&before);
    print_counters(&counters);

    println!("\nTearing down: stopping the agent, detaching the filter, deleting the namespaces.");
    agent.stop().context("stopping the agent")?;
    drop(agent);
    drop(servers);
    drop(remote);
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
            Reason::PassAllowed => "to a Serve or guarded port from inside the VPC: passed",
            Reason::PassUnprotected => "to a public port, or no port at all (ARP, ND): passed",
            Reason::DropOutsideVpc => "to a Serve port from outside the VPC: dropped",
            Reason::PassReply => {
                "to a guarded port from outside, for the node's own connection (or no socket): passed"
            }
            Reason::DropGuarded => {
                "to a guarded port from outside, a new connection or for a listener: dropped"
            }
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
