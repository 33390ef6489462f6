//! The building blocks generators combine: IPv4 options, IPv6 extension headers, fragment
//! layouts (cuts, order, duplicates, overlaps), VLAN priority tags and trailers. Each block
//! draws from the case's [`Rng`] and says what it chose in a short description, so a failing
//! case can be read without decoding its hex.

use crate::frames::ethernet::Tag;
use crate::frames::ipv4::{
    self,
    opt::{
        self, END, NOP, RECORD_ROUTE, ROUTER_ALERT, RR_FIRST_POINTER, TIMESTAMP, TS_FIRST_POINTER,
    },
};
use crate::frames::ipv6::{
    self, Ext,
    opt::{PAD1, PADN},
};
use crate::frames::{FRAG_UNIT, l4};
use crate::rng::Rng;
use serve_guard_common::wire::{self, proto};

/// Options the kernel does not interpret and so accepts as they are: experimental and
/// unassigned numbers, with and without the copied bit.
const IPOPT_UNINTERPRETED: [u8; 4] = [0x1e, 0x5e, 0x9e, 0xde];

/// IPv6 options whose two top bits say "skip if unknown" and that Linux does not interpret.
const IPV6_OPT_SKIPPABLE: [u8; 4] = [0x1e, 0x3e, 0x11, 0x2a];
/// Linux drops a header with more than 7 consecutive padding bytes (RFC 4942) or more than
/// `max_{hbh,dst}_opts_number` (8) real options; stay below both.
const IPV6_MAX_PAD_RUN: usize = 7;
const IPV6_MAX_OPTIONS: usize = 6;
/// Routing header types Linux accepts with segments left 0 (not 2, 3 or 4, which it checks).
const ROUTING_TYPES: [u8; 4] = [0, 1, 253, 254];
/// Extension headers larger than this many 8-octet units add nothing but bytes.
const MAX_EXT_UNITS: usize = 2;

pub const PRIORITY_TAG_TPIDS: [u16; 2] = [wire::ETH_P_8021Q, wire::ETH_P_8021AD];

/// Valid IPv4 options, padded with End-of-Options to a multiple of 4 bytes.
pub fn ipv4_options(rng: &mut Rng, desc: &mut Vec<String>) -> Vec<u8> {
    let budget = rng.range(1, ipv4::MAX_OPTIONS);
    let mut out = Vec::new();
    let mut names = Vec::new();
    // Linux refuses a header with two record-route, timestamp or router-alert options.
    let once = |kind: u8, names: &[String]| !names.contains(&kind.to_string());
    loop {
        let room = budget - out.len();
        if room == 0 {
            break;
        }
        let option: Vec<u8> = match rng.range(0, 5) {
            0 => vec![NOP],
            1 if room >= 4 && once(ROUTER_ALERT, &names) => opt::ROUTER_ALERT_OPTION.to_vec(),
            2 if room >= 7 && once(RECORD_ROUTE, &names) => {
                let slots = rng.range(1, ((room - 3) / 4).min(3));
                let mut o = vec![RECORD_ROUTE, (3 + 4 * slots) as u8, RR_FIRST_POINTER];
                o.resize(3 + 4 * slots, 0);
                o
            }
            3 if room >= 8 && once(TIMESTAMP, &names) => {
                let slots = rng.range(1, ((room - 4) / 4).min(2));
                let mut o = vec![TIMESTAMP, (4 + 4 * slots) as u8, TS_FIRST_POINTER, 0];
                o.resize(4 + 4 * slots, 0);
                o
            }
            _ if room >= 2 => {
                let len = rng.range(2, room.min(8));
                let mut o = vec![rng.pick(&IPOPT_UNINTERPRETED), len as u8];
                o.extend(rng.bytes(len - 2));
                o
            }
            _ => vec![NOP],
        };
        names.push(option[0].to_string());
        out.extend(option);
    }
    if rng.chance(1, 4) && out.len() < ipv4::MAX_OPTIONS {
        out.push(END);
        names.push("eol".into());
    }
    ipv4::pad_options(&mut out);
    desc.push(format!("v4opts[{}]={}B", names.join(","), out.len()));
    out
}

/// Only NOPs: what a sender may put in a later fragment's header.
pub fn ipv4_nops(rng: &mut Rng) -> Vec<u8> {
    vec![NOP; wire::IPV4_IHL_WORD * rng.range(0, 2)]
}

