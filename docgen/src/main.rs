//! `serve-guard-docgen OUT_DIR`: the man pages and shell completions, generated from the CLI
//! definition itself (`serve_guard::cli::Cli`), so they can never drift from `--help`.
//!
//! Writes `OUT_DIR/man/serve-guard.8` plus one page per subcommand (`serve-guard-cidr-add.8`, ...)
//! and `OUT_DIR/completions/{serve-guard.bash,_serve-guard,serve-guard.fish}`. `cargo xtask
//! package` runs it and puts the files where Debian expects them. This is a separate crate because
//! xtask must build on any stable without the eBPF toolchain that the serve-guard library needs.

#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Section 8: system administration commands (the agent and its CLI need root).
const MAN_SECTION: &str = "8";
const MANUAL: &str = "System Administration";
/// Shells the package ships completions for, with the file name each one's loader looks for.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "serve-guard.bash"),
    (Shell::Zsh, "_serve-guard"),
    (Shell::Fish, "serve-guard.fish"),
];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve-guard-docgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: serve-guard-docgen OUT_DIR");
    };
    let out = PathBuf::from(out);
    let man_dir = fresh_dir(&out.join("man"))?;
    let completions_dir = fresh_dir(&out.join("completions"))?;

    let mut cmd = serve_guard::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, &man_dir)?;
    for (shell, file) in SHELLS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), cmd.get_name(), &mut text);
        let path = completions_dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Empties and creates `dir`, so a removed subcommand does not leave a stale page behind.
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// One page for `cmd` and, recursively, one per visible subcommand (`serve-guard-cidr-add.8`).
fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir)?;
    }
    let version = cmd.get_version().unwrap_or_default();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(MAN_SECTION)
        .manual(MANUAL)
        .source(format!("serve-guard {version}"));
    man.generate_to(dir)
        .with_context(|| format!("writing the page of `{}`", cmd.get_name()))?;
    Ok(())
}
