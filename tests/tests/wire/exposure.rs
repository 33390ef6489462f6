//! Paths around the filter (issue 7): the agent names every tunnel device it does not cover, every
//! SRv6 decapsulation route and rp_filter off on a covered interface, at start-up and in
//! `status`; a listed Ethernet-type tunnel is covered; a non-Ethernet interface is refused
//! before anything is attached. The overlay's peer is outside the list: under the default
//! `guard = "node"` its underlay port is guarded, so the tests that need the overlay up declare
//! that port public, as an operator with such a peer must.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::limits;
use serve_guard_tests::probe::{self, ConnectError};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, OUTSIDE_V4, SERVER_V4, Topology, VPC_V4, VPC_V6};
use std::net::{Ipv4Addr, SocketAddr};

const VXLAN: &str = "sgvx0";
/// A layer-3 tunnel (no Ethernet header), as a VPN daemon would create it. This kernel has no
/// ipip/gre/sit; a tun device has the same shape for the filter.
const TUN: &str = "sgtun0";
/// An SRv6 SID on the server whose End.DX4 action decapsulates into the main table.
const SRV6_SID: &str = "fd00:5e:0:99::/64";
const VXLAN_ID: &str = "4242";
const VXLAN_PORT: &str = "4789";
/// Addresses inside the VXLAN overlay: outside the VPC list, as an attacker's would be.
const OVERLAY_SERVER: Ipv4Addr = Ipv4Addr::new(198, 19, 42, 1);
const OVERLAY_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 42, 2);
const OVERLAY_PREFIX: &str = "24";
const SERVE_HTTP: u16 = 8000;
/// Another service, declared public where a test needs it reachable through the overlay.
const PUBLIC: u16 = 8080;

/// The server namespace with a VXLAN overlay to the outside client and a tun device (both up),
/// an SRv6 End.DX4 route when the kernel has SRv6 routes (`true` then), and IPv4 reverse-path
/// filtering off (a new namespace's default).
fn exposed_topology() -> Result<(Topology, bool)> {
    let topo = Topology::new()?;
    for (host, local, remote, overlay) in [
        (&topo.server, SERVER_V4, OUTSIDE_V4, OVERLAY_SERVER),
        (&topo.outside, OUTSIDE_V4, SERVER_V4, OVERLAY_CLIENT),
    ] {
        host.ns.ip(&[
            "link",
            "add",
            VXLAN,
            "type",
            "vxlan",
            "id",
            VXLAN_ID,
            "dstport",
            VXLAN_PORT,
            "local",
            &local.to_string(),
            "remote",
            &remote.to_string(),
            "dev",
            IFACE,
        ])?;
        host.ns.ip(&[
            "addr",
            "add",
            &format!("{overlay}/{OVERLAY_PREFIX}"),
            "dev",
            VXLAN,
        ])?;
        host.ns.ip(&["link", "set", VXLAN, "up"])?;
    }
    let ns = &topo.server.ns;
    let local = SERVER_V4.to_string();
    ns.ip(&["tuntap", "add", "dev", TUN, "mode", "tun"])?;
    ns.ip(&["link", "set", TUN, "up"])?;
    let srv6 = match ns.ip(&[
        "-6",
        "route",
        "add",
        SRV6_SID,
        "encap",
        "seg6local",
        "action",
        "End.DX4",
        "nh4",
        &local,
        "dev",
        IFACE,
    ]) {
        Ok(_) => true,
        // A kernel built without CONFIG_IPV6_SEG6_LWTUNNEL has no such routes, so no such path.
        Err(e) if e.to_string().contains("encapsulation type not supported") => {
            eprintln!("this kernel has no SRv6 routes (seg6local): that part is not exercised");
            false
        }
        Err(e) => return Err(e),
    };
    ns.sysctl("net/ipv4/conf/all/rp_filter", "0")?;
    ns.sysctl(&format!("net/ipv4/conf/{IFACE}/rp_filter"), "0")?;
    Ok((topo, srv6))
}

/// Private mode with the overlay's underlay port public (its peer is outside the list).
fn config(interfaces: &[&str]) -> AgentConfig {
    AgentConfig::private(interfaces)
        .cidrs(&[VPC_V4, VPC_V6])
        .public_ports(&[VXLAN_PORT])
}

