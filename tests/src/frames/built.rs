//! A frame as bytes plus where its headers start: what every builder assembles, and what the
//! lying generators edit afterwards (a declared length, a version nibble, a cut).

use super::ethernet::{self, Macs, Tag};
use super::{ipv4, ipv6};
use serve_guard_common::wire;

/// Offsets of the layers of a built frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Start of the IP (or ARP) header, after the Ethernet header and tags.
    pub l3: usize,
    /// Start of the transport header (= `headers` for non-IP frames).
    pub l4: usize,
    /// End of the transport header: the full header stack.
    pub headers: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// A frame and where its headers start.
#[derive(Clone, Debug)]
pub struct Built {
    pub frame: Vec<u8>,
    pub layout: Layout,
    pub ip: Option<IpVersion>,
    /// Where each header after the link layer starts (the IP header, every extension header,
    /// the transport header) and where the transport header ends: the cuts and lies aim at and
    /// around these.
    pub boundaries: Vec<usize>,
}

impl Built {
    /// `header` then `segment`, whose first `l4_header_len` bytes are the transport header;
    /// the total length true.
    pub fn ipv4(
        macs: &Macs,
        tags: &[Tag],
        header: &ipv4::Header,
        segment: &[u8],
        l4_header_len: usize,
    ) -> Self {
        let mut frame = ethernet::header(macs, tags, wire::ETH_P_IPV4);
        let l3 = frame.len();
        frame.extend(header.packet(segment));
        let l4 = l3 + header.header_len();
        Self::ip(frame, IpVersion::V4, vec![l3], l4, l4_header_len)
    }

    /// `header`, the extension `chain` linked in front of `protocol`, then `segment` (its first
    /// `l4_header_len` bytes the transport header); the payload length true.
    pub fn ipv6(
        macs: &Macs,
        tags: &[Tag],
        header: &ipv6::Header,
        chain: &[ipv6::Ext],
        protocol: u8,
        segment: &[u8],
        l4_header_len: usize,
    ) -> Self {
        let (first, mut payload) = ipv6::link_chain(chain, protocol);
        payload.extend_from_slice(segment);
        let mut frame = ethernet::header(macs, tags, wire::ETH_P_IPV6);
        let l3 = frame.len();
        frame.extend(header.bytes(first, payload.len() as u16));
        let mut boundaries = vec![l3];
        let mut at = frame.len();
        for ext in chain {
            boundaries.push(at);
            at += ext.bytes.len();
        }
        frame.extend(payload);
        Self::ip(frame, IpVersion::V6, boundaries, at, l4_header_len)
    }

    fn ip(
        frame: Vec<u8>,
        ip: IpVersion,
        mut boundaries: Vec<usize>,
        l4: usize,
        l4_header_len: usize,
    ) -> Self {
        let headers = l4 + l4_header_len;
        boundaries.extend([l4, headers]);
        Self {
            layout: Layout {
                l3: boundaries[0],
                l4,
                headers,
            },
            frame,
            ip: Some(ip),
            boundaries,
        }
    }

    /// A frame of any other EtherType: `body`, its first `header_len` bytes a header.
    pub fn other(
        macs: &Macs,
        tags: &[Tag],
        ethertype: u16,
        body: &[u8],
        header_len: usize,
    ) -> Self {
        let frame = ethernet::frame(macs, tags, ethertype, body);
        let l3 = frame.len() - body.len();
        Self {
            frame,
            layout: Layout {
                l3,
                l4: l3 + header_len,
                headers: l3 + header_len,
            },
            ip: None,
            boundaries: vec![l3],
        }
    }

    /// Writes the IP header's length field with `value` (IPv4: the total length, IPv6: the
    /// payload length), the IPv4 checksum kept right so that only the length lies. A field
    /// that is not in the frame (cut before it) is left alone.
    pub fn set_declared_len(&mut self, value: u16) {
        let Some(ip) = self.ip else { return };
        let l3 = self.layout.l3;
        let at = l3
            + match ip {
                IpVersion::V4 => wire::IPV4_TOTAL_LEN_OFFSET,
                IpVersion::V6 => wire::IPV6_PAYLOAD_LEN_OFFSET,
            };
        if at + 2 <= self.frame.len() {
            self.frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        self.refresh_ipv4_checksum();
    }

    /// Writes the IP header's length field so that it declares `end` as the packet's end.
    pub fn declare_end(&mut self, end: usize) {
        let l3 = self.layout.l3;
        let len = match self.ip {
            None => return,
            Some(IpVersion::V4) => end.saturating_sub(l3),
            Some(IpVersion::V6) => end.saturating_sub(l3 + wire::IPV6_HLEN),
        };
        self.set_declared_len(len as u16);
    }

    /// Rewrites the IP header's first byte (version and, for IPv4, IHL).
    pub fn set_first_byte(&mut self, value: u8) {
        self.frame[self.layout.l3] = value;
        self.refresh_ipv4_checksum();
    }

    fn refresh_ipv4_checksum(&mut self) {
        let l3 = self.layout.l3;
        if self.ip == Some(IpVersion::V4) && l3 + wire::IPV4_MIN_HLEN <= self.frame.len() {
            ipv4::refresh_checksum(&mut self.frame[l3..]);
        }
    }
}
