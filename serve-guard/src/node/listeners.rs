//! The exposure audit of the node's sockets: which listeners a source outside the allow-list can
//! reach, which live sessions the port rules put at risk, and what the audit cannot see.
//!
//! - A *listener* is a TCP socket in LISTEN or a bound, unconnected UDP socket, bound beyond
//!   loopback (a wildcard bind counts; 127.0.0.0/8, ::1 and sockets bound to `lo` do not). A source
//!   outside the list reaches it iff its port is open ([`PortClass::Open`]): a guarded port drops
//!   new TCP connections and anything for a listening or unconnected socket, a strict port drops
//!   everything. In audit mode the filter drops nothing, so every listener is reachable and the
//!   report says which ones enforcing would close.
//! - A *session at risk* is an established inbound TCP connection (its local port has a listener)
//!   from a peer outside the list to a port that is not open: on a guarded port that peer can no
//!   longer connect again (the session itself continues: its segments are not SYNs and find an
//!   established socket); on a strict port the session is cut. This is how the operator learns,
//!   before enforcing, that the rules would lock out their own SSH login.
//! - *Blind spots*: sockets of other network namespaces (containers, pods), listeners whose owner
//!   cannot be read, socket tables that could not be listed.
//!
//! The filter only sees the interfaces it is attached to; paths around it (tunnels, SRv6, ...)
//! are `super::exposure`'s findings. This module keeps to sockets.
//!
//! In two steps so that no lock is held while the kernel and `/proc` are read: [`Snapshot::take`]
//! (slow: sockets, addresses, `/proc`) and [`Snapshot::audit`] (fast: the rules and the list).

