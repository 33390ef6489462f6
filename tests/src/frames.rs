//! One small builder for the frames the verdict tests and the benchmark feed the XDP program:
//! Ethernet, any number of VLAN tags, IPv4 with options and fragments, IPv6 with any
//! extension-header chain, TCP/UDP/ICMP, ARP, and a cut at any length.
//!
//! ```
//! use serve_guard_tests::frames::{Frame, Ext};
//! let bytes = Frame::ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
//!     .ext(Ext::HopByHop)
//!     .tcp(8000)
//!     .vlan_8021q(10)
//!     .build();
//! ```
//!
//! Checksums: the IPv4 header checksum is correct; TCP/UDP checksums are left zero (the
//! program under test never reads them).

use serve_guard_common::wire::{self, proto};
use std::net::{Ipv4Addr, Ipv6Addr};

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Source port of every TCP/UDP packet built here.
pub const SRC_PORT: u16 = 40_000;
const TTL: u8 = 64;
/// Bytes of payload after the transport header, so a frame is more than its headers.
const PAYLOAD: &[u8] = b"serve-guard";
/// Identification of IPv4 packets and IPv6 fragment headers.
const IP_ID: u16 = 0x5347;
const TCP_WINDOW: u16 = 64_240;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const IPV4_FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_FRAG_MORE: u16 = 1;
const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const PADN_OPTION: u8 = 1;
/// AH with a 96-bit ICV (HMAC-SHA1-96): 12 bytes of fixed fields + 12 of ICV.
const AH_LEN: usize = 24;

/// The TCP flag bits (byte 13 of the header), for [`Frame::tcp_flags`].
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Offsets of the layers of a built frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Start of the IP (or ARP) header, after the Ethernet header and tags.
    pub l3: usize,
    /// Start of the transport header (= `headers` for non-IP frames).
    pub l4: usize,
    /// End of the transport header: the full header stack.
    pub headers: usize,
}

/// One VLAN tag: its TPID (802.1Q or 802.1ad) and VLAN id.
#[derive(Clone, Copy, Debug)]
pub struct Tag {
    pub tpid: u16,
    pub vid: u16,
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options (8 bytes, PadN).
    HopByHop,
    /// Routing header (8 bytes, segments left 0).
    Routing,
    /// Destination options of `1 + extra_units` 8-octet units (PadN).
    DestOpts { extra_units: u8 },
    /// Fragment header; `offset` in 8-octet units.
    Fragment { offset: u16, more: bool },
    /// Authentication header with a 96-bit ICV (24 bytes, length byte 4).
    Ah,
    /// An 8-byte header of another type (Mobility 135, HIP 139, Shim6 140, 253, 254...).
    Other(u8),
}

impl Ext {
    fn next_header_value(self) -> u8 {
        match self {
            Ext::HopByHop => proto::HOPOPTS,
            Ext::Routing => proto::ROUTING,
            Ext::DestOpts { .. } => proto::DSTOPTS,
            Ext::Fragment { .. } => proto::FRAGMENT,
            Ext::Ah => proto::AH,
            Ext::Other(value) => value,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop | Ext::Routing | Ext::Other(_) => padded_options(next, 0),
            Ext::DestOpts { extra_units } => padded_options(next, extra_units),
            Ext::Fragment { offset, more } => {
                let field =
                    (offset << wire::IPV6_FRAG_OFF_SHIFT) | if more { IPV6_FRAG_MORE } else { 0 };
                let mut h = vec![next, 0];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&u32::from(IP_ID).to_be_bytes());
                h
            }
            Ext::Ah => {
                let mut h = vec![0u8; AH_LEN];
                h[0] = next;
                h[1] = (AH_LEN / wire::IPV6_AH_UNIT - wire::IPV6_AH_LEN_BIAS) as u8;
                h
            }
        }
    }
}

/// A header of `(1 + extra_units) * 8` bytes whose option area is one PadN option.
fn padded_options(next: u8, extra_units: u8) -> Vec<u8> {
    let len = (1 + usize::from(extra_units)) * wire::IPV6_EXT_UNIT;
    let mut h = vec![0u8; len];
    h[0] = next;
    h[1] = extra_units;
    h[2] = PADN_OPTION;
    h[3] = (len - 4) as u8;
    h
}

