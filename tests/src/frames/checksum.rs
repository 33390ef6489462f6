//! The Internet checksum (RFC 1071): the IPv4 header's, and TCP's and UDP's over the
//! pseudo-header. A receiving kernel verifies both, so a frame meant to be delivered must carry
//! them right or it is dropped for a reason the test did not choose.

use std::net::IpAddr;

/// RFC 1071 one's-complement sum, complemented: zero over bytes that carry a correct checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A transport segment's checksum with the pseudo-header of `src` and `dst` (RFC 768, 793,
/// 8200), over the whole segment: what the kernel checks once it has reassembled the datagram,
/// whatever fragments carried it.
pub fn transport(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + segment.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            data.extend_from_slice(&s.octets());
            data.extend_from_slice(&d.octets());
            data.extend_from_slice(&[0, protocol]);
            data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            data.extend_from_slice(&s.octets());
            data.extend_from_slice(&d.octets());
            data.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            data.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed address families {src} -> {dst}"),
    }
    data.extend_from_slice(segment);
    internet_checksum(&data)
}
