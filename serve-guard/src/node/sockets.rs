//! The node's TCP and UDP sockets (IPv4 and IPv6) as the kernel lists them over
//! NETLINK_SOCK_DIAG, in the calling thread's network namespace, and the processes that own them
//! (from `/proc/*/fd`). Read-only; what the exposure audit (`super::listeners`) works from.
//!
//! sock_diag rather than `/proc/net/{tcp,udp}{,6}`: it is the kernel's structured interface
//! (what `ss` uses), it cannot be misparsed, and `/proc/net` shows the namespace of the process
//! that mounted `/proc`'s reader, which is not always ours. The socket table only ever holds the
//! sockets of one network namespace: processes in others (containers, pods) are counted, not
//! audited, and the report says so.

use super::netlink;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

// uapi/linux/sock_diag.h and inet_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then `struct inet_diag_sockid`.
const INET_DIAG_REQ_V2_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, the sockid (48 bytes), expires,
/// rqueue, wqueue, uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
/// Longest command line kept per process: enough to tell `dashboard/agent.py` from
/// `dashboard/dashboard.py`, short enough for a log line.
const CMDLINE_MAX: usize = 160;

/// A transport protocol the audit lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    const fn ip_protocol(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    const fn af(self) -> u8 {
        match self {
            Family::Ipv4 => libc::AF_INET as u8,
            Family::Ipv6 => libc::AF_INET6 as u8,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A socket's state, in the kernel's TCP numbering (include/net/tcp_states.h). UDP uses two of
/// them: [`State::Established`] for a connected socket, [`State::Close`] for a bound one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Other(u8),
}

impl State {
    pub const fn from_kernel(value: u8) -> State {
        match value {
            1 => State::Established,
            2 => State::SynSent,
            3 => State::SynRecv,
            4 => State::FinWait1,
            5 => State::FinWait2,
            6 => State::TimeWait,
            7 => State::Close,
            8 => State::CloseWait,
            9 => State::LastAck,
            10 => State::Listen,
            11 => State::Closing,
            12 => State::NewSynRecv,
            other => State::Other(other),
        }
    }
}

/// One socket of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub protocol: Protocol,
    pub local: SocketAddr,
    /// Unspecified address and port 0 for a listener or an unconnected UDP socket.
    pub remote: SocketAddr,
    pub state: State,
    /// The socket's inode (`socket:[N]` in `/proc/PID/fd`); 0 for a socket with no file (one
    /// the kernel owns, or a connection still in a listener's accept queue).
    pub inode: u64,
    pub uid: u32,
    /// The device the socket is bound to (SO_BINDTODEVICE), if any.
    pub bound_device: Option<u32>,
}

impl Socket {
    /// A TCP listener, or a UDP socket that is bound but not connected: what a packet from
    /// anyone can reach.
    pub fn is_listener(&self) -> bool {
        match self.protocol {
            Protocol::Tcp => self.state == State::Listen,
            Protocol::Udp => self.state != State::Established,
        }
    }
}

/// A socket table that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the node's {protocol} {family} sockets over NETLINK_SOCK_DIAG: {error}")]
pub struct SocketsError {
    pub protocol: Protocol,
    pub family: Family,
    #[source]
    pub error: io::Error,
}

/// Every `protocol` socket of `family` in this network namespace, but TCP's TIME_WAIT and
/// request sockets: they belong to no process and are neither listeners nor live sessions (and a
/// busy node has tens of thousands of them).
pub fn list(protocol: Protocol, family: Family) -> Result<Vec<Socket>, SocketsError> {
    let states: u32 = match protocol {
        Protocol::Tcp => !((1 << TCP_TIME_WAIT) | (1 << TCP_NEW_SYN_RECV)),
        Protocol::Udp => u32::MAX,
    };
    let mut request = [0u8; INET_DIAG_REQ_V2_LEN];
    request[0] = family.af();
    request[1] = protocol.ip_protocol();
    request[4..8].copy_from_slice(&states.to_ne_bytes());
    let mut sockets = Vec::new();
    netlink::dump(
        libc::NETLINK_SOCK_DIAG,
        SOCK_DIAG_BY_FAMILY,
        &request,
        |kind, body| {
            if kind == SOCK_DIAG_BY_FAMILY
                && let Some(socket) = parse_message(protocol, body)
            {
                sockets.push(socket);
            }
        },
    )
    .map_err(|error| SocketsError {
        protocol,
        family,
        error,
    })?;
    Ok(sockets)
}