#[derive(Clone, Debug)]
enum Network {
    Arp,
    /// Any other EtherType (LLDP, ...) with a few bytes of payload.
    Raw(u16),
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        options: Vec<u8>,
        ihl: Option<u8>,
        frag_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        exts: Vec<Ext>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp(u16),
    Udp(u16),
    /// ICMP echo request (ICMPv6 for an IPv6 packet).
    Icmp,
    /// A port protocol by number, with its smallest header.
    Ports(u8, u16),
    /// Another protocol number with a few bytes of payload.
    Other(u8),
}

/// A frame under construction. Methods consume and return it; `build` writes the bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    tags: Vec<Tag>,
    network: Network,
    transport: Transport,
    /// Source port of a port protocol ([`SRC_PORT`] unless set).
    src_port: u16,
    /// TCP flags (SYN unless set).
    tcp_flags: u8,
    truncate: Option<usize>,
}

impl Frame {
    fn new(network: Network) -> Self {
        Self {
            tags: Vec::new(),
            network,
            transport: Transport::Icmp,
            src_port: SRC_PORT,
            tcp_flags: tcp::SYN,
            truncate: None,
        }
    }

    /// An IPv4 packet (ICMP echo until a transport is chosen).
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::new(Network::V4 {
            src,
            dst,
            options: Vec::new(),
            ihl: None,
            frag_offset: 0,
            more_fragments: false,
        })
    }

    /// An IPv6 packet (ICMPv6 echo until a transport is chosen).
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self::new(Network::V6 {
            src,
            dst,
            exts: Vec::new(),
        })
    }

    /// An ARP request.
    pub fn arp() -> Self {
        Self::new(Network::Arp)
    }

    /// A frame of another EtherType with a few bytes of payload.
    pub fn ethertype(ethertype: u16) -> Self {
        Self::new(Network::Raw(ethertype))
    }

    pub fn tcp(mut self, dst_port: u16) -> Self {
        self.transport = Transport::Tcp(dst_port);
        self
    }

    /// The TCP flags byte (default SYN alone; every frame carries a few bytes of payload, so a
    /// SYN is also a Fast Open SYN with data).
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// The source port of TCP, UDP and the other port protocols (default [`SRC_PORT`]).
    pub fn src_port(mut self, port: u16) -> Self {
        self.src_port = port;
        self
    }

    pub fn udp(mut self, dst_port: u16) -> Self {
        self.transport = Transport::Udp(dst_port);
        self
    }

    pub fn icmp(mut self) -> Self {
        self.transport = Transport::Icmp;
        self
    }

    /// A port protocol other than TCP and UDP (DCCP, SCTP, UDP-Lite): its smallest header,
    /// zero but for the ports.
    pub fn port_protocol(mut self, number: u8, dst_port: u16) -> Self {
        assert!(
            wire::port_header_len(number).is_some(),
            "{number} is not a port protocol"
        );
        self.transport = Transport::Ports(number, dst_port);
        self
    }

    /// Any other IP protocol / IPv6 next header (ESP, no-next-header, ...).
    pub fn protocol(mut self, number: u8) -> Self {
        self.transport = Transport::Other(number);
        self
    }

    /// Adds a VLAN tag inside the ones already added (the first call is the outermost tag).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.tags.push(Tag { tpid, vid });
        self
    }

    pub fn vlan_8021q(self, vid: u16) -> Self {
        self.vlan(wire::ETH_P_8021Q, vid)
    }

    pub fn vlan_8021ad(self, vid: u16) -> Self {
        self.vlan(wire::ETH_P_8021AD, vid)
    }

    /// IPv4 options (padded with End-of-Options to a multiple of 4 bytes).
    pub fn ipv4_options(mut self, bytes: &[u8]) -> Self {
        if let Network::V4 { options, .. } = &mut self.network {
            options.extend_from_slice(bytes);
            options.resize(
                options.len().div_ceil(wire::IPV4_IHL_WORD) * wire::IPV4_IHL_WORD,
                0,
            );
        } else {
            panic!("ipv4_options on a non-IPv4 frame");
        }
        self
    }

    /// Writes this IHL instead of the one the options imply (malformed headers).
    pub fn ihl(mut self, value: u8) -> Self {
        if let Network::V4 { ihl, .. } = &mut self.network {
            *ihl = Some(value);
        } else {
            panic!("ihl on a non-IPv4 frame");
        }
        self
    }

    /// Makes the IPv4 packet a fragment at `offset` 8-octet units.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        if let Network::V4 {
            frag_offset,
            more_fragments,
            ..
        } = &mut self.network
        {
            *frag_offset = offset;
            *more_fragments = more;
        } else {
            panic!("ipv4_fragment on a non-IPv4 frame");
        }
        self
    }

    /// Appends an IPv6 extension header to the chain.
    pub fn ext(mut self, ext: Ext) -> Self {
        if let Network::V6 { exts, .. } = &mut self.network {
            exts.push(ext);
        } else {
            panic!("ext on a non-IPv6 frame");
        }
        self
    }

    /// Cuts the built frame to `len` bytes (no-op if it is shorter).
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// Length of everything up to and including the transport header (or the ARP body).
    pub fn headers_len(&self) -> usize {
        self.layout().headers
    }

    /// Where the layers start in the built frame.
    pub fn layout(&self) -> Layout {
        let l3 = wire::ETH_HLEN + self.tags.len() * wire::VLAN_HLEN;
        let headers = self.clone().build_untruncated().1;
        let transport_len = match self.network {
            Network::Arp | Network::Raw(_) => 0,
            Network::V4 { .. } | Network::V6 { .. } => {
                transport_bytes(self, matches!(self.network, Network::V6 { .. }))
                    .1
                    .len()
            }
        };
        Layout {
            l3,
            l4: headers - transport_len,
            headers,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let (mut bytes, _) = self.clone().build_untruncated();
        if let Some(len) = self.truncate {
            bytes.truncate(len);
        }
        bytes
    }

    /// The frame and the length of its header stack.
    fn build_untruncated(self) -> (Vec<u8>, usize) {
        let (protocol, l4) = transport_bytes(&self, matches!(self.network, Network::V6 { .. }));
        let mut out = Vec::new();
        out.extend_from_slice(&DST_MAC);
        out.extend_from_slice(&SRC_MAC);
        for tag in &self.tags {
            out.extend_from_slice(&tag.tpid.to_be_bytes());
            out.extend_from_slice(&tag.vid.to_be_bytes());
        }
        match self.network {
            Network::Arp => {
                out.extend_from_slice(&wire::ETH_P_ARP.to_be_bytes());
                out.extend_from_slice(&arp_request());
                let len = out.len();
                (out, len)
            }
            Network::Raw(ethertype) => {
                out.extend_from_slice(&ethertype.to_be_bytes());
                let len = out.len();
                out.extend_from_slice(PAYLOAD);
                (out, len)
            }
            Network::V4 {
                src,
                dst,
                options,
                ihl,
                frag_offset,
                more_fragments,
            } => {
                out.extend_from_slice(&wire::ETH_P_IPV4.to_be_bytes());
                let header_len = wire::IPV4_MIN_HLEN + options.len();
                let ihl = ihl.unwrap_or((header_len / wire::IPV4_IHL_WORD) as u8);
                let flags_offset = frag_offset
                    | if more_fragments {
                        IPV4_FLAG_MORE_FRAGMENTS
                    } else {
                        0
                    };
                let total_len = (header_len + l4.len() + PAYLOAD.len()) as u16;
                let mut h = Vec::with_capacity(header_len);
                h.push((wire::IPV4_VERSION << wire::IP_VERSION_SHIFT) | ihl);
                h.push(0); // DSCP/ECN
                h.extend_from_slice(&total_len.to_be_bytes());
                h.extend_from_slice(&IP_ID.to_be_bytes());
                h.extend_from_slice(&flags_offset.to_be_bytes());
                h.push(TTL);
                h.push(protocol);
                h.extend_from_slice(&[0, 0]); // checksum, filled below
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                h.extend_from_slice(&options);
                let checksum = internet_checksum(&h);
                h[10..12].copy_from_slice(&checksum.to_be_bytes());
                out.extend_from_slice(&h);
                out.extend_from_slice(&l4);
                let len = out.len();
                out.extend_from_slice(PAYLOAD);
                (out, len)
            }
            Network::V6 { src, dst, exts } => {
                out.extend_from_slice(&wire::ETH_P_IPV6.to_be_bytes());
                let mut chain = Vec::new();
                for (i, ext) in exts.iter().enumerate() {
                    let next = exts.get(i + 1).map_or(protocol, |e| e.next_header_value());
                    chain.extend_from_slice(&ext.bytes(next));
                }
                let first = exts.first().map_or(protocol, |e| e.next_header_value());
                let payload_len = (chain.len() + l4.len() + PAYLOAD.len()) as u16;
                // Version, then traffic class and flow label (zero).
                out.extend_from_slice(&[wire::IPV6_VERSION << wire::IP_VERSION_SHIFT, 0, 0, 0]);
                out.extend_from_slice(&payload_len.to_be_bytes());
                out.push(first);
                out.push(TTL);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&chain);
                out.extend_from_slice(&l4);
                let len = out.len();
                out.extend_from_slice(PAYLOAD);
                (out, len)
            }
        }
    }
}