/// A hop-by-hop or destination options header with a valid option area.
pub fn options_header(rng: &mut Rng, kind: u8) -> Ext {
    let units = rng.range(0, MAX_EXT_UNITS);
    let len = (units + 1) * wire::IPV6_EXT_UNIT;
    let mut bytes = vec![0, units as u8];
    let mut remaining = len - 2;
    let mut after_padding = false;
    let mut options = 0;
    while remaining > 0 {
        let pad_now = !after_padding
            && (remaining <= IPV6_MAX_PAD_RUN || options >= IPV6_MAX_OPTIONS || rng.chance(1, 3));
        if pad_now {
            // Padding must leave nothing or room for a real option (2 bytes) after it.
            let mut pad = if remaining <= IPV6_MAX_PAD_RUN {
                remaining
            } else {
                rng.range(1, IPV6_MAX_PAD_RUN)
            };
            if remaining - pad == 1 {
                pad -= 1;
            }
            if pad > 0 {
                bytes.extend(padding(pad));
                remaining -= pad;
                after_padding = true;
                continue;
            }
        }
        // A real option: everything left if it is the last one allowed.
        let data = if options + 1 >= IPV6_MAX_OPTIONS {
            remaining - 2
        } else {
            rng.range(0, remaining - 2)
        };
        bytes.push(rng.pick(&IPV6_OPT_SKIPPABLE));
        bytes.push(data as u8);
        bytes.extend(rng.bytes(data));
        remaining -= 2 + data;
        options += 1;
        after_padding = false;
    }
    debug_assert_eq!(bytes.len(), len);
    Ext { kind, bytes }
}

/// `n` bytes of Pad1 / PadN (zero-filled, as RFC 4942 says receivers check).
fn padding(n: usize) -> Vec<u8> {
    match n {
        1 => vec![PAD1],
        _ => {
            let mut p = vec![PADN, (n - 2) as u8];
            p.resize(n, 0);
            p
        }
    }
}

/// A routing header with segments left 0 (the kernel skips it and goes on).
pub fn routing_header(rng: &mut Rng) -> Ext {
    let units = rng.range(0, MAX_EXT_UNITS);
    let mut bytes = vec![0, units as u8, rng.pick(&ROUTING_TYPES), 0];
    bytes.extend(rng.bytes((units + 1) * wire::IPV6_EXT_UNIT - 4));
    Ext {
        kind: proto::ROUTING,
        bytes,
    }
}

/// An atomic fragment header (offset 0, no more fragments: RFC 6946).
pub fn atomic_fragment(id: u32) -> Ext {
    Ext::fragment(0, false, id)
}

/// One extension header that may follow hop-by-hop anywhere in a chain. At most one
/// fragment header per packet: Linux drops a packet with a second one.
pub fn any_later_ext(rng: &mut Rng, fragment_id: Option<u32>) -> Ext {
    match (rng.range(0, 5), fragment_id) {
        (0..=2, _) | (4.., None) => options_header(rng, proto::DSTOPTS),
        (3, _) => routing_header(rng),
        (_, Some(id)) => atomic_fragment(id),
    }
}

