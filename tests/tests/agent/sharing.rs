//! Issue 20: serve-guard beside other XDP programs through libxdp's dispatcher (protocol v2),
//! against Debian's xdp-tools on veths: xdp-filter (its own rule: UDP to [`FILTER_PORT`] dropped)
//! and serve-guard in either order, each keeping its job, `xdp-loader status` listing both.

use anyhow::Result;
use serve_guard_common::{Family, Reason};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe;
use serve_guard_tests::server::UdpEchoServer;
use serve_guard_tests::topology::{Host, IFACE, Topology};
use serve_guard_tests::xdp_tools::{self, UnloadAll, XdpFilter};
use serve_guard_tests::{limits, wait_for};
use std::net::SocketAddr;
use std::time::Duration;

/// Ray Serve's port in these tests (strict: outside sources dropped by serve-guard).
const SERVE_PORT: u16 = 8000;
/// xdp-filter's rule: UDP to this port is dropped, from everyone.
const FILTER_PORT: u16 = 7777;
/// An answered echo comes back in well under this; an unanswered one is dropped.
const ECHO_TIMEOUT: Duration = Duration::from_millis(500);
/// An XDP program from Debian's xdp-tools, loaded alone in the refusal test.
const XDP_PASS_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";

fn config() -> AgentConfig {
    AgentConfig::private(&[IFACE])
        .serve_ports(&[SERVE_PORT])
        .public_ports(&[&FILTER_PORT.to_string()])
        .cidrs(&Topology::vpc_cidrs())
        .set("xdp_attach", "dispatcher")
}

fn echoed(client: &Host, server: &Host, port: u16) -> bool {
    let to = SocketAddr::new(server.v4.into(), port);
    probe::udp_echo(&client.ns, to, ECHO_TIMEOUT).is_ok()
}

/// Both programs' verdicts: serve-guard drops the outside client on the Serve port and serves the
/// inside one; xdp-filter's rule drops UDP to its port even from the inside client (serve-guard
/// passes it on, the chain goes on to xdp-filter).
fn assert_both_verdicts(topo: &Topology, agent: &Agent) -> Result<()> {
    let dropped_before = agent
        .counters()?
        .packets(Reason::DropOutsideVpc, Family::Ipv4);
    assert!(
        echoed(&topo.inside, &topo.server, SERVE_PORT),
        "inside client not served on the Serve port"
    );
    assert!(
        !echoed(&topo.outside, &topo.server, SERVE_PORT),
        "outside client served on the Serve port"
    );
    wait_for("serve-guard's drop counted", limits::AGENT_READY, || {
        Ok(agent
            .counters()?
            .packets(Reason::DropOutsideVpc, Family::Ipv4)
            > dropped_before)
    })?;
    assert!(
        !echoed(&topo.inside, &topo.server, FILTER_PORT),
        "xdp-filter's rule (UDP {FILTER_PORT}) not in force"
    );
    Ok(())
}

