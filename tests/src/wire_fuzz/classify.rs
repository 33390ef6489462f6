//! Names the by-design reason (docs/filter.md, "Over-blocking by design") why the filter may
//! drop a frame the kernel would deliver. Used only to sort the differences the kernel shows
//! between the lanes: a difference with no such reason is an unexpected over-block. This reads
//! the frame's headers as the contract describes them; it is not the verdict (the kernel of the
//! filtered lane gives that).

use super::lab::kept_out;
use serve_guard_common::wire::{self, proto};
use serve_guard_common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

/// The over-blocks docs/filter.md lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// More than `MAX_VLAN_TAGS` tags: dropped from every source (the source cannot be read).
    VlanTags,
    /// The IP header's length disagrees with the frame, or an IPv6 payload length of zero.
    LengthLie,
    /// A first fragment (or whole packet) without the whole transport header before the
    /// declared end, including IPv6 first fragments that end inside the extension chain.
    FirstFragmentCut,
    /// More than `MAX_IPV6_EXT_HEADERS` extension headers.
    LongExtChain,
    /// Mobility, HIP, shim6 or experimental extension headers.
    UnwalkedExt,
    /// A fragment of the datagram is a first fragment for a port kept out (strict, or guarded
    /// with a socket or for a SYN; a conflicting duplicate): from outside the filter drops it,
    /// as it must, and the kernel may then not
    /// reassemble the rest (e.g. a fragment that overlapped the dropped one now overlaps the
    /// other copy).
    ProtectedCopy,
    /// An IPv4 or IPv6 packet behind a routing header (SRv6/RPL encapsulation): the kernel may
    /// decapsulate it where the filter does not look.
    RoutedIp,
}

impl Class {
    pub const fn name(self) -> &'static str {
        match self {
            Class::VlanTags => "vlan_tags_over_8",
            Class::LengthLie => "length_lie",
            Class::FirstFragmentCut => "first_fragment_without_transport_header",
            Class::LongExtChain => "ext_chain_over_8",
            Class::UnwalkedExt => "unwalked_ext_header",
            Class::ProtectedCopy => "fragment_for_protected_port_dropped",
            Class::RoutedIp => "ip_behind_routing_header",
        }
    }

    /// Over-blocked from every source, allowed ones included.
    pub const fn from_every_source(self) -> bool {
        matches!(self, Class::VlanTags)
    }
}

/// Minimum header of each port protocol (docs/filter.md step 6).
fn port_header_len(protocol: u8) -> Option<usize> {
    const DCCP: u8 = 33;
    const SCTP: u8 = 132;
    const UDPLITE: u8 = 136;
    match protocol {
        proto::TCP => Some(wire::TCP_MIN_HLEN),
        proto::UDP | UDPLITE => Some(wire::UDP_HLEN),
        DCCP | SCTP => Some(12),
        _ => None,
    }
}

/// The by-design reasons any frame of a case gives, most specific first, deduplicated.
pub fn classes(frames: &[Vec<u8>]) -> Vec<Class> {
    let mut out: Vec<Class> = frames.iter().filter_map(|f| class(f)).collect();
    out.sort();
    out.dedup();
    out
}

/// Why the filter may drop `frame` from an outside source although it may be for an
/// unprotected port: None if the contract lets it judge the port.
pub fn class(frame: &[u8]) -> Option<Class> {
    let mut l3 = wire::ETH_HLEN;
    let mut ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let mut tags = 0;
    while matches!(ethertype, wire::ETH_P_8021Q | wire::ETH_P_8021AD) {
        tags += 1;
        if tags > MAX_VLAN_TAGS {
            return Some(Class::VlanTags);
        }
        ethertype = u16::from_be_bytes(frame.get(l3 + 2..l3 + 4)?.try_into().ok()?);
        l3 += wire::VLAN_HLEN;
    }
    let packet = frame.get(l3..)?;
    match ethertype {
        wire::ETH_P_IPV4 => ipv4(packet),
        wire::ETH_P_IPV6 => ipv6(packet),
        _ => None,
    }
}

fn ipv4(p: &[u8]) -> Option<Class> {
    let ihl = usize::from(*p.first()? & wire::IPV4_IHL_MASK) * wire::IPV4_IHL_WORD;
    let total = usize::from(u16::from_be_bytes(p.get(2..4)?.try_into().ok()?));
    if ihl < wire::IPV4_MIN_HLEN || total < ihl || total > p.len() {
        return Some(Class::LengthLie);
    }
    let frag = u16::from_be_bytes(p.get(6..8)?.try_into().ok()?) & wire::IPV4_FRAG_OFF_MASK;
    if frag != 0 {
        return None;
    }
    let protocol = p[wire::IPV4_PROTO_OFFSET];
    let need = port_header_len(protocol)?;
    if ihl + need > total {
        return Some(Class::FirstFragmentCut);
    }
    protected_port(p, protocol, ihl)
}