/// One `struct inet_diag_msg`; `None` when it is short or of an unknown family.
fn parse_message(protocol: Protocol, body: &[u8]) -> Option<Socket> {
    if body.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let u32_at = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let port_at = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let address = |at: usize| -> Option<IpAddr> {
        match body[0] {
            f if f == Family::Ipv4.af() => Some(
                Ipv4Addr::from(<[u8; 4]>::try_from(&body[at..at + 4]).expect("4 bytes")).into(),
            ),
            f if f == Family::Ipv6.af() => Some(
                Ipv6Addr::from(<[u8; 16]>::try_from(&body[at..at + 16]).expect("16 bytes")).into(),
            ),
            _ => None,
        }
    };
    let device = u32_at(40);
    Some(Socket {
        protocol,
        local: SocketAddr::new(address(8)?, port_at(4)),
        remote: SocketAddr::new(address(24)?, port_at(6)),
        state: State::from_kernel(body[1]),
        uid: u32_at(64),
        inode: u64::from(u32_at(68)),
        bound_device: (device != 0).then_some(device),
    })
}

/// A process, as the audit names an owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/comm` (at most 15 bytes: Ray's `ray::ServeReplica:...` is cut there).
    pub comm: String,
    /// `/proc/PID/cmdline`, arguments joined by spaces, cut at 160 characters.
    pub cmdline: String,
}

impl Process {
    /// The name to show: Ray's process titles (`ray::ProxyActor`, `ray::ServeReplica:app:X`)
    /// live in the command line, whole; everything else by its `comm`.
    pub fn name(&self) -> &str {
        match self.cmdline.split_whitespace().next() {
            Some(title) if title.starts_with("ray::") => title,
            _ => &self.comm,
        }
    }

    fn read(proc: &Path, pid: u32) -> Process {
        let dir = proc.join(pid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|raw| short_cmdline(&raw))
            .unwrap_or_default();
        Process { pid, comm, cmdline }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.name(), self.pid)
    }
}

/// NUL-separated arguments as one line: every run of whitespace (a `python -c` script's
/// newlines, setproctitle's padding) becomes one space, so it fits a log line.
fn short_cmdline(raw: &[u8]) -> String {
    let joined = raw
        .split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    let line = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(CMDLINE_MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.clone(),
    }
}

/// A network namespace other than ours that holds processes: the audit cannot see its sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherNamespace {
    /// The namespace's inode (`net:[N]`).
    pub inode: u64,
    /// How many processes (not kernel threads) live in it.
    pub processes: usize,
    /// The one with the lowest pid, to tell the operator which namespace it is.
    pub example: Process,
}

/// What `/proc` says about the owners of sockets and about other network namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessScan {
    /// Each wanted socket inode's owners, by pid (a socket is shared across `fork`, as by
    /// pre-forked servers and HAProxy's workers).
    pub owners: HashMap<u64, Vec<Process>>,
    pub other_namespaces: Vec<OtherNamespace>,
    /// Processes whose file descriptors or namespace could not be read (not root, or the
    /// process ended during the scan).
    pub unreadable: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot list the processes in {path}: {error}")]
    List {
        path: std::path::PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("cannot read this thread's network namespace ({path}): {error}")]
    OwnNamespace {
        path: std::path::PathBuf,
        #[source]
        error: io::Error,
    },
}

