//! What one read costs under many sources (issue 21): a program that makes exactly one read per
//! packet, at an index taken from the IPv4 source, in an array of 4 KiB to 256 MiB, run the way
//! the rotating cases are (4,096 random sources, each frame once per round). Any lookup structure
//! whose entries for random sources lie spread over a region of that size pays at least this
//! for each read it makes there, whatever its layout: the memory's price on this machine, beside
//! the lookup's.

use super::{HTTP, ROTATING_FLOOR, ROTATING_SOURCES, SERVER_V4, Scenario, Target, find};
use anyhow::{Context as _, Result};
use serve_guard_tests::frames::Frame;
use serve_guard_tests::program::{Hook, MemoryProbe, XDP_PASS};
use serve_guard_tests::rng::Rng;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// One cache line per element: a read never shares a line with its neighbour's.
const VALUE_SIZE: u32 = 64;
/// Array sizes (KiB) with the scenario names: from what stays in L1 to more than any cache and
/// than the TLB reaches.
pub const SIZES: [(u32, &str); 5] = [
    (4, "memory: one read in 4 KiB, rotating sources"),
    (256, "memory: one read in 256 KiB, rotating sources"),
    (4096, "memory: one read in 4 MiB, rotating sources"),
    (65_536, "memory: one read in 64 MiB, rotating sources"),
    (262_144, "memory: one read in 256 MiB, rotating sources"),
];
const SEED: u64 = 0x5e7e_9a7d_2026_0021;

/// The probes, one per size.
pub fn probes() -> Result<Vec<MemoryProbe>> {
    SIZES
        .iter()
        .map(|&(kib, _)| {
            MemoryProbe::load(kib * 1024 / VALUE_SIZE, VALUE_SIZE)
                .with_context(|| format!("loading the memory probe of {kib} KiB"))
        })
        .collect()
}

/// The rotating scenarios of `probes`: random IPv4 sources over the whole space.
pub fn scenarios(probes: &[MemoryProbe]) -> Vec<Scenario<'_>> {
    let mut rng = Rng::new(SEED);
    let frames: Vec<Vec<u8>> = (0..ROTATING_SOURCES)
        .map(|_| {
            let src = Ipv4Addr::from(rng.next_u64() as u32);
            Frame::ipv4(src, SERVER_V4).tcp(HTTP).build()
        })
        .collect();
    probes
        .iter()
        .zip(SIZES)
        .map(|(probe, (_, name))| {
            let mut s = Scenario::new(
                name,
                None,
                Target::Program(&probe.program, Hook::Xdp),
                Vec::new(),
                XDP_PASS,
            );
            s.frames.clone_from(&frames);
            s
        })
        .collect()
}

pub fn report(scenarios: &[Scenario]) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "\n## What one read costs under many sources\n")?;
    writeln!(
        out,
        "A program that makes one read per packet, in an array map of the size named (64-byte \
         elements), at an index taken from the IPv4 source, run like the rotating cases \
         ({ROTATING_SOURCES} random sources, each frame once per round): what the memory charges \
         any lookup for one read in a region of that size under many sources, on this machine. \
         The 4 KiB array stays in L1; the larger ones miss the caches and, from a few MiB, the \
         TLB, which nested paging makes dear on a VM.\n"
    )?;
    writeln!(
        out,
        "| array | ns (median) | fastest | above the rotating floor |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let floor = find(scenarios, ROTATING_FLOOR, None)
        .context("the rotating floor is measured")?
        .median();
    for (_, name) in SIZES {
        let s = find(scenarios, name, None).context("every probe is measured")?;
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            name.trim_start_matches("memory: one read in ")
                .trim_end_matches(", rotating sources"),
            s.median(),
            s.fastest(),
            i64::from(s.median()) - i64::from(floor)
        )?;
    }
    Ok(out)
}
