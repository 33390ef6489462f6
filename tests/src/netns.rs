//! Network namespaces owned by a test: created with a unique name, deleted when the last handle
//! is dropped (also on panic), and two ways to work inside one without `ip netns exec` (which
//! remounts /sys and so hides bpffs from the agent):
//! - [`Netns::run`]: a thread that enters only the network namespace and runs a closure; sockets
//!   created there live in the namespace and keep working from any thread afterwards.
//! - [`Netns::command`]: a [`Command`] whose child enters only the network namespace before exec.

use anyhow::{Context as _, Result, bail};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};
use std::thread::{self, JoinHandle};

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Kernel limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A name no other test (in this process or another) uses: `prefix` + pid + per-process counter.
/// Short enough for an interface name when `prefix` is at most 3 characters.
pub fn unique_name(prefix: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{id}", std::process::id())
}

/// A named network namespace. Cloning shares it; the namespace is deleted when the last clone is
/// dropped, so a handle kept by an agent process guard keeps the namespace alive as long as the
/// agent may run in it.
#[derive(Clone, Debug)]
pub struct Netns(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    name: String,
}

impl Netns {
    /// Creates `sg<prefix><pid>-<n>` with its loopback up and IPv6 duplicate address detection
    /// off (addresses are usable at once; every address in a test namespace is ours anyway).
    pub fn new(prefix: &str) -> Result<Self> {
        SWEEP.call_once(sweep_stale);
        let name = unique_name(&format!("sg{prefix}"));
        run_ip(&["netns", "add", &name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Netns(Arc::new(Inner { name }));
        ns.ip(&["link", "set", "lo", "up"])?;
        for key in ["all", "default"] {
            ns.sysctl(&format!("net/ipv6/conf/{key}/accept_dad"), "0")?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The bind mount that names the namespace, for `setns` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.0.name)
    }

    fn open(&self) -> io::Result<File> {
        File::open(self.path())
    }

    /// Runs `f` on a thread that entered this namespace and returns its result. A panic in `f`
    /// is propagated to the caller.
    pub fn run<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        thread::scope(|s| {
            let worker = s.spawn(move || {
                enter(&file)?;
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts a thread that lives in this namespace (a prober, a server loop). The namespace is
    /// entered before `f` runs; failing to enter it is `f`'s caller's error through the handle.
    pub fn spawn<F, R>(&self, f: F) -> io::Result<JoinHandle<io::Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open()?;
        let name = format!("ns-{}", self.name());
        thread::Builder::new().name(name).spawn(move || {
            enter(&file)?;
            Ok(f())
        })
    }

    /// A command whose process enters only this network namespace before exec (mount namespace,
    /// and so bpffs, stay the host's). If the namespace cannot be opened, spawning fails with that
    /// error.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let file = self.open();
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd opened
        // before fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || match &file {
                Ok(f) => enter(f),
                Err(e) => Err(io::Error::from_raw_os_error(
                    e.raw_os_error().unwrap_or(libc::ENOENT),
                )),
            });
        }
        cmd
    }

    /// `ip -n <ns> <args>`, failing with ip's stderr.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// `ip -n <ns> -j <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = vec!["-n", self.name(), "-j"];
        full.extend_from_slice(args);
        let out = ip_output(&full)?;
        serde_json::from_slice(&out).with_context(|| format!("parsing `ip {}`", full.join(" ")))
    }

