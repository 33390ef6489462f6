//! `cargo xtask fuzz verdict`: the in-process differential fuzzer of the XDP verdict. Generated
//! frames go through the real program (BPF_PROG_TEST_RUN) and through the reference model of
//! docs/filter.md; every disagreement in return value or counter is a mismatch. Exits non-zero
//! on any.
//!
//! Options:
//! - `--frames N` (default 10,000,000), `--seed S` (default 1; `random` draws one from the
//!   clock and prints it), `--start I` (first frame index), `--only GENERATOR`.
//! - `--hook xdp|tc|both` (default both): the XDP program, its TC twin (the fallback beside a
//!   foreign XDP program), or each in turn on the same frames.
//! - `--replay I`: judge frame I alone and print it (with `--seed`, `--only` of the run).
//! - `--out DIR`: where mismatching frames are written (default `<target>/fuzz`).
//! - `--show N`: print (and write) the first N mismatches in full as they are found (default
//!   10); the first of every class of mismatch is printed and written at the end in any case.

#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, bail};
use serve_guard_common::Reason;
use serve_guard_tests::fuzz::{
    differential::{self, Mismatch, Options, Programs, Report},
    generate::Generator,
};
use serve_guard_tests::program::Hook;
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

const DEFAULT_FRAMES: u64 = 10_000_000;
const DEFAULT_SEED: u64 = 1;
const DEFAULT_SHOW: u64 = 10;

struct Args {
    options: Options,
    /// The programs run, in turn, on the same frames.
    hooks: Vec<Hook>,
    replay: Option<u64>,
    out: PathBuf,
    show: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        options: Options {
            seed: DEFAULT_SEED,
            start: 0,
            frames: DEFAULT_FRAMES,
            only: None,
        },
        hooks: Hook::ALL.to_vec(),
        replay: None,
        out: default_out_dir(),
        show: DEFAULT_SHOW,
    };
    let mut it = std::env::args().skip(1).skip_while(|a| a == "--");
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--frames" => args.options.frames = number(&arg, &value()?)?,
            "--seed" => {
                let v = value()?;
                args.options.seed = if v == "random" {
                    SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64
                } else {
                    number(&arg, &v)?
                };
            }
            "--start" => args.options.start = number(&arg, &value()?)?,
            "--only" => {
                let v = value()?;
                args.options.only = Some(Generator::from_name(&v).with_context(|| {
                    format!(
                        "--only {v:?}: no such generator (known: {})",
                        Generator::ALL.map(|g| g.name()).join(", ")
                    )
                })?);
            }
            "--hook" => {
                let v = value()?;
                args.hooks = match v.as_str() {
                    "both" => Hook::ALL.to_vec(),
                    one => vec![one.parse().map_err(anyhow::Error::msg)?],
                };
            }
            "--replay" => args.replay = Some(number(&arg, &value()?)?),
            "--out" => args.out = PathBuf::from(value()?),
            "--show" => args.show = number(&arg, &value()?)?,
            other => bail!(
                "unknown argument {other:?} (known: --frames N, --seed S|random, --start I, \
                 --only GENERATOR, --hook xdp|tc|both, --replay I, --out DIR, --show N)"
            ),
        }
    }
    Ok(args)
}

fn number(flag: &str, value: &str) -> Result<u64> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.replace('_', "").parse(),
    };
    parsed.with_context(|| format!("{flag} {value:?}: not a number"))
}

/// `target/fuzz` of this workspace (or of CARGO_TARGET_DIR).
fn default_out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("fuzz")
}

fn write_mismatch(dir: &Path, m: &Mismatch) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(
        "verdict-{}-{}-{}.txt",
        m.observed.hook.name(),
        m.seed,
        m.index
    ));
    std::fs::write(&path, m.describe()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fuzz_verdict: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// True when the programs and the model agreed on every frame.
fn run() -> Result<bool> {
    let args = parse_args()?;
    let mut agreed = true;
    for &hook in &args.hooks {
        agreed &= run_hook(&args, hook)?;
    }
    Ok(agreed)
}

/// True when the program of `hook` and the model agreed on every frame.
fn run_hook(args: &Args, hook: Hook) -> Result<bool> {
    let programs = Programs::load(hook)?;
    if let Some(index) = args.replay {
        return match differential::judge_one(&programs, args.options, index)? {
            None => {
                println!("frame {index}: the program agrees with the model");
                Ok(true)
            }
            Some(m) => {
                print!("{}", m.describe());
                println!("written to {}", write_mismatch(&args.out, &m)?.display());
                Ok(false)
            }
        };
    }
    let o = args.options;
    println!(
        "fuzz_verdict: {} program, seed {} frames {}..{}{}",
        hook.name(),
        o.seed,
        o.start,
        o.start + o.frames,
        o.only
            .map(|g| format!(" (only {})", g.name()))
            .unwrap_or_default()
    );
    let mut shown = 0;
    let mut write_error = None;
    let report = differential::run(&programs, o, |m| {
        if shown < args.show {
            shown += 1;
            println!("MISMATCH\n{}", m.describe());
            if let Err(e) = write_mismatch(&args.out, m) {
                write_error.get_or_insert(e);
            }
        }
    })?;
    print_report(&report);
    if let Some(e) = write_error {
        return Err(e);
    }
    for (_, first) in report.classes.values() {
        write_mismatch(&args.out, first)?;
    }
    if report.mismatches() > 0 {
        println!(
            "the first {} mismatches and the first of each class are in {}",
            args.show,
            args.out.display()
        );
    }
    Ok(report.mismatches() == 0)
}

fn print_report(report: &Report) {
    print!("{:<14} {:>10}", "generator", "frames");
    for reason in Reason::ALL {
        print!(" {:>16}", reason.name());
    }
    println!(" {:>10}", "mismatches");
    for (generator, stats) in &report.per_generator {
        print!("{:<14} {:>10}", generator.name(), stats.frames);
        for reason in Reason::ALL {
            let n: u64 = stats
                .verdicts
                .iter()
                .filter(|((r, _), _)| *r == reason)
                .map(|(_, n)| n)
                .sum();
            print!(" {n:>16}");
        }
        println!(" {:>10}", stats.mismatches);
    }
    let secs = report.elapsed.as_secs_f64();
    println!(
        "{} frames in {:.1} s ({:.0} frames/s); {} mismatches in {} classes",
        report.frames,
        secs,
        report.frames as f64 / secs.max(f64::EPSILON),
        report.mismatches(),
        report.classes.len()
    );
    if report.not_runnable > 0 {
        println!(
            "{} frames not run: the kernel's skb test run refuses an IP EtherType shorter than \
             its fixed header",
            report.not_runnable
        );
    }
    print!("{}", report.describe_classes());
}
