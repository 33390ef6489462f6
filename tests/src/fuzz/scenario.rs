//! The environments every fuzzed frame is judged in: port tables (issue 16's classes: open,
//! strict, guarded, and values the program does not know), allow-lists and the sockets of the
//! network namespace the program runs in, given to the real program and to the model alike.
//! The generators aim sources inside, at the edge of and outside these prefixes, ports at and
//! next to the boundaries of the port tables' runs, and 4-tuples at (and next to) these sockets.
//!
//! BPF_PROG_TEST_RUN runs the program on the loopback device of the calling thread's network
//! namespace, and the guarded-port socket lookups search that namespace. So the fuzzer runs in a
//! namespace of its own ([`Sockets::create`]) whose socket table is exactly [`SOCKETS`]: a TCP
//! listener, TCP connections (both ends), unconnected and connected UDP sockets, on addresses of
//! its loopback.

use super::model::{Policy, PortTable, Socket, SocketKind, class};
use crate::netns::Netns;
use crate::program::{Hook, TestProgram};
use crate::rng::Rng;
use anyhow::{Context as _, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serve_guard_common::{FilterConfig, PortValue};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::LazyLock,
};

/// Serve's two ports and the ends of the port map (an off-by-one in its index shows there):
/// strict in layout 0, the one the named regressions are judged in.
pub const PROTECTED_PORTS: [u16; 4] = [1, 8000, 9000, u16::MAX];

/// Several prefix lengths, nested and adjacent, all in the test ranges, with ends on the edges
/// of the lookup's levels (issue 21: a /8 directory for IPv4, a /16 one for IPv6, then 4-bit
/// strides; the lists judged also hold the dense clusters of `dense_v4` and `dense_v6`). IPv4: lengths on a level (/24, /20, /28, /32) and between (/23, /25, /27, /31), one contained in another, host routes on both sides of a /24 boundary (nodes
/// down to the /32 level), both /16s of the test range with their first and last addresses.
pub const ALLOW_V4: [&str; 15] = [
    "198.18.0.0/24",
    "198.18.64.0/18",
    "198.19.0.128/25",
    "198.19.16.0/20",
    "198.19.200.7/32",
    "198.18.2.0/23",
    "198.18.4.0/23",
    "198.18.4.128/25",
    "198.18.6.0/25",
    "198.18.6.192/27",
    "198.18.6.255/32",
    "198.18.7.0/31",
    "198.18.8.255/32",
    "198.18.9.0/32",
    "198.19.255.254/31",
];
/// IPv6: shorter than the directory (/12, 16 of its slots), on it (/16), on a stride (/24, /28)
/// and between (/25, /26) splitting a node's nibble, a contained /48, /128 tails on both sides of a /24 boundary, and several
/// prefixes in one /24 (nodes down to the /64 and /80 levels).
pub const ALLOW_V6: [&str; 13] = [
    "fd00:1::/64",
    "fd00:2:3::/48",
    "fd00:4::5/128",
    "fd10::/16",
    "fd00:6:7:8:9::/80",
    "fd20::/12",
    "fd30:1200::/24",
    "fd30:1300::/25",
    "fd30:1380::/26",
    "fd30:1400::/28",
    "fd30:1400:1::/48",
    "fd30:15ff:ffff:ffff:ffff:ffff:ffff:ffff/128",
    "fd30:1600::/128",
];

/// Port tables the fuzzer judges frames in; each frame draws one.
pub const LAYOUTS: usize = 3;
/// Seed of layout 2's random runs: the same table on every run.
const RANDOM_LAYOUT_SEED: u64 = 0x5e7e_f022_0016;
/// Layout 2: this many random runs.
const RANDOM_RUNS: usize = 48;
/// A value the program does not know: read as strict.
const UNKNOWN_CLASS: PortValue = 0x7f;

