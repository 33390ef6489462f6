//! The decision table (fail closed): what a parsed packet gets, before audit mode.

use serve_guard_common::{Family, PORT_PROTECTED, Reason};

use crate::{
    allow,
    maps::PORTS,
    parse::{Parsed, Source, Transport},
};

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
                // The cheap path: only a protected port costs an allow-list lookup.
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
        Source::V4(addr) => allow::allowed_v4(addr),
        Source::V6(addr) => allow::allowed_v6(addr),
    }
}

#[inline(always)]
pub fn is_drop(reason: Reason) -> bool {
    matches!(reason, Reason::DropOutsideVpc | Reason::DropUnparseable)
}
