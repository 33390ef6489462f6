//! The reference model of the XDP verdict: docs/filter.md, "The verdict, exactly", and the port
//! classes of issue 16 (open, strict, guarded; the guarded-port TCP flag rule and socket
//! lookups), as a pure function. It is written from the contract alone, never from the
//! program's source, so the differential fuzzer compares two independent readings of one
//! contract: where they disagree, either the program or this model misread it.
//!
//! The guarded-port rule asks the kernel's socket tables; the model gets them as a list
//! ([`Policy::sockets`]): the sockets of the network namespace the program runs in (for
//! BPF_PROG_TEST_RUN, the calling thread's), which the fuzzer creates itself in a namespace of
//! its own.
//!
//! Every read after the IP header's fixed part goes through a slice cut at the declared end
//! (`Packet`), so this model cannot see a byte the kernel would trim, whatever the frame holds.

use ipnet::{Ipv4Net, Ipv6Net};
use serve_guard_common::{
    Family, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PortValue, Reason,
    wire::{self, proto},
};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

/// The values of the port map (issue 16), as the model reads them: the model keeps its own
/// numbers rather than the program's constants, so that a value drifting on either side shows.
pub mod class {
    use serve_guard_common::PortValue;
    /// Anyone reaches the port.
    pub const OPEN: PortValue = 0;
    /// Strict: nothing from outside the allow-list.
    pub const STRICT: PortValue = 1;
    /// Guarded: from outside, no new connection and nothing for a listening or unconnected
    /// socket. Every other value reads as strict.
    pub const GUARDED: PortValue = 2;
}

/// How a port is judged, from its value in the port map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortClass {
    Open,
    Strict,
    Guarded,
}

impl PortClass {
    pub fn of(value: PortValue) -> Self {
        match value {
            class::OPEN => PortClass::Open,
            class::GUARDED => PortClass::Guarded,
            _ => PortClass::Strict,
        }
    }
}

/// The port map: one value per destination port (every port open unless set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortTable(Arc<[PortValue]>);

impl Default for PortTable {
    fn default() -> Self {
        Self(vec![class::OPEN; 1 << 16].into())
    }
}

impl PortTable {
    /// Open everywhere but `ports`, which are strict (the classes before issue 16).
    pub fn strict(ports: &[u16]) -> Self {
        Self::from_runs(
            class::OPEN,
            &ports
                .iter()
                .map(|&p| (p, p, class::STRICT))
                .collect::<Vec<_>>(),
        )
    }

    /// Every port `default`, then each run `(first, last, value)` written in order (a later run
    /// overrides an earlier one).
    pub fn from_runs(default: PortValue, runs: &[(u16, u16, PortValue)]) -> Self {
        let mut table = vec![default; 1 << 16];
        for &(first, last, value) in runs {
            assert!(first <= last, "run {first}-{last}");
            table[usize::from(first)..=usize::from(last)].fill(value);
        }
        Self(table.into())
    }

    /// The raw value of `port`, as the program's map holds it.
    pub fn value(&self, port: u16) -> PortValue {
        self.0[usize::from(port)]
    }

    pub fn class(&self, port: u16) -> PortClass {
        PortClass::of(self.value(port))
    }

    /// Every value, indexed by port (what the program's map is filled with).
    pub fn values(&self) -> &[PortValue] {
        &self.0
    }

    /// The ports where a run starts (its value differs from the port before), with port 0.
    pub fn run_starts(&self) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|&p| p == 0 || self.value(p) != self.value(p - 1))
            .collect()
    }
}

/// A socket in the namespace the program runs in, as the kernel's lookups see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub kind: SocketKind,
    /// The bound address and port (an unspecified address: every local address).
    pub local: SocketAddr,
    /// The peer of a connected socket.
    pub remote: Option<SocketAddr>,
    /// An IPv6 socket bound to `::` that refuses IPv4 (IPV6_V6ONLY); without it, it also
    /// takes IPv4 packets.
    pub v6only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A TCP socket in LISTEN.
    TcpListener,
    /// A TCP socket of a connection (ESTABLISHED; an accepted one or a connected one).
    TcpConnection,
    /// A UDP socket bound, not connected.
    UdpBound,
    /// A UDP socket connected to `remote`.
    UdpConnected,
}

