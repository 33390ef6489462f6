//! The differential run: every generated frame through the real program (BPF_PROG_TEST_RUN)
//! and through the model; the program's return value and the one counter it moves must be what
//! the model says.
//!
//! Speed: reading the per-CPU counters costs one syscall per (reason, family), far more than a
//! test run. So the return value is checked per frame, and the counters once per batch against
//! the sum the model predicts for it (packets and bytes of every counter). Only a batch that
//! disagrees is replayed frame by frame, reading around each frame the one counter the model
//! expects to move, and every counter only for a frame that fails that (or for the whole batch
//! when none does: some frame moved a second counter). The program keeps no state but its
//! counters, so the replay sees what the first pass saw.
//!
//! Every frame is run from a thread inside the fuzzer's own network namespace
//! ([`scenario::Sockets`]): the guarded-port socket lookups search the namespace of the thread
//! that runs BPF_PROG_TEST_RUN, and the model knows that namespace's sockets exactly.

use super::{
    generate::{self, Generator, Sample},
    model::{self, Action, Verdict},
    scenario,
};
use crate::program::{Counters, Hook, TestProgram};
use anyhow::{Context as _, Result};
use serve_guard::filter::test_run::test_run;
use serve_guard_common::{Counter, Family, Reason};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

/// Frames between two counter checks: large enough that reading 15 per-CPU counters twice is
/// noise next to the batch, small enough that replaying a bad batch is quick.
pub const BATCH: u64 = 4096;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub seed: u64,
    /// Index of the first frame (to resume a run or replay one frame).
    pub start: u64,
    pub frames: u64,
    /// Only this generator's frames.
    pub only: Option<Generator>,
}

/// What the program did with a frame: its return value and every counter that moved (by how
/// many packets). Nothing in it depends on the frame's length, so equal observations make one
/// class of mismatch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observed {
    /// The hook whose program ran: it gives the return value its meaning.
    pub hook: Hook,
    pub retval: u32,
    pub moved: Vec<(Reason, Family, u64)>,
    /// Every counter that moved counted the frame's length per packet.
    pub bytes_counted: bool,
}

impl Observed {
    /// The program did what the model says: the right return value, and exactly one counter
    /// moved, by one packet of the frame's length.
    pub fn agrees(&self, expected: &Verdict) -> bool {
        self.retval == retval(self.hook, expected.action)
            && self.moved == [(expected.reason, expected.family, 1)]
            && self.bytes_counted
    }
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.retval {
            r if r == self.hook.pass() => "Pass".to_owned(),
            r if r == self.hook.drop() => "Drop".to_owned(),
            other => format!("retval {other}"),
        };
        write!(f, "{} {action}", self.hook.name())?;
        match &self.moved[..] {
            [(reason, family, 1)] => write!(f, " {}/{}", reason.name(), family.name())?,
            moved => {
                write!(f, " counters moved:")?;
                for (reason, family, packets) in moved {
                    write!(f, " {}/{} +{packets}", reason.name(), family.name())?;
                }
            }
        }
        if !self.bytes_counted {
            write!(f, " (bytes not counted as the frame's length)")?;
        }
        Ok(())
    }
}

/// One frame on which the program and the model disagree.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub seed: u64,
    pub index: u64,
    pub sample: Sample,
    pub expected: Verdict,
    pub observed: Observed,
}

impl Mismatch {
    /// The class a mismatch belongs to: what the model said and what the program did.
    pub fn class(&self) -> (Verdict, Observed) {
        (self.expected, self.observed.clone())
    }

    /// Everything needed to reproduce and judge it by hand.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "seed {} index {} generator {} audit {} layout {}",
            self.seed,
            self.index,
            self.sample.generator.name(),
            self.sample.audit,
            self.sample.layout
        );
        let _ = writeln!(s, "model:   {}", self.expected);
        let _ = writeln!(s, "program: {}", self.observed);
        let _ = writeln!(s, "frame ({} bytes):", self.sample.frame.len());
        for line in self.sample.frame.chunks(16) {
            let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(s, "  {}", hex.join(" "));
        }
        s
    }
}

/// Frames and verdicts of one generator.
#[derive(Clone, Debug, Default)]
pub struct GeneratorStats {
    pub frames: u64,
    pub mismatches: u64,
    /// How often the model gave each verdict (reason, family; the action follows).
    pub verdicts: BTreeMap<(Reason, Family), u64>,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    /// Frames the kernel's test run refuses at this hook (see [`Hook::test_run_accepts`]): not
    /// run, not counted in `frames`.
    pub not_runnable: u64,
    pub per_generator: BTreeMap<Generator, GeneratorStats>,
    /// Mismatches grouped by class, with how many and the first of each.
    pub classes: BTreeMap<(Verdict, Observed), (u64, Mismatch)>,
    pub elapsed: Duration,
}

impl Report {
    pub fn mismatches(&self) -> u64 {
        self.classes.values().map(|(n, _)| n).sum()
    }

