//! Just enough rtnetlink to see the node as the kernel does, in the calling thread's network
//! namespace: every link (name, ARPHRD type, up or not, its `kind`), every local address and every
//! IPv6 route's lightweight-tunnel action. Read-only dumps over a NETLINK_ROUTE socket; sysfs is
//! not used because it shows the namespace it was mounted in, not ours. The dump loop and the
//! attribute walk are shared with the socket dump over NETLINK_SOCK_DIAG (`super::sockets`).

#![allow(unsafe_code, reason = "netlink sockets: socket(2), send(2), recv(2)")]

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

// uapi/linux/netlink.h and rtnetlink.h.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// `struct ifinfomsg` and `struct rtmsg`.
const IFINFOMSG_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTATTR_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFF_UP: u32 = 0x1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTA_ENCAP_TYPE: u16 = 21;
const RTA_ENCAP: u16 = 22;
const LWTUNNEL_ENCAP_SEG6_LOCAL: u16 = 7;
const SEG6_LOCAL_ACTION: u16 = 1;
/// Receive buffer: a dump message never exceeds a page-sized skb, 32 KiB is ample.
const RECV_BUF: usize = 32 * 1024;

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// ARPHRD_* (1 = Ethernet).
    pub hw_type: u16,
    pub up: bool,
    /// `IFLA_INFO_KIND` ("vxlan", "ipip", "veth", ...); `None` for plain hardware NICs.
    pub kind: Option<String>,
    /// Id of the XDP program on the device (a lone program or a libxdp dispatcher), if any.
    pub xdp_program: Option<u32>,
}

/// ARPHRD_ETHER: frames start with an Ethernet header, which is what the program parses.
pub const ARPHRD_ETHER: u16 = 1;
/// ARPHRD_LOOPBACK: `lo` builds Ethernet headers too.
pub const ARPHRD_LOOPBACK: u16 = 772;

impl Link {
    /// Whether XDP on this device sees Ethernet frames (what the program parses).
    pub fn is_ethernet_framed(&self) -> bool {
        matches!(self.hw_type, ARPHRD_ETHER | ARPHRD_LOOPBACK)
    }
}

/// An IPv6 route with a seg6local (SRv6 endpoint) action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seg6LocalRoute {
    /// `prefix/len`.
    pub dst: String,
    pub table: u32,
    /// SEG6_LOCAL_ACTION_* number.
    pub action: u32,
    /// Output interface index, if any.
    pub oif: Option<u32>,
}

pub fn links() -> io::Result<Vec<Link>> {
    let mut request = [0u8; IFINFOMSG_LEN];
    request[0] = libc::AF_UNSPEC as u8;
    let mut links = Vec::new();
    dump(libc::NETLINK_ROUTE, RTM_GETLINK, &request, |kind, body| {
        if kind != RTM_NEWLINK || body.len() < IFINFOMSG_LEN {
            return;
        }
        let hw_type = u16::from_ne_bytes([body[2], body[3]]);
        let index = i32::from_ne_bytes(body[4..8].try_into().expect("4 bytes")) as u32;
        let flags = u32::from_ne_bytes(body[8..12].try_into().expect("4 bytes"));
        let mut link = Link {
            index,
            name: String::new(),
            hw_type,
            up: flags & IFF_UP != 0,
            kind: None,
            xdp_program: None,
        };
        for (attr, value) in attributes(&body[IFINFOMSG_LEN..]) {
            match attr {
                IFLA_IFNAME => link.name = c_string(value),
                IFLA_LINKINFO => {
                    link.kind = attributes(value)
                        .find(|(a, _)| *a == IFLA_INFO_KIND)
                        .map(|(_, v)| c_string(v));
                }
                IFLA_XDP => {
                    link.xdp_program = attributes(value)
                        .find(|(a, _)| *a == IFLA_XDP_PROG_ID)
                        .and_then(|(_, v)| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)))
                        .filter(|id| *id != 0);
                }
                _ => {}
            }
        }
        links.push(link);
    })?;
    Ok(links)
}