/// Layout 0, `guard = "node"` on a Serve node: everything guarded but strict Serve ports (and
/// the map's two ends), SSH and a range open, one port of an unknown class.
fn node_layout() -> PortTable {
    let mut runs: Vec<(u16, u16, PortValue)> = PROTECTED_PORTS
        .iter()
        .map(|&p| (p, p, class::STRICT))
        .collect();
    runs.extend([
        (22, 22, class::OPEN),
        (8443, 8443, class::OPEN),
        (30000, 31000, class::OPEN),
        (4242, 4242, UNKNOWN_CLASS),
    ]);
    PortTable::from_runs(class::GUARDED, &runs)
}

/// Layout 1, `guard = "ports"` with the `ray` preset guarded: open but for strict Serve ports
/// and guarded ranges, guarded at both ends of the map and open right next to them.
fn ports_layout() -> PortTable {
    PortTable::from_runs(
        class::OPEN,
        &[
            (1, 1, class::GUARDED),
            (6379, 6379, class::GUARDED),
            (8000, 8000, class::STRICT),
            (8076, 8076, class::GUARDED),
            (8265, 8265, class::GUARDED),
            (9000, 9000, class::STRICT),
            (10001, 19999, class::GUARDED),
            (30000, 31000, class::GUARDED),
            (40000, 41000, class::GUARDED),
            (52365, 52365, class::GUARDED),
            (65535, 65535, class::GUARDED),
        ],
    )
}

/// Layout 2: runs of random lengths (single ports to thousands) and random classes, the unknown
/// values included; open at both ends of the map.
fn random_layout() -> PortTable {
    let mut rng = Rng::new(RANDOM_LAYOUT_SEED);
    let mut runs = Vec::new();
    for _ in 0..RANDOM_RUNS {
        let first = rng.u16();
        let len = match rng.below(3) {
            0 => 0,
            1 => rng.range(1, 16),
            _ => rng.range(16, 4000),
        };
        let last = (usize::from(first) + len).min(usize::from(u16::MAX)) as u16;
        let value = match rng.below(8) {
            0..=2 => class::GUARDED,
            3 | 4 => class::STRICT,
            5 | 6 => class::OPEN,
            _ => rng.range(3, 255) as u8,
        };
        runs.push((first, last, value));
    }
    runs.push((0, 1, class::OPEN));
    runs.push((u16::MAX, u16::MAX, class::OPEN));
    PortTable::from_runs(class::GUARDED, &runs)
}

static PORT_TABLES: LazyLock<[PortTable; LAYOUTS]> =
    LazyLock::new(|| [node_layout(), ports_layout(), random_layout()]);

/// The port table of `layout` (`< LAYOUTS`).
pub fn ports(layout: usize) -> &'static PortTable {
    &PORT_TABLES[layout]
}

/// Every port next to a run boundary of any layout (the boundary's two sides), the map's ends
/// and the sockets' ports: where the generators aim.
static INTERESTING_PORTS: LazyLock<Vec<u16>> = LazyLock::new(|| {
    let mut ports: Vec<u16> = vec![0, 1, u16::MAX];
    for table in PORT_TABLES.iter() {
        for start in table.run_starts() {
            ports.push(start);
            ports.push(start.wrapping_sub(1));
        }
    }
    ports.extend(SOCKETS.iter().map(|s| s.local.port()));
    ports.sort_unstable();
    ports.dedup();
    ports
});

pub fn interesting_ports() -> &'static [u16] {
    &INTERESTING_PORTS
}

/// Parsed once: the generators draw sources from them for every frame.
static PARSED_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| {
    let mut list = parse(&ALLOW_V4);
    list.extend(dense_v4());
    list
});
static PARSED_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| {
    let mut list = parse(&ALLOW_V6);
    list.extend(dense_v6());
    list
});

