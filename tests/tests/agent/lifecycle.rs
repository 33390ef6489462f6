//! The agent's lifecycle on a real kernel: start (pins, XDP on the interface), restart (adopts
//! maps and link, replaces the program), stop (keep / detach), `serve-guard detach`, and configs
//! that must attach nothing.
//!
//! Each test builds its own namespaces (the harness's [`Topology`]: server, inside and outside
//! client on one bridge), its own pin folder on bpffs and temp dir; the guards remove all of it on
//! drop, also when a test fails. Waits are polls with a deadline.

use anyhow::{Context as _, Result};
use serve_guard::filter::{AttachMode, LinkState, PinLayout};
use serve_guard_common::{Family, Reason, maps};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::netns::{Netns, XdpAttachMode};
use serve_guard_tests::probe;
use serve_guard_tests::server::UdpEchoServer;
use serve_guard_tests::topology::{Host, IFACE, Topology};
use serve_guard_tests::{limits, wait_for};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every client of the topology is outside this allow-list; its packets to a protected port are
/// dropped. The IPv6 entry has host bits set: the agent normalises it with a warning.
const ALLOW_LIST: [&str; 2] = ["10.0.0.0/8", "fd00:1::1/64"];
const PROTECTED_PORT: u16 = 8000;
/// Declared public in [`start_pins_everything_and_attaches_to_the_interface`] (open to anyone);
/// guarded under the default policy elsewhere.
const OPEN_PORT: u16 = 7000;
/// Longest wait for counters to move or a log line to appear.
const WAIT: Duration = limits::AGENT_READY;

/// A private-mode agent on the server's interface, protecting [`PROTECTED_PORT`], allowing
/// [`ALLOW_LIST`].
fn config() -> AgentConfig {
    AgentConfig::private(&[IFACE])
        .serve_ports(&[PROTECTED_PORT])
        .cidrs(&ALLOW_LIST)
}

/// Sends `count` UDP datagrams from `client` to the server's `port`. Nothing listens: the XDP
/// program counts them before the stack would answer.
fn send_udp(client: &Host, server: &Host, port: u16, count: usize) -> Result<()> {
    let to = SocketAddr::new(server.v4.into(), port);
    let from = SocketAddr::new(client.v4.into(), 0);
    client.ns.run(move || -> std::io::Result<()> {
        let socket = UdpSocket::bind(from)?;
        for _ in 0..count {
            // ICMP unreachables from earlier sends may fail a send; that is fine.
            let _ = socket.send_to(b"serve-guard lifecycle", to);
        }
        Ok(())
    })??;
    Ok(())
}

/// IPv4 packets counted for `reason`, from the pinned counters map (readable with or without a
/// running agent).
fn counter(agent: &Agent, reason: Reason) -> Result<u64> {
    Ok(agent.counters()?.packets(reason, Family::Ipv4))
}

/// Waits until the IPv4 counter for `reason` reaches `at_least`.
fn wait_counter(agent: &Agent, reason: Reason, at_least: u64) -> Result<()> {
    wait_for(&format!("{} >= {at_least}", reason.name()), WAIT, || {
        Ok(counter(agent, reason)? >= at_least)
    })
}

fn layout(agent: &Agent) -> PinLayout {
    PinLayout::new(&agent.files().pin_dir)
}

/// The pinned link on the server's interface.
fn link(agent: &Agent, mode: AttachMode) -> Result<LinkState> {
    Ok(LinkState::read(&layout(agent).link(IFACE, mode), "xdp")?)
}

/// The id of the XDP program on `iface` in `ns`, as the program ids in [`LinkState`].
fn xdp_program(ns: &Netns, iface: &str) -> Result<Option<u32>> {
    ns.xdp_program(iface)?
        .map(|id| u32::try_from(id).context("program id"))
        .transpose()
}

