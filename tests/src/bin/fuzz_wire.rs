//! The black-box wire fuzzer: `fuzz_wire --frames N --seed S` sends N seeded frames into a
//! server namespace behind the serve-guard XDP program and into one behind a pass-everything
//! program, and lets the kernel say what got through. Prints frames per generator, deliveries,
//! bypasses and over-blocks by class; writes each finding under target/fuzz/wire/<mode>/seed-S/;
//! exits 1 on a bypass or an unexpected over-block (2 if the run itself failed).
//!
//! `--xdp-mode skb` attaches the programs in generic (skb) mode instead of the driver.
//! `--case I` replays case I of the seed alone and prints its frames and what each lane did.

#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, bail};
use serve_guard_tests::wire_fuzz::{
    campaign::{self, Config},
    generate::{self, Ids},
    lab::{self, Lab},
    report,
};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: fuzz_wire [--frames N] [--seed S] [--case INDEX] [--round-frames N] \
                     [--max-rate FRAMES_PER_S] [--reruns N] [--out DIR] [--log FILE] [--xdp-mode driver|skb]";
const DEFAULT_FRAMES: u64 = 100_000;
const DEFAULT_SEED: u64 = 7;

struct Args {
    config: Config,
    case: Option<u64>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut config = Config::new(DEFAULT_FRAMES, DEFAULT_SEED);
    let mut case = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |v: &String| -> Result<u64> {
            v.parse()
                .with_context(|| format!("{flag} {v:?}: not a non-negative integer"))
        };
        match flag.as_str() {
            "--frames" => config.frames = number(value()?)?,
            "--seed" => config.seed = number(value()?)?,
            "--case" => case = Some(number(value()?)?),
            "--round-frames" => config.round_frames = number(value()?)? as usize,
            "--max-rate" => config.max_rate = number(value()?)? as u32,
            "--reruns" => config.reruns = number(value()?)? as usize,
            "--out" => config.out_dir = PathBuf::from(value()?),
            "--log" => config.log = Some(PathBuf::from(value()?)),
            "--xdp-mode" => config.mode = lab::parse_mode(value()?)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args { config, case })
}

fn replay(config: &Config, index: u64) -> Result<bool> {
    let lab = Lab::new(config.mode)?;
    let mut ids = Ids::new(config.seed);
    let case = generate::generate(config.seed, index, 0, &mut ids);
    println!("{}", case.summary());
    for frame in &case.frames {
        println!("{}", serve_guard_tests::frames::hex::to_hex(frame));
    }
    let mut round = 0;
    let mut unattributed = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..=config.reruns {
        let case = campaign::rebuild(&case, &mut ids);
        runs.extend(campaign::run_round(
            &lab,
            &[case],
            &mut round,
            &mut unattributed,
        )?);
    }
    for (i, o) in runs.iter().enumerate() {
        println!(
            "sending {i}: filtered delivered {}, baseline delivered {}, bypass {}",
            o.filtered, o.baseline, o.bypass
        );
    }
    let verdict = campaign::judge(&case, &runs);
    println!("verdict: {}", verdict.name());
    Ok(!verdict.is_failure())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|a| match a.case {
        Some(index) => replay(&a.config, index),
        None => {
            let r = campaign::run(&a.config)?;
            print!("{}", report::summary(&r));
            for path in report::write_findings(&r, &a.config.out_dir)? {
                println!("wrote {}", path.display());
            }
            Ok(r.passed())
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fuzz_wire: {e:#}");
            ExitCode::from(2)
        }
    }
}