/// `status --json`'s exposures, as (kind, the name it carries).
fn status_exposures(agent: &Agent) -> Result<Vec<(String, String)>> {
    let out = agent.cli(&["status", "--json"])?;
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let list = report["exposures"]
        .as_array()
        .context("status --json has no exposures list")?;
    Ok(list
        .iter()
        .map(|e| {
            let kind = e["kind"].as_str().unwrap_or_default().to_owned();
            let name = ["name", "dst", "interface"]
                .iter()
                .find_map(|k| e[*k].as_str())
                .unwrap_or_default()
                .to_owned();
            (kind, name)
        })
        .collect())
}

/// The outside client's HTTP status through the overlay to `port`, or why it got none.
fn through_overlay(topo: &Topology, port: u16) -> Result<u16, probe::ProbeError> {
    probe::http_get(&topo.outside.ns, SocketAddr::from((OVERLAY_SERVER, port)))
}

#[test]
fn every_path_around_the_filter_is_named_at_start_and_in_status() -> Result<()> {
    let (topo, srv6) = exposed_topology()?;
    let _http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP])?;
    let agent = Agent::start(&topo.server.ns, config(&[IFACE]))?;
    // The path is real: the outside source reaches Serve's port through the uncovered overlay.
    assert_eq!(through_overlay(&topo, SERVE_HTTP)?, 200);
    let logs = agent.logs();
    let mut needles = vec![
        format!("vxlan device {VXLAN} decapsulates"),
        format!("add \"{VXLAN}\" to interfaces"),
        format!("tun device {TUN} decapsulates"),
        format!("reverse-path filtering is off on {IFACE}"),
    ];
    if srv6 {
        needles.extend([format!("SRv6 route {SRV6_SID}"), "End.DX4".to_owned()]);
    }
    for needle in needles {
        ensure!(logs.contains(&needle), "no `{needle}` in the log:\n{logs}");
    }
    let mut found = status_exposures(&agent)?;
    found.sort();
    let mut want = vec![
        ("tunnel_device".to_owned(), VXLAN.to_owned()),
        ("tunnel_device".to_owned(), TUN.to_owned()),
        ("rp_filter_off".to_owned(), IFACE.to_owned()),
    ];
    if srv6 {
        want.push(("srv6_decap_route".to_owned(), SRV6_SID.to_owned()));
    }
    want.sort();
    assert_eq!(found, want);

    // `check` names them too, without making the config invalid.
    let check = agent.cli(&["check"])?;
    let check_text = String::from_utf8_lossy(&check.stdout);
    ensure!(
        check.status.success() && check_text.contains(&format!("warning: vxlan device {VXLAN}")),
        "check:\n{check_text}"
    );

    // Status reads the node live: turning rp_filter on clears that warning.
    topo.server
        .ns
        .sysctl(&format!("net/ipv4/conf/{IFACE}/rp_filter"), "1")?;
    let text = agent.cli(&["status"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        !text.contains("reverse-path filtering is off") && text.contains(VXLAN),
        "status after rp_filter=1:\n{text}"
    );
    Ok(())
}

#[test]
fn a_listed_vxlan_device_is_covered() -> Result<()> {
    let (topo, _) = exposed_topology()?;
    let _http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP, PUBLIC])?;
    let public = PUBLIC.to_string();
    let cfg = config(&[IFACE, VXLAN]).public_ports(&[VXLAN_PORT, &public]);
    let agent = Agent::start(&topo.server.ns, cfg)?;
    let found = status_exposures(&agent)?;
    ensure!(
        !found
            .iter()
            .any(|(kind, name)| kind == "tunnel_device" && name == VXLAN),
        "the covered {VXLAN} is still reported: {found:?}"
    );
    // The overlay works, and the filter on it drops the outside source's Serve traffic.
    assert_eq!(through_overlay(&topo, PUBLIC)?, 200);
    match probe::tcp_connect(
        &topo.outside.ns,
        SocketAddr::from((OVERLAY_SERVER, SERVE_HTTP)),
        limits::DROPPED_CONNECT,
    ) {
        Err(ConnectError::TimedOut(_)) => {}
        other => anyhow::bail!("connect to Serve through the covered overlay: {other:?}"),
    }
    ensure!(
        topo.server.ns.xdp_program(VXLAN)?.is_some(),
        "no XDP program on {VXLAN}"
    );
    Ok(())
}