pub fn ext_names(exts: &[Ext]) -> String {
    exts.iter()
        .map(|e| match e.kind {
            proto::HOPOPTS => format!("hbh{}", e.bytes.len()),
            proto::DSTOPTS => format!("dst{}", e.bytes.len()),
            proto::ROUTING => format!("rt{}", e.bytes.len()),
            proto::FRAGMENT => "afrag".to_owned(),
            other => format!("x{other}"),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A byte range of the fragmentable part carried by one fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub start: usize,
    pub end: usize,
    /// Carries the bytes of the datagram's *other* version (the same datagram to the other
    /// kind of port, its checksum correct). Linux keeps the first copy of a range and ignores
    /// any later fragment inside it whatever its content, so which port the datagram goes to
    /// depends on which copy comes first.
    pub other: bool,
}

impl Piece {
    /// The more-fragments flag: set on every piece but the one that ends the datagram.
    pub fn more(self, total: usize) -> bool {
        self.end < total
    }
}

/// Cuts `total` bytes into 2-5 fragments at 8-byte boundaries, the first one `first_cut`
/// bytes long when given, then reorders, duplicates and overlaps some of them.
pub fn fragment_layout(
    rng: &mut Rng,
    total: usize,
    first_cut: Option<usize>,
    desc: &mut Vec<String>,
) -> Vec<Piece> {
    let boundaries: Vec<usize> = (1..)
        .map(|u| u * FRAG_UNIT)
        .take_while(|&b| b < total)
        .collect();
    if boundaries.is_empty() {
        desc.push("frag[whole]".into());
        return vec![Piece {
            start: 0,
            end: total,
            other: false,
        }];
    }
    let mut cuts = Vec::new();
    if let Some(cut) = first_cut.filter(|c| boundaries.contains(c)) {
        cuts.push(cut);
    }
    let extra = rng.range(usize::from(cuts.is_empty()), 4.min(boundaries.len()));
    for _ in 0..extra {
        cuts.push(rng.pick(&boundaries));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<Piece> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .zip(cuts.iter().copied().chain(std::iter::once(total)))
        .map(|(start, end)| Piece {
            start,
            end,
            other: false,
        })
        .collect();
    desc.push(format!(
        "frag[{}]",
        pieces
            .iter()
            .map(|p| format!("{}-{}", p.start, p.end))
            .collect::<Vec<_>>()
            .join(",")
    ));
    match rng.range(0, 19) {
        0..=7 => {}
        8..=11 => {
            pieces.reverse();
            desc.push("reversed".into());
        }
        12..=16 => {
            rng.shuffle(&mut pieces);
            desc.push("shuffled".into());
        }
        _ => {
            pieces.rotate_left(1);
            desc.push("first-last".into());
        }
    }
    if rng.chance(1, 5) {
        let mut dup = rng.pick(&pieces);
        // Half the duplicates disagree: the first of them carries the other port.
        dup.other = rng.chance(1, 2);
        let at = rng.range(0, pieces.len());
        pieces.insert(at, dup);
        let kind = if dup.other { "conflicting-dup" } else { "dup" };
        desc.push(format!("{kind}{}-{}", dup.start, dup.end));
    }
    if rng.chance(1, 12) {
        // Starts inside a piece and runs past its end: an overlap the kernel must refuse.
        let wide: Vec<Piece> = pieces
            .iter()
            .copied()
            .filter(|p| p.end - p.start > FRAG_UNIT && p.end < total)
            .collect();
        if !wide.is_empty() {
            let p = rng.pick(&wide);
            let start = p.start + FRAG_UNIT;
            let end = (p.end + FRAG_UNIT).min(total);
            let at = rng.range(0, pieces.len());
            pieces.insert(
                at,
                Piece {
                    start,
                    end,
                    other: false,
                },
            );
            desc.push(format!("overlap{start}-{end}"));
        }
    }
    pieces
}

/// `n` priority tags (VLAN id 0), each with a random TPID and priority.
pub fn priority_tags(rng: &mut Rng, n: usize) -> Vec<Tag> {
    (0..n)
        .map(|_| Tag::priority(rng.pick(&PRIORITY_TAG_TPIDS), rng.range(0, 7) as u8))
        .collect()
}

/// An 8-byte options header (PadN) whose next header is `next`.
fn header_saying(next: u8) -> Vec<u8> {
    ipv6::link_chain(&[Ext::padded(proto::DSTOPTS, 0)], next).1
}

/// Bytes after the end the IP header declares. `fake_next` is the chain's last next-header
/// inside the packet (IPv6) or the protocol (IPv4): some trailers continue it with a header that
/// says "nothing follows" or "an unprotected port", which a parser reading past the declared end
/// would believe.
pub fn trailer(rng: &mut Rng, fake_next: u8, unprotected: u16, desc: &mut Vec<String>) -> Vec<u8> {
    let (name, bytes) = match rng.range(0, 5) {
        0 => ("nonext2", vec![proto::NONE, 0]),
        1 => ("nonext8", header_saying(proto::NONE)),
        2 => {
            // An options header saying UDP follows, then a UDP header to an unprotected port.
            let mut t = if matches!(fake_next, proto::DSTOPTS | proto::HOPOPTS | proto::ROUTING) {
                header_saying(proto::UDP)
            } else {
                Vec::new()
            };
            t.extend(l4::udp((rng.u16(), unprotected), &[]));
            ("fakeudp", t)
        }
        3 => {
            let n = rng.range(1, 46);
            ("zeros", vec![0; n])
        }
        _ => ("random", rng.bytes_in(1, 24)),
    };
    desc.push(format!("trailer:{name}({}B)", bytes.len()));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks an option area the way Linux's ip6_parse_tlv checks it.
    fn valid_tlv(area: &[u8]) -> bool {
        let (mut i, mut pad_run, mut count) = (0, 0, 0);
        while i < area.len() {
            if area[i] == PAD1 {
                pad_run += 1;
                i += 1;
            } else {
                let Some(&len) = area.get(i + 1) else {
                    return false;
                };
                let end = i + 2 + usize::from(len);
                if end > area.len() {
                    return false;
                }
                if area[i] == PADN {
                    pad_run += end - i;
                    if area[i + 2..end].iter().any(|&b| b != 0) {
                        return false;
                    }
                } else {
                    pad_run = 0;
                    count += 1;
                }
                i = end;
            }
            if pad_run > IPV6_MAX_PAD_RUN || count > 8 {
                return false;
            }
        }
        true
    }

    #[test]
    fn option_headers_pass_the_kernels_checks() {
        let mut rng = Rng::new(5);
        for _ in 0..5000 {
            let h = options_header(&mut rng, proto::DSTOPTS);
            assert_eq!(h.bytes.len(), (usize::from(h.bytes[1]) + 1) * 8);
            assert!(valid_tlv(&h.bytes[2..]), "{:02x?}", h.bytes);
        }
    }

    #[test]
    fn layouts_cover_the_datagram() {
        let mut rng = Rng::new(9);
        for total in [9, 30, 100, 333] {
            for _ in 0..500 {
                let pieces = fragment_layout(&mut rng, total, Some(8), &mut Vec::new());
                for p in &pieces {
                    assert!(p.start % 8 == 0 && p.start < p.end && p.end <= total);
                    assert!(p.end == total || p.end % 8 == 0);
                }
                let mut covered = vec![false; total];
                pieces
                    .iter()
                    .for_each(|p| covered[p.start..p.end].fill(true));
                assert!(covered.iter().all(|&c| c));
            }
        }
    }

    #[test]
    fn ipv4_options_fit_the_header() {
        let mut rng = Rng::new(3);
        for _ in 0..2000 {
            let o = ipv4_options(&mut rng, &mut Vec::new());
            assert!(o.len() <= ipv4::MAX_OPTIONS && o.len().is_multiple_of(4));
        }
    }
}
