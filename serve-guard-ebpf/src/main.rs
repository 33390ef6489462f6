//! serve-guard's XDP program (and the same filter as a TC classifier): drops packets from sources outside the VPC allow-list to Ray
//! Serve's ports (strict) and connection attempts to the rest of the node (guarded), fail
//! closed. Maps and layouts: serve-guard-common.
// no_std and no_main for the kernel only: on the host the crate builds as a placeholder binary,
// so that `cargo clippy --workspace` and `cargo build --workspace` take it in (as aya's own
// eBPF test programs do). The agent embeds the bpfel build.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![deny(unsafe_code)]
// `#[classifier]`'s generated entry point takes the kernel's raw skb pointer.
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's #[classifier] entry point takes a raw pointer"
)]

mod allow;
#[allow(unsafe_code, reason = "per-CPU counter slots through a raw pointer")]
mod counters;
#[allow(unsafe_code, reason = "the socket-lookup helpers and their C union")]
mod guard;
mod maps;
#[allow(unsafe_code, reason = "packet reads the verifier bounds-checks")]
mod parse;
mod verdict;

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use serve_guard_common::{Reason, TC_PULL_LEN};

use crate::parse::Frame;

// Inlined into the entry point the macro generates: as a separate function LLVM passes the
// packet pointers in a form (pkt_end shifted) the verifier refuses.
#[xdp]
#[inline(always)]
pub fn serve_guard(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data());
    if filter(&ctx, &frame) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The same filter at TC ingress (tcx or a clsact filter in direct-action mode), where the
/// kernel hands over an skb: data starts at the MAC header as in XDP, and the outer VLAN tag, if
/// any, was already moved out of the packet into the skb (the rest parses the same).
#[classifier]
#[inline(always)]
pub fn serve_guard_tc(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Only when the headers may lie outside the linear part: pulling can copy the head of a
    // cloned skb (a packet socket is listening), which costs on every packet.
    let want = len.min(TC_PULL_LEN) as usize;
    if ctx.data_end() - ctx.data() < want {
        // On failure the readable part stays as it was: a header cut short, judged fail closed.
        let _ = ctx.pull_data(want as u32);
    }
    let frame = Frame::new(ctx.data(), ctx.data_end(), len as usize);
    if filter(&ctx, &frame) {
        #[allow(
            clippy::unnecessary_cast,
            reason = "u32 in the bpf target's bindings, i32 in the host's"
        )]
        let shot = TC_ACT_SHOT as i32;
        shot
    } else {
        // Not TC_ACT_OK: the next program at the hook (tcx's TCX_NEXT, clsact's next filter)
        // still runs, as the XDP dispatcher's chain does after our XDP_PASS.
        TC_ACT_UNSPEC
    }
}

/// Parses, decides, counts and logs one packet; true when it is to be dropped.
#[inline(always)]
fn filter<C: EbpfContext>(ctx: &C, frame: &Frame) -> bool {
    let (reason, family) = verdict::decide(ctx, frame, &parse::parse(frame));
    // Fast path: most traffic is not for Serve; it costs neither the config read nor a log.
    if reason == Reason::PassUnprotected {
        counters::count(reason, family, frame.len());
        return false;
    }
    // Read once, only here. A missing entry reads as the default: enforcing, no logging.
    let config = maps::CONFIG.get(0).copied().unwrap_or_default();
    let (counted, drop) = if !verdict::is_drop(reason) {
        (reason, false)
    } else if config.audit() {
        (Reason::AuditWouldDrop, false)
    } else {
        (reason, true)
    };
    counters::count(counted, family, frame.len());
    if config.log() {
        debug!(
            ctx,
            "serve-guard: {} {} ({} bytes) counted as {}",
            reason.name(),
            family.name(),
            frame.len(),
            counted.name()
        );
    }
    drop
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!("the XDP program runs in the kernel: the agent embeds its bpfel-unknown-none build");
}

#[allow(unsafe_code, reason = "the license section the kernel reads")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// libxdp's run configuration (see `serve_guard_common::run_config`): run priority, and the chain
/// goes on after XDP_PASS only (what the filter drops, no program after it sees). Only its BTF
/// matters: libxdp reads the array lengths; the pointers are never followed.
#[repr(C)]
#[allow(
    non_snake_case,
    reason = "libxdp matches the field names with the XDP action names"
)]
pub struct XdpRunConfig {
    priority: *const [u32; serve_guard_common::run_config::DEFAULT_PRIORITY],
    XDP_PASS: *const [u32; 1],
}

#[allow(unsafe_code, reason = "a constant of null pointers, never read")]
// SAFETY: the value is never read or written at run time; it exists for its BTF.
unsafe impl Sync for XdpRunConfig {}

#[allow(unsafe_code, reason = "the section libxdp reads")]
#[allow(
    non_upper_case_globals,
    reason = "libxdp looks the variable up as `_<program name>`"
)]
#[unsafe(link_section = ".xdp_run_config")]
#[unsafe(no_mangle)]
#[used]
static _serve_guard: XdpRunConfig = XdpRunConfig {
    priority: core::ptr::null(),
    XDP_PASS: core::ptr::null(),
};
