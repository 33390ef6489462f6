//! Running child processes with a readable trace and errors that name the command.

use anyhow::{Context as _, Result, bail};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

thread_local! {
    /// Where this thread's commands write instead of the terminal (see [`logged`]).
    static LOG: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// Runs `f` with the trace and the output of every command it runs written to a new file
/// `log` instead of the terminal: for work done in a thread beside another command's output.
pub fn logged<T>(log: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    LOG.with(|l| *l.borrow_mut() = Some(file));
    let out = f();
    LOG.with(|l| *l.borrow_mut() = None);
    out.with_context(|| format!("(its commands' output: {})", log.display()))
}

/// Runs `cmd`, inheriting stdio (or writing to this thread's log); fails with the command line
/// if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let log = LOG.with(|l| l.borrow().as_ref().map(File::try_clone).transpose())?;
    match log {
        Some(mut log) => {
            writeln!(log, "+ {}", display(cmd))?;
            cmd.stdout(log.try_clone()?).stderr(log);
        }
        None => eprintln!("+ {}", display(cmd)),
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns whether it succeeded (for probes such as `dpkg -s`).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` and returns its stdout, failing with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