#[test]
fn start_pins_everything_and_attaches_to_the_interface() -> Result<()> {
    let topo = Topology::new()?;
    let cfg = config().public_ports(&[&OPEN_PORT.to_string()]);
    let mut agent = Agent::start(&topo.server.ns, cfg)?;

    let mut expected: Vec<String> = maps::ALL.iter().map(|m| format!("maps/{m}")).collect();
    expected.push(format!("links/{IFACE}@driver"));
    expected.push("prog".into());
    expected.sort();
    assert_eq!(agent.files().pins()?, expected);

    let link = link(&agent, AttachMode::Driver)?;
    assert_eq!(
        xdp_program(&topo.server.ns, IFACE)?,
        Some(link.program_id),
        "ip link show"
    );

    let logs = agent.logs();
    assert!(
        logs.contains("line 2: `fd00:1::1/64` has host bits set; using fd00:1::/64"),
        "{logs}"
    );
    assert!(
        logs.contains(&format!(
            "serve-guard running: mode private, interfaces {IFACE} (driver, new), serve ports {PROTECTED_PORT} (strict), every other port guarded, open: {OPEN_PORT}, CIDRs 1 IPv4 + 1 IPv6, audit off, on_stop keep"
        )),
        "{logs}"
    );

    // The filter filters: a client outside the list to the protected port is dropped, to a public
    // port it passes.
    send_udp(&topo.outside, &topo.server, PROTECTED_PORT, 5)?;
    send_udp(&topo.outside, &topo.server, OPEN_PORT, 3)?;
    wait_counter(&agent, Reason::DropOutsideVpc, 5)?;
    wait_counter(&agent, Reason::PassUnprotected, 3)?;

    // on_stop = keep: after SIGTERM the program stays on the interface with its pins.
    let status = agent.stop()?;
    let logs = agent.logs();
    assert!(status.success(), "{status}\n{logs}");
    assert!(logs.contains("on_stop = keep"), "{logs}");
    // program_log is off by default: no logger runs, so no record can have been forwarded.
    assert!(!logs.contains("serve_guard::xdp"), "{logs}");
    assert_eq!(agent.files().pins()?, expected);
    assert_eq!(xdp_program(&topo.server.ns, IFACE)?, Some(link.program_id));
    let before = counter(&agent, Reason::DropOutsideVpc)?;
    send_udp(&topo.outside, &topo.server, PROTECTED_PORT, 4)?;
    wait_counter(&agent, Reason::DropOutsideVpc, before + 4)?;
    Ok(())
}

#[test]
fn restart_adopts_the_pinned_maps_and_link() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::start(&topo.server.ns, config())?;
    let link_before = link(&agent, AttachMode::Driver)?;
    let map_ids = |agent: &Agent| -> Result<Vec<u32>> {
        maps::ALL
            .iter()
            .map(|m| agent.files().pinned_map_id(m))
            .collect()
    };
    let maps_before = map_ids(&agent)?;

    send_udp(&topo.outside, &topo.server, PROTECTED_PORT, 5)?;
    wait_counter(&agent, Reason::DropOutsideVpc, 5)?;
    let drops_before = counter(&agent, Reason::DropOutsideVpc)?;

    // kill -9: no orderly stop at all; the pins keep the filter in place.
    agent.kill9()?;
    assert_eq!(
        xdp_program(&topo.server.ns, IFACE)?,
        Some(link_before.program_id)
    );

    agent.restart()?;
    let link_after = link(&agent, AttachMode::Driver)?;
    assert_eq!(link_after.link_id, link_before.link_id, "same link");
    assert_ne!(
        link_after.program_id, link_before.program_id,
        "the program was replaced"
    );
    assert_eq!(
        xdp_program(&topo.server.ns, IFACE)?,
        Some(link_after.program_id)
    );
    assert_eq!(map_ids(&agent)?, maps_before, "the same maps were adopted");
    let logs = agent.run_logs();
    assert!(
        logs.contains(&format!("interfaces {IFACE} (driver, adopted)")),
        "{logs}"
    );

    // Counters kept their value and keep counting with the new program.
    assert!(counter(&agent, Reason::DropOutsideVpc)? >= drops_before);
    send_udp(&topo.outside, &topo.server, PROTECTED_PORT, 3)?;
    wait_counter(&agent, Reason::DropOutsideVpc, drops_before + 3)?;
    let status = agent.stop()?;
    assert!(status.success(), "{}", agent.run_logs());
    Ok(())
}

