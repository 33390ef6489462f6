//! The other half of the guarded-port promise (issue 16): the server's own connections keep
//! working. In each lane the server opens a TCP connection and a connected UDP socket to an
//! outside source (every port but the strict and the open one is guarded in the filtered lane,
//! its ephemeral ports included); the client side, which captures what the server sends, answers
//! as that outside host: a SYN-ACK, then data, then a datagram from the peer the UDP socket is
//! connected to (and one from another port of that host, which no socket takes). Both lanes must
//! see the same: the connection established, the data read, the answer read.
//!
//! The answers are sent as plain packets, or behind VLAN priority tags (which the program reads
//! through), so a reply is judged through the same parsing as an attack.

use super::generate::Ids;
use super::lab::{self, CLIENT_MAC, Lab, Lane, source};
use super::observe;
use super::shapes;
use crate::frames::ethernet::Tag;
use crate::frames::tcp::{ACK as TCP_ACK, PSH as TCP_PSH, SYN as TCP_SYN};
use crate::frames::{ip_packet, l4};
use crate::rng::Rng;
use crate::topology::{Ip, SERVER_V4, SERVER_V6};
use anyhow::{Context as _, Result, bail};
use serve_guard_common::wire::{self, proto};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The outside server's ports.
const WEB: u16 = 443;
const DNS: u16 = 53;
/// Another port of the same host: no socket is connected to it.
const STRAY: u16 = 54;
/// The outside source the server talks to: the origin's last address.
const PEER_INDEX: usize = lab::SOURCES_PER_ORIGIN - 1;
/// Bounds on every wait (a lane that does not answer is broken, not slow).
const WAIT: Duration = Duration::from_secs(5);
/// What the outside host sends.
const DATA: &[u8] = b"reply to the node's own connection";
const ANSWER: &[u8] = b"answer";
const STRAY_PAYLOAD: &[u8] = b"stray";
/// The outside host's initial sequence number.
const PEER_ISN: u32 = 0x5e7e_0016;

/// What one lane's server saw of its own connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// connect() to the outside host returned success (the SYN-ACK got through).
    pub connected: bool,
    /// The data segment that followed was read from the connection.
    pub data: bool,
    /// The connected UDP socket read its peer's answer.
    pub answer: bool,
    /// The connected UDP socket read the datagram from the peer's other port (never: the
    /// kernel gives it to no socket).
    pub stray: bool,
}

/// How the outside host's answers are laid out.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// One plain packet each.
    Plain,
    /// Behind 1-8 priority tags (802.1Q or 802.1ad, VLAN id 0), drawn from this seed.
    PriorityTags(u64),
}

/// Runs the server's own connections in both lanes (filtered, baseline) for family `ip`.
pub fn own_connections(lab: &Lab, ip: Ip, shape: Shape) -> Result<[Outcome; 2]> {
    let mut out = [Outcome::default(), Outcome::default()];
    let mut ids = Ids::new(0x16);
    for (lane, o) in lab.lanes.iter().zip(&mut out) {
        *o = lane_own_connections(lane, ip, shape, &mut ids)
            .with_context(|| format!("the {} lane, {}", lane.role.name(), ip.name()))?;
    }
    Ok(out)
}