/// The protocol number and header bytes of a transport.
fn transport_bytes(frame: &Frame, v6: bool) -> (u8, Vec<u8>) {
    let src_port = frame.src_port;
    match frame.transport {
        Transport::Tcp(port) => {
            let mut h = vec![0u8; wire::TCP_MIN_HLEN];
            h[0..2].copy_from_slice(&src_port.to_be_bytes());
            h[2..4].copy_from_slice(&port.to_be_bytes());
            h[12] = ((wire::TCP_MIN_HLEN / 4) as u8) << 4; // data offset in 32-bit words
            h[wire::TCP_FLAGS_OFFSET] = frame.tcp_flags;
            h[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
            (proto::TCP, h)
        }
        Transport::Udp(port) => {
            let mut h = vec![0u8; wire::UDP_HLEN];
            h[0..2].copy_from_slice(&src_port.to_be_bytes());
            h[2..4].copy_from_slice(&port.to_be_bytes());
            h[4..6].copy_from_slice(&((wire::UDP_HLEN + PAYLOAD.len()) as u16).to_be_bytes());
            (proto::UDP, h)
        }
        Transport::Icmp if v6 => (
            proto::ICMPV6,
            vec![ICMPV6_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
        ),
        Transport::Icmp => (proto::ICMP, vec![ICMP_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1]),
        Transport::Ports(number, port) => {
            let len = wire::port_header_len(number).expect("a port protocol");
            let mut h = vec![0u8; len];
            h[0..2].copy_from_slice(&src_port.to_be_bytes());
            h[2..4].copy_from_slice(&port.to_be_bytes());
            (number, h)
        }
        Transport::Other(number) => (number, vec![0u8; 8]),
    }
}

fn arp_request() -> Vec<u8> {
    const HLEN: u8 = 6;
    const PLEN: u8 = 4;
    let mut a = Vec::new();
    a.extend_from_slice(&ARP_HTYPE_ETHERNET.to_be_bytes());
    a.extend_from_slice(&wire::ETH_P_IPV4.to_be_bytes());
    a.extend_from_slice(&[HLEN, PLEN]);
    a.extend_from_slice(&ARP_OP_REQUEST.to_be_bytes());
    a.extend_from_slice(&SRC_MAC);
    a.extend_from_slice(&[198, 18, 0, 1]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[198, 18, 0, 2]);
    a
}

/// RFC 1071 one's-complement sum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_layout() {
        let f = Frame::ipv4(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)).tcp(8000);
        let b = f.build();
        assert_eq!(&b[12..14], &wire::ETH_P_IPV4.to_be_bytes());
        assert_eq!(b[14], 0x45);
        assert_eq!(b[14 + 9], proto::TCP);
        assert_eq!(&b[14 + 12..14 + 16], &[198, 18, 0, 1]);
        assert_eq!(&b[34 + 2..34 + 4], &8000u16.to_be_bytes());
        assert_eq!(f.headers_len(), 14 + 20 + 20);
        // A correct checksum sums to zero over the header.
        assert_eq!(internet_checksum(&b[14..34]), 0);
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let b = Frame::ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
            .ext(Ext::HopByHop)
            .ext(Ext::Ah)
            .udp(9000)
            .vlan_8021ad(1)
            .vlan_8021q(2)
            .build();
        let l3 = 14 + 8;
        assert_eq!(b[l3 + 6], proto::HOPOPTS);
        assert_eq!(b[l3 + 40], proto::AH);
        assert_eq!(b[l3 + 48], proto::UDP);
        assert_eq!(b[l3 + 49], 4);
        assert_eq!(&b[l3 + 72 + 2..l3 + 72 + 4], &9000u16.to_be_bytes());
    }

    #[test]
    fn truncate_cuts() {
        let f = Frame::arp().truncate(20);
        assert_eq!(f.build().len(), 20);
    }
}