use super::netlink;
use super::sockets::{
    self, Family, OtherNamespace, ProcError, Process, Protocol, Socket, SocketsError, State,
};
use crate::cidr::CidrList;
use crate::ports::{PortClass, PortPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Loopback's ifindex in every network namespace (LOOPBACK_IFINDEX).
const LOOPBACK_IFINDEX: u32 = 1;
/// How many other namespaces a blind-spot line names by one of their processes.
const NAMESPACE_EXAMPLES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Not one socket table could be listed: there is nothing to audit.
    #[error(transparent)]
    Sockets(#[from] SocketsError),
    #[error(transparent)]
    Processes(#[from] ProcError),
    #[error("cannot list the node's addresses: {0}")]
    Addresses(#[source] std::io::Error),
    /// The task reading the node was cancelled: the agent is stopping.
    #[error("the socket audit was cancelled: the agent is stopping")]
    Cancelled,
}

/// What the kernel and `/proc` said, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    sockets: Vec<Socket>,
    owners: HashMap<u64, Vec<Process>>,
    /// The namespace's own addresses: a peer at one of them talks over loopback.
    local_addresses: HashSet<IpAddr>,
    other_namespaces: Vec<OtherNamespace>,
    unreadable_processes: usize,
    /// Socket tables that could not be listed (e.g. a kernel without `udp_diag`).
    unlisted: Vec<(Protocol, Family, String)>,
}

impl Snapshot {
    /// Lists this thread's network namespace: TCP and UDP sockets of both families, the owners of
    /// those that matter, its addresses, and the other namespaces that hold processes.
    pub fn take() -> Result<Snapshot, AuditError> {
        let mut sockets = Vec::new();
        let mut unlisted = Vec::new();
        let mut first_error = None;
        for protocol in Protocol::ALL {
            for family in Family::ALL {
                match sockets::list(protocol, family) {
                    Ok(found) => sockets.extend(found),
                    Err(e) => {
                        unlisted.push((protocol, family, e.to_string()));
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = first_error
            && unlisted.len() == Protocol::ALL.len() * Family::ALL.len()
        {
            return Err(e.into());
        }
        let wanted: HashSet<u64> = sockets
            .iter()
            .filter(|s| s.inode != 0 && (s.is_listener() || s.state == State::Established))
            .map(|s| s.inode)
            .collect();
        let scan = sockets::scan_processes(&wanted)?;
        let local_addresses = netlink::local_addresses()
            .map_err(AuditError::Addresses)?
            .into_iter()
            .map(|a| a.to_canonical())
            .collect();
        Ok(Snapshot {
            sockets,
            owners: scan.owners,
            local_addresses,
            other_namespaces: scan.other_namespaces,
            unreadable_processes: scan.unreadable,
            unlisted,
        })
    }

    /// Judges the snapshot against the port rules and the allow-list (`allowed` says whether a
    /// source address is in it). `audit_mode`: the filter counts would-be drops and passes them.
    pub fn audit(
        &self,
        policy: &PortPolicy,
        allowed: impl Fn(IpAddr) -> bool,
        audit_mode: bool,
    ) -> ListenerAudit {
        let owners_of = |s: &Socket| self.owners.get(&s.inode).cloned().unwrap_or_default();

        // One row per (protocol, address): SO_REUSEPORT groups and forked servers hold several
        // sockets on one address.
        let mut rows: BTreeMap<(u16, Protocol, SocketAddr), Vec<Process>> = BTreeMap::new();
        for s in self.sockets.iter().filter(|s| s.is_listener()) {
            if is_loopback_only(s) {
                continue;
            }
            let owners = rows
                .entry((s.local.port(), s.protocol, s.local))
                .or_default();
            for owner in owners_of(s) {
                if !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        let listeners: Vec<Listener> = rows
            .into_iter()
            .map(|((port, protocol, local), mut owners)| {
                owners.sort();
                let class = policy.class(port);
                Listener {
                    protocol,
                    local,
                    port,
                    what: describe(protocol, port, &owners),
                    owners,
                    class,
                    reason: policy.reason(port),
                    reachable: audit_mode || class == PortClass::Open,
                    would_close: audit_mode && class != PortClass::Open,
                }
            })
            .collect();

        let tcp_listening: HashSet<u16> = self
            .sockets
            .iter()
            .filter(|s| s.protocol == Protocol::Tcp && s.state == State::Listen)
            .map(|s| s.local.port())
            .collect();
        let mut sessions_at_risk: Vec<SessionAtRisk> = self
            .sockets
            .iter()
            .filter(|s| s.protocol == Protocol::Tcp && s.state == State::Established)
            .filter(|s| tcp_listening.contains(&s.local.port()))
            .filter(|s| {
                let peer = s.remote.ip().to_canonical();
                // Loopback traffic, to any of the node's own addresses too, never meets the
                // filter.
                !peer.is_loopback() && !self.local_addresses.contains(&peer) && !allowed(peer)
            })
            .filter_map(|s| {
                let port = s.local.port();
                let class = policy.class(port);
                let consequence = match class {
                    PortClass::Open => return None,
                    PortClass::Guarded => Consequence::NewConnectionsRefused,
                    PortClass::Strict => Consequence::SessionCut,
                };
                let owners = owners_of(s);
                Some(SessionAtRisk {
                    local: s.local,
                    peer: s.remote,
                    what: describe(Protocol::Tcp, port, &owners),
                    owners,
                    class,
                    reason: policy.reason(port),
                    consequence,
                })
            })
            .collect();
        sessions_at_risk.sort_by_key(|s| (s.local.port(), s.peer));

        let mut blind_spots = Vec::new();
        if !self.other_namespaces.is_empty() {
            blind_spots.push(BlindSpot::OtherNamespaces {
                namespaces: self.other_namespaces.len(),
                processes: self.other_namespaces.iter().map(|n| n.processes).sum(),
                examples: self
                    .other_namespaces
                    .iter()
                    .take(NAMESPACE_EXAMPLES)
                    .map(|n| n.example.clone())
                    .collect(),
            });
        }
        let ownerless = listeners.iter().filter(|l| l.owners.is_empty()).count();
        if ownerless > 0 {
            blind_spots.push(BlindSpot::UnknownOwners {
                listeners: ownerless,
                unreadable_processes: self.unreadable_processes,
            });
        }
        blind_spots.extend(self.unlisted.iter().map(|(protocol, family, error)| {
            BlindSpot::Unlisted {
                protocol: *protocol,
                family: *family,
                error: error.clone(),
            }
        }));
        ListenerAudit {
            audit_mode,
            listeners,
            sessions_at_risk,
            blind_spots,
        }
    }
}

/// [`Snapshot::take`] then [`Snapshot::audit`] against a whole list (`check`, start-up).
pub fn audit(
    policy: &PortPolicy,
    allowed: &CidrList,
    audit_mode: bool,
) -> Result<ListenerAudit, AuditError> {
    Ok(Snapshot::take()?.audit(policy, |ip| allowed.allows(ip), audit_mode))
}

/// Bound to loopback (127.0.0.0/8, ::1, `::ffff:127.x`) or to the `lo` device: nothing from
/// another host can reach it.
fn is_loopback_only(s: &Socket) -> bool {
    s.local.ip().to_canonical().is_loopback() || s.bound_device == Some(LOOPBACK_IFINDEX)
}

/// The exposure audit, for `check`, the start-up log, `status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerAudit {
    /// The filter runs in audit mode: it drops nothing, so every listener is reachable now.
    pub audit_mode: bool,
    /// Every listener bound beyond loopback, reachable or not, by port.
    pub listeners: Vec<Listener>,
    pub sessions_at_risk: Vec<SessionAtRisk>,
    pub blind_spots: Vec<BlindSpot>,
}

impl ListenerAudit {
    /// The listeners a source outside the allow-list reaches now.
    pub fn reachable(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter().filter(|l| l.reachable)
    }

    /// One line per finding, for `check`, the start-up log and `status`: reachable listeners
    /// (in audit mode, with what enforcing would do), sessions at risk, blind spots.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .reachable()
            .map(|l| {
                let rule = format!("port {} is {} ({})", l.port, l.class, l.reason);
                if !self.audit_mode {
                    format!("reachable from outside the allow-list: {l}; {rule}")
                } else if l.would_close {
                    format!(
                        "audit mode: reachable from outside the allow-list until enforcing, which would close it: {l}; {rule}"
                    )
                } else {
                    format!(
                        "audit mode: reachable from outside the allow-list, and still when enforcing: {l}; {rule}"
                    )
                }
            })
            .collect();
        lines.extend(self.sessions_at_risk.iter().map(|s| {
            if self.audit_mode {
                format!("session at risk once enforcing: {s}")
            } else {
                format!("session at risk: {s}")
            }
        }));
        lines.extend(self.blind_spots.iter().map(ToString::to_string));
        lines
    }
}

/// A socket that anyone who can send to the node's address may reach, rules permitting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub port: u16,
    /// Every process holding it, by pid; empty when none could be read.
    pub owners: Vec<Process>,
    /// What it is, when known: by its owner first, its port second.
    pub what: Option<String>,
    pub class: PortClass,
    /// Why the port has its class (the list entry or the rule).
    pub reason: String,
    /// A source outside the allow-list reaches it now: its port is open, or audit mode passes
    /// everything.
    pub reachable: bool,
    /// Audit mode only: enforcing the rules would close it.
    pub would_close: bool,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.protocol,
            self.local,
            Owners(&self.owners)
        )?;
        if let Some(what) = &self.what {
            write!(f, ": {what}")?;
        }
        Ok(())
    }
}

/// An established inbound TCP connection the rules put at risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAtRisk {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub owners: Vec<Process>,
    pub what: Option<String>,
    pub class: PortClass,
    pub reason: String,
    pub consequence: Consequence,
}

/// What the port rules do to a session from a peer outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consequence {
    /// Guarded port: the peer cannot open a new connection; this one continues.
    NewConnectionsRefused,
    /// Strict port: every packet from the peer is dropped, this session with them.
    SessionCut,
}

impl fmt::Display for SessionAtRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp {} from {} ({})",
            self.local,
            self.peer,
            Owners(&self.owners)
        )?;
        if let Some(what) = &self.what {
            write!(f, ": {what}")?;
        }
        write!(
            f,
            "; port {} is {} ({}): ",
            self.local.port(),
            self.class,
            self.reason
        )?;
        match self.consequence {
            Consequence::NewConnectionsRefused => write!(
                f,
                "new connections from {} would be refused, this session continues",
                self.peer.ip().to_canonical()
            ),
            Consequence::SessionCut => f.write_str("this session would be cut"),
        }
    }
}

