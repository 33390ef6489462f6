//! The .deb from `cargo xtask package` (named by `SERVE_GUARD_DEB`, which `cargo xtask test` sets):
//! lintian finds no errors or warnings, and it installs with dpkg into a fresh Debian 11 root
//! filesystem (glibc 2.31, older than the development build needs), where the static binary runs,
//! the man pages and completions are in place, the unit points at files that exist, and nothing
//! was configured, enabled or started by the installation.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::agent_bin;
use serve_guard_tests::rootfs::Rootfs;
use std::path::PathBuf;
use std::process::Command;

const DEB_ENV: &str = "SERVE_GUARD_DEB";
/// Debian 11: the oldest supported userspace the issue names (glibc 2.31).
const SUITE: &str = "bullseye";
const BIN: &str = "/usr/bin/serve-guard";
const UNIT: &str = "/lib/systemd/system/serve-guard.service";
const CONFIG: &str = "/etc/serve-guard/serve-guard.toml";
const EXAMPLE: &str = "/usr/share/doc/serve-guard/examples/serve-guard.toml";
const MAN_DIR: &str = "/usr/share/man/man8";
const COMPLETIONS: &[(&str, &str)] = &[
    (
        "/usr/share/bash-completion/completions/serve-guard",
        "complete -F",
    ),
    (
        "/usr/share/zsh/vendor-completions/_serve-guard",
        "#compdef serve-guard",
    ),
    (
        "/usr/share/fish/vendor_completions.d/serve-guard.fish",
        "complete -c serve-guard",
    ),
];

fn deb() -> Result<PathBuf> {
    let path = std::env::var_os(DEB_ENV)
        .map(PathBuf::from)
        .with_context(|| format!("{DEB_ENV} is not set: run this through `cargo xtask test`, which builds the package"))?;
    ensure!(path.is_file(), "{} does not exist", path.display());
    Ok(path)
}

/// No errors and no warnings: the one warning the static binary draws is overridden, with its
/// reason, in deploy/debian/lintian-overrides.
#[test]
fn lintian_finds_no_errors_or_warnings() -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb()?)
        .output()
        .context("running lintian (Debian package lintian, installed by setup)")?;
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success()
            && !report
                .lines()
                .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "lintian reports errors or warnings ({})",
        out.status
    );
    Ok(())
}

#[test]
fn installs_and_runs_on_a_fresh_debian_11() -> Result<()> {
    let rootfs = Rootfs::debian(SUITE)?;
    let libc = rootfs.run_ok(&["dpkg-query", "-W", "-f=${Version}", "libc6"])?;
    ensure!(
        libc.starts_with("2.31"),
        "{SUITE} ships glibc {libc}, not 2.31"
    );
    // The development (glibc) build does not run here: it needs a newer glibc, and libxdp
    // (which bullseye does not ship; the loader names whichever it misses first). That is what
    // the static binary is for.
    std::fs::copy(agent_bin()?, rootfs.join("/tmp/serve-guard-glibc"))?;
    let glibc_build = rootfs.run(&["/tmp/serve-guard-glibc", "--version"])?;
    let glibc_error = String::from_utf8_lossy(&glibc_build.stderr);
    ensure!(
        !glibc_build.status.success()
            && (glibc_error.contains("GLIBC_") || glibc_error.contains("libxdp.so")),
        "expected the glibc build to need a newer glibc (or libxdp) than {SUITE} has: {glibc_build:?}"
    );
    eprintln!(
        "{SUITE} has glibc {libc}; the development build: {}",
        glibc_error.lines().next().unwrap_or_default()
    );

    let deb = deb()?;
    std::fs::copy(&deb, rootfs.join("/tmp/serve-guard.deb"))?;
    rootfs.run_ok(&["dpkg", "--install", "/tmp/serve-guard.deb"])?;
    let status = rootfs.run_ok(&["dpkg-query", "-W", "-f=${Status} ${Version}", "serve-guard"])?;
    ensure!(status.starts_with("install ok installed"), "{status}");

    let version = rootfs.run_ok(&[BIN, "--version"])?;
    let wanted_version = status.rsplit(' ').next().unwrap_or_default();
    ensure!(
        version.trim() == format!("serve-guard {wanted_version}"),
        "`serve-guard --version` says {version:?}, the package is {wanted_version}"
    );
    eprintln!(
        "installed {status}; the packaged binary says {}",
        version.trim()
    );
    let help = rootfs.run_ok(&["serve-guard", "--help"])?;
    let verbs = verbs(&help);
    ensure!(
        ["run", "check", "status", "cidr", "token", "stats", "detach"]
            .iter()
            .all(|v| verbs.iter().any(|have| have == v)),
        "--help lists {verbs:?}:\n{help}"
    );
    let run_help = rootfs.run_ok(&["serve-guard", "run", "--help"])?;
    ensure!(run_help.contains("--interface"), "{run_help}");

    man_pages(&rootfs, &verbs)?;
    for (path, marker) in COMPLETIONS {
        let text = std::fs::read_to_string(rootfs.join(path))
            .with_context(|| format!("completion file {path} is missing"))?;
        ensure!(
            text.contains(marker),
            "{path} does not look like a completion script"
        );
    }
    unit(&rootfs)?;
    not_configured_enabled_or_started(&rootfs)?;
    cli_from_a_config(&rootfs)?;
    Ok(())
}

