//! What each server's kernel delivered, seen at the socket layer: UDP datagrams read from the
//! listeners (the payload carries the case's token) and the TCP answers captured on the client
//! side: a SYN-ACK (a listener answered a SYN; it acknowledges the case's token plus one) or a
//! reset (a segment reached a listener without a SYN, or no socket: it carries the token, see
//! [`super::case`]).
//!
//! A round ends with a barrier: a UDP datagram and a TCP SYN from an inside source to the
//! sentinel port, in each lane. Frames go through a veth's NAPI ring in order and every
//! delivery happens while the frame is processed, so once the sentinel datagram is in its
//! socket every earlier datagram is in its own; the answers travel back through the client
//! veth's ring (XDP_PASS there too), so once the sentinel's SYN-ACK is captured every earlier
//! SYN-ACK is. Nothing is judged by timing: a wait only bounds how long a barrier may take.

use super::case::{Origin, Transport, token_of, udp_payload};
use super::lab::{self, CLIENT_MAC, Lab, Lane, SENTINEL_PORT, allowed, source};
use crate::frames::{ip_packet, l4, tcp};
use crate::topology::{Ip, SERVER_V4};
use anyhow::{Context as _, Result, bail};
use serve_guard_common::wire::{self, proto};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

/// A barrier that takes longer than this means a lane is broken, not slow.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two looks at the sockets while waiting (poll wakes up earlier on data).
const POLL_SLICE_MS: i32 = 20;
/// How long a full device queue (the veth ring, or the socket's send buffer while frames sit
/// in it) may stay full before the run gives up: the receiving side drains it from softirq,
/// which a loaded machine may defer to ksoftirqd.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_RETRY_WAIT: Duration = Duration::from_micros(100);
/// The sentinels' source port: below every case's (cases draw from 1024 up).
const SENTINEL_SRC_PORT: u16 = 999;
/// Tokens of sentinels live in their own space (their port tells them apart anyway).
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SEQ_OFFSET: usize = 4;
const TCP_ACK_OFFSET: usize = 8;

/// One delivery: which transport, the server port and the peer (the claimed source).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub transport: Transport,
    pub token: Option<u32>,
    pub server_port: u16,
    pub peer: IpAddr,
    pub peer_port: u16,
}

impl Delivery {
    /// A delivery to a port kept out from a source outside the allow-list, for a case with
    /// these TCP flags (`None`: UDP, or not known): what the filter promises never happens.
    pub fn is_bypass_for(&self, tcp_flags: Option<u8>) -> bool {
        lab::kept_out(self.server_port, tcp_flags) && !allowed(self.peer)
    }

    /// [`Self::is_bypass_for`] for a delivery of no known case.
    pub fn is_bypass(&self) -> bool {
        self.is_bypass_for(None)
    }
}

/// Sends `frame` on a lane, retrying while the device queue is full.
pub fn send(lane: &Lane, frame: &[u8]) -> Result<()> {
    let deadline = Instant::now() + SEND_TIMEOUT;
    while Instant::now() < deadline {
        match lane.wire.send(frame) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                std::thread::sleep(SEND_RETRY_WAIT);
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "sending a {}-byte frame on the {} lane",
                        frame.len(),
                        lane.role.name()
                    )
                });
            }
        }
    }
    bail!(
        "the {} lane's device stayed full for {SEND_TIMEOUT:?}",
        lane.role.name()
    )
}

/// The sentinel frames of barrier `round`: a UDP datagram and a TCP SYN, inside source, IPv4.
fn sentinels(round: u32) -> [Vec<u8>; 2] {
    let src = source(Ip::V4, Origin::Inside, 0);
    let dst = IpAddr::V4(SERVER_V4);
    let ports = (SENTINEL_SRC_PORT, SENTINEL_PORT);
    let udp = l4::udp_datagram(src, dst, ports, &udp_payload(round, &[]), false);
    let syn = l4::tcp_segment(src, dst, ports, (round, 0), tcp::SYN, &[], &[]);
    [(proto::UDP, udp), (proto::TCP, syn)].map(|(protocol, segment)| {
        let (ethertype, packet) = ip_packet(src, dst, round as u16, protocol, &segment);
        lab::ethernet(&[], ethertype, &packet)
    })
}

