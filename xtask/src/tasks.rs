//! The tasks other than setup. Each builds with the pinned stable toolchain.

use crate::cmd;
use crate::setup;
use crate::toolchains::{self, Toolchains, cargo, target_dir};
use anyhow::{Context as _, Result, bail};
use std::path::PathBuf;
use std::process::Command;

fn agent_path(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("serve-guard")
}

fn build_agent(tc: &Toolchains, release: bool) -> Result<PathBuf> {
    let mut c = cargo(tc);
    c.args(["build", "--package", "serve-guard"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)?;
    Ok(agent_path(release))
}

pub fn build(args: &[String]) -> Result<()> {
    let tc = toolchains::load()?;
    let release = args.iter().any(|a| a == "--release");
    let path = build_agent(&tc, release)?;
    eprintln!("built {}", path.display());
    Ok(())
}

/// `cargo xtask run -- <args>` and `cargo xtask run <args>` mean the same.
fn without_separator(args: &[String]) -> &[String] {
    args.strip_prefix(&["--".to_owned()]).unwrap_or(args)
}

pub fn run(args: &[String]) -> Result<()> {
    let tc = toolchains::load()?;
    let args = without_separator(args);
    let agent = build_agent(&tc, false)?;
    let status = Command::new(&agent)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", agent.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

pub fn demo(args: &[String]) -> Result<()> {
    let tc = setup::run()?;
    let agent = build_agent(&tc, false)?;
    let mut c = cargo(&tc);
    c.args([
        "run",
        "--quiet",
        "--package",
        "serve-guard-tests",
        "--bin",
        "demo",
        "--",
    ])
    .args(without_separator(args))
    .env("SERVE_GUARD_BIN", agent);
    cmd::run(&mut c)
}

pub fn test(args: &[String]) -> Result<()> {
    let tc = setup::run()?;
    let agent = build_agent(&tc, false)?;
    let deb = runs_package_test(args)
        .then(|| crate::package::build(&tc))
        .transpose()?;
    let test = || {
        let mut c = cargo(&tc);
        c.arg("test");
        let picks_packages = args
            .iter()
            .any(|a| a.starts_with("-p") || a.starts_with("--package"));
        if !picks_packages {
            // Plain --workspace would include the eBPF crate, which only builds for the BPF
            // target.
            c.args(["--workspace", "--exclude", "serve-guard-ebpf"]);
        }
        c.args(args).env("SERVE_GUARD_BIN", &agent);
        if let Some(deb) = &deb {
            c.env("SERVE_GUARD_DEB", deb);
        }
        c
    };
    // The kernel matrix belongs to the whole suite, not to a run picked with arguments.
    let matrix = match (args.is_empty(), crate::vm::cannot_boot()) {
        (false, _) => {
            eprintln!("test-vm: not run (test arguments given; `cargo xtask test-vm` runs it)");
            None
        }
        (true, Some(reason)) => {
            eprintln!("test-vm: SKIPPED: this host cannot boot the test VMs: {reason}");
            None
        }
        (true, None) => Some(crate::vm::Options {
            suites: CI_SUITES.map(String::from).to_vec(),
            build_only: false,
            share_on: vec![SHARE_SUITE.into()],
        }),
    };
    if matrix.is_some() {
        // Compiled first, so that the VM preparation below overlaps the tests' run, which
        // waits on namespaces and processes, rather than the compiler, which does not.
        cmd::run(test().arg("--no-run"))?;
    }
    // The kernels and the guest system do not depend on the project: they are fetched and
    // built (network and disk, mostly) while the tests run.
    let preparing = matrix.as_ref().map(|options| {
        let suites = options.suites.clone();
        std::thread::spawn(move || {
            let log = crate::vm::cache_dir().join("prepare.log");
            std::fs::create_dir_all(crate::vm::cache_dir())?;
            let started = std::time::Instant::now();
            let prepared = cmd::logged(&log, || crate::vm::prepare(&suites))?;
            eprintln!(
                "test-vm: kernels and guest system prepared beside the tests in {:.0} s ({})",
                started.elapsed().as_secs_f64(),
                log.display()
            );
            Ok::<_, anyhow::Error>(prepared)
        })
    });
    // Waits for the preparation even when the tests failed: its commands must not outlive us.
    let tested = cmd::run(&mut test());
    let prepared = preparing.map(|thread| {
        thread
            .join()
            .unwrap_or_else(|_| bail!("preparing the VMs panicked"))
    });
    tested?;
    match (matrix, prepared) {
        // The suite's own builds: the agent tested above, the .deb the package test installed
        // (the matrix runs only with the whole suite, which always includes that test).
        (Some(options), Some(prepared)) => {
            let deb = deb.context("the whole suite builds the .deb")?;
            crate::vm::run(&options, &prepared?, &deb, &agent)
        }
        _ => Ok(()),
    }
}

/// The kernels `cargo xtask test` (CI) boots: Debian 11's 5.10 (the oldest, and the one the
/// sharing checks run on), 12's 6.1 and 13's 6.12. Debian 12's backports kernel is the same 6.12
/// series as 13's: `cargo xtask test-vm` boots it with the others (and writes docs/KERNELS.md);
/// CI leaves it out to keep its time.
const CI_SUITES: [&str; 3] = ["bullseye", "bookworm", "trixie"];

/// The kernel `cargo xtask test` runs the libxdp sharing check on: Debian 11's 5.10, the
/// protocol's minimum.
const SHARE_SUITE: &str = "bullseye";

/// The test binary of serve-guard-tests that holds the package test (tests/tests/system/).
const PACKAGE_TEST_BINARY: &str = "system";

/// Whether the package test (tests/tests/system/package.rs) is among the selected tests: the .deb
/// takes a release build for another target, which `--test <other>` should not wait for.
fn runs_package_test(args: &[String]) -> bool {
    let mut picked = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--test")
        .map(|(_, name)| name.as_str())
        .chain(args.iter().filter_map(|a| a.strip_prefix("--test=")))
        .peekable();
    picked.peek().is_none() || picked.any(|name| name == PACKAGE_TEST_BINARY)
}

/// `cargo run --release` of the serve-guard-tests binary `bin` with `args`, to run.
fn tests_binary(tc: &Toolchains, bin: &str, args: &[String]) -> Command {
    let mut c = cargo(tc);
    c.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "serve-guard-tests",
        "--bin",
        bin,
        "--",
    ])
    .args(args);
    c
}

