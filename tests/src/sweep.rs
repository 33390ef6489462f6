//! A node's listening TCP ports probed from a client, round after round. Each round reads the
//! node's socket table (`ss` in its namespace, see [`Netns::listeners`]), so ports that open and
//! close during a run (Ray's workers, Serve's replicas) are tried while they exist, and no list
//! of ports is written into a test. Every address of a round is tried at once, so a round takes
//! about one connect timeout whatever the number of ports.

use crate::netns::{Listener, Netns};
use crate::probe::{Background, ConnectError, here};
use crate::topology::Host;
use anyhow::{Context as _, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// Odd errors kept in a report (beyond refused and timed out).
const KEPT_ODD: usize = 20;

/// Outcomes of the connects to one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// The handshake completed: the port answered this client.
    pub connected: u64,
    /// A reset came back.
    pub refused: u64,
    /// No answer within the timeout: dropped on the way.
    pub timed_out: u64,
    /// Anything else (unreachable, ...).
    pub other: u64,
}

impl Tally {
    pub fn attempts(&self) -> u64 {
        self.connected + self.refused + self.timed_out + self.other
    }

    fn add(&mut self, other: &Tally) {
        self.connected += other.connected;
        self.refused += other.refused;
        self.timed_out += other.timed_out;
        self.other += other.other;
    }
}

/// What one sweep (one or more rounds) saw.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub rounds: u64,
    /// Per address tried.
    pub tally: BTreeMap<SocketAddr, Tally>,
    /// The owner of each port as `ss` last named it.
    pub owners: BTreeMap<u16, String>,
    /// The first errors that were neither a refusal nor a timeout.
    pub odd: Vec<String>,
}

impl SweepReport {
    /// Every port tried.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.tally.keys().map(SocketAddr::port).collect()
    }

    /// All outcomes added up.
    pub fn total(&self) -> Tally {
        let mut sum = Tally::default();
        for t in self.tally.values() {
            sum.add(t);
        }
        sum
    }

    /// The addresses that accepted at least one connection.
    pub fn connected(&self) -> Vec<SocketAddr> {
        self.tally
            .iter()
            .filter(|(_, t)| t.connected > 0)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Owner of `port` (or `?`).
    pub fn owner(&self, port: u16) -> &str {
        self.owners.get(&port).map_or("?", String::as_str)
    }

    /// One line per address: owner and outcomes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (addr, t) in &self.tally {
            let _ = writeln!(
                out,
                "  {addr:<24} {:<16} connected {} refused {} timed out {} other {}",
                self.owner(addr.port()),
                t.connected,
                t.refused,
                t.timed_out,
                t.other
            );
        }
        out
    }

    fn merge(&mut self, other: SweepReport) {
        self.rounds += other.rounds;
        for (addr, t) in other.tally {
            self.tally.entry(addr).or_default().add(&t);
        }
        self.owners.extend(other.owners);
        for odd in other.odd {
            if self.odd.len() < KEPT_ODD {
                self.odd.push(odd);
            }
        }
    }
}

/// The listeners of `node` beyond loopback and where a client reaches each.
pub fn targets(node: &Host) -> Result<Vec<(SocketAddr, Listener)>> {
    let listeners = node
        .ns
        .listeners()
        .with_context(|| format!("reading the socket table of {}", node.ns.name()))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for l in listeners.into_iter().filter(|l| !l.is_loopback()) {
        for addr in l.reachable_at(node.v4, node.v6) {
            if seen.insert(addr) {
                out.push((addr, l.clone()));
            }
        }
    }
    Ok(out)
}

/// One round from the calling thread's namespace: read `node`'s listeners, connect to each.
pub fn round_here(node: &Host, timeout: Duration) -> Result<SweepReport> {
    let targets = targets(node)?;
    let addrs: Vec<SocketAddr> = targets.iter().map(|(a, _)| *a).collect();
    let results = here::tcp_connect_all(&addrs, timeout);
    let mut report = SweepReport {
        rounds: 1,
        ..SweepReport::default()
    };
    for ((addr, listener), result) in targets.into_iter().zip(results) {
        if let Some(owner) = listener.process {
            report.owners.insert(addr.port(), owner);
        }
        let t = report.tally.entry(addr).or_default();
        match result {
            Ok(()) => t.connected += 1,
            Err(ConnectError::Refused) => t.refused += 1,
            Err(ConnectError::TimedOut(_)) => t.timed_out += 1,
            Err(e) => {
                t.other += 1;
                if report.odd.len() < KEPT_ODD {
                    report.odd.push(format!("{addr}: {e}"));
                }
            }
        }
    }
    Ok(report)
}

/// `rounds` rounds from `client`, back to back.
pub fn sweep(client: &Netns, node: &Host, rounds: u64, timeout: Duration) -> Result<SweepReport> {
    let node = node.clone();
    client
        .run(move || {
            let mut report = SweepReport::default();
            for _ in 0..rounds {
                report.merge(round_here(&node, timeout)?);
            }
            Ok(report)
        })
        .context("entering the client namespace")?
}

/// Rounds from a client until finished, at least `gap` apart: a node probed over a whole run.
pub struct Sweep(Background<Result<SweepReport>>);

impl Sweep {
    pub fn start(client: &Netns, node: &Host, timeout: Duration, gap: Duration) -> Result<Sweep> {
        let node = node.clone();
        let bg = Background::start(client, move |stop| {
            let mut report = SweepReport::default();
            loop {
                report.merge(round_here(&node, timeout)?);
                if !stop.wait(gap) {
                    return Ok(report);
                }
            }
        })
        .context("starting the sweep thread")?;
        Ok(Sweep(bg))
    }

    /// Stops after the current round; everything the rounds saw.
    pub fn finish(self) -> Result<SweepReport> {
        self.0.finish().context("entering the client namespace")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits;
    use crate::server::HttpServer;
    use crate::topology::Topology;

    #[test]
    fn a_sweep_finds_the_listeners_and_tells_open_from_dropped() {
        let topo = Topology::new().unwrap();
        let _http = HttpServer::start(&topo.server.ns, &[8080, 8081]).unwrap();
        // A listener on loopback only: never a target.
        let _lo = topo
            .server
            .ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:8082"))
            .unwrap()
            .unwrap();
        // 8081 drops every SYN (nftables in the server namespace), 8080 answers.
        let rules = "table inet sweep_test {\n chain input {\n  type filter hook input priority 0;\n  tcp dport 8081 drop\n }\n}\n";
        let mut nft = topo.server.ns.command("nft");
        let mut child = nft
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let sweep = Sweep::start(
            &topo.outside.ns,
            &topo.server,
            limits::DROPPED_CONNECT,
            Duration::from_millis(50),
        )
        .unwrap();
        let once = super::sweep(&topo.inside.ns, &topo.server, 1, limits::DROPPED_CONNECT).unwrap();
        let report = sweep.finish().unwrap();
        assert!(report.rounds >= 1);
        for r in [&report, &once] {
            assert_eq!(r.ports(), BTreeSet::from([8080, 8081]), "{}", r.table());
            // [::] dual stack: both families of each port.
            assert_eq!(r.tally.len(), 4, "{}", r.table());
            for (addr, t) in &r.tally {
                match addr.port() {
                    8080 => assert_eq!(t.connected, t.attempts(), "{addr}"),
                    _ => assert_eq!(t.timed_out, t.attempts(), "{addr}"),
                }
            }
        }
    }
}
