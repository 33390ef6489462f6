//! `cargo xtask <task>`: the project's developer entry points.
//!
//! xtask compiles on any stable toolchain; everything else is built with the toolchains pinned in
//! the workspace Cargo.toml, which `setup` installs.

#![forbid(unsafe_code)]

mod cmd;
mod install;
#[cfg(test)]
mod layers;
mod package;
mod setup;
mod tasks;
mod toolchains;
mod vm;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup              install the pinned toolchains, bpf-linker, Debian packages, test venv; mount bpffs
  build [--release]  build the agent (and, through it, the XDP program)
  run -- <args>      build and run the agent with <args>, e.g. `cargo xtask run -- run -c dev.toml`
  demo               private (and public) mode end to end in throw-away network namespaces
  test [args]        every test of the project (args go to `cargo test`)
  test-vm [--kernel SUITE]... [--build-only]
                     the agent under systemd on Debian 11/12/12-backports/13 kernels in QEMU
  bench              XDP cost per packet from BPF_PROG_TEST_RUN; writes docs/BENCHMARKS.md
                     (--many-sources: the proxy's token client under floods of 10 to 10,000 sources)
  fuzz [verdict|wire|all] [--frames N] [--seed S]
                     the differential fuzzers of the XDP filter (default: all, 10M verdict frames)
  install            install the binary, the systemd unit and an example config
  package            target/debian/serve-guard_<version>_amd64.deb (static binary, unit, man pages)";

fn main() -> std::process::ExitCode {
    // Print the error chain, not a backtrace: failures here are about the machine, not xtask.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "setup" => setup::run().map(|_| ()),
        "build" => tasks::build(&rest),
        "run" => tasks::run(&rest),
        "demo" => tasks::demo(&rest),
        "test" => tasks::test(&rest),
        "bench" => tasks::bench(&rest),
        "test-vm" => tasks::test_vm(&rest),
        "fuzz" => tasks::fuzz(&rest),
        "install" => tasks::install(&rest),
        "package" => package::run(&rest),
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}
