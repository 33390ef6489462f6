//! `cargo xtask package`: `target/debian/serve-guard_<version>_amd64.deb`, one package for every
//! node, whatever its distribution.
//!
//! - `/usr/bin/serve-guard`: a static musl binary (no glibc version to match; the XDP program is
//!   embedded as in every build), stripped;
//! - `/lib/systemd/system/serve-guard.service`: deploy/systemd/serve-guard.service with the
//!   packaged paths (`/usr/...` for `/usr/local/...`);
//! - man pages (section 8) and bash, zsh and fish completions, generated from the CLI definition
//!   by `serve-guard-docgen`;
//! - `/usr/share/doc/serve-guard/examples/serve-guard.toml`: the example config. Nothing is put in
//!   /etc and the maintainer scripts neither enable nor start the unit, which also carries
//!   `ConditionPathExists=` on the config: installing the package filters nothing until the
//!   operator has written `/etc/serve-guard/serve-guard.toml` and enabled the unit.
//!
//! Built with dpkg-deb from a staged tree (no extra tool to install); the maintainer scripts, the
//! copyright file and the lintian overrides live in deploy/debian/.

use crate::cmd;
use crate::toolchains::{self, Toolchains};
use anyhow::{Context as _, Result, bail};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "serve-guard";
const ARCH: &str = "amd64";
const MAINTAINER: &str = "serve-guard maintainers <serve-guard@lists.invalid>";
const UNIT_SOURCE: &str = "deploy/systemd/serve-guard.service";
const EXAMPLE_SOURCE: &str = "deploy/serve-guard.example.toml";
const DEBIAN_DIR: &str = "deploy/debian";
const DOCS: &[&str] = &["docs/operations.md", "docs/public-mode.md"];
/// Maintainer scripts shipped as they are (deploy/debian/<name>).
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// Where each generated completion file goes (docgen's name, installed path).
const COMPLETIONS: &[(&str, &str)] = &[
    (
        "serve-guard.bash",
        "usr/share/bash-completion/completions/serve-guard",
    ),
    (
        "_serve-guard",
        "usr/share/zsh/vendor-completions/_serve-guard",
    ),
    (
        "serve-guard.fish",
        "usr/share/fish/vendor_completions.d/serve-guard.fish",
    ),
];
pub const BIN_PATH: &str = "usr/bin/serve-guard";
pub const UNIT_PATH: &str = "lib/systemd/system/serve-guard.service";
const DOC_DIR: &str = "usr/share/doc/serve-guard";
const MAN_DIR: &str = "usr/share/man/man8";
const LINTIAN_OVERRIDES: &str = "usr/share/lintian/overrides/serve-guard";
const EXEC_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// `cargo xtask package`.
pub fn run(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("package takes no arguments");
    }
    let tc = crate::setup::run()?;
    let deb = build(&tc)?;
    eprintln!("built {}", deb.display());
    Ok(())
}