/// An upgrade from earlier versions' allow-lists (LPM tries, the nibble trie, the directory
/// without groups): pins of those layouts are not adopted; the agent creates and fills the new
/// maps, attaches, then removes every old pin.
#[test]
fn an_earlier_versions_allow_list_pins_are_replaced() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::new(&topo.server.ns, config())?;
    let maps_dir = layout(&agent).maps_dir();
    std::fs::create_dir_all(&maps_dir)?;
    for (n, name) in maps::RETIRED.into_iter().enumerate() {
        // The first two are LPM tries (BPF_F_NO_PREALLOC) keyed by prefix length + address;
        // the later layouts' are arrays (their sizes do not matter: none is adopted).
        let shape: &[&str] = match n {
            0 => &["type", "lpm_trie", "key", "8", "value", "1", "flags", "1"],
            1 => &["type", "lpm_trie", "key", "20", "value", "1", "flags", "1"],
            _ => &["type", "array", "key", "4", "value", "4"],
        };
        let out = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(maps_dir.join(name))
            .args(shape)
            .args(["entries", "16", "name", name])
            .output()?;
        assert!(out.status.success(), "bpftool: {out:?}");
    }
    agent.launch()?;
    agent.wait_ready()?;
    let mut expected: Vec<String> = maps::ALL.iter().map(|m| format!("maps/{m}")).collect();
    expected.push(format!("links/{IFACE}@driver"));
    expected.push("prog".into());
    expected.sort();
    assert_eq!(agent.files().pins()?, expected, "old pins removed");
    send_udp(&topo.outside, &topo.server, PROTECTED_PORT, 3)?;
    wait_counter(&agent, Reason::DropOutsideVpc, 3)?;
    assert!(agent.stop()?.success(), "{}", agent.logs());
    Ok(())
}

#[test]
fn detach_removes_every_pin_and_the_program() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::start(&topo.server.ns, config())?;

    // Refused while the agent runs, and nothing is removed.
    let out = agent.cli(&["detach"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is running"), "{stderr}");
    assert!(xdp_program(&topo.server.ns, IFACE)?.is_some());
    assert!(layout(&agent).program().exists());

    assert!(agent.stop()?.success(), "{}", agent.logs());
    let out = agent.cli(&["detach"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("removed links on {IFACE}"))
            && stdout.contains("the program")
            && stdout.contains(maps::NODES_V4),
        "{stdout}"
    );
    assert!(!agent.files().pin_dir.exists(), "no pin left");
    assert_eq!(xdp_program(&topo.server.ns, IFACE)?, None);

    let out = agent.cli(&["detach"])?;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to remove"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn on_stop_detach_removes_the_filter() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::start(&topo.server.ns, config().on_stop("detach"))?;
    assert!(xdp_program(&topo.server.ns, IFACE)?.is_some());
    let status = agent.stop()?;
    let logs = agent.logs();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("on_stop = detach: removed"), "{logs}");
    assert!(!agent.files().pin_dir.exists());
    assert_eq!(xdp_program(&topo.server.ns, IFACE)?, None);
    Ok(())
}

#[test]
fn a_second_agent_on_the_same_state_is_refused() -> Result<()> {
    let topo = Topology::new()?;
    let agent = Agent::start(&topo.server.ns, config())?;
    // A second `serve-guard run` on the same files, while the first runs.
    let second = agent.cli(&["run"])?;
    let logs = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{logs}");
    let pid = agent.pid().context("the first agent's pid")?;
    assert!(
        logs.contains(&format!("another agent (pid {pid}) already runs")),
        "{logs}"
    );
    Ok(())
}