/// The subcommand names of a clap `--help` ("Commands:" section).
fn verbs(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_owned)
        .collect()
}

/// One page per verb, and each renders without a warning from man (groff).
fn man_pages(rootfs: &Rootfs, verbs: &[String]) -> Result<()> {
    let pages = std::iter::once("serve-guard".to_owned())
        .chain(verbs.iter().map(|v| format!("serve-guard-{v}")));
    for page in pages {
        let path = rootfs.join(&format!("{MAN_DIR}/{page}.8.gz"));
        ensure!(path.is_file(), "man page {} is missing", path.display());
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .context("running man (Debian package man-db)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && out.stderr.is_empty() && text.contains("serve-guard"),
            "{page}.8 does not render cleanly: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every program the unit runs exists in the installed system, and so does its documentation.
fn unit(rootfs: &Rootfs) -> Result<()> {
    let text = std::fs::read_to_string(rootfs.join(UNIT)).context("the unit is not installed")?;
    ensure!(
        text.contains(&format!("\nExecStart={BIN} run ")),
        "the unit does not run {BIN}:\n{text}"
    );
    ensure!(
        !text.contains("/usr/local"),
        "the unit still names /usr/local:\n{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("Exec")) {
        let (_, command) = line.split_once('=').context("Exec line without =")?;
        // Prefixes such as `+` (full privileges) and `-` (ignore failure) come before the path.
        let prefixes = command
            .chars()
            .take_while(|c| ['+', '-', '@', '!', ':'].contains(c))
            .collect::<String>();
        let program = command[prefixes.len()..]
            .split_whitespace()
            .next()
            .context("empty Exec line")?;
        ensure!(
            program.starts_with('/'),
            "{line}: {program} is not an absolute path"
        );
        // With `-` systemd ignores the command's failure, a missing program included: the
        // unit's `udevadm settle` helps where udev runs and is a no-op in a udev-less rootfs.
        if prefixes.contains('-') {
            continue;
        }
        ensure!(
            rootfs.join(program).exists(),
            "{line}: {program} does not exist in the installed system"
        );
    }
    for line in text.lines().filter(|l| l.starts_with("Documentation=")) {
        for url in line["Documentation=".len()..].split_whitespace() {
            if let Some(path) = url.strip_prefix("file://") {
                ensure!(rootfs.join(path).is_file(), "{url} is not installed");
            } else if let Some(page) = url.strip_prefix("man:") {
                let name = page.replace('(', ".").replace(')', "");
                ensure!(
                    rootfs.join(&format!("{MAN_DIR}/{name}.gz")).is_file(),
                    "{url} is not installed"
                );
            }
        }
    }
    ensure!(
        text.contains(&format!("\nConditionPathExists={CONFIG}\n")),
        "the unit would start without a config:\n{text}"
    );
    Ok(())
}

/// The installation wrote no config (the example is documentation), enabled nothing and
/// created none of the agent's state: the filter cannot come up before the operator says so.
fn not_configured_enabled_or_started(rootfs: &Rootfs) -> Result<()> {
    ensure!(rootfs.join(EXAMPLE).is_file(), "{EXAMPLE} is not installed");
    ensure!(
        !rootfs.join(CONFIG).exists(),
        "the package installed {CONFIG}"
    );
    let wants = rootfs.join("/etc/systemd/system/multi-user.target.wants/serve-guard.service");
    ensure!(
        std::fs::symlink_metadata(&wants).is_err(),
        "the package enabled the unit"
    );
    ensure!(
        !rootfs.join("/var/lib/serve-guard").exists() && !rootfs.join("/run/serve-guard").exists(),
        "the package created the agent's state"
    );
    Ok(())
}

/// The packaged CLI reads a config and edits the CIDR file on this userspace (no agent runs,
/// so `cidr` works on the file), and `check` validates it without attaching anything.
fn cli_from_a_config(rootfs: &Rootfs) -> Result<()> {
    let example = std::fs::read_to_string(rootfs.join(EXAMPLE))?;
    let config = example
        .replace("interfaces = [\"eth0\"]", "interfaces = [\"lo\"]")
        .replace("\"/etc/serve-guard/vpc-cidrs\"", "\"/root/vpc-cidrs\"")
        .replace("\"/var/lib/serve-guard\"", "\"/root/state\"");
    ensure!(
        config.contains("\"/root/vpc-cidrs\""),
        "the example's cidr_file changed"
    );
    std::fs::write(rootfs.join("/root/serve-guard.toml"), config)?;
    std::fs::write(rootfs.join("/root/vpc-cidrs"), "# the VPC\n198.18.0.0/15\n")?;
    let cfg = ["-c", "/root/serve-guard.toml"];

    rootfs.run_ok(&[&[BIN, "cidr", "add", "fd00:5e::/48"][..], &cfg].concat())?;
    let list = rootfs.run_ok(&[&[BIN, "cidr", "list"][..], &cfg].concat())?;
    ensure!(
        list.contains("198.18.0.0/15") && list.contains("fd00:5e::/48"),
        "`cidr list` after `cidr add`: {list}"
    );
    rootfs.run_ok(&[&[BIN, "check"][..], &cfg].concat())?;
    Ok(())
}