/// The default port policy closes an uncovered overlay to a peer outside the list: its underlay
/// datagrams reach the tunnel's unconnected socket on a guarded port, and are dropped on the
/// covered interface before they are decapsulated.
#[test]
fn the_default_guard_closes_an_uncovered_overlay_to_outside_peers() -> Result<()> {
    let (topo, _) = exposed_topology()?;
    let _http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP])?;
    let cfg = AgentConfig::private(&[IFACE]).cidrs(&[VPC_V4, VPC_V6]);
    let _agent = Agent::start(&topo.server.ns, cfg)?;
    match probe::tcp_connect(
        &topo.outside.ns,
        SocketAddr::from((OVERLAY_SERVER, SERVE_HTTP)),
        limits::DROPPED_CONNECT,
    ) {
        Err(ConnectError::TimedOut(_)) => {}
        // The overlay's ARP is encapsulated too: with none answered, the neighbour fails.
        Err(ConnectError::Other(e)) if e.kind() == std::io::ErrorKind::HostUnreachable => {}
        other => anyhow::bail!("connect through the uncovered overlay: {other:?}"),
    }
    Ok(())
}

#[test]
fn a_non_ethernet_interface_is_refused_and_nothing_is_attached() -> Result<()> {
    let (topo, _) = exposed_topology()?;
    let mut agent = Agent::new(&topo.server.ns, config(&[IFACE, TUN]))?;
    let status = agent.run_to_exit(&[])?;
    ensure!(!status.success(), "the agent started on {TUN}");
    let logs = agent.run_logs();
    ensure!(
        logs.contains(&format!("interface {TUN} is not an Ethernet device")),
        "no clear error:\n{logs}"
    );
    ensure!(
        topo.server.ns.xdp_program(IFACE)?.is_none(),
        "{IFACE} got a program although the start was refused"
    );
    Ok(())
}

/// The exposure audit of listening sockets (issue 16): `check`, the start-up log, `status --json`
/// and the metrics name every listener a source outside the list reaches, with its owner process,
/// and every current session the port rules put at risk. The listeners belong to a process of
/// their own (not the test), in the server's namespace; the outside client really does (not)
/// reach them, so the report is checked against the filter itself.
mod listener_audit {
    use super::*;
    use serve_guard::control::StatusReport;
    use serve_guard::node::ListenerAudit;
    use serve_guard::node::listeners::Consequence;
    use serve_guard::node::sockets::{self, Family, Protocol, State};
    use serve_guard::ports::PortClass;
    use serve_guard_tests::netns::Netns;
    use std::io::{Read as _, Write as _};
    use std::net::{Ipv6Addr, TcpStream};
    use std::os::unix::process::CommandExt as _;
    use std::process::{Child, Command, Stdio};

