//! Named regression cases: frames that once got through (or nearly), sent at the start of every
//! campaign and by their own end-to-end tests. Each is built from both sides of the allow-list:
//! from outside it must never reach a protected port, from inside it must be delivered exactly
//! as without the filter.

use super::case::{Case, CaseId, Generator, Origin, Transport};
use super::generate::{Body, Draft, Ids};
use super::lab;
use crate::frames::ipv6::{self, Ext};
use crate::frames::{ip_packet, tcp};
use crate::topology::{Ip, SERVER_V6};
use serve_guard_common::wire::{self, proto};
use std::net::IpAddr;

/// The source port the issue's frames used.
const ISSUE_SRC_PORT: u16 = 40_000;
/// The issue's destination: the first protected port.
const ISSUE_DST_PORT: u16 = lab::PROTECTED_PORTS[0];
/// What the issue's first fragment carried past its declared payload: "no next header".
const ISSUE_TRAILER: [u8; 2] = [proto::NONE, 0];
/// The SRv6 cases' outer source is the origin's first address, the inner one its second: the
/// delivery shows the inner one, on the same side of the allow-list.
const SRV6_OUTER_SRC: usize = 0;
const SRV6_INNER_SRC: usize = 1;

/// A named case's name and builder.
pub struct Named {
    pub name: &'static str,
    pub build: fn(origin: Origin, token: u32, ids: &mut Ids) -> Case,
}

/// Every named regression case.
pub const ALL: [Named; 5] = [
    Named {
        name: "issue7_ipv6_fragment_trailer_udp",
        build: |origin, token, ids| issue7(Transport::Udp, origin, token, ids),
    },
    Named {
        name: "issue7_ipv6_fragment_trailer_tcp",
        build: |origin, token, ids| issue7(Transport::Tcp, origin, token, ids),
    },
    Named {
        name: "srv6_srh_decap_inner_v4_udp",
        build: |origin, token, ids| srv6_decap(2, Ip::V4, Transport::Udp, origin, token, ids),
    },
    Named {
        name: "srv6_srh_decap_inner_v4_tcp",
        build: |origin, token, ids| srv6_decap(3, Ip::V4, Transport::Tcp, origin, token, ids),
    },
    Named {
        name: "srv6_srh_decap_inner_v6_udp",
        build: |origin, token, ids| srv6_decap(4, Ip::V6, Transport::Udp, origin, token, ids),
    },
];

/// The builder of the case named `name`.
pub fn find(name: &str) -> Option<&'static Named> {
    ALL.iter().find(|n| n.name == name)
}

/// Issue 7's bypass: two destination-options headers and the transport, fragmented after the
/// first options header; the first fragment declares a 16-byte payload (fragment header and
/// the first options header) and carries 2 bytes more, `3b 00`, which a parser reading to the
/// end of the frame takes for a header saying "nothing follows".
fn issue7(transport: Transport, origin: Origin, token: u32, ids: &mut Ids) -> Case {
    let d = plain_draft(Ip::V6, transport, origin, 0, token);
    // Two destination-options headers of 8 bytes: PadN with 4 zero bytes.
    let exts = [0, 0].map(|units| Ext::padded(proto::DSTOPTS, units));
    let (first, mut fragmentable) = ipv6::link_chain(&exts, d.protocol());
    fragmentable.extend_from_slice(&d.segment);
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (d.src, d.dst) else {
        unreachable!("IPv6 draft")
    };
    let id = ids.v6();
    let cut = wire::IPV6_EXT_UNIT;
    let mut f1 = ipv6::fragment_header(first, 0, true, id);
    f1.extend_from_slice(&fragmentable[..cut]);
    let mut f1 = ipv6::packet(src, dst, proto::FRAGMENT, &f1);
    f1.extend_from_slice(&ISSUE_TRAILER);
    let mut f2 = ipv6::fragment_header(first, cut, false, id);
    f2.extend_from_slice(&fragmentable[cut..]);
    let f2 = ipv6::packet(src, dst, proto::FRAGMENT, &f2);
    let name = match transport {
        Transport::Udp => ALL[0].name,
        Transport::Tcp => ALL[1].name,
    };
    Case {
        id: CaseId::Named(name),
        generator: Generator::Regression,
        ip: Ip::V6,
        origin,
        transport,
        src: d.src,
        src_port: d.src_port,
        dst_port: d.dst_port,
        tcp_flags: d.tcp_flags,
        token,
        shape: "frag[0-8 +trailer 3b00, 8-end] exts[|frag|dst8/dst8]".into(),
        frames: [f1, f2]
            .iter()
            .map(|p| lab::ethernet(&[], wire::ETH_P_IPV6, p))
            .collect(),
    }
}

