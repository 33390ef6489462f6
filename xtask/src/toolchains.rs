//! The pinned toolchains, read from `[workspace.metadata.toolchains]` in the workspace Cargo.toml,
//! and where the workspace keeps its outputs: what every task builds on (the bottom layer of
//! xtask with `cmd`).

use anyhow::{Context as _, Result, anyhow};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Toolchains {
    /// Builds and tests everything but the eBPF crate.
    pub stable: String,
    /// Builds the eBPF crate (needs rust-src and -Z build-std).
    pub ebpf: String,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or the workspace's `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The Python venv with Ray Serve that `setup` creates for the public-mode tests.
pub fn venv_dir() -> PathBuf {
    workspace_root().join("target").join("ray-venv")
}

/// `cargo` with the pinned stable, in the workspace.
pub fn cargo(tc: &Toolchains) -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{}", tc.stable))
        .current_dir(workspace_root());
    // The tests and the demo find the agent binary and the Ray venv through these.
    c.env("SERVE_GUARD_RAY_VENV", venv_dir());
    c
}

/// The Rust target of the packaged binary: static, so it runs on glibc 2.17 userspaces as well
/// as on musl ones.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

pub fn load() -> Result<Toolchains> {
    let manifest = workspace_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    parse(&text).with_context(|| format!("in {}", manifest.display()))
}

/// A deliberately small reader for the one table we need (xtask stays free of a TOML crate).
fn parse(text: &str) -> Result<Toolchains> {
    let mut in_table = false;
    let (mut stable, mut ebpf) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[workspace.metadata.toolchains]";
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "stable" => stable = Some(value),
                "ebpf" => ebpf = Some(value),
                _ => {}
            }
        }
    }
    Ok(Toolchains {
        stable: stable.ok_or_else(|| anyhow!("[workspace.metadata.toolchains] has no `stable`"))?,
        ebpf: ebpf.ok_or_else(|| anyhow!("[workspace.metadata.toolchains] has no `ebpf`"))?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_table() {
        let t = super::parse(
            "[workspace]\nstable = \"no\"\n[workspace.metadata.toolchains]\nstable = \"1.2.3\"\nebpf = \"nightly-x\"\n[other]\n",
        )
        .unwrap();
        assert_eq!((t.stable.as_str(), t.ebpf.as_str()), ("1.2.3", "nightly-x"));
    }

    #[test]
    fn names_a_missing_key() {
        let err = super::parse("[workspace.metadata.toolchains]\nstable = \"1\"\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("ebpf"), "{err}");
    }
}