    /// Declared public in these tests: reachable from outside.
    const PUBLIC_LISTENER: u16 = 8080;
    /// Any other port: guarded under the default `guard = "node"`.
    const GUARDED_LISTENER: u16 = 7070;
    /// In the listener's command line (the script's first line), to tell it from anything
    /// else on the machine.
    const MARKER: &str = "sg-exposure-listener";
    /// TCP listeners on each `ADDR:PORT` argument that echo what their clients send.
    const LISTENER_PY: &str = r#"# sg-exposure-listener
import socket, sys, threading
def echo(conn):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)
def serve(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(16)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
threading.Event().wait()
"#;

    /// The listener process; killed and reaped when dropped.
    struct Listeners {
        child: Child,
    }

    impl Listeners {
        /// Starts the listeners in `ns` and waits (bounded) until every port listens.
        fn start(ns: &Netns, binds: &[SocketAddr]) -> Result<Listeners> {
            let mut cmd: Command = ns.command("python3");
            cmd.arg("-c")
                .arg(LISTENER_PY)
                .arg("listener")
                .args(binds.iter().map(ToString::to_string))
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            // If the test process is killed before its guards run, the listener goes with it.
            // SAFETY: prctl(2) is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let listeners = Listeners {
                child: cmd.spawn().context("starting python3")?,
            };
            let ports: Vec<u16> = binds.iter().map(SocketAddr::port).collect();
            serve_guard_tests::wait_for("the listeners to listen", limits::SETUP, || {
                let listening = ns.run(|| -> Result<Vec<u16>> {
                    let mut found = Vec::new();
                    for family in Family::ALL {
                        found.extend(
                            sockets::list(Protocol::Tcp, family)?
                                .iter()
                                .filter(|s| s.state == State::Listen)
                                .map(|s| s.local.port()),
                        );
                    }
                    Ok(found)
                })??;
                Ok(ports.iter().all(|p| listening.contains(p)))
            })?;
            Ok(listeners)
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Listeners {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Private mode, the default guard, 8080 public besides SSH.
    fn audited_config() -> AgentConfig {
        AgentConfig::private(&[IFACE])
            .cidrs(&[VPC_V4, VPC_V6])
            .guard("node")
            .public_ports(&["ssh", &PUBLIC_LISTENER.to_string()])
    }

    fn status_audit(agent: &Agent) -> Result<ListenerAudit> {
        let out = agent.cli(&["status", "--json"])?;
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: StatusReport =
            serde_json::from_slice(&out.stdout).context("parsing `status --json`")?;
        ensure!(
            report.listener_audit_error.is_none(),
            "{:?}",
            report.listener_audit_error
        );
        report
            .listener_audit
            .context("status --json has no listener_audit")
    }

    fn check_text(agent: &Agent) -> Result<String> {
        let out = agent.cli(&["check"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "check failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    }

    #[test]
    fn an_uncovered_listener_is_reported_with_its_owner_and_a_guarded_one_is_not() -> Result<()> {
        let topo = Topology::new()?;
        let listeners = Listeners::start(
            &topo.server.ns,
            &[
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, PUBLIC_LISTENER)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, GUARDED_LISTENER)),
            ],
        )?;
        let pid = listeners.pid();
        let mut agent = Agent::new(&topo.server.ns, audited_config())?;

        // Before any agent runs: `check` names the public listener and its owner, and not the
        // guarded one.
        let text = check_text(&agent)?;
        let public_line = format!(
            "warning: reachable from outside the allow-list: tcp 0.0.0.0:{PUBLIC_LISTENER} (python3, pid {pid}); port {PUBLIC_LISTENER} is open (public_ports \"{PUBLIC_LISTENER}\")"
        );
        ensure!(
            text.contains(&public_line),
            "no `{public_line}` in check:\n{text}"
        );
        ensure!(
            !text.contains(&format!(":{GUARDED_LISTENER} ")),
            "check names the guarded listener:\n{text}"
        );

        agent.launch()?;
        agent.wait_ready()?;
        let logs = agent.logs();
        ensure!(
            logs.contains(&format!(
                "reachable from outside the allow-list: tcp 0.0.0.0:{PUBLIC_LISTENER} (python3, pid {pid})"
            )) && !logs.contains(&format!("]:{GUARDED_LISTENER} (python3")),
            "start-up log:\n{logs}"
        );

        let audit = status_audit(&agent)?;
        let public = audit
            .listeners
            .iter()
            .find(|l| l.port == PUBLIC_LISTENER)
            .with_context(|| format!("no listener {PUBLIC_LISTENER} in {audit:#?}"))?;
        ensure!(
            public.reachable && public.class == PortClass::Open,
            "{public:?}"
        );
        ensure!(
            public
                .owners
                .iter()
                .any(|o| o.pid == pid && o.comm == "python3" && o.cmdline.contains(MARKER)),
            "owner of {PUBLIC_LISTENER}: {:?}",
            public.owners
        );
        let guarded = audit
            .listeners
            .iter()
            .find(|l| l.port == GUARDED_LISTENER)
            .with_context(|| format!("no listener {GUARDED_LISTENER} in {audit:#?}"))?;
        ensure!(
            !guarded.reachable && guarded.class == PortClass::Guarded,
            "{guarded:?}"
        );
        let reachable: Vec<u16> = audit.reachable().map(|l| l.port).collect();
        ensure!(
            reachable == [PUBLIC_LISTENER],
            "reachable listeners: {reachable:?}"
        );

        // The metric, on the agent's metrics listener in its namespace.
        let metrics = probe::http_request(
            &topo.server.ns,
            agent.metrics_listen().parse()?,
            "/metrics",
            &[],
        )?
        .body_text();
        let line = format!(
            "serve_guard_exposed_listeners{{protocol=\"tcp\",port=\"{PUBLIC_LISTENER}\",process=\"python3\"}} 1"
        );
        ensure!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
        ensure!(
            !metrics.contains(&format!("port=\"{GUARDED_LISTENER}\"")),
            "the guarded listener is in the metrics:\n{metrics}"
        );
        ensure!(
            metrics.contains("serve_guard_sessions_at_risk 0"),
            "{metrics}"
        );

        // The report is the filter's truth: outside reaches the one, not the other.
        probe::tcp_connect(
            &topo.outside.ns,
            SocketAddr::from((SERVER_V4, PUBLIC_LISTENER)),
            limits::PROBE_IO,
        )
        .context("outside to the public listener")?;
        match probe::tcp_connect(
            &topo.outside.ns,
            SocketAddr::from((SERVER_V4, GUARDED_LISTENER)),
            limits::DROPPED_CONNECT,
        ) {
            Err(ConnectError::TimedOut(_)) => {}
            other => anyhow::bail!("outside to the guarded listener: {other:?}"),
        }

        // The audit judges by the rules in force: publish the other port live (SIGHUP) and
        // `status` follows.
        agent.set_config(
            "public_ports",
            vec![
                toml::Value::from("ssh"),
                GUARDED_LISTENER.to_string().into(),
            ],
        )?;
        agent.signal(libc::SIGHUP)?;
        serve_guard_tests::wait_for("the audit to follow the new rules", limits::CLI, || {
            let audit = status_audit(&agent)?;
            let reachable: Vec<u16> = audit.reachable().map(|l| l.port).collect();
            Ok(reachable == [GUARDED_LISTENER])
        })
        .with_context(|| agent.logs())?;
        Ok(())
    }

    /// A login from outside on a guarded port, made before the agent starts: `check`, the
    /// start-up log and `status` name it with its peer and owner, and say what the rules do to
    /// it; then the filter does exactly that (the session continues, a new one is refused).
    #[test]
    fn a_session_from_outside_on_a_guarded_port_is_at_risk() -> Result<()> {
        let topo = Topology::new()?;
        let listeners = Listeners::start(
            &topo.server.ns,
            &[SocketAddr::from((Ipv6Addr::UNSPECIFIED, GUARDED_LISTENER))],
        )?;
        let pid = listeners.pid();
        let server = SocketAddr::from((SERVER_V4, GUARDED_LISTENER));
        let mut session = topo
            .outside
            .ns
            .run(|| TcpStream::connect_timeout(&server, limits::PROBE_IO))??;
        session.set_read_timeout(Some(limits::PROBE_IO))?;
        session.set_write_timeout(Some(limits::PROBE_IO))?;
        let peer = session.local_addr()?;
        // The server's side is accepted (and so owned) once it echoes.
        echo(&mut session, b"before")?;

        let mut agent = Agent::new(&topo.server.ns, audited_config())?;
        let at_risk = format!(
            "session at risk: tcp [::ffff:{SERVER_V4}]:{GUARDED_LISTENER} from [::ffff:{}]:{} (python3, pid {pid}); port {GUARDED_LISTENER} is guarded (guard = \"node\"): new connections from {} would be refused, this session continues",
            peer.ip(),
            peer.port(),
            peer.ip()
        );
        let text = check_text(&agent)?;
        ensure!(text.contains(&at_risk), "no `{at_risk}` in check:\n{text}");

        agent.launch()?;
        agent.wait_ready()?;
        let logs = agent.logs();
        ensure!(
            logs.contains(&at_risk),
            "no `{at_risk}` in the log:\n{logs}"
        );
        let audit = status_audit(&agent)?;
        let found = audit
            .sessions_at_risk
            .iter()
            .find(|s| s.peer.port() == peer.port())
            .with_context(|| format!("no session at risk in {audit:#?}"))?;
        ensure!(
            found.peer.ip().to_canonical() == peer.ip()
                && found.local.port() == GUARDED_LISTENER
                && found.class == PortClass::Guarded
                && found.consequence == Consequence::NewConnectionsRefused
                && found.owners.iter().any(|o| o.pid == pid),
            "{found:?}"
        );

        // What the report said: this session goes on, a new one from that peer is refused.
        echo(&mut session, b"after")?;
        match probe::tcp_connect(&topo.outside.ns, server, limits::DROPPED_CONNECT) {
            Err(ConnectError::TimedOut(_)) => {}
            other => anyhow::bail!("a new connection from outside: {other:?}"),
        }
        Ok(())
    }

    /// Sends `data` and reads the echo back, bounded by the stream's timeouts.
    fn echo(stream: &mut TcpStream, data: &[u8]) -> Result<()> {
        stream.write_all(data)?;
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back)?;
        ensure!(back == data, "echo: {back:?}");
        Ok(())
    }
}
