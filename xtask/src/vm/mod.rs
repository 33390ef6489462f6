//! `cargo xtask test-vm`: the agent under a real systemd on the Debian kernels users run, each
//! booted under QEMU with a virtio-net NIC whose host side plays the clients.
//!
//! - [`kernels`]: Debian's kernel packages, cached under target/vm/kernels;
//! - [`image`]: a debootstrap root filesystem with the project's .deb, as a raw ext4 image;
//! - [`qemu`]: one VM on a tap in its own network namespace, its console and control channel;
//! - [`scenario`]: the checks, driven from the host;
//! - [`report`]: the kernel x check table, printed and written to docs/KERNELS.md.

pub mod apt;
mod image;
mod kernels;
mod qemu;
mod report;
mod scenario;

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The host's Debian suite (Debian 12) and its backports, where setup takes QEMU from.
pub const HOST_SUITE: &str = "bookworm";
pub const HOST_BACKPORTS: &str = "bookworm-backports";

/// What the host needs to build images and boot them.
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-utils", "debootstrap"];

/// Where the kernel x check table goes (whole-matrix runs only).
const KERNELS_DOC: &str = "docs/KERNELS.md";

/// Cached images, kernels and per-run files.
pub fn cache_dir() -> PathBuf {
    crate::toolchains::target_dir().join("vm")
}

/// Memory the host needs free for one VM and the image build.
const MIN_AVAILABLE_MIB: u64 = 2048;

/// Why this host cannot run the VM tests, if it cannot (after setup has run).
pub fn cannot_boot() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (tap devices)".into());
    }
    for tool in ["qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4"] {
        if !crate::cmd::succeeds(
            std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]),
        ) {
            return Some(format!("{tool} is not installed"));
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024);
    match available_mib {
        Some(mib) if mib < MIN_AVAILABLE_MIB => Some(format!(
            "{mib} MiB of memory available, {MIN_AVAILABLE_MIB} MiB needed"
        )),
        None => Some("cannot read MemAvailable from /proc/meminfo".into()),
        Some(_) => None,
    }
}

/// What `cargo xtask test-vm` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// Suites of the kernels to boot (all of [`kernels::MATRIX`] when empty).
    pub suites: Vec<String>,
    /// Build the image and stop.
    pub build_only: bool,
    /// Suites that run the checks of sharing the interface (libxdp dispatcher, TC fallback; all
    /// suites when empty). They cost about a minute per kernel under TCG, so `cargo xtask test`
    /// runs them on the oldest kernel only, the one the protocol's minimum (5.10) and the clsact
    /// path are about; `cargo xtask test-vm` runs them everywhere.
    pub share_on: Vec<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Options {
            suites: Vec::new(),
            build_only: false,
            share_on: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                flag @ ("--kernel" | "--share-on") => {
                    let suite = match args.next() {
                        Some(suite) if kernels::MATRIX.iter().any(|k| k.suite == suite) => {
                            suite.clone()
                        }
                        other => bail!(
                            "{flag} takes one of {}, not {other:?}",
                            kernels::MATRIX
                                .iter()
                                .map(|k| k.suite)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    match flag {
                        "--kernel" => options.suites.push(suite),
                        _ => options.share_on.push(suite),
                    }
                }
                "--build-only" => options.build_only = true,
                other => {
                    bail!(
                        "test-vm: unknown argument `{other}` (--kernel SUITE, --share-on SUITE, --build-only)"
                    )
                }
            }
        }
        Ok(options)
    }

    /// Whether the libxdp sharing check runs on `suite`.
    pub fn shares_on(&self, suite: &str) -> bool {
        self.share_on.is_empty() || self.share_on.iter().any(|s| s == suite)
    }
}

/// The kernels and the guest system (everything but the project), built or taken from the cache.
pub struct Prepared {
    kernels: Vec<kernels::Kernel>,
    system: image::System,
}

/// The kernels of `suites` (all of [`kernels::MATRIX`] when empty) and the guest system.
pub fn prepare(suites: &[String]) -> Result<Prepared> {
    let cache = cache_dir();
    let specs: Vec<&kernels::KernelSpec> = kernels::MATRIX
        .iter()
        .filter(|k| suites.is_empty() || suites.iter().any(|s| s == k.suite))
        .collect();
    let kernels = kernels::fetch(&cache, &specs)?;
    let system = image::system(&cache, &kernels)?;
    Ok(Prepared { kernels, system })
}

/// Installs the package `deb` into the image and boots every selected kernel, one after the
/// other (TCG is CPU-bound); fails if any check failed.
pub fn run(options: &Options, prepared: &Prepared, deb: &Path, libxdp_agent: &Path) -> Result<()> {
    let started = Instant::now();
    let cache = cache_dir();
    let image = image::build(&cache, &prepared.system, deb, libxdp_agent)?;
    if options.build_only {
        eprintln!("test-vm: image {}", image.raw.display());
        return Ok(());
    }
    let results: Vec<report::KernelResult> = prepared
        .kernels
        .iter()
        .enumerate()
        .map(|(i, kernel)| {
            eprintln!("test-vm: booting {} ({})", kernel.label, kernel.version);
            scenario::run(kernel, &image, i, options.shares_on(kernel.suite))
        })
        .collect();
    let total = started.elapsed();
    println!("\n{}", report::table(&results));
    let notes = report::failures(&results);
    if !notes.is_empty() {
        println!("{notes}");
    }
    // The doc records the whole matrix only: a partial run would misreport the others.
    if options.suites.is_empty() {
        let doc = crate::toolchains::workspace_root().join(KERNELS_DOC);
        report::write_doc(&doc, &results, total, &options.share_on)?;
        eprintln!("test-vm: wrote {}", doc.display());
    }
    let failed = results.iter().filter(|r| r.failed()).count();
    let passed = results.len() - failed;
    println!(
        "test-vm: {} kernels in {:.0} s",
        results.len(),
        total.as_secs_f64()
    );
    // The closing line, alone, in the form CI's log readers understand.
    println!("test-vm: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("test-vm: {failed} of {} kernels failed", results.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn parse(line: &str) -> anyhow::Result<Options> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        Options::parse(&args)
    }

    #[test]
    fn picks_kernels_by_suite() {
        let o = parse("--kernel bullseye --kernel trixie --build-only").unwrap();
        assert_eq!(o.suites, ["bullseye", "trixie"]);
        assert!(o.build_only);
        assert!(o.shares_on("trixie"));
        assert!(parse("").unwrap().suites.is_empty());
        let o = parse("--share-on bullseye").unwrap();
        assert!(o.shares_on("bullseye") && !o.shares_on("trixie"));
    }

    #[test]
    fn refuses_an_unknown_suite_or_argument_naming_it() {
        let e = parse("--kernel buster").unwrap_err().to_string();
        assert!(e.contains("\"buster\"") && e.contains("bullseye"), "{e}");
        let e = parse("--share-on").unwrap_err().to_string();
        assert!(e.contains("--share-on takes") && e.contains("None"), "{e}");
        let e = parse("--fast").unwrap_err().to_string();
        assert!(e.contains("`--fast`"), "{e}");
    }
}
