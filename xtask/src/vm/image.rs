//! The guest's disk: a Debian root filesystem with systemd (debootstrap, cached), the kernels'
//! modules and one small initramfs per kernel (cached), the project's .deb (`cargo xtask
//! package`) installed with dpkg, and the test's own files (tests/vm/guest). `mkfs.ext4 -d` turns the folder
//! into a raw image without loop mounts; every boot runs on a qcow2 overlay of it.

use super::kernels::Kernel;
use super::{HOST_SUITE, apt};
use crate::cmd;
use anyhow::{Context as _, Result, bail};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's packages on top of debootstrap's minbase.
const GUEST_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "procps",
    "python3",
    "initramfs-tools",
    // Issue 20: libxdp's tools (and libxdp1 for the agent's glibc build) to share eth0 with.
    "xdp-tools",
];

/// Module folders no test VM loads from; left out to keep the image small.
const UNUSED_MODULES: &[&str] = &[
    "kernel/sound",
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/infiniband",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/staging",
    "kernel/drivers/usb",
    "kernel/drivers/scsi",
    "kernel/drivers/ata",
    "kernel/drivers/iio",
    "kernel/drivers/hid",
    "kernel/drivers/input",
    "kernel/drivers/bluetooth",
    "kernel/drivers/isdn",
    "kernel/drivers/mtd",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
];

/// Modules the initramfs loads to mount the root disk.
const INITRAMFS_MODULES: &str = "virtio_pci\nvirtio_blk\next4\n";

/// The test's guest files: (source under tests/vm/guest, destination in the guest, mode).
const GUEST_FILES: &[(&str, &str, u32)] = &[
    ("sg-ctl.sh", "usr/local/lib/sg-vm/sg-ctl.sh", 0o755),
    ("steps.sh", "usr/local/lib/sg-vm/steps.sh", 0o755),
    ("servers.py", "usr/local/lib/sg-vm/servers.py", 0o755),
    ("sg-ctl.service", "etc/systemd/system/sg-ctl.service", 0o644),
    (
        "sg-servers.service",
        "etc/systemd/system/sg-servers.service",
        0o644,
    ),
    (
        "10-eth0.network",
        "etc/systemd/network/10-eth0.network",
        0o644,
    ),
    (
        "serve-guard.toml",
        "etc/serve-guard/serve-guard.toml",
        0o600,
    ),
    ("vpc-cidrs", "etc/serve-guard/vpc-cidrs", 0o644),
];

/// Where `cargo xtask install` put the binary and the unit (see [`install_project`]).
const PRE_PACKAGE_FILES: &[&str] = &[
    "usr/local/bin/serve-guard",
    "usr/local/lib/systemd/system/serve-guard.service",
];

/// Units enabled in the guest (serve-guard itself is enabled by the scenario).
const GUEST_UNITS: &[&str] = &["systemd-networkd", "sg-ctl", "sg-servers"];

/// Marks a finished debootstrap.
/// The agent's glibc build, linked with libxdp, for the sharing check (steps.sh's LIBXDP_BIN).
const LIBXDP_AGENT: &str = "usr/local/lib/sg-vm/serve-guard-libxdp";
const ROOTFS_STAMP: &str = ".sg-rootfs-complete";
/// Free room in the image on top of its content, in MiB.
const IMAGE_SLACK_MIB: u64 = 512;

/// The image and, per kernel, its initramfs.
pub struct Image {
    pub raw: PathBuf,
}

impl Image {
    pub fn initrd(&self, kernel: &Kernel) -> PathBuf {
        kernel.root.join("initrd.img")
    }
}

/// The guest system with the kernels' modules, before the project is installed.
pub struct System {
    rootfs: PathBuf,
}

/// Builds (or reuses) the root filesystem and adds the kernels.
pub fn system(cache: &Path, kernels: &[Kernel]) -> Result<System> {
    let rootfs = rootfs(cache)?;
    configure_system(&rootfs)?;
    for kernel in kernels {
        add_kernel(&rootfs, kernel).with_context(|| format!("adding kernel {}", kernel.version))?;
    }
    Ok(System { rootfs })
}

/// Installs the package `deb` and the test's files, and makes the disk image.
pub fn build(cache: &Path, system: &System, deb: &Path, libxdp_agent: &Path) -> Result<Image> {
    install_project(&system.rootfs, deb)?;
    let dest = system.rootfs.join(LIBXDP_AGENT);
    std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
    std::fs::copy(libxdp_agent, &dest)
        .with_context(|| format!("copying {} into the guest's root", libxdp_agent.display()))?;
    let raw = cache.join("disk.img");
    make_image(&system.rootfs, &raw)?;
    Ok(Image { raw })
}

