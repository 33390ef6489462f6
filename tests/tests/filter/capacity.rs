//! `max_cidrs` (issue 11): the allow-list maps are sized when the filter is created, up to 2^20
//! CIDRs per family. A million-entry list per family filters real traffic on the real agent, and
//! a pinned filter, whose maps cannot be resized, says so at start and keeps filtering. (A list
//! over the capacity is refused and changes nothing: tests/tests/filter/live_cidr.rs and the store's
//! tests.)

use super::cidr_support::*;
use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe::{self, ConnectError};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, Ip, Topology, VPC_V4, VPC_V6};
use serve_guard_tests::{limits, wait_for};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// CIDRs per family in the big list: the goal.
const MILLION: u32 = 1_000_000;
/// The largest `max_cidrs`.
const LARGEST: i64 = 1 << 20;
/// Bound on the start with two million CIDRs: the tests run the agent's debug build, which
/// parses, records and compiles them many times slower than a release build.
const MILLION_READY: Duration = Duration::from_secs(240);

/// The namespaces and Serve's stand-in on the server (the server goes after its namespace's
/// agent, the namespaces last).
fn scene() -> Result<(Topology, HttpServer)> {
    let topo = Topology::new()?;
    let http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP])?;
    Ok((topo, http))
}

/// A private-mode agent guarding Serve's HTTP port on the server's interface.
fn private() -> AgentConfig {
    AgentConfig::private(&[IFACE]).serve_ports(&[SERVE_HTTP])
}

/// Both families: the inside client reaches Serve, the outside one is dropped.
fn filters(topo: &Topology) -> Result<()> {
    for ip in Ip::BOTH {
        ensure!(
            inside_gets(topo, ip),
            "the inside client is refused ({ip:?})"
        );
        ensure!(
            outside_dropped(topo, ip),
            "the outside client gets through ({ip:?})"
        );
    }
    Ok(())
}

fn inside_gets(topo: &Topology, ip: Ip) -> bool {
    matches!(
        probe::http_get(&topo.inside.ns, topo.server.sock(ip, SERVE_HTTP)),
        Ok(200)
    )
}

fn outside_dropped(topo: &Topology, ip: Ip) -> bool {
    matches!(
        probe::tcp_connect(
            &topo.outside.ns,
            topo.server.sock(ip, SERVE_HTTP),
            limits::DROPPED_CONNECT
        ),
        Err(ConnectError::TimedOut(_))
    )
}

/// The revision and the CIDRs per family, from `status --json` (`cidr list` would print two
/// million lines).
fn counts(agent: &Agent) -> Result<(u64, u64, u64)> {
    let status: serde_json::Value = serde_json::from_str(&cli_ok(agent, &["status", "--json"])?)?;
    let cidrs = &status["cidrs"];
    let field = |key: &str| {
        cidrs[key]
            .as_u64()
            .with_context(|| format!("no cidrs.{key}: {status}"))
    };
    Ok((field("revision")?, field("ipv4")?, field("ipv6")?))
}

/// A million /32s in 10.0.0.0/8 and a million /128s in fd00:99::/64, plus the VPC ranges.
fn million_per_family() -> Vec<String> {
    let mut cidrs = vec![VPC_V4.to_owned(), VPC_V6.to_owned()];
    cidrs.extend((0..MILLION - 1).map(|i| format!("{}/32", Ipv4Addr::from(0x0a00_0000 + i))));
    let v6_base = u128::from(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0));
    cidrs.extend(
        (0..MILLION - 1).map(|i| format!("{}/128", Ipv6Addr::from(v6_base + u128::from(i)))),
    );
    cidrs
}

#[test]
fn a_million_cidrs_per_family_filter_real_traffic() -> Result<()> {
    let (topo, _http) = scene()?;
    let config = private()
        .cidrs(&million_per_family())
        .set("max_cidrs", LARGEST);
    let mut agent = Agent::spawn(&topo.server.ns, config)?;
    let started = Instant::now();
    wait_for("the agent with two million CIDRs", MILLION_READY, || {
        agent.is_ready()
    })
    .with_context(|| agent.logs())?;
    eprintln!(
        "ready with 2 x 1,000,000 CIDRs in {:?} (debug build)",
        started.elapsed()
    );

    let asked = Instant::now();
    let (_, v4, v6) = counts(&agent)?;
    eprintln!("status --json answered in {:?}", asked.elapsed());
    ensure!(
        v4 == u64::from(MILLION) && v6 == u64::from(MILLION),
        "the agent does not hold the million-entry lists: {v4} IPv4, {v6} IPv6"
    );
    filters(&topo)?;
    Ok(())
}

#[test]
fn a_pinned_filter_is_not_resized_and_keeps_filtering() -> Result<()> {
    let (topo, _http) = scene()?;
    let config = private().cidrs(&[VPC_V4, VPC_V6]);
    let mut agent = Agent::start(&topo.server.ns, config.clone())?;
    // SIGKILL: the pinned filter stays attached, as after a crash.
    agent.kill9()?;
    // The same pins, a larger `max_cidrs`.
    let pin_dir = agent.files().pin_dir.display().to_string();
    let mut bigger = Agent::new(
        &topo.server.ns,
        config.set("pin_dir", pin_dir).set("max_cidrs", LARGEST),
    )?;
    let status = bigger.run_to_exit(&[])?;
    let log = bigger.run_logs();
    ensure!(
        !status.success()
            && log.contains("max_cidrs = 1048576")
            && log.contains("cannot be resized")
            && log.contains("serve-guard detach"),
        "the start did not refuse to resize the pinned maps ({status}):\n{log}"
    );
    filters(&topo)?;
    Ok(())
}
