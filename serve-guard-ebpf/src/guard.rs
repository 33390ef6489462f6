//! Guarded ports (the rest of the node, `guard = "node"`): a source outside the allow-list may
//! not open a connection nor reach a listening or unconnected socket, but the packets of the
//! node's own connections (replies to pip, object storage, DNS) pass. An XDP program keeps no
//! state, so it asks the kernel's own socket tables, in the receiving device's namespace, what
//! the packet would reach (docs/ports.md).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
};
use serve_guard_common::{
    Reason,
    wire::{TCP_FLAG_ACK, TCP_FLAG_SYN, proto, sock_state},
};

use crate::parse::{Addrs, Frame, Ip, Ports};

/// What a guarded port's verdict needs from the packet beyond its source and destination port:
/// the socket lookup's key and TCP's flags.
pub struct Key {
    addrs: Addrs,
    protocol: u8,
    src_port: [u8; 2],
    dst_port: [u8; 2],
    /// TCP's flags byte; 0 for the other protocols.
    tcp_flags: u8,
}

impl Key {
    /// Read before the allow-list walk, so that no packet offset is still needed during it: the
    /// verifier would otherwise tell apart (and not prune) walks that differ only in how deep
    /// the headers were. `None` only for a frame cut short, which `parse` has already ruled out.
    #[inline(always)]
    pub fn read(frame: &Frame, ip: &Ip, ports: &Ports) -> Option<Key> {
        let tcp_flags = if ports.protocol == proto::TCP {
            ports.tcp_flags(frame)?
        } else {
            0
        };
        Some(Key {
            addrs: ip.addrs(frame)?,
            protocol: ports.protocol,
            src_port: ports.src(frame)?,
            dst_port: ports.dst,
            tcp_flags,
        })
    }
}

/// The verdict for a packet from outside the allow-list to a guarded port; nothing is known of
/// a packet whose key could not be read, and nothing passes.
#[inline(always)]
pub fn judge<C: EbpfContext>(ctx: &C, key: Option<&Key>) -> Reason {
    let Some(key) = key else {
        return Reason::DropGuarded;
    };
    match key.protocol {
        // A SYN without ACK opens a connection (with Fast Open data or not): refused before
        // any lookup, so a SYN flood costs no more than the allow-list walk.
        proto::TCP if key.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN => {
            Reason::DropGuarded
        }
        // Anything else reaching a listener is an attempt to complete a handshake without a
        // SYN (a guessed SYN cookie) or a scan; the node's own connections are never listeners.
        proto::TCP => match lookup(ctx, key, Table::Tcp) {
            Some(sock_state::LISTEN) => Reason::DropGuarded,
            _ => Reason::PassReply,
        },
        // A connected socket only ever matches its own peer; an unconnected one would take a
        // datagram from anyone.
        proto::UDP => match lookup(ctx, key, Table::Udp) {
            Some(sock_state::ESTABLISHED) | None => Reason::PassReply,
            Some(_) => Reason::DropGuarded,
        },
        // No lookup helper for UDP-Lite, DCCP or SCTP: nothing is known, nothing passes.
        _ => Reason::DropGuarded,
    }
}

#[derive(Clone, Copy)]
enum Table {
    Tcp,
    Udp,
}

/// The state of the socket the packet would reach in the receiving device's namespace, or
/// `None` when it would reach none (the kernel answers with a reset or an ICMP error, or
/// forwards it to another namespace).
#[inline(always)]
fn lookup<C: EbpfContext>(ctx: &C, key: &Key, table: Table) -> Option<u32> {
    // SAFETY: an all-zero bpf_sock_tuple is valid (plain integers in a union).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let sport = u16::from_ne_bytes(key.src_port);
    let dport = u16::from_ne_bytes(key.dst_port);
    let size = match key.addrs {
        Addrs::V4 { src, dst } => {
            // SAFETY: writing the union's ipv4 member, then passing its size.
            unsafe {
                tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(src);
                tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(dst);
                tuple.__bindgen_anon_1.ipv4.sport = sport;
                tuple.__bindgen_anon_1.ipv4.dport = dport;
                size_of_val(&tuple.__bindgen_anon_1.ipv4)
            }
        }
        Addrs::V6 { src, dst } => {
            // SAFETY: as above, the ipv6 member.
            unsafe {
                tuple.__bindgen_anon_1.ipv6.saddr = words(src);
                tuple.__bindgen_anon_1.ipv6.daddr = words(dst);
                tuple.__bindgen_anon_1.ipv6.sport = sport;
                tuple.__bindgen_anon_1.ipv6.dport = dport;
                size_of_val(&tuple.__bindgen_anon_1.ipv6)
            }
        }
    };
    // Negative: the namespace of the device the packet arrived on.
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the helpers read `size` bytes of the tuple on our stack; a socket they return is
    // referenced and released below on the only path that holds it.
    unsafe {
        let sk: *mut bpf_sock = match table {
            // skc: also finds request and time-wait sockets, which a full-socket lookup skips
            // and which are not listeners.
            Table::Tcp => bpf_skc_lookup_tcp(ctx.as_ptr(), &mut tuple, size as u32, netns, 0),
            Table::Udp => bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size as u32, netns, 0),
        };
        if sk.is_null() {
            return None;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut _);
        Some(state)
    }
}

/// An IPv6 address as the tuple's four network-order words.
#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
