//! Frames that are not what they claim: length fields that lie either way, frames cut at (and
//! around) every header boundary, bytes flipped in valid frames, and noise behind a plausible
//! EtherType.

use super::packets::{self, Fragmenting};
use crate::frames::ipv4::MORE_FRAGMENTS;
use crate::frames::{Built, IpVersion};
use crate::rng::Rng;
use serve_guard_common::wire::{self, proto};

/// Bytes a mutation writes: protocol and next-header numbers, TPIDs, EtherType halves,
/// version/IHL bytes, halves of the protected ports, and the extremes.
const INTERESTING: [u8; 26] = [
    0x00, 0xff, 0x80, 0x7f, 6, 17, 33, 132, 136, 44, 43, 60, 51, 59, 58, 135, 0x81, 0x88, 0xa8,
    0x86, 0xdd, 0x08, 0x45, 0x60, 0x1f, 0x40,
];
/// Most bytes a length lie adds to the declared length beyond the frame.
const MAX_OVERSTATEMENT: usize = 64;
/// Mutations land here more often: the headers the filter reads.
const HEADER_AREA: usize = 96;
const MAX_MUTATIONS: usize = 6;
const MAX_NOISE_LEN: usize = 160;
/// Ethernet's minimum frame without FCS: shorter frames are padded on the wire.
const ETH_MIN_FRAME: usize = 60;

/// A frame with an IP packet (either version, a fragment or not) to lie about.
fn ip_packet(rng: &mut Rng) -> Built {
    let tags = packets::tags(rng, 2);
    match rng.below(5) {
        0 => packets::ipv4(rng, &tags, Fragmenting::No),
        1 => packets::ipv4(rng, &tags, Fragmenting::Yes),
        _ => packets::ipv6(rng, &tags),
    }
}

/// A cut point: near a header boundary most of the time, anywhere otherwise; in
/// `lo..frame_len` (empty range: `lo`).
fn cut_point(rng: &mut Rng, built: &Built, lo: usize) -> usize {
    let len = built.frame.len();
    if lo + 1 >= len {
        return lo.min(len);
    }
    let at = if rng.coin() || built.boundaries.is_empty() {
        rng.range(lo, len - 1)
    } else {
        let boundary = rng.pick(&built.boundaries) as isize;
        let delta = rng.range(0, 8) as isize - 4;
        (boundary + delta).clamp(lo as isize, len as isize - 1) as usize
    };
    at.max(lo)
}

/// Declared length longer than the frame, shorter with the real headers (or a harmless
/// looking decoy) behind the declared end, zero, an IHL or version that lies, or a truthful
/// length with Ethernet padding.
pub fn length_lie(rng: &mut Rng) -> Vec<u8> {
    let mut built = ip_packet(rng);
    let end = built.frame.len();
    match rng.below(7) {
        0 => built.declare_end(end + rng.range(1, MAX_OVERSTATEMENT)),
        1 | 2 => {
            // The real rest of the headers stays in the frame past the declared end.
            let cut = cut_point(rng, &built, built.layout.l3);
            built.declare_end(cut);
        }
        3 => {
            // Issue 7's shape: past the declared end, bytes that end the chain harmlessly to a
            // parser that reads them ("no next header", or a port that is not protected).
            let cut = cut_point(rng, &built, built.layout.l3);
            built.declare_end(cut);
            built.frame.truncate(cut);
            built.frame.extend(decoy(rng));
        }
        4 => match built.ip {
            Some(IpVersion::V6) => built.declare_end(built.layout.l3 + wire::IPV6_HLEN),
            _ => built.declare_end(built.layout.l3),
        },
        5 => {
            // The other length the IP header states: the IHL (any value), or a version that
            // does not match the EtherType.
            const NIBBLE: u8 = 0x0f;
            let first = built.frame[built.layout.l3];
            let lie = rng.u8() & NIBBLE;
            built.set_first_byte(if rng.coin() {
                (first & !NIBBLE) | lie
            } else {
                (lie << wire::IP_VERSION_SHIFT) | (first & NIBBLE)
            });
        }
        _ => {
            let padded = end.max(ETH_MIN_FRAME) + rng.small(8);
            let fill = if rng.coin() { 0 } else { rng.u8() };
            built.frame.resize(padded, fill);
        }
    }
    built.frame
}