/// Builds the package and returns the path of the .deb. For other tasks (the VM tests install it).
pub fn build(tc: &Toolchains) -> Result<PathBuf> {
    let workspace = toolchains::workspace_root();
    // target/debian holds packages only: the `ray up` recipe copies that folder to every node.
    let out_dir = toolchains::target_dir().join("debian");
    let work_dir = toolchains::target_dir().join("package");
    let binary = static_binary(tc)?;
    let version = binary_version(&binary)?;
    let generated = work_dir.join("generated");
    generate_docs(tc, &generated)?;

    let stage = work_dir.join(format!("{PACKAGE}_{version}_{ARCH}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    stage_files(&stage, &workspace, &binary, &generated, &version)?;
    fs::create_dir_all(&out_dir)?;
    let deb = out_dir.join(format!("{PACKAGE}_{version}_{ARCH}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The release binary for the musl target. Refuses a binary that still asks for a dynamic loader
/// or a shared library: it would not run on an older userspace.
fn static_binary(tc: &Toolchains) -> Result<PathBuf> {
    cmd::run(
        toolchains::cargo(tc)
            .args(["build", "--release", "--package", PACKAGE, "--target"])
            .arg(toolchains::STATIC_TARGET),
    )?;
    let binary = toolchains::target_dir()
        .join(toolchains::STATIC_TARGET)
        .join("release")
        .join(PACKAGE);
    let headers = cmd::output(
        Command::new("readelf")
            .args(["--program-headers", "--dynamic", "--wide"])
            .arg(&binary),
    )?;
    if headers.contains("INTERP") || headers.contains("(NEEDED)") {
        bail!(
            "{} is not statically linked (readelf shows an interpreter or a needed library)",
            binary.display()
        );
    }
    Ok(binary)
}

/// The version the binary reports (`serve-guard 0.1.0`): the package says what it ships.
fn binary_version(binary: &Path) -> Result<String> {
    let out = cmd::output(Command::new(binary).arg("--version"))?;
    let version = out
        .trim()
        .strip_prefix(&format!("{PACKAGE} "))
        .with_context(|| format!("unexpected `{PACKAGE} --version` output: {out:?}"))?;
    Ok(version.to_owned())
}

fn generate_docs(tc: &Toolchains, out: &Path) -> Result<()> {
    cmd::run(
        toolchains::cargo(tc)
            .args(["run", "--quiet", "--package", "serve-guard-docgen", "--"])
            .arg(out),
    )
}

fn stage_files(
    stage: &Path,
    workspace: &Path,
    binary: &Path,
    generated: &Path,
    version: &str,
) -> Result<()> {
    let bin = stage.join(BIN_PATH);
    fs::create_dir_all(bin.parent().context("bin path")?)?;
    // What dh_strip does: no symbols, no .comment/.note sections. The embedded XDP object is
    // data in .rodata and keeps its BTF.
    cmd::run(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
                "-o",
            ])
            .arg(&bin)
            .arg(binary),
    )?;
    set_mode(&bin, EXEC_MODE)?;

    let unit = fs::read_to_string(workspace.join(UNIT_SOURCE))?;
    write(&stage.join(UNIT_PATH), &packaged_unit(&unit), FILE_MODE)?;

    let doc = stage.join(DOC_DIR);
    copy(
        &workspace.join(EXAMPLE_SOURCE),
        &doc.join("examples/serve-guard.toml"),
    )?;
    for source in DOCS {
        let source = workspace.join(source);
        let name = source.file_name().context("doc without a name")?;
        copy(&source, &doc.join(name))?;
    }
    let debian = workspace.join(DEBIAN_DIR);
    copy(&debian.join("copyright"), &doc.join("copyright"))?;
    gzip_into(&changelog(version)?, &doc.join("changelog.gz"))?;
    copy(
        &debian.join("lintian-overrides"),
        &stage.join(LINTIAN_OVERRIDES),
    )?;

    for page in fs::read_dir(generated.join("man"))? {
        let page = page?.path();
        let name = page.file_name().context("man page without a name")?;
        let target = stage
            .join(MAN_DIR)
            .join(format!("{}.gz", name.to_string_lossy()));
        gzip_into(&fs::read_to_string(&page)?, &target)?;
    }
    for (name, path) in COMPLETIONS {
        copy(&generated.join("completions").join(name), &stage.join(path))?;
    }

    let control_dir = stage.join("DEBIAN");
    for script in SCRIPTS {
        let text = fs::read_to_string(debian.join(script))?;
        write(&control_dir.join(script), &text, EXEC_MODE)?;
    }
    // md5sums and the size cover the payload only, so both are computed before DEBIAN/control.
    let files = payload_files(stage)?;
    write(
        &control_dir.join("md5sums"),
        &md5sums(stage, &files)?,
        FILE_MODE,
    )?;
    let installed_kib = files
        .iter()
        .map(|f| Ok(fs::metadata(stage.join(f))?.len().div_ceil(1024)))
        .sum::<Result<u64>>()?;
    write(
        &control_dir.join("control"),
        &control(version, installed_kib),
        FILE_MODE,
    )?;
    Ok(())
}

/// The source unit is written for `cargo xtask install` (/usr/local); the package owns /usr.
pub fn packaged_unit(unit: &str) -> String {
    unit.replace("/usr/local/", "/usr/")
}

fn control(version: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {ARCH}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Description: keeps a Ray node private to the VPC (XDP), Serve behind a token\n \
         serve-guard attaches an XDP program that drops, from sources outside the VPC\n \
         CIDR allow-list, every packet to Ray Serve's ports (8000, 9000) and every new\n \
         connection to the node's other ports but the public ones (SSH). It edits the\n \
         list live, and in public mode runs a bearer-token reverse proxy for Serve.\n \
         .\n \
         The binary is statically linked and runs on any Linux userspace. Installing\n \
         the package starts nothing: write /etc/serve-guard/serve-guard.toml (see\n \
         /usr/share/doc/serve-guard/examples), then enable serve-guard.service.\n"
    )
}

/// A native package's changelog, dated by the commit it was built from (reproducible builds).
fn changelog(version: &str) -> Result<String> {
    let date = cmd::output(
        Command::new("git")
            .args(["log", "-1", "--format=%cD"])
            .current_dir(toolchains::workspace_root()),
    )?;
    Ok(format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  \
         * Built by `cargo xtask package`; the project's history is its git log.\n\n \
         -- {MAINTAINER}  {}\n",
        date.trim()
    ))
}

/// Every regular file under `stage` except DEBIAN/, relative and sorted.
fn payload_files(stage: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let relative = path.strip_prefix(root)?.to_path_buf();
            if relative == Path::new("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(relative);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(stage, stage, &mut files)?;
    files.sort();
    Ok(files)
}

fn md5sums(stage: &Path, files: &[PathBuf]) -> Result<String> {
    let sums = cmd::output(Command::new("md5sum").args(files).current_dir(stage))?;
    Ok(sums)
}

/// `gzip -9n`: maximum compression, no name or timestamp (lintian and reproducible builds).
fn gzip_into(text: &str, to: &Path) -> Result<()> {
    use std::io::Write as _;
    fs::create_dir_all(to.parent().context("gzip target without a folder")?)?;
    let mut child = Command::new("gzip")
        .args(["-9n", "--stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(to).with_context(|| format!("creating {}", to.display()))?)
        .spawn()
        .context("starting gzip")?;
    child
        .stdin
        .take()
        .context("gzip stdin")?
        .write_all(text.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("gzip failed for {}: {status}", to.display());
    }
    set_mode(to, FILE_MODE)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().context("copy target without a folder")?)?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, FILE_MODE)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("write target without a folder")?)?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_packaged_unit_runs_the_packaged_binary() {
        let unit =
            std::fs::read_to_string(super::toolchains::workspace_root().join(super::UNIT_SOURCE))
                .unwrap();
        let packaged = super::packaged_unit(&unit);
        assert!(
            packaged.contains("\nExecStart=/usr/bin/serve-guard run"),
            "{packaged}"
        );
        assert!(!packaged.contains("/usr/local"), "{packaged}");
    }
}
