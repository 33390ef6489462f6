//! Issue 20: serve-guard beside other XDP programs through libxdp's dispatcher (protocol v2),
//! against Debian's xdp-tools on veths: xdp-filter (its own rule: UDP to [`FILTER_PORT`] dropped)
//! and serve-guard in either order, each keeping its job, `xdp-loader status` listing both; and
//! beside a program outside the protocol, the TC ingress fallback.

use anyhow::{Context as _, Result};
use serve_guard::filter::LinkState;
use serve_guard_common::{Family, Reason};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::metrics::sample;
use serve_guard_tests::probe;
use serve_guard_tests::server::{HttpServer, UdpEchoServer};
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
/// A TCP port in no list: guarded (`guard = "node"`), outside connections refused.
const GUARDED_PORT: u16 = 8080;
/// The agent's metrics listener in the server's namespace.
const METRICS: &str = "127.0.0.1:9464";
/// An XDP program from Debian's xdp-tools, loaded alone (outside the protocol).
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

/// Loads xdp-filter's allow-all program alone on the server's interface, as libxdp does with
/// LIBXDP_SKIP_DISPATCHER=1: a program that does not speak the protocol. Returns its id.
fn load_lone_program(topo: &Topology) -> Result<u64> {
    xdp_tools::load_alone(&topo.server.ns, IFACE, XDP_PASS_OBJECT)?;
    topo.server
        .ns
        .xdp_program(IFACE)?
        .context("no XDP program after xdp-loader load")
}

/// A program that does not speak the protocol is never replaced; with xdp_mode = "driver" (no TC
/// fallback) the agent refuses, naming it, in either attach mode, and attaches nothing.
#[test]
fn a_program_outside_the_protocol_is_refused_by_name_in_driver_mode() -> Result<()> {
    let topo = Topology::new()?;
    let _unload = UnloadAll {
        ns: topo.server.ns.clone(),
        iface: IFACE.to_owned(),
    };
    let program = load_lone_program(&topo)?;
    for attach in ["dispatcher", "link"] {
        let mut agent = Agent::new(
            &topo.server.ns,
            config().set("xdp_attach", attach).xdp_mode("driver"),
        )?;
        let status = agent.run_to_exit(&[])?;
        let logs = agent.run_logs();
        assert!(!status.success(), "{logs}");
        let named = match attach {
            "dispatcher" => {
                format!("interface {IFACE} runs XDP program `xdpfilt_alw_all` (id {program})")
            }
            _ => format!("program `xdpfilt_alw_all` (id {program})"),
        };
        assert!(logs.contains(&named), "{attach}: {logs}");
        assert!(logs.contains("forbids the TC ingress fallback"), "{logs}");
        assert_eq!(
            topo.server.ns.xdp_program(IFACE)?,
            Some(program),
            "replaced"
        );
        assert!(!agent.files().pin_dir.exists(), "{logs}");
    }
    Ok(())
}

/// What the TC fallback must hold, probed from both clients: the Serve port (strict) and a
/// guarded TCP port from outside are closed, the public port open, the inside client served.
fn assert_tc_verdicts(topo: &Topology, agent: &Agent) -> Result<()> {
    // From the pins (`stats`): the program on the interface's XDP hook is not ours.
    let before = agent.stats_cli()?;
    assert!(
        echoed(&topo.inside, &topo.server, SERVE_PORT),
        "inside not served"
    );
    assert!(
        !echoed(&topo.outside, &topo.server, SERVE_PORT),
        "outside served"
    );
    assert!(
        echoed(&topo.outside, &topo.server, FILTER_PORT),
        "public port closed"
    );
    let guarded = SocketAddr::new(topo.server.v4.into(), GUARDED_PORT);
    assert!(
        probe::tcp_connect(&topo.outside.ns, guarded, ECHO_TIMEOUT).is_err(),
        "outside connected to a guarded port"
    );
    probe::tcp_connect(&topo.inside.ns, guarded, limits::PROBE_IO)
        .map_err(|e| anyhow::anyhow!("inside cannot connect to the guarded port: {e:?}"))?;
    wait_for(
        "the TC program's drops counted",
        limits::AGENT_READY,
        || {
            let since = agent.stats_cli()?.since(&before);
            Ok(since.packets(Reason::DropOutsideVpc, Family::Ipv4) > 0
                && since.packets(Reason::DropGuarded, Family::Ipv4) > 0)
        },
    )
}