/// Clusters dense enough that the lookup stores nodes as groups (level compression,
/// docs/lookup.md), each with a child that is not a node:
/// - in 198.18.16.0/24, two host routes in each /28 but one (a single route): a depth-1 group
///   on the last two strides (free: 15 of the 16 /28s are nodes);
/// - in 198.19.0.0/16, beside the named prefixes there (whose 198.19.16.0/20 is a /20 the list
///   covers whole), a /26 and a /30 in four /24s of every other /20: a depth-2 group of the
///   256 /24s (dense: 75 of them, the /20s and the /16 would be nodes anyway).
fn dense_v4() -> Vec<Ipv4Net> {
    let hosts = (0..16u8).flat_map(|n| {
        let count = if n == 6 { 1 } else { 2 };
        [0u8, 13]
            .into_iter()
            .take(count)
            .map(move |host| net_v4([198, 18, 16, n << 4 | host], 32))
    });
    let wide = (0..16u8).filter(|&n| n != 1).flat_map(|n| {
        [3u8, 6, 9, 12].into_iter().flat_map(move |m| {
            let third = n << 4 | m;
            [
                net_v4([198, 19, third, 64], 26),
                net_v4([198, 19, third, 200], 30),
            ]
        })
    });
    hosts.chain(wide).collect()
}

/// The same in IPv6: two /128s in each /124 of fd00:7::/120 but one (a single /128: depth 1 on
/// the last two strides); two prefixes in each /36 of fd00:8::/32 but one (a single /48: depth
/// 1); two /48s in four /40s of every /36 of fd00:9::/32 (depth 2).
fn dense_v6() -> Vec<Ipv6Net> {
    let hosts = (0..16u16).flat_map(|n| {
        let count = if n == 9 { 1 } else { 2 };
        [0u16, 7]
            .into_iter()
            .take(count)
            .map(move |host| net_v6([0xfd00, 7, 0, 0, 0, 0, 0, n << 4 | host], 128))
    });
    let wide = (0..16u16).flat_map(|n| {
        let count = if n == 11 { 1 } else { 2 };
        [(0x0001u16, 48u8), (0x0800, 52)]
            .into_iter()
            .take(count)
            .map(move |(low, len)| net_v6([0xfd00, 8, n << 12 | low, 0, 0, 0, 0, 0], len))
    });
    let deep = (0..16u16).flat_map(|n| {
        [0u16, 5, 10, 15].into_iter().flat_map(move |m| {
            let third = n << 12 | m << 8;
            [0u16, 0x10].map(|low| net_v6([0xfd00, 9, third | low, 0, 0, 0, 0, 0], 48))
        })
    });
    hosts.chain(wide).chain(deep).collect()
}

/// How many of the allow-lists' prefixes are the named ones (`ALLOW_V4`, `ALLOW_V6`), which
/// come first; the dense clusters follow.
pub const NAMED_V4: usize = ALLOW_V4.len();
pub const NAMED_V6: usize = ALLOW_V6.len();

fn net_v4(addr: [u8; 4], len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(addr), len).expect("length within 32")
}

fn net_v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::from(segments), len).expect("length within 128")
}

fn parse<T: std::str::FromStr>(cidrs: &[&str]) -> Vec<T> {
    cidrs
        .iter()
        .map(|s| s.parse().ok().expect("valid constant"))
        .collect()
}

pub fn allow_v4() -> &'static [Ipv4Net] {
    &PARSED_V4
}

pub fn allow_v6() -> &'static [Ipv6Net] {
    &PARSED_V6
}

/// The loopback addresses of the fuzzer's namespace that its sockets use: outside every allowed
/// prefix, so packets between them are judged by the guarded rule.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 1);
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 2);

