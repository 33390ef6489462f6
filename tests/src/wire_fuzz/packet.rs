//! Byte-level builders for the fuzzer's frames: Ethernet with VLAN tags, IPv4 with options and
//! fragments, IPv6 with extension chains and fragments, TCP SYNs and UDP datagrams whose
//! checksums are computed over the whole transport segment, as the kernel sees it after
//! reassembly. Unlike [`crate::frames`], every length and checksum here is what a receiving
//! kernel checks, so a frame is dropped only for the reason the generator chose.

pub use crate::frames::internet_checksum;
use serve_guard_common::wire::{self, proto};
use std::net::IpAddr;

/// The server veth's MAC in both lanes (frames are byte-identical in both).
pub const SERVER_MAC: [u8; 6] = [0x02, 0x5f, 0, 0, 0, 0x01];
/// The client veth's MAC in both lanes: where the servers send their answers.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x5f, 0, 0, 0, 0x02];

pub const TTL: u8 = 64;
pub use crate::frames::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};
const TCP_WINDOW: u16 = 64_240;
/// TCP data offset: the high nibble of byte 12, in 32-bit words.
const TCP_DOFF_SHIFT: u8 = 4;
const TCP_WORD: usize = 4;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_FRAG_MORE: u16 = 1;
/// Fragment offsets count 8-octet units (IPv4 and IPv6).
pub const FRAG_UNIT: usize = 8;
/// Offset of the checksum in the TCP and UDP headers.
const TCP_CHECKSUM_OFFSET: usize = 16;
const UDP_CHECKSUM_OFFSET: usize = 6;
const IPV4_CHECKSUM_OFFSET: usize = 10;

/// The transport segment's checksum with the pseudo-header of `src`/`dst` (RFC 768, 793, 8200).
fn transport_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + segment.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            data.extend_from_slice(&s.octets());
            data.extend_from_slice(&d.octets());
            data.extend_from_slice(&[0, protocol]);
            data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            data.extend_from_slice(&s.octets());
            data.extend_from_slice(&d.octets());
            data.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            data.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed address families {src} -> {dst}"),
    }
    data.extend_from_slice(segment);
    internet_checksum(&data)
}

/// A UDP datagram with a correct checksum (`zero_checksum`: none, legal on IPv4 only).
pub fn udp(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    payload: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let len = wire::UDP_HLEN + payload.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&ports.0.to_be_bytes());
    s.extend_from_slice(&ports.1.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    if !zero_checksum {
        // A computed zero is sent as all ones (RFC 768): zero means "no checksum".
        let sum = match transport_checksum(src, dst, proto::UDP, &s) {
            0 => 0xffff,
            sum => sum,
        };
        s[UDP_CHECKSUM_OFFSET..UDP_CHECKSUM_OFFSET + 2].copy_from_slice(&sum.to_be_bytes());
    }
    s
}

/// A TCP SYN with sequence number `seq`, `options` (padded to whole words with
/// End-of-Options) and `payload` (data on a SYN is legal; the listener ignores it).
pub fn tcp_syn(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    seq: u32,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    tcp_segment(src, dst, ports, (seq, 0), TCP_SYN, options, payload)
}

/// A TCP segment with these sequence and acknowledgment numbers and `flags`, `options`
/// (padded to whole words with End-of-Options) and `payload`, its checksum correct.
pub fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    (seq, ack): (u32, u32),
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let header_len = wire::TCP_MIN_HLEN + options.len().div_ceil(TCP_WORD) * TCP_WORD;
    let mut s = vec![0u8; header_len];
    s[0..2].copy_from_slice(&ports.0.to_be_bytes());
    s[2..4].copy_from_slice(&ports.1.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = ((header_len / TCP_WORD) as u8) << TCP_DOFF_SHIFT;
    s[wire::TCP_FLAGS_OFFSET] = flags;
    s[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
    s[wire::TCP_MIN_HLEN..wire::TCP_MIN_HLEN + options.len()].copy_from_slice(options);
    s.extend_from_slice(payload);
    let sum = transport_checksum(src, dst, proto::TCP, &s);
    s[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2].copy_from_slice(&sum.to_be_bytes());
    s
}

/// The fields of an IPv4 header that a datagram's fragments share.
#[derive(Clone, Debug)]
pub struct V4Header {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub id: u16,
    pub protocol: u8,
    pub tos: u8,
    pub dont_fragment: bool,
}

/// One IPv4 packet: `options` (a multiple of 4 bytes), fragment `offset` in bytes (a multiple
/// of 8), the more-fragments flag and `payload`. Total length and header checksum are exact.
pub fn ipv4(h: &V4Header, options: &[u8], offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    debug_assert!(
        options.len().is_multiple_of(wire::IPV4_IHL_WORD) && offset.is_multiple_of(FRAG_UNIT)
    );
    let header_len = wire::IPV4_MIN_HLEN + options.len();
    let mut p = Vec::with_capacity(header_len + payload.len());
    p.push(
        (wire::IPV4_VERSION << wire::IP_VERSION_SHIFT) | (header_len / wire::IPV4_IHL_WORD) as u8,
    );
    p.push(h.tos);
    p.extend_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&h.id.to_be_bytes());
    let flags = if more { IPV4_MORE_FRAGMENTS } else { 0 }
        | if h.dont_fragment {
            IPV4_DONT_FRAGMENT
        } else {
            0
        };
    p.extend_from_slice(&(flags | (offset / FRAG_UNIT) as u16).to_be_bytes());
    p.push(TTL);
    p.push(h.protocol);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&h.src.octets());
    p.extend_from_slice(&h.dst.octets());
    p.extend_from_slice(options);
    let sum = internet_checksum(&p);
    p[IPV4_CHECKSUM_OFFSET..IPV4_CHECKSUM_OFFSET + 2].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 extension header: its type and its bytes, whose first byte (the next header) is
