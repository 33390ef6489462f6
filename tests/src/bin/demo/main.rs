//! `cargo xtask demo`: serve-guard on a throw-away network of namespaces, start to finish.
//!
//! Each part builds its own topology, runs the real agent on it, shows what clients see and tears
//! everything down, also on Ctrl-C and on failure (Drop guards; the signal handler only asks the
//! part to stop between steps, so unwinding runs the guards).
//!
//! Usage: `demo [PART...]` with PART one of the names in [`PARTS`]; no argument runs them all.

#![deny(unsafe_code)]

#[allow(unsafe_code, reason = "sigaction(2) for Ctrl-C")]
mod interrupt;
mod private;
mod public;
mod table;

use anyhow::{Result, bail};
use std::process::ExitCode;

/// One story the demo can tell. `run` returns whether every client saw what it should.
struct Part {
    name: &'static str,
    about: &'static str,
    run: fn() -> Result<bool>,
}

/// The parts, in the order they run.
const PARTS: &[Part] = &[
    Part {
        name: "private",
        about: "private mode: outside the VPC ranges, Serve's ports and every unlisted port are closed, SSH stays open",
        run: private::run,
    },
    Part {
        name: "public",
        about: "public mode: the token proxy, the API docs link and its cookie",
        run: public::run,
    },
];

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("\nSome results differ from what serve-guard should do (see above).");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<bool> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: demo [PART...]\n\nparts:");
        for p in PARTS {
            println!("  {:<10} {}", p.name, p.about);
        }
        return Ok(true);
    }
    let chosen: Vec<&Part> = if args.is_empty() {
        PARTS.iter().collect()
    } else {
        args.iter()
            .map(|a| match PARTS.iter().find(|p| p.name == a) {
                Some(p) => Ok(p),
                None => bail!(
                    "unknown part {a:?}; choose from: {}",
                    PARTS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect::<Result<_>>()?
    };
    if !is_root() {
        bail!("the demo creates network namespaces and loads an XDP program: run it as root");
    }
    interrupt::install()?;
    let mut all_good = true;
    for part in chosen {
        all_good &= (part.run)()?;
    }
    Ok(all_good)
}

/// Whether this process runs as root.
#[allow(unsafe_code, reason = "geteuid(2)")]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
