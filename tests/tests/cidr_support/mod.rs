//! Helpers shared by the CIDR, control-socket and systemd tests: CLI calls that must succeed or
//! fail, the listing as the CLI prints it, the allow-list as the attached program sees it, and
//! probers that run in a client namespace until stopped.
#![allow(dead_code, reason = "each test binary uses a part of it")]

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::MapData;
use serve_guard::cidr::CidrList;
use serve_guard::filter::allow::{self, AllowMaps};
use serve_guard_tests::agent::Agent;
use serve_guard_tests::limits;
use serve_guard_tests::netns::Netns;
use serve_guard_tests::probe::{self, ConnectError};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Ray Serve's HTTP port: protected.
pub const SERVE_HTTP: u16 = 8000;
/// Pause between two probes of one prober: "a request every few milliseconds".
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Connect timeout of the outside prober: a SYN that passed would be answered within a fraction
/// of this on a veth, and it is below TCP's first retransmission (1 s), so every outside probe is
/// exactly one SYN.
pub const OUTSIDE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Upper bound on one prober's life, whatever the test does.
pub const PROBER_MAX_LIFE: Duration = Duration::from_secs(120);
/// Upper bound on one prober's probes.
pub const PROBER_MAX_PROBES: u64 = 100_000;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a CLI verb that must succeed; its stdout.
pub fn cli_ok(agent: &Agent, args: &[&str]) -> Result<String> {
    check_ok(args, agent.cli(args)?)
}

/// Like [`cli_ok`] with stdin.
pub fn cli_ok_stdin(agent: &Agent, args: &[&str], stdin: &[u8]) -> Result<String> {
    check_ok(args, agent.cli_with_stdin(args, stdin)?)
}

fn check_ok(args: &[&str], out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "`serve-guard {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Runs a CLI verb that must fail; its stderr.
pub fn cli_err(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    ensure!(
        !out.status.success(),
        "`serve-guard {}` should have failed but printed:\n{}",
        args.join(" "),
        text(&out.stdout)
    );
    Ok(text(&out.stderr))
}

/// `cidr list --json`.
pub fn listing(agent: &Agent) -> Result<serde_json::Value> {
    let out = cli_ok(agent, &["cidr", "list", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("cidr list --json printed {out}"))
}

pub fn revision(agent: &Agent) -> Result<u64> {
    listing(agent)?["revision"]
        .as_u64()
        .context("no revision in cidr list --json")
}

/// The CIDRs of `cidr list --json`, as strings.
pub fn listed_cidrs(agent: &Agent) -> Result<BTreeSet<String>> {
    Ok(listing(agent)?["cidrs"]
        .as_array()
        .context("no cidrs in cidr list --json")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect())
}

/// The addresses the program attached to `iface` in `ns` allows now, read from its maps, as the
/// fewest CIDRs (see [`as_allowed`]): what filters now.
pub fn attached_cidrs(ns: &Netns, iface: &str) -> Result<BTreeSet<String>> {
    let prog_id = ns
        .xdp_program(iface)?
        .with_context(|| format!("no XDP program on {iface}"))?;
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| u64::from(p.id()) == prog_id)
        .with_context(|| format!("XDP program {prog_id} is not loaded"))?;
    let mut by_name = std::collections::BTreeMap::new();
    for map_id in prog.map_ids()?.unwrap_or_default() {
        let data = MapData::from_id(map_id)?;
        if let Some(name) = data.info()?.name_as_str().map(str::to_owned) {
            by_name.insert(name, data);
        }
    }
    let allow = AllowMaps::from_maps(
        |name| {
            by_name
                .remove(name)
                .ok_or(serve_guard::filter::FilterError::MissingMap { name })
        },
        false,
    )
    .with_context(|| format!("program {prog_id}'s allow-list maps"))?;
    Ok(allow.allowed()?.iter().map(|n| n.to_string()).collect())
}

/// A listed set of CIDRs as the maps report it: overlapping and adjacent ranges merged.
pub fn as_allowed(listed: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let (list, _) =
        CidrList::from_file_text(&listed.iter().map(|c| format!("{c}\n")).collect::<String>())?;
    Ok(allow::merged(&list).iter().map(|n| n.to_string()).collect())
}

/// What a prober saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub probes: u64,
    pub passed: u64,
    /// The first few probes that did not pass, described.
    pub blocked: Vec<String>,
}

/// Most blocked probes described in a [`Tally`].
const DESCRIBED: usize = 10;

/// A thread in a client namespace probing targets in turn until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicU64>,
    handle: Option<JoinHandle<std::io::Result<Tally>>>,
}

/// How a prober probes.
#[derive(Clone, Copy, Debug)]
pub enum ProbeKind {
    /// `GET /` must answer 200 (a source in the list).
    Http,
    /// A TCP connect with a short timeout; passed = any answer, SYN-ACK or RST (a source
    /// outside every list must never get one).
    Connect,
}

impl Prober {
    pub fn start(ns: &Netns, targets: Vec<SocketAddr>, kind: ProbeKind) -> Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, probes) = (stop.clone(), probes.clone());
            ns.spawn(move || {
                let started = Instant::now();
                let mut tally = Tally::default();
                'run: while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < PROBER_MAX_LIFE
                    && tally.probes < PROBER_MAX_PROBES
                {
                    for &addr in &targets {
                        if stop.load(Ordering::Relaxed) {
                            break 'run;
                        }
                        let outcome = match kind {
                            ProbeKind::Http => {
                                match probe::here::http_get(addr, limits::PROBE_IO) {
                                    Ok(200) => Ok(()),
                                    Ok(status) => Err(format!("HTTP {status}")),
                                    Err(e) => Err(e.to_string()),
                                }
                            }
                            ProbeKind::Connect => {
                                match probe::here::tcp_connect(addr, OUTSIDE_CONNECT_TIMEOUT) {
                                    Ok(()) => Ok(()),
                                    Err(ConnectError::Refused) => Ok(()),
                                    Err(e) => Err(e.to_string()),
                                }
                            }
                        };
                        tally.probes += 1;
                        probes.fetch_add(1, Ordering::Relaxed);
                        match outcome {
                            Ok(()) => tally.passed += 1,
                            Err(e) if tally.blocked.len() < DESCRIBED => {
                                tally.blocked.push(format!("{addr}: {e}"));
                            }
                            Err(_) => {}
                        }
                        std::thread::sleep(PROBE_INTERVAL);
                    }
                }
                tally
            })?
        };
        Ok(Prober {
            stop,
            probes,
            handle: Some(handle),
        })
    }

    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` further probes completed, so edits interleave with probes.
    pub fn wait_probes(&self, more: u64, timeout: Duration) -> Result<()> {
        let target = self.probes() + more;
        serve_guard_tests::wait_for("probes to run", timeout, || Ok(self.probes() >= target))
    }

    pub fn finish(mut self) -> Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Ok(tally))) => Ok(tally),
            Some(Ok(Err(e))) => bail!("the prober could not enter its namespace: {e}"),
            Some(Err(_)) => bail!("the prober panicked"),
            None => bail!("the prober was already finished"),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Replaces `path` the way editors and Ansible do: write a temp file, rename it over.
pub fn write_by_rename(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("edit-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Waits (bounded) until the agent reports a revision of at least `revision`. The store bumps
/// the revision only after the maps took the new list, so once it shows, the maps hold it.
pub fn wait_revision(agent: &Agent, revision: u64) -> Result<()> {
    serve_guard_tests::wait_for(&format!("CIDR revision {revision}"), limits::CLI, || {
        Ok(self::revision(agent)? >= revision)
    })
}