/// filled in when the chain is linked.
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

/// Links `exts` in order in front of `last` (the upper layer, or what follows the chain):
/// the first next-header value and the chain's bytes.
pub fn link_chain(exts: &[Ext], last: u8) -> (u8, Vec<u8>) {
    let mut bytes = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let mut b = ext.bytes.clone();
        b[0] = exts.get(i + 1).map_or(last, |e| e.kind);
        bytes.extend_from_slice(&b);
    }
    (exts.first().map_or(last, |e| e.kind), bytes)
}

/// A fragment header: `next`, `offset` in bytes (a multiple of 8), more-fragments and `id`.
pub fn fragment_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    let field = ((offset / FRAG_UNIT) as u16) << wire::IPV6_FRAG_OFF_SHIFT
        | if more { IPV6_FRAG_MORE } else { 0 };
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// An IPv6 packet whose payload length is exactly `payload`'s.
pub fn ipv6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(wire::IPV6_HLEN + payload.len());
    p.extend_from_slice(&[wire::IPV6_VERSION << wire::IP_VERSION_SHIFT, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(next);
    p.push(TTL);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// Routing type of the segment routing header (SRv6, RFC 8754).
pub const SRH_ROUTING_TYPE: u8 = 4;

/// `inner` (a whole IP packet, `inner_next` = IPIP or IPV6) in IPv6 from `src` to `dst` behind a
/// segment routing header that lists `dst` as its only segment, none left: what a node with
/// seg6_enabled decapsulates by itself (ipv6_srh_rcv) and re-injects with netif_rx.
pub fn srv6_encap(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    inner_next: u8,
    inner: &[u8],
) -> Vec<u8> {
    let segment = dst.octets();
    // Next header, length in 8-octet units after the first, type, segments left 0, last
    // entry 0, flags, tag; then the segment list.
    let units = (segment.len() / wire::IPV6_EXT_UNIT) as u8;
    let mut payload = vec![inner_next, units, SRH_ROUTING_TYPE, 0, 0, 0, 0, 0];
    payload.extend_from_slice(&segment);
    payload.extend_from_slice(inner);
    ipv6(src, dst, proto::ROUTING, &payload)
}

/// One VLAN tag as it appears on the wire: TPID and TCI (priority, DEI, VLAN id).
#[derive(Clone, Copy, Debug)]
pub struct Tag {
    pub tpid: u16,
    pub tci: u16,
}

/// An Ethernet frame from the client to the server carrying `packet` behind `tags`.
pub fn ethernet(tags: &[Tag], ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(wire::ETH_HLEN + tags.len() * wire::VLAN_HLEN + packet.len());
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    for tag in tags {
        f.extend_from_slice(&tag.tpid.to_be_bytes());
        f.extend_from_slice(&tag.tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn checksums_verify_to_zero() {
        let (s, d) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
        let seg = udp(s.into(), d.into(), (1, 2), b"odd", false);
        let mut pseudo = s.octets().to_vec();
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, proto::UDP, 0, seg.len() as u8]);
        pseudo.extend_from_slice(&seg);
        assert_eq!(internet_checksum(&pseudo), 0);
        let h = V4Header {
            src: s,
            dst: d,
            id: 1,
            protocol: proto::UDP,
            tos: 0,
            dont_fragment: false,
        };
        let p = ipv4(&h, &[1, 1, 1, 0], 8, true, &seg);
        assert_eq!(internet_checksum(&p[..24]), 0);
        assert_eq!(p[0], 0x46);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), 0x2001);
    }

    #[test]
    fn chains_link_and_tcp_options_pad() {
        let e = |kind| Ext {
            kind,
            bytes: vec![0xff; 8],
        };
        let (first, bytes) = link_chain(&[e(proto::HOPOPTS), e(proto::DSTOPTS)], proto::TCP);
        assert_eq!(
            (first, bytes[0], bytes[8]),
            (proto::HOPOPTS, proto::DSTOPTS, proto::TCP)
        );
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let seg = tcp_syn(a.into(), a.into(), (1, 2), 7, &[2, 4, 5, 0xb4, 1], b"");
        assert_eq!(seg.len(), 28);
        assert_eq!(seg[12] >> 4, 7);
    }
}
