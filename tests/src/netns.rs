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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

    /// Adds `cidr` to the namespace's `lo`, usable at once: an IPv6 address without `nodad` stays
    /// tentative until a work item clears it, and binding it before then fails (EADDRNOTAVAIL)
    /// on a loaded machine.
    pub fn add_loopback_address(&self, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", "lo"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args)
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

    /// The TCP sockets listening in this namespace (`ss -Hltnp` run inside it), with their
    /// owners: the node's socket table as it is now.
    pub fn listeners(&self) -> Result<Vec<Listener>> {
        let out = self
            .command("ss")
            .arg("-Hltnp")
            .stdin(std::process::Stdio::null())
            .output()
            .context("running `ss` (iproute2)")?;
        if !out.status.success() {
            bail!(
                "`ss -Hltnp` in {} failed: {}",
                self.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Listener::parse_ss(l).with_context(|| format!("`ss -Hltnp` line {l:?}")))
            .collect()
    }

    /// Every process whose network namespace is this one (what `ip netns pids` lists).
    pub fn pids(&self) -> Result<Vec<libc::pid_t>> {
        use std::os::unix::fs::MetadataExt as _;
        let ns = std::fs::metadata(self.path())
            .with_context(|| format!("stat {}", self.path().display()))?;
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")
            .context("listing /proc")?
            .flatten()
        {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A process that exits meanwhile (or a kernel thread) has no readable link: skipped.
            if let Ok(net) = std::fs::metadata(entry.path().join("ns/net"))
                && net.dev() == ns.dev()
                && net.ino() == ns.ino()
            {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
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

/// A listening TCP socket as `ss -Hltnp` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The bound address; `None` is ss's `*`: an IPv6 wildcard socket that takes IPv4 too.
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// The owner's name as the kernel keeps it (`comm`, at most 15 bytes: `ray::ServeRepli`).
    pub process: Option<String>,
}

impl Listener {
    /// One line of `ss -Hltnp`: `LISTEN 0 4096 [::ffff:198.18.0.1]:10001 *:* users:(("x",pid=1,fd=3))`.
    pub fn parse_ss(line: &str) -> Result<Listener> {
        let mut fields = line.split_whitespace();
        let local = fields.nth(3).context("no local address")?;
        let (host, port) = local.rsplit_once(':').context("no port")?;
        let port = port.parse().context("bad port")?;
        // `127.0.0.53%lo`, `[fe80::1]%eth0`: the scope is not part of the address.
        let host = host.split('%').next().unwrap_or(host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host {
            "*" => None,
            other => Some(
                other
                    .parse()
                    .with_context(|| format!("bad address {other:?}"))?,
            ),
        };
        let process = line
            .split_once("users:((\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(name, _)| name.to_owned());
        Ok(Listener { ip, port, process })
    }

    /// Bound to a loopback address (127.0.0.0/8, ::1, or IPv4-mapped loopback): unreachable
    /// from other hosts.
    pub fn is_loopback(&self) -> bool {
        match self.ip {
            None => false,
            Some(IpAddr::V4(a)) => a.is_loopback(),
            Some(IpAddr::V6(a)) => {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
            }
        }
    }

    /// Where another host reaches this socket, given the node's addresses: both for `*`, one
    /// family for a wildcard or a node address of that family, none for any other address.
    pub fn reachable_at(&self, v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<SocketAddr> {
        let at4 = SocketAddr::new(v4.into(), self.port);
        let at6 = SocketAddr::new(v6.into(), self.port);
        let v4_match = |a: Ipv4Addr| a.is_unspecified() || a == v4;
        match self.ip {
            None => vec![at4, at6],
            Some(IpAddr::V4(a)) if v4_match(a) => vec![at4],
            Some(IpAddr::V6(a)) if a.to_ipv4_mapped().is_some_and(v4_match) => vec![at4],
            Some(IpAddr::V6(a)) if a.is_unspecified() || a == v6 => vec![at6],
            Some(_) => Vec::new(),
        }
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
    fn ss_lines_parse_into_listeners() {
        let v4 = Ipv4Addr::new(198, 18, 0, 1);
        let v6: Ipv6Addr = "fd00:5e::1".parse().unwrap();
        let l = |line: &str| Listener::parse_ss(line).unwrap();
        let mapped =
            l("LISTEN 0 4096 [::ffff:198.18.0.1]:10001 *:* users:((\"python3\",pid=23218,fd=16))");
        assert_eq!(mapped.port, 10001);
        assert_eq!(mapped.process.as_deref(), Some("python3"));
        assert!(!mapped.is_loopback());
        assert_eq!(
            mapped.reachable_at(v4, v6),
            [SocketAddr::new(v4.into(), 10001)]
        );
        let dual = l("LISTEN 0 4096 *:6379 *:* users:((\"gcs_server\",pid=1,fd=44))");
        assert_eq!(dual.ip, None);
        assert_eq!(dual.reachable_at(v4, v6).len(), 2);
        let any4 =
            l("LISTEN 0 2048 0.0.0.0:30000 0.0.0.0:* users:((\"ray::ServeRepli\",pid=2,fd=61))");
        assert_eq!(any4.process.as_deref(), Some("ray::ServeRepli"));
        assert_eq!(
            any4.reachable_at(v4, v6),
            [SocketAddr::new(v4.into(), 30000)]
        );
        let only6 = l("LISTEN 0 128 [::]:22 [::]:*");
        assert_eq!(only6.process, None);
        assert_eq!(only6.reachable_at(v4, v6), [SocketAddr::new(v6.into(), 22)]);
        for lo in [
            "LISTEN 0 128 127.0.0.1:52365 0.0.0.0:*",
            "LISTEN 0 4096 [::ffff:127.0.0.1]:10001 *:*",
            "LISTEN 0 4096 [::1]:9464 [::]:*",
            "LISTEN 0 4096 127.0.0.53%lo:53 0.0.0.0:*",
        ] {
            assert!(l(lo).is_loopback(), "{lo}");
        }
        // Another address of some other interface: not reachable at the node's addresses.
        assert!(
            l("LISTEN 0 5 10.1.2.3:80 0.0.0.0:*")
                .reachable_at(v4, v6)
                .is_empty()
        );
        assert!(Listener::parse_ss("LISTEN 0 5").is_err());
    }

    #[test]
    fn listeners_and_pids_are_the_namespaces_own() {
        let ns = Netns::new("t").unwrap();
        let listener = ns
            .run(|| std::net::TcpListener::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = ns.listeners().unwrap();
        assert!(
            seen.iter()
                .any(|l| l.port == port && l.ip == Some(Ipv4Addr::UNSPECIFIED.into())),
            "{seen:?}"
        );
        // The listener's owner is this (test) process, whose namespace is the host's.
        assert!(
            !ns.pids()
                .unwrap()
                .contains(&(std::process::id() as libc::pid_t))
        );
        let mut child = ns.command("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        // setns happens in the child before exec: by the time spawn returns, it is inside.
        assert!(ns.pids().unwrap().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!ns.pids().unwrap().contains(&pid));
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
