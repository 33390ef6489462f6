//! Bounds-checked reads from the packet and the header walk: Ethernet (up to
//! `MAX_VLAN_TAGS` tags), IPv4 with options, IPv6 with its extension-header chain, then the
//! destination port of a port protocol (TCP, UDP, DCCP, SCTP, UDP-Lite). The walk only reports
//! what it found; `verdict` decides.
//!
//! Every read goes through `Frame::bytes`, which checks the end of the packet right before the
//! access in the form the verifier tracks (packet pointer + N <= data_end). Past the fixed IP
//! header, reads go through `Packet`, which also stops at the length the IP header declares:
//! the kernel keeps exactly those bytes (docs/filter.md). Offsets that grow
//! with header lengths taken from the packet are bounded by the fixed loop counts, so the
//! verifier can always prove them below its packet-offset limit.

use serve_guard_common::{
    Family, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
    wire::{self, proto},
};

/// The packet bytes the program may read, `[start, end)`, and the packet's whole length, which
/// is larger at TC when the kernel holds the rest of the packet outside the linear part.
pub struct Frame {
    start: usize,
    end: usize,
    len: usize,
}

impl Frame {
    /// `data`, `data_end`: the context's readable bytes; `len`: the packet's length.
    #[inline(always)]
    pub fn new(data: usize, data_end: usize, len: usize) -> Self {
        Self {
            start: data,
            end: data_end,
            len,
        }
    }

    /// Length of the packet in bytes (what the byte counters add, and what an IP header's
    /// declared length is held against).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// `N` bytes at `offset`, or `None` if the frame ends before them.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let ptr = self.start + offset;
        if ptr + N > self.end {
            return None;
        }
        // SAFETY: [ptr, ptr + N) lies inside the packet (checked above); [u8; N] has
        // alignment 1.
        Some(unsafe { *(ptr as *const [u8; N]) })
    }

    #[inline(always)]
    fn u8_at(&self, offset: usize) -> Option<u8> {
        self.bytes::<1>(offset).map(|[b]| b)
    }

    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        self.bytes::<2>(offset).map(u16::from_be_bytes)
    }
}

/// An IP packet's source (network order, the allow-list key) and where its header starts. The
/// destination is read only when a guarded port needs it: every byte read up front costs on
/// every packet, most of which need neither (docs/lookup.md).
#[derive(Clone, Copy)]
pub enum Ip {
    V4 {
        l3: usize,
        src: [u8; wire::IPV4_ADDR_LEN],
    },
    V6 {
        l3: usize,
        src: [u8; wire::IPV6_ADDR_LEN],
    },
}

/// The packet's addresses, in network order: the socket lookup's key on guarded ports.
#[derive(Clone, Copy)]
pub enum Addrs {
    V4 {
        src: [u8; wire::IPV4_ADDR_LEN],
        dst: [u8; wire::IPV4_ADDR_LEN],
    },
    V6 {
        src: [u8; wire::IPV6_ADDR_LEN],
        dst: [u8; wire::IPV6_ADDR_LEN],
    },
}

impl Ip {
    #[inline(always)]
    pub fn family(&self) -> Family {
        match self {
            Ip::V4 { .. } => Family::Ipv4,
            Ip::V6 { .. } => Family::Ipv6,
        }
    }

    /// Both addresses; `None` only for a frame cut short, which `parse` has already ruled out.
    #[inline(always)]
    pub fn addrs(&self, frame: &Frame) -> Option<Addrs> {
        Some(match *self {
            Ip::V4 { l3, src } => Addrs::V4 {
                src,
                dst: frame.bytes(l3 + wire::IPV4_DST_OFFSET)?,
            },
            Ip::V6 { l3, src } => Addrs::V6 {
                src,
                dst: frame.bytes(l3 + wire::IPV6_DST_OFFSET)?,
            },
        })
    }
}

/// A port protocol's header: its destination port, read by `parse`, and where the rest is. The
/// whole minimum header lies inside the packet's declared length (`transport_header` checked),
/// so the fields read later are bytes the kernel keeps.
#[derive(Clone, Copy)]
pub struct Ports {
    /// The IP protocol number (TCP, UDP, DCCP, SCTP, UDP-Lite).
    pub protocol: u8,
    /// Destination port in network order.
    pub dst: [u8; 2],
    /// Frame offset of the transport header.
    l4: usize,
}

impl Ports {
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst)
    }

    /// The source port in network order (the socket lookup's key).
    #[inline(always)]
    pub fn src(&self, frame: &Frame) -> Option<[u8; 2]> {
        frame.bytes(self.l4 + wire::L4_SRC_PORT_OFFSET)
    }

    /// TCP's flags byte (only meaningful when `protocol` is TCP).
    #[inline(always)]
    pub fn tcp_flags(&self, frame: &Frame) -> Option<u8> {
        frame.u8_at(self.l4 + wire::TCP_FLAGS_OFFSET)
    }
}

