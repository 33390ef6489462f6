//! Where the filter lives on bpffs, and removing it.
//!
//! Layout under `pin_dir`:
//! - `prog`: the XDP program.
//! - `maps/<NAME>`: the maps (names from `serve_guard_common::maps`), adopted across restarts.
//! - `links/<ifname>@<mode>`: one XDP link per interface. The attach mode (`driver` or `skb`) is
//!   part of the name because the kernel's link info does not report it, and a restart must be
//!   able to say which mode an adopted link runs in.
//!
//! A pinned link keeps the program on its interface after the agent exits (fail closed);
//! removing the pin (with no process holding the link open) takes it off.

#![allow(unsafe_code, reason = "statfs(2) to tell bpffs")]

use super::{AttachMode, FilterError, LinkState};
use serve_guard_common::maps;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where bpffs is normally mounted; named in the error when it is not.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const PROGRAM_PIN: &str = "prog";
/// The new program is pinned here first and renamed over `prog`, so `prog` always exists.
/// (bpffs refuses dots in names it did not create.)
const PROGRAM_PIN_NEXT: &str = "prog_next";
const MAPS_DIR: &str = "maps";
const LINKS_DIR: &str = "links";
const MODE_SEPARATOR: char = '@';
/// How long `detach` waits for the kernel to release unpinned links.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// Paths of the pinned objects under one `pin_dir`.
#[derive(Debug, Clone)]
pub struct PinLayout {
    root: PathBuf,
}

/// A pinned link found on bpffs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLinkEntry {
    pub interface: String,
    pub mode: AttachMode,
    pub path: PathBuf,
}

impl PinLayout {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            root: pin_dir.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn program(&self) -> PathBuf {
        self.root.join(PROGRAM_PIN)
    }

    pub(crate) fn program_next(&self) -> PathBuf {
        self.root.join(PROGRAM_PIN_NEXT)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(MAPS_DIR)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join(LINKS_DIR)
    }

    pub fn link(&self, interface: &str, mode: AttachMode) -> PathBuf {
        self.links_dir()
            .join(format!("{interface}{MODE_SEPARATOR}{}", mode.name()))
    }

    /// Checks that `pin_dir` is (or would be created) on bpffs, then creates its folders.
    pub fn create_dirs(&self) -> Result<(), FilterError> {
        check_on_bpffs(&self.root)?;
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|error| FilterError::PinDir {
                path: dir.clone(),
                error,
            })?;
        }
        Ok(())
    }

    /// Every pinned link, whatever its interface. Entries that do not follow the naming scheme
    /// are ignored (they are not ours).
    pub fn links(&self) -> Result<Vec<PinnedLinkEntry>, FilterError> {
        let dir = self.links_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(FilterError::PinDir { path: dir, error }),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| FilterError::PinDir {
                path: dir.clone(),
                error,
            })?;
            let name = entry.file_name();
            let Some((interface, mode)) = name.to_str().and_then(parse_link_name) else {
                continue;
            };
            links.push(PinnedLinkEntry {
                interface: interface.to_owned(),
                mode,
                path: entry.path(),
            });
        }
        links.sort_by(|a, b| a.interface.cmp(&b.interface));
        Ok(links)
    }

    /// The pinned link of one interface at the XDP hook, if any.
    pub fn find_link(&self, interface: &str) -> Result<Option<PinnedLinkEntry>, FilterError> {
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.interface == interface && l.mode.is_xdp()))
    }

    /// Our attachment of one interface at TC ingress (tcx link or clsact record), if any.
    pub fn find_tc(&self, interface: &str) -> Result<Option<PinnedLinkEntry>, FilterError> {
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.interface == interface && !l.mode.is_xdp()))
    }

    /// True when anything of ours is pinned.
    pub fn exists(&self) -> bool {
        self.root.exists()
    }
}

