//! `cargo xtask setup`: everything a fresh machine needs, idempotent. Each step checks before it
//! acts; a second run changes nothing and says so.

use crate::cmd;
use crate::toolchains::{self, Toolchains};
use crate::vm;
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages used by the tests, the demo and the benchmarks.
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",         // inspecting programs and links in tests
    "iproute2",        // ip netns / veth / ip link show xdp
    "iputils-ping",    // ICMP pass-through checks
    "curl",            // control socket checks, demo
    "nftables",        // benchmark peer
    "iptables",        // benchmark peer (raw table)
    "ipset",           // the iptables peer's allow-list
    "netsniff-ng",     // trafgen, benchmark flood
    "nginx-light",     // benchmark peer of the token proxy, and its fast upstream
    "wrk",             // HTTP load for the proxy benchmark
    "chromium",        // public mode: the docs link in a real browser
    "chromium-driver", // driven over WebDriver
    "openssl",         // test certificates
    "systemd",         // systemd-analyze verify
    "strace",          // the unit's SystemCallFilter covers every syscall the agent makes
    "prometheus",      // promtool: checks /metrics, the alert rules and their unit tests
    "musl-tools",      // package: musl-gcc builds ring's C code for the static binary
    "lintian",         // package: the .deb is checked
    "man-db",          // package: the generated man pages render cleanly
    "debootstrap",     // package: a fresh Debian 11 root filesystem to install the .deb into
    "xdp-tools", // xdp-loader, xdp-filter: the libxdp programs serve-guard shares the NIC with
    "libxdp-dev", // the agent links libxdp (dispatcher protocol v2) in glibc builds
];

/// Where bpf-linker finds the eBPF nightly's own libLLVM (see ../shared/FACTS.md): a folder whose
/// lib/ holds `libLLVM.so` and the versioned name, both links into the nightly's sysroot. Kept
/// outside the repository because bpf-linker's RUNPATH points at it.
fn llvm_prefix(ebpf_toolchain: &str) -> PathBuf {
    cargo_home()
        .join("serve-guard")
        .join(format!("llvm-{ebpf_toolchain}"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

/// Outcome of one step, for the closing summary.
enum Step {
    Done,
    Changed,
}

/// Runs every step; returns the pinned toolchains for the caller's builds.
pub fn run() -> Result<Toolchains> {
    let tc = toolchains::load()?;
    let mut changed = false;
    let mut step = |name: &str, outcome: Result<Step>| -> Result<()> {
        match outcome.with_context(|| format!("setup step `{name}`"))? {
            Step::Done => eprintln!("setup: {name}: already in place"),
            Step::Changed => {
                eprintln!("setup: {name}: installed");
                changed = true;
            }
        }
        Ok(())
    };
    step(
        "stable toolchain",
        toolchain(&tc.stable, &["clippy", "rustfmt"]),
    )?;
    step("eBPF toolchain", toolchain(&tc.ebpf, &["rust-src"]))?;
    step(
        "static target",
        rust_target(&tc.stable, toolchains::STATIC_TARGET),
    )?;
    step("bpf-linker", bpf_linker(&tc))?;
    step("Debian packages", debian_packages())?;
    step("VM tools", vm_tools())?;
    step("bpffs", bpffs())?;
    step("Ray Serve venv", python_venv())?;
    if !changed {
        eprintln!("setup: nothing to do, everything was already in place");
    }
    Ok(tc)
}

fn toolchain(name: &str, components: &[&str]) -> Result<Step> {
    let installed = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    let have_toolchain = installed.lines().any(|l| l.starts_with(name));
    let have_components = have_toolchain && {
        let list = cmd::output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            name,
        ]))?;
        components
            .iter()
            .all(|c| list.lines().any(|l| l.starts_with(c)))
    };
    if have_components {
        return Ok(Step::Done);
    }
    let mut install = Command::new("rustup");
    install.args(["toolchain", "install", name, "--profile", "minimal"]);
    for c in components {
        install.args(["--component", c]);
    }
    cmd::run(&mut install)?;
    Ok(Step::Changed)
}

