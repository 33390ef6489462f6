//! The values that decide a verdict, aimed where mistakes hide: sources inside, at the edge of
//! and outside the allow-lists; ports at, next to and far from the protected ones; protocols
//! with a port, without one, and the numbers a parser could confuse with either.

use super::super::{model::PORT_PROTOCOLS, scenario};
use crate::frames::ipv4::opt;
use crate::rng::Rng;
use serve_guard_common::trie::level_boundaries;
use serve_guard_common::wire::proto;

/// The server: the destination of most frames (the filter does not read it).
const SERVER_V4: [u8; 4] = [198, 18, 0, 1];
const SERVER_V6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The test ranges (198.18.0.0/15, fd00::/8) for "somewhere else" sources.
const TEST_V4: (u128, u8) = (0xc612_0000, 15);
const TEST_V6: (u128, u8) = (0xfd << 120, 8);

/// Protocols that are no port protocol but a parser could mistake: ICMP/ICMPv6, ESP, no next
/// header, tunnels (IPIP, IPv6-in-IP, GRE), and extension-header numbers in IPv4.
const OTHER_PROTOCOLS: [u8; 11] = [
    proto::ICMP,
    proto::ICMPV6,
    proto::ESP,
    proto::NONE,
    proto::IPIP,
    proto::IPV6,
    47, // GRE
    proto::HOPOPTS,
    proto::FRAGMENT,
    proto::AH,
    proto::DSTOPTS,
];

/// A source address: inside an allowed prefix, at the edge of one, or elsewhere in the test
/// range.
pub fn source_v4(rng: &mut Rng) -> [u8; 4] {
    let prefixes: Vec<(u128, u8)> = scenario::allow_v4()
        .iter()
        .map(|n| (u128::from(u32::from(n.network())), n.prefix_len()))
        .collect();
    (source(rng, &prefixes, scenario::NAMED_V4, 32, TEST_V4) as u32).to_be_bytes()
}

pub fn source_v6(rng: &mut Rng) -> [u8; 16] {
    let prefixes: Vec<(u128, u8)> = scenario::allow_v6()
        .iter()
        .map(|n| (u128::from(n.network()), n.prefix_len()))
        .collect();
    source(rng, &prefixes, scenario::NAMED_V6, 128, TEST_V6).to_be_bytes()
}

/// An address of a `bits`-bit family near one of `prefixes`, or in `test`. The first `named`
/// prefixes are drawn three times in four, the dense clusters after them (many prefixes each)
/// once: each named edge case keeps its share.
fn source(
    rng: &mut Rng,
    prefixes: &[(u128, u8)],
    named: usize,
    bits: u32,
    test: (u128, u8),
) -> u128 {
    let pick = if named < prefixes.len() && rng.one_in(4) {
        named + rng.below(prefixes.len() - named)
    } else {
        rng.below(named)
    };
    let (base, len) = prefixes[pick];
    match rng.below(3) {
        0 => in_range(rng, base, len, bits),
        1 => edge(rng, base, u32::from(len), bits),
        _ => in_range(rng, test.0, test.1, bits),
    }
}

pub fn destination_v4(rng: &mut Rng) -> [u8; 4] {
    if rng.one_in(8) {
        rng.next_u64().to_be_bytes()[..4]
            .try_into()
            .expect("4 bytes")
    } else {
        SERVER_V4
    }
}

pub fn destination_v6(rng: &mut Rng) -> [u8; 16] {
    if rng.one_in(8) {
        random_u128(rng).to_be_bytes()
    } else {
        SERVER_V6
    }
}