/// The sockets' ports: guarded in layouts 0 and 1 (inside Ray's worker range).
pub const LISTEN_PORT: u16 = 12000;
/// The client end of the TCP connection to the listener.
pub const CLIENT_PORT: u16 = 12001;
pub const UDP_BOUND_PORT: u16 = 12002;
/// A UDP socket connected to the peer's [`UDP_PEER_PORT`].
pub const UDP_CONNECTED_PORT: u16 = 12003;
pub const UDP_PEER_PORT: u16 = 12004;
/// One port with both: a connected UDP socket and an unconnected one (SO_REUSEADDR), as a DNS
/// client next to a server.
pub const UDP_SHARED_PORT: u16 = 12005;
pub const UDP_SHARED_PEER_PORT: u16 = 12006;
/// Wildcard sockets: a TCP listener on 0.0.0.0, a dual-stack one on `::` (it takes IPv4 too)
/// and a UDP socket on 0.0.0.0.
pub const WILDCARD_TCP_PORT: u16 = 12007;
pub const DUAL_STACK_TCP_PORT: u16 = 12008;
pub const WILDCARD_UDP_PORT: u16 = 12009;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn socket(kind: SocketKind, local: SocketAddr, remote: Option<SocketAddr>) -> Socket {
    Socket {
        kind,
        local,
        remote,
        v6only: false,
    }
}

/// The fuzzer namespace's socket table, per family, and the wildcard ones.
pub static SOCKETS: LazyLock<Vec<Socket>> = LazyLock::new(|| {
    use SocketKind::*;
    let mut all = Vec::new();
    for (host, peer) in [
        (IpAddr::from(HOST_V4), IpAddr::from(PEER_V4)),
        (HOST_V6.into(), PEER_V6.into()),
    ] {
        let listener = sa(host, LISTEN_PORT);
        let client = sa(peer, CLIENT_PORT);
        all.extend([
            socket(TcpListener, listener, None),
            // The accepted end and the connecting end of one connection.
            socket(TcpConnection, listener, Some(client)),
            socket(TcpConnection, client, Some(listener)),
            socket(UdpBound, sa(host, UDP_BOUND_PORT), None),
            socket(
                UdpConnected,
                sa(host, UDP_CONNECTED_PORT),
                Some(sa(peer, UDP_PEER_PORT)),
            ),
            socket(UdpBound, sa(host, UDP_SHARED_PORT), None),
            socket(
                UdpConnected,
                sa(host, UDP_SHARED_PORT),
                Some(sa(peer, UDP_SHARED_PEER_PORT)),
            ),
        ]);
    }
    all.extend([
        socket(
            TcpListener,
            sa(Ipv4Addr::UNSPECIFIED, WILDCARD_TCP_PORT),
            None,
        ),
        socket(
            TcpListener,
            sa(Ipv6Addr::UNSPECIFIED, DUAL_STACK_TCP_PORT),
            None,
        ),
        socket(UdpBound, sa(Ipv4Addr::UNSPECIFIED, WILDCARD_UDP_PORT), None),
    ]);
    all
});

/// The model's view of layout `layout`.
pub fn policy_in(layout: usize, audit: bool) -> Policy {
    Policy {
        ports: ports(layout).clone(),
        allow_v4: allow_v4().to_vec(),
        allow_v6: allow_v6().to_vec(),
        audit,
        sockets: SOCKETS.clone(),
    }
}

/// The model's view of layout 0 (the named regressions' environment).
pub fn policy(audit: bool) -> Policy {
    policy_in(0, audit)
}

/// The real program loaded with layout `layout`'s environment.
pub fn program_in(layout: usize, audit: bool, hook: Hook) -> Result<TestProgram> {
    let mut program =
        TestProgram::load_hook(serve_guard_common::trie::DEFAULT_CIDRS_PER_FAMILY, hook)?;
    program
        .set_port_classes(ports(layout).values())
        .with_context(|| format!("port classes of layout {layout}"))?;
    // One list switch (each waits for an RCU grace period), not one per prefix.
    let cidrs: Vec<(IpAddr, u8)> = allow_v4()
        .iter()
        .map(|net| (IpAddr::V4(net.addr()), net.prefix_len()))
        .chain(
            allow_v6()
                .iter()
                .map(|net| (IpAddr::V6(net.addr()), net.prefix_len())),
        )
        .collect();
    program.allow_all(&cidrs)?;
    let flags = if audit { FilterConfig::FLAG_AUDIT } else { 0 };
    program.set_config(FilterConfig { flags })?;
    Ok(program)
}