/// IPv6 routes in every table whose lightweight tunnel is a seg6local action.
pub fn seg6local_routes() -> io::Result<Vec<Seg6LocalRoute>> {
    let mut request = [0u8; RTMSG_LEN];
    request[0] = libc::AF_INET6 as u8;
    let mut routes = Vec::new();
    dump(libc::NETLINK_ROUTE, RTM_GETROUTE, &request, |kind, body| {
        if kind != RTM_NEWROUTE || body.len() < RTMSG_LEN {
            return;
        }
        let dst_len = body[1];
        let mut table = u32::from(body[4]);
        let mut dst = None;
        let mut oif = None;
        let mut seg6local = false;
        let mut action = None;
        for (attr, value) in attributes(&body[RTMSG_LEN..]) {
            match attr {
                RTA_DST => {
                    dst = <[u8; 16]>::try_from(value)
                        .ok()
                        .map(std::net::Ipv6Addr::from);
                }
                RTA_OIF => oif = u32_of(value),
                RTA_TABLE => table = u32_of(value).unwrap_or(table),
                RTA_ENCAP_TYPE => {
                    seg6local = value.len() >= 2
                        && u16::from_ne_bytes([value[0], value[1]]) == LWTUNNEL_ENCAP_SEG6_LOCAL;
                }
                RTA_ENCAP => {
                    action = attributes(value)
                        .find(|(a, _)| *a == SEG6_LOCAL_ACTION)
                        .and_then(|(_, v)| u32_of(v));
                }
                _ => {}
            }
        }
        if let (true, Some(action)) = (seg6local, action) {
            let dst = dst.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            routes.push(Seg6LocalRoute {
                dst: format!("{dst}/{dst_len}"),
                table,
                action,
                oif,
            });
        }
    })?;
    Ok(routes)
}

/// Every address configured on a link of this namespace (both families, loopback included):
/// traffic between two of them never leaves the node, so it never crosses the filter.
pub fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut request = [0u8; IFADDRMSG_LEN];
    request[0] = libc::AF_UNSPEC as u8;
    let mut addresses = Vec::new();
    dump(libc::NETLINK_ROUTE, RTM_GETADDR, &request, |kind, body| {
        if kind != RTM_NEWADDR || body.len() < IFADDRMSG_LEN {
            return;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
        // point-to-point link and the same as IFA_LOCAL (or alone) elsewhere.
        let mut local = None;
        let mut address = None;
        for (attr, value) in attributes(&body[IFADDRMSG_LEN..]) {
            let parsed = ip_of(value);
            match attr {
                IFA_LOCAL => local = parsed,
                IFA_ADDRESS => address = parsed,
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            addresses.push(ip);
        }
    })?;
    Ok(addresses)
}

fn ip_of(value: &[u8]) -> Option<std::net::IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(value) {
        Some(std::net::Ipv4Addr::from(v4).into())
    } else {
        <[u8; 16]>::try_from(value)
            .ok()
            .map(|v6| std::net::Ipv6Addr::from(v6).into())
    }
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

pub(super) fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// The (type, payload) pairs of a run of netlink attributes; stops at the first malformed one.
pub(super) fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < RTATTR_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < RTATTR_HDRLEN || len > bytes.len() {
            return None;
        }
        let value = &bytes[RTATTR_HDRLEN..len];
        bytes = &bytes[align(len).min(bytes.len())..];
        Some((kind, value))
    })
}

fn align(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// Sends one dump request over a fresh netlink socket of `protocol` (NETLINK_ROUTE,
/// NETLINK_SOCK_DIAG) and hands every message's (type, body) to `each` until NLMSG_DONE.
pub(super) fn dump(
    protocol: libc::c_int,
    request_type: u16,
    body: &[u8],
    mut each: impl FnMut(u16, &[u8]),
) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    const SEQ: u32 = 1;
    let len = NLMSG_HDRLEN + body.len();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&request_type.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    message.extend_from_slice(&SEQ.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(body);
    // SAFETY: the buffer is valid for `message.len()` bytes; the kernel is the default peer.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink message",
                ));
            }
            let payload = &rest[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    if errno == 0 {
                        return Ok(());
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => each(kind, payload),
            }
            rest = &rest[align(len).min(rest.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_type() {
        let links = links().expect("RTM_GETLINK dump");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
        assert_eq!(lo.hw_type, ARPHRD_LOOPBACK);
        assert!(lo.is_ethernet_framed());
        assert_eq!(lo.index, 1);
    }

    #[test]
    fn loopback_addresses_are_local() {
        // A namespace's `lo` may be down (no addresses); the dump itself must work, and what it
        // lists must parse as addresses of either family.
        let addresses = local_addresses().expect("RTM_GETADDR dump");
        if let Some(lo) = links().unwrap().iter().find(|l| l.name == "lo" && l.up) {
            assert_eq!(lo.index, 1);
            assert!(
                addresses.iter().any(|a| a.is_loopback()),
                "lo is up without a loopback address: {addresses:?}"
            );
        }
    }

    #[test]
    fn route_dump_succeeds() {
        // The host may or may not have SRv6 routes; the dump itself must work.
        seg6local_routes().expect("RTM_GETROUTE dump");
    }

    #[test]
    fn attributes_stop_at_malformed_lengths() {
        // One 5-byte attribute (padded to 8), then a header claiming more than is left.
        let bytes = [5, 0, 3, 0, b'x', 0, 0, 0, 200, 0, 1, 0];
        let attrs: Vec<_> = attributes(&bytes).collect();
        assert_eq!(attrs, vec![(3, &b"x"[..])]);
    }
}