fn parse_link_name(name: &str) -> Option<(&str, AttachMode)> {
    let (interface, mode) = name.rsplit_once(MODE_SEPARATOR)?;
    let mode = match mode {
        "driver" => AttachMode::Driver,
        "skb" => AttachMode::Skb,
        "tcx" => AttachMode::Tcx,
        "clsact" => AttachMode::Clsact,
        _ => return None,
    };
    (!interface.is_empty()).then_some((interface, mode))
}

/// Checks that `path`, or its nearest existing ancestor, is on bpffs. Pins anywhere else fail
/// with confusing errors (or, on tmpfs, silently do nothing useful).
pub fn check_on_bpffs(path: &Path) -> Result<(), FilterError> {
    let mut probe = path;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    let not_bpffs = || FilterError::NotBpffs {
        pin_dir: path.to_owned(),
    };
    let c_path =
        std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).map_err(|_| not_bpffs())?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct of integers.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs fills the struct; the path is NUL-terminated and outlives the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 || stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(not_bpffs());
    }
    Ok(())
}

/// What [`remove_pins`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Interfaces whose link was unpinned (the program left them).
    pub links: Vec<String>,
    /// Interfaces whose libxdp dispatcher had a serve-guard program (taken out; the others stay).
    pub dispatchers: Vec<String>,
    pub program: bool,
    pub maps: Vec<String>,
    /// Files under `pin_dir` that are not ours and were left alone.
    pub left: Vec<PathBuf>,
    /// Interfaces whose link outlived its pin (another process holds it open), so the program
    /// is still on them. Filled by [`Removed::wait_released`].
    pub still_attached: Vec<String>,
    /// Kernel ids of the unpinned links, to wait for their release.
    #[serde(skip)]
    link_ids: Vec<(String, u32)>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
            && self.dispatchers.is_empty()
            && !self.program
            && self.maps.is_empty()
    }

    /// Waits until the kernel has released every unpinned link, i.e. the program has left the
    /// interfaces. The kernel frees an unpinned object after an RCU grace period, so the
    /// program can still be attached for a moment after `unlink` returns. Links that remain
    /// after `timeout` are still held open by some process: they are listed in
    /// `still_attached`.
    pub fn wait_released(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let live = live_link_ids();
            self.still_attached = self
                .link_ids
                .iter()
                .filter(|(_, id)| live.contains(id))
                .map(|(interface, _)| interface.clone())
                .collect();
            if self.still_attached.is_empty() || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(RELEASE_POLL);
        }
    }
}

/// Ids of every BPF link the kernel currently holds.
fn live_link_ids() -> BTreeSet<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|info| info.id())
        .collect()
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            f.write_str("nothing to remove")?;
        } else {
            let mut parts = Vec::new();
            if !self.links.is_empty() {
                parts.push(format!("links on {}", self.links.join(", ")));
            }
            if !self.dispatchers.is_empty() {
                parts.push(format!(
                    "the program from the XDP dispatcher of {} (the other programs stay)",
                    self.dispatchers.join(", ")
                ));
            }
            if self.program {
                parts.push("the program".to_owned());
            }
            if !self.maps.is_empty() {
                parts.push(format!("maps {}", self.maps.join(", ")));
            }
            write!(f, "removed {}", parts.join("; "))?;
        }
        for path in &self.left {
            write!(f, "\nleft {} (not created by serve-guard)", path.display())?;
        }
        for interface in &self.still_attached {
            write!(
                f,
                "\nthe program is still on {interface}: another process holds its XDP link open"
            )?;
        }
        Ok(())
    }
}