fn assert_status_lists_both(topo: &Topology) -> Result<()> {
    let status = xdp_tools::loader_status(&topo.server.ns, IFACE)?;
    assert!(status.contains("serve_guard"), "{status}");
    assert!(status.contains("xdpfilt"), "{status}");
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Order {
    XdpFilterFirst,
    ServeGuardFirst,
}

fn both_orders(order: Order) -> Result<()> {
    let topo = Topology::new()?;
    let _unload = UnloadAll {
        ns: topo.server.ns.clone(),
        iface: IFACE.to_owned(),
    };
    let _echo = UdpEchoServer::start(&topo.server.ns, &[SERVE_PORT, FILTER_PORT])?;
    // Before either program: both ports answer.
    assert!(echoed(&topo.inside, &topo.server, FILTER_PORT));

    let mut filter = XdpFilter::new(&topo.server.ns, IFACE);
    filter.load()?;
    if !filter.in_dispatcher()? {
        eprintln!(
            "SKIPPED: this kernel refuses extension (freplace) programs (libxdp loaded xdp-filter \
             without a dispatcher); the VM matrix runs this check on Debian's kernels"
        );
        return Ok(());
    }
    let agent = match order {
        Order::XdpFilterFirst => {
            filter.deny_udp_port(FILTER_PORT)?;
            Agent::start(&topo.server.ns, config())?
        }
        Order::ServeGuardFirst => {
            filter.unload()?;
            let agent = Agent::start(&topo.server.ns, config())?;
            filter.load()?;
            filter.deny_udp_port(FILTER_PORT)?;
            agent
        }
    };
    assert_status_lists_both(&topo)?;
    assert_both_verdicts(&topo, &agent)?;

    // `status` says where serve-guard runs and what runs before it.
    let out = agent.cli(&["status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dispatcher"), "{text}");
    assert!(text.contains("runs first"), "{text}");
    Ok(())
}

#[test]
fn xdp_filter_first_then_serve_guard_both_filter() -> Result<()> {
    both_orders(Order::XdpFilterFirst)
}

#[test]
fn serve_guard_first_then_xdp_filter_both_filter() -> Result<()> {
    both_orders(Order::ServeGuardFirst)
}

/// A program that does not speak the protocol (here xdp-filter's program loaded alone, as libxdp does with
/// LIBXDP_SKIP_DISPATCHER=1) is never replaced: the agent refuses, naming it, attaches nothing,
/// and the program keeps the interface.
#[test]
fn a_program_outside_the_protocol_is_refused_by_name() -> Result<()> {
    let topo = Topology::new()?;
    let _unload = UnloadAll {
        ns: topo.server.ns.clone(),
        iface: IFACE.to_owned(),
    };
    let out = topo
        .server
        .ns
        .command("xdp-loader")
        .args(["load", "-m", "native", IFACE, XDP_PASS_OBJECT])
        .env("LIBXDP_SKIP_DISPATCHER", "1")
        .output()?;
    anyhow::ensure!(out.status.success(), "xdp-loader load: {out:?}");
    let program = topo.server.ns.xdp_program(IFACE)?;
    assert!(program.is_some());

    let mut agent = Agent::new(&topo.server.ns, config())?;
    let status = agent.run_to_exit(&[])?;
    let logs = agent.run_logs();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!(
            "interface {IFACE} runs XDP program `xdpfilt_alw_all` (id {})",
            program.unwrap_or_default()
        )),
        "{logs}"
    );
    assert!(logs.contains("does not use a libxdp dispatcher"), "{logs}");
    assert_eq!(topo.server.ns.xdp_program(IFACE)?, program, "replaced");
    assert!(!agent.files().pin_dir.exists(), "{logs}");
    Ok(())
}

/// What a UDP prober saw through dispatcher swaps.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    answered: u64,
}

/// One echo after another from `client` to the Serve port until stopped.
fn prober(client: &Host, server: &Host, timeout: Duration) -> Result<probe::Background<Tally>> {
    let to = SocketAddr::new(server.v4.into(), SERVE_PORT);
    Ok(probe::Background::start(&client.ns, move |stop| {
        let mut tally = Tally::default();
        loop {
            tally.sent += 1;
            tally.answered += u64::from(probe::here::udp_echo(to, timeout).is_ok());
            if !stop.wait(Duration::ZERO) {
                return tally;
            }
        }
    })?)
}

/// A topology with echo servers and xdp-filter loaded; `None` when this kernel cannot run a
/// dispatcher (the test then has nothing to check here).
fn shared_setup() -> Result<Option<(Topology, UdpEchoServer, UnloadAll, XdpFilter)>> {
    let topo = Topology::new()?;
    let unload = UnloadAll {
        ns: topo.server.ns.clone(),
        iface: IFACE.to_owned(),
    };
    let echo = UdpEchoServer::start(&topo.server.ns, &[SERVE_PORT, FILTER_PORT])?;
    let mut filter = XdpFilter::new(&topo.server.ns, IFACE);
    filter.load()?;
    if !filter.in_dispatcher()? {
        eprintln!(
            "SKIPPED: this kernel refuses extension (freplace) programs; the VM matrix runs \
             this check on Debian's kernels"
        );
        return Ok(None);
    }
    filter.deny_udp_port(FILTER_PORT)?;
    Ok(Some((topo, echo, unload, filter)))
}

