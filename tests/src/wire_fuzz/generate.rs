//! The generators: from (seed, index) to a [`Case`]. Each first drafts a datagram (family,
//! source, transport, ports, payload, checksum), then lays it out in packets (options,
//! extension chains, fragments) and frames (tags, trailers, padding). Everything is drawn from
//! the case's own random stream; only the IP identifications come from the campaign's
//! [`Ids`], so that no two datagrams in flight share a reassembly queue.

use super::case::{Case, CaseId, Generator, Origin, Transport, udp_payload};
use super::lab::{self, GUARDED_EMPTY_PORT, GUARDED_PORT, PROTECTED_PORTS, UNPROTECTED_PORT};
use super::shapes::{self, Piece};
use crate::frames::ethernet::Tag;
use crate::frames::ipv6::{self, Ext};
use crate::frames::{FRAG_UNIT, ipv4, l4, tcp};
use crate::rng::Rng;
use crate::topology::{Ip, SERVER_V4, SERVER_V6};
use serve_guard_common::wire::{self, proto};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// Source ports are drawn above the well-known range.
const MIN_SRC_PORT: usize = 1024;
/// UDP filler and SYN data lengths: enough to cut into several fragments, small enough for
/// any MTU with the largest headers.
const MAX_FILLER: usize = 200;
const MAX_SYN_DATA: usize = 96;
/// TCP options a SYN may carry: MSS, SACK permitted, window scale, timestamps, NOP.
const TCP_OPT_NOP: u8 = 1;
const TCP_OPT_MSS: [u8; 4] = [2, 4, 0x05, 0xb4];
const TCP_OPT_SACK_OK: [u8; 2] = [4, 2];
const TCP_OPT_WSCALE: [u8; 3] = [3, 3, 7];
const TCP_OPT_TIMESTAMPS_LEN: usize = 10;
const TCP_OPT_TIMESTAMPS: u8 = 8;
/// At most this many VLAN tags (the program reads through 8; more is over-blocked by design).
const MAX_TAGS: usize = 10;
/// Extension headers after an IPv6 fragment header, at most.
const MAX_FRAGMENTABLE_EXTS: usize = 3;
/// The shortest Ethernet frame without its FCS: shorter frames get padded on real links.
pub const ETH_MIN_FRAME: usize = 60;

/// IP identifications: one 16-bit counter per IPv4 source (the kernel's reassembly key is
/// source, destination, protocol and id) and one 32-bit counter for IPv6 fragment headers.
#[derive(Debug, Default)]
pub struct Ids {
    v4: HashMap<Ipv4Addr, u16>,
    v6: u32,
}

impl Ids {
    /// Starts the counters at seed-dependent values, so two runs do not reuse each other's ids.
    pub fn new(seed: u64) -> Self {
        Ids {
            v4: HashMap::new(),
            v6: Rng::new(seed).u32(),
        }
    }

    pub fn v4(&mut self, src: Ipv4Addr) -> u16 {
        let next = self
            .v4
            .entry(src)
            .or_insert_with(|| u16::from(src.octets()[3]) << 8);
        *next = next.wrapping_add(1);
        *next
    }

    /// The identification of a whole packet from `src`: [`Ids::v4`], or 0 for IPv6 (whose
    /// fixed header has none).
    pub fn v4_of(&mut self, src: IpAddr) -> u16 {
        match src {
            IpAddr::V4(src) => self.v4(src),
            IpAddr::V6(_) => 0,
        }
    }

    pub fn v6(&mut self) -> u32 {
        self.v6 = self.v6.wrapping_add(1);
        self.v6
    }
}

/// The datagram every generator starts from.
#[derive(Clone, Debug)]
pub struct Draft {
    pub ip: Ip,
    pub origin: Origin,
    pub transport: Transport,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP's flags (`None` for UDP).
    pub tcp_flags: Option<u8>,
    pub token: u32,
    /// The transport segment: header, payload, checksum.
    pub segment: Vec<u8>,
    /// The same segment to the other kind of port (protected <-> unprotected), for fragments
    /// that disagree with their duplicates.
    pub other_segment: Vec<u8>,
}