/// A captured frame's TCP answer (a SYN-ACK or a reset), if it is one: (server port, client
/// address, client port, token).
fn tcp_answer(frame: &[u8]) -> Option<(u16, IpAddr, u16, u32)> {
    if frame.get(..6)? != CLIENT_MAC {
        return None;
    }
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let l3 = &frame[wire::ETH_HLEN..];
    let (client, tcp): (IpAddr, &[u8]) = match ethertype {
        wire::ETH_P_IPV4 => {
            let ihl = usize::from(l3.first()? & wire::IPV4_IHL_MASK) * wire::IPV4_IHL_WORD;
            if *l3.get(wire::IPV4_PROTO_OFFSET)? != proto::TCP {
                return None;
            }
            let dst: [u8; 4] = l3.get(16..20)?.try_into().ok()?;
            (Ipv4Addr::from(dst).into(), l3.get(ihl..)?)
        }
        wire::ETH_P_IPV6 => {
            if *l3.get(wire::IPV6_NEXT_HEADER_OFFSET)? != proto::TCP {
                return None;
            }
            let dst: [u8; 16] = l3.get(24..40)?.try_into().ok()?;
            (Ipv6Addr::from(dst).into(), l3.get(wire::IPV6_HLEN..)?)
        }
        _ => return None,
    };
    let flags = *tcp.get(TCP_FLAGS_OFFSET)?;
    let syn_ack = flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
    if !syn_ack && flags & tcp::RST == 0 {
        return None;
    }
    let port = |at: usize| Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?));
    let word = |at: usize| Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?));
    // An answer with ACK acknowledges the token plus one; a reset without ACK carries the
    // case's acknowledgment number (the token) as its sequence number.
    let token = if flags & tcp::ACK != 0 {
        word(TCP_ACK_OFFSET)?.wrapping_sub(1)
    } else {
        word(TCP_SEQ_OFFSET)?
    };
    Some((port(0)?, client, port(2)?, token))
}

/// What a lane delivered since its last barrier, and whether this barrier's sentinels came.
#[derive(Default)]
struct LaneRound {
    deliveries: Vec<Delivery>,
    sentinel_udp: bool,
    sentinel_tcp: bool,
}

fn drain(lane: &Lane, round: u32, out: &mut LaneRound) -> Result<()> {
    while let Some(frame) = lane.wire.recv()? {
        let Some((server_port, peer, peer_port, token)) = tcp_answer(&frame) else {
            continue;
        };
        if server_port == SENTINEL_PORT {
            out.sentinel_tcp |= token == round;
            continue;
        }
        out.deliveries.push(Delivery {
            transport: Transport::Tcp,
            token: Some(token),
            server_port,
            peer,
            peer_port,
        });
    }
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        match lane.sentinel_udp.recv_from(&mut buf) {
            Ok((n, _)) => out.sentinel_udp |= token_of(&buf[..n]) == Some(round),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("reading the sentinel socket"),
        }
    }
    // After the sentinel check: a datagram that came before the sentinel is already queued.
    for (port, sock) in &lane.udp {
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => out.deliveries.push(Delivery {
                    transport: Transport::Udp,
                    token: token_of(&buf[..n]),
                    server_port: *port,
                    peer: from.ip().to_canonical(),
                    peer_port: from.port(),
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).with_context(|| format!("reading UDP port {port}")),
            }
        }
    }
    Ok(())
}

/// Ends round `round`: sends the sentinels into both lanes and collects every delivery up to
/// them, per lane (filtered, baseline).
pub fn barrier(lab: &Lab, round: u32) -> Result<[Vec<Delivery>; 2]> {
    for lane in &lab.lanes {
        for frame in sentinels(round) {
            send(lane, &frame)?;
        }
    }
    let mut rounds = [LaneRound::default(), LaneRound::default()];
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    loop {
        for (lane, r) in lab.lanes.iter().zip(&mut rounds) {
            // Check the sentinel first, then drain once more: nothing from before it is missed.
            let done_before = r.sentinel_udp && r.sentinel_tcp;
            drain(lane, round, r)?;
            if !done_before && r.sentinel_udp && r.sentinel_tcp {
                drain(lane, round, r)?;
            }
        }
        if rounds.iter().all(|r| r.sentinel_udp && r.sentinel_tcp) {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "barrier {round}: sentinels not seen within {BARRIER_TIMEOUT:?} (udp/tcp: filtered {}/{}, baseline {}/{})",
                rounds[0].sentinel_udp,
                rounds[0].sentinel_tcp,
                rounds[1].sentinel_udp,
                rounds[1].sentinel_tcp
            );
        }
        wait_readable(lab)?;
    }
    for lane in &lab.lanes {
        let drops = lane.wire.drops()?;
        if drops != 0 {
            bail!(
                "the {} lane's capture dropped {drops} frames",
                lane.role.name()
            );
        }
    }
    let [f, b] = rounds;
    Ok([f.deliveries, b.deliveries])
}

/// Blocks until a socket of either lane has data, or a short slice has passed.
fn wait_readable(lab: &Lab) -> Result<()> {
    let mut fds: Vec<libc::pollfd> = lab
        .lanes
        .iter()
        .flat_map(|l| {
            [l.wire.as_raw_fd(), l.sentinel_udp.as_raw_fd()]
                .into_iter()
                .chain(l.udp.iter().map(|(_, s)| s.as_raw_fd()))
        })
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of pollfd for the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_SLICE_MS) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).context("poll");
        }
    }
    Ok(())
}
