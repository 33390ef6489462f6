//! The one frame builder of the test crate: the verdict tables, the benchmark, the verdict
//! fuzzer and the wire fuzzer all write their frames with it. Layered as a frame is:
//!
//! - [`ethernet`]: MACs, 802.1Q / 802.1ad tags, the EtherType; an ARP request.
//! - [`ipv4`]: the header with every field settable (options, fragments, a lying IHL), the
//!   checksum fix-up after an edit.
//! - [`ipv6`]: the fixed header, extension headers as shapeable bytes, chains, fragment
//!   headers, SRv6.
//! - [`l4`]: TCP, UDP, the other port protocols' smallest headers, ICMP echo; TCP flags.
//! - [`checksum`]: RFC 1071, and TCP/UDP over the pseudo-header as a receiving kernel checks
//!   it (over the reassembled datagram, whatever fragments carry it).
//! - [`built`]: a frame with its layout and header boundaries, and the edits that make it lie
//!   (declared lengths, the version/IHL byte).
//! - [`builder`]: [`Frame`], the readable builder of the tables.
//! - [`hex`]: frames as hex text (findings, kept regression frames).
//!
//! Generators pick the values (what is random, what lies); these modules only write them, so a
//! field is written the same way whoever chose it.
//!
//! ```
//! use serve_guard_tests::frames::{Frame, Ext};
//! let bytes = Frame::ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
//!     .ext(Ext::HopByHop)
//!     .tcp(8000)
//!     .vlan_8021q(10)
//!     .build();
//! ```

pub mod builder;
pub mod built;
pub mod checksum;
pub mod ethernet;
pub mod hex;
pub mod ipv4;
pub mod ipv6;
pub mod l4;

pub use builder::{Ext, Frame, SRC_PORT};
pub use built::{Built, IpVersion, Layout};
pub use checksum::internet_checksum;
pub use ipv4::FRAG_UNIT;
pub use l4::tcp;

use serve_guard_common::wire;
use std::net::IpAddr;

/// A whole (unfragmented) IP packet from `src` to `dst` carrying `segment` as `protocol`, and
/// the EtherType it goes behind: IPv4 with don't-fragment and identification `v4_id`, or IPv6
/// without extension headers.
pub fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    v4_id: u16,
    protocol: u8,
    segment: &[u8],
) -> (u16, Vec<u8>) {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let datagram = ipv4::Datagram {
                src: s,
                dst: d,
                id: v4_id,
                protocol,
                tos: 0,
                dont_fragment: true,
            };
            (
                wire::ETH_P_IPV4,
                ipv4::fragment(&datagram, &[], 0, false, segment),
            )
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (wire::ETH_P_IPV6, ipv6::packet(s, d, protocol, segment)),
        _ => panic!("mixed address families {src} -> {dst}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serve_guard_common::wire::proto;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ipv4_tcp_layout() {
        let f = Frame::ipv4(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)).tcp(8000);
        let b = f.build();
        assert_eq!(&b[12..14], &wire::ETH_P_IPV4.to_be_bytes());
        assert_eq!(b[14], 0x45);
        assert_eq!(b[14 + 9], proto::TCP);
        assert_eq!(&b[14 + 12..14 + 16], &[198, 18, 0, 1]);
        assert_eq!(&b[34 + 2..34 + 4], &8000u16.to_be_bytes());
        assert_eq!(f.headers_len(), 14 + 20 + 20);
        // A correct checksum sums to zero over the header.
        assert_eq!(internet_checksum(&b[14..34]), 0);
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let f = Frame::ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
            .ext(Ext::HopByHop)
            .ext(Ext::Ah)
            .udp(9000)
            .vlan_8021ad(1)
            .vlan_8021q(2);
        let b = f.build();
        let l3 = 14 + 8;
        assert_eq!(b[l3 + 6], proto::HOPOPTS);
        assert_eq!(b[l3 + 40], proto::AH);
        assert_eq!(b[l3 + 48], proto::UDP);
        assert_eq!(b[l3 + 49], 4);
        assert_eq!(&b[l3 + 72 + 2..l3 + 72 + 4], &9000u16.to_be_bytes());
        let built = f.built();
        assert_eq!(
            built.boundaries,
            [l3, l3 + 40, l3 + 48, l3 + 72, l3 + 80],
            "the IP header, each extension header, the transport header and its end"
        );
        assert_eq!(
            built.layout,
            Layout {
                l3,
                l4: l3 + 72,
                headers: l3 + 80
            }
        );
    }

    #[test]
    fn truncate_cuts() {
        let f = Frame::arp().truncate(20);
        assert_eq!(f.build().len(), 20);
    }

    #[test]
    fn declared_lengths_lie_with_a_correct_checksum() {
        let mut b = Frame::ipv4(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2))
            .udp(1)
            .built();
        b.declare_end(14 + 20 + 4);
        assert_eq!(&b.frame[16..18], &24u16.to_be_bytes());
        assert_eq!(internet_checksum(&b.frame[14..34]), 0);
        let mut b = Frame::ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
            .udp(1)
            .built();
        b.set_declared_len(0);
        assert_eq!(&b.frame[18..20], &[0, 0]);
    }

    #[test]
    fn segment_checksums_verify_to_zero() {
        let (s, d) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
        let seg = l4::udp_datagram(s.into(), d.into(), (1, 2), b"odd", false);
        let mut pseudo = s.octets().to_vec();
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, proto::UDP, 0, seg.len() as u8]);
        pseudo.extend_from_slice(&seg);
        assert_eq!(internet_checksum(&pseudo), 0);
        let h = ipv4::Datagram {
            src: s,
            dst: d,
            id: 1,
            protocol: proto::UDP,
            tos: 0,
            dont_fragment: false,
        };
        let p = ipv4::fragment(&h, &[1, 1, 1, 0], 8, true, &seg);
        assert_eq!(internet_checksum(&p[..24]), 0);
        assert_eq!(p[0], 0x46);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), 0x2001);
    }

    #[test]
    fn chains_link_and_tcp_options_pad() {
        let e = |kind| ipv6::Ext {
            kind,
            bytes: vec![0xff; 8],
        };
        let (first, bytes) = ipv6::link_chain(&[e(proto::HOPOPTS), e(proto::DSTOPTS)], proto::TCP);
        assert_eq!(
            (first, bytes[0], bytes[8]),
            (proto::HOPOPTS, proto::DSTOPTS, proto::TCP)
        );
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let seg = l4::tcp_segment(
            a.into(),
            a.into(),
            (1, 2),
            (7, 0),
            tcp::SYN,
            &[2, 4, 5, 0xb4, 1],
            b"",
        );
        assert_eq!(seg.len(), 28);
        assert_eq!(seg[12] >> 4, 7);
    }

    #[test]
    fn hex_round_trips() {
        let b = Frame::arp().build();
        let text = hex::to_hex(&b);
        assert_eq!(
            hex::from_hex(&format!("{}\n  {}", &text[..10], &text[10..])),
            b
        );
    }
}
