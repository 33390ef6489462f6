//! The decision table (fail closed): what a parsed packet gets, before audit mode.

use aya_ebpf::EbpfContext;
use serve_guard_common::{Family, PORT_GUARDED, PORT_OPEN, PortValue, Reason};

use crate::{
    allow, guard,
    maps::PORTS,
    parse::{Frame, Ip, Parsed, Transport},
};

#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, frame: &Frame, parsed: &Parsed) -> (Reason, Family) {
    match parsed {
        // No source known, so none is trusted.
        Parsed::Unparseable(family) => (Reason::DropUnparseable, *family),
        Parsed::NotIp => (Reason::PassUnprotected, Family::Other),
        Parsed::Ip { ip, transport } => {
            let family = ip.family();
            let reason = match *transport {
                Transport::Unprotected => Reason::PassUnprotected,
                Transport::Port(ports) => match port_class(ports.dst_port()) {
                    // The cheap path: an open port costs no allow-list lookup.
                    PORT_OPEN => Reason::PassUnprotected,
                    PORT_GUARDED => {
                        // Read before the walk, not after it (`Key::read` says why).
                        let key = guard::Key::read(frame, ip, &ports);
                        if is_allowed(ip) {
                            Reason::PassAllowed
                        } else {
                            guard::judge(ctx, key.as_ref())
                        }
                    }
                    _ if is_allowed(ip) => Reason::PassAllowed,
                    // Strict, or a value this program does not know: nothing from outside.
                    _ => Reason::DropOutsideVpc,
                },
                // Cannot tell the port: only an allowed source may pass.
                Transport::Unknown if is_allowed(ip) => Reason::PassAllowed,
                Transport::Unknown => Reason::DropUnparseable,
            };
            (reason, family)
        }
    }
}

/// The port's class; a missing table (the map's only element, so never in practice) reads as
/// strict.
#[inline(always)]
fn port_class(port: u16) -> PortValue {
    // The port comes out of a byte swap, and verifiers before ~6.8 lose a value's bounds through
    // one ("math between map_value pointer and register with unbounded min value"). Hidden from
    // the optimiser, the comparison below stays in the program and bounds the index again.
    let index = core::hint::black_box(usize::from(port));
    match PORTS.get(0) {
        Some(table) if index < table.classes.len() => table.classes[index],
        _ => serve_guard_common::PORT_PROTECTED,
    }
}

#[inline(always)]
fn is_allowed(ip: &Ip) -> bool {
    match *ip {
        Ip::V4 { src, .. } => allow::allowed_v4(src),
        Ip::V6 { src, .. } => allow::allowed_v6(src),
    }
}

#[inline(always)]
pub fn is_drop(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::DropOutsideVpc | Reason::DropUnparseable | Reason::DropGuarded
    )
}