/// Something the audit cannot see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlindSpot {
    /// Processes in other network namespaces (containers, pods): their sockets are in tables
    /// this namespace cannot list.
    OtherNamespaces {
        namespaces: usize,
        processes: usize,
        /// One process of each of the first few namespaces.
        examples: Vec<Process>,
    },
    /// Listeners whose owner could not be found.
    UnknownOwners {
        listeners: usize,
        /// Processes whose descriptors could not be read.
        unreadable_processes: usize,
    },
    /// A socket table the kernel would not list.
    Unlisted {
        protocol: Protocol,
        family: Family,
        error: String,
    },
}

impl fmt::Display for BlindSpot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlindSpot::OtherNamespaces {
                namespaces,
                processes,
                examples,
            } => {
                let examples = examples
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(
                    f,
                    "the audit cannot see the sockets of {namespaces} other network namespace(s) ({processes} process(es), e.g. {examples}): listeners in containers or pods there are not listed; the filter judges their traffic by the port it arrives on at the covered interfaces"
                )
            }
            BlindSpot::UnknownOwners {
                listeners,
                unreadable_processes: 0,
            } => write!(
                f,
                "{listeners} listener(s) have no owner process in /proc: the kernel's own, or of processes in another PID namespace"
            ),
            BlindSpot::UnknownOwners {
                listeners,
                unreadable_processes,
            } => write!(
                f,
                "{listeners} listener(s) have no owner the audit could find: {unreadable_processes} process(es) could not be read in /proc (not root, a security module, or they ended during the scan)"
            ),
            BlindSpot::Unlisted { error, .. } => {
                write!(f, "{error}: those sockets are not audited")
            }
        }
    }
}

