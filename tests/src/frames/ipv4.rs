//! IPv4: the header with every field settable (a lying IHL included), options, fragments, and
//! the length and checksum fix-ups the lying generators need after a header is written.

use super::checksum::internet_checksum;
use serve_guard_common::wire;
use std::net::Ipv4Addr;

pub const TTL: u8 = 64;
/// Flags in the fragment field (the 3 bits above the 13-bit offset).
pub const DONT_FRAGMENT: u16 = 0x4000;
pub const MORE_FRAGMENTS: u16 = 0x2000;
/// Largest offset the 13-bit fragment-offset field holds (IPv6's holds the same).
pub const MAX_FRAGMENT_OFFSET: u16 = 0x1fff;
/// Fragment offsets count 8-octet units (IPv4 and IPv6).
pub const FRAG_UNIT: usize = 8;
/// The largest options area (IHL 15).
pub const MAX_OPTIONS: usize = 40;
const CHECKSUM_OFFSET: usize = 10;

/// Option types (RFC 791, 2113) and the first value of the record-route and timestamp
/// pointers.
pub mod opt {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const RECORD_ROUTE: u8 = 7;
    pub const TIMESTAMP: u8 = 68;
    pub const ROUTER_ALERT: u8 = 148;
    pub const RR_FIRST_POINTER: u8 = 4;
    pub const TS_FIRST_POINTER: u8 = 5;
    /// Router alert, "examine packet" (RFC 2113): a whole 4-byte option.
    pub const ROUTER_ALERT_OPTION: [u8; 4] = [ROUTER_ALERT, 4, 0, 0];
}

/// Every field of an IPv4 header. The total length is not a field: [`Header::packet`] writes
/// the true one, [`Header::bytes`] whatever it is given.
#[derive(Clone, Debug)]
pub struct Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// DSCP and ECN.
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset as on the wire ([`frag_field`]).
    pub frag: u16,
    pub ttl: u8,
    pub protocol: u8,
    /// A multiple of 4 bytes ([`pad_options`]), at most [`MAX_OPTIONS`].
    pub options: Vec<u8>,
    /// Written instead of the IHL the options imply: a header that lies about its length.
    pub ihl: Option<u8>,
}

impl Header {
    /// `protocol` from `src` to `dst`: no options, not a fragment, identification 0.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Self {
            src,
            dst,
            tos: 0,
            id: 0,
            frag: 0,
            ttl: TTL,
            protocol,
            options: Vec::new(),
            ihl: None,
        }
    }

    /// The header's real length (whatever [`Header::ihl`] says).
    pub fn header_len(&self) -> usize {
        wire::IPV4_MIN_HLEN + self.options.len()
    }

    /// The header declaring a total length of `total_len`, its checksum correct.
    pub fn bytes(&self, total_len: u16) -> Vec<u8> {
        let ihl = self
            .ihl
            .unwrap_or_else(|| (self.header_len() / wire::IPV4_IHL_WORD) as u8);
        let mut h = Vec::with_capacity(self.header_len());
        h.push((wire::IPV4_VERSION << wire::IP_VERSION_SHIFT) | ihl);
        h.push(self.tos);
        h.extend_from_slice(&total_len.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.protocol);
        h.extend_from_slice(&[0, 0]); // the checksum, over the header written so far
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let sum = internet_checksum(&h);
        h[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// The header and `payload`, the total length exact.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = self.bytes((self.header_len() + payload.len()) as u16);
        p.extend_from_slice(payload);
        p
    }
}

/// The flags-and-offset field of a fragment at `offset` bytes (a multiple of 8).
pub fn frag_field(offset: usize, more: bool, dont_fragment: bool) -> u16 {
    debug_assert!(offset.is_multiple_of(FRAG_UNIT));
    (offset / FRAG_UNIT) as u16
        | if more { MORE_FRAGMENTS } else { 0 }
        | if dont_fragment { DONT_FRAGMENT } else { 0 }
}

/// The fields the fragments of one datagram share: what a sender keeps while it cuts.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub protocol: u8,
    pub tos: u8,
    pub dont_fragment: bool,
}

/// One packet of `datagram`: `options` (a multiple of 4 bytes), fragment `offset` in bytes (a
/// multiple of 8), the more-fragments flag and `payload`; total length and checksum exact.
pub fn fragment(
    datagram: &Datagram,
    options: &[u8],
    offset: usize,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    debug_assert!(options.len().is_multiple_of(wire::IPV4_IHL_WORD));
    Header {
        tos: datagram.tos,
        id: datagram.id,
        frag: frag_field(offset, more, datagram.dont_fragment),
        options: options.to_vec(),
        ..Header::new(datagram.src, datagram.dst, datagram.protocol)
    }
    .packet(payload)
}

/// Pads `options` with End-of-Options to a multiple of 4 bytes.
pub fn pad_options(options: &mut Vec<u8>) {
    options.resize(
        options.len().div_ceil(wire::IPV4_IHL_WORD) * wire::IPV4_IHL_WORD,
        opt::END,
    );
}

/// Recomputes the checksum of the header at the start of `net` after a field was changed: a
/// checksum error must not be why the kernel would drop a frame the test means to lie with.
/// A header whose IHL is impossible or runs past `net` is left alone.
pub fn refresh_checksum(net: &mut [u8]) {
    let hlen = usize::from(net[0] & wire::IPV4_IHL_MASK) * wire::IPV4_IHL_WORD;
    if hlen < wire::IPV4_MIN_HLEN || hlen > net.len() {
        return;
    }
    net[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].fill(0);
    let sum = internet_checksum(&net[..hlen]);
    net[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&sum.to_be_bytes());
}
