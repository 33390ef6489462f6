//! Well-formed frames: every length field tells the truth. The other generators start from
//! these and then lie, cut or flip.

use super::super::{model::Socket, scenario};
use super::{
    fields,
    headers::{self, Ext, IPV4_DONT_FRAGMENT, IPV4_MORE_FRAGMENTS, Ipv4, MAX_FRAGMENT_OFFSET, Tag},
};
use crate::rng::Rng;
use serve_guard_common::wire::{self, proto};
use std::net::{IpAddr, SocketAddr};

/// Most bytes of IPv4 options (IHL 15).
const MAX_IPV4_OPTIONS: usize = 40;
/// Chains reach past the program's limit of 8 extension headers.
const MAX_CHAIN: usize = 10;
/// EtherTypes that are neither IP nor a VLAN tag: ARP, LLDP, MPLS, PPPoE, and a TPID the
/// program must not take for a tag (the old 802.1QinQ 0x9100).
const NON_IP_ETHERTYPES: [u16; 5] = [wire::ETH_P_ARP, 0x88cc, 0x8847, 0x8864, 0x9100];

/// A frame and where its headers start.
#[derive(Clone, Debug)]
pub struct Built {
    pub frame: Vec<u8>,
    /// Start of the network header.
    pub l3: usize,
    pub ip: Option<IpVersion>,
    /// Where each header after the link layer starts (the IP header, every extension header,
    /// the transport header, the payload): the cuts and lies aim at and around these.
    pub boundaries: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

impl Built {
    /// Writes the IP header's length field so that it declares `end` as the packet's end.
    pub fn declare_end(&mut self, end: usize) {
        let Some(ip) = self.ip else { return };
        let (field_at, len) = match ip {
            IpVersion::V4 => (self.l3 + 2, end.saturating_sub(self.l3)),
            IpVersion::V6 => (self.l3 + 4, end.saturating_sub(self.l3 + wire::IPV6_HLEN)),
        };
        if field_at + 2 <= self.frame.len() {
            self.frame[field_at..field_at + 2].copy_from_slice(&(len as u16).to_be_bytes());
        }
        if ip == IpVersion::V4 && self.l3 + wire::IPV4_MIN_HLEN <= self.frame.len() {
            refresh_ipv4_checksum(&mut self.frame[self.l3..]);
        }
    }
}

impl Built {
    /// Rewrites the IP header's first byte (version and, for IPv4, IHL).
    pub fn set_first_byte(&mut self, value: u8) {
        self.frame[self.l3] = value;
        if self.ip == Some(IpVersion::V4) {
            refresh_ipv4_checksum(&mut self.frame[self.l3..]);
        }
    }
}

/// The IPv4 header checksum recomputed over a header whose fields a generator changed: a
/// checksum error must not be why the kernel would drop a frame the filter passes.
fn refresh_ipv4_checksum(net: &mut [u8]) {
    let hlen = usize::from(net[0] & wire::IPV4_IHL_MASK) * wire::IPV4_IHL_WORD;
    if hlen < wire::IPV4_MIN_HLEN || hlen > net.len() {
        return;
    }
    net[10..12].fill(0);
    let sum = crate::frames::internet_checksum(&net[..hlen]);
    net[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Tags in front of the IP header: mostly none or a few, sometimes past the limit of 8.
pub fn tags(rng: &mut Rng, max: usize) -> Vec<Tag> {
    let n = if rng.one_in(3) {
        rng.range(0, max)
    } else {
        rng.small(2)
    };
    (0..n)
        .map(|_| {
            let tpid = if rng.coin() {
                wire::ETH_P_8021Q
            } else {
                wire::ETH_P_8021AD
            };
            Tag::random(rng, tpid)
        })
        .collect()
}

/// Any well-formed frame: IPv4, IPv4 fragment, IPv6 with a chain, or not IP.
pub fn any(rng: &mut Rng) -> Built {
    let tags = tags(rng, 3);
    match rng.below(8) {
        0..=2 => ipv4(rng, &tags, Fragmenting::No),
        3 => ipv4(rng, &tags, Fragmenting::Yes),
        4..=6 => ipv6(rng, &tags),
        _ => non_ip(rng, &tags),
    }
}

pub fn non_ip(rng: &mut Rng, tags: &[Tag]) -> Built {
    let ethertype = if rng.one_in(4) {
        rng.u16()
    } else {
        rng.pick(&NON_IP_ETHERTYPES)
    };
    let mut frame = headers::ethernet(tags, ethertype);
    let l3 = frame.len();
    let body_len = rng.small(60);
    frame.extend(rng.bytes(body_len));
    Built {
        frame,
        l3,
        ip: None,
        boundaries: vec![l3],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragmenting {
    No,
    Yes,
}

/// An IPv4 packet with 0-40 bytes of options; as a fragment, a first one (MF, offset 0), a
/// later one (offset > 0, MF or not) or an atomic one (DF, or neither flag).
pub fn ipv4(rng: &mut Rng, tags: &[Tag], fragmenting: Fragmenting) -> Built {
    let (protocol, min_len) = fields::protocol(rng);
    let options_len = if rng.coin() {
        0
    } else {
        rng.range(1, MAX_IPV4_OPTIONS / wire::IPV4_IHL_WORD) * wire::IPV4_IHL_WORD
    };
    let frag = match fragmenting {
        Fragmenting::No if rng.coin() => IPV4_DONT_FRAGMENT,
        Fragmenting::No => 0,
        Fragmenting::Yes => match rng.below(4) {
            0 => IPV4_MORE_FRAGMENTS,
            1 => IPV4_MORE_FRAGMENTS | fragment_offset(rng),
            2 => fragment_offset(rng),
            _ => rng.u16() & !IPV4_DONT_FRAGMENT,
        },
    };
    let header = Ipv4 {
        src: fields::source_v4(rng),
        dst: fields::destination_v4(rng),
        protocol,
        frag,
        options: headers::ipv4_options(rng, options_len),
    };
    let port = fields::port(rng);
    let l4 = headers::transport(rng, protocol, min_len, port);
    let total = (wire::IPV4_MIN_HLEN + options_len + l4.len()) as u16;
    let mut frame = headers::ethernet(tags, wire::ETH_P_IPV4);
    let l3 = frame.len();
    frame.extend(header.bytes(rng, total));
    let l4_at = frame.len();
    frame.extend(&l4);
    Built {
        frame,
        l3,
        ip: Some(IpVersion::V4),
        boundaries: vec![l3, l4_at, l4_at + min_len.unwrap_or(0)],
    }
}

/// A non-zero 13-bit offset, most often small.
fn fragment_offset(rng: &mut Rng) -> u16 {
    if rng.coin() {
        rng.range(1, 8) as u16
    } else {
        rng.range(1, usize::from(MAX_FRAGMENT_OFFSET)) as u16
    }
}

/// An IPv6 packet with a chain of 0-10 extension headers of any kind, order and length, then a
/// transport (or ESP, no next header, ...).
pub fn ipv6(rng: &mut Rng, tags: &[Tag]) -> Built {
    let chain = chain(rng);
    let (protocol, min_len) = fields::protocol(rng);
    let port = fields::port(rng);
    let mut payload = Vec::new();
    let mut starts = Vec::with_capacity(chain.len() + 2);
    for (i, ext) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(protocol, |e| e.kind());
        starts.push(payload.len());
        payload.extend(ext.bytes(rng, next));
    }
    starts.push(payload.len());
    payload.extend(headers::transport(rng, protocol, min_len, port));
    let first = chain.first().map_or(protocol, |e| e.kind());
    let mut frame = headers::ethernet(tags, wire::ETH_P_IPV6);
    let l3 = frame.len();
    let (src, dst) = (fields::source_v6(rng), fields::destination_v6(rng));
    frame.extend(headers::ipv6(rng, src, dst, first, payload.len() as u16));
    let payload_at = frame.len();
    frame.extend(&payload);
    let mut boundaries = vec![l3];
    boundaries.extend(starts.iter().map(|s| payload_at + s));
    if let (Some(min), Some(l4)) = (min_len, boundaries.last().copied()) {
        boundaries.push(l4 + min);
    }
    Built {
        frame,
        l3,
        ip: Some(IpVersion::V6),
        boundaries,
    }
}

/// Extension headers: every kind, lengths mostly short, chains sometimes past the limit.
fn chain(rng: &mut Rng) -> Vec<Ext> {
    let n = if rng.one_in(4) {
        rng.range(6, MAX_CHAIN)
    } else {
        rng.small(4)
    };
    (0..n).map(|_| ext(rng)).collect()
}

fn ext(rng: &mut Rng) -> Ext {
    const WALKED: [u8; 3] = [proto::HOPOPTS, proto::ROUTING, proto::DSTOPTS];
    const UNWALKED: [u8; 5] = [
        proto::MOBILITY,
        proto::HIP,
        proto::SHIM6,
        proto::EXPERIMENTAL_1,
        proto::EXPERIMENTAL_2,
    ];
    let units = ext_units(rng);
    match rng.below(12) {
        0..=4 => Ext::Generic {
            kind: rng.pick(&WALKED),
            units,
        },
        5 | 6 => Ext::Ah { units },
        7..=9 => {
            let offset = match rng.below(3) {
                0 => fragment_offset(rng),
                _ => 0,
            };
            Ext::Fragment {
                offset,
                more: rng.coin(),
            }
        }
        _ => Ext::Generic {
            kind: rng.pick(&UNWALKED),
            units,
        },
    }
}

/// An extension header's length byte: mostly 0-3 units, sometimes tens, rarely the largest.
fn ext_units(rng: &mut Rng) -> u8 {
    match rng.below(16) {
        0 => rng.range(4, 40) as u8,
        1 if rng.one_in(8) => u8::MAX,
        _ => rng.small(3) as u8,
    }
}

/// Port protocols without a socket lookup: always judged unlooked-at on a guarded port.
const UNLOOKED_PROTOCOLS: [u8; 3] = [proto::DCCP, proto::SCTP, proto::UDPLITE];

/// A frame aimed at one of the fuzzer namespace's sockets ([`scenario::SOCKETS`]): from a
/// connected socket's peer with its exact 4-tuple, with one field of it off, or from anywhere
/// to the socket's address and port; mostly its own protocol, TCP with flag combinations the
/// guarded rule tells apart. Headers are well formed, with the occasional IPv4 option, IPv6
/// extension chain (fragments included) and VLAN tag.
pub fn aimed(rng: &mut Rng) -> Built {
    let socket: Socket = rng.pick(&scenario::SOCKETS);
    let mut dst = socket.local;
    if dst.ip().is_unspecified() {
        let ip: IpAddr = match (dst.ip(), rng.coin()) {
            (IpAddr::V6(_), true) => scenario::HOST_V6.into(),
            (_, false) => scenario::PEER_V4.into(),
            _ => scenario::HOST_V4.into(),
        };
        dst.set_ip(ip);
    }
    let mut src = match socket.remote {
        Some(peer) if rng.chance(2, 3) => peer,
        _ => {
            let ip: IpAddr = match dst.ip() {
                IpAddr::V4(_) => std::net::Ipv4Addr::from(fields::source_v4(rng)).into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::from(fields::source_v6(rng)).into(),
            };
            SocketAddr::new(ip, rng.u16())
        }
    };
    match rng.below(8) {
        0 => src.set_port(src.port().wrapping_add(1)),
        1 => src.set_port(src.port().wrapping_sub(1)),
        2 => dst.set_port(dst.port() ^ 1),
        3 => src.set_ip(dst.ip()),
        _ => {}
    }
    let tcp = matches!(
        socket.kind,
        super::super::model::SocketKind::TcpListener
            | super::super::model::SocketKind::TcpConnection
    );
    let protocol = match rng.below(10) {
        0..=6 if tcp => proto::TCP,
        0..=6 => proto::UDP,
        7 if tcp => proto::UDP,
        7 => proto::TCP,
        _ => rng.pick(&UNLOOKED_PROTOCOLS),
    };
    let min_len = wire::port_header_len(protocol).expect("a port protocol");
    let mut l4 = headers::transport(rng, protocol, Some(min_len), dst.port());
    l4[wire::L4_SRC_PORT_OFFSET..wire::L4_SRC_PORT_OFFSET + 2]
        .copy_from_slice(&src.port().to_be_bytes());
    if protocol == proto::TCP {
        l4[wire::TCP_FLAGS_OFFSET] = fields::tcp_flags(rng);
    }
    let tags = tags(rng, 2);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let options_len = if rng.one_in(4) {
                rng.range(1, MAX_IPV4_OPTIONS / wire::IPV4_IHL_WORD) * wire::IPV4_IHL_WORD
            } else {
                0
            };
            let frag = match rng.below(8) {
                0 => IPV4_MORE_FRAGMENTS,
                1 => fragment_offset(rng),
                2..=4 => IPV4_DONT_FRAGMENT,
                _ => 0,
            };
            let header = Ipv4 {
                src: s.octets(),
                dst: d.octets(),
                protocol,
                frag,
                options: headers::ipv4_options(rng, options_len),
            };
            let total = (wire::IPV4_MIN_HLEN + options_len + l4.len()) as u16;
            let mut frame = headers::ethernet(&tags, wire::ETH_P_IPV4);
            let l3 = frame.len();
            frame.extend(header.bytes(rng, total));
            let l4_at = frame.len();
            frame.extend(&l4);
            Built {
                frame,
                l3,
                ip: Some(IpVersion::V4),
                boundaries: vec![l3, l4_at, l4_at + min_len],
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let chain = if rng.one_in(4) {
                chain(rng)
            } else {
                Vec::new()
            };
            let mut payload = Vec::new();
            for (i, ext) in chain.iter().enumerate() {
                let next = chain.get(i + 1).map_or(protocol, |e| e.kind());
                payload.extend(ext.bytes(rng, next));
            }
            let l4_in_payload = payload.len();
            payload.extend(&l4);
            let first = chain.first().map_or(protocol, |e| e.kind());
            let mut frame = headers::ethernet(&tags, wire::ETH_P_IPV6);
            let l3 = frame.len();
            frame.extend(headers::ipv6(
                rng,
                s.octets(),
                d.octets(),
                first,
                payload.len() as u16,
            ));
            let l4_at = frame.len() + l4_in_payload;
            frame.extend(&payload);
            Built {
                frame,
                l3,
                ip: Some(IpVersion::V6),
                boundaries: vec![l3, l4_at, l4_at + min_len],
            }
        }
        _ => unreachable!("source and destination of one family"),
    }
}
