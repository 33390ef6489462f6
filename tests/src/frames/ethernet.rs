//! The link layer: MAC addresses, any stack of 802.1Q / 802.1ad tags (outermost first), the
//! EtherType; and the one non-IP body the tests need, an ARP request.

use serve_guard_common::wire;

/// Destination and source MAC of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Macs {
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// The MACs of the in-process frames (BPF_PROG_TEST_RUN reads neither).
pub const TEST_MACS: Macs = Macs {
    dst: [0x02, 0, 0, 0, 0, 0x02],
    src: [0x02, 0, 0, 0, 0, 0x01],
};

/// `mac` as `ip link` writes it: `02:00:00:00:00:01`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The VID is the low 12 bits of the TCI; DEI and priority (PCP) sit above it.
pub const VID_MASK: u16 = 0x0fff;
/// The PCP field of a TCI: its top 3 bits.
pub const PCP_SHIFT: u16 = 13;

/// One VLAN tag as it appears on the wire: TPID and the whole TCI (priority, DEI, VLAN id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub tpid: u16,
    pub tci: u16,
}

impl Tag {
    /// A tag for VLAN `vid`, priority 0.
    pub const fn vlan(tpid: u16, vid: u16) -> Self {
        Self { tpid, tci: vid }
    }

    /// A priority tag: VLAN id 0, priority `pcp` (0-7).
    pub const fn priority(tpid: u16, pcp: u8) -> Self {
        Self {
            tpid,
            tci: (pcp as u16) << PCP_SHIFT,
        }
    }
}

/// The Ethernet header: `macs`, the tags (outermost first), then `ethertype`.
pub fn header(macs: &Macs, tags: &[Tag], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(wire::ETH_HLEN + tags.len() * wire::VLAN_HLEN);
    f.extend_from_slice(&macs.dst);
    f.extend_from_slice(&macs.src);
    for tag in tags {
        f.extend_from_slice(&tag.tpid.to_be_bytes());
        f.extend_from_slice(&tag.tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A whole frame: [`header`] then `payload`.
pub fn frame(macs: &Macs, tags: &[Tag], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = header(macs, tags, ethertype);
    f.extend_from_slice(payload);
    f
}

/// An ARP request (Ethernet, IPv4) from `macs.src` for 198.18.0.2, as 198.18.0.1 asks.
pub fn arp_request(macs: &Macs) -> Vec<u8> {
    const HTYPE_ETHERNET: u16 = 1;
    const OP_REQUEST: u16 = 1;
    const HLEN: u8 = 6;
    const PLEN: u8 = 4;
    let mut a = Vec::new();
    a.extend_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    a.extend_from_slice(&wire::ETH_P_IPV4.to_be_bytes());
    a.extend_from_slice(&[HLEN, PLEN]);
    a.extend_from_slice(&OP_REQUEST.to_be_bytes());
    a.extend_from_slice(&macs.src);
    a.extend_from_slice(&[198, 18, 0, 1]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[198, 18, 0, 2]);
    a
}
