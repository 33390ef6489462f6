//! The model on hand-written frames, each checked against docs/filter.md by reading, not by
//! running anything else: the model is the oracle of the fuzzer, so it gets its own tests.

use super::*;
use Action::{Drop, Pass};
use Family::{Ipv4, Ipv6, Other};
use Reason::{
    AuditWouldDrop, DropGuarded, DropOutsideVpc, DropUnparseable, PassAllowed, PassReply,
    PassUnprotected,
};

const INSIDE_V4: [u8; 4] = [198, 18, 0, 10];
const OUTSIDE_V4: [u8; 4] = [198, 18, 1, 10];
const SERVER_V4: [u8; 4] = [198, 18, 0, 1];
const INSIDE_V6: &str = "fd00:1::10";
const OUTSIDE_V6: &str = "fd00:2::10";
const SERVER_V6: &str = "fd00:1::1";
const HTTP: u16 = 8000;

fn policy() -> Policy {
    Policy {
        ports: PortTable::strict(&[8000, 9000]),
        allow_v4: vec!["198.18.0.0/24".parse().unwrap()],
        allow_v6: vec!["fd00:1::/64".parse().unwrap()],
        audit: false,
        sockets: Vec::new(),
    }
}

fn v(action: Action, reason: Reason, family: Family) -> Verdict {
    Verdict {
        action,
        reason,
        family,
    }
}