impl Socket {
    fn is_tcp(&self) -> bool {
        matches!(
            self.kind,
            SocketKind::TcpListener | SocketKind::TcpConnection
        )
    }

    /// The socket takes packets to `dst`: its own address, or any when it is bound to the
    /// unspecified address of the packet's family (or of IPv6 without V6ONLY, for IPv4).
    fn takes_local(&self, dst: SocketAddr) -> bool {
        if self.local.port() != dst.port() {
            return false;
        }
        match (self.local.ip(), dst.ip()) {
            (IpAddr::V4(bound), IpAddr::V4(to)) => bound.is_unspecified() || bound == to,
            (IpAddr::V6(bound), IpAddr::V6(to)) => bound.is_unspecified() || bound == to,
            (IpAddr::V6(bound), IpAddr::V4(_)) => bound.is_unspecified() && !self.v6only,
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// A connected socket matches exactly its 4-tuple.
    fn connected_to(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        self.remote == Some(src) && self.local == dst
    }
}

/// What a socket lookup finds for a packet from `src` to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// A socket of one of the node's connections (TCP) or connected to this very peer (UDP).
    Connected,
    /// A listening TCP socket or an unconnected UDP socket.
    Open,
    Nothing,
}

/// The port protocols and the smallest header each must have in the packet (step 6). The
/// model keeps its own table (not `wire::port_header_len`, which the program uses) so that a
/// protocol missing on either side shows up as a mismatch.
pub const PORT_PROTOCOLS: [(u8, usize); 5] = [
    (proto::TCP, wire::TCP_MIN_HLEN),
    (proto::UDP, wire::UDP_HLEN),
    (proto::DCCP, wire::DCCP_MIN_HLEN),
    (proto::SCTP, wire::SCTP_HLEN),
    (proto::UDPLITE, wire::UDPLITE_HLEN),
];

/// IP in IP: behind a routing header the kernel may decapsulate it itself (SRv6, RPL).
pub const TUNNELLED_IP: [u8; 2] = [proto::IPIP, proto::IPV6];

/// Extension headers the program does not walk: the transport behind them is unknown.
pub const UNWALKED_EXT_HEADERS: [u8; 5] = [
    proto::MOBILITY,
    proto::HIP,
    proto::SHIM6,
    proto::EXPERIMENTAL_1,
    proto::EXPERIMENTAL_2,
];

/// What the program does with the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pass,
    Drop,
}

/// The program's whole observable answer for one frame: its return value and the one counter
/// it moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Verdict {
    pub action: Action,
    pub reason: Reason,
    pub family: Family,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {}/{}",
            self.action,
            self.reason.name(),
            self.family.name()
        )
    }
}

/// Everything besides the frame the verdict depends on: the program's maps and config, and the
/// sockets of the namespace it runs in.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub ports: PortTable,
    pub allow_v4: Vec<Ipv4Net>,
    pub allow_v6: Vec<Ipv6Net>,
    pub audit: bool,
    pub sockets: Vec<Socket>,
}

impl Policy {
    fn allows(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => self.allow_v4.iter().any(|net| net.contains(&a)),
            IpAddr::V6(a) => self.allow_v6.iter().any(|net| net.contains(&a)),
        }
    }

    /// The TCP lookup: a connection's socket (exact 4-tuple) before a listener.
    fn lookup_tcp(&self, src: SocketAddr, dst: SocketAddr) -> Found {
        let tcp = || self.sockets.iter().filter(|s| s.is_tcp());
        if tcp().any(|s| s.kind == SocketKind::TcpConnection && s.connected_to(src, dst)) {
            Found::Connected
        } else if tcp().any(|s| s.kind == SocketKind::TcpListener && s.takes_local(dst)) {
            Found::Open
        } else {
            Found::Nothing
        }
    }

    /// The UDP lookup: a socket connected to exactly this peer before a bound one.
    fn lookup_udp(&self, src: SocketAddr, dst: SocketAddr) -> Found {
        let udp = || self.sockets.iter().filter(|s| !s.is_tcp());
        if udp().any(|s| s.kind == SocketKind::UdpConnected && s.connected_to(src, dst)) {
            Found::Connected
        } else if udp().any(|s| s.kind == SocketKind::UdpBound && s.takes_local(dst)) {
            Found::Open
        } else {
            Found::Nothing
        }
    }
}

