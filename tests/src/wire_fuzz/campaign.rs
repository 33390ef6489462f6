//! A campaign: the named regressions, then seeded cases until the frame budget is spent, sent
//! in rounds into both lanes; each round ends with a barrier that collects the deliveries.
//! Cases whose lanes disagree (and a sample of the others) are sent again with fresh IP ids:
//! a case is judged only if the baseline gave the same answer every time.

use super::case::{Case, CaseId, Generator, Origin};
use super::classify::{self, Class};
use super::generate::{self, Ids};
use super::lab::{AttachMode, Lab, kept_out};
use super::named;
use super::observe::{self, Delivery};
use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Config {
    /// Frames to send (per lane), regressions included.
    pub frames: u64,
    pub seed: u64,
    /// Frames per round (between two barriers).
    pub round_frames: usize,
    /// Upper bound on frames per second per lane.
    pub max_rate: u32,
    /// How often a case whose lanes disagree is sent again.
    pub reruns: usize,
    /// One case in this many is sent again even when the lanes agree, to check that the
    /// baseline is deterministic.
    pub sample_every: u64,
    /// Where failing cases are written (one file each).
    pub out_dir: PathBuf,
    /// How the programs are attached to the servers.
    pub mode: AttachMode,
    /// If set, one line per case (verdict, what each lane did, the case) goes to this file.
    pub log: Option<PathBuf>,
}

impl Config {
    pub fn new(frames: u64, seed: u64) -> Self {
        Config {
            frames,
            seed,
            round_frames: 256,
            max_rate: 50_000,
            reruns: 2,
            sample_every: 100,
            out_dir: default_out_dir(),
            log: None,
            mode: AttachMode::Driver,
        }
    }
}

/// `<target dir>/fuzz/wire`.
pub fn default_out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("fuzz/wire")
}

/// What one sending of a case showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub filtered: bool,
    pub baseline: bool,
    /// The filtered lane delivered it to a port kept out ([`kept_out`]: strict, or guarded) from
    /// an outside source.
    pub bypass: bool,
    /// The baseline delivered it to a port kept out (conflicting duplicates may carry a
    /// datagram to another port than the case's).
    pub baseline_protected: bool,
}

/// The judgement of a case over all its sendings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Both lanes delivered it.
    Delivered,
    /// Neither lane delivered it.
    NotDelivered,
    /// Outside source to a port kept out ([`kept_out`]: strict, or guarded for this segment;
    /// the case's, or the one the baseline delivered it to every time): the baseline delivered
    /// it, the filter kept it out.
    Blocked,
    /// Outside source, a port kept out, delivered through the filter.
    Bypass,
    /// The baseline delivered it, the filtered lane did not (and not a protected port from
    /// outside). `expected`: docs/filter.md lists the reason.
    OverBlock {
        class: Option<Class>,
        expected: bool,
    },
    /// Delivered with the filter and not without: the filter dropped a fragment (e.g. one with
    /// more than 8 tags) whose overlap would have made the kernel discard the datagram. Not a
    /// failure: from outside to a protected port it is a bypass, judged above.
    FilteredOnly,
    /// The baseline (or the filtered lane) did not answer the same way every time.
    Indeterminate,
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Verdict::Bypass
                | Verdict::OverBlock {
                    expected: false,
                    ..
                }
        )
    }

    pub fn name(&self) -> String {
        match self {
            Verdict::Delivered => "delivered".into(),
            Verdict::NotDelivered => "not_delivered".into(),
            Verdict::Blocked => "blocked".into(),
            Verdict::Bypass => "BYPASS".into(),
            Verdict::OverBlock { class, expected } => format!(
                "{}over_block:{}",
                if *expected { "" } else { "UNEXPECTED_" },
                class.map_or("no_documented_reason", Class::name)
            ),
            Verdict::FilteredOnly => "filtered_only".into(),
            Verdict::Indeterminate => "indeterminate".into(),
        }
    }
}

