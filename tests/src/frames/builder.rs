//! [`Frame`]: the readable builder of the verdict tables, the benchmark and the directed fuzz
//! cases. It says what a frame is (addresses, tags, options, chain, transport, a cut) and
//! assembles it from the layer writers; for bytes it cannot say, edit its [`Built`].

use super::built::{Built, Layout};
use super::ethernet::{self, TEST_MACS, Tag};
use super::{ipv4, ipv6, l4};
use serve_guard_common::wire::{self, proto};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Source port of every TCP/UDP packet built here (unless set).
pub const SRC_PORT: u16 = 40_000;
/// Bytes of payload after the transport header, so a frame is more than its headers.
const PAYLOAD: &[u8] = b"serve-guard";
/// Identification of IPv4 packets and IPv6 fragment headers.
const IP_ID: u16 = 0x5347;
/// AH with a 96-bit ICV (HMAC-SHA1-96): 12 bytes of fixed fields + 12 of ICV, length byte 4.
const AH_UNITS: u8 = 4;
/// Bytes of a transport that is neither a port protocol nor ICMP.
const OTHER_TRANSPORT_LEN: usize = 8;

/// An IPv6 extension header, by what it is.
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
    /// Its bytes.
    pub fn header(self) -> ipv6::Ext {
        match self {
            Ext::HopByHop => ipv6::Ext::padded(proto::HOPOPTS, 0),
            Ext::Routing => ipv6::Ext::padded(proto::ROUTING, 0),
            Ext::DestOpts { extra_units } => ipv6::Ext::padded(proto::DSTOPTS, extra_units),
            Ext::Other(kind) => ipv6::Ext::padded(kind, 0),
            Ext::Fragment { offset, more } => ipv6::Ext::fragment(offset, more, u32::from(IP_ID)),
            Ext::Ah => ipv6::Ext::ah(AH_UNITS),
        }
    }
}

#[derive(Clone, Debug)]
enum Network {
    Arp,
    /// Any other EtherType (LLDP, ...) with a few bytes of payload.
    Raw(u16),
    V4(ipv4::Header),
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
///
/// Checksums: the IPv4 header checksum is correct; TCP/UDP checksums are left zero (the
/// program under test never reads them; [`l4::fill_checksum`] writes them where a kernel will).
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
            tcp_flags: l4::tcp::SYN,
            truncate: None,
        }
    }

    /// An IPv4 packet (ICMP echo until a transport is chosen).
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::new(Network::V4(ipv4::Header {
            id: IP_ID,
            ..ipv4::Header::new(src, dst, proto::ICMP)
        }))
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
        self.tags.push(Tag::vlan(tpid, vid));
        self
    }

    pub fn vlan_8021q(self, vid: u16) -> Self {
        self.vlan(wire::ETH_P_8021Q, vid)
    }

    pub fn vlan_8021ad(self, vid: u16) -> Self {
        self.vlan(wire::ETH_P_8021AD, vid)
    }

    fn v4_header(&mut self, what: &str) -> &mut ipv4::Header {
        match &mut self.network {
            Network::V4(header) => header,
            _ => panic!("{what} on a non-IPv4 frame"),
        }
    }

    /// IPv4 options (padded with End-of-Options to a multiple of 4 bytes).
    pub fn ipv4_options(mut self, bytes: &[u8]) -> Self {
        let options = &mut self.v4_header("ipv4_options").options;
        options.extend_from_slice(bytes);
        ipv4::pad_options(options);
        self
    }

    /// Writes this IHL instead of the one the options imply (malformed headers).
    pub fn ihl(mut self, value: u8) -> Self {
        self.v4_header("ihl").ihl = Some(value);
        self
    }

    /// Makes the IPv4 packet a fragment at `offset` 8-octet units.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.v4_header("ipv4_fragment").frag = offset | if more { ipv4::MORE_FRAGMENTS } else { 0 };
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
        self.built().layout
    }

    pub fn build(&self) -> Vec<u8> {
        let mut bytes = self.built().frame;
        if let Some(len) = self.truncate {
            bytes.truncate(len);
        }
        bytes
    }

    /// The whole frame (uncut) with its layout, for edits no method says: a length that lies,
    /// a trailer behind the declared end.
    pub fn built(&self) -> Built {
        let v6 = matches!(self.network, Network::V6 { .. });
        let (protocol, segment, l4_header_len) = self.segment(v6);
        match &self.network {
            Network::Arp => {
                let body = ethernet::arp_request(&TEST_MACS);
                Built::other(&TEST_MACS, &self.tags, wire::ETH_P_ARP, &body, body.len())
            }
            Network::Raw(ethertype) => Built::other(&TEST_MACS, &self.tags, *ethertype, PAYLOAD, 0),
            Network::V4(header) => {
                let header = ipv4::Header {
                    protocol,
                    ..header.clone()
                };
                Built::ipv4(&TEST_MACS, &self.tags, &header, &segment, l4_header_len)
            }
            Network::V6 { src, dst, exts } => {
                let chain: Vec<ipv6::Ext> = exts.iter().map(|e| e.header()).collect();
                Built::ipv6(
                    &TEST_MACS,
                    &self.tags,
                    &ipv6::Header::new(*src, *dst),
                    &chain,
                    protocol,
                    &segment,
                    l4_header_len,
                )
            }
        }
    }

    /// The transport's protocol number, its header and [`PAYLOAD`], and the header's length.
    fn segment(&self, v6: bool) -> (u8, Vec<u8>, usize) {
        let ports = |dst| (self.src_port, dst);
        let with_payload = |(protocol, mut header): (u8, Vec<u8>)| {
            header.extend_from_slice(PAYLOAD);
            (protocol, header)
        };
        let (protocol, segment) = match self.transport {
            Transport::Tcp(port) => (
                proto::TCP,
                l4::tcp(ports(port), (0, 0), self.tcp_flags, &[], PAYLOAD),
            ),
            Transport::Udp(port) => (proto::UDP, l4::udp(ports(port), PAYLOAD)),
            Transport::Icmp => with_payload(l4::icmp_echo(v6)),
            Transport::Ports(number, port) => {
                with_payload((number, l4::ports_header(number, ports(port))))
            }
            Transport::Other(number) => with_payload((number, vec![0u8; OTHER_TRANSPORT_LEN])),
        };
        let header_len = segment.len() - PAYLOAD.len();
        (protocol, segment, header_len)
    }
}