/// `python3, pid 812`, `haproxy, pid 5, and 3 more processes`, `owner unknown`.
struct Owners<'a>(&'a [Process]);

impl fmt::Display for Owners<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("owner unknown"),
            [one] => write!(f, "{}, pid {}", one.name(), one.pid),
            [first, rest @ ..] => write!(
                f,
                "{}, pid {}, and {} more process(es)",
                first.name(),
                first.pid,
                rest.len()
            ),
        }
    }
}

/// What a socket is: by its owner first (Ray's processes have telling names and titles), by its
/// port (Ray's and Serve's documented defaults) second.
pub fn describe(protocol: Protocol, port: u16, owners: &[Process]) -> Option<String> {
    owners
        .iter()
        .find_map(|p| by_process(port, p))
        .map(str::to_owned)
        .or_else(|| by_port(protocol, port).map(|what| format!("{what} (by its port)")))
}

fn by_process(port: u16, p: &Process) -> Option<&'static str> {
    let title = p.cmdline.as_str();
    let has = |needle: &str| title.contains(needle);
    Some(if title.starts_with("ray::ServeReplica") {
        match port {
            30000..=31000 => "Serve direct-ingress replica (HTTP): Serve without the token",
            40000..=41000 => "Serve direct-ingress replica (gRPC): Serve without the token",
            _ => "a Serve replica's Ray worker port: the cluster's internal gRPC",
        }
    } else if title.starts_with("ray::ProxyActor") {
        match port {
            8500 => "Serve's proxy (behind HAProxy): Serve without the token",
            8000 | 9000 => "Serve's proxy: Serve without the token",
            _ => {
                "Serve's proxy (ray::ProxyActor): Serve without the token, or the actor's Ray worker port"
            }
        }
    } else if title.starts_with("ray::ServeController") {
        "Serve's controller (a Ray actor): the cluster's internal gRPC"
    } else if title.starts_with("ray::") {
        "a Ray worker: the cluster's internal gRPC, runs tasks"
    } else if p.comm == "gcs_server" {
        "Ray GCS: controls the cluster"
    } else if p.comm == "raylet" {
        match port {
            8076 => "Ray object manager (raylet): the cluster's object store",
            _ => "Ray raylet (node manager): starts the node's workers",
        }
    } else if has("dashboard.py") {
        match port {
            8265 => "ray dashboard: the Jobs API runs arbitrary code",
            _ => "ray dashboard (head): its Jobs API runs arbitrary code",
        }
    } else if has("runtime_env/agent") {
        "Ray runtime-env agent: installs jobs' environments"
    } else if has("dashboard/agent.py") {
        "Ray dashboard agent: runs submitted jobs (arbitrary code)"
    } else if has("ray.util.client.server") || has("ray/util/client/server") {
        "Ray client server: runs arbitrary code"
    } else if has("log_monitor.py") {
        "Ray log monitor"
    } else if has("autoscaler/_private/monitor.py") {
        "Ray autoscaler monitor"
    } else if p.comm == "haproxy" {
        match port {
            8404 => "HAProxy stats of Serve's HAProxy ingress",
            9101 => "HAProxy metrics of Serve's HAProxy ingress",
            _ => "Serve's HAProxy ingress: Serve without the token",
        }
    } else if p.comm == "sshd" {
        "SSH"
    } else if p.comm == "serve-guard" {
        "serve-guard (its token proxy or metrics)"
    } else {
        return None;
    })
}