/// Judges a case from its sendings (at least one).
pub fn judge(case: &Case, runs: &[Outcome]) -> Verdict {
    if runs.iter().any(|o| o.bypass) {
        return Verdict::Bypass;
    }
    let first = runs[0];
    let stable = runs
        .iter()
        .all(|o| o.baseline == first.baseline && o.filtered == first.filtered);
    if !stable {
        return Verdict::Indeterminate;
    }
    // What the filter must keep out from outside: the case's port, or where the baseline
    // took it every time.
    let protected =
        kept_out(case.dst_port, case.tcp_flags) || runs.iter().all(|o| o.baseline_protected);
    match (first.filtered, first.baseline) {
        (true, true) => Verdict::Delivered,
        (false, false) => Verdict::NotDelivered,
        (true, false) => Verdict::FilteredOnly,
        (false, true) if protected && case.origin == Origin::Outside => Verdict::Blocked,
        (false, true) => {
            let classes = classify::classes(&case.frames);
            let expected = match case.origin {
                Origin::Outside => !classes.is_empty(),
                Origin::Inside => classes.iter().any(|c| c.from_every_source()),
            };
            let class = classes
                .iter()
                .copied()
                .find(|c| c.from_every_source())
                .or_else(|| classes.first().copied());
            Verdict::OverBlock { class, expected }
        }
    }
}

/// Counts per generator.
#[derive(Clone, Debug, Default)]
pub struct GeneratorStats {
    pub cases: u64,
    pub frames: u64,
    pub baseline_delivered: u64,
    pub filtered_delivered: u64,
    pub blocked: u64,
    pub bypasses: u64,
    pub over_blocks: BTreeMap<&'static str, u64>,
    pub unexpected: u64,
    pub filtered_only: u64,
    pub indeterminate: u64,
}

/// A case worth a file: a failure or an indeterminate one.
#[derive(Clone, Debug)]
pub struct Finding {
    pub case: Case,
    pub verdict: Verdict,
    pub runs: Vec<Outcome>,
}

/// Cases from outside the allow-list to one kind of target, and how many each lane delivered
/// (answered).
#[derive(Clone, Debug, Default)]
pub struct TargetStats {
    pub cases: u64,
    pub baseline: u64,
    pub filtered: u64,
}

/// What a case from outside aims at, by port class (issue 16) and TCP flags.
pub fn target(case: &Case) -> &'static str {
    use super::lab::{GUARDED_PORT, PROTECTED_PORTS, UNPROTECTED_PORT};
    use crate::frames::tcp::{ACK as TCP_ACK, SYN as TCP_SYN};
    let syn = case.tcp_flags.map(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN);
    match (case.dst_port, syn) {
        (p, _) if PROTECTED_PORTS.contains(&p) => "strict",
        (UNPROTECTED_PORT, _) => "open",
        (GUARDED_PORT, Some(true)) => "guarded, listener: SYN",
        (GUARDED_PORT, Some(false)) => "guarded, listener: other TCP",
        (GUARDED_PORT, None) => "guarded, unconnected UDP socket",
        (_, Some(true)) => "guarded, no socket: SYN",
        (_, Some(false)) => "guarded, no socket: other TCP",
        (_, None) => "guarded, no socket: UDP",
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Cases from outside, by [`target`].
    pub outside: BTreeMap<&'static str, TargetStats>,
    pub mode: Option<AttachMode>,
    pub per_generator: BTreeMap<Generator, GeneratorStats>,
    pub findings: Vec<Finding>,
    pub frames: u64,
    pub cases: u64,
    pub rounds: u32,
    /// Cases sent again although the lanes agreed, and how many of those changed answer.
    pub sampled: u64,
    pub sampled_changed: u64,
    /// Deliveries that matched no case of their round (none are expected).
    pub unattributed: Vec<Delivery>,
    pub elapsed: Duration,
}

impl Report {
    pub fn bypasses(&self) -> u64 {
        self.per_generator.values().map(|s| s.bypasses).sum::<u64>()
            + self.unattributed.iter().filter(|d| d.is_bypass()).count() as u64
    }

