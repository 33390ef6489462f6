//! Paths around the filter (issue 7): the agent names every tunnel device it does not cover, every
//! SRv6 decapsulation route and rp_filter off on a covered interface, at start-up and in
//! `status`; a listed Ethernet-type tunnel is covered; a non-Ethernet interface is refused
//! before anything is attached.

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
const UNPROTECTED: u16 = 8080;

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

fn config(interfaces: &[&str]) -> AgentConfig {
    AgentConfig::private(interfaces).cidrs(&[VPC_V4, VPC_V6])
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
    let _http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP, UNPROTECTED])?;
    let agent = Agent::start(&topo.server.ns, config(&[IFACE, VXLAN]))?;
    let found = status_exposures(&agent)?;
    ensure!(
        !found
            .iter()
            .any(|(kind, name)| kind == "tunnel_device" && name == VXLAN),
        "the covered {VXLAN} is still reported: {found:?}"
    );
    // The overlay works, and the filter on it drops the outside source's Serve traffic.
    assert_eq!(through_overlay(&topo, UNPROTECTED)?, 200);
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
