//! Debian's xdp-tools (libxdp 1.3, dispatcher protocol v2) in a test namespace: xdp-filter with
//! a rule of its own, `xdp-loader status`. The tools keep state on bpffs, so they run with only
//! the network namespace entered ([`Netns::command`], as `nsenter --net=`), never under
//! `ip netns exec`, which remounts /sys and hides bpffs.

use crate::netns::Netns;
use anyhow::{Context as _, Result, bail};
use std::sync::{Mutex, MutexGuard};

/// xdp-filter keeps one set of maps for every interface on the machine
/// (/sys/fs/bpf/xdp-filter): tests that load it take turns.
static XDP_FILTER: Mutex<()> = Mutex::new(());

/// xdp-loader takes a machine-wide lock file and fails ("Unable to read PID from lockfile")
/// instead of waiting when another one holds it: the tests' calls take turns.
static TOOLS: Mutex<()> = Mutex::new(());

/// Runs an xdp-tools command in `ns`, failing with its output.
pub fn run(ns: &Netns, tool: &str, args: &[&str]) -> Result<String> {
    run_with_env(ns, tool, args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_with_env(ns: &Netns, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let out = {
        let _turn = TOOLS.lock().unwrap_or_else(|e| e.into_inner());
        ns.command(tool)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .with_context(|| format!("running {tool}"))?
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "`{tool} {}` failed ({}): {text}",
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

/// Loads `object` alone on `iface` in native mode, as libxdp does with LIBXDP_SKIP_DISPATCHER=1:
/// a program that does not speak the dispatcher protocol.
pub fn load_alone(ns: &Netns, iface: &str, object: &str) -> Result<()> {
    run_with_env(
        ns,
        "xdp-loader",
        &["load", "-m", "native", iface, object],
        &[("LIBXDP_SKIP_DISPATCHER", "1")],
    )
    .map(drop)
}

/// `xdp-loader status <iface>`.
pub fn loader_status(ns: &Netns, iface: &str) -> Result<String> {
    run(ns, "xdp-loader", &["status", iface])
}

/// xdp-filter loaded on one interface (native mode), unloaded on drop.
pub struct XdpFilter {
    ns: Netns,
    iface: String,
    loaded: bool,
    _turn: MutexGuard<'static, ()>,
}

impl XdpFilter {
    /// Takes the machine-wide turn; [`XdpFilter::load`] puts the program on.
    pub fn new(ns: &Netns, iface: &str) -> XdpFilter {
        let turn = XDP_FILTER.lock().unwrap_or_else(|e| e.into_inner());
        XdpFilter {
            ns: ns.clone(),
            iface: iface.to_owned(),
            loaded: false,
            _turn: turn,
        }
    }

    /// `xdp-filter load -m native <iface>`: through libxdp's dispatcher.
    pub fn load(&mut self) -> Result<String> {
        let out = run(
            &self.ns,
            "xdp-filter",
            &["load", "-m", "native", &self.iface],
        )?;
        self.loaded = true;
        Ok(out)
    }

    /// Drops UDP to `port` (xdp-filter's own rule, for every interface it runs on).
    pub fn deny_udp_port(&self, port: u16) -> Result<()> {
        run(
            &self.ns,
            "xdp-filter",
            &["port", &port.to_string(), "-m", "dst", "-p", "udp"],
        )
        .map(drop)
    }

    /// Whether the loaded xdp-filter runs in a libxdp dispatcher. libxdp falls back to a lone
    /// program when the kernel refuses extension (freplace) programs, as it does under kernel
    /// lockdown: then nothing can share the interface, and the sharing tests cannot run here.
    pub fn in_dispatcher(&self) -> Result<bool> {
        Ok(loader_status(&self.ns, &self.iface)?.contains("xdp_dispatcher"))
    }

    pub fn unload(&mut self) -> Result<String> {
        let out = run(&self.ns, "xdp-filter", &["unload", &self.iface])?;
        self.loaded = false;
        Ok(out)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if self.loaded {
            let _ = run(&self.ns, "xdp-filter", &["unload", &self.iface]);
        }
    }
}

/// On drop: every program off `iface` through libxdp, so its pins under /sys/fs/bpf/xdp go too
/// (a namespace deleted with a dispatcher on it leaves them behind).
pub struct UnloadAll {
    pub ns: Netns,
    pub iface: String,
}

impl Drop for UnloadAll {
    fn drop(&mut self) {
        let _ = run(&self.ns, "xdp-loader", &["unload", "--all", &self.iface]);
    }
}
