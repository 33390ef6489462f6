//! Well-formed frames: every length field tells the truth. The other generators start from
//! these and then lie, cut or flip.

use super::super::{model::Socket, scenario};
use super::fields;
use crate::frames::Built;
use crate::frames::ethernet::{TEST_MACS, Tag, VID_MASK};
use crate::frames::ipv4::{self, DONT_FRAGMENT, MAX_FRAGMENT_OFFSET, MORE_FRAGMENTS};
use crate::frames::ipv6::{self, Ext};
use crate::frames::l4;
use crate::rng::Rng;
use serve_guard_common::wire::{self, proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most bytes of IPv4 options (IHL 15).
const MAX_IPV4_OPTIONS: usize = ipv4::MAX_OPTIONS;
/// Chains reach past the program's limit of 8 extension headers.
const MAX_CHAIN: usize = 10;
/// EtherTypes that are neither IP nor a VLAN tag: ARP, LLDP, MPLS, PPPoE, and a TPID the
/// program must not take for a tag (the old 802.1QinQ 0x9100).
const NON_IP_ETHERTYPES: [u16; 5] = [wire::ETH_P_ARP, 0x88cc, 0x8847, 0x8864, 0x9100];

/// A tag with `tpid`, a VID of zero (priority tag) or not, random priority and DEI bits.
fn random_tag(rng: &mut Rng, tpid: u16) -> Tag {
    let vid = if rng.coin() {
        0
    } else {
        rng.range(1, usize::from(VID_MASK)) as u16
    };
    Tag {
        tpid,
        tci: (rng.u16() & !VID_MASK) | vid,
    }
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
            random_tag(rng, tpid)
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
    let body_len = rng.small(60);
    Built::other(&TEST_MACS, tags, ethertype, &rng.bytes(body_len), 0)
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
        Fragmenting::No if rng.coin() => DONT_FRAGMENT,
        Fragmenting::No => 0,
        Fragmenting::Yes => match rng.below(4) {
            0 => MORE_FRAGMENTS,
            1 => MORE_FRAGMENTS | fragment_offset(rng),
            2 => fragment_offset(rng),
            _ => rng.u16() & !DONT_FRAGMENT,
        },
    };
    let header = ipv4::Header {
        tos: rng.u8(), // DSCP/ECN: the filter must not care
        id: rng.u16(),
        frag,
        options: fields::ipv4_options(rng, options_len),
        ..ipv4::Header::new(
            fields::source_v4(rng).into(),
            fields::destination_v4(rng).into(),
            protocol,
        )
    };
    let port = fields::port(rng);
    let l4 = transport(rng, protocol, min_len, port);
    Built::ipv4(&TEST_MACS, tags, &header, &l4, min_len.unwrap_or(0))
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
    let l4 = transport(rng, protocol, min_len, port);
    let (src, dst) = (fields::source_v6(rng), fields::destination_v6(rng));
    let header = v6_header(rng, src.into(), dst.into());
    Built::ipv6(
        &TEST_MACS,
        tags,
        &header,
        &chain,
        protocol,
        &l4,
        min_len.unwrap_or(0),
    )
}

/// The fixed header with a random traffic class and flow label: the filter must not care.
fn v6_header(rng: &mut Rng, src: Ipv6Addr, dst: Ipv6Addr) -> ipv6::Header {
    ipv6::Header {
        flow: rng.u32(),
        ..ipv6::Header::new(src, dst)
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
        0..=4 => {
            let kind = rng.pick(&WALKED);
            options_like(rng, kind, units)
        }
        5 | 6 => {
            // SPI, sequence number and ICV: the filter must not care.
            let mut ah = Ext::ah(units);
            ah.bytes[2..].iter_mut().for_each(|b| *b = rng.u8());
            ah
        }
        7..=9 => {
            let offset = match rng.below(3) {
                0 => fragment_offset(rng),
                _ => 0,
            };
            let mut fragment = Ext::fragment(offset, rng.coin(), rng.u32());
            // The reserved byte and the two reserved bits above M: the filter must not care.
            const RESERVED_BITS: u8 = 0b110;
            fragment.bytes[1] = rng.u8();
            fragment.bytes[3] |= rng.u8() & RESERVED_BITS;
            fragment
        }
        _ => {
            let kind = rng.pick(&UNWALKED);
            options_like(rng, kind, units)
        }
    }
}

/// A header of `kind` in the options layout: its option area one PadN, or (one in four) random
/// bytes, which only a parser that reads options would stumble on.
fn options_like(rng: &mut Rng, kind: u8, units: u8) -> Ext {
    let mut ext = Ext::padded(kind, units);
    if rng.one_in(4) {
        ext.bytes[2..].iter_mut().for_each(|b| *b = rng.u8());
    }
    ext
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
                IpAddr::V4(_) => Ipv4Addr::from(fields::source_v4(rng)).into(),
                IpAddr::V6(_) => Ipv6Addr::from(fields::source_v6(rng)).into(),
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
    let mut l4 = transport(rng, protocol, Some(min_len), dst.port());
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
                0 => MORE_FRAGMENTS,
                1 => fragment_offset(rng),
                2..=4 => DONT_FRAGMENT,
                _ => 0,
            };
            let header = ipv4::Header {
                tos: rng.u8(),
                id: rng.u16(),
                frag,
                options: fields::ipv4_options(rng, options_len),
                ..ipv4::Header::new(s, d, protocol)
            };
            Built::ipv4(&TEST_MACS, &tags, &header, &l4, min_len)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let chain = if rng.one_in(4) {
                chain(rng)
            } else {
                Vec::new()
            };
            let header = v6_header(rng, s, d);
            Built::ipv6(&TEST_MACS, &tags, &header, &chain, protocol, &l4, min_len)
        }
        _ => unreachable!("source and destination of one family"),
    }
}

/// A transport header and payload for `protocol` to `port`: a port protocol's header is at
/// least its minimum length and carries the port in bytes 2-3; any other protocol gets bytes
/// that would look like a port to a parser that wrongly reads them. The rest is random: the
/// filter must not care.
fn transport(rng: &mut Rng, protocol: u8, min_len: Option<usize>, port: u16) -> Vec<u8> {
    let header_len = match (protocol, min_len) {
        (proto::TCP, Some(min)) => {
            let extra_words = if rng.one_in(4) { rng.range(1, 10) } else { 0 };
            min + extra_words * wire::IPV4_IHL_WORD
        }
        (_, Some(min)) => min,
        (_, None) => rng.small(24).max(4),
    };
    let payload_len = rng.small(48);
    let mut t = rng.bytes(header_len + payload_len);
    t[wire::L4_DST_PORT_OFFSET..wire::L4_DST_PORT_OFFSET + 2].copy_from_slice(&port.to_be_bytes());
    match protocol {
        proto::TCP => {
            t[l4::TCP_DATA_OFFSET] = l4::tcp_data_offset(header_len);
            if rng.one_in(3) {
                t[wire::TCP_FLAGS_OFFSET] = fields::tcp_flags(rng);
            }
        }
        proto::UDP => {
            let len = t.len() as u16;
            t[l4::UDP_LENGTH_OFFSET..l4::UDP_LENGTH_OFFSET + 2].copy_from_slice(&len.to_be_bytes());
        }
        _ => {}
    }
    t
}