/// `serve-guard run <args>` must fail with `message` before the kernel is touched: nothing
/// pinned, nothing attached.
fn assert_attaches_nothing(agent: &mut Agent, args: &[&str], message: &str) -> Result<()> {
    let status = agent.run_to_exit(args)?;
    let logs = agent.run_logs();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains(message), "expected `{message}` in:\n{logs}");
    assert!(
        !agent.files().pin_dir.exists(),
        "pinned despite the error:\n{logs}"
    );
    assert_eq!(xdp_program(agent.netns(), IFACE)?, None);
    Ok(())
}

#[test]
fn a_missing_interface_attaches_nothing() -> Result<()> {
    let topo = Topology::new()?;
    // The real interface first: it must not be attached either.
    let cfg = AgentConfig::private(&[IFACE, "sgnosuch0"])
        .serve_ports(&[PROTECTED_PORT])
        .cidrs(&ALLOW_LIST);
    let mut agent = Agent::new(&topo.server.ns, cfg)?;
    assert_attaches_nothing(
        &mut agent,
        &[],
        "interface sgnosuch0 does not exist in this network namespace",
    )
}

#[test]
fn a_bad_cidr_attaches_nothing() -> Result<()> {
    let topo = Topology::new()?;
    let cfg = config().cidrs(&["10.0.0.0/8", "# peered", "10.1.0.0/33"]);
    let mut agent = Agent::new(&topo.server.ns, cfg)?;
    assert_attaches_nothing(&mut agent, &[], "line 3: `10.1.0.0/33` is not a CIDR")
}

#[test]
fn bad_config_values_attach_nothing() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::new(&topo.server.ns, config())?;
    assert_attaches_nothing(
        &mut agent,
        &["--serve-port", "70000"],
        "`serve_ports`: 70000 is not a port (1-65535)",
    )?;
    std::fs::remove_file(&agent.files().cidr_file)?;
    assert_attaches_nothing(&mut agent, &[], "vpc-cidrs does not exist")?;
    let config_file = agent.files().config.clone();
    let text = std::fs::read_to_string(&config_file)?;
    std::fs::write(
        &config_file,
        format!("{text}public_ports = [\"9000-8000\"]\n"),
    )?;
    assert_attaches_nothing(
        &mut agent,
        &[],
        "`public_ports`: range \"9000-8000\" is out of order",
    )?;
    std::fs::write(&config_file, format!("{text}serve_port = 1\n"))?;
    assert_attaches_nothing(&mut agent, &[], "unknown field `serve_port`")
}

#[test]
fn program_log_forwards_the_programs_records() -> Result<()> {
    let topo = Topology::new()?;
    let agent = Agent::start(&topo.server.ns, config().set("program_log", true))?;
    send_udp(&topo.outside, &topo.server, PROTECTED_PORT, 2)?;
    wait_for(
        "a record from the XDP program in the agent's log",
        WAIT,
        || {
            Ok(agent
                .logs()
                .lines()
                .any(|l| l.contains("serve_guard::xdp") && l.contains("drop_outside_vpc ipv4")))
        },
    )
}

