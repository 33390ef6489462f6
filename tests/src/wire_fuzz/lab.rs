//! Two identical lanes, each a client veth wired straight to a server namespace with listeners:
//! the *filtered* lane runs the real serve-guard XDP program on the server's veth (driver mode,
//! or skb mode), the *baseline* lane an XDP program that passes everything, attached the same
//! way (so both lanes take the same path and differ only in the verdict). Every frame goes to both lanes; the kernel of
//! each server says what it delivers.
//!
//! ```text
//!              client ns (no addresses)            server ns "filtered"
//!   AF_PACKET ─ lf ══════════ veth ══════════ eth0 [serve-guard XDP]  listeners
//!   AF_PACKET ─ lb ══════════ veth ══════════ eth0 [XDP_PASS]         listeners
//!                                              server ns "baseline"
//! ```
//!
//! Both servers have the same MAC and addresses ([`SERVER_V4`], [`SERVER_V6`]), so one frame
//! fits both. The clients hold no addresses: the frames carry sources from the allow-list
//! ("inside") and outside it, and each server has a permanent neighbour entry for every such
//! source pointing at the client MAC, so answers (SYN-ACKs) come back without ARP or ND to the
//! client's AF_PACKET socket, which the client kernel then drops silently.
//!
//! Server sysctls, each for determinism: SYN cookies always (`tcp_syncookies = 2`: a SYN is
//! answered without keeping state, so no retransmitted SYN-ACKs and no SYN queue to fill),
//! fragment memory far above what a run holds and a short reassembly timeout (incomplete
//! datagrams, e.g. those whose first fragment the filter dropped, must not crowd out later
//! ones), no IPv4 "max_dist" reassembly reset, strict reverse-path filtering, and segment routing
//! (SRv6) accepted on eth0.

use super::case::Origin;
use super::raw::{PacketSocket, set_int_option};
use crate::frames::ethernet::{self, Macs, Tag, mac_text};
use crate::netns::{Netns, XdpAttachMode};
use crate::program::{TestProgram, XDP_PASS, load_verdict_program, pin_fd};
use crate::topology::{
    IFACE, INSIDE_V4, INSIDE_V6, Ip, OUTSIDE_V4, OUTSIDE_V6, SERVER_V4, SERVER_V6, VPC_V4, VPC_V6,
};
use anyhow::{Context as _, Result, bail};
use serve_guard::config::{XdpModeSetting, defaults::SERVE_PORTS};
pub use serve_guard::filter::AttachMode;
use serve_guard_common::FilterConfig;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::process::Stdio;

/// The server veth's MAC in both lanes (frames are byte-identical in both).
pub const SERVER_MAC: [u8; 6] = [0x02, 0x5f, 0, 0, 0, 0x01];
/// The client veth's MAC in both lanes: where the servers send their answers.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x5f, 0, 0, 0, 0x02];
/// Every case's frames go from the client to the server.
const MACS: Macs = Macs {
    dst: SERVER_MAC,
    src: CLIENT_MAC,
};

/// An Ethernet frame from the client to the server carrying `packet` behind `tags`.
pub fn ethernet(tags: &[Tag], ethertype: u16, packet: &[u8]) -> Vec<u8> {
    ethernet::frame(&MACS, tags, ethertype, packet)
}

/// Strict ports (Serve's): nothing from outside.
pub const PROTECTED_PORTS: [u16; 2] = SERVE_PORTS;
/// An open port (a public one), with the same listeners.
pub const UNPROTECTED_PORT: u16 = 8080;
/// Where the barrier's sentinels go (guarded, never used by cases; the sentinels come from
/// inside).
pub const SENTINEL_PORT: u16 = 7000;
/// A guarded port (issue 16; Ray's GCS) with the same listeners: from outside, neither a SYN
/// nor any other segment may reach the listener, nor a datagram the unconnected UDP socket.
pub const GUARDED_PORT: u16 = 6379;
/// A guarded port without any socket: a SYN from outside is dropped, every other segment (what
/// a reply to one of the node's own connections looks like) passes and gets the kernel's reset.
pub const GUARDED_EMPTY_PORT: u16 = 6380;

/// The filtered lane's port classes, `guard = "node"`: every port guarded but the strict ones
/// and the open one.
pub fn port_classes() -> Vec<serve_guard_common::PortValue> {
    use serve_guard_common::{PORT_GUARDED, PORT_OPEN, PORT_PROTECTED};
    let mut table = vec![PORT_GUARDED; 1 << 16];
    for port in PROTECTED_PORTS {
        table[usize::from(port)] = PORT_PROTECTED;
    }
    table[usize::from(UNPROTECTED_PORT)] = PORT_OPEN;
    table
}