/// The real program loaded with layout 0's environment.
pub fn program(audit: bool) -> Result<TestProgram> {
    program_in(0, audit, Hook::Xdp)
}

/// The fuzzer's namespace with [`SOCKETS`] open in it. Frames must be run from a thread inside
/// it ([`Sockets::run`]), or the lookups search another socket table. Dropping it closes the
/// sockets and deletes the namespace.
pub struct Sockets {
    ns: Netns,
    _tcp: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
    _udp: Vec<UdpSocket>,
}

impl Sockets {
    pub fn create() -> Result<Self> {
        let ns = Netns::new("vf")?;
        for (addr, len) in [
            (HOST_V4.to_string(), 32),
            (PEER_V4.to_string(), 32),
            (HOST_V6.to_string(), 128),
            (PEER_V6.to_string(), 128),
        ] {
            ns.add_loopback_address(&format!("{addr}/{len}"))?;
        }
        let (tcp, streams, udp) = ns.run(open_sockets)??;
        Ok(Self {
            ns,
            _tcp: tcp,
            _streams: streams,
            _udp: udp,
        })
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.ns
            .run(f)
            .with_context(|| format!("entering {}", self.ns.name()))
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

type Opened = (Vec<TcpListener>, Vec<TcpStream>, Vec<UdpSocket>);

/// Opens [`SOCKETS`] in the calling thread's namespace.
fn open_sockets() -> Result<Opened> {
    let mut listeners = Vec::new();
    let mut streams = Vec::new();
    let mut udp = Vec::new();
    for s in SOCKETS.iter() {
        match s.kind {
            SocketKind::TcpListener => {
                let l = tcp_listener(s.local, s.v6only)?;
                listeners.push(l);
            }
            SocketKind::TcpConnection => {
                // Both ends are listed; the connecting end creates the pair.
                let Some(remote) = s.remote else { continue };
                if remote.port() != LISTEN_PORT {
                    continue;
                }
                let stream = connect_from(s.local, remote)?;
                let listener = listeners
                    .iter()
                    .find(|l| l.local_addr().ok() == Some(remote))
                    .context("the listener of a connection is opened first")?;
                let (accepted, _) = listener.accept().context("accepting")?;
                streams.extend([stream, accepted]);
            }
            SocketKind::UdpBound | SocketKind::UdpConnected => {
                let sock = udp_bound(s.local)?;
                if let Some(remote) = s.remote {
                    sock.connect(remote)
                        .with_context(|| format!("connecting UDP {} to {remote}", s.local))?;
                }
                udp.push(sock);
            }
        }
    }
    Ok((listeners, streams, udp))
}

/// A socket of `domain`/`kind` with SO_REUSEADDR bound to `addr`.
fn bound_socket(addr: SocketAddr, kind: libc::c_int, v6only: bool) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    set_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        set_opt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            i32::from(v6only),
        )?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("binding {addr}"));
    }
    Ok(fd)
}

fn tcp_listener(addr: SocketAddr, v6only: bool) -> Result<TcpListener> {
    let fd = bound_socket(addr, libc::SOCK_STREAM, v6only)?;
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("listen {addr}"));
    }
    Ok(TcpListener::from(fd))
}

/// A TCP connection from `local` (bound first, so its port is known; port 0 for any) to
/// `remote`, in the calling thread's namespace.
pub fn connect_from(local: SocketAddr, remote: SocketAddr) -> Result<TcpStream> {
    let fd = bound_socket(local, libc::SOCK_STREAM, false)?;
    let (storage, len) = sockaddr(remote);
    // SAFETY: a blocking connect(2) on our socket to a valid sockaddr.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("connecting {local} to {remote}"));
    }
    Ok(TcpStream::from(fd))
}

fn udp_bound(addr: SocketAddr) -> Result<UdpSocket> {
    Ok(UdpSocket::from(bound_socket(
        addr,
        libc::SOCK_DGRAM,
        false,
    )?))
}

fn set_opt(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: i32) -> Result<()> {
    // SAFETY: setsockopt with a valid int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
