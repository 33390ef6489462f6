//! A fresh Debian root filesystem to install the package into and run it from, with `chroot`.
//!
//! `debootstrap --variant=minbase` builds the base once per set of inputs (suite, architecture,
//! mirror) under `target/rootfs/`; every [`Rootfs`] is a throw-away overlay on top of it, so the
//! cache stays pristine and each test starts from a freshly bootstrapped system. Unmounted and
//! removed on drop.

use crate::netns::pid_alive;
use crate::workspace_root;
use anyhow::{Context as _, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const MIRROR: &str = "http://deb.debian.org/debian";
const VARIANT: &str = "minbase";
const ARCH: &str = "amd64";
/// Names the inputs a cached base was built from; a base whose record differs is rebuilt.
const INPUTS_FILE: &str = "serve-guard-rootfs-inputs";

/// Temporary overlays are named `<prefix><pid>-<random>`, so a sweep can tell a killed run's.
const TEMP_PREFIX: &str = "serve-guard-rootfs-";

/// One bootstrap at a time in this process (tests run in parallel threads).
static BOOTSTRAP: Mutex<()> = Mutex::new(());

/// A fresh overlay of a bootstrapped `suite` (e.g. "bullseye"), mounted with /proc.
pub struct Rootfs {
    root: PathBuf,
    proc_mounted: bool,
    _dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn debian(suite: &str) -> Result<Self> {
        sweep_stale();
        let base = cached_base(suite)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("temporary folder for the overlay")?;
        let (upper, work, root) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
        );
        for d in [&upper, &work, &root] {
            std::fs::create_dir(d)?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            upper.display(),
            work.display()
        );
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&root),
        )?;
        let mut rootfs = Rootfs {
            root,
            proc_mounted: false,
            _dir: dir,
        };
        run_ok(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(rootfs.root.join("proc")),
        )?;
        rootfs.proc_mounted = true;
        Ok(rootfs)
    }

    /// The root folder: files written here are seen inside the chroot.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `root` + an absolute path inside it.
    pub fn join(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Runs `args` inside the chroot with a clean environment; returns its output whatever the
    /// exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new("chroot")
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .output()
            .with_context(|| format!("running {args:?} in the chroot"))
    }

    /// Like [`Rootfs::run`], failing with its stderr unless it exits 0; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(
            out.status.success(),
            "{args:?} in the chroot failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if self.proc_mounted {
            unmount(&self.root.join("proc"));
        }
        unmount(&self.root);
    }
}

fn unmount(path: &Path) {
    if !Command::new("umount")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
    {
        // Still busy (a process the test left behind): detach it so the temp folder can go.
        let _ = Command::new("umount").arg("--lazy").arg(path).status();
    }
}

/// Unmounts and removes the overlays of test processes that were killed before their Drop ran
/// (their pid is gone). A folder that still has a mount below it is left alone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TEMP_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let dir = entry.path();
        // Deepest first: /proc inside the root, then the root.
        for mount in mounts_below(&dir).iter().rev() {
            unmount(mount);
        }
        if mounts_below(&dir).is_empty() && std::fs::remove_dir_all(&dir).is_ok() {
            eprintln!("removed the overlay {name} left by a killed test process {pid}");
        }
    }
}

/// Mount points at or below `dir`, in mount order.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// The bootstrapped base for `suite`, built on first use. Built in a temporary folder next to
/// its final place and renamed, so an interrupted bootstrap never looks complete.
fn cached_base(suite: &str) -> Result<PathBuf> {
    let _one_at_a_time = BOOTSTRAP.lock().unwrap_or_else(|e| e.into_inner());
    let cache = workspace_root().join("target").join("rootfs");
    let base = cache.join(format!("{suite}-{VARIANT}-{ARCH}"));
    let inputs = format!("suite={suite}\nvariant={VARIANT}\narch={ARCH}\nmirror={MIRROR}\n");
    let record = base.join(INPUTS_FILE);
    if std::fs::read_to_string(&record).is_ok_and(|have| have == inputs) {
        return Ok(base);
    }
    if base.exists() {
        std::fs::remove_dir_all(&base)
            .with_context(|| format!("removing the outdated {}", base.display()))?;
    }
    std::fs::create_dir_all(&cache)?;
    let partial = cache.join(format!(".{suite}-partial-{}", std::process::id()));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    eprintln!(
        "bootstrapping Debian {suite} into {} (cached)",
        base.display()
    );
    let bootstrap = run_ok(
        Command::new("debootstrap")
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--arch={ARCH}"))
            .arg(suite)
            .arg(&partial)
            .arg(MIRROR),
    );
    if let Err(e) = bootstrap {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e.context("debootstrap (Debian package debootstrap, installed by setup)"));
    }
    std::fs::write(partial.join(INPUTS_FILE), &inputs)?;
    std::fs::rename(&partial, &base)
        .with_context(|| format!("moving the bootstrapped system to {}", base.display()))?;
    Ok(base)
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