/// [`Class::ProtectedCopy`] if the transport header of `protocol` at `l4` is for a port kept
/// out.
fn protected_port(p: &[u8], protocol: u8, l4: usize) -> Option<Class> {
    let at = l4 + wire::L4_DST_PORT_OFFSET;
    let port = u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?);
    let flags = if protocol == proto::TCP {
        Some(*p.get(l4 + wire::TCP_FLAGS_OFFSET)?)
    } else {
        None
    };
    kept_out(port, flags).then_some(Class::ProtectedCopy)
}

fn ipv6(p: &[u8]) -> Option<Class> {
    let payload = usize::from(u16::from_be_bytes(p.get(4..6)?.try_into().ok()?));
    if payload == 0 || wire::IPV6_HLEN + payload > p.len() {
        return Some(Class::LengthLie);
    }
    let end = wire::IPV6_HLEN + payload;
    let mut next = p[wire::IPV6_NEXT_HEADER_OFFSET];
    let mut at = wire::IPV6_HLEN;
    let mut routed = false;
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let len = match next {
            proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS => {
                let Some(&units) = p.get(at + 1).filter(|_| at + 2 <= end) else {
                    return Some(Class::FirstFragmentCut);
                };
                (usize::from(units) + 1) * wire::IPV6_EXT_UNIT
            }
            proto::AH => {
                let Some(&units) = p.get(at + 1).filter(|_| at + 2 <= end) else {
                    return Some(Class::FirstFragmentCut);
                };
                (usize::from(units) + wire::IPV6_AH_LEN_BIAS) * wire::IPV6_AH_UNIT
            }
            proto::FRAGMENT => {
                if at + wire::IPV6_FRAG_HLEN > end {
                    return Some(Class::FirstFragmentCut);
                }
                let field = u16::from_be_bytes(p[at + 2..at + 4].try_into().ok()?);
                if field >> wire::IPV6_FRAG_OFF_SHIFT != 0 {
                    return None;
                }
                wire::IPV6_FRAG_HLEN
            }
            proto::MOBILITY
            | proto::HIP
            | proto::SHIM6
            | proto::EXPERIMENTAL_1
            | proto::EXPERIMENTAL_2 => return Some(Class::UnwalkedExt),
            proto::IPIP | proto::IPV6 if routed => return Some(Class::RoutedIp),
            other => {
                let need = port_header_len(other)?;
                if at + need > end {
                    return Some(Class::FirstFragmentCut);
                }
                return protected_port(p, other, at);
            }
        };
        if at + len > end {
            return Some(Class::FirstFragmentCut);
        }
        routed |= next == proto::ROUTING;
        next = p[at];
        at += len;
    }
    Some(Class::LongExtChain)
}

#[cfg(test)]
mod tests {
    use super::super::lab::PROTECTED_PORTS;
    use super::*;
    use crate::frames::{Ext, Frame};

    #[test]
    fn names_the_documented_classes() {
        let (a, b) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        assert_eq!(class(&Frame::ipv6(a, b).udp(80).build()), None);
        let mut nine = Frame::ipv6(a, b);
        for _ in 0..9 {
            nine = nine.ext(Ext::DestOpts { extra_units: 0 });
        }
        assert_eq!(class(&nine.udp(80).build()), Some(Class::LongExtChain));
        let mut tags = Frame::ipv6(a, b).udp(80);
        for _ in 0..9 {
            tags = tags.vlan_8021q(0);
        }
        assert_eq!(class(&tags.build()), Some(Class::VlanTags));
        let hip = Frame::ipv6(a, b)
            .ext(Ext::Other(proto::HIP))
            .udp(80)
            .build();
        assert_eq!(class(&hip), Some(Class::UnwalkedExt));
        let later = Frame::ipv6(a, b)
            .ext(Ext::Fragment {
                offset: 3,
                more: false,
            })
            .udp(80)
            .build();
        assert_eq!(class(&later), None);
        let srv6 = Frame::ipv6(a, b)
            .ext(Ext::Routing)
            .protocol(proto::IPIP)
            .build();
        assert_eq!(class(&srv6), Some(Class::RoutedIp));
        let to_8000 = Frame::ipv6(a, b).udp(PROTECTED_PORTS[0]).build();
        assert_eq!(class(&to_8000), Some(Class::ProtectedCopy));
    }
}