/// Whether a packet from outside the allow-list to `port` of the filtered server must never
/// reach a socket there: strict ports; guarded ports with a listener and an unconnected UDP
/// socket (any TCP segment, any datagram); a guarded port without sockets only for a TCP SYN
/// without ACK (`tcp_flags` is `None` for UDP): every other segment or datagram is what a reply
/// to one of the node's own connections looks like, and passes. The open port never.
pub fn kept_out(port: u16, tcp_flags: Option<u8>) -> bool {
    use crate::frames::tcp::{ACK as TCP_ACK, SYN as TCP_SYN};
    match port {
        UNPROTECTED_PORT => false,
        p if PROTECTED_PORTS.contains(&p) => true,
        GUARDED_PORT | SENTINEL_PORT => true,
        _ => tcp_flags.is_some_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN),
    }
}

/// Source addresses per (family, origin): IPv4 ids are per source, so more sources mean more
/// datagrams before an id comes back.
pub const SOURCES_PER_ORIGIN: usize = 8;
/// Seconds an incomplete datagram waits for its missing fragments (kernel default 30/60).
const REASSEMBLY_TIMEOUT_S: &str = "3";
/// Fragment memory per namespace and family (kernel default 4 MiB): far above a run's needs.
const FRAGMENT_MEMORY: &str = "268435456";
/// Receive buffers of the listeners and the capture sockets: a batch's answers fit many times.
const RCVBUF: usize = 16 << 20;

const PREFIX_V4: u8 = 24;
const PREFIX_V6: u8 = 64;

/// The `k`-th source address of `origin` for family `ip`.
pub fn source(ip: Ip, origin: Origin, k: usize) -> IpAddr {
    let k = k as u32;
    match (ip, origin) {
        (Ip::V4, Origin::Inside) => Ipv4Addr::from(u32::from(INSIDE_V4) + k).into(),
        (Ip::V4, Origin::Outside) => Ipv4Addr::from(u32::from(OUTSIDE_V4) + k).into(),
        (Ip::V6, Origin::Inside) => Ipv6Addr::from(u128::from(INSIDE_V6) + u128::from(k)).into(),
        (Ip::V6, Origin::Outside) => Ipv6Addr::from(u128::from(OUTSIDE_V6) + u128::from(k)).into(),
    }
}

/// True if `addr` is in the allow-list the filtered lane is loaded with.
pub fn allowed(addr: IpAddr) -> bool {
    let v4: ipnet::Ipv4Net = VPC_V4.parse().expect("constant CIDR");
    let v6: ipnet::Ipv6Net = VPC_V6.parse().expect("constant CIDR");
    match addr {
        IpAddr::V4(a) => v4.contains(&a),
        IpAddr::V6(a) => v6.contains(&a),
    }
}

/// `ip link set ... <keyword> pinned PATH` for `mode`.
const fn ip_keyword(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Driver => "xdpdrv",
        AttachMode::Skb => "xdpgeneric",
        AttachMode::Tcx | AttachMode::Clsact => panic!("the lab attaches XDP modes only"),
    }
}

/// `driver` or `skb` (the agent's `xdp_mode` values that name one mode).
pub fn parse_mode(s: &str) -> Result<AttachMode> {
    match s.parse::<XdpModeSetting>().map_err(anyhow::Error::msg)? {
        XdpModeSetting::Driver => Ok(AttachMode::Driver),
        XdpModeSetting::Skb => Ok(AttachMode::Skb),
        XdpModeSetting::Auto => bail!("XDP mode `auto`: name one, driver or skb"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneRole {
    Filtered,
    Baseline,
}

impl LaneRole {
    pub const BOTH: [LaneRole; 2] = [LaneRole::Filtered, LaneRole::Baseline];

    pub const fn name(self) -> &'static str {
        match self {
            LaneRole::Filtered => "filtered",
            LaneRole::Baseline => "baseline",
        }
    }

    /// Client-side interface name (unique inside the client namespace only).
    const fn client_iface(self) -> &'static str {
        match self {
            LaneRole::Filtered => "lf",
            LaneRole::Baseline => "lb",
        }
    }

    const fn ns_prefix(self) -> &'static str {
        match self {
            LaneRole::Filtered => "ff",
            LaneRole::Baseline => "fb",
        }
    }
}