/// The TC ingress fallback: beside a lone XDP program the filter runs at TC ingress with the same
/// verdicts (strict, guarded through the socket lookup, public), says so in the log, `status` and
/// the metrics; a kill -9 and a restart adopt the TC attachment (tcx: the pinned link; clsact: the
/// filter at its priority and handle) while probers run (no inside echo lost, no outside one
/// answered); once the program leaves, a restart moves the filter to XDP and takes the TC one
/// off, still without a gap; `detach` removes it.
fn tc_fallback(hook: &str) -> Result<()> {
    let topo = Topology::new()?;
    let _unload = UnloadAll {
        ns: topo.server.ns.clone(),
        iface: IFACE.to_owned(),
    };
    let _echo = UdpEchoServer::start(&topo.server.ns, &[SERVE_PORT, FILTER_PORT])?;
    let _http = HttpServer::start(&topo.server.ns, &[GUARDED_PORT])?;
    let program = load_lone_program(&topo)?;
    let mut cfg = config().set("xdp_attach", "link").metrics_listen(METRICS);
    if hook == "clsact" {
        cfg = cfg.env("SERVE_GUARD_TC_HOOK", "clsact");
    }
    let mut agent = Agent::start(&topo.server.ns, cfg)?;
    let logs = agent.logs();
    assert!(
        logs.contains(&format!(
            "the XDP hook is held by program `xdpfilt_alw_all` (id {program})"
        )) && logs.contains(&format!("filtering at TC ingress ({hook})")),
        "{logs}"
    );
    assert_eq!(
        topo.server.ns.xdp_program(IFACE)?,
        Some(program),
        "replaced"
    );
    let pinned = format!("@{hook}");
    let pins = agent.files().pins()?;
    assert!(pins.iter().any(|p| p.ends_with(&pinned)), "{pins:?}");
    let ours = TcAttachment::of(&topo, &agent, hook)?;
    assert!(
        ours.present()?,
        "{hook}: not at TC ingress as the kernel lists it"
    );
    assert_tc_verdicts(&topo, &agent)?;

    let out = agent.cli(&["status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{IFACE} (TC ingress, {hook}: XDP is held by `xdpfilt_alw_all` (id {program})"
        )),
        "{text}"
    );
    let scrape =
        probe::http_request(&topo.server.ns, METRICS.parse()?, "/metrics", &[])?.body_text();
    let series =
        format!("serve_guard_filter_attached{{interface=\"{IFACE}\",hook=\"tc\",mode=\"{hook}\"}}");
    assert_eq!(sample(&scrape, &series), Some(1.0), "{scrape}");

    // kill -9 and restart under probes: the TC attachment keeps filtering and is adopted.
    let inside = prober(&topo.inside, &topo.server, limits::PROBE_IO)?;
    let outside = prober(&topo.outside, &topo.server, ECHO_TIMEOUT)?;
    agent.kill9()?;
    agent.restart()?;
    assert_tc_verdicts(&topo, &agent)?;
    // The lone program leaves; the next start moves the filter to XDP, then takes TC off.
    let out = topo
        .server
        .ns
        .command("ip")
        .args(["link", "set", "dev", IFACE, "xdp", "off"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ip link set xdp off: {out:?}");
    agent.stop()?;
    agent.restart()?;
    let (inside, outside) = (inside.finish()?, outside.finish()?);
    assert!(inside.sent > 0 && outside.sent > 0);
    assert_eq!(inside.answered, inside.sent, "inside lost: {inside:?}");
    assert_eq!(outside.answered, 0, "outside answered: {outside:?}");
    assert!(
        agent.logs().contains("the TC ingress filter is removed"),
        "{}",
        agent.logs()
    );
    let pins = agent.files().pins()?;
    assert!(!pins.iter().any(|p| p.ends_with(&pinned)), "{pins:?}");
    wait_for("the TC attachment to go", limits::AGENT_READY, || {
        Ok(!ours.present()?)
    })?;
    assert!(topo.server.ns.xdp_program(IFACE)?.is_some(), "not at XDP");
    assert_tc_verdicts(&topo, &agent)?;

    assert!(agent.stop()?.success(), "{}", agent.run_logs());
    let out = agent.cli(&["detach"])?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        echoed(&topo.outside, &topo.server, SERVE_PORT),
        "still filtered"
    );
    Ok(())
}

/// Our program at TC ingress of the server's interface, as the kernel lists it.
enum TcAttachment<'t> {
    /// The tcx link, by id (links are not listed per interface by the tools here).
    Tcx(u32),
    /// The clsact filter, in `tc filter show`.
    Clsact(&'t Topology),
}

impl<'t> TcAttachment<'t> {
    fn of(topo: &'t Topology, agent: &Agent, hook: &str) -> Result<Self> {
        Ok(match hook {
            "tcx" => {
                let pin = agent.files().pin_dir.join(format!("links/{IFACE}@tcx"));
                TcAttachment::Tcx(LinkState::read(&pin, "tcx")?.link_id)
            }
            _ => TcAttachment::Clsact(topo),
        })
    }

    fn present(&self) -> Result<bool> {
        match self {
            TcAttachment::Tcx(id) => Ok(aya::programs::loaded_links()
                .filter_map(Result::ok)
                .any(|l| l.id() == *id)),
            TcAttachment::Clsact(topo) => {
                let out = topo
                    .server
                    .ns
                    .command("tc")
                    .args(["filter", "show", "dev", IFACE, "ingress"])
                    .output()?;
                anyhow::ensure!(out.status.success(), "tc filter show: {out:?}");
                Ok(String::from_utf8_lossy(&out.stdout).contains("serve_guard_tc"))
            }
        }
    }
}

#[test]
fn beside_a_lone_xdp_program_the_filter_runs_at_tc_ingress_tcx() -> Result<()> {
    tc_fallback("tcx")
}

/// The path kernels before 6.6 take, forced on this one.
#[test]
fn beside_a_lone_xdp_program_the_filter_runs_at_tc_ingress_clsact() -> Result<()> {
    tc_fallback("clsact")
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
