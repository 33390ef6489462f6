//! The tasks other than setup. Each builds with the pinned stable toolchain.

use crate::cmd;
use crate::setup;
use crate::toolchains::{self, Toolchains};
use anyhow::{Context as _, Result, bail};
use std::path::PathBuf;
use std::process::Command;

fn cargo(tc: &Toolchains) -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{}", tc.stable))
        .current_dir(toolchains::workspace_root());
    // The tests and the demo find the agent binary and the Ray venv through these.
    c.env("SERVE_GUARD_RAY_VENV", setup::venv_dir());
    c
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| toolchains::workspace_root().join("target"))
}

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
    let mut c = cargo(&tc);
    c.arg("test");
    let picks_packages = args
        .iter()
        .any(|a| a.starts_with("-p") || a.starts_with("--package"));
    if !picks_packages {
        // Plain --workspace would include the eBPF crate, which only builds for the BPF target.
        c.args(["--workspace", "--exclude", "serve-guard-ebpf"]);
    }
    c.args(args).env("SERVE_GUARD_BIN", agent);
    cmd::run(&mut c)?;
    // The kernel matrix belongs to the whole suite, not to a run picked with arguments.
    if !args.is_empty() {
        eprintln!("test-vm: not run (test arguments given; `cargo xtask test-vm` runs it)");
        return Ok(());
    }
    match crate::vm::cannot_boot() {
        Some(reason) => {
            eprintln!("test-vm: SKIPPED: this host cannot boot the test VMs: {reason}");
            Ok(())
        }
        None => test_vm(&[]),
    }
}

pub fn bench(args: &[String]) -> Result<()> {
    let tc = setup::run()?;
    let mut c = cargo(&tc);
    c.args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "serve-guard-tests",
        "--bin",
        "bench",
        "--",
    ])
    .args(without_separator(args));
    cmd::run(&mut c)
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
    let prepared = crate::vm::prepare(&options)?;
    // The release build: what users install, and much faster than a debug build under TCG.
    let agent = build_agent(&tc, true)?;
    crate::vm::run(&options, &prepared, &agent)
}
