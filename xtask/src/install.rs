//! `cargo xtask install`: the binary, the systemd unit and an example config, in their places.
//!
//! - `/usr/local/bin/serve-guard` (replaced atomically, so a running agent is not disturbed);
//! - `/usr/local/lib/systemd/system/serve-guard.service` (a local vendor unit: override it with
//!   `systemctl edit serve-guard`, which writes a drop-in under /etc);
//! - `/etc/serve-guard/serve-guard.toml` from the example, only if there is none: an existing
//!   config is never overwritten;
//! - the example config and docs/operations.md under `/usr/local/share/doc/serve-guard/`;
//! - `systemctl daemon-reload`, only when systemd is running (not in containers or chroots).
//!
//! `DESTDIR` (as in `make install`) puts everything under another root and skips daemon-reload.

use crate::toolchains;
use anyhow::{Context as _, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "usr/local/bin/serve-guard";
const UNIT: &str = "usr/local/lib/systemd/system/serve-guard.service";
const CONFIG: &str = "etc/serve-guard/serve-guard.toml";
const DOC_DIR: &str = "usr/local/share/doc/serve-guard";
const UNIT_SOURCE: &str = "deploy/systemd/serve-guard.service";
const EXAMPLE_SOURCE: &str = "deploy/serve-guard.example.toml";
const OPERATIONS_SOURCE: &str = "docs/operations.md";
/// Exists when systemd is the running init (what sd_booted(3) checks).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";
const BIN_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
/// The config may name a token file and TLS key paths: root only.
const CONFIG_MODE: u32 = 0o600;

pub fn install(agent: &Path) -> Result<()> {
    let root = std::env::var_os("DESTDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let done = install_into(&root, agent, &toolchains::workspace_root())?;
    for line in &done {
        eprintln!("{line}");
    }
    if std::env::var_os("DESTDIR").is_none() && Path::new(SYSTEMD_RUNNING).exists() {
        crate::cmd::run(Command::new("systemctl").arg("daemon-reload"))?;
    } else {
        eprintln!("systemd is not running here (or DESTDIR is set): skipped daemon-reload");
    }
    eprintln!(
        "next: edit /{CONFIG} and the CIDR file it names, then `systemctl enable --now serve-guard`"
    );
    Ok(())
}

/// Copies everything under `root`; returns one line per action.
pub fn install_into(root: &Path, agent: &Path, workspace: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    put(agent, &root.join(BIN), BIN_MODE)?;
    done.push(format!("installed {}", root.join(BIN).display()));
    put(&workspace.join(UNIT_SOURCE), &root.join(UNIT), FILE_MODE)?;
    done.push(format!("installed {}", root.join(UNIT).display()));
    let doc_dir = root.join(DOC_DIR);
    for source in [EXAMPLE_SOURCE, OPERATIONS_SOURCE] {
        let source = workspace.join(source);
        let name = source.file_name().context("source without a file name")?;
        put(&source, &doc_dir.join(name), FILE_MODE)?;
    }
    done.push(format!(
        "installed the example config and docs in {}",
        doc_dir.display()
    ));
    let config = root.join(CONFIG);
    if config.exists() {
        done.push(format!("kept the existing {}", config.display()));
    } else {
        put(&workspace.join(EXAMPLE_SOURCE), &config, CONFIG_MODE)?;
        done.push(format!("installed {} (from the example)", config.display()));
    }
    Ok(done)
}

/// Copies `from` to `to` through a temp file in the same folder and a rename, so `to` is never
/// half-written and a running binary keeps its old inode.
fn put(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dir = to.parent().context("destination without a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = to
        .file_name()
        .context("destination without a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.xtask-install"));
    let result = fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))
        .and_then(|_| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", tmp.display()))
        })
        .and_then(|()| {
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", tmp.display()))
        })
        .and_then(|()| {
            fs::rename(&tmp, to).with_context(|| format!("moving {} into place", to.display()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-install-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn installs_everything_and_never_overwrites_a_config() {
        let t = TempDir::new("all");
        let agent = t.0.join("serve-guard-built");
        fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let root = t.0.join("root");
        let workspace = toolchains::workspace_root();

        install_into(&root, &agent, &workspace).unwrap();
        assert_eq!(mode(&root.join(BIN)), BIN_MODE);
        assert_eq!(
            fs::read(root.join(UNIT)).unwrap(),
            fs::read(workspace.join(UNIT_SOURCE)).unwrap()
        );
        assert_eq!(mode(&root.join(CONFIG)), CONFIG_MODE);
        assert!(root.join(DOC_DIR).join("operations.md").exists());

        fs::write(root.join(CONFIG), "mode = \"public\"\n").unwrap();
        let done = install_into(&root, &agent, &workspace).unwrap();
        assert_eq!(
            fs::read_to_string(root.join(CONFIG)).unwrap(),
            "mode = \"public\"\n"
        );
        assert!(
            done.iter().any(|l| l.starts_with("kept the existing")),
            "{done:?}"
        );
        let leftovers: Vec<_> = fs::read_dir(root.join("usr/local/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
    }
}