fn by_port(protocol: Protocol, port: u16) -> Option<&'static str> {
    Some(match (protocol, port) {
        (Protocol::Tcp, 22) => "SSH",
        (Protocol::Tcp, 6379) => "Ray GCS: controls the cluster",
        (Protocol::Tcp, 8000) => "Ray Serve HTTP",
        (Protocol::Tcp, 8076) => "Ray object manager",
        (Protocol::Tcp, 8265) => "ray dashboard: the Jobs API runs arbitrary code",
        (Protocol::Tcp, 8404) => "HAProxy stats of Serve's HAProxy ingress",
        (Protocol::Tcp, 8500) => "Serve's proxy (behind HAProxy): Serve without the token",
        (Protocol::Tcp, 9000) => "Ray Serve gRPC",
        (Protocol::Tcp, 9101) => "HAProxy metrics of Serve's HAProxy ingress",
        (Protocol::Tcp, 10001) => "Ray client server: runs arbitrary code",
        (Protocol::Tcp, 10002..=19999) => "Ray worker port",
        (Protocol::Tcp, 30000..=31000) => {
            "Serve direct-ingress replica (HTTP): Serve without the token"
        }
        (Protocol::Tcp, 40000..=41000) => {
            "Serve direct-ingress replica (gRPC): Serve without the token"
        }
        (Protocol::Tcp, 52365) => "Ray dashboard agent: runs submitted jobs (arbitrary code)",
        (Protocol::Udp, 53) => "DNS",
        (Protocol::Udp, 123) => "NTP",
        (Protocol::Udp, 4789) => "VXLAN",
        (Protocol::Udp, 6081) => "Geneve",
        (Protocol::Udp, 51820) => "WireGuard",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Guard, PortList};

    fn policy(guard: Guard, public: &[u16]) -> PortPolicy {
        PortPolicy {
            guard,
            serve: PortList::from_ports(&[8000, 9000]),
            public: PortList::from_ports(public),
            guarded: PortList::default(),
            proxy: Vec::new(),
        }
    }

    fn process(pid: u32, comm: &str, cmdline: &str) -> Process {
        Process {
            pid,
            comm: comm.into(),
            cmdline: cmdline.into(),
        }
    }

    fn socket(protocol: Protocol, state: State, local: &str, remote: &str, inode: u64) -> Socket {
        Socket {
            protocol,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            inode,
            uid: 0,
            bound_device: None,
        }
    }

    fn listen(local: &str, inode: u64) -> Socket {
        socket(Protocol::Tcp, State::Listen, local, "0.0.0.0:0", inode)
    }

    /// A node like FACTS.md's Ray head, in miniature.
    fn snapshot() -> Snapshot {
        let sshd = process(100, "sshd", "sshd: /usr/sbin/sshd -D [listener]");
        let gcs = process(
            200,
            "gcs_server",
            "/venv/ray/core/src/ray/gcs/gcs_server --port=6379",
        );
        let dashboard = process(
            300,
            "python",
            "/venv/bin/python -u /venv/ray/dashboard/dashboard.py --host=0.0.0.0",
        );
        let replica = process(400, "ray::ServeRepli", "ray::ServeReplica:app:Echo");
        let session = process(101, "sshd", "sshd: ops [priv]");
        let mut sockets = vec![
            listen("0.0.0.0:22", 1),
            socket(Protocol::Tcp, State::Listen, "[::]:22", "[::]:0", 2),
            listen("0.0.0.0:6379", 3),
            listen("0.0.0.0:8265", 4),
            listen("0.0.0.0:30000", 5),
            // Loopback only: never reported.
            listen("127.0.0.1:8076", 6),
            socket(Protocol::Tcp, State::Listen, "[::1]:9999", "[::]:0", 7),
            // Bound to lo by device.
            listen("0.0.0.0:7777", 8),
            // Nobody's: a listener the audit cannot attribute.
            listen("0.0.0.0:10001", 0),
            // Unconnected UDP beyond loopback, and a connected one (not a listener).
            socket(Protocol::Udp, State::Close, "0.0.0.0:5353", "0.0.0.0:0", 9),
            socket(
                Protocol::Udp,
                State::Established,
                "198.18.0.1:40000",
                "198.18.0.53:53",
                10,
            ),
            // Sessions: SSH from outside over a dual-stack socket, SSH from inside, GCS from
            // outside, a loopback one, and an outbound connection from an ephemeral port.
            socket(
                Protocol::Tcp,
                State::Established,
                "[::ffff:198.18.0.1]:22",
                "[::ffff:203.0.113.7]:50000",
                11,
            ),
            socket(
                Protocol::Tcp,
                State::Established,
                "198.18.0.1:22",
                "198.18.0.10:50001",
                12,
            ),
            socket(
                Protocol::Tcp,
                State::Established,
                "198.18.0.1:6379",
                "203.0.113.8:50002",
                13,
            ),
            socket(
                Protocol::Tcp,
                State::Established,
                "127.0.0.1:6379",
                "127.0.0.1:50003",
                14,
            ),
            socket(
                Protocol::Tcp,
                State::Established,
                "198.18.0.1:6379",
                "198.18.0.1:50004",
                15,
            ),
            socket(
                Protocol::Tcp,
                State::Established,
                "198.18.0.1:45000",
                "203.0.113.9:443",
                16,
            ),
            socket(
                Protocol::Tcp,
                State::Established,
                "198.18.0.1:8000",
                "203.0.113.10:50005",
                17,
            ),
            listen("0.0.0.0:8000", 18),
        ];
        sockets[7].bound_device = Some(LOOPBACK_IFINDEX);
        let owners = HashMap::from([
            (1, vec![sshd.clone()]),
            (2, vec![sshd]),
            (3, vec![gcs.clone()]),
            (4, vec![dashboard]),
            (5, vec![replica]),
            (11, vec![session]),
            (13, vec![gcs]),
        ]);
        Snapshot {
            sockets,
            owners,
            local_addresses: ["198.18.0.1".parse().unwrap()].into(),
            other_namespaces: vec![OtherNamespace {
                inode: 4026532000,
                processes: 2,
                example: process(900, "dockerd", "/usr/bin/dockerd"),
            }],
            unreadable_processes: 0,
            unlisted: Vec::new(),
        }
    }

    fn vpc(ip: IpAddr) -> bool {
        CidrList::new(["198.18.0.0/25".parse().unwrap()])
            .unwrap()
            .allows(ip)
    }

    #[test]
    fn listeners_beyond_loopback_are_classified_and_named() {
        let audit = snapshot().audit(&policy(Guard::Node, &[22]), vpc, false);
        let rows: Vec<(String, &str, bool)> = audit
            .listeners
            .iter()
            .map(|l| {
                (
                    format!("{} {}", l.protocol, l.local),
                    l.class.name(),
                    l.reachable,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("tcp 0.0.0.0:22".to_owned(), "open", true),
                ("tcp [::]:22".to_owned(), "open", true),
                ("udp 0.0.0.0:5353".to_owned(), "guarded", false),
                ("tcp 0.0.0.0:6379".to_owned(), "guarded", false),
                ("tcp 0.0.0.0:8000".to_owned(), "strict", false),
                ("tcp 0.0.0.0:8265".to_owned(), "guarded", false),
                ("tcp 0.0.0.0:10001".to_owned(), "guarded", false),
                ("tcp 0.0.0.0:30000".to_owned(), "guarded", false),
            ]
        );
        let by_port = |port| audit.listeners.iter().find(|l| l.port == port).unwrap();
        assert_eq!(by_port(22).what.as_deref(), Some("SSH"));
        assert_eq!(by_port(22).reason, "public_ports 22");
        assert_eq!(
            by_port(6379).what.as_deref(),
            Some("Ray GCS: controls the cluster")
        );
        assert_eq!(
            by_port(8265).what.as_deref(),
            Some("ray dashboard: the Jobs API runs arbitrary code")
        );
        assert_eq!(
            by_port(30000).what.as_deref(),
            Some("Serve direct-ingress replica (HTTP): Serve without the token")
        );
        assert_eq!(
            by_port(10001).what.as_deref(),
            Some("Ray client server: runs arbitrary code (by its port)")
        );
        assert!(by_port(10001).owners.is_empty());
        assert_eq!(by_port(8265).owners[0].pid, 300);
        // Only what is reachable is warned about, and the blind spots.
        let warnings = audit.warnings();
        assert!(
            warnings[0]
                == "reachable from outside the allow-list: tcp 0.0.0.0:22 (sshd, pid 100): SSH; port 22 is open (public_ports 22)",
            "{warnings:#?}"
        );
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("6379") && w.contains("reachable"))
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("1 other network namespace(s)")
                    && w.contains("dockerd (pid 900)")),
            "{warnings:#?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("3 listener(s) have no owner")),
            "{warnings:#?}"
        );
    }

    #[test]
    fn sessions_from_outside_on_closed_ports_are_at_risk() {
        let audit = snapshot().audit(&policy(Guard::Node, &[]), vpc, false);
        let sessions: Vec<(u16, String, Consequence)> = audit
            .sessions_at_risk
            .iter()
            .map(|s| {
                (
                    s.local.port(),
                    s.peer.ip().to_canonical().to_string(),
                    s.consequence,
                )
            })
            .collect();
        assert_eq!(
            sessions,
            [
                (
                    22,
                    "203.0.113.7".to_owned(),
                    Consequence::NewConnectionsRefused
                ),
                (
                    6379,
                    "203.0.113.8".to_owned(),
                    Consequence::NewConnectionsRefused
                ),
                (8000, "203.0.113.10".to_owned(), Consequence::SessionCut),
            ]
        );
        let ssh = audit.sessions_at_risk[0].to_string();
        assert_eq!(
            ssh,
            "tcp [::ffff:198.18.0.1]:22 from [::ffff:203.0.113.7]:50000 (sshd, pid 101): SSH; port 22 is guarded (guard = \"node\"): new connections from 203.0.113.7 would be refused, this session continues"
        );
        assert!(
            audit.sessions_at_risk[2]
                .to_string()
                .ends_with("this session would be cut")
        );

        // SSH public: that login is safe.
        let audit = snapshot().audit(&policy(Guard::Node, &[22]), vpc, false);
        assert!(!audit.sessions_at_risk.iter().any(|s| s.local.port() == 22));
    }

    #[test]
    fn audit_mode_says_what_enforcing_would_close() {
        let audit = snapshot().audit(&policy(Guard::Node, &[22]), vpc, true);
        assert!(audit.listeners.iter().all(|l| l.reachable));
        let closing: Vec<u16> = audit
            .listeners
            .iter()
            .filter(|l| l.would_close)
            .map(|l| l.port)
            .collect();
        assert_eq!(closing, [5353, 6379, 8000, 8265, 10001, 30000]);
        let warnings = audit.warnings();
        assert!(
            warnings.iter().any(|w| w.starts_with("audit mode: reachable from outside the allow-list until enforcing, which would close it: tcp 0.0.0.0:8265 (python, pid 300): ray dashboard")),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().any(|w| w.starts_with("audit mode: reachable from outside the allow-list, and still when enforcing: tcp 0.0.0.0:22")),
            "{warnings:#?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("session at risk once enforcing: tcp 198.18.0.1:6379"))
        );
    }

    #[test]
    fn guard_ports_leaves_unlisted_ports_reachable() {
        let audit = snapshot().audit(&policy(Guard::Ports, &[]), vpc, false);
        let reachable: Vec<u16> = audit.reachable().map(|l| l.port).collect();
        assert_eq!(reachable, [22, 22, 5353, 6379, 8265, 10001, 30000]);
        assert_eq!(
            audit.sessions_at_risk.len(),
            1,
            "only the strict port's session"
        );
    }

    #[test]
    fn processes_are_named_before_ports() {
        let describe_one = |comm: &str, cmdline: &str, port| {
            describe(Protocol::Tcp, port, &[process(1, comm, cmdline)])
        };
        // Serve's proxy moved to 8500 by the HAProxy ingress, and on another port.
        assert_eq!(
            describe_one("ray::ProxyActor", "ray::ProxyActor", 8500).as_deref(),
            Some("Serve's proxy (behind HAProxy): Serve without the token")
        );
        // A replica on a port outside the direct-ingress range is its worker port, whatever
        // the port would suggest.
        assert_eq!(
            describe_one("ray::ServeRepli", "ray::ServeReplica:app:Echo", 10005).as_deref(),
            Some("a Serve replica's Ray worker port: the cluster's internal gRPC")
        );
        assert_eq!(
            describe_one(
                "python",
                "python -m ray.util.client.server --port 23000",
                23000
            )
            .as_deref(),
            Some("Ray client server: runs arbitrary code")
        );
        assert_eq!(
            describe_one(
                "python",
                "/venv/bin/python -u /venv/ray/dashboard/agent.py --node-ip-address=x",
                52365
            )
            .as_deref(),
            Some("Ray dashboard agent: runs submitted jobs (arbitrary code)")
        );
        assert_eq!(
            describe_one(
                "python3",
                "python3 /venv/ray/_private/runtime_env/agent/main.py",
                41234
            )
            .as_deref(),
            Some("Ray runtime-env agent: installs jobs' environments")
        );
        assert_eq!(
            describe_one("haproxy", "haproxy -f /tmp/ray/haproxy.cfg", 8404).as_deref(),
            Some("HAProxy stats of Serve's HAProxy ingress")
        );
        assert_eq!(
            describe_one("raylet", "/venv/ray/core/src/ray/raylet/raylet", 8076).as_deref(),
            Some("Ray object manager (raylet): the cluster's object store")
        );
        // An unknown process on a known port: by the port, and said so.
        assert_eq!(
            describe_one("nc", "nc -l 6379", 6379).as_deref(),
            Some("Ray GCS: controls the cluster (by its port)")
        );
        assert_eq!(describe_one("nc", "nc -l 7070", 7070), None);
        assert_eq!(
            describe(Protocol::Udp, 4789, &[]).as_deref(),
            Some("VXLAN (by its port)")
        );
    }

    #[test]
    fn audits_round_trip_as_json() {
        let audit = snapshot().audit(&policy(Guard::Node, &[22]), vpc, true);
        let json = serde_json::to_value(&audit).unwrap();
        assert_eq!(json["listeners"][0]["protocol"], "tcp");
        assert_eq!(json["listeners"][0]["local"], "0.0.0.0:22");
        assert_eq!(json["listeners"][0]["class"], "open");
        assert_eq!(json["blind_spots"][0]["kind"], "other_namespaces");
        assert_eq!(
            serde_json::from_value::<ListenerAudit>(json).unwrap(),
            audit
        );
    }

    /// The real kernel: a listener this test opens on a wildcard address is found, with this
    /// process as its owner; one on loopback is not reported.
    #[test]
    fn a_real_wildcard_listener_is_found() {
        let public = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let private = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = public.local_addr().unwrap().port();
        let audit =
            Snapshot::take()
                .unwrap()
                .audit(&policy(Guard::Node, &[port]), |_| false, false);
        let found = audit
            .listeners
            .iter()
            .find(|l| l.port == port && l.protocol == Protocol::Tcp)
            .expect("the wildcard listener is reported");
        assert!(found.reachable);
        assert!(
            found.owners.iter().any(|o| o.pid == std::process::id()),
            "{found:?}"
        );
        let loopback = private.local_addr().unwrap().port();
        assert!(!audit.listeners.iter().any(|l| l.port == loopback));
    }
}
