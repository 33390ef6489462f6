//! The filter at TC ingress, where it runs beside an XDP program outside libxdp's protocol
//! (issue 20): the same packets as the XDP cases at the smallest list, through the classifier,
//! against an empty classifier measured the same way. BPF_PROG_TEST_RUN builds one skb per call
//! and runs the program `repeat` times on it, so the TC floor is the skb hook's own call cost,
//! as the XDP floor is the XDP hook's.

use super::{FLOOR, PROTECTED_CASES, Scenario, Target, find};
use anyhow::{Context as _, Result};
use serve_guard_tests::program::Hook;
use std::fmt::Write as _;

pub const TC_FLOOR: &str = "empty TC classifier (TC floor)";
pub const UNPROTECTED: &str = "filter at TC ingress: v4 TCP to an unprotected port";
/// The XDP cases' names at TC, in the order of [`PROTECTED_CASES`].
pub const PROTECTED: [&str; 4] = [
    "filter at TC ingress: protected port, v4 allowed",
    "filter at TC ingress: protected port, v4 denied",
    "filter at TC ingress: protected port, v6 allowed",
    "filter at TC ingress: protected port, v6 denied",
];
/// The XDP scenario each TC scenario is compared with.
const XDP_UNPROTECTED: &str = "filter: v4 TCP to an unprotected port";

/// Whether `target` runs at the TC hook (its floor is the TC floor).
pub fn is_tc(target: &Target) -> bool {
    target.hook() == Hook::Tc
}

pub fn report(scenarios: &[Scenario], size: usize) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "\n## At TC ingress\n")?;
    writeln!(
        out,
        "The same filter as a TC classifier, which is where it runs on an interface whose XDP \
         hook holds a program outside libxdp's protocol (tcx or clsact, docs/operations.md), \
         at {size} CIDRs, beside the XDP program on the same packets in the same run. Each \
         hook's floor is its empty program measured the same way: the skb hook's call costs \
         more than XDP's, and that is paid by any TC program. Not in either figure: on a real \
         interface a packet reaches TC only after the kernel has built its skb, which XDP runs \
         before, so a drop at TC saves the host less than one at XDP.\n"
    )?;
    writeln!(
        out,
        "| packet | XDP ns (above its floor) | TC ns (above its floor) | TC - XDP above the floors |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let xdp_floor = find(scenarios, FLOOR, None).context("XDP floor")?.median();
    let tc_floor = find(scenarios, TC_FLOOR, None)
        .context("TC floor")?
        .median();
    let pairs = std::iter::once((XDP_UNPROTECTED, UNPROTECTED))
        .chain(PROTECTED_CASES.iter().copied().zip(PROTECTED));
    for (xdp, tc) in pairs {
        let x = find(scenarios, xdp, Some(size))
            .context("XDP case")?
            .median();
        let t = find(scenarios, tc, Some(size)).context("TC case")?.median();
        let (x_above, t_above) = (
            i64::from(x) - i64::from(xdp_floor),
            i64::from(t) - i64::from(tc_floor),
        );
        writeln!(
            out,
            "| {} | {x} ({x_above}) | {t} ({t_above}) | {} |",
            tc.trim_start_matches("filter at TC ingress: "),
            t_above - x_above
        )?;
    }
    writeln!(
        out,
        "\nFloors: XDP {xdp_floor} ns, TC {tc_floor} ns (one frame repeated, median)."
    )?;
    Ok(out)
}