impl Draft {
    pub fn protocol(&self) -> u8 {
        match self.transport {
            Transport::Udp => proto::UDP,
            Transport::Tcp => proto::TCP,
        }
    }

    pub fn ethertype(&self) -> u16 {
        match self.ip {
            Ip::V4 => wire::ETH_P_IPV4,
            Ip::V6 => wire::ETH_P_IPV6,
        }
    }

    /// The segment a fragment's bytes come from.
    fn segment_of(&self, piece: &Piece) -> &[u8] {
        if piece.other {
            &self.other_segment
        } else {
            &self.segment
        }
    }

    /// The transport header's length (TCP: with options), from the data offset.
    pub fn transport_header_len(&self) -> usize {
        const TCP_DOFF_OFFSET: usize = 12;
        match self.transport {
            Transport::Udp => wire::UDP_HLEN,
            Transport::Tcp => usize::from(self.segment[TCP_DOFF_OFFSET] >> 4) * 4,
        }
    }

    /// Builds the draft: addresses from the family and origin, the segment from the body.
    pub fn new(
        ip: Ip,
        origin: Origin,
        transport: Transport,
        src_index: usize,
        ports: (u16, u16),
        token: u32,
        body: Body,
    ) -> Self {
        let src = lab::source(ip, origin, src_index);
        let dst: IpAddr = match ip {
            Ip::V4 => SERVER_V4.into(),
            Ip::V6 => SERVER_V6.into(),
        };
        let segment = |ports| match (transport, &body) {
            (
                Transport::Udp,
                Body::Udp {
                    filler,
                    zero_checksum,
                },
            ) => l4::udp_datagram(
                src,
                dst,
                ports,
                &udp_payload(token, filler),
                *zero_checksum && ip == Ip::V4,
            ),
            (
                Transport::Tcp,
                Body::Tcp {
                    options,
                    data,
                    flags,
                },
            ) => {
                let numbers = tcp_numbers(token, *flags, data.len(), ports.1);
                l4::tcp_segment(src, dst, ports, numbers, *flags, options, data)
            }
            _ => panic!("body does not match {transport:?}"),
        };
        let tcp_flags = match &body {
            Body::Tcp { flags, .. } => Some(*flags),
            Body::Udp { .. } => None,
        };
        let other_port = if lab::kept_out(ports.1, tcp_flags) {
            UNPROTECTED_PORT
        } else {
            PROTECTED_PORTS[0]
        };
        let other_segment = segment((ports.0, other_port));
        let segment = segment(ports);
        Draft {
            ip,
            origin,
            transport,
            src,
            dst,
            src_port: ports.0,
            dst_port: ports.1,
            tcp_flags,
            token,
            segment,
            other_segment,
        }
    }
}

/// The sequence and acknowledgment numbers of a TCP segment to `dst_port` such that the
/// server's answer, if any, carries `token` (see [`super::case`]): a listener answers a SYN
/// with a SYN-ACK acknowledging `seq + 1` and a segment with ACK with a reset whose sequence
/// number is its `ack`; where no socket is, a segment without ACK gets a reset acknowledging
/// `seq + SYN + FIN + data`.
pub fn tcp_numbers(token: u32, flags: u8, data_len: usize, dst_port: u16) -> (u32, u32) {
    if flags & tcp::ACK != 0 {
        return (token, token);
    }
    if dst_port != GUARDED_EMPTY_PORT {
        return (token, 0);
    }
    let consumed =
        u32::from(flags & tcp::SYN != 0) + u32::from(flags & tcp::FIN != 0) + data_len as u32;
    (token.wrapping_add(1).wrapping_sub(consumed), 0)
}

/// What the transport carries.
#[derive(Clone, Debug)]
pub enum Body {
    Udp {
        filler: Vec<u8>,
        zero_checksum: bool,
    },
    Tcp {
        options: Vec<u8>,
        data: Vec<u8>,
        flags: u8,
    },
}