/// Removes every pinned object under `pin_dir`: links first (the program leaves the
/// interfaces), then the program, then the maps, then the folders. Idempotent.
///
/// A link only leaves its interface once no process holds it open, so callers must make sure no
/// agent runs (the agent's lock says whether one does), or be the agent dropping its own handles.
pub fn remove_pins(pin_dir: &Path) -> Result<Removed, FilterError> {
    let layout = PinLayout::new(pin_dir);
    let mut removed = Removed::default();
    if !layout.exists() {
        return Ok(removed);
    }
    // Out of every dispatcher first, while the maps that identify our programs are pinned.
    if let Some(map_id) = super::dispatcher::our_map_id(&layout) {
        removed.dispatchers = super::dispatcher::leave_all(map_id)?;
    }
    for link in layout.links()? {
        // The id is only needed to wait for the release; a defunct link may not report one.
        if let Some(link_type) = link.mode.link_type()
            && let Ok(state) = LinkState::read(&link.path, link_type)
        {
            removed
                .link_ids
                .push((link.interface.clone(), state.link_id));
        }
        remove_link(&link)?;
        removed.links.push(link.interface);
    }
    for path in [layout.program_next(), layout.program()] {
        if remove_file_if_exists(&path)? {
            removed.program = true;
        }
    }
    // Every file in maps/ is one of ours: the agent is the only writer of that folder.
    if let Ok(entries) = std::fs::read_dir(layout.maps_dir()) {
        let mut names = Vec::new();
        for entry in entries.flatten() {
            remove_file(&entry.path())?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort_by_key(|n| maps::ALL.iter().position(|m| m == n).unwrap_or(usize::MAX));
        removed.maps = names;
    }
    for dir in [layout.links_dir(), layout.maps_dir(), layout.root] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    removed
                        .left
                        .extend(entries.flatten().map(|e| e.path()).filter(|p| !p.is_dir()));
                }
            }
            Err(error) => return Err(FilterError::Unpin { path: dir, error }),
        }
    }
    Ok(removed)
}

/// Takes one of our attachments off its interface: removing a link's pin lets the link go (once
/// no process holds it); a clsact filter is deleted, then its record.
pub(crate) fn remove_link(link: &PinnedLinkEntry) -> Result<(), FilterError> {
    if link.mode == AttachMode::Clsact {
        super::tc::remove_clsact(&link.interface)?;
    }
    remove_file(&link.path)
}

/// Removes the pins of maps an earlier version used and this one does not read (their layout
/// changed, so they were never adopted: this start created and filled the new maps, then
/// replaced the program that used the old ones). Best effort: a pin left behind is only
/// memory, and `detach` removes every map pin.
pub fn remove_retired_maps(layout: &PinLayout) {
    for name in maps::RETIRED {
        let path = layout.map(name);
        match remove_file_if_exists(&path) {
            Ok(true) => tracing::info!(
                "removed {} (the allow-list of an earlier version)",
                path.display()
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

fn remove_file(path: &Path) -> Result<(), FilterError> {
    remove_file_if_exists(path).map(|_| ())
}

fn remove_file_if_exists(path: &Path) -> Result<bool, FilterError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(FilterError::Unpin {
            path: path.to_owned(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_carry_the_mode() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf/sg"));
        assert_eq!(
            layout.link("eth0", AttachMode::Driver),
            Path::new("/sys/fs/bpf/sg/links/eth0@driver")
        );
        assert_eq!(parse_link_name("eth0@skb"), Some(("eth0", AttachMode::Skb)));
        assert_eq!(
            parse_link_name("we@ird@driver"),
            Some(("we@ird", AttachMode::Driver))
        );
        assert_eq!(parse_link_name("eth0"), None);
        assert_eq!(parse_link_name("@skb"), None);
        assert_eq!(parse_link_name("eth0@hw"), None);
    }

    #[test]
    fn tmp_is_not_bpffs() {
        let e = check_on_bpffs(&std::env::temp_dir().join("sg-not-bpffs/x")).unwrap_err();
        assert!(
            e.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
            "{e}"
        );
    }

    #[test]
    fn removing_nothing_says_so() {
        let removed = remove_pins(Path::new("/nonexistent/sg-pins")).unwrap();
        assert!(removed.is_empty());
        assert_eq!(removed.to_string(), "nothing to remove");
    }
}