fn rust_target(toolchain: &str, target: &str) -> Result<Step> {
    let installed = cmd::output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(Step::Done);
    }
    cmd::run(Command::new("rustup").args(["target", "add", "--toolchain", toolchain, target]))?;
    Ok(Step::Changed)
}

/// bpf-linker linked against the eBPF nightly's libLLVM. A stamp names the toolchain it was built
/// for, so changing the pin rebuilds it.
fn bpf_linker(tc: &Toolchains) -> Result<Step> {
    let ebpf_toolchain = tc.ebpf.as_str();
    let prefix = llvm_prefix(ebpf_toolchain);
    let stamp = prefix.join("bpf-linker.stamp");
    let works = cmd::succeeds(Command::new("bpf-linker").arg("--version"));
    if works && stamp.exists() {
        return Ok(Step::Done);
    }
    let sysroot = cmd::output(
        Command::new("rustc")
            .arg(format!("+{ebpf_toolchain}"))
            .args(["--print", "sysroot"]),
    )?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    // libLLVM.so.23.1-rust-1.101.0-nightly -> 23
    let llvm_major: u32 = libllvm["libLLVM.so.".len()..]
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {libllvm}"))?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for link in ["libLLVM.so", libllvm.as_str()] {
        let path = lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(sysroot_lib.join(&libllvm), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    let mut install = Command::new("cargo");
    install
        .arg(format!("+{}", tc.stable))
        .args(["install", "bpf-linker", "--locked", "--force"])
        .env("LLVM_PREFIX", &prefix);
    if llvm_major != 23 {
        install.args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ]);
    }
    cmd::run(&mut install)?;
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not start; is $CARGO_HOME/bin on PATH?");
    }
    std::fs::write(&stamp, format!("{ebpf_toolchain}\n"))?;
    Ok(Step::Changed)
}

/// Packages of `wanted` that dpkg does not have installed.
fn missing_packages<'a>(wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|p| {
            // dpkg -s succeeds for removed-but-configured packages too; ask for the status.
            cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect()
}

fn debian_packages() -> Result<Step> {
    let missing = missing_packages(DEBIAN_PACKAGES);
    if missing.is_empty() {
        return Ok(Step::Done);
    }
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(Step::Changed)
}

/// QEMU and debootstrap for `cargo xtask test-vm`. qemu-system-x86 and qemu-utils both come from
/// the host suite's backports: the machine's qemu-utils may already be the backports one, and
/// mixing the two versions makes apt remove it.
fn vm_tools() -> Result<Step> {
    let missing = missing_packages(vm::HOST_PACKAGES);
    if missing.is_empty() {
        return Ok(Step::Done);
    }
    let apt = vm::apt::PrivateApt::new(
        &vm::cache_dir().join("apt-host"),
        &[vm::HOST_SUITE, vm::HOST_BACKPORTS],
        true,
    )?;
    cmd::run(
        apt.apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends", "-t"])
            .arg(vm::HOST_BACKPORTS)
            .args(vm::HOST_PACKAGES),
    )?;
    Ok(Step::Changed)
}

fn bpffs() -> Result<Step> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next();
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        return Ok(Step::Done);
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(Step::Changed)
}

/// Path of the Python venv the public-mode tests run Ray Serve from.
/// A venv with the pinned `tests/python/requirements.txt`. A copy of the requirements inside the
/// venv tells whether it is current.
fn python_venv() -> Result<Step> {
    let requirements = toolchains::workspace_root().join("tests/python/requirements.txt");
    if !requirements.exists() {
        return Ok(Step::Done);
    }
    let wanted = std::fs::read_to_string(&requirements)?;
    let venv = toolchains::venv_dir();
    let installed = venv.join("serve-guard-requirements.txt");
    if std::fs::read_to_string(&installed).is_ok_and(|have| have == wanted) {
        return Ok(Step::Done);
    }
    cmd::run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    std::fs::write(&installed, wanted)?;
    Ok(Step::Changed)
}
