//! serve-guard's XDP program: drops packets from sources outside the VPC allow-list to Ray
//! Serve's ports (strict) and connection attempts to the rest of the node (guarded), fail
//! closed. Maps and layouts: serve-guard-common.
#![no_std]
#![no_main]

mod allow;
mod counters;
mod guard;
mod maps;
mod parse;
mod verdict;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use serve_guard_common::Reason;

use crate::parse::Frame;

// Inlined into the entry point the macro generates: as a separate function LLVM passes the
// packet pointers in a form (pkt_end shifted) the verifier refuses.
#[xdp]
#[inline(always)]
pub fn serve_guard(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let (reason, family) = verdict::decide(&ctx, &parse::parse(&frame));
    // Fast path: most traffic is not for Serve; it costs neither the config read nor a log.
    if reason == Reason::PassUnprotected {
        counters::count(reason, family, frame.len());
        return xdp_action::XDP_PASS;
    }
    // Read once, only here. A missing entry reads as the default: enforcing, no logging.
    let config = maps::CONFIG.get(0).copied().unwrap_or_default();
    let (counted, action) = if !verdict::is_drop(reason) {
        (reason, xdp_action::XDP_PASS)
    } else if config.audit() {
        (Reason::AuditWouldDrop, xdp_action::XDP_PASS)
    } else {
        (reason, xdp_action::XDP_DROP)
    };
    counters::count(counted, family, frame.len());
    if config.log() {
        debug!(
            &ctx,
            "serve-guard: {} {} ({} bytes) counted as {}",
            reason.name(),
            family.name(),
            frame.len(),
            counted.name()
        );
    }
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
