//! IPv6: the fixed header, extension headers as bytes that any generator can shape (lengths,
//! option areas, reserved bits), chains linked through their next-header bytes, fragment
//! headers, and SRv6 encapsulation.

use serve_guard_common::wire::{self, proto};
use std::net::Ipv6Addr;

pub const HOP_LIMIT: u8 = 64;
/// The fragment header's M flag: the lowest bit of its offset field.
pub const MORE_FRAGMENTS: u16 = 1;
/// The 28 bits of the first word below the version: traffic class and flow label.
pub const FLOW_MASK: u32 = 0x0fff_ffff;
/// Routing type of the segment routing header (SRv6, RFC 8754).
pub const SRH_ROUTING_TYPE: u8 = 4;

/// Option types of hop-by-hop and destination-options headers.
pub mod opt {
    pub const PAD1: u8 = 0;
    pub const PADN: u8 = 1;
}

/// The fixed header's fields but the two that follow from the payload.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Traffic class and flow label (the low 28 bits of the first word).
    pub flow: u32,
    pub hop_limit: u8,
}

impl Header {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            flow: 0,
            hop_limit: HOP_LIMIT,
        }
    }

    /// The fixed header declaring `payload_len` bytes after it, `next` the first of them.
    pub fn bytes(&self, next: u8, payload_len: u16) -> Vec<u8> {
        let mut h = Vec::with_capacity(wire::IPV6_HLEN);
        let first = (u32::from(wire::IPV6_VERSION) << 28) | (self.flow & FLOW_MASK);
        h.extend_from_slice(&first.to_be_bytes());
        h.extend_from_slice(&payload_len.to_be_bytes());
        h.push(next);
        h.push(self.hop_limit);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h
    }
}

/// An IPv6 packet whose payload length is exactly `payload`'s.
pub fn packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Header::new(src, dst).bytes(next, payload.len() as u16);
    p.extend_from_slice(payload);
    p
}

/// An extension header: its type, and its bytes, whose first (the next header) is written when
/// the chain is linked ([`link_chain`]). The bytes are free: a generator may make the length
/// byte lie, fill the option area with anything, set reserved bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

impl Ext {
    /// A header of `kind` in the hop-by-hop layout (hop-by-hop, routing, destination options,
    /// and the unwalked kinds: mobility, HIP, shim6, experimental) of `(units + 1) * 8` bytes,
    /// its option area one PadN option (all zero past it, as RFC 4942 says receivers check).
    pub fn padded(kind: u8, units: u8) -> Self {
        let len = (usize::from(units) + 1) * wire::IPV6_EXT_UNIT;
        let mut bytes = vec![0u8; len];
        bytes[1] = units;
        bytes[2] = opt::PADN;
        bytes[3] = (len - 4) as u8;
        Self { kind, bytes }
    }

    /// A fragment header at `offset` 8-octet units with identification `id`.
    pub fn fragment(offset: u16, more: bool, id: u32) -> Self {
        let field = (offset << wire::IPV6_FRAG_OFF_SHIFT) | if more { MORE_FRAGMENTS } else { 0 };
        let mut bytes = vec![0, 0];
        bytes.extend_from_slice(&field.to_be_bytes());
        bytes.extend_from_slice(&id.to_be_bytes());
        Self {
            kind: proto::FRAGMENT,
            bytes,
        }
    }

    /// An authentication header whose length byte is `units`: `(units + 2) * 4` bytes, the SPI,
    /// sequence number and ICV zero.
    pub fn ah(units: u8) -> Self {
        let len = (usize::from(units) + wire::IPV6_AH_LEN_BIAS) * wire::IPV6_AH_UNIT;
        let mut bytes = vec![0u8; len];
        bytes[1] = units;
        Self {
            kind: proto::AH,
            bytes,
        }
    }

    /// The header's bytes with `next` as the first.
    fn linked(&self, next: u8) -> impl Iterator<Item = u8> + '_ {
        std::iter::once(next).chain(self.bytes[1..].iter().copied())
    }
}

/// Links `exts` in order in front of `last` (the upper layer, or what follows the chain): the
/// first next-header value and the chain's bytes.
pub fn link_chain(exts: &[Ext], last: u8) -> (u8, Vec<u8>) {
    let mut bytes = Vec::with_capacity(exts.iter().map(|e| e.bytes.len()).sum());
    for (i, ext) in exts.iter().enumerate() {
        bytes.extend(ext.linked(exts.get(i + 1).map_or(last, |e| e.kind)));
    }
    (exts.first().map_or(last, |e| e.kind), bytes)
}

/// A fragment header's bytes: `next`, `offset` in bytes (a multiple of 8), more-fragments and
/// `id`.
pub fn fragment_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    debug_assert!(offset.is_multiple_of(super::ipv4::FRAG_UNIT));
    Ext::fragment((offset / super::ipv4::FRAG_UNIT) as u16, more, id)
        .linked(next)
        .collect()
}

/// Sets the payload length field of the IPv6 header at the start of `net`.
pub fn set_payload_len(net: &mut [u8], len: u16) {
    let at = wire::IPV6_PAYLOAD_LEN_OFFSET;
    net[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// `inner` (a whole IP packet, `inner_next` = IPIP or IPV6) in IPv6 from `src` to `dst` behind a
/// segment routing header that lists `dst` as its only segment, none left: what a node with
/// seg6_enabled decapsulates by itself (ipv6_srh_rcv) and re-injects with netif_rx.
pub fn srv6_encap(src: Ipv6Addr, dst: Ipv6Addr, inner_next: u8, inner: &[u8]) -> Vec<u8> {
    let segment = dst.octets();
    // Next header, length in 8-octet units after the first, type, segments left 0, last
    // entry 0, flags, tag; then the segment list.
    let units = (segment.len() / wire::IPV6_EXT_UNIT) as u8;
    let mut payload = vec![inner_next, units, SRH_ROUTING_TYPE, 0, 0, 0, 0, 0];
    payload.extend_from_slice(&segment);
    payload.extend_from_slice(inner);
    packet(src, dst, proto::ROUTING, &payload)
}