/// TCP flags of the segments that are not a plain SYN: what reaches a listener without opening
/// a connection (a guessed SYN cookie, an ACK scan, a reset, data), and the SYN variants.
const OTHER_TCP_FLAGS: [u8; 10] = [
    tcp::ACK,
    tcp::SYN | tcp::ACK,
    tcp::ACK | 0x08, // PSH
    tcp::FIN | tcp::ACK,
    tcp::RST,
    tcp::RST | tcp::ACK,
    tcp::FIN,
    0,
    tcp::SYN | tcp::FIN,
    tcp::SYN | 0xc0, // ECE, CWR: ECN setup
];

fn draft(rng: &mut Rng, ip: Ip, token: u32) -> Draft {
    let origin = if rng.chance(1, 2) {
        Origin::Inside
    } else {
        Origin::Outside
    };
    let transport = if rng.chance(1, 2) {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let dst_port = match rng.range(0, 9) {
        0..=3 => rng.pick(&PROTECTED_PORTS),
        4 | 5 => GUARDED_PORT,
        6 => GUARDED_EMPTY_PORT,
        _ => UNPROTECTED_PORT,
    };
    let src_port = rng.range(MIN_SRC_PORT, usize::from(u16::MAX)) as u16;
    let src_index = rng.range(0, lab::SOURCES_PER_ORIGIN - 1);
    let body = match transport {
        Transport::Udp => Body::Udp {
            filler: rng.bytes_in(0, MAX_FILLER),
            zero_checksum: rng.chance(1, 10),
        },
        Transport::Tcp => Body::Tcp {
            options: tcp_options(rng),
            data: if rng.chance(1, 3) {
                rng.bytes_in(1, MAX_SYN_DATA)
            } else {
                Vec::new()
            },
            // Mostly a SYN (with Fast Open data a third of the time), else any other segment.
            flags: if rng.chance(2, 3) {
                tcp::SYN
            } else {
                rng.pick(&OTHER_TCP_FLAGS)
            },
        },
    };
    Draft::new(
        ip,
        origin,
        transport,
        src_index,
        (src_port, dst_port),
        token,
        body,
    )
}

fn tcp_options(rng: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    if rng.chance(2, 3) {
        o.extend_from_slice(&TCP_OPT_MSS);
    }
    if rng.chance(1, 2) {
        o.extend_from_slice(&TCP_OPT_SACK_OK);
    }
    if rng.chance(1, 2) {
        let mut ts = vec![TCP_OPT_TIMESTAMPS, TCP_OPT_TIMESTAMPS_LEN as u8];
        ts.extend(rng.bytes(TCP_OPT_TIMESTAMPS_LEN - 2));
        o.extend(ts);
    }
    if rng.chance(1, 2) {
        o.push(TCP_OPT_NOP);
        o.extend_from_slice(&TCP_OPT_WSCALE);
    }
    o
}

/// An IP packet and whether it carries the start of the datagram (offset 0).
#[derive(Clone, Debug)]
pub struct Packet {
    pub bytes: Vec<u8>,
    pub first: bool,
    /// IPv6: the next-header value the chain inside this packet ends with (what a trailer may
    /// pretend to continue); IPv4: the protocol.
    pub chain_end: u8,
}

/// IPv4: the datagram whole (`pieces` None) or as fragments.
fn v4_packets(
    rng: &mut Rng,
    d: &Draft,
    ids: &mut Ids,
    first_options: &[u8],
    pieces: Option<&[Piece]>,
) -> Vec<Packet> {
    let IpAddr::V4(src) = d.src else {
        panic!("v4_packets on {}", d.src)
    };
    let IpAddr::V4(dst) = d.dst else {
        panic!("v4_packets to {}", d.dst)
    };
    let header = ipv4::Datagram {
        src,
        dst,
        id: ids.v4(src),
        protocol: d.protocol(),
        tos: 0,
        dont_fragment: pieces.is_none() && rng.chance(1, 2),
    };
    let total = d.segment.len();
    let whole = [Piece {
        start: 0,
        end: total,
        other: false,
    }];
    pieces
        .unwrap_or(&whole)
        .iter()
        .map(|p| {
            let options = if p.start == 0 {
                first_options.to_vec()
            } else {
                shapes::ipv4_nops(rng)
            };
            Packet {
                bytes: ipv4::fragment(
                    &header,
                    &options,
                    p.start,
                    p.more(total),
                    &d.segment_of(p)[p.start..p.end],
                ),
                first: p.start == 0,
                chain_end: d.protocol(),
            }
        })
        .collect()
}

/// IPv6 headers of a datagram: before the fragment header (or the whole chain when not
/// fragmented) and after it.
#[derive(Clone, Debug, Default)]
struct V6Chain {
    unfragmentable: Vec<Ext>,
    fragmentable: Vec<Ext>,
}

fn v6_packets(d: &Draft, chain: &V6Chain, fragments: Option<(u32, &[Piece])>) -> Vec<Packet> {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (d.src, d.dst) else {
        panic!("v6_packets on {} -> {}", d.src, d.dst)
    };
    let (first_f, mut fragmentable) = ipv6::link_chain(&chain.fragmentable, d.protocol());
    let Some((id, pieces)) = fragments else {
        let all: Vec<Ext> = chain
            .unfragmentable
            .iter()
            .chain(&chain.fragmentable)
            .cloned()
            .collect();
        let (first, mut payload) = ipv6::link_chain(&all, d.protocol());
        payload.extend_from_slice(&d.segment);
        return vec![Packet {
            bytes: ipv6::packet(src, dst, first, &payload),
            first: true,
            chain_end: d.protocol(),
        }];
    };
    let mut other = fragmentable.clone();
    other.extend_from_slice(&d.other_segment);
    let (first_u, unfragmentable) = ipv6::link_chain(&chain.unfragmentable, proto::FRAGMENT);
    // Where each header of the fragmentable part starts, to know the chain's end in a piece.
    let mut starts = Vec::new();
    let mut at = 0;
    for ext in &chain.fragmentable {
        starts.push((at, ext.kind));
        at += ext.bytes.len();
    }
    fragmentable.extend_from_slice(&d.segment);
    let total = fragmentable.len();
    pieces
        .iter()
        .map(|p| {
            let mut payload = unfragmentable.clone();
            payload.extend(ipv6::fragment_header(first_f, p.start, p.more(total), id));
            let source = if p.other { &other } else { &fragmentable };
            payload.extend_from_slice(&source[p.start..p.end]);
            // The next header the bytes of a first fragment leave pending at its end.
            let chain_end = starts
                .iter()
                .zip(
                    chain
                        .fragmentable
                        .iter()
                        .skip(1)
                        .map(|e| e.kind)
                        .chain([d.protocol()]),
                )
                .filter(|((start, _), _)| *start < p.end)
                .map(|(_, next)| next)
                .last()
                .unwrap_or(first_f);
            Packet {
                bytes: ipv6::packet(src, dst, first_u, &payload),
                first: p.start == 0,
                chain_end,
            }
        })
        .collect()
}

/// A random extension chain of `n` headers, hop-by-hop first when `hop_by_hop`.
fn ext_chain(rng: &mut Rng, ids: &mut Ids, n: usize, hop_by_hop: bool) -> Vec<Ext> {
    let mut exts: Vec<Ext> = Vec::with_capacity(n);
    for i in 0..n {
        let ext = if i == 0 && hop_by_hop {
            shapes::options_header(rng, proto::HOPOPTS)
        } else {
            let fragmented = exts.iter().any(|e| e.kind == proto::FRAGMENT);
            shapes::any_later_ext(rng, (!fragmented).then(|| ids.v6()))
        };
        exts.push(ext);
    }
    exts
}

/// How many extension headers: mostly a few, sometimes right at or past the program's bound.
fn chain_length(rng: &mut Rng) -> usize {
    match rng.range(0, 9) {
        0..=4 => rng.range(1, 4),
        5..=7 => rng.range(5, 8),
        _ => rng.range(9, 11),
    }
}

/// An IPv4 datagram, fragmented with a bias to tiny first fragments.
fn v4_fragmented(rng: &mut Rng, d: &Draft, ids: &mut Ids, desc: &mut Vec<String>) -> Vec<Packet> {
    let first_cut = rng.chance(1, 3).then(|| rng.pick(&[8, 16]));
    let pieces = shapes::fragment_layout(rng, d.segment.len(), first_cut, desc);
    let options = if rng.chance(1, 4) {
        shapes::ipv4_options(rng, desc)
    } else {
        Vec::new()
    };
    v4_packets(rng, d, ids, &options, Some(&pieces))
}

/// An IPv6 datagram, fragmented, with headers before and after the fragment header and a bias
/// to first fragments that end inside the chain or the transport header.
fn v6_fragmented(
    rng: &mut Rng,
    d: &Draft,
    ids: &mut Ids,
    min_fragmentable: usize,
    desc: &mut Vec<String>,
) -> Vec<Packet> {
    let mut unfragmentable = Vec::new();
    if rng.chance(2, 5) {
        unfragmentable.push(shapes::options_header(rng, proto::HOPOPTS));
    }
    if rng.chance(1, 4) {
        unfragmentable.push(shapes::options_header(rng, proto::DSTOPTS));
    }
    if rng.chance(1, 4) {
        unfragmentable.push(shapes::routing_header(rng));
    }
    let n = rng.range(min_fragmentable, MAX_FRAGMENTABLE_EXTS);
    let fragmentable: Vec<Ext> = (0..n)
        .map(|_| {
            if rng.chance(3, 4) {
                shapes::options_header(rng, proto::DSTOPTS)
            } else {
                shapes::routing_header(rng)
            }
        })
        .collect();
    let chain_len: usize = fragmentable.iter().map(|e| e.bytes.len()).sum();
    let total = chain_len + d.segment.len();
    let transport_end = chain_len + d.transport_header_len();
    let last_start = chain_len - fragmentable.last().map_or(0, |e| e.bytes.len());
    let first_cut = match rng.range(0, 6) {
        // Inside the chain, before the last header starts (the shape): Linux accepts a
        // first fragment whose chain it cannot walk to the end. (Cut inside the last header,
        // its walk skips to the transport header and finds it missing: dropped.)
        0 | 1 if last_start >= FRAG_UNIT => Some(FRAG_UNIT * rng.range(1, last_start / FRAG_UNIT)),
        // Just past the transport header: the smallest first fragment Linux accepts.
        2 | 3 => Some(transport_end.next_multiple_of(FRAG_UNIT)),
        // Inside the transport header: Linux drops these (RFC 8200), and so must the filter.
        4 => Some(chain_len + FRAG_UNIT),
        _ => None,
    };
    let pieces = shapes::fragment_layout(rng, total, first_cut, desc);
    desc.push(format!(
        "exts[{}|frag|{}]",
        shapes::ext_names(&unfragmentable),
        shapes::ext_names(&fragmentable)
    ));
    let chain = V6Chain {
        unfragmentable,
        fragmentable,
    };
    v6_packets(d, &chain, Some((ids.v6(), &pieces)))
}

/// An IPv6 datagram, not fragmented (atomic fragment headers aside), behind a random chain.
fn v6_chain(rng: &mut Rng, d: &Draft, ids: &mut Ids, desc: &mut Vec<String>) -> Vec<Packet> {
    let n = chain_length(rng);
    let hop_by_hop = rng.chance(1, 2);
    let exts = ext_chain(rng, ids, n, hop_by_hop);
    desc.push(format!("exts[{}]", shapes::ext_names(&exts)));
    let chain = V6Chain {
        unfragmentable: exts,
        fragmentable: Vec::new(),
    };
    v6_packets(d, &chain, None)
}

/// Any of the shapes above, for the generators that decorate a shape (tags, lies, padding).
fn any_shape(rng: &mut Rng, d: &Draft, ids: &mut Ids, desc: &mut Vec<String>) -> Vec<Packet> {
    match (d.ip, rng.range(0, 2)) {
        (Ip::V4, 0) => v4_packets(rng, d, ids, &[], None),
        (Ip::V4, 1) => {
            let options = shapes::ipv4_options(rng, desc);
            v4_packets(rng, d, ids, &options, None)
        }
        (Ip::V4, _) => v4_fragmented(rng, d, ids, desc),
        (Ip::V6, 0) => v6_chain(rng, d, ids, desc),
        (Ip::V6, _) => v6_fragmented(rng, d, ids, 0, desc),
    }
}

/// Any shape, each packet in SRv6 to the server as the last segment: the kernel decapsulates
/// each and goes on with the inner packet (reassembly included) where native XDP does not look.
fn srv6(rng: &mut Rng, d: &Draft, ids: &mut Ids, desc: &mut Vec<String>) -> Vec<Vec<u8>> {
    let packets = any_shape(rng, d, ids, desc);
    let inner_next = match d.ip {
        Ip::V4 => proto::IPIP,
        Ip::V6 => proto::IPV6,
    };
    let IpAddr::V6(outer_src) = lab::source(Ip::V6, d.origin, 0) else {
        unreachable!("IPv6 source")
    };
    desc.push("in srv6".into());
    packets
        .iter()
        .map(|p| {
            let outer = ipv6::srv6_encap(outer_src, SERVER_V6, inner_next, &p.bytes);
            lab::ethernet(&[], wire::ETH_P_IPV6, &outer)
        })
        .collect()
}

fn frames(ethertype: u16, packets: &[Packet], tags: &[Vec<Tag>]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .enumerate()
        .map(|(i, p)| {
            lab::ethernet(
                tags.get(i).map_or(&[][..], Vec::as_slice),
                ethertype,
                &p.bytes,
            )
        })
        .collect()
}

fn pick_generator(rng: &mut Rng) -> Generator {
    let total: usize = Generator::WEIGHTED.iter().map(|(_, w)| w).sum();
    let mut roll = rng.range(0, total - 1);
    for (generator, weight) in Generator::WEIGHTED {
        if roll < weight {
            return generator;
        }
        roll -= weight;
    }
    unreachable!("weights sum to {total}")
}

/// Case `index` of the campaign seeded with `seed`, tied to `token`.
pub fn generate(seed: u64, index: u64, token: u32, ids: &mut Ids) -> Case {
    let mut rng = Rng::for_case(seed, index);
    let generator = pick_generator(&mut rng);
    let ip = match generator {
        Generator::Ipv4Options | Generator::Ipv4Fragments => Ip::V4,
        Generator::Ipv6ExtChain | Generator::Ipv6Fragments => Ip::V6,
        _ if rng.chance(1, 2) => Ip::V4,
        _ => Ip::V6,
    };
    let d = draft(&mut rng, ip, token);
    let mut desc = Vec::new();
    let rng = &mut rng;
    let frames = match generator {
        Generator::Regression => unreachable!("regressions are named, not drawn"),
        Generator::Plain => {
            let packets = match ip {
                Ip::V4 => v4_packets(rng, &d, ids, &[], None),
                Ip::V6 => v6_packets(&d, &V6Chain::default(), None),
            };
            frames(d.ethertype(), &packets, &[])
        }
        Generator::Ipv4Options => {
            let options = shapes::ipv4_options(rng, &mut desc);
            let packets = if rng.chance(1, 2) {
                let pieces = shapes::fragment_layout(rng, d.segment.len(), None, &mut desc);
                v4_packets(rng, &d, ids, &options, Some(&pieces))
            } else {
                v4_packets(rng, &d, ids, &options, None)
            };
            frames(d.ethertype(), &packets, &[])
        }
        Generator::Ipv4Fragments => {
            let packets = v4_fragmented(rng, &d, ids, &mut desc);
            frames(d.ethertype(), &packets, &[])
        }
        Generator::Ipv6ExtChain => {
            let packets = v6_chain(rng, &d, ids, &mut desc);
            frames(d.ethertype(), &packets, &[])
        }
        Generator::Ipv6Fragments => {
            let min_exts = if rng.chance(1, 2) { 2 } else { 0 };
            let packets = v6_fragmented(rng, &d, ids, min_exts, &mut desc);
            frames(d.ethertype(), &packets, &[])
        }
        Generator::VlanTags => {
            let packets = any_shape(rng, &d, ids, &mut desc);
            let tags: Vec<Vec<Tag>> = packets
                .iter()
                .map(|_| {
                    let n = rng.range(1, MAX_TAGS);
                    shapes::priority_tags(rng, n)
                })
                .collect();
            desc.push(format!(
                "tags[{}]",
                tags.iter()
                    .map(|t| t.len().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            frames(d.ethertype(), &packets, &tags)
        }
        Generator::LengthLie => length_lie(rng, &d, ids, &mut desc),
        Generator::Srv6Decap => srv6(rng, &d, ids, &mut desc),
        Generator::Padding => {
            let packets = any_shape(rng, &d, ids, &mut desc);
            let mut out = frames(d.ethertype(), &packets, &[]);
            let to_minimum = rng.chance(1, 2);
            for f in &mut out {
                let len = if to_minimum {
                    f.len().max(ETH_MIN_FRAME)
                } else {
                    f.len() + rng.range(1, 64)
                };
                f.resize(len, 0);
            }
            desc.push(if to_minimum { "pad:min60" } else { "pad:zeros" }.into());
            out
        }
    };
    Case {
        id: CaseId::Seeded { seed, index },
        generator,
        ip,
        origin: d.origin,
        transport: d.transport,
        src: d.src,
        src_port: d.src_port,
        dst_port: d.dst_port,
        tcp_flags: d.tcp_flags,
        token,
        shape: desc.join(" "),
        frames,
    }
}

/// Trailing bytes after the declared end of some packets, biased to first fragments that end
/// inside the header chain or the transport header (where a parser reading the frame instead
/// of the packet would read the attacker's bytes as headers).
fn length_lie(rng: &mut Rng, d: &Draft, ids: &mut Ids, desc: &mut Vec<String>) -> Vec<Vec<u8>> {
    let packets = match d.ip {
        Ip::V6 if rng.chance(3, 4) => v6_fragmented(rng, d, ids, 2, desc),
        Ip::V4 if rng.chance(2, 3) => v4_fragmented(rng, d, ids, desc),
        _ => any_shape(rng, d, ids, desc),
    };
    let mut out = frames(d.ethertype(), &packets, &[]);
    let all = rng.chance(1, 4);
    for (frame, p) in out.iter_mut().zip(&packets) {
        if p.first || all {
            frame.extend(shapes::trailer(rng, p.chain_end, UNPROTECTED_PORT, desc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_reproducible_up_to_ids() {
        for index in 0..300 {
            let a = generate(42, index, 1, &mut Ids::new(1));
            let b = generate(42, index, 1, &mut Ids::new(1));
            assert_eq!(a.frames, b.frames, "{}", a.summary());
            assert!(!a.frames.is_empty());
            assert!(a.frames.iter().all(|f| f.len() <= 1514), "{}", a.summary());
        }
    }

    #[test]
    fn every_generator_is_drawn() {
        let mut seen = std::collections::BTreeSet::new();
        let mut ids = Ids::new(0);
        for index in 0..500 {
            seen.insert(generate(7, index, 0, &mut ids).generator);
        }
        assert_eq!(seen.len(), Generator::WEIGHTED.len());
    }
}
