//! The decision table (fail closed): what a parsed packet gets, before audit mode.

use aya_ebpf::maps::lpm_trie::Key;
use serve_guard_common::{Family, PORT_PROTECTED, Reason, wire};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, PORTS},
    parse::{Parsed, Source, Transport},
};

/// Prefix length of a full address: the LPM lookup key for a single source.
const V4_BITS: u32 = (wire::IPV4_ADDR_LEN * 8) as u32;
const V6_BITS: u32 = (wire::IPV6_ADDR_LEN * 8) as u32;

#[inline(always)]
pub fn decide(parsed: &Parsed) -> (Reason, Family) {
    match parsed {
        // No source known, so none is trusted.
        Parsed::Unparseable(family) => (Reason::DropUnparseable, *family),
        Parsed::NotIp => (Reason::PassUnprotected, Family::Other),
        Parsed::Ip { src, transport } => {
            let family = src.family();
            let reason = match *transport {
                Transport::Unprotected => Reason::PassUnprotected,
                // The cheap path: only a protected port costs an LPM lookup.
                Transport::Port(port) if !is_protected(port) => Reason::PassUnprotected,
                Transport::Port(_) if is_allowed(src) => Reason::PassAllowed,
                Transport::Port(_) => Reason::DropOutsideVpc,
                // Cannot tell the port: only an allowed source may pass.
                Transport::Unknown if is_allowed(src) => Reason::PassAllowed,
                Transport::Unknown => Reason::DropUnparseable,
            };
            (reason, family)
        }
    }
}

#[inline(always)]
fn is_protected(port: u16) -> bool {
    PORTS.get(port as u32).copied() == Some(PORT_PROTECTED)
}

#[inline(always)]
fn is_allowed(src: &Source) -> bool {
    match *src {
        Source::V4(addr) => ALLOW_V4.get(&Key::new(V4_BITS, addr)).is_some(),
        Source::V6(addr) => ALLOW_V6.get(&Key::new(V6_BITS, addr)).is_some(),
    }
}

#[inline(always)]
pub fn is_drop(reason: Reason) -> bool {
    matches!(reason, Reason::DropOutsideVpc | Reason::DropUnparseable)
}