/// debootstrap's root filesystem, in a folder named after its inputs.
fn rootfs(cache: &Path) -> Result<PathBuf> {
    let mirror = apt::host_mirror()?;
    let mut key = DefaultHasher::new();
    (HOST_SUITE, GUEST_PACKAGES, &mirror).hash(&mut key);
    let dir = cache.join(format!("rootfs-{:016x}", key.finish()));
    if dir.join(ROOTFS_STAMP).exists() {
        return Ok(dir);
    }
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--merged-usr"])
            .arg(format!("--include={}", GUEST_PACKAGES.join(",")))
            .arg(HOST_SUITE)
            .arg(&partial)
            .arg(&mirror),
    )?;
    std::fs::write(partial.join(ROOTFS_STAMP), "")?;
    std::fs::rename(&partial, &dir)?;
    Ok(dir)
}

/// The guest's system settings: cheap to rewrite every time.
fn configure_system(rootfs: &Path) -> Result<()> {
    write(rootfs, "etc/hostname", "sg-vm\n")?;
    write(rootfs, "etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n")?;
    // A persistent journal: the journal check covers every boot, the reboot's too.
    std::fs::create_dir_all(rootfs.join("var/log/journal"))?;
    write(
        rootfs,
        "etc/initramfs-tools/conf.d/sg-vm.conf",
        "MODULES=list\nCOMPRESS=gzip\n",
    )?;
    write(rootfs, "etc/initramfs-tools/modules", INITRAMFS_MODULES)?;
    Ok(())
}

/// The kernel's modules (without the unused folders) and config in the root filesystem, and an
/// initramfs made by the guest's own initramfs-tools next to the kernel.
fn add_kernel(rootfs: &Path, kernel: &Kernel) -> Result<()> {
    let initrd = kernel.root.join("initrd.img");
    let modules = rootfs.join("usr/lib/modules").join(&kernel.version);
    if initrd.exists() && modules.is_dir() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&modules);
    std::fs::create_dir_all(modules.parent().expect("has a parent"))?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(kernel.modules()?)
            .arg(&modules),
    )?;
    for unused in UNUSED_MODULES {
        let _ = std::fs::remove_dir_all(modules.join(unused));
    }
    std::fs::copy(
        kernel.config(),
        rootfs
            .join("boot")
            .join(format!("config-{}", kernel.version)),
    )?;
    cmd::run(
        Command::new("chroot")
            .arg(rootfs)
            .args(["depmod", &kernel.version]),
    )?;
    let inside = format!("/boot/initrd.img-{}", kernel.version);
    cmd::run(Command::new("chroot").arg(rootfs).args([
        "mkinitramfs",
        "-o",
        &inside,
        &kernel.version,
    ]))?;
    std::fs::rename(rootfs.join(inside.trim_start_matches('/')), &initrd)?;
    Ok(())
}

/// The project's .deb installed with dpkg in the guest's root, as on a node, then the test's files
/// (the config among them: the package ships none).
fn install_project(rootfs: &Path, deb: &Path) -> Result<()> {
    let workspace = crate::toolchains::workspace_root();
    // A cached root from before the package existed has `cargo xtask install`'s copies, which
    // would shadow the package's (/usr/local comes first in systemd's and the shell's paths).
    for stale in PRE_PACKAGE_FILES {
        let _ = std::fs::remove_file(rootfs.join(stale));
    }
    let inside = Path::new("tmp/serve-guard.deb");
    std::fs::copy(deb, rootfs.join(inside))
        .with_context(|| format!("copying {} into the guest's root", deb.display()))?;
    cmd::run(
        Command::new("chroot")
            .arg(rootfs)
            .args(["dpkg", "-i"])
            .arg(Path::new("/").join(inside)),
    )?;
    std::fs::remove_file(rootfs.join(inside))?;
    let guest = workspace.join("tests/vm/guest");
    for (source, dest, mode) in GUEST_FILES {
        let dest = rootfs.join(dest);
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        std::fs::copy(guest.join(source), &dest)
            .with_context(|| format!("copying {source} to {}", dest.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode))?;
    }
    cmd::run(
        Command::new("chroot")
            .arg(rootfs)
            .args(["systemctl", "enable", "--quiet"])
            .args(GUEST_UNITS),
    )?;
    Ok(())
}

/// `mkfs.ext4 -d`: the folder as a raw ext4 image, sized to its content plus some room.
fn make_image(rootfs: &Path, raw: &Path) -> Result<()> {
    let du = cmd::output(Command::new("du").args(["-s", "-B1M"]).arg(rootfs))?;
    let used: u64 = du
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read du's output: {du}"))?;
    let _ = std::fs::remove_file(raw);
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "sg-vm", "-d"])
            .arg(rootfs)
            .arg(raw)
            .arg(format!("{}M", used + used / 4 + IMAGE_SLACK_MIB)),
    )?;
    if !raw.exists() {
        bail!("mkfs.ext4 made no {}", raw.display());
    }
    Ok(())
}

fn write(rootfs: &Path, path: &str, text: &str) -> Result<()> {
    let path = rootfs.join(path);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