/// Scans `/proc/*/fd` for the owners of `inodes` and `/proc/*/ns/net` for other network
/// namespaces.
pub fn scan_processes(inodes: &HashSet<u64>) -> Result<ProcessScan, ProcError> {
    scan_processes_in(Path::new("/proc"), inodes)
}

fn scan_processes_in(proc: &Path, inodes: &HashSet<u64>) -> Result<ProcessScan, ProcError> {
    // The thread's, not the process's: the netlink socket of the dump is opened in the calling
    // thread's namespace.
    let own_path = proc.join("thread-self/ns/net");
    let own = std::fs::read_link(&own_path)
        .ok()
        .and_then(|l| namespace_inode(&l.to_string_lossy()))
        .ok_or_else(|| ProcError::OwnNamespace {
            path: own_path.clone(),
            error: io::Error::new(io::ErrorKind::InvalidData, "no net:[N] link"),
        })?;
    let entries = std::fs::read_dir(proc).map_err(|error| ProcError::List {
        path: proc.to_owned(),
        error,
    })?;
    let mut scan = ProcessScan::default();
    let mut owner_pids: HashMap<u64, Vec<u32>> = HashMap::new();
    // Namespace inode -> (processes, lowest pid).
    let mut others: BTreeMap<u64, (usize, u32)> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // Kernel threads have an empty command line and own no sockets of ours.
        let kernel_thread = std::fs::read(dir.join("cmdline")).is_ok_and(|c| c.is_empty());
        if kernel_thread {
            continue;
        }
        match std::fs::read_link(dir.join("ns/net"))
            .ok()
            .and_then(|l| namespace_inode(&l.to_string_lossy()))
        {
            Some(ns) if ns == own => {}
            Some(ns) => {
                let (count, lowest) = others.entry(ns).or_insert((0, pid));
                *count += 1;
                *lowest = (*lowest).min(pid);
            }
            None => {
                scan.unreadable += 1;
                continue;
            }
        }
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            scan.unreadable += 1;
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| socket_inode(&l.to_string_lossy()))
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = owner_pids.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    let mut processes: HashMap<u32, Process> = HashMap::new();
    for (inode, mut pids) in owner_pids {
        pids.sort_unstable();
        let owners = pids
            .into_iter()
            .map(|pid| {
                processes
                    .entry(pid)
                    .or_insert_with(|| Process::read(proc, pid))
                    .clone()
            })
            .collect();
        scan.owners.insert(inode, owners);
    }
    scan.other_namespaces = others
        .into_iter()
        .map(|(inode, (processes, pid))| OtherNamespace {
            inode,
            processes,
            example: Process::read(proc, pid),
        })
        .collect();
    Ok(scan)
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `net:[4026531840]` -> 4026531840.
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    /// A message as the kernel would send it.
    fn message(family: u8, state: u8, local: (&[u8], u16), remote: (&[u8], u16)) -> Vec<u8> {
        let mut m = vec![0u8; INET_DIAG_MSG_LEN];
        m[0] = family;
        m[1] = state;
        m[4..6].copy_from_slice(&local.1.to_be_bytes());
        m[6..8].copy_from_slice(&remote.1.to_be_bytes());
        m[8..8 + local.0.len()].copy_from_slice(local.0);
        m[24..24 + remote.0.len()].copy_from_slice(remote.0);
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        m
    }

    #[test]
    fn messages_parse_into_sockets() {
        let v4 = message(
            libc::AF_INET as u8,
            10,
            (&[198, 18, 0, 1], 8265),
            (&[0, 0, 0, 0], 0),
        );
        let s = parse_message(Protocol::Tcp, &v4).unwrap();
        assert_eq!(s.local, "198.18.0.1:8265".parse().unwrap());
        assert_eq!(s.remote, "0.0.0.0:0".parse().unwrap());
        assert_eq!(
            (s.state, s.uid, s.inode, s.bound_device),
            (State::Listen, 1000, 4242, None)
        );
        assert!(s.is_listener());

        let local: Ipv6Addr = "fd00:5e::1".parse().unwrap();
        let peer: Ipv6Addr = "fd00:5e::1:200".parse().unwrap();
        let mut v6 = message(
            libc::AF_INET6 as u8,
            1,
            (&local.octets(), 53),
            (&peer.octets(), 40000),
        );
        v6[40..44].copy_from_slice(&3u32.to_ne_bytes());
        let s = parse_message(Protocol::Udp, &v6).unwrap();
        assert_eq!(s.remote, SocketAddr::new(peer.into(), 40000));
        assert_eq!(s.bound_device, Some(3));
        assert!(!s.is_listener(), "a connected UDP socket is not a listener");

        assert!(parse_message(Protocol::Tcp, &v4[..INET_DIAG_MSG_LEN - 1]).is_none());
        let mut unknown = v4;
        unknown[0] = 99;
        assert!(parse_message(Protocol::Tcp, &unknown).is_none());
    }

    #[test]
    fn links_and_command_lines_parse() {
        assert_eq!(socket_inode("socket:[98765]"), Some(98765));
        assert_eq!(socket_inode("pipe:[98765]"), None);
        assert_eq!(namespace_inode("net:[4026531840]"), Some(4026531840));
        assert_eq!(
            short_cmdline(b"ray::ServeReplica:app:Echo\0\0\0   \0"),
            "ray::ServeReplica:app:Echo"
        );
        assert_eq!(
            short_cmdline(b"python\0-m\0ray.util.client.server\0"),
            "python -m ray.util.client.server"
        );
        assert_eq!(
            short_cmdline(b"python3\0-c\0\nimport os\n\tos.exit()\n"),
            "python3 -c import os os.exit()"
        );
        let long = vec![b'x'; 400];
        assert_eq!(short_cmdline(&long).len(), CMDLINE_MAX + 3);
        let replica = Process {
            pid: 7,
            comm: "ray::ServeRepli".into(),
            cmdline: "ray::ServeReplica:app:Echo".into(),
        };
        assert_eq!(replica.to_string(), "ray::ServeReplica:app:Echo (pid 7)");
        let sshd = Process {
            pid: 8,
            comm: "sshd".into(),
            cmdline: "sshd: /usr/sbin/sshd -D [listener]".into(),
        };
        assert_eq!(sshd.name(), "sshd");
    }

    /// The real kernel and /proc: sockets this test opens are listed with this process as
    /// their owner.
    #[test]
    fn own_sockets_are_listed_with_their_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = list(Protocol::Tcp, Family::Ipv4).unwrap();
        let udp_sockets = list(Protocol::Udp, Family::Ipv4).unwrap();
        let found = tcp
            .iter()
            .find(|s| s.local == listener.local_addr().unwrap() && s.state == State::Listen)
            .expect("the listener is listed");
        let session = tcp
            .iter()
            .find(|s| s.local == client.local_addr().unwrap())
            .expect("the client side is listed");
        assert_eq!(session.state, State::Established);
        assert_eq!(session.remote, listener.local_addr().unwrap());
        let bound = udp_sockets
            .iter()
            .find(|s| s.local == udp.local_addr().unwrap())
            .expect("the UDP socket is listed");
        assert!(bound.is_listener());
        // The IPv6 table may be empty (no IPv6 in this namespace), but it must be readable.
        list(Protocol::Tcp, Family::Ipv6).unwrap();

        let wanted: HashSet<u64> = [found.inode, bound.inode].into();
        let scan = scan_processes(&wanted).unwrap();
        for inode in wanted {
            let owners = &scan.owners[&inode];
            assert_eq!(owners.len(), 1, "{owners:?}");
            assert_eq!(owners[0].pid, std::process::id());
        }
    }
}