    /// Each class of mismatch, how many frames it has and its first frame in full.
    pub fn describe_classes(&self) -> String {
        let mut s = String::new();
        for ((expected, observed), (count, first)) in &self.classes {
            let _ = writeln!(
                s,
                "class: model {expected}, program {observed}: {count} frames; first:\n{}",
                first.describe()
            );
        }
        s
    }

    /// Every (reason, family) the model gave over the run, with its count.
    pub fn verdicts(&self) -> BTreeMap<(Reason, Family), u64> {
        let mut all = BTreeMap::new();
        for stats in self.per_generator.values() {
            for (key, n) in &stats.verdicts {
                *all.entry(*key).or_default() += n;
            }
        }
        all
    }
}

/// The program once per port table and audit setting, each with the scenario's maps, and the
/// namespace (with its sockets) the frames are run in.
pub struct Programs {
    hook: Hook,
    /// Indexed by layout, then by audit.
    programs: Vec<[TestProgram; 2]>,
    sockets: scenario::Sockets,
}

impl Programs {
    /// The program of `hook` (XDP, or the same filter as a TC classifier).
    pub fn load(hook: Hook) -> Result<Self> {
        let mut programs = Vec::new();
        for layout in 0..scenario::LAYOUTS {
            programs.push([
                scenario::program_in(layout, false, hook)
                    .with_context(|| format!("loading the program (layout {layout}, enforcing)"))?,
                scenario::program_in(layout, true, hook)
                    .with_context(|| format!("loading the program (layout {layout}, audit)"))?,
            ]);
        }
        let sockets = scenario::Sockets::create().context("the fuzzer's namespace")?;
        Ok(Self {
            hook,
            programs,
            sockets,
        })
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }

    fn get(&self, layout: usize, audit: bool) -> &TestProgram {
        &self.programs[layout][usize::from(audit)]
    }

    /// Runs `f` on a thread inside the fuzzer's namespace, where frames must be run.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        self.sockets.run(f)
    }

    /// Runs `frame` once through the enforcing or the audit instance of layout 0 (the named
    /// regressions' environment), in the fuzzer's namespace, reading every counter around it.
    pub fn observe(&self, frame: &[u8], audit: bool) -> Result<Observed> {
        self.in_netns(|| self.observe_here(frame, 0, audit))?
    }

    /// [`Self::observe`] with `layout`'s program, on the calling thread (which must be in the
    /// fuzzer's namespace for guarded ports to be judged against its sockets).
    fn observe_here(&self, frame: &[u8], layout: usize, audit: bool) -> Result<Observed> {
        let program = self.get(layout, audit);
        let before = program.counters()?;
        let run = program.run(frame)?;
        let after = program.counters()?;
        let mut moved = Vec::new();
        let mut bytes_counted = true;
        for reason in Reason::ALL {
            for family in Family::ALL {
                let (now, then) = (after.get(reason, family), before.get(reason, family));
                let packets = now.packets.wrapping_sub(then.packets);
                let bytes = now.bytes.wrapping_sub(then.bytes);
                bytes_counted &= bytes == packets.wrapping_mul(frame.len() as u64);
                if packets != 0 {
                    moved.push((reason, family, packets));
                }
            }
        }
        Ok(Observed {
            hook: self.hook,
            retval: run.retval,
            moved,
            bytes_counted,
        })
    }

    fn all_counters(&self) -> Result<Vec<[Counters; 2]>> {
        self.programs
            .iter()
            .map(|[normal, audit]| Ok([normal.counters()?, audit.counters()?]))
            .collect()
    }
}

/// The model's policies, indexed like the programs (layout, then audit).
pub fn policies() -> Vec<[model::Policy; 2]> {
    (0..scenario::LAYOUTS)
        .map(|layout| {
            [
                scenario::policy_in(layout, false),
                scenario::policy_in(layout, true),
            ]
        })
        .collect()
}

/// Per (reason, family) packets and bytes the model predicts for a batch.
type Tally = [[Counter; Family::COUNT]; Reason::COUNT];

/// Runs `options.frames` frames in the fuzzer's namespace; `on_mismatch` sees each mismatch as
/// it is found.
pub fn run(
    programs: &Programs,
    options: Options,
    on_mismatch: impl FnMut(&Mismatch) + Send,
) -> Result<Report> {
    programs.in_netns(|| run_here(programs, options, on_mismatch))?
}

