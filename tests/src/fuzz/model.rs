//! The reference model of the XDP verdict: docs/filter.md, "The verdict, exactly", as a pure
//! function. It is written from that page alone, never from the program's source, so the
//! differential fuzzer compares two independent readings of one contract: where they disagree,
//! either the program or this model misread the page.
//!
//! Every read after the IP header's fixed part goes through a slice cut at the declared end
//! (`Packet`), so this model cannot see a byte the kernel would trim, whatever the frame holds.

use ipnet::{Ipv4Net, Ipv6Net};
use serve_guard_common::{
    Family, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Reason,
    wire::{self, proto},
};
use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

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

/// Everything besides the frame the verdict depends on: the program's maps and config.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub protected_ports: HashSet<u16>,
    pub allow_v4: Vec<Ipv4Net>,
    pub allow_v6: Vec<Ipv6Net>,
    pub audit: bool,
}

impl Policy {
    fn allows_v4(&self, src: Ipv4Addr) -> bool {
        self.allow_v4.iter().any(|net| net.contains(&src))
    }

    fn allows_v6(&self, src: Ipv6Addr) -> bool {
        self.allow_v6.iter().any(|net| net.contains(&src))
    }
}

/// What step 3-6 find behind the IP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Port(u16),
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
    let allowed = policy.allows_v4(Ipv4Addr::from(src));
    decide(ipv4_transport(&frame[l3..]), allowed, policy, Family::Ipv4)
}

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
    let allowed = policy.allows_v6(Ipv6Addr::from(src));
    decide(ipv6_transport(&frame[l3..]), allowed, policy, Family::Ipv6)
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
        match self
            .fits(at, min_len)
            .and_then(|()| self.be16(at + wire::L4_DST_PORT_OFFSET))
        {
            Some(port) => Transport::Port(port),
            None => Transport::Unknown,
        }
    }
}

/// Step 7.
fn decide(transport: Transport, allowed: bool, policy: &Policy, family: Family) -> Verdict {
    let (action, reason) = match transport {
        Transport::Port(port) if policy.protected_ports.contains(&port) => {
            if allowed {
                (Action::Pass, Reason::PassAllowed)
            } else {
                (Action::Drop, Reason::DropOutsideVpc)
            }
        }
        Transport::Port(_) | Transport::Unprotected => (Action::Pass, Reason::PassUnprotected),
        Transport::Unknown if allowed => (Action::Pass, Reason::PassAllowed),
        Transport::Unknown => (Action::Drop, Reason::DropUnparseable),
    };
    Verdict {
        action,
        reason,
        family,
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
