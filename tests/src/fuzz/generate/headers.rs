//! Header bytes: Ethernet and VLAN tags, IPv4 and IPv6 fixed headers, IPv6 extension headers and
//! transport headers. Every field the generators want to lie about is a parameter; the rest is
//! filled the way a real stack would (or at random where the filter must not care).

use crate::frames;
use crate::rng::Rng;
use serve_guard_common::wire::{self, proto};

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const TTL: u8 = 64;
/// The VID is the low 12 bits of the TCI; priority and DEI sit above it.
const VID_MASK: u16 = 0x0fff;
/// IPv4 flags in the fragment field (the 3 bits above the offset).
pub const IPV4_DONT_FRAGMENT: u16 = 0x4000;
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
/// IPv6 fragment header: the M flag is the lowest bit of the offset field.
pub const IPV6_MORE_FRAGMENTS: u16 = 1;
/// Largest offset the 13-bit fragment-offset fields hold.
pub const MAX_FRAGMENT_OFFSET: u16 = 0x1fff;
/// TCP's data offset: the high nibble of byte 12, in 32-bit words.
const TCP_DATA_OFFSET_BYTE: usize = 12;
/// TCP's flags byte.
const TCP_FLAGS_BYTE: usize = 13;
/// UDP (and UDP-Lite's coverage) length field.
const UDP_LENGTH_OFFSET: usize = 4;

/// One VLAN tag: TPID and the whole TCI (priority, DEI, VID).
#[derive(Clone, Copy, Debug)]
pub struct Tag {
    pub tpid: u16,
    pub tci: u16,
}

impl Tag {
    /// A tag with `tpid`, a VID of zero (priority tag) or not, random priority bits.
    pub fn random(rng: &mut Rng, tpid: u16) -> Self {
        let vid = if rng.coin() {
            0
        } else {
            rng.range(1, usize::from(VID_MASK)) as u16
        };
        Self {
            tpid,
            tci: (rng.u16() & !VID_MASK) | vid,
        }
    }
}

/// Destination and source MAC, the tags (outermost first), then `ethertype`.
pub fn ethernet(tags: &[Tag], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(wire::ETH_HLEN + tags.len() * wire::VLAN_HLEN);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for tag in tags {
        f.extend_from_slice(&tag.tpid.to_be_bytes());
        f.extend_from_slice(&tag.tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// The fields of an IPv4 header a generator chooses.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Flags and fragment offset, as on the wire.
    pub frag: u16,
    /// A multiple of 4 bytes, at most 40.
    pub options: Vec<u8>,
}

impl Ipv4 {
    /// The header with a total length of `total` and a correct checksum.
    pub fn bytes(&self, rng: &mut Rng, total: u16) -> Vec<u8> {
        debug_assert_eq!(self.options.len() % wire::IPV4_IHL_WORD, 0);
        let hlen = wire::IPV4_MIN_HLEN + self.options.len();
        let mut h = Vec::with_capacity(hlen);
        h.push((wire::IPV4_VERSION << wire::IP_VERSION_SHIFT) | (hlen / wire::IPV4_IHL_WORD) as u8);
        h.push(rng.u8()); // DSCP/ECN: the filter must not care
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&rng.u16().to_be_bytes()); // identification
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(TTL);
        h.push(self.protocol);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
        let checksum = frames::internet_checksum(&h);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        h
    }
}

/// IPv4 options: real ones (NOP, End, Record Route, Timestamp, Router Alert) and raw bytes,
/// padded to a multiple of 4; `len` bytes at most (<= 40).
pub fn ipv4_options(rng: &mut Rng, len: usize) -> Vec<u8> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const RECORD_ROUTE: u8 = 7;
    const TIMESTAMP: u8 = 68;
    const ROUTER_ALERT: [u8; 4] = [148, 4, 0, 0];
    let mut o = Vec::with_capacity(len);
    while o.len() < len {
        let room = len - o.len();
        match rng.below(5) {
            0 => o.push(NOP),
            1 if room >= ROUTER_ALERT.len() => o.extend_from_slice(&ROUTER_ALERT),
            2 if room >= 3 => {
                // Record Route / Timestamp with room for some addresses.
                let kind = if rng.coin() { RECORD_ROUTE } else { TIMESTAMP };
                let opt_len = rng.range(3, room.min(usize::from(u8::MAX)));
                o.push(kind);
                o.push(opt_len as u8);
                o.push(4);
                o.extend(std::iter::repeat_n(0, opt_len - 3));
            }
            3 => o.push(END),
            _ => o.push(rng.u8()),
        }
    }
    o.truncate(len);
    o
}