/// One server namespace, its listeners and the client socket that feeds and watches it.
#[derive(Debug)]
pub struct Lane {
    pub role: LaneRole,
    /// Sends frames, captures the server's answers.
    pub wire: PacketSocket,
    /// Dual-stack UDP sockets on every fuzzed port, with the port.
    pub udp: Vec<(u16, UdpSocket)>,
    pub sentinel_udp: UdpSocket,
    /// Kept open so SYNs to these ports are answered.
    _tcp: Vec<TcpListener>,
    pub server: Netns,
}

/// Both lanes and what keeps them running. Dropping it closes the sockets, deletes the
/// namespaces (and with them the veths and XDP attachments) and unpins the programs.
pub struct Lab {
    pub lanes: [Lane; 2],
    pub client: Netns,
    pub program: TestProgram,
    _pass: OwnedFd,
}

impl Lab {
    /// Both lanes, the servers' programs attached in `mode`. The calling thread is pinned to
    /// the CPU it runs on: it sends every frame, and frames that go through a CPU's backlog
    /// are in order only from one CPU (see the barrier). In skb mode every frame reaches the
    /// veth that way; in driver mode the veth's NAPI ring keeps the order, but a packet the
    /// kernel decapsulates by itself (SRv6) is re-injected into the backlog of the CPU that
    /// processed the outer one: then the sender's, whose softirq polls that backlog right
    /// after the veth's ring, before the sender looks at the sockets (a round is far below
    /// the softirq's budget).
    pub fn new(mode: AttachMode) -> Result<Self> {
        pin_to_current_cpu()?;
        let mut program = TestProgram::load()?;
        program.set_port_classes(&port_classes())?;
        for cidr in [VPC_V4, VPC_V6] {
            let net: ipnet::IpNet = cidr.parse().context("allow-list CIDR")?;
            program.allow(net.addr(), net.prefix_len())?;
        }
        program.set_config(FilterConfig { flags: 0 })?;
        let filter_pin = program.pin_program()?;
        let pass = load_verdict_program(XDP_PASS).context("loading the XDP_PASS program")?;
        let pass_pin = program.pin_dir().join("pass");
        pin_fd(pass.as_fd(), &pass_pin).context("pinning the XDP_PASS program")?;

        let client = Netns::new("fc")?;
        for key in ["all", "default"] {
            // The client only injects and captures: no IPv6 chatter (RS, MLD) of its own.
            client.sysctl(&format!("net/ipv6/conf/{key}/disable_ipv6"), "1")?;
        }
        let mut lanes = Vec::new();
        for role in LaneRole::BOTH {
            let server = Netns::new(role.ns_prefix())?;
            let iface = role.client_iface();
            client
                .ip(&[
                    "link",
                    "add",
                    iface,
                    "address",
                    &mac_text(CLIENT_MAC),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    IFACE,
                    "address",
                    &mac_text(SERVER_MAC),
                    "netns",
                    server.name(),
                ])
                .with_context(|| format!("creating the {} lane's veth", role.name()))?;
            configure_server(&server)?;
            client.ip(&["link", "set", iface, "up"])?;
            let server_prog = match role {
                LaneRole::Filtered => &filter_pin,
                LaneRole::Baseline => &pass_pin,
            };
            attach(&server, IFACE, server_prog, mode)?;
            let attached = server.xdp_attachment(IFACE)?.map(|a| a.mode);
            let wanted = match mode {
                AttachMode::Driver => XdpAttachMode::Driver,
                AttachMode::Skb => XdpAttachMode::Skb,
                AttachMode::Tcx | AttachMode::Clsact => bail!("the lab attaches XDP modes only"),
            };
            if attached != Some(wanted) {
                bail!(
                    "the {} server's XDP is attached as {attached:?}, not {}",
                    role.name(),
                    mode.name()
                );
            }
            // Native XDP on the client end: answers go through veth's NAPI ring, in order,
            // whatever CPU sent them (see the barrier).
            attach(&client, iface, &pass_pin, AttachMode::Driver)?;
            let wire = client
                .run(|| PacketSocket::open(iface, RCVBUF))?
                .with_context(|| format!("AF_PACKET socket on {iface}"))?;
            let (udp, tcp, sentinel_udp) = server.run(listeners)??;
            lanes.push(Lane {
                role,
                wire,
                udp,
                sentinel_udp,
                _tcp: tcp,
                server,
            });
        }
        let lanes: [Lane; 2] = lanes.try_into().map_err(|_| anyhow::anyhow!("two lanes"))?;
        Ok(Lab {
            lanes,
            client,
            program,
            _pass: pass,
        })
    }
}