/// Just outside or just inside the boundary of the prefix `base/len` of a `bits`-bit family:
/// the last bit of the prefix flipped, the addresses right before and after it, or the edges of
/// the trie's strides around it.
fn edge(rng: &mut Rng, base: u128, len: u32, bits: u32) -> u128 {
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let size = 1u128.checked_shl(bits - len).unwrap_or(0);
    // The edges of the lookup's levels around the prefix (issue 21): the address just before or
    // just past a directory- or stride-aligned range holding it, where the walk moves to the next slot.
    let boundaries: Vec<u32> = level_boundaries(bits).collect();
    let stride_edge = |rng: &mut Rng| {
        let at = boundaries[rng.below(boundaries.len())];
        let span = 1u128 << (bits - at);
        let start = base & !(span - 1);
        if rng.coin() {
            start.wrapping_sub(1)
        } else {
            start.wrapping_add(span)
        }
    };
    let out = match rng.below(5) {
        0 if len > 0 => base ^ (1u128 << (bits - len)),
        1 => base.wrapping_sub(1),
        2 | 3 => stride_edge(rng),
        _ => base.wrapping_add(size),
    };
    out & all
}

fn in_range(rng: &mut Rng, base: u128, len: u8, bits: u32) -> u128 {
    let host_bits = bits - u32::from(len);
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    base | (random_u128(rng) & host_mask)
}

fn random_u128(rng: &mut Rng) -> u128 {
    (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
}

/// A destination port: at a run boundary of a port table (either side) or a socket's port, one
/// off, byte-swapped (an endianness slip) or anything.
pub fn port(rng: &mut Rng) -> u16 {
    let near = rng.pick(scenario::interesting_ports());
    match rng.below(8) {
        0..=3 => near,
        4 => near.wrapping_add(1),
        5 => near.wrapping_sub(1),
        6 => near.swap_bytes(),
        _ => rng.u16(),
    }
}

/// TCP flag combinations the guarded rule must tell apart: a SYN alone (a new connection, or
/// Fast Open with data), SYN with ACK, with RST or FIN, no SYN at all (ACK, RST, FIN, data),
/// none, all; then anything.
const TCP_FLAGS: [u8; 14] = [
    0x02, // SYN
    0x12, // SYN ACK
    0x10, // ACK
    0x04, // RST
    0x14, // RST ACK
    0x01, // FIN
    0x11, // FIN ACK
    0x18, // PSH ACK
    0x03, // SYN FIN
    0x06, // SYN RST
    0xc2, // SYN ECE CWR (ECN setup)
    0x00, // none
    0xff, // all
    0xed, // every flag but SYN and ACK
];

/// A TCP flags byte: most often one of the combinations above.
pub fn tcp_flags(rng: &mut Rng) -> u8 {
    if rng.one_in(4) {
        rng.u8()
    } else {
        rng.pick(&TCP_FLAGS)
    }
}

/// A transport protocol and, for a port protocol, its minimum header length.
pub fn protocol(rng: &mut Rng) -> (u8, Option<usize>) {
    match rng.below(10) {
        0..=6 => {
            let (number, min) = rng.pick(&PORT_PROTOCOLS);
            (number, Some(min))
        }
        7 | 8 => (rng.pick(&OTHER_PROTOCOLS), None),
        _ => {
            let number = rng.u8();
            let min = PORT_PROTOCOLS
                .iter()
                .find(|(p, _)| *p == number)
                .map(|(_, m)| *m);
            (number, min)
        }
    }
}

/// IPv4 options: real ones (NOP, End, Record Route, Timestamp, Router Alert) and raw bytes,
/// `len` bytes (a multiple of 4, at most 40), lengths inside them not always true.
pub fn ipv4_options(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut o = Vec::with_capacity(len);
    while o.len() < len {
        let room = len - o.len();
        match rng.below(5) {
            0 => o.push(opt::NOP),
            1 if room >= opt::ROUTER_ALERT_OPTION.len() => {
                o.extend_from_slice(&opt::ROUTER_ALERT_OPTION);
            }
            2 if room >= 3 => {
                // Record Route / Timestamp with room for some addresses.
                let kind = if rng.coin() {
                    opt::RECORD_ROUTE
                } else {
                    opt::TIMESTAMP
                };
                let opt_len = rng.range(3, room.min(usize::from(u8::MAX)));
                o.push(kind);
                o.push(opt_len as u8);
                o.push(opt::RR_FIRST_POINTER);
                o.extend(std::iter::repeat_n(0, opt_len - 3));
            }
            3 => o.push(opt::END),
            _ => o.push(rng.u8()),
        }
    }
    o.truncate(len);
    o
}
