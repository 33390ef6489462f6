//! The kernels under test: Debian's own kernel packages, downloaded through the private apt
//! configuration and unpacked once into target/vm/kernels/<suite>/.

use super::apt::PrivateApt;
use crate::cmd;
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One kernel of the matrix: which Debian release users get it from.
pub struct KernelSpec {
    pub label: &'static str,
    pub suite: &'static str,
}

/// Debian 11, 12, 12-backports and 13: 5.10, 6.1 and 6.12 (twice, different builds).
pub const MATRIX: &[KernelSpec] = &[
    KernelSpec {
        label: "Debian 11",
        suite: "bullseye",
    },
    KernelSpec {
        label: "Debian 12",
        suite: "bookworm",
    },
    KernelSpec {
        label: "Debian 12 backports",
        suite: "bookworm-backports",
    },
    KernelSpec {
        label: "Debian 13",
        suite: "trixie",
    },
];

/// The metapackage that depends on the suite's current kernel.
const META_PACKAGE: &str = "linux-image-amd64";
/// Written last into a kernel's folder: its presence means the unpack is complete.
const VERSION_FILE: &str = "version";

/// An unpacked kernel package.
pub struct Kernel {
    pub label: &'static str,
    pub suite: &'static str,
    /// `uname -r`, e.g. 5.10.0-32-amd64.
    pub version: String,
    /// The unpacked package: boot/vmlinuz-<version>, boot/config-<version>, modules.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.version))
    }

    pub fn config(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("config-{}", self.version))
    }

    /// lib/modules/<version> (usr/lib/modules on merged-/usr packages).
    pub fn modules(&self) -> Result<PathBuf> {
        ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| self.root.join(d).join(&self.version))
            .find(|p| p.is_dir())
            .with_context(|| format!("no modules for {} in {}", self.version, self.root.display()))
    }
}

/// The kernels of `specs`, downloading and unpacking those not cached yet.
pub fn fetch(cache: &Path, specs: &[&KernelSpec]) -> Result<Vec<Kernel>> {
    let mut apt = None;
    let mut kernels = Vec::new();
    for spec in specs {
        let dir = cache.join("kernels").join(spec.suite);
        if !dir.join(VERSION_FILE).exists() {
            if apt.is_none() {
                let suites: Vec<&str> = MATRIX.iter().map(|k| k.suite).collect();
                apt = Some(PrivateApt::new(&cache.join("apt-kernels"), &suites, true)?);
            }
            let apt = apt.as_ref().expect("set above");
            unpack(apt, spec, &dir).with_context(|| format!("kernel of {}", spec.suite))?;
        }
        let version = std::fs::read_to_string(dir.join(VERSION_FILE))?
            .trim()
            .to_owned();
        kernels.push(Kernel {
            label: spec.label,
            suite: spec.suite,
            version,
            root: dir,
        });
    }
    Ok(kernels)
}

/// Downloads the suite's `linux-image-amd64`, then the versioned image package it depends on,
/// and unpacks the latter into `dir`.
fn unpack(apt: &PrivateApt, spec: &KernelSpec, dir: &Path) -> Result<()> {
    let download = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&download);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&download)?;
    let meta = download_one(apt, &download, &format!("{META_PACKAGE}/{}", spec.suite))?;
    let depends = cmd::output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&meta)
            .arg("Depends"),
    )?;
    // "linux-image-6.1.0-50-amd64 (= 6.1.153-1)" or with a -unsigned alternative.
    let image = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && !d.ends_with("-unsigned"))
        .with_context(|| format!("{META_PACKAGE} depends on no kernel image: {depends}"))?
        .to_owned();
    let deb = download_one(apt, &download, &format!("{image}/{}", spec.suite))?;
    std::fs::create_dir_all(dir)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
    let version = image
        .strip_prefix("linux-image-")
        .expect("checked above")
        .to_owned();
    let kernel = Kernel {
        label: spec.label,
        suite: spec.suite,
        version: version.clone(),
        root: dir.to_path_buf(),
    };
    for needed in [kernel.vmlinuz(), kernel.config(), kernel.modules()?] {
        if !needed.exists() {
            bail!("{} has no {}", deb.display(), needed.display());
        }
    }
    std::fs::remove_dir_all(&download)?;
    std::fs::write(dir.join(VERSION_FILE), format!("{version}\n"))?;
    Ok(())
}

/// `apt-get download <what>` into `dir`; returns the .deb it wrote.
fn download_one(apt: &PrivateApt, dir: &Path, what: &str) -> Result<PathBuf> {
    let before: Vec<PathBuf> = debs(dir)?;
    cmd::run(
        apt.apt_get()
            .current_dir(dir)
            .args(["download", "-q", what]),
    )?;
    debs(dir)?
        .into_iter()
        .find(|d| !before.contains(d))
        .with_context(|| format!("apt-get download {what} wrote no .deb"))
}

fn debs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect())
}