/// The library API other subsystems build on, in-process: apply_cidrs, cidrs, ports, counters.
#[test]
fn filter_api_applies_lists_and_ports_to_the_live_maps() -> Result<()> {
    use serve_guard::cidr::CidrList;
    use serve_guard::config::{Config, Overrides};
    use serve_guard::filter::Filter;
    use serve_guard::ports::PortClass;

    let topo = Topology::new()?;
    // The harness's files (config, CIDR file, pin dir) and its cleanup, with no agent process:
    // the filter runs in this test process.
    let harness = Agent::new(&topo.server.ns, config())?;
    let files = harness.files();
    let client = &topo.outside;
    let start = |ports: &[u16]| -> Result<Filter> {
        let mut table: toml::Table = std::fs::read_to_string(&files.config)?.parse()?;
        let ports: Vec<toml::Value> = ports.iter().map(|&p| i64::from(p).into()).collect();
        table.insert("serve_ports".into(), ports.into());
        let text = toml::to_string(&table)?;
        let config = Config::from_toml(&text, &files.config, &Overrides::default())?;
        // Interface names and XDP attach resolve in the caller's network namespace.
        topo.server.ns.run(|| -> Result<Filter> {
            let host = config.check_host()?;
            Ok(Filter::start(&config, &host)?)
        })?
    };

    let mut filter = start(&[8000, 9000])?;
    let status = filter.status();
    assert_eq!(status.interfaces.len(), 1);
    assert_eq!(status.interfaces[0].name, IFACE);
    assert_eq!(status.interfaces[0].mode, AttachMode::Driver);
    assert!(!status.interfaces[0].adopted);
    assert_eq!((status.cidrs_v4, status.cidrs_v6), (1, 1));
    // The port map under the default policy: Serve's ports strict, SSH open, the rest guarded.
    let ports_of = |f: &Filter, class: PortClass| -> Result<Vec<u16>> {
        Ok((0..=u16::MAX)
            .zip(f.ports()?)
            .filter(|&(_, c)| c == class)
            .map(|(port, _)| port)
            .collect())
    };
    let classes = filter.ports()?;
    assert_eq!(ports_of(&filter, PortClass::Strict)?, [8000, 9000]);
    assert_eq!(classes[22], PortClass::Open);
    assert_eq!(classes[usize::from(OPEN_PORT)], PortClass::Guarded);
    let original = CidrList::from_file_text(&ALLOW_LIST.join("\n"))?.0;
    assert_eq!(filter.cidrs()?, original);

    let packets = |f: &Filter, reason: Reason| -> Result<u64> {
        Ok(f.counters()?.get(reason, Family::Ipv4).packets)
    };
    let drops = |f: &Filter| packets(f, Reason::DropOutsideVpc);
    let allowed = |f: &Filter| packets(f, Reason::PassAllowed);

    send_udp(client, &topo.server, PROTECTED_PORT, 3)?;
    wait_for("drops while the client is outside", WAIT, || {
        Ok(drops(&filter)? >= 3)
    })?;

    // Let the client in.
    let mut with_client = original.clone();
    with_client.insert(format!("{}/32", client.v4).parse()?);
    let stats = filter.apply_cidrs(&with_client)?;
    assert_eq!(
        (stats.added, stats.removed, stats.v4, stats.v6),
        (1, 0, 2, 1)
    );
    assert_eq!(filter.cidrs()?, with_client);
    let drops_before = drops(&filter)?;
    send_udp(client, &topo.server, PROTECTED_PORT, 3)?;
    wait_for("passes once the client is in the list", WAIT, || {
        Ok(allowed(&filter)? >= 3)
    })?;
    assert_eq!(drops(&filter)?, drops_before);

    // And out again.
    let stats = filter.apply_cidrs(&original)?;
    assert_eq!((stats.added, stats.removed), (0, 1));
    assert_eq!(filter.cidrs()?, original);
    send_udp(client, &topo.server, PROTECTED_PORT, 3)?;
    wait_for("drops once the client left the list", WAIT, || {
        Ok(drops(&filter)? >= drops_before + 3)
    })?;

    // An empty list passes no source (a `[cloud]` node before the cloud first answered; edits
    // cannot empty the list, the store refuses them), and the list comes back whole.
    let stats = filter.apply_cidrs(&CidrList::default())?;
    assert_eq!((stats.v4, stats.v6), (0, 0));
    assert!(filter.cidrs()?.is_empty());
    filter.apply_cidrs(&original)?;
    assert_eq!(filter.cidrs()?, original);

    // A restart with fewer ports clears the ones no longer configured; the link is adopted.
    drop(filter);
    let filter = start(&[8000])?;
    assert_eq!(ports_of(&filter, PortClass::Strict)?, [8000]);
    assert_eq!(
        filter.ports()?[9000],
        PortClass::Guarded,
        "9000 falls back to the default"
    );
    assert!(filter.status().interfaces[0].adopted);
    assert!(drops(&filter)? >= drops_before + 3, "counters survive");
    Ok(())
}

