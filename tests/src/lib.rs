//! Test harness: network-namespace topologies with Drop-guard cleanup, the frame builder of the
//! verdict tests and both fuzzers, and a handle on a running agent process.
//!
//! - [`netns`]: namespaces with unique names, running code or commands inside one.
//! - [`topology`]: server + inside client + outside client on one bridge, IPv4 and IPv6.
//! - [`frames`]: the one frame builder, layer by layer (Ethernet and VLAN tags, IPv4, IPv6 and
//!   extension headers, transports, checksums), for the verdict tables and both fuzzers.
//! - [`wire_fuzz`]: the black-box fuzzer with the kernel as the oracle.
//! - [`server`]: a tiny HTTP/1.1 server and a UDP echo server inside a namespace.
//! - [`probe`]: TCP connect, HTTP and UDP probes from a namespace, bounded by timeouts, and
//!   request loops on a thread of their own.
//! - [`sweep`]: every listening port of a node (from its socket table) probed from a client.
//! - [`ray`]: real Ray Serve from the pinned venv: a Serve app, a whole Ray head node.
//! - [`agent`]: the `serve-guard` process under test with its own config, pins and state.
//! - [`metadata`]: the clouds' metadata services and APIs (AWS, GCP, Azure) in a namespace.
//! - [`metrics`]: reading samples out of a Prometheus scrape.
//! - [`rootfs`]: a fresh Debian root filesystem (cached debootstrap + overlay) for chroot tests.
//! - [`rng`]: the seeded SplitMix64 generator of the fuzzers and the benchmark.
//! - [`fuzz`]: the differential fuzzer of the XDP verdict (program against a reference model).

#![deny(unsafe_code)]

#[allow(unsafe_code, reason = "prctl(2) and kill(2) on the agent process")]
pub mod agent;
pub mod browser;
pub mod frames;
#[allow(
    unsafe_code,
    reason = "the scenario's sockets: socket(2), bind(2), connect(2), setsockopt(2)"
)]
pub mod fuzz;
pub mod metadata;
pub mod metrics;
#[allow(unsafe_code, reason = "setns(2)")]
pub mod netns;
pub mod probe;
#[allow(
    unsafe_code,
    reason = "bpf(2) and mount(2) for the test programs and bpffs"
)]
pub mod program;
#[allow(unsafe_code, reason = "process groups: prctl(2), kill(2)")]
pub mod ray;
pub mod rng;
pub mod rootfs;
#[allow(unsafe_code, reason = "poll(2)")]
pub mod server;
pub mod sweep;
pub mod topology;
#[allow(unsafe_code, reason = "raw packet sockets, poll(2), signal masks")]
pub mod wire_fuzz;
pub mod xdp_tools;

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The workspace's root folder (tests/ lives in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every wait in the harness has one of these bounds.
pub mod limits {
    use std::time::Duration;

    /// Connect timeout when the test expects the SYN to be dropped: long enough for a SYN and its
    /// answer on a veth many times over, short enough to keep tests quick.
    pub const DROPPED_CONNECT: Duration = Duration::from_secs(1);
    /// Connect, read and write timeout of probes expected to succeed.
    pub const PROBE_IO: Duration = Duration::from_secs(5);
    /// Namespace and interface set-up.
    pub const SETUP: Duration = Duration::from_secs(10);
    /// From spawning the agent to the filter being attached (a debug build loads the object).
    pub const AGENT_READY: Duration = Duration::from_secs(30);
    /// From SIGTERM to exit.
    pub const AGENT_STOP: Duration = Duration::from_secs(10);
    /// One CLI verb.
    pub const CLI: Duration = Duration::from_secs(30);
    /// Between two polls of a condition.
    pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
}

/// Polls `cond` every [`limits::POLL_INTERVAL`] until it returns true, failing after `timeout`
/// with `what` in the message. An error from `cond` ends the wait at once.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(
            limits::POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
        );
    }
}
