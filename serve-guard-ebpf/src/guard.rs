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

use crate::parse::{Addrs, Ports};

/// The verdict for a packet from outside the allow-list to a guarded port.
#[inline(always)]
pub fn judge<C: EbpfContext>(ctx: &C, addrs: &Addrs, ports: &Ports) -> Reason {
    match ports.protocol {
        // A SYN without ACK opens a connection (with Fast Open data or not): refused before
        // any lookup, so a SYN flood costs no more than the allow-list walk.
        proto::TCP if ports.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN => {
            Reason::DropGuarded
        }
        // Anything else reaching a listener is an attempt to complete a handshake without a
        // SYN (a guessed SYN cookie) or a scan; the node's own connections are never listeners.
        proto::TCP => match lookup(ctx, addrs, ports, Table::Tcp) {
            Some(sock_state::LISTEN) => Reason::DropGuarded,
            _ => Reason::PassReply,
        },
        // A connected socket only ever matches its own peer; an unconnected one would take a
        // datagram from anyone.
        proto::UDP => match lookup(ctx, addrs, ports, Table::Udp) {
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
fn lookup<C: EbpfContext>(ctx: &C, addrs: &Addrs, ports: &Ports, table: Table) -> Option<u32> {
    // SAFETY: an all-zero bpf_sock_tuple is valid (plain integers in a union).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let sport = u16::from_ne_bytes(ports.src);
    let dport = u16::from_ne_bytes(ports.dst);
    let size = match *addrs {
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