/// A bridge device has no native XDP: `auto` falls back to skb with a warning, `driver` fails
/// and leaves nothing behind.
#[test]
fn xdp_mode_auto_falls_back_to_skb_and_driver_refuses() -> Result<()> {
    const BRIDGE: &str = "br0";
    let ns = Netns::new("d")?;
    ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ns.ip(&["link", "set", BRIDGE, "up"])?;

    let cfg = AgentConfig::private(&[BRIDGE])
        .serve_ports(&[PROTECTED_PORT])
        .cidrs(&ALLOW_LIST)
        .xdp_mode("driver");
    let mut agent = Agent::new(&ns, cfg)?;
    let status = agent.run_to_exit(&[])?;
    let logs = agent.run_logs();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!(
            "cannot attach the XDP program to {BRIDGE} in driver mode"
        )) && logs.contains("the driver has no native XDP: set xdp_mode = \"auto\" or \"skb\""),
        "{logs}"
    );
    assert!(
        !agent.files().pin_dir.exists(),
        "a failed first start leaves no pin"
    );
    assert_eq!(xdp_program(&ns, BRIDGE)?, None);

    // The flag overrides the config's `driver`.
    agent.launch_with(&["--xdp-mode", "auto"])?;
    agent.wait_ready()?;
    let logs = agent.run_logs();
    assert!(logs.contains("fell back to skb"), "{logs}");
    assert!(
        logs.contains(&format!("interfaces {BRIDGE} (skb, new)")),
        "{logs}"
    );
    assert!(layout(&agent).link(BRIDGE, AttachMode::Skb).exists());
    let attached = ns.xdp_attachment(BRIDGE)?.context("no XDP on the bridge")?;
    assert_eq!(attached.mode, XdpAttachMode::Skb, "xdpgeneric");
    Ok(())
}

/// An interface that another agent's filter holds (another pin_dir) is refused, saying so, not
/// filtered a second time at TC; the second agent's (fresh) pin folder is cleaned up and the
/// first program stays.
#[test]
fn an_interface_with_another_xdp_program_is_refused() -> Result<()> {
    let topo = Topology::new()?;
    let _first = Agent::start(&topo.server.ns, config())?;
    let program = xdp_program(&topo.server.ns, IFACE)?;

    // Its own pin dir, state and control socket (the harness's per-agent paths); its own
    // metrics port, as the first agent's runs in the same namespace.
    let mut second = Agent::new(&topo.server.ns, config().metrics_listen("127.0.0.1:9465"))?;
    let status = second.run_to_exit(&[])?;
    let logs = second.run_logs();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!(
            "interface {IFACE} has another XDP program attached: serve-guard's own filter \
             (program id {})",
            program.unwrap_or_default()
        )),
        "{logs}"
    );
    assert!(!second.files().pin_dir.exists(), "{logs}");
    assert_eq!(xdp_program(&topo.server.ns, IFACE)?, program);
    Ok(())
}

/// An inside probe whose echo takes longer than this counts as dropped. UDP has no
/// retransmission, so a dropped datagram fails its probe however long we wait: this bounds the
/// wait, it does not judge speed.
const INSIDE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Outside probes are expected to go unanswered; their verdict comes from the drop counter,
/// which must account for every one of them, so a short wait loses nothing.
const OUTSIDE_PROBE_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Clone, Copy)]
struct ProbeTally {
    sent: u64,
    answered: u64,
}

/// Sends UDP probes from `client` to the echo server until `stop`, one at a time, each waiting
/// at most `timeout` for its own echo (a fresh socket per probe: a late echo cannot be taken
/// for the next probe's).
fn udp_prober(
    client: &Host,
    server: SocketAddr,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<ProbeTally>>,
) -> Result<std::thread::JoinHandle<std::io::Result<()>>> {
    Ok(client.ns.spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let answered = probe::here::udp_echo(server, timeout).is_ok();
            let mut t = tally.lock().expect("tally lock");
            t.sent += 1;
            t.answered += u64::from(answered);
        }
    })?)
}