/// The transport header fields the verdict reads (step 6): all inside the protocol's minimum
/// header, which the packet holds whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortHeader {
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    /// TCP's flags byte (unused for the other protocols).
    tcp_flags: u8,
}

/// What step 3-6 find behind the IP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Port(PortHeader),
    /// Nothing the kernel would deliver to a port.
    Unprotected,
    /// The program cannot tell.
    Unknown,
}

/// The verdict docs/filter.md gives `frame` under `policy`.
pub fn verdict(frame: &[u8], policy: &Policy) -> Verdict {
    let judged = judge(frame, policy);
    if policy.audit && judged.action == Action::Drop {
        return Verdict {
            action: Action::Pass,
            reason: Reason::AuditWouldDrop,
            family: judged.family,
        };
    }
    judged
}

fn judge(frame: &[u8], policy: &Policy) -> Verdict {
    let Some((ethertype, l3)) = link_layer(frame) else {
        return unparseable(Family::Other);
    };
    match ethertype {
        wire::ETH_P_IPV4 => ipv4(frame, l3, policy),
        wire::ETH_P_IPV6 => ipv6(frame, l3, policy),
        _ => pass_unprotected(Family::Other),
    }
}

/// Step 1: the EtherType behind at most [`MAX_VLAN_TAGS`] tags and where the network header
/// starts; `None` when the frame is too short or has one tag too many.
fn link_layer(frame: &[u8]) -> Option<(u16, usize)> {
    if frame.len() < wire::ETH_HLEN {
        return None;
    }
    let mut ethertype = be16(frame, wire::ETH_TYPE_OFFSET)?;
    let mut l3 = wire::ETH_HLEN;
    let mut tags = 0;
    while ethertype == wire::ETH_P_8021Q || ethertype == wire::ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return None;
        }
        ethertype = be16(frame, l3 + wire::VLAN_INNER_TYPE_OFFSET)?;
        l3 += wire::VLAN_HLEN;
        tags += 1;
    }
    Some((ethertype, l3))
}

/// Step 2: the source address at `src_at` of a fixed header of `header_len` bytes at `l3`,
/// if the whole fixed header is in the frame.
fn source<const N: usize>(
    frame: &[u8],
    l3: usize,
    header_len: usize,
    src_at: usize,
) -> Option<[u8; N]> {
    let header = frame.get(l3..l3 + header_len)?;
    header[src_at..src_at + N].try_into().ok()
}

fn ipv4(frame: &[u8], l3: usize, policy: &Policy) -> Verdict {
    let Some(src) =
        source::<{ wire::IPV4_ADDR_LEN }>(frame, l3, wire::IPV4_MIN_HLEN, wire::IPV4_SRC_OFFSET)
    else {
        return unparseable(Family::Ipv4);
    };
    // In the same fixed header as the source, so in the frame too.
    let dst = source::<{ wire::IPV4_ADDR_LEN }>(frame, l3, wire::IPV4_MIN_HLEN, IPV4_DST_AT)
        .expect("the fixed header holds both addresses");
    let addrs = (Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into());
    decide(ipv4_transport(&frame[l3..]), addrs, policy, Family::Ipv4)
}

/// Where the destination address sits in the fixed headers (right after the source).
const IPV4_DST_AT: usize = wire::IPV4_SRC_OFFSET + wire::IPV4_ADDR_LEN;
const IPV6_DST_AT: usize = wire::IPV6_SRC_OFFSET + wire::IPV6_ADDR_LEN;