    pub fn unexpected(&self) -> u64 {
        self.per_generator.values().map(|s| s.unexpected).sum()
    }

    pub fn indeterminate(&self) -> u64 {
        self.per_generator.values().map(|s| s.indeterminate).sum()
    }

    /// Expected over-blocks per class, over all generators.
    pub fn over_blocks(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for s in self.per_generator.values() {
            for (class, n) in &s.over_blocks {
                *out.entry(*class).or_default() += n;
            }
        }
        out
    }

    pub fn passed(&self) -> bool {
        self.bypasses() == 0 && self.unexpected() == 0
    }

    fn record(
        &mut self,
        case: &Case,
        runs: Vec<Outcome>,
        sampled: bool,
        log: Option<&mut dyn Write>,
    ) -> Result<()> {
        let verdict = judge(case, &runs);
        if let Some(log) = log {
            writeln!(
                log,
                "{} filtered={} baseline={} {}",
                verdict.name(),
                runs[0].filtered,
                runs[0].baseline,
                case.summary()
            )?;
        }
        if sampled {
            self.sampled += 1;
            self.sampled_changed += u64::from(verdict == Verdict::Indeterminate);
        }
        if case.origin == Origin::Outside {
            let t = self.outside.entry(target(case)).or_default();
            t.cases += 1;
            t.baseline += u64::from(runs[0].baseline);
            t.filtered += u64::from(runs[0].filtered);
        }
        let s = self.per_generator.entry(case.generator).or_default();
        s.cases += 1;
        s.frames += case.frames.len() as u64;
        s.baseline_delivered += u64::from(runs[0].baseline);
        s.filtered_delivered += u64::from(runs[0].filtered);
        match &verdict {
            Verdict::Blocked => s.blocked += 1,
            Verdict::Bypass => s.bypasses += 1,
            Verdict::OverBlock {
                class,
                expected: true,
            } => {
                *s.over_blocks
                    .entry(class.map_or("none", Class::name))
                    .or_default() += 1;
            }
            Verdict::OverBlock {
                expected: false, ..
            } => s.unexpected += 1,
            Verdict::FilteredOnly => s.filtered_only += 1,
            Verdict::Indeterminate => s.indeterminate += 1,
            Verdict::Delivered | Verdict::NotDelivered => {}
        }
        if verdict.is_failure() || matches!(verdict, Verdict::Indeterminate | Verdict::FilteredOnly)
        {
            self.findings.push(Finding {
                case: case.clone(),
                verdict,
                runs,
            });
        }
        Ok(())
    }
}

/// Sends every frame of `cases` into both lanes (one frame to each lane in turn), ends the
/// round with a barrier, and says per case what each lane delivered. Deliveries that match no
/// case go to `unattributed`.
pub fn run_round(
    lab: &Lab,
    cases: &[Case],
    round: &mut u32,
    unattributed: &mut Vec<Delivery>,
) -> Result<Vec<Outcome>> {
    for case in cases {
        for frame in &case.frames {
            for lane in &lab.lanes {
                observe::send(lane, frame)?;
            }
        }
    }
    let [filtered, baseline] = observe::barrier(lab, *round)?;
    *round += 1;
    let matches = |d: &Delivery, c: &Case| {
        d.token == Some(c.token) && d.transport == c.transport && d.peer_port == c.src_port
    };
    for d in filtered.iter().chain(&baseline) {
        if !cases.iter().any(|c| matches(d, c)) {
            unattributed.push(d.clone());
        }
    }
    Ok(cases
        .iter()
        .map(|c| Outcome {
            filtered: filtered.iter().any(|d| matches(d, c)),
            baseline: baseline.iter().any(|d| matches(d, c)),
            bypass: filtered
                .iter()
                .any(|d| matches(d, c) && d.is_bypass_for(c.tcp_flags)),
            baseline_protected: baseline
                .iter()
                .any(|d| matches(d, c) && kept_out(d.server_port, c.tcp_flags)),
        })
        .collect())
}