/// The issue's datagram, without filler or options, from the origin's `src_index`-th source.
fn plain_draft(
    ip: Ip,
    transport: Transport,
    origin: Origin,
    src_index: usize,
    token: u32,
) -> Draft {
    let body = match transport {
        Transport::Udp => Body::Udp {
            filler: Vec::new(),
            zero_checksum: false,
        },
        Transport::Tcp => Body::Tcp {
            options: Vec::new(),
            data: Vec::new(),
            flags: tcp::SYN,
        },
    };
    Draft::new(
        ip,
        origin,
        transport,
        src_index,
        (ISSUE_SRC_PORT, ISSUE_DST_PORT),
        token,
        body,
    )
}

/// The SRv6 decapsulation bypass: a whole IP packet (`inner`) in SRv6 to the server, the last
/// segment ([`ipv6::srv6_encap`]); native XDP sees only the outer packet. `at`: the case's
/// index in [`ALL`].
fn srv6_decap(
    at: usize,
    inner: Ip,
    transport: Transport,
    origin: Origin,
    token: u32,
    ids: &mut Ids,
) -> Case {
    let d = plain_draft(inner, transport, origin, SRV6_INNER_SRC, token);
    let inner_next = match inner {
        Ip::V4 => proto::IPIP,
        Ip::V6 => proto::IPV6,
    };
    let (_, inner_packet) = ip_packet(d.src, d.dst, ids.v4_of(d.src), d.protocol(), &d.segment);
    let IpAddr::V6(outer_src) = lab::source(Ip::V6, origin, SRV6_OUTER_SRC) else {
        unreachable!("IPv6 source")
    };
    let outer = ipv6::srv6_encap(outer_src, SERVER_V6, inner_next, &inner_packet);
    Case {
        id: CaseId::Named(ALL[at].name),
        generator: Generator::Regression,
        ip: inner,
        origin,
        transport,
        src: d.src,
        src_port: d.src_port,
        dst_port: d.dst_port,
        tcp_flags: d.tcp_flags,
        token,
        shape: format!(
            "srv6 from {outer_src}: exts[srh type 4 segleft 0 segment server] then {}",
            inner.name()
        ),
        frames: vec![lab::ethernet(&[], wire::ETH_P_IPV6, &outer)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue7_frames_have_the_issues_layout() {
        let case = (ALL[0].build)(Origin::Outside, 7, &mut Ids::new(0));
        let f1 = &case.frames[0][wire::ETH_HLEN..];
        // Payload length 16, fragment header then dstopts (next: dstopts), 2 bytes past it.
        assert_eq!(u16::from_be_bytes([f1[4], f1[5]]), 16);
        assert_eq!(f1[6], proto::FRAGMENT);
        assert_eq!(f1[40], proto::DSTOPTS);
        assert_eq!(f1[48], proto::DSTOPTS);
        assert_eq!(&f1[56..], &ISSUE_TRAILER);
        let f2 = &case.frames[1][wire::ETH_HLEN..];
        // Second fragment: offset 1 unit, last; dstopts (next: UDP), UDP header to 8000.
        assert_eq!(u16::from_be_bytes([f2[42], f2[43]]), 1 << 3);
        assert_eq!(f2[48], proto::UDP);
        assert_eq!(u16::from_be_bytes([f2[58], f2[59]]), 8000);
    }

    #[test]
    fn srv6_frames_carry_the_inner_packet_behind_a_final_srh() {
        let case = (ALL[2].build)(Origin::Outside, 7, &mut Ids::new(0));
        let p = &case.frames[0][wire::ETH_HLEN..];
        assert_eq!(p[wire::IPV6_NEXT_HEADER_OFFSET], proto::ROUTING);
        let srh = &p[wire::IPV6_HLEN..];
        // Next header IPv4, 2 units (one segment), type 4, segments left 0, last entry 0.
        assert_eq!(&srh[..5], &[proto::IPIP, 2, ipv6::SRH_ROUTING_TYPE, 0, 0]);
        assert_eq!(&srh[8..24], &SERVER_V6.octets());
        let inner = &srh[24..];
        assert_eq!(inner[0] >> 4, wire::IPV4_VERSION);
        assert_eq!(inner[wire::IPV4_PROTO_OFFSET], proto::UDP);
        assert!(!lab::allowed(case.src));
        let v6 = (ALL[4].build)(Origin::Inside, 7, &mut Ids::new(0));
        let p = &v6.frames[0][wire::ETH_HLEN..];
        assert_eq!(p[wire::IPV6_HLEN], proto::IPV6);
        assert!(lab::allowed(v6.src));
    }
}