/// Ethernet header with `tags` (TPID, VID) and the final EtherType, then `body`.
fn ether(tags: &[(u16, u16)], ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// IPv4 header (checksum left zero: the filter does not read it) + `payload`.
fn ipv4(src: [u8; 4], protocol: u8, frag: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    assert_eq!(hlen % 4, 0);
    let total = (hlen + payload.len()) as u16;
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&SERVER_V4);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

fn set_ipv4_total(frame: &mut [u8], l3: usize, total: u16) {
    frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
}

fn ipv6(src: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = SERVER_V6.parse().unwrap();
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An untagged Ethernet frame carrying `ipv6(src, next, payload)`.
fn eth6(src: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    ether(&[], wire::ETH_P_IPV6, &ipv6(src, next, payload))
}

fn set_ipv6_payload_len(frame: &mut [u8], l3: usize, len: u16) {
    frame[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
}

/// A transport header of `len` bytes with source port 40000 and destination `port`.
fn l4(port: u16, len: usize) -> Vec<u8> {
    let mut h = vec![0u8; len];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&port.to_be_bytes());
    h
}

/// An 8-byte hop-by-hop / routing / destination-options header: PadN over its 6 option bytes.
fn ext8(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

fn frag(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&0x5eedu32.to_be_bytes());
    h
}

fn judge(frame: &[u8]) -> Verdict {
    verdict(frame, &policy())
}

#[test]
fn protected_unprotected_inside_outside_v4() {
    let tcp = |src, port| {
        ether(
            &[],
            wire::ETH_P_IPV4,
            &ipv4(src, proto::TCP, 0, &[], &l4(port, 20)),
        )
    };
    assert_eq!(judge(&tcp(INSIDE_V4, HTTP)), v(Pass, PassAllowed, Ipv4));
    assert_eq!(judge(&tcp(OUTSIDE_V4, HTTP)), v(Drop, DropOutsideVpc, Ipv4));
    assert_eq!(
        judge(&tcp(OUTSIDE_V4, 8080)),
        v(Pass, PassUnprotected, Ipv4)
    );
}

#[test]
fn every_port_protocol_needs_its_whole_minimum_header() {
    for (protocol, min) in PORT_PROTOCOLS {
        let whole = ether(
            &[],
            wire::ETH_P_IPV4,
            &ipv4(OUTSIDE_V4, protocol, 0, &[], &l4(HTTP, min)),
        );
        assert_eq!(judge(&whole), v(Drop, DropOutsideVpc, Ipv4), "{protocol}");
        let short = ether(
            &[],
            wire::ETH_P_IPV4,
            &ipv4(OUTSIDE_V4, protocol, 0, &[], &l4(HTTP, min - 1)),
        );
        assert_eq!(judge(&short), v(Drop, DropUnparseable, Ipv4), "{protocol}");
    }
    // ICMP is no port protocol, whatever its bytes 2-3 hold.
    let icmp = ether(
        &[],
        wire::ETH_P_IPV4,
        &ipv4(OUTSIDE_V4, proto::ICMP, 0, &[], &l4(HTTP, 8)),
    );
    assert_eq!(judge(&icmp), v(Pass, PassUnprotected, Ipv4));
}

#[test]
fn ipv4_declared_length_bounds_the_reads() {
    let packet = ipv4(OUTSIDE_V4, proto::TCP, 0, &[1, 1, 1, 1], &l4(HTTP, 20));
    // Ethernet padding after the packet is never read.
    let mut padded = ether(&[], wire::ETH_P_IPV4, &packet);
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(judge(&padded), v(Drop, DropOutsideVpc, Ipv4));
    // Declared longer than the frame: the kernel drops it; unknown.
    let mut long = ether(&[], wire::ETH_P_IPV4, &packet);
    set_ipv4_total(&mut long, 14, packet.len() as u16 + 1);
    assert_eq!(judge(&long), v(Drop, DropUnparseable, Ipv4));
    // Declared shorter than the header: unknown.
    let mut short = ether(&[], wire::ETH_P_IPV4, &packet);
    set_ipv4_total(&mut short, 14, 23);
    assert_eq!(judge(&short), v(Drop, DropUnparseable, Ipv4));
    // A tiny first fragment: the TCP header's first 8 bytes, port and all, then a trailer that
    // completes it in the frame but not in the packet the kernel keeps.
    let mut tiny = ether(&[], wire::ETH_P_IPV4, &packet);
    set_ipv4_total(&mut tiny, 14, 24 + 8);
    tiny[14 + 6] = 0x20; // MF
    assert_eq!(judge(&tiny), v(Drop, DropUnparseable, Ipv4));
    let mut inside = tiny.clone();
    inside[14 + 12..14 + 16].copy_from_slice(&INSIDE_V4);
    assert_eq!(judge(&inside), v(Pass, PassAllowed, Ipv4));
    // The same cut on a non-first fragment: unprotected.
    tiny[14 + 6..14 + 8].copy_from_slice(&0x2001u16.to_be_bytes());
    assert_eq!(judge(&tiny), v(Pass, PassUnprotected, Ipv4));
}

#[test]
fn ipv4_header_fields_that_make_the_transport_unknown() {
    let packet = ipv4(OUTSIDE_V4, proto::UDP, 0, &[], &l4(8080, 8));
    let mut wrong_version = ether(&[], wire::ETH_P_IPV4, &packet);
    wrong_version[14] = 0x65;
    assert_eq!(judge(&wrong_version), v(Drop, DropUnparseable, Ipv4));
    let mut small_ihl = ether(&[], wire::ETH_P_IPV4, &packet);
    small_ihl[14] = 0x44;
    assert_eq!(judge(&small_ihl), v(Drop, DropUnparseable, Ipv4));
    // The fixed header cut short: no source at all, dropped even if the bytes say "inside".
    let cut = ether(
        &[],
        wire::ETH_P_IPV4,
        &ipv4(INSIDE_V4, proto::UDP, 0, &[], &[])[..19],
    );
    assert_eq!(judge(&cut), v(Drop, DropUnparseable, Ipv4));
}

#[test]
fn vlan_stacks_up_to_eight_tags() {
    let packet = ipv4(OUTSIDE_V4, proto::TCP, 0, &[], &l4(HTTP, 20));
    let tags: Vec<(u16, u16)> = (0..9)
        .map(|i| {
            (
                [wire::ETH_P_8021AD, wire::ETH_P_8021Q][i % 2],
                (i as u16) * 7,
            )
        })
        .collect();
    for n in 0..=MAX_VLAN_TAGS {
        let f = ether(&tags[..n], wire::ETH_P_IPV4, &packet);
        assert_eq!(judge(&f), v(Drop, DropOutsideVpc, Ipv4), "{n} tags");
    }
    let ninth = ether(&tags, wire::ETH_P_IPV4, &packet);
    assert_eq!(judge(&ninth), v(Drop, DropUnparseable, Other));
    // A tag cut short.
    let cut = ether(&[], wire::ETH_P_8021Q, &[0, 5, 0x08]);
    assert_eq!(judge(&cut), v(Drop, DropUnparseable, Other));
    let arp = ether(&[(wire::ETH_P_8021Q, 5)], wire::ETH_P_ARP, &[0; 28]);
    assert_eq!(judge(&arp), v(Pass, PassUnprotected, Other));
    assert_eq!(judge(&[0u8; 13]), v(Drop, DropUnparseable, Other));
}

/// Issue 7's bypass, first fragment f1: the declared payload ends inside the second
/// destination-options header; the 2 bytes after it ("next header 59") are not in the packet.
#[test]
fn issue_7_ipv6_fragment_bypass_f1_is_unparseable() {
    let f1 = |src| {
        let mut payload = frag(proto::DSTOPTS, 0, true);
        payload.extend_from_slice(&ext8(proto::DSTOPTS));
        let mut packet = ipv6(src, proto::FRAGMENT, &payload);
        packet.extend_from_slice(&[proto::NONE, 0]);
        ether(&[], wire::ETH_P_IPV6, &packet)
    };
    let outside = f1(OUTSIDE_V6);
    assert_eq!(outside.len(), 14 + 40 + 16 + 2);
    assert_eq!(outside[14 + 4..14 + 6], [0, 16]);
    assert_eq!(judge(&outside), v(Drop, DropUnparseable, Ipv6));
    assert_eq!(judge(&f1(INSIDE_V6)), v(Pass, PassAllowed, Ipv6));
    // f2, the rest at offset 8: a non-first fragment.
    let mut rest = frag(proto::DSTOPTS, 1, false);
    rest.extend_from_slice(&[proto::UDP, 0, 1, 4, 0, 0, 0, 0]);
    rest.extend_from_slice(&l4(HTTP, 8));
    let f2 = eth6(OUTSIDE_V6, proto::FRAGMENT, &rest);
    assert_eq!(judge(&f2), v(Pass, PassUnprotected, Ipv6));
    // The whole datagram unfragmented is for the protected port.
    let mut whole = ext8(proto::DSTOPTS);
    whole.extend_from_slice(&ext8(proto::UDP));
    whole.extend_from_slice(&l4(HTTP, 8));
    let whole = eth6(OUTSIDE_V6, proto::DSTOPTS, &whole);
    assert_eq!(judge(&whole), v(Drop, DropOutsideVpc, Ipv6));
}

#[test]
fn ipv6_chain_walk() {
    let chain = |headers: &[Vec<u8>], first: u8, tail: &[u8]| {
        let mut payload: Vec<u8> = headers.concat();
        payload.extend_from_slice(tail);
        eth6(OUTSIDE_V6, first, &payload)
    };
    let tcp = l4(HTTP, 20);
    // Eight walked headers, then TCP: judged by the port.
    let mut eight: Vec<Vec<u8>> = (0..7).map(|_| ext8(proto::DSTOPTS)).collect();
    eight.push(ext8(proto::TCP));
    assert_eq!(
        judge(&chain(&eight, proto::DSTOPTS, &tcp)),
        v(Drop, DropOutsideVpc, Ipv6)
    );
    // A ninth: unknown.
    let mut nine: Vec<Vec<u8>> = (0..8).map(|_| ext8(proto::DSTOPTS)).collect();
    nine.push(ext8(proto::TCP));
    assert_eq!(
        judge(&chain(&nine, proto::DSTOPTS, &tcp)),
        v(Drop, DropUnparseable, Ipv6)
    );
    // AH counts 4-octet units plus 2: length byte 1 is 12 bytes.
    let mut ah = vec![proto::UDP, 1];
    ah.extend_from_slice(&[0; 10]);
    assert_eq!(
        judge(&chain(&[ah], proto::AH, &l4(HTTP, 8))),
        v(Drop, DropOutsideVpc, Ipv6)
    );
    // A 16-byte routing header (length byte 1).
    let mut routing = vec![proto::UDP, 1];
    routing.extend_from_slice(&[0; 14]);
    assert_eq!(
        judge(&chain(&[routing], proto::ROUTING, &l4(9000, 8))),
        v(Drop, DropOutsideVpc, Ipv6)
    );
    // Nested atomic fragments are walked; a non-first one anywhere is unprotected.
    let nested = [frag(proto::FRAGMENT, 0, false), frag(proto::TCP, 0, true)];
    assert_eq!(
        judge(&chain(&nested, proto::FRAGMENT, &tcp)),
        v(Drop, DropOutsideVpc, Ipv6)
    );
    let later = [frag(proto::FRAGMENT, 0, false), frag(proto::TCP, 3, true)];
    assert_eq!(
        judge(&chain(&later, proto::FRAGMENT, &tcp)),
        v(Pass, PassUnprotected, Ipv6)
    );
    for unwalked in UNWALKED_EXT_HEADERS {
        assert_eq!(
            judge(&chain(&[ext8(proto::TCP)], unwalked, &tcp)),
            v(Drop, DropUnparseable, Ipv6),
            "{unwalked}"
        );
    }
    for opaque in [proto::ESP, proto::NONE, proto::ICMPV6] {
        assert_eq!(
            judge(&chain(&[ext8(opaque)], proto::HOPOPTS, &tcp)),
            v(Pass, PassUnprotected, Ipv6),
            "{opaque}"
        );
    }
    // A header whose length runs past the declared end.
    let mut long = ext8(proto::TCP);
    long[1] = 9;
    assert_eq!(
        judge(&chain(&[long], proto::HOPOPTS, &tcp)),
        v(Drop, DropUnparseable, Ipv6)
    );
}

#[test]
fn ip_in_ip_is_unknown_only_behind_a_routing_header() {
    let inner = [0x45u8; 20];
    for tunnelled in TUNNELLED_IP {
        let mut routed = ext8(proto::DSTOPTS);
        routed[0] = proto::ROUTING;
        routed.extend_from_slice(&ext8(tunnelled));
        routed.extend_from_slice(&inner);
        let frame = eth6(OUTSIDE_V6, proto::DSTOPTS, &routed);
        assert_eq!(judge(&frame), v(Drop, DropUnparseable, Ipv6), "{tunnelled}");
        let mut plain = ext8(tunnelled);
        plain.extend_from_slice(&inner);
        let frame = eth6(OUTSIDE_V6, proto::DSTOPTS, &plain);
        assert_eq!(judge(&frame), v(Pass, PassUnprotected, Ipv6), "{tunnelled}");
    }
}

#[test]
fn ipv6_payload_length_bounds_the_reads() {
    let packet = ipv6(OUTSIDE_V6, proto::UDP, &l4(HTTP, 8));
    let base = ether(&[], wire::ETH_P_IPV6, &packet);
    assert_eq!(judge(&base), v(Drop, DropOutsideVpc, Ipv6));
    let mut zero = base.clone();
    set_ipv6_payload_len(&mut zero, 14, 0);
    assert_eq!(judge(&zero), v(Drop, DropUnparseable, Ipv6));
    let mut long = base.clone();
    set_ipv6_payload_len(&mut long, 14, 9);
    assert_eq!(judge(&long), v(Drop, DropUnparseable, Ipv6));
    // Declared 7: the UDP header is one byte short in the packet the kernel keeps.
    let mut short = base.clone();
    set_ipv6_payload_len(&mut short, 14, 7);
    assert_eq!(judge(&short), v(Drop, DropUnparseable, Ipv6));
    let mut version = base.clone();
    version[14] = 0x40;
    assert_eq!(judge(&version), v(Drop, DropUnparseable, Ipv6));
    // The fixed header cut short: no source.
    assert_eq!(judge(&base[..14 + 39]), v(Drop, DropUnparseable, Ipv6));
    let inside = eth6(INSIDE_V6, proto::UDP, &l4(HTTP, 8));
    assert_eq!(judge(&inside), v(Pass, PassAllowed, Ipv6));
}

#[test]
fn audit_turns_every_drop_into_a_counted_pass() {
    let audit = Policy {
        audit: true,
        ..policy()
    };
    let outside = ether(
        &[],
        wire::ETH_P_IPV4,
        &ipv4(OUTSIDE_V4, proto::TCP, 0, &[], &l4(HTTP, 20)),
    );
    assert_eq!(verdict(&outside, &audit), v(Pass, AuditWouldDrop, Ipv4));
    assert_eq!(verdict(&[0u8; 13], &audit), v(Pass, AuditWouldDrop, Other));
    let inside = ether(
        &[],
        wire::ETH_P_IPV4,
        &ipv4(INSIDE_V4, proto::TCP, 0, &[], &l4(HTTP, 20)),
    );
    assert_eq!(verdict(&inside, &audit), v(Pass, PassAllowed, Ipv4));
}

/// Issue 16's classes: 8000 strict, 22 open, 6379 guarded, 4242 a value the program does not
/// know (strict), the rest guarded; and a socket table: a listener on the server's 6379, the
/// server's connection from 50000 to an outside 443, an unconnected UDP socket on 8125 and one
/// connected to an outside resolver's 53 from 50001; a dual-stack listener on `::` 7000 and an
/// IPv6-only one on `::` 7001.
fn guarded_policy() -> Policy {
    let server4 = IpAddr::from(SERVER_V4);
    let server6: IpAddr = SERVER_V6.parse().unwrap();
    let outside4 = IpAddr::from(OUTSIDE_V4);
    let sock = |kind, local: (IpAddr, u16), remote: Option<(IpAddr, u16)>, v6only| Socket {
        kind,
        local: local.into(),
        remote: remote.map(Into::into),
        v6only,
    };
    let mut sockets = vec![
        sock(SocketKind::TcpListener, (server4, 6379), None, false),
        sock(SocketKind::TcpListener, (server6, 6379), None, false),
        sock(
            SocketKind::TcpConnection,
            (server4, 50000),
            Some((outside4, 443)),
            false,
        ),
        sock(SocketKind::UdpBound, (server4, 8125), None, false),
        sock(
            SocketKind::UdpConnected,
            (server4, 50001),
            Some((outside4, 53)),
            false,
        ),
    ];
    let any6 = IpAddr::from(Ipv6Addr::UNSPECIFIED);
    sockets.push(sock(SocketKind::TcpListener, (any6, 7000), None, false));
    sockets.push(sock(SocketKind::TcpListener, (any6, 7001), None, true));
    Policy {
        ports: PortTable::from_runs(
            class::GUARDED,
            &[
                (22, 22, class::OPEN),
                (8000, 8000, class::STRICT),
                (4242, 4242, 0x7f),
            ],
        ),
        sockets,
        ..policy()
    }
}

/// A TCP header from `sport` to `dport` with `flags`.
fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = l4(dport, 20);
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

fn tcp4(src: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let t = tcp_header(sport, dport, flags);
    ether(&[], wire::ETH_P_IPV4, &ipv4(src, proto::TCP, 0, &[], &t))
}

fn udp4(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut u = l4(dport, 8);
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    ether(&[], wire::ETH_P_IPV4, &ipv4(src, proto::UDP, 0, &[], &u))
}

#[test]
fn port_classes_open_strict_guarded_and_unknown_values() {
    let p = guarded_policy();
    let syn = |port| tcp4(OUTSIDE_V4, 40000, port, 0x02);
    assert_eq!(verdict(&syn(22), &p), v(Pass, PassUnprotected, Ipv4));
    assert_eq!(verdict(&syn(8000), &p), v(Drop, DropOutsideVpc, Ipv4));
    assert_eq!(verdict(&syn(4242), &p), v(Drop, DropOutsideVpc, Ipv4));
    assert_eq!(verdict(&syn(6379), &p), v(Drop, DropGuarded, Ipv4));
    assert_eq!(verdict(&syn(1), &p), v(Drop, DropGuarded, Ipv4));
    assert_eq!(verdict(&syn(65535), &p), v(Drop, DropGuarded, Ipv4));
    let inside = tcp4(INSIDE_V4, 40000, 6379, 0x02);
    assert_eq!(verdict(&inside, &p), v(Pass, PassAllowed, Ipv4));
    let table = PortTable::from_runs(class::OPEN, &[(10, 20, class::GUARDED), (15, 15, 1)]);
    assert_eq!(table.run_starts(), vec![0, 10, 15, 16, 21]);
    assert_eq!(table.class(9), PortClass::Open);
    assert_eq!(table.class(20), PortClass::Guarded);
    assert_eq!(table.class(15), PortClass::Strict);
}

#[test]
fn guarded_tcp_syn_without_ack_is_dropped_before_any_lookup() {
    let p = guarded_policy();
    // To the listener, to the node's own connection (simultaneous open), to nothing; with FIN,
    // RST or ECN bits beside the SYN.
    for (sport, dport) in [(40000, 6379), (443, 50000), (40000, 10000)] {
        for flags in [0x02, 0x03, 0x06, 0xc2, 0x0a] {
            let f = tcp4(OUTSIDE_V4, sport, dport, flags);
            assert_eq!(verdict(&f, &p), v(Drop, DropGuarded, Ipv4), "{flags:#x}");
        }
    }
}

#[test]
fn guarded_tcp_other_segments_are_dropped_only_at_a_listener() {
    let p = guarded_policy();
    for flags in [0x10, 0x12, 0x18, 0x11, 0x04, 0x01, 0x00, 0xfd] {
        let to_listener = tcp4(OUTSIDE_V4, 40000, 6379, flags);
        assert_eq!(
            verdict(&to_listener, &p),
            v(Drop, DropGuarded, Ipv4),
            "{flags:#x}"
        );
        let reply = tcp4(OUTSIDE_V4, 443, 50000, flags);
        assert_eq!(verdict(&reply, &p), v(Pass, PassReply, Ipv4), "{flags:#x}");
        // One field off the connection: no socket.
        let stray = tcp4(OUTSIDE_V4, 444, 50000, flags);
        assert_eq!(verdict(&stray, &p), v(Pass, PassReply, Ipv4), "{flags:#x}");
        let nothing = tcp4(OUTSIDE_V4, 40000, 10000, flags);
        assert_eq!(
            verdict(&nothing, &p),
            v(Pass, PassReply, Ipv4),
            "{flags:#x}"
        );
        // The listener is bound to the server's address: another destination finds nothing.
        let mut elsewhere = tcp4(OUTSIDE_V4, 40000, 6379, flags);
        elsewhere[14 + 19] ^= 1;
        assert_eq!(
            verdict(&elsewhere, &p),
            v(Pass, PassReply, Ipv4),
            "{flags:#x}"
        );
        // `::` without V6ONLY takes IPv4 too.
        let dual = tcp4(OUTSIDE_V4, 40000, 7000, flags);
        assert_eq!(verdict(&dual, &p), v(Drop, DropGuarded, Ipv4), "{flags:#x}");
        let v6only = tcp4(OUTSIDE_V4, 40000, 7001, flags);
        assert_eq!(verdict(&v6only, &p), v(Pass, PassReply, Ipv4), "{flags:#x}");
    }
    let ack6 = |port| eth6(OUTSIDE_V6, proto::TCP, &tcp_header(40000, port, 0x10));
    assert_eq!(verdict(&ack6(6379), &p), v(Drop, DropGuarded, Ipv6));
    assert_eq!(verdict(&ack6(7000), &p), v(Drop, DropGuarded, Ipv6));
    assert_eq!(verdict(&ack6(7001), &p), v(Drop, DropGuarded, Ipv6));
    assert_eq!(verdict(&ack6(50000), &p), v(Pass, PassReply, Ipv6));
}

#[test]
fn guarded_udp_and_the_protocols_without_a_lookup() {
    let p = guarded_policy();
    assert_eq!(
        verdict(&udp4(OUTSIDE_V4, 40000, 8125), &p),
        v(Drop, DropGuarded, Ipv4)
    );
    assert_eq!(
        verdict(&udp4(OUTSIDE_V4, 53, 50001), &p),
        v(Pass, PassReply, Ipv4)
    );
    assert_eq!(
        verdict(&udp4(OUTSIDE_V4, 54, 50001), &p),
        v(Pass, PassReply, Ipv4)
    );
    assert_eq!(
        verdict(&udp4(OUTSIDE_V4, 53, 9999), &p),
        v(Pass, PassReply, Ipv4)
    );
    // TCP sockets are not UDP sockets.
    assert_eq!(
        verdict(&udp4(OUTSIDE_V4, 40000, 6379), &p),
        v(Pass, PassReply, Ipv4)
    );
    for (protocol, len) in [(proto::DCCP, 12), (proto::SCTP, 12), (proto::UDPLITE, 8)] {
        let f = ether(
            &[],
            wire::ETH_P_IPV4,
            &ipv4(OUTSIDE_V4, protocol, 0, &[], &l4(50001, len)),
        );
        assert_eq!(verdict(&f, &p), v(Drop, DropGuarded, Ipv4), "{protocol}");
    }
    // Audit mode counts a guarded drop and passes it; a reply stays a reply.
    let audit = Policy {
        audit: true,
        ..guarded_policy()
    };
    let syn = tcp4(OUTSIDE_V4, 40000, 6379, 0x02);
    assert_eq!(verdict(&syn, &audit), v(Pass, AuditWouldDrop, Ipv4));
    let reply = tcp4(OUTSIDE_V4, 443, 50000, 0x10);
    assert_eq!(verdict(&reply, &audit), v(Pass, PassReply, Ipv4));
}