/// A trailer that reads as "no next header" where a next-header byte is expected, and as
/// ports 15104 -> 0 where a transport header is.
fn decoy(rng: &mut Rng) -> Vec<u8> {
    let mut d = vec![0u8; rng.range(2, 24)];
    d[0] = if rng.coin() {
        proto::NONE
    } else {
        proto::ICMPV6
    };
    d
}

/// A well-formed frame cut short, at a header boundary or anywhere; half the time with the
/// IP length fixed to the cut, so the kernel would keep the short packet.
pub fn truncation(rng: &mut Rng) -> Vec<u8> {
    let mut built = packets::any(rng);
    let cut = cut_point(rng, &built, wire::ETH_HLEN);
    if rng.coin() {
        built.declare_end(cut);
    }
    built.frame.truncate(cut);
    built.frame
}

/// An IPv4 first fragment whose declared end cuts the transport header anywhere (or just
/// after it), with the rest of the header in the frame or not; or any other fragment.
pub fn ipv4_fragment(rng: &mut Rng) -> Vec<u8> {
    let tags = packets::tags(rng, 2);
    let mut built = packets::ipv4(rng, &tags, Fragmenting::Yes);
    if rng.coin()
        && let [l3, l4, l4_end] = built.boundaries[..]
    {
        if !rng.one_in(3) {
            let field = wire::IPV4_FRAG_OFF_OFFSET;
            built.frame[l3 + field..l3 + field + 2].copy_from_slice(&MORE_FRAGMENTS.to_be_bytes());
        }
        let cut = rng.range(l4, l4_end.max(l4) + 2).min(built.frame.len());
        built.declare_end(cut);
        if rng.coin() {
            built.frame.truncate(cut);
        }
    }
    built.frame
}

/// A valid frame with a few bytes flipped, overwritten, inserted or removed.
pub fn mutation(rng: &mut Rng) -> Vec<u8> {
    let mut frame = packets::any(rng).frame;
    for _ in 0..rng.range(1, MAX_MUTATIONS) {
        let len = frame.len();
        let at = if rng.coin() {
            rng.below(len.min(HEADER_AREA))
        } else {
            rng.below(len)
        };
        match rng.below(5) {
            0 => frame[at] ^= 1 << rng.below(8),
            1 => frame[at] = rng.u8(),
            2 => frame[at] = rng.pick(&INTERESTING),
            3 => frame.insert(at, rng.u8()),
            _ if len > wire::ETH_HLEN => {
                frame.remove(at);
            }
            _ => {}
        }
    }
    frame
}

/// Random bytes behind an IP, VLAN or random EtherType, the IP version nibble often right.
pub fn noise(rng: &mut Rng) -> Vec<u8> {
    const ETHERTYPES: [u16; 4] = [
        wire::ETH_P_IPV4,
        wire::ETH_P_IPV6,
        wire::ETH_P_8021Q,
        wire::ETH_P_8021AD,
    ];
    let len = rng.range(wire::ETH_HLEN, MAX_NOISE_LEN);
    let mut frame = rng.bytes(len);
    let ethertype = if rng.one_in(5) {
        rng.u16()
    } else {
        rng.pick(&ETHERTYPES)
    };
    frame[wire::ETH_TYPE_OFFSET..wire::ETH_HLEN].copy_from_slice(&ethertype.to_be_bytes());
    if frame.len() > wire::ETH_HLEN && rng.coin() {
        let version = match ethertype {
            wire::ETH_P_IPV6 => wire::IPV6_VERSION,
            _ => wire::IPV4_VERSION,
        };
        let low = frame[wire::ETH_HLEN] & 0x0f;
        frame[wire::ETH_HLEN] = (version << wire::IP_VERSION_SHIFT) | low;
    }
    frame
}