fn run_here(
    programs: &Programs,
    options: Options,
    mut on_mismatch: impl FnMut(&Mismatch),
) -> Result<Report> {
    let policies = policies();
    let started = Instant::now();
    let mut report = Report::default();
    let end = options.start + options.frames;
    let mut batch_start = options.start;
    while batch_start < end {
        let batch_end = (batch_start + BATCH).min(end);
        let before = programs.all_counters()?;
        let mut tally: Vec<[Tally; 2]> = vec![Default::default(); scenario::LAYOUTS];
        let mut retval_wrong = false;
        let not_runnable_before = report.not_runnable;
        for index in batch_start..batch_end {
            let sample = generate::sample(options.seed, index, options.only);
            if !programs.hook.test_run_accepts(&sample.frame) {
                report.not_runnable += 1;
                continue;
            }
            let expected = model::verdict(
                &sample.frame,
                &policies[sample.layout][usize::from(sample.audit)],
            );
            let program = programs.get(sample.layout, sample.audit);
            let run = test_run(program.fd()?, &sample.frame, 1)
                .with_context(|| format!("BPF_PROG_TEST_RUN, frame {index}"))?;
            retval_wrong |= run.retval != retval(programs.hook, expected.action);
            let slot = &mut tally[sample.layout][usize::from(sample.audit)]
                [expected.reason as usize][expected.family as usize];
            slot.packets += 1;
            slot.bytes += sample.frame.len() as u64;
            let stats = report.per_generator.entry(sample.generator).or_default();
            stats.frames += 1;
            *stats
                .verdicts
                .entry((expected.reason, expected.family))
                .or_default() += 1;
        }
        let after = programs.all_counters()?;
        let counters_wrong = (0..scenario::LAYOUTS).any(|layout| {
            (0..2).any(|i| !tally_matches(&before[layout][i], &after[layout][i], &tally[layout][i]))
        });
        if retval_wrong || counters_wrong {
            let batch = batch_start..batch_end;
            let mut found = replay(programs, &policies, options, batch.clone(), Check::Quick)?;
            if found.is_empty() {
                found = replay(programs, &policies, options, batch, Check::Full)?;
            }
            for m in found {
                on_mismatch(&m);
                report
                    .per_generator
                    .entry(m.sample.generator)
                    .or_default()
                    .mismatches += 1;
                report
                    .classes
                    .entry(m.class())
                    .or_insert_with(|| (0, m.clone()))
                    .0 += 1;
            }
        }
        report.frames += batch_end - batch_start - (report.not_runnable - not_runnable_before);
        batch_start = batch_end;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// How a replay checks a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// The return value and the one counter the model expects to move; every counter only if
    /// that fails.
    Quick,
    /// Every counter.
    Full,
}

/// The mismatches among the frames `indices`, run one at a time.
fn replay(
    programs: &Programs,
    policies: &[[model::Policy; 2]],
    options: Options,
    indices: std::ops::Range<u64>,
    check: Check,
) -> Result<Vec<Mismatch>> {
    let mut found = Vec::new();
    for index in indices {
        if check == Check::Quick {
            let sample = generate::sample(options.seed, index, options.only);
            if !programs.hook.test_run_accepts(&sample.frame) {
                continue;
            }
            let expected = model::verdict(
                &sample.frame,
                &policies[sample.layout][usize::from(sample.audit)],
            );
            let program = programs.get(sample.layout, sample.audit);
            let before = program.counter(expected.reason, expected.family)?;
            let run = test_run(program.fd()?, &sample.frame, 1)?;
            let after = program.counter(expected.reason, expected.family)?;
            let moved = (
                after.packets.wrapping_sub(before.packets),
                after.bytes.wrapping_sub(before.bytes),
            );
            if run.retval == retval(programs.hook, expected.action)
                && moved == (1, sample.frame.len() as u64)
            {
                continue;
            }
        }
        found.extend(judge_here(programs, policies, options, index)?);
    }
    Ok(found)
}

/// One frame, with every counter read around it, in the fuzzer's namespace: the mismatch, if
/// any.
pub fn judge_one(programs: &Programs, options: Options, index: u64) -> Result<Option<Mismatch>> {
    let policies = policies();
    programs.in_netns(|| judge_here(programs, &policies, options, index))?
}

fn judge_here(
    programs: &Programs,
    policies: &[[model::Policy; 2]],
    options: Options,
    index: u64,
) -> Result<Option<Mismatch>> {
    let sample = generate::sample(options.seed, index, options.only);
    if !programs.hook.test_run_accepts(&sample.frame) {
        return Ok(None);
    }
    let expected = model::verdict(
        &sample.frame,
        &policies[sample.layout][usize::from(sample.audit)],
    );
    let observed = programs.observe_here(&sample.frame, sample.layout, sample.audit)?;
    Ok((!observed.agrees(&expected)).then_some(Mismatch {
        seed: options.seed,
        index,
        sample,
        expected,
        observed,
    }))
}

fn tally_matches(before: &Counters, after: &Counters, tally: &Tally) -> bool {
    Reason::ALL.iter().all(|&reason| {
        Family::ALL.iter().all(|&family| {
            let (now, then) = (after.get(reason, family), before.get(reason, family));
            let want = tally[reason as usize][family as usize];
            now.packets.wrapping_sub(then.packets) == want.packets
                && now.bytes.wrapping_sub(then.bytes) == want.bytes
        })
    })
}

/// The return value the program of `hook` gives for `action`.
pub fn retval(hook: Hook, action: Action) -> u32 {
    match action {
        Action::Pass => hook.pass(),
        Action::Drop => hook.drop(),
    }
}