/// An IPv6 fixed header; `payload_len` as it will be declared.
pub fn ipv6(rng: &mut Rng, src: [u8; 16], dst: [u8; 16], next: u8, payload_len: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(wire::IPV6_HLEN);
    // Version, then random traffic class and flow label: the filter must not care.
    let flow = rng.next_u64() as u32 & 0x0fff_ffff;
    h.extend_from_slice(&((u32::from(wire::IPV6_VERSION) << 28) | flow).to_be_bytes());
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.push(next);
    h.push(TTL);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

/// One IPv6 extension header as the chain generator chooses it.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop, routing or destination options (or an unwalked kind with the same layout:
    /// mobility, HIP, shim6, experimental): `(units + 1) * 8` bytes.
    Generic {
        kind: u8,
        units: u8,
    },
    /// Authentication header: `(units + 2) * 4` bytes.
    Ah {
        units: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    pub fn kind(self) -> u8 {
        match self {
            Ext::Generic { kind, .. } => kind,
            Ext::Ah { .. } => proto::AH,
            Ext::Fragment { .. } => proto::FRAGMENT,
        }
    }

    pub fn bytes(self, rng: &mut Rng, next: u8) -> Vec<u8> {
        match self {
            Ext::Generic { units, .. } => {
                let len = (usize::from(units) + 1) * wire::IPV6_EXT_UNIT;
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = units;
                fill_options(rng, &mut h[2..]);
                h
            }
            Ext::Ah { units } => {
                let len = (usize::from(units) + wire::IPV6_AH_LEN_BIAS) * wire::IPV6_AH_UNIT;
                let mut h = rng.bytes(len);
                h[0] = next;
                h[1] = units;
                h
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << wire::IPV6_FRAG_OFF_SHIFT)
                    | if more { IPV6_MORE_FRAGMENTS } else { 0 }
                    | (rng.u16() & 0b110); // the reserved bits: the filter must not care
                let mut h = vec![next, rng.u8()];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
                h
            }
        }
    }
}

/// Option area of a hop-by-hop or destination-options header: Pad1/PadN or random bytes.
fn fill_options(rng: &mut Rng, area: &mut [u8]) {
    const PAD1: u8 = 0;
    const PADN: u8 = 1;
    if rng.one_in(4) {
        area.iter_mut().for_each(|b| *b = rng.u8());
    } else if area.len() >= 2 {
        area[0] = PADN;
        area[1] = (area.len() - 2) as u8;
        area[2..].fill(0);
    } else {
        area.fill(PAD1);
    }
}

/// A transport header and payload for `protocol` to `port`: a port protocol's header is at
/// least its minimum length and carries the port in bytes 2-3; any other protocol gets bytes
/// that would look like a port to a parser that wrongly reads them.
pub fn transport(rng: &mut Rng, protocol: u8, min_len: Option<usize>, port: u16) -> Vec<u8> {
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
            t[TCP_DATA_OFFSET_BYTE] = ((header_len / wire::IPV4_IHL_WORD) as u8) << 4;
            if rng.one_in(3) {
                t[TCP_FLAGS_BYTE] = super::fields::tcp_flags(rng);
            }
        }
        proto::UDP => {
            let len = t.len() as u16;
            t[UDP_LENGTH_OFFSET..UDP_LENGTH_OFFSET + 2].copy_from_slice(&len.to_be_bytes());
        }
        _ => {}
    }
    t
}