fn configure_server(ns: &Netns) -> Result<()> {
    ns.ip(&[
        "addr",
        "add",
        &format!("{SERVER_V4}/{PREFIX_V4}"),
        "dev",
        IFACE,
    ])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{SERVER_V6}/{PREFIX_V6}"),
        "dev",
        IFACE,
        "nodad",
    ])?;
    ns.ip(&["link", "set", IFACE, "up"])?;
    let iface_seg6 = format!("net/ipv6/conf/{IFACE}/seg6_enabled");
    for (key, value) in [
        ("net/ipv4/tcp_syncookies", "2"),
        ("net/ipv4/ipfrag_high_thresh", FRAGMENT_MEMORY),
        ("net/ipv6/ip6frag_high_thresh", FRAGMENT_MEMORY),
        ("net/ipv4/ipfrag_time", REASSEMBLY_TIMEOUT_S),
        ("net/ipv6/ip6frag_time", REASSEMBLY_TIMEOUT_S),
        ("net/ipv4/ipfrag_max_dist", "0"),
        // Strict reverse-path filtering, as docs/filter.md recommends: every source is on-link
        // behind eth0, so it changes nothing here but keeps the lanes like a covered node.
        ("net/ipv4/conf/all/rp_filter", "1"),
        // Segment routing on, as on an SRv6 node: the kernel then decapsulates an IP packet
        // behind a routing header whose last segment is local by itself (ipv6_srh_rcv), and
        // the baseline shows what such a packet delivers.
        ("net/ipv6/conf/all/seg6_enabled", "1"),
        (iface_seg6.as_str(), "1"),
    ] {
        ns.sysctl(key, value)?;
    }
    let mut batch = String::new();
    for ip in Ip::BOTH {
        for origin in [Origin::Inside, Origin::Outside] {
            for k in 0..SOURCES_PER_ORIGIN {
                batch.push_str(&format!(
                    "neigh replace {} lladdr {} dev {IFACE} nud permanent\n",
                    source(ip, origin, k),
                    mac_text(CLIENT_MAC)
                ));
            }
        }
    }
    ip_batch(ns, &batch)
}

/// Runs `ip -n <ns> -batch -` with `commands` on stdin.
fn ip_batch(ns: &Netns, commands: &str) -> Result<()> {
    let mut child = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `ip -batch`")?;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`ip -n {} -batch` failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pins the calling thread to the CPU it is running on.
fn pin_to_current_cpu() -> Result<()> {
    // SAFETY: plain syscalls; the set is a local.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getcpu");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning the sender to its CPU");
        }
    }
    Ok(())
}

/// Attaches the program pinned at `pin` to `iface` in `mode`. `ip` runs inside the namespace
/// by setns only: `ip -n` remounts /sys, which hides bpffs and so the pin.
fn attach(ns: &Netns, iface: &str, pin: &std::path::Path, mode: AttachMode) -> Result<()> {
    let out = ns
        .command("ip")
        .args(["link", "set", "dev", iface, ip_keyword(mode), "pinned"])
        .arg(pin)
        .output()
        .context("running `ip`")?;
    if !out.status.success() {
        bail!(
            "attaching {} in {} mode to {iface} in {}: {}",
            pin.display(),
            mode.name(),
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

type Listeners = (Vec<(u16, UdpSocket)>, Vec<TcpListener>, UdpSocket);

/// Dual-stack listeners on every fuzzed port (but [`GUARDED_EMPTY_PORT`]) and the sentinel
/// port, in the calling thread's namespace.
fn listeners() -> Result<Listeners> {
    let ports: Vec<u16> = PROTECTED_PORTS
        .into_iter()
        .chain([UNPROTECTED_PORT, GUARDED_PORT, SENTINEL_PORT])
        .collect();
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for port in ports {
        let sock = UdpSocket::bind(("::", port)).with_context(|| format!("UDP [::]:{port}"))?;
        sock.set_nonblocking(true)?;
        set_int_option(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RCVBUF as i32,
        )?;
        udp.push((port, sock));
        tcp.push(TcpListener::bind(("::", port)).with_context(|| format!("TCP [::]:{port}"))?);
    }
    let (_, sentinel) = udp.pop().expect("sentinel port is last");
    Ok((udp, tcp, sentinel))
}