/// The same case with fresh IP ids (so it cannot meet the leftovers of its earlier sending
/// in a reassembly queue).
pub fn rebuild(case: &Case, ids: &mut Ids) -> Case {
    match &case.id {
        CaseId::Seeded { seed, index } => generate::generate(*seed, *index, case.token, ids),
        CaseId::Named(name) => {
            let named = named::find(name).expect("named cases are found by their own name");
            (named.build)(case.origin, case.token, ids)
        }
    }
}

/// Every named regression, from both sides of the allow-list.
fn regressions(next_token: &mut u32, ids: &mut Ids) -> Vec<Case> {
    let mut out = Vec::new();
    for named in &named::ALL {
        for origin in [Origin::Outside, Origin::Inside] {
            out.push((named.build)(origin, *next_token, ids));
            *next_token += 1;
        }
    }
    out
}

/// Runs a campaign on a fresh lab.
pub fn run(config: &Config) -> Result<Report> {
    let lab = Lab::new(config.mode).context("setting up the lanes")?;
    run_on(&lab, config)
}

/// Runs a campaign on `lab`.
pub fn run_on(lab: &Lab, config: &Config) -> Result<Report> {
    let start = Instant::now();
    let mut report = Report {
        seed: config.seed,
        mode: Some(config.mode),
        ..Default::default()
    };
    let mut ids = Ids::new(config.seed);
    let mut next_token = 0u32;
    let mut round = 0u32;
    let mut queue = regressions(&mut next_token, &mut ids);
    let mut log = match &config.log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut index = 0u64;
    while report.frames < config.frames || !queue.is_empty() {
        let mut batch = std::mem::take(&mut queue);
        let mut batch_frames: usize = batch.iter().map(|c| c.frames.len()).sum();
        while batch_frames < config.round_frames
            && report.frames + (batch_frames as u64) < config.frames
        {
            let case = generate::generate(config.seed, index, next_token, &mut ids);
            index += 1;
            next_token = next_token.wrapping_add(1);
            batch_frames += case.frames.len();
            batch.push(case);
        }
        let outcomes = run_round(lab, &batch, &mut round, &mut report.unattributed)?;
        report.frames += batch_frames as u64;
        report.cases += batch.len() as u64;
        // Sent again: disagreeing lanes, and one in `sample_every` of the rest.
        let mut runs: Vec<Vec<Outcome>> = outcomes.iter().map(|o| vec![*o]).collect();
        let sampled: Vec<bool> = batch
            .iter()
            .map(|c| match c.id {
                CaseId::Seeded { index, .. } => index % config.sample_every.max(1) == 0,
                CaseId::Named(_) => false,
            })
            .collect();
        let again: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                let o = outcomes[i];
                o.filtered != o.baseline || o.bypass || sampled[i]
            })
            .collect();
        for attempt in 0..config.reruns {
            if again.is_empty() {
                break;
            }
            let cases: Vec<Case> = again
                .iter()
                .map(|&i| rebuild(&batch[i], &mut ids))
                .collect();
            let outcomes = run_round(lab, &cases, &mut round, &mut report.unattributed)
                .with_context(|| format!("rerun {attempt}"))?;
            for (&i, o) in again.iter().zip(outcomes) {
                runs[i].push(o);
            }
        }
        for ((case, runs), sampled) in batch.iter().zip(runs).zip(sampled) {
            report.record(
                case,
                runs,
                sampled,
                log.as_mut().map(|l| l as &mut dyn Write),
            )?;
        }
        throttle(start, report.frames, config.max_rate);
    }
    if let Some(log) = &mut log {
        log.flush()?;
    }
    report.rounds = round;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Sleeps just long enough to keep the average rate at or below `max_rate` frames/s.
fn throttle(start: Instant, frames: u64, max_rate: u32) {
    let earliest = Duration::from_secs_f64(frames as f64 / f64::from(max_rate.max(1)));
    if let Some(ahead) = earliest.checked_sub(start.elapsed()) {
        std::thread::sleep(ahead);
    }
}
