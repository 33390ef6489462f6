//! Transport headers: TCP (flags, sequence numbers, options), UDP, the smallest header of the
//! other port protocols (DCCP, SCTP, UDP-Lite), ICMP echo; with the checksum left zero (the XDP
//! program never reads it) or computed over the pseudo-header as the receiving kernel checks it.

use super::checksum;
use serve_guard_common::wire::{self, proto};
use std::net::IpAddr;

/// The TCP flag bits (byte 13 of the header).
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

pub const TCP_WINDOW: u16 = 64_240;
/// TCP's data offset: the high nibble of this byte, in 32-bit words.
pub const TCP_DATA_OFFSET: usize = 12;
const TCP_DATA_OFFSET_SHIFT: u8 = 4;
const TCP_WORD: usize = 4;
const TCP_CHECKSUM_OFFSET: usize = 16;
/// UDP's length field (UDP-Lite's checksum coverage).
pub const UDP_LENGTH_OFFSET: usize = 4;
const UDP_CHECKSUM_OFFSET: usize = 6;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// The data-offset byte of a TCP header `header_len` bytes long.
pub fn tcp_data_offset(header_len: usize) -> u8 {
    ((header_len / TCP_WORD) as u8) << TCP_DATA_OFFSET_SHIFT
}

/// A TCP header with these ports, sequence and acknowledgment numbers and `flags`, `options`
/// (padded to whole words with End-of-Options), then `payload`; the checksum zero.
pub fn tcp(
    (src_port, dst_port): (u16, u16),
    (seq, ack): (u32, u32),
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let header_len = wire::TCP_MIN_HLEN + options.len().div_ceil(TCP_WORD) * TCP_WORD;
    let mut s = vec![0u8; header_len];
    s[0..2].copy_from_slice(&src_port.to_be_bytes());
    s[2..4].copy_from_slice(&dst_port.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[TCP_DATA_OFFSET] = tcp_data_offset(header_len);
    s[wire::TCP_FLAGS_OFFSET] = flags;
    s[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
    s[wire::TCP_MIN_HLEN..wire::TCP_MIN_HLEN + options.len()].copy_from_slice(options);
    s.extend_from_slice(payload);
    s
}

/// A UDP header whose length covers `payload`, then `payload`; the checksum zero ("none").
pub fn udp((src_port, dst_port): (u16, u16), payload: &[u8]) -> Vec<u8> {
    let len = wire::UDP_HLEN + payload.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&src_port.to_be_bytes());
    s.extend_from_slice(&dst_port.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

/// The smallest header of port protocol `protocol` (DCCP, SCTP, UDP-Lite, ...), zero but for
/// the ports.
pub fn ports_header(protocol: u8, (src_port, dst_port): (u16, u16)) -> Vec<u8> {
    let len = wire::port_header_len(protocol).expect("a port protocol");
    let mut h = vec![0u8; len];
    h[wire::L4_SRC_PORT_OFFSET..wire::L4_SRC_PORT_OFFSET + 2]
        .copy_from_slice(&src_port.to_be_bytes());
    h[wire::L4_DST_PORT_OFFSET..wire::L4_DST_PORT_OFFSET + 2]
        .copy_from_slice(&dst_port.to_be_bytes());
    h
}

/// An ICMP echo request's header (ICMPv6 for `v6`): its protocol number and bytes.
pub fn icmp_echo(v6: bool) -> (u8, Vec<u8>) {
    let (protocol, kind) = if v6 {
        (proto::ICMPV6, ICMPV6_ECHO_REQUEST)
    } else {
        (proto::ICMP, ICMP_ECHO_REQUEST)
    };
    (protocol, vec![kind, 0, 0, 0, 0, 1, 0, 1])
}

/// Writes the checksum of a whole TCP or UDP `segment` from `src` to `dst`. A computed zero is
/// sent as all ones for UDP (RFC 768): zero there means "no checksum".
pub fn fill_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &mut [u8]) {
    let at = match protocol {
        proto::TCP => TCP_CHECKSUM_OFFSET,
        proto::UDP => UDP_CHECKSUM_OFFSET,
        other => panic!("no checksum field known for protocol {other}"),
    };
    segment[at..at + 2].fill(0);
    let sum = match checksum::transport(src, dst, protocol, segment) {
        0 if protocol == proto::UDP => 0xffff,
        sum => sum,
    };
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// A UDP datagram from `src` to `dst` with a correct checksum, or none (`zero_checksum`, legal
/// on IPv4 only).
pub fn udp_datagram(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    payload: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let mut s = udp(ports, payload);
    if !zero_checksum {
        fill_checksum(src, dst, proto::UDP, &mut s);
    }
    s
}

/// A TCP segment from `src` to `dst` (as [`tcp`]) with a correct checksum.
pub fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    numbers: (u32, u32),
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut s = tcp(ports, numbers, flags, options, payload);
    fill_checksum(src, dst, proto::TCP, &mut s);
    s
}