/// Issue 4, test 2: `kill -9` of the agent leaves the filter working (the inside prober is
/// served, the outside one blocked), and a restart adopts the pinned state with no change for
/// either prober. The counters, which survive both, account for every probe exactly.
#[test]
fn kill_9_and_restart_change_nothing_for_the_probers() -> Result<()> {
    let topo = Topology::new()?;
    let _echo = UdpEchoServer::start(&topo.server.ns, &[PROTECTED_PORT])?;
    let cfg = config().cidrs(&Topology::vpc_cidrs());
    let mut agent = Agent::start(&topo.server.ns, cfg)?;

    let server = SocketAddr::new(topo.server.v4.into(), PROTECTED_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(Mutex::new(ProbeTally::default()));
    let outside = Arc::new(Mutex::new(ProbeTally::default()));
    let probers = [
        udp_prober(
            &topo.inside,
            server,
            INSIDE_PROBE_TIMEOUT,
            Arc::clone(&stop),
            Arc::clone(&inside),
        )?,
        udp_prober(
            &topo.outside,
            server,
            OUTSIDE_PROBE_TIMEOUT,
            Arc::clone(&stop),
            Arc::clone(&outside),
        )?,
    ];
    let sent = |tally: &Mutex<ProbeTally>| tally.lock().expect("tally lock").sent;
    let both_probed = |at_least: u64| {
        wait_for("probes from both clients", WAIT, || {
            Ok(sent(&inside) >= at_least && sent(&outside) >= at_least)
        })
    };
    both_probed(2)?;

    agent.kill9()?;
    both_probed(sent(&outside) + 2)?;

    agent.restart()?;
    both_probed(sent(&outside) + 2)?;

    let status = agent.stop()?;
    stop.store(true, Ordering::Relaxed);
    for prober in probers {
        prober.join().expect("prober panicked")?;
    }
    assert!(status.success(), "{}", agent.run_logs());

    let inside = *inside.lock().expect("tally lock");
    let outside = *outside.lock().expect("tally lock");
    assert_eq!(
        inside.answered, inside.sent,
        "inside probes lost: {inside:?}"
    );
    assert_eq!(outside.answered, 0, "outside probes answered: {outside:?}");
    // Every probe has been through the program by now; poll in case a counter update is still
    // in flight, then compare exactly.
    let counts = || -> Result<(u64, u64)> {
        Ok((
            counter(&agent, Reason::DropOutsideVpc)?,
            counter(&agent, Reason::PassAllowed)?,
        ))
    };
    let _ = wait_for("the counters to account for every probe", WAIT, || {
        Ok(counts()? == (outside.sent, inside.sent))
    });
    let (dropped, passed) = counts()?;
    assert_eq!(
        dropped, outside.sent,
        "every outside probe dropped, no inside one"
    );
    assert_eq!(passed, inside.sent, "every inside probe passed");
    Ok(())
}

/// An interface deleted and re-created under the same name (a container runtime does this)
/// leaves a defunct pinned link behind: the next start replaces it with a new one.
#[test]
fn a_recreated_interface_gets_a_new_link() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::start(&topo.server.ns, config())?;
    assert!(agent.stop()?.success(), "{}", agent.logs());
    let old = link(&agent, AttachMode::Driver)?;

    let ns = &topo.server.ns;
    ns.ip(&["link", "del", IFACE])?;
    let peer = format!("{IFACE}p");
    ns.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", &peer])?;
    ns.ip(&["link", "set", IFACE, "up"])?;
    assert_eq!(link(&agent, AttachMode::Driver)?.ifindex, 0, "defunct");

    agent.restart()?;
    let logs = agent.run_logs();
    assert!(logs.contains("is stale"), "{logs}");
    assert!(
        logs.contains(&format!("interfaces {IFACE} (driver, new)")),
        "{logs}"
    );
    let new = link(&agent, AttachMode::Driver)?;
    assert_ne!(new.link_id, old.link_id);
    assert_eq!(xdp_program(ns, IFACE)?, Some(new.program_id));
    Ok(())
}
