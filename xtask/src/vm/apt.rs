//! A private apt configuration: Debian suites other than the host's, read through the host's own
//! Debian mirror, with their package lists kept under target/vm/apt. The host's apt sources are
//! never touched.

use crate::cmd;
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const HOST_SOURCES: &[&str] = &["/etc/apt/sources.list.d", "/etc/apt/sources.list"];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// An apt configuration under `dir` for `suites` (component main), refreshed with
    /// `apt-get update` when the suite list changed or `refresh` asks for it.
    pub fn new(dir: &Path, suites: &[&str], refresh: bool) -> Result<Self> {
        let mirror = host_mirror()?;
        std::fs::create_dir_all(dir.join("lists/partial"))?;
        std::fs::create_dir_all(dir.join("archives/partial"))?;
        let list: String = suites
            .iter()
            .map(|s| format!("deb [signed-by={KEYRING}] {mirror} {s} main\n"))
            .collect();
        let list_path = dir.join("sources.list");
        let changed = std::fs::read_to_string(&list_path).ok().as_deref() != Some(list.as_str());
        let apt = Self {
            dir: dir.to_path_buf(),
        };
        if changed || refresh {
            std::fs::write(&list_path, &list)?;
            cmd::run(apt.apt_get().args(["update", "-q"]))?;
        }
        Ok(apt)
    }

    /// apt-get with the private sources, lists and archive cache; dpkg's state stays the host's.
    pub fn apt_get(&self) -> Command {
        self.tool("apt-get")
    }

    fn tool(&self, program: &str) -> Command {
        let option = |name: &str, path: &str| format!("{name}={}", self.dir.join(path).display());
        let mut c = Command::new(program);
        c.arg("-o")
            .arg(option("Dir::Etc::SourceList", "sources.list"))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            // Downloads go to folders of root's; apt's _apt user cannot write there.
            .args(["-o", "APT::Sandbox::User=root"])
            .arg("-o")
            .arg(option("Dir::State::Lists", "lists"))
            .arg("-o")
            .arg(option("Dir::Cache::Archives", "archives"))
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }
}

/// The Debian mirror the host's apt already uses (its first non-security `debian` URI), so the
/// VM images come from the same place as every other package here.
pub fn host_mirror() -> Result<String> {
    let mut files = Vec::new();
    for p in HOST_SOURCES {
        let p = Path::new(p);
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if p.is_file() {
            files.push(p.to_path_buf());
        }
    }
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        if let Some(mirror) = debian_mirror_in(&text) {
            return Ok(mirror);
        }
    }
    bail!("no Debian mirror (a URI ending in /debian) in the host's apt sources")
}

/// The first `.../debian` URI of a sources file, in the deb822 (`URIs:`) or one-line (`deb URI
/// suite ...`) format; `.../debian-security` and other archives do not count.
fn debian_mirror_in(text: &str) -> Option<String> {
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if line.starts_with("deb ") {
            line.split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with('['))
                .take(1)
                .collect()
        } else {
            continue;
        };
        if let Some(uri) = uris
            .into_iter()
            .find(|u| u.trim_end_matches('/').ends_with("/debian"))
        {
            return Some(uri.trim_end_matches('/').to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::debian_mirror_in;

    #[test]
    fn finds_the_mirror_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\n\
                      Types: deb\n# URIs: http://old.example/debian\nURIs: http://mirror.example/debian/\n";
        assert_eq!(
            debian_mirror_in(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            debian_mirror_in(one_line).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            debian_mirror_in("deb http://x.example/ubuntu jammy main\n"),
            None
        );
    }
}