/// What the walk learnt about the transport layer of an IP packet.
#[derive(Clone, Copy)]
pub enum Transport {
    /// A port protocol (TCP, UDP, DCCP, SCTP, UDP-Lite) with these ports.
    Port(Ports),
    /// Carries no port the kernel would deliver to a Serve socket: another protocol or a
    /// non-first fragment.
    Unprotected,
    /// The port cannot be known: a header cut short or lying about its length, a first
    /// fragment without its whole transport header, an extension header that cannot be walked
    /// or a chain longer than the bound.
    Unknown,
}

pub enum Parsed {
    /// Not even the source address could be read (family `Other` if the link layer itself
    /// was not understood).
    Unparseable(Family),
    /// A well-formed link-layer frame that is not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp,
    Ip {
        ip: Ip,
        transport: Transport,
    },
}

#[inline(always)]
pub fn parse(frame: &Frame) -> Parsed {
    let Some((ethertype, l3)) = ethernet(frame) else {
        return Parsed::Unparseable(Family::Other);
    };
    match ethertype {
        wire::ETH_P_IPV4 => ipv4(frame, l3),
        wire::ETH_P_IPV6 => ipv6(frame, l3),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == wire::ETH_P_8021Q || ethertype == wire::ETH_P_8021AD
}

/// The EtherType behind up to `MAX_VLAN_TAGS` tags and the offset of the L3 header. `None`
/// if the Ethernet header or a tag is cut short, or there are more tags than the bound.
#[inline(always)]
fn ethernet(frame: &Frame) -> Option<(u16, usize)> {
    let mut ethertype = frame.be16_at(wire::ETH_TYPE_OFFSET)?;
    let mut offset = wire::ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            return Some((ethertype, offset));
        }
        // A tag is TCI then the inner EtherType.
        ethertype = frame.be16_at(offset + wire::VLAN_INNER_TYPE_OFFSET)?;
        offset += wire::VLAN_HLEN;
    }
    if is_vlan(ethertype) {
        None
    } else {
        Some((ethertype, offset))
    }
}

/// One IP packet as the kernel keeps it: the frame up to the end its header declares. `ip_rcv`
/// and `ipv6_rcv` trim every packet to its declared length, so bytes after it (Ethernet padding,
/// or an attacker's trailer dressed up as headers) must never be read: every read past the fixed
/// header goes through here.
struct Packet<'a> {
    frame: &'a Frame,
    /// Frame offset of the first byte after the declared length; never past the frame's end.
    end: usize,
}

impl Packet<'_> {
    /// The packet starting at `l3` with `declared` bytes, or `None` when the frame holds fewer
    /// (the kernel drops those as truncated).
    #[inline(always)]
    fn new(frame: &Frame, l3: usize, declared: usize) -> Option<Packet<'_>> {
        let end = l3 + declared;
        // Opaque to the optimiser: knowing `end <= len` it would prove every later
        // `ptr + N <= data_end` check redundant and drop it, and the verifier needs each one.
        if end > core::hint::black_box(frame.len()) {
            return None;
        }
        Some(Packet { frame, end })
    }

    /// Whether `len` bytes at `offset` lie inside the packet.
    #[inline(always)]
    fn holds(&self, offset: usize, len: usize) -> bool {
        offset + len <= self.end
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if !self.holds(offset, N) {
            return None;
        }
        // Also checked against the frame's end: the verifier only trusts that comparison.
        self.frame.bytes::<N>(offset)
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, l3: usize) -> Parsed {
    // The source is trusted only from a whole fixed header; every field read below is in it.
    if frame.bytes::<1>(l3 + wire::IPV4_MIN_HLEN - 1).is_none() {
        return Parsed::Unparseable(Family::Ipv4);
    }
    let Some(src) = frame.bytes(l3 + wire::IPV4_SRC_OFFSET) else {
        return Parsed::Unparseable(Family::Ipv4);
    };
    Parsed::Ip {
        ip: Ip::V4 { l3, src },
        transport: ipv4_transport(frame, l3),
    }
}

#[inline(always)]
fn ipv4_transport(frame: &Frame, l3: usize) -> Transport {
    // Inside the fixed header `ipv4` found whole, so no read fails; the defaults keep each value
    // defined on every path (LLVM would otherwise compute with a register holding anything,
    // which the verifier refuses when it holds a pointer). Version 0 is refused below.
    let version_ihl = frame.u8_at(l3).unwrap_or(0);
    let total_len = frame.be16_at(l3 + wire::IPV4_TOTAL_LEN_OFFSET).unwrap_or(0);
    let frag = frame.be16_at(l3 + wire::IPV4_FRAG_OFF_OFFSET).unwrap_or(0);
    let protocol = frame.u8_at(l3 + wire::IPV4_PROTO_OFFSET).unwrap_or(0);
    let ihl = version_ihl & wire::IPV4_IHL_MASK;
    // The kernel drops these before any socket sees them; we cannot find the port either.
    if version_ihl >> wire::IP_VERSION_SHIFT != wire::IPV4_VERSION || ihl < wire::IPV4_MIN_IHL {
        return Transport::Unknown;
    }
    let header_len = ihl as usize * wire::IPV4_IHL_WORD;
    if (total_len as usize) < header_len {
        return Transport::Unknown;
    }
    let Some(packet) = Packet::new(frame, l3, total_len as usize) else {
        return Transport::Unknown;
    };
    // A non-first fragment has no transport header; without its first fragment (judged by
    // its port) it cannot be reassembled.
    if frag & wire::IPV4_FRAG_OFF_MASK != 0 {
        return Transport::Unprotected;
    }
    transport_header(&packet, protocol, l3 + header_len)
}

