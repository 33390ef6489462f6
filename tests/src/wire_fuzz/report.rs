//! The campaign's summary (frames per generator, deliveries, bypasses, over-blocks by class,
//! time and rate) and one file per finding: the case in words, what each sending showed, and
//! its frames in hex, enough to replay it without the generator.

use super::campaign::{Finding, Report};
use super::case::CaseId;
use super::lab::AttachMode;
use crate::frames::hex::to_hex;
use anyhow::{Context as _, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// At most this many findings are listed in the summary (all are written to files).
const LISTED_FINDINGS: usize = 20;

pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    let secs = r.elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "wire fuzz, seed {}, XDP {} mode: {} frames in {} cases, {} rounds, {:.1} s ({:.0} frames/s per lane)",
        r.seed,
        r.mode.map_or("?", AttachMode::name),
        r.frames,
        r.cases,
        r.rounds,
        secs,
        r.frames as f64 / secs.max(f64::EPSILON)
    );
    let _ = writeln!(
        out,
        "{:<16} {:>7} {:>7} {:>9} {:>9} {:>8} {:>7} {:>10} {:>10} {:>7} {:>6}",
        "generator",
        "cases",
        "frames",
        "baseline",
        "filtered",
        "blocked",
        "bypass",
        "overblock",
        "unexpected",
        "f-only",
        "indet"
    );
    for (g, s) in &r.per_generator {
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:>7} {:>9} {:>9} {:>8} {:>7} {:>10} {:>10} {:>7} {:>6}",
            g.name(),
            s.cases,
            s.frames,
            s.baseline_delivered,
            s.filtered_delivered,
            s.blocked,
            s.bypasses,
            s.over_blocks.values().sum::<u64>(),
            s.unexpected,
            s.filtered_only,
            s.indeterminate
        );
    }
    let _ = writeln!(
        out,
        "(baseline/filtered: cases the kernel delivered without/with the filter; blocked: outside \
         source to a port kept out (strict, or guarded: a SYN, or a listener or unconnected \
         socket), deliverable, kept out; f-only: delivered only with the filter, which \
         dropped a fragment that spoiled the datagram without it)"
    );
    let _ = writeln!(
        out,
        "from outside, by target (port class, TCP flags): cases, delivered without / with the filter"
    );
    for (target, t) in &r.outside {
        let _ = writeln!(
            out,
            "  {target:<32} {:>7} {:>7} {:>7}",
            t.cases, t.baseline, t.filtered
        );
    }
    let _ = writeln!(out, "over-blocks by design, by class:");
    let classes = r.over_blocks();
    if classes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (class, n) in classes {
        let _ = writeln!(out, "  {class}: {n}");
    }
    let _ = writeln!(
        out,
        "bypasses: {}, unexpected over-blocks: {}, indeterminate: {}, determinism sample: {} \
         cases sent again, {} changed, unattributed deliveries: {}",
        r.bypasses(),
        r.unexpected(),
        r.indeterminate(),
        r.sampled,
        r.sampled_changed,
        r.unattributed.len()
    );
    for f in r.findings.iter().take(LISTED_FINDINGS) {
        let _ = writeln!(out, "  {}: {}", f.verdict.name(), f.case.summary());
    }
    if r.findings.len() > LISTED_FINDINGS {
        let _ = writeln!(out, "  ... {} more", r.findings.len() - LISTED_FINDINGS);
    }
    for d in r.unattributed.iter().take(LISTED_FINDINGS) {
        let _ = writeln!(out, "  unattributed: {d:?}");
    }
    out
}

/// One finding as text: summary, sendings, frames in hex.
pub fn finding_text(f: &Finding) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "verdict: {}", f.verdict.name());
    let _ = writeln!(out, "case: {}", f.case.summary());
    if let CaseId::Seeded { seed, index } = f.case.id {
        let _ = writeln!(
            out,
            "replay: cargo run --release -p serve-guard-tests --bin fuzz_wire -- --seed {seed} --case {index}"
        );
    }
    for (i, o) in f.runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "sending {i}: filtered delivered {}, baseline delivered {}, bypass {}",
            o.filtered, o.baseline, o.bypass
        );
    }
    let _ = writeln!(out, "frames (hex, in sending order):");
    for frame in &f.case.frames {
        let _ = writeln!(out, "{}", to_hex(frame));
    }
    out
}

/// Writes every finding under `dir/<mode>/seed-<seed>/`, replacing an earlier run's; returns
/// the files written.
pub fn write_findings(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let mode = r.mode.map_or("unknown", AttachMode::name);
    let dir = dir.join(mode).join(format!("seed-{}", r.seed));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if r.findings.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for f in &r.findings {
        let name = match &f.case.id {
            CaseId::Seeded { index, .. } => format!("case-{index}"),
            CaseId::Named(name) => format!("{name}-{}", f.case.origin.name()),
        };
        let path = dir.join(format!("{}-{name}.txt", f.verdict.name().replace(':', "-")));
        std::fs::write(&path, finding_text(f))
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