fn lane_own_connections(lane: &Lane, ip: Ip, shape: Shape, ids: &mut Ids) -> Result<Outcome> {
    let server: IpAddr = match ip {
        Ip::V4 => SERVER_V4.into(),
        Ip::V6 => SERVER_V6.into(),
    };
    let peer = source(ip, super::case::Origin::Outside, PEER_INDEX);
    // Whatever the lane captured before is not ours.
    while lane.wire.recv()?.is_some() {}
    let worker = lane.server.spawn(move || -> Result<Outcome> {
        let mut outcome = Outcome::default();
        let udp = UdpSocket::bind((server, 0))?;
        udp.connect((peer, DNS))?;
        udp.set_read_timeout(Some(WAIT))?;
        udp.send(b"query")?;
        let stream = TcpStream::connect_timeout(&SocketAddr::new(peer, WEB), WAIT);
        if let Ok(mut stream) = stream {
            outcome.connected = true;
            stream.set_read_timeout(Some(WAIT))?;
            let mut buf = vec![0; DATA.len()];
            outcome.data = stream.read_exact(&mut buf).is_ok() && buf == DATA;
            let _ = stream.write_all(b"bye");
        }
        // Datagrams are queued in order: the stray one, if taken, comes before the answer.
        let mut buf = [0u8; 64];
        while let Ok(n) = udp.recv(&mut buf) {
            if buf[..n] == *ANSWER {
                outcome.answer = true;
                break;
            }
            outcome.stray |= buf[..n] == *STRAY_PAYLOAD;
        }
        Ok(outcome)
    })?;
    let mut rng = match shape {
        Shape::Plain => None,
        Shape::PriorityTags(seed) => Some(Rng::new(seed)),
    };
    // The UDP query, then the TCP SYN, as the server sends them.
    let (query_port, syn) = (
        wait_for(lane, |f| udp_from_server(f, peer, DNS))?,
        wait_for(lane, |f| tcp_syn_from_server(f, peer, WEB))?,
    );
    let (tcp_port, server_isn) = syn;
    let syn_ack = l4::tcp_segment(
        peer,
        server,
        (WEB, tcp_port),
        (PEER_ISN, server_isn.wrapping_add(1)),
        TCP_SYN | TCP_ACK,
        &[2, 4, 0x05, 0xb4],
        &[],
    );
    send(lane, peer, server, proto::TCP, &syn_ack, &mut rng, ids)?;
    // The server's ACK completes the handshake; then the data.
    wait_for(lane, |f| {
        tcp_from_server(f, peer, WEB)
            .filter(|&(port, flags)| port == tcp_port && flags & TCP_SYN == 0)
            .map(|_| ())
    })?;
    let data = l4::tcp_segment(
        peer,
        server,
        (WEB, tcp_port),
        (PEER_ISN.wrapping_add(1), server_isn.wrapping_add(1)),
        TCP_PSH | TCP_ACK,
        &[],
        DATA,
    );
    send(lane, peer, server, proto::TCP, &data, &mut rng, ids)?;
    let stray = l4::udp_datagram(peer, server, (STRAY, query_port), STRAY_PAYLOAD, false);
    send(lane, peer, server, proto::UDP, &stray, &mut rng, ids)?;
    let answer = l4::udp_datagram(peer, server, (DNS, query_port), ANSWER, false);
    send(lane, peer, server, proto::UDP, &answer, &mut rng, ids)?;
    match worker.join() {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Waits for a frame from the server that `pick` accepts.
fn wait_for<T>(lane: &Lane, mut pick: impl FnMut(&[u8]) -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        while let Some(frame) = lane.wire.recv()? {
            if let Some(found) = pick(&frame) {
                return Ok(found);
            }
        }
        if Instant::now() >= deadline {
            bail!("the server sent nothing of the kind within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The transport header of a frame the server sent to `peer` with protocol `protocol`.
fn from_server(frame: &[u8], peer: IpAddr, protocol: u8) -> Option<&[u8]> {
    if frame.get(..6)? != CLIENT_MAC {
        return None;
    }
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let l3 = frame.get(wire::ETH_HLEN..)?;
    match (ethertype, peer) {
        (wire::ETH_P_IPV4, IpAddr::V4(p)) => {
            let ihl = usize::from(l3.first()? & wire::IPV4_IHL_MASK) * wire::IPV4_IHL_WORD;
            (*l3.get(wire::IPV4_PROTO_OFFSET)? == protocol
                && l3.get(16..20)? == p.octets().as_slice())
            .then(|| l3.get(ihl..))?
        }
        (wire::ETH_P_IPV6, IpAddr::V6(p)) => (*l3.get(wire::IPV6_NEXT_HEADER_OFFSET)? == protocol
            && l3.get(24..40)? == p.octets().as_slice())
        .then(|| l3.get(wire::IPV6_HLEN..))?,
        _ => None,
    }
}

fn ports(l4: &[u8]) -> Option<(u16, u16)> {
    Some((
        u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?),
        u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?),
    ))
}

/// The server's source port of a UDP datagram to `peer`:`port`.
fn udp_from_server(frame: &[u8], peer: IpAddr, port: u16) -> Option<u16> {
    let l4 = from_server(frame, peer, proto::UDP)?;
    let (src, dst) = ports(l4)?;
    (dst == port).then_some(src)
}

/// The server's port and flags of a TCP segment to `peer`:`port`.
fn tcp_from_server(frame: &[u8], peer: IpAddr, port: u16) -> Option<(u16, u8)> {
    let l4 = from_server(frame, peer, proto::TCP)?;
    let (src, dst) = ports(l4)?;
    (dst == port).then_some((src, *l4.get(wire::TCP_FLAGS_OFFSET)?))
}

/// The server's port and initial sequence number of its SYN to `peer`:`port`.
fn tcp_syn_from_server(frame: &[u8], peer: IpAddr, port: u16) -> Option<(u16, u32)> {
    let (src, flags) = tcp_from_server(frame, peer, port)?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let l4 = from_server(frame, peer, proto::TCP)?;
    Some((src, u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?)))
}

/// Sends `segment` from the outside host to the server: one plain packet, or laid out in one
/// of the fuzzer's shapes.
fn send(
    lane: &Lane,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    segment: &[u8],
    rng: &mut Option<Rng>,
    ids: &mut Ids,
) -> Result<()> {
    let tags = match rng {
        None => Vec::new(),
        Some(rng) => {
            let n = rng.range(1, serve_guard_common::MAX_VLAN_TAGS);
            shapes::priority_tags(rng, n)
        }
    };
    observe::send(lane, &frame(&tags, src, dst, protocol, segment, ids))
}

fn frame(
    tags: &[Tag],
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    segment: &[u8],
    ids: &mut Ids,
) -> Vec<u8> {
    let (ethertype, packet) = ip_packet(src, dst, ids.v4_of(src), protocol, segment);
    lab::ethernet(tags, ethertype, &packet)
}