/// Steps 3 and 4 for IPv4; `net` is the frame from the network header on.
fn ipv4_transport(net: &[u8]) -> Transport {
    let first = net[0];
    let version = first >> wire::IP_VERSION_SHIFT;
    let ihl = first & wire::IPV4_IHL_MASK;
    if version != wire::IPV4_VERSION || ihl < wire::IPV4_MIN_IHL {
        return Transport::Unknown;
    }
    let header_len = usize::from(ihl) * wire::IPV4_IHL_WORD;
    let Some(total_len) = be16(net, wire::IPV4_TOTAL_LEN_OFFSET).map(usize::from) else {
        return Transport::Unknown;
    };
    if total_len < header_len || total_len > net.len() {
        return Transport::Unknown;
    }
    let packet = Packet(&net[..total_len]);
    let Some(frag) = packet.be16(wire::IPV4_FRAG_OFF_OFFSET) else {
        return Transport::Unknown;
    };
    if frag & wire::IPV4_FRAG_OFF_MASK != 0 {
        return Transport::Unprotected;
    }
    let Some(protocol) = packet.byte(wire::IPV4_PROTO_OFFSET) else {
        return Transport::Unknown;
    };
    packet.port_header(protocol, header_len)
}

fn ipv6(frame: &[u8], l3: usize, policy: &Policy) -> Verdict {
    let Some(src) =
        source::<{ wire::IPV6_ADDR_LEN }>(frame, l3, wire::IPV6_HLEN, wire::IPV6_SRC_OFFSET)
    else {
        return unparseable(Family::Ipv6);
    };
    let dst = source::<{ wire::IPV6_ADDR_LEN }>(frame, l3, wire::IPV6_HLEN, IPV6_DST_AT)
        .expect("the fixed header holds both addresses");
    let addrs = (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into());
    decide(ipv6_transport(&frame[l3..]), addrs, policy, Family::Ipv6)
}

/// Steps 3 and 5 for IPv6; `net` is the frame from the network header on.
fn ipv6_transport(net: &[u8]) -> Transport {
    if net[0] >> wire::IP_VERSION_SHIFT != wire::IPV6_VERSION {
        return Transport::Unknown;
    }
    let Some(payload_len) = be16(net, wire::IPV6_PAYLOAD_LEN_OFFSET).map(usize::from) else {
        return Transport::Unknown;
    };
    let declared = wire::IPV6_HLEN + payload_len;
    if payload_len == 0 || declared > net.len() {
        return Transport::Unknown;
    }
    let packet = Packet(&net[..declared]);
    let mut next = net[wire::IPV6_NEXT_HEADER_OFFSET];
    let mut at = wire::IPV6_HLEN;
    let mut walked = 0;
    let mut routed = false;
    loop {
        match next {
            proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS | proto::AH | proto::FRAGMENT => {
                if walked == MAX_IPV6_EXT_HEADERS {
                    return Transport::Unknown;
                }
                let len = match next {
                    proto::FRAGMENT => {
                        let Some(field) = packet
                            .fits(at, wire::IPV6_FRAG_HLEN)
                            .and_then(|()| packet.be16(at + wire::IPV6_FRAG_OFF_OFFSET))
                        else {
                            return Transport::Unknown;
                        };
                        if field >> wire::IPV6_FRAG_OFF_SHIFT != 0 {
                            return Transport::Unprotected;
                        }
                        wire::IPV6_FRAG_HLEN
                    }
                    proto::AH => match packet.byte(at + 1) {
                        Some(units) => {
                            (usize::from(units) + wire::IPV6_AH_LEN_BIAS) * wire::IPV6_AH_UNIT
                        }
                        None => return Transport::Unknown,
                    },
                    _ => match packet.byte(at + 1) {
                        Some(units) => (usize::from(units) + 1) * wire::IPV6_EXT_UNIT,
                        None => return Transport::Unknown,
                    },
                };
                if packet.fits(at, len).is_none() {
                    return Transport::Unknown;
                }
                routed |= next == proto::ROUTING;
                next = packet.0[at];
                at += len;
                walked += 1;
            }
            unwalked if UNWALKED_EXT_HEADERS.contains(&unwalked) => return Transport::Unknown,
            inner if routed && TUNNELLED_IP.contains(&inner) => return Transport::Unknown,
            protocol => return packet.port_header(protocol, at),
        }
    }
}