/// The destination port of the upper-layer header `protocol` at `l4`, if it is a port protocol.
/// Its whole minimum header must be in the packet: a first fragment that stops short of it
/// might carry the port in a later fragment (RFC 7112), so the port is not known.
#[inline(always)]
fn transport_header(packet: &Packet, protocol: u8, l4: usize) -> Transport {
    let Some(min_len) = wire::port_header_len(protocol) else {
        return Transport::Unprotected;
    };
    if !packet.holds(l4, min_len) {
        return Transport::Unknown;
    }
    match packet.bytes::<2>(l4 + wire::L4_DST_PORT_OFFSET) {
        Some(dst) => Transport::Port(Ports { protocol, dst, l4 }),
        None => Transport::Unknown,
    }
}

#[inline(always)]
fn ipv6(frame: &Frame, l3: usize) -> Parsed {
    // The source is trusted only from a whole fixed header (the destination is its last field).
    if frame.bytes::<1>(l3 + wire::IPV6_HLEN - 1).is_none() {
        return Parsed::Unparseable(Family::Ipv6);
    }
    let Some(src) = frame.bytes(l3 + wire::IPV6_SRC_OFFSET) else {
        return Parsed::Unparseable(Family::Ipv6);
    };
    Parsed::Ip {
        ip: Ip::V6 { l3, src },
        transport: ipv6_transport(frame, l3),
    }
}

#[inline(always)]
fn ipv6_transport(frame: &Frame, l3: usize) -> Transport {
    let (Some(version), Some(payload_len), Some(mut next)) = (
        frame.u8_at(l3),
        frame.be16_at(l3 + wire::IPV6_PAYLOAD_LEN_OFFSET),
        frame.u8_at(l3 + wire::IPV6_NEXT_HEADER_OFFSET),
    ) else {
        return Transport::Unknown;
    };
    if version >> wire::IP_VERSION_SHIFT != wire::IPV6_VERSION {
        return Transport::Unknown;
    }
    // Zero is a jumbogram (its length is in a hop-by-hop option) or an empty packet: neither
    // can carry a Serve request inside one XDP frame, and we do not parse jumbo options.
    if payload_len == 0 {
        return Transport::Unknown;
    }
    let Some(packet) = Packet::new(frame, l3, wire::IPV6_HLEN + payload_len as usize) else {
        return Transport::Unknown;
    };
    let mut offset = l3 + wire::IPV6_HLEN;
    let mut routed = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_walked_extension(next) {
            break;
        }
        let Some([nh, len]) = packet.bytes::<2>(offset) else {
            return Transport::Unknown;
        };
        let header_len = match next {
            proto::FRAGMENT => wire::IPV6_FRAG_HLEN,
            proto::AH => (len as usize + wire::IPV6_AH_LEN_BIAS) * wire::IPV6_AH_UNIT,
            _ => (len as usize + 1) * wire::IPV6_EXT_UNIT,
        };
        // The kernel walks only whole headers; one that runs past the packet hides the rest.
        if !packet.holds(offset, header_len) {
            return Transport::Unknown;
        }
        if next == proto::FRAGMENT {
            let Some(field) = packet.bytes::<2>(offset + wire::IPV6_FRAG_OFF_OFFSET) else {
                return Transport::Unknown;
            };
            if u16::from_be_bytes(field) >> wire::IPV6_FRAG_OFF_SHIFT != 0 {
                // Non-first fragment: no transport header here (see ipv4_transport).
                return Transport::Unprotected;
            }
        }
        routed |= next == proto::ROUTING;
        next = nh;
        offset += header_len;
    }
    match next {
        // Still inside the chain after the bound: we stopped looking, the kernel would not.
        _ if is_walked_extension(next) => Transport::Unknown,
        // An IP packet behind a segment routing header (SRv6, RPL): with seg6_enabled the
        // kernel decapsulates it by itself, without a device or a route, and re-injects the
        // inner packet where XDP never sees it. Its port cannot be known from here.
        proto::IPIP | proto::IPV6 if routed => Transport::Unknown,
        // Known extension headers we do not walk: whatever follows them is unknown.
        proto::MOBILITY
        | proto::HIP
        | proto::SHIM6
        | proto::EXPERIMENTAL_1
        | proto::EXPERIMENTAL_2 => Transport::Unknown,
        // A port protocol is judged by its port; ICMPv6, ESP, no-next-header and every other
        // upper layer carry no Serve port.
        _ => transport_header(&packet, next, offset),
    }
}

/// Extension headers the walk steps over: hop-by-hop, routing, destination options, AH and
/// fragment (whose offset it also checks).
#[inline(always)]
fn is_walked_extension(next: u8) -> bool {
    matches!(
        next,
        proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS | proto::AH | proto::FRAGMENT
    )
}