    /// Writes a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`) inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key);
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in {}", self.name()))
    }

    /// Id of the XDP program attached to `iface`, if any.
    pub fn xdp_program(&self, iface: &str) -> Result<Option<u64>> {
        Ok(self.xdp_attachment(iface)?.map(|a| a.prog_id))
    }

    /// The XDP program attached to `iface` and how, if any (as `ip -j link` reports it).
    pub fn xdp_attachment(&self, iface: &str) -> Result<Option<XdpAttachment>> {
        let links = self.ip_json(&["link", "show", "dev", iface])?;
        let Some(xdp) = links.get(0).and_then(|l| l.get("xdp")) else {
            return Ok(None);
        };
        // One program: {"mode": m, "prog": {...}}; several: {"mode": 4, "attached": [...]}.
        let one = xdp.pointer("/attached/0").unwrap_or(xdp);
        let prog_id = one.pointer("/prog/id").and_then(|v| v.as_u64());
        let mode = one.get("mode").and_then(|v| v.as_u64()).unwrap_or_default();
        Ok(prog_id.map(|prog_id| XdpAttachment {
            prog_id,
            mode: XdpAttachMode::from_netlink(mode),
        }))
    }

    /// True once no IPv6 address in the namespace is tentative (DAD is off in namespaces made
    /// here, so this holds at once; kept for interfaces moved in from elsewhere).
    pub fn ipv6_settled(&self) -> Result<bool> {
        let addrs = self.ip_json(&["-6", "addr", "show", "tentative"])?;
        Ok(addrs.as_array().is_none_or(|links| {
            links
                .iter()
                .all(|l| l["addr_info"].as_array().is_none_or(Vec::is_empty))
        }))
    }
}

/// An XDP program on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttachment {
    pub prog_id: u64,
    pub mode: XdpAttachMode,
}

/// How an XDP program is attached (netlink `XDP_ATTACHED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    Driver,
    Skb,
    Hardware,
    Unknown,
}

impl XdpAttachMode {
    fn from_netlink(mode: u64) -> Self {
        // linux/if_link.h
        const XDP_ATTACHED_DRV: u64 = 1;
        const XDP_ATTACHED_SKB: u64 = 2;
        const XDP_ATTACHED_HW: u64 = 3;
        match mode {
            XDP_ATTACHED_DRV => Self::Driver,
            XDP_ATTACHED_SKB => Self::Skb,
            XDP_ATTACHED_HW => Self::Hardware,
            _ => Self::Unknown,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
            Self::Hardware => "hardware",
            Self::Unknown => "unknown",
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete netns {}: {e:#}", self.name);
        }
    }
}

/// The pid in a name made by [`unique_name`] (`<prefix><pid>-<n>`, prefix without digits), if
/// the name has that shape.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// True if `pid` names a live process (or one we cannot see, which we leave alone too).
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Deletes namespaces that a test process made and could not delete because it was killed
/// (SIGKILL, a CI timeout): their names carry the pid, and that pid is gone. Drop guards cover
/// every other exit; this only keeps a killed run from leaving clutter for the next.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name, "sg")
            && !pid_alive(pid)
            && run_ip(&["netns", "del", &name]).is_ok()
        {
            eprintln!("removed netns {name} left by a killed test process {pid}");
        }
    }
}

/// Moves the calling thread into the network namespace behind `file`.
fn enter(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn run_ip(args: &[&str]) -> Result<()> {
    ip_output(args).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_an_interface() {
        let a = unique_name("abc");
        let b = unique_name("abc");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME_LEN, "{a}");
        assert_eq!(owner_pid(&a, "abc"), Some(std::process::id()));
        assert_eq!(
            owner_pid(&unique_name("sgs"), "sg"),
            Some(std::process::id())
        );
        assert_eq!(owner_pid("sgman12172", "sg"), None);
        assert_eq!(owner_pid("sg-test-12-3", "sg-test-"), Some(12));
        assert_eq!(owner_pid("other1-2", "sg"), None);
    }

    #[test]
    fn namespace_is_isolated_and_removed_on_drop() {
        let ns = Netns::new("t").unwrap();
        let path = ns.path();
        assert!(path.exists());
        // Only loopback exists in a fresh namespace.
        let links = ns.ip_json(&["link", "show"]).unwrap();
        let names: Vec<_> = links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["lo"]);
        // A socket made by a thread in the namespace lives there.
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let there = ns
            .run(move || std::net::TcpStream::connect(("127.0.0.1", port)))
            .unwrap();
        assert!(there.is_ok());
        let out = ns
            .command("ip")
            .args(["-j", "link", "show"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(links.as_array().unwrap().len(), 1);
        drop(ns);
        assert!(!path.exists());
    }
}