/// The packet as the kernel keeps it: from the network header to the declared end. Reads past
/// it are `None`.
struct Packet<'a>(&'a [u8]);

impl Packet<'_> {
    fn byte(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }

    fn be16(&self, at: usize) -> Option<u16> {
        be16(self.0, at)
    }

    /// `Some` when `len` bytes from `at` lie inside the packet.
    fn fits(&self, at: usize, len: usize) -> Option<()> {
        (at.checked_add(len)? <= self.0.len()).then_some(())
    }

    /// Step 6: the transport of `protocol` whose header starts at `at`.
    fn port_header(&self, protocol: u8, at: usize) -> Transport {
        let Some(&(_, min_len)) = PORT_PROTOCOLS.iter().find(|(p, _)| *p == protocol) else {
            return Transport::Unprotected;
        };
        if self.fits(at, min_len).is_none() {
            return Transport::Unknown;
        }
        let (Some(src_port), Some(dst_port)) = (self.be16(at), self.be16(at + 2)) else {
            return Transport::Unknown;
        };
        let tcp_flags = if protocol == proto::TCP {
            self.byte(at + TCP_FLAGS_AT).unwrap_or_default()
        } else {
            0
        };
        Transport::Port(PortHeader {
            protocol,
            src_port,
            dst_port,
            tcp_flags,
        })
    }
}

/// TCP's flags byte and the two flags the guarded rule reads (RFC 9293).
const TCP_FLAGS_AT: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Step 7, with the port classes: open ports pass from anyone; strict and guarded ports pass
/// an allowed source; from outside, strict drops and guarded asks [`guarded`].
fn decide(
    transport: Transport,
    (src, dst): (IpAddr, IpAddr),
    policy: &Policy,
    family: Family,
) -> Verdict {
    let allowed = || policy.allows(src);
    let (action, reason) = match transport {
        Transport::Unprotected => (Action::Pass, Reason::PassUnprotected),
        Transport::Port(header) => match policy.ports.class(header.dst_port) {
            PortClass::Open => (Action::Pass, Reason::PassUnprotected),
            _ if allowed() => (Action::Pass, Reason::PassAllowed),
            PortClass::Strict => (Action::Drop, Reason::DropOutsideVpc),
            PortClass::Guarded => guarded(
                header,
                SocketAddr::new(src, header.src_port),
                SocketAddr::new(dst, header.dst_port),
                policy,
            ),
        },
        Transport::Unknown if allowed() => (Action::Pass, Reason::PassAllowed),
        Transport::Unknown => (Action::Drop, Reason::DropUnparseable),
    };
    Verdict {
        action,
        reason,
        family,
    }
}

/// A guarded port from outside the allow-list: a TCP SYN without ACK opens a connection and is
/// dropped unlooked-at; any other TCP segment is dropped if it would reach a listener; a UDP
/// datagram if it would reach an unconnected socket; the protocols without a lookup (DCCP,
/// SCTP, UDP-Lite) always. The rest belongs to one of the node's own connections, or to no
/// socket at all, and passes as a reply.
fn guarded(
    header: PortHeader,
    src: SocketAddr,
    dst: SocketAddr,
    policy: &Policy,
) -> (Action, Reason) {
    let drop = (Action::Drop, Reason::DropGuarded);
    let reply = (Action::Pass, Reason::PassReply);
    let found = match header.protocol {
        proto::TCP if header.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN => return drop,
        proto::TCP => policy.lookup_tcp(src, dst),
        proto::UDP => policy.lookup_udp(src, dst),
        _ => return drop,
    };
    match found {
        Found::Open => drop,
        Found::Connected | Found::Nothing => reply,
    }
}

fn unparseable(family: Family) -> Verdict {
    Verdict {
        action: Action::Drop,
        reason: Reason::DropUnparseable,
        family,
    }
}

fn pass_unprotected(family: Family) -> Verdict {
    Verdict {
        action: Action::Pass,
        reason: Reason::PassUnprotected,
        family,
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *bytes.get(at)?,
        *bytes.get(at.checked_add(1)?)?,
    ]))
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
