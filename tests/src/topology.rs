//! The private-mode story as namespaces: a server (the agent attaches XDP to its one interface,
//! as on a node), a client inside the VPC and a client outside it, all on one L2 segment joined by
//! a bridge namespace so both clients reach the same server NIC.
//!
//! ```text
//!   inside  eth0 ─┐                      ┌─ eth0  server  (XDP here)
//!   198.18.0.10   ├── br0 (bridge ns) ───┤        198.18.0.1
//!   fd00:5e::10   │                      │        fd00:5e::1
//!   outside eth0 ─┘
//!   198.18.0.200, fd00:5e::1:200
//! ```
//!
//! The VPC allow-list is [`VPC_V4`] and [`VPC_V6`]: the inside client is in them, the outside
//! client is not. Only 198.18.0.0/15 and fd00::/8 are used.

use crate::netns::Netns;
use anyhow::{Context as _, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Name of the server's (and each client's) interface inside its own namespace.
pub const IFACE: &str = "eth0";
const BRIDGE: &str = "br0";
const PREFIX_V4: u8 = 24;
const PREFIX_V6: u8 = 64;

pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// A second server (node) on the same segment, for cluster tests ([`Topology::add_server`]).
pub const SERVER2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const INSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 1);
pub const SERVER2_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 2);
pub const INSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 0, 0x10);
pub const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 1, 0x200);

/// The "VPC" ranges: they hold the server and the inside client, not the outside client.
pub const VPC_V4: &str = "198.18.0.0/25";
pub const VPC_V6: &str = "fd00:5e::/112";

/// IP version, for tables and loops over both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4,
    V6,
}

impl Ip {
    pub const BOTH: [Ip; 2] = [Ip::V4, Ip::V6];

    pub const fn name(self) -> &'static str {
        match self {
            Ip::V4 => "IPv4",
            Ip::V6 => "IPv6",
        }
    }
}

/// One namespace and its addresses. A clone shares the namespace (see [`Netns`]).
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Host {
    pub fn addr(&self, ip: Ip) -> IpAddr {
        match ip {
            Ip::V4 => self.v4.into(),
            Ip::V6 => self.v6.into(),
        }
    }

    /// `addr(ip)` with a port.
    pub fn sock(&self, ip: Ip, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr(ip), port)
    }
}

/// Server, inside client and outside client on one bridge. Dropping it deletes every namespace
/// (and with them the veths); drop the agent first (declare it after the topology).
#[derive(Debug)]
pub struct Topology {
    pub server: Host,
    pub inside: Host,
    pub outside: Host,
    /// The bridge namespace: held alive here; [`Topology::add_server`] attaches more hosts.
    bridge: Netns,
}

impl Topology {
    pub fn new() -> Result<Self> {
        let bridge = Netns::new("b")?;
        bridge.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        bridge.ip(&["link", "set", BRIDGE, "up"])?;
        let server = attach(&bridge, "s", SERVER_V4, SERVER_V6)?;
        let inside = attach(&bridge, "i", INSIDE_V4, INSIDE_V6)?;
        let outside = attach(&bridge, "o", OUTSIDE_V4, OUTSIDE_V6)?;
        for host in [&server, &inside, &outside] {
            crate::wait_for("IPv6 addresses to settle", crate::limits::SETUP, || {
                host.ns.ipv6_settled()
            })?;
        }
        Ok(Topology {
            server,
            inside,
            outside,
            bridge,
        })
    }

    /// A second server namespace on the bridge ([`SERVER2_V4`], [`SERVER2_V6`]): another node of
    /// the same cluster, reached by the same clients. Inside the VPC ranges, like the first.
    pub fn add_server(&self) -> Result<Host> {
        self.add_client("s2", SERVER2_V4, SERVER2_V6)
    }

    /// Another client on the bridge, with addresses of the test's choosing (inside the
    /// bridge's subnets, [`PREFIX_V4`] and [`PREFIX_V6`]).
    pub fn add_client(&self, role: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<Host> {
        let host = attach(&self.bridge, role, v4, v6)?;
        crate::wait_for("IPv6 addresses to settle", crate::limits::SETUP, || {
            host.ns.ipv6_settled()
        })?;
        Ok(host)
    }

    /// The allow-list that admits `inside` and not `outside`.
    pub fn vpc_cidrs() -> Vec<String> {
        vec![VPC_V4.to_owned(), VPC_V6.to_owned()]
    }
}

/// A new namespace with `eth0` wired to the bridge and the two addresses on it.
fn attach(bridge: &Netns, role: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<Host> {
    let ns = Netns::new(role)?;
    // The bridge side of the veth is created in the bridge namespace (so its name only has to be
    // unique there) and the other end directly in the host's namespace.
    let port = format!("p-{role}");
    bridge
        .ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            IFACE,
            "netns",
            ns.name(),
        ])
        .with_context(|| format!("creating the veth for {}", ns.name()))?;
    bridge.ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
    ns.ip(&["addr", "add", &format!("{v4}/{PREFIX_V4}"), "dev", IFACE])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{v6}/{PREFIX_V6}"),
        "dev",
        IFACE,
        "nodad",
    ])?;
    ns.ip(&["link", "set", IFACE, "up"])?;
    Ok(Host { ns, v4, v6 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe;
    use crate::server::HttpServer;

    #[test]
    fn every_client_reaches_the_server_on_both_families() {
        let topo = Topology::new().unwrap();
        let server = HttpServer::start(&topo.server.ns, &[8080]).unwrap();
        for client in [&topo.inside, &topo.outside] {
            for ip in Ip::BOTH {
                let status = probe::http_get(&client.ns, topo.server.sock(ip, 8080)).unwrap();
                assert_eq!(status, 200, "{} {}", client.ns.name(), ip.name());
            }
        }
        assert_eq!(server.requests(8080), 4);
    }

    #[test]
    fn vpc_ranges_split_the_clients() {
        let v4: ipnet::Ipv4Net = VPC_V4.parse().unwrap();
        let v6: ipnet::Ipv6Net = VPC_V6.parse().unwrap();
        assert!(v4.contains(&INSIDE_V4) && v4.contains(&SERVER_V4) && !v4.contains(&OUTSIDE_V4));
        assert!(v6.contains(&INSIDE_V6) && v6.contains(&SERVER_V6) && !v6.contains(&OUTSIDE_V6));
    }
}