/// xdp-filter leaves and joins again while probers run: serve-guard's verdicts never lapse (no
/// inside echo lost, no outside one answered); then `detach` takes serve-guard out and leaves
/// xdp-filter's rule in force.
#[test]
fn removing_either_program_leaves_the_other_working_without_a_gap() -> Result<()> {
    let Some((topo, _echo, _unload, mut filter)) = shared_setup()? else {
        return Ok(());
    };
    let mut agent = Agent::start(&topo.server.ns, config())?;
    let inside = prober(&topo.inside, &topo.server, limits::PROBE_IO)?;
    let outside = prober(&topo.outside, &topo.server, ECHO_TIMEOUT)?;

    filter.unload()?;
    assert!(echoed(&topo.inside, &topo.server, FILTER_PORT), "rule gone");
    filter.load()?;
    filter.deny_udp_port(FILTER_PORT)?;
    assert_status_lists_both(&topo)?;
    assert_both_verdicts(&topo, &agent)?;

    let (inside, outside) = (inside.finish()?, outside.finish()?);
    assert!(inside.sent > 0 && outside.sent > 0);
    assert_eq!(inside.answered, inside.sent, "inside lost: {inside:?}");
    assert_eq!(outside.answered, 0, "outside answered: {outside:?}");

    assert!(agent.stop()?.success(), "{}", agent.run_logs());
    // Without the agent, `status` reads the slot from the kernel.
    let out = agent.cli(&["status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dispatcher:"), "{text}");
    let out = agent.cli(&["detach"])?;
    assert!(out.status.success(), "{out:?}");
    let status = xdp_tools::loader_status(&topo.server.ns, IFACE)?;
    assert!(!status.contains("serve_guard"), "{status}");
    assert!(status.contains("xdpfilt"), "{status}");
    assert!(
        echoed(&topo.outside, &topo.server, SERVE_PORT),
        "still filtered"
    );
    assert!(
        !echoed(&topo.inside, &topo.server, FILTER_PORT),
        "rule lost"
    );
    Ok(())
}

/// `kill -9` of the agent, then xdp-filter joins while it is gone: libxdp's pins keep
/// serve-guard's slot through the swap; the restarted agent takes its slot over (one serve-guard
/// program in the dispatcher afterwards).
#[test]
fn kill_9_while_another_program_joins() -> Result<()> {
    let Some((topo, _echo, _unload, mut filter)) = shared_setup()? else {
        return Ok(());
    };
    filter.unload()?;
    let mut agent = Agent::start(&topo.server.ns, config())?;
    let inside = prober(&topo.inside, &topo.server, limits::PROBE_IO)?;
    let outside = prober(&topo.outside, &topo.server, ECHO_TIMEOUT)?;

    agent.kill9()?;
    filter.load()?;
    filter.deny_udp_port(FILTER_PORT)?;
    assert_status_lists_both(&topo)?;
    agent.restart()?;
    assert_both_verdicts(&topo, &agent)?;
    let status = xdp_tools::loader_status(&topo.server.ns, IFACE)?;
    assert_eq!(status.matches("serve_guard").count(), 1, "{status}");
    assert!(agent.logs().contains("slot adopted"), "{}", agent.logs());

    let (inside, outside) = (inside.finish()?, outside.finish()?);
    assert_eq!(inside.answered, inside.sent, "inside lost: {inside:?}");
    assert_eq!(outside.answered, 0, "outside answered: {outside:?}");
    Ok(())
}