pub fn bench(args: &[String]) -> Result<()> {
    let tc = setup::run()?;
    let args = without_separator(args);
    // The proxy under a many-source flood (N up to 10,000): a long, ignored test of the attack
    // suite, in release so the latencies are the proxy's, not a debug build's.
    if args.iter().any(|a| a == "--many-sources") {
        let mut c = cargo(&tc);
        c.args([
            "test",
            "--release",
            "--package",
            "serve-guard-proxy",
            "--test",
            "attacks",
        ])
        .args(["many_sources_long_run", "--", "--ignored", "--nocapture"]);
        return cmd::run(&mut c);
    }
    let mut c = tests_binary(&tc, "bench", args);
    // The proxy comparison runs the agent itself, built like a deployment.
    if args.iter().any(|a| a == "--proxy") {
        c.env("SERVE_GUARD_BIN", build_agent(&tc, true)?);
    }
    cmd::run(&mut c)
}

/// The fuzzers of `cargo xtask fuzz`: (name on the command line, binary of serve-guard-tests).
/// A new fuzzer is one more row. `all` skips a fuzzer whose binary the package does not have
/// (yet); naming it explicitly fails.
const FUZZERS: [(&str, &str); 2] = [("verdict", "fuzz_verdict"), ("wire", "fuzz_wire")];
const ALL_FUZZERS: &str = "all";

/// Whether serve-guard-tests has the binary `name` (cargo finds src/bin/NAME.rs and
/// src/bin/NAME/main.rs by itself).
fn tests_binary_exists(name: &str) -> bool {
    let bin = toolchains::workspace_root().join("tests/src/bin");
    bin.join(format!("{name}.rs")).is_file() || bin.join(name).join("main.rs").is_file()
}

/// `cargo xtask fuzz [verdict|wire|all] [args]`: runs the chosen fuzzers (default all) in
/// release, each with `args` (e.g. `--frames N --seed S`), and fails if any found something.
pub fn fuzz(args: &[String]) -> Result<()> {
    let args = without_separator(args);
    let known = |a: &str| a == ALL_FUZZERS || FUZZERS.iter().any(|(n, _)| *n == a);
    let (which, rest) = match args.first() {
        Some(first) if known(first) => (first.as_str(), &args[1..]),
        _ => (ALL_FUZZERS, args),
    };
    let tc = setup::run()?;
    let mut failed = Vec::new();
    for (name, bin) in FUZZERS
        .iter()
        .filter(|(name, _)| which == ALL_FUZZERS || which == *name)
    {
        if !tests_binary_exists(bin) {
            if which == ALL_FUZZERS {
                eprintln!("fuzz: skipping {name}: serve-guard-tests has no binary {bin}");
                continue;
            }
            bail!("fuzzer {name}: serve-guard-tests has no binary {bin}");
        }
        if let Err(e) = cmd::run(&mut tests_binary(&tc, bin, rest)) {
            eprintln!("xtask: fuzzer {name}: {e:#}");
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        bail!("fuzzers that failed: {}", failed.join(", "));
    }
    Ok(())
}

pub fn install(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("install takes no arguments");
    }
    let tc = setup::run()?;
    let agent = build_agent(&tc, true)?;
    crate::install::install(&agent)
}

pub fn test_vm(args: &[String]) -> Result<()> {
    let options = crate::vm::Options::parse(args)?;
    let tc = setup::run()?;
    let prepared = crate::vm::prepare(&options.suites)?;
    run_vm(&tc, &options, &prepared)
}

/// The VM matrix on prepared kernels and guest system.
fn run_vm(
    tc: &Toolchains,
    options: &crate::vm::Options,
    prepared: &crate::vm::Prepared,
) -> Result<()> {
    // The .deb users install: the static release binary and the packaged unit.
    let deb = crate::package::build(tc)?;
    // The glibc build with libxdp for the sharing check (issue 20): the static binary has none.
    let libxdp_agent = build_agent(tc, false)?;
    crate::vm::run(options, prepared, &deb, &libxdp_agent)
}

#[cfg(test)]
mod tests {
    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn ci_names_suites_of_the_matrix() {
        let mut line: Vec<String> = Vec::new();
        for suite in super::CI_SUITES.iter().chain([&super::SHARE_SUITE]) {
            line.extend(["--kernel".into(), (*suite).into()]);
        }
        assert!(crate::vm::Options::parse(&line).is_ok(), "{line:?}");
    }

    #[test]
    fn the_package_is_built_unless_other_tests_are_picked() {
        assert!(super::runs_package_test(&args("")));
        assert!(super::runs_package_test(&args("-- --nocapture")));
        assert!(super::runs_package_test(&args("--test system")));
        assert!(super::runs_package_test(&args("--test=system")));
        assert!(super::runs_package_test(&args(
            "--test agent --test system"
        )));
        assert!(!super::runs_package_test(&args("--test wire")));
        assert!(!super::runs_package_test(&args("--test=agent")));
    }
}
