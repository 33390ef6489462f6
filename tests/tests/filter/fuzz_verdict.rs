//! A fixed-seed slice of the differential fuzzer (issue 7): generated frames through the real
//! XDP program and through the reference model of docs/filter.md must agree on the return value
//! and the counter of every frame. `cargo xtask fuzz verdict` runs the same with 10 million
//! frames; a failure here names the seed and index, which `fuzz_verdict --replay` reproduces.

use serve_guard_common::{Family, Reason};
use serve_guard_tests::fuzz::{
    differential::{self, Options, Programs},
    generate::Generator,
};
use serve_guard_tests::program::Hook;

/// Another seed than the 10M run's default, so the slice is not a prefix of it.
const SEED: u64 = 0x5e7e_f022_0007;
const FRAMES: u64 = 300_000;

#[test]
fn fixed_seed_slice_program_agrees_with_model() {
    slice(Hook::Xdp);
}

/// The same slice through the TC classifier (the fallback beside a foreign XDP program): the
/// same parse and decision on an skb.
#[test]
fn fixed_seed_slice_tc_program_agrees_with_model() {
    slice(Hook::Tc);
}

fn slice(hook: Hook) {
    let programs = Programs::load(hook).expect("load the program");
    let options = Options {
        seed: SEED,
        start: 0,
        frames: FRAMES,
        only: None,
    };
    let report = differential::run(&programs, options, |_| {}).expect("run the slice");
    assert_eq!(report.frames + report.not_runnable, FRAMES);
    // Only the TC test run refuses frames, and only a small share (IP headers cut short).
    match hook {
        Hook::Xdp => assert_eq!(report.not_runnable, 0),
        Hook::Tc => assert!(report.not_runnable < FRAMES / 20, "{}", report.not_runnable),
    }

    // The slice only means something if it reached every generator and every verdict.
    for generator in Generator::ALL {
        let frames = report.per_generator.get(&generator).map_or(0, |s| s.frames);
        assert!(frames > 0, "generator {} made no frame", generator.name());
    }
    let verdicts = report.verdicts();
    for reason in Reason::ALL {
        for family in [Family::Ipv4, Family::Ipv6] {
            assert!(
                verdicts.get(&(reason, family)).copied().unwrap_or(0) > 0,
                "no frame was judged {}/{}",
                reason.name(),
                family.name()
            );
        }
    }

    assert!(
        report.classes.is_empty(),
        "{} of {FRAMES} frames mismatch (reproduce: cargo xtask fuzz verdict --hook {} --seed \
         {SEED} --replay INDEX):\n{}",
        report.mismatches(),
        hook.name(),
        report.describe_classes()
    );
}

/// Directed frames at the sockets of the fuzzer's namespace (issue 16): both outcomes of both
/// lookups (a listener or an unconnected UDP socket found: dropped; a connection's socket, a UDP
/// socket connected to this very peer, or nothing found: passed as a reply), the SYN rule before
/// any lookup, the protocols without a lookup, in both families. The model must give the
/// expected verdict, and the program the model's.
#[test]
fn directed_frames_at_the_namespace_sockets_take_both_lookup_outcomes() {
    use Reason::{DropGuarded, PassAllowed, PassReply};
    use serve_guard_common::wire::proto;
    use serve_guard_tests::frames::{Frame, tcp};
    use serve_guard_tests::fuzz::{model, scenario::*};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let programs = Programs::load(Hook::Xdp).expect("load the XDP program");
    let policy = differential::policies().swap_remove(0)[0].clone();
    let families: [(IpAddr, IpAddr, IpAddr, IpAddr, Family); 2] = [
        (
            HOST_V4.into(),
            PEER_V4.into(),
            Ipv4Addr::new(198, 18, 1, 10).into(),
            Ipv4Addr::new(198, 18, 0, 10).into(),
            Family::Ipv4,
        ),
        (
            HOST_V6.into(),
            PEER_V6.into(),
            "fd00:2::10".parse::<Ipv6Addr>().unwrap().into(),
            "fd00:1::10".parse::<Ipv6Addr>().unwrap().into(),
            Family::Ipv6,
        ),
    ];
    let frame = |src: IpAddr, dst: IpAddr| match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Frame::ipv4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => Frame::ipv6(s, d),
        _ => unreachable!("one family"),
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for (host, peer, outsider, insider, family) in families {
        let tcp_to = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
            frame(src, dst)
                .src_port(sport)
                .tcp(dport)
                .tcp_flags(flags)
                .build()
        };
        let udp_to = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16| {
            frame(src, dst).src_port(sport).udp(dport).build()
        };
        let mut cases: Vec<(&str, Vec<u8>, Reason)> = vec![
            (
                "SYN from the connection's peer to the listener: no lookup",
                tcp_to(peer, CLIENT_PORT, host, LISTEN_PORT, tcp::SYN),
                DropGuarded,
            ),
            (
                "ACK from outside to the listener (a SYN-cookie guess)",
                tcp_to(outsider, 40_000, host, LISTEN_PORT, tcp::ACK),
                DropGuarded,
            ),
            (
                "RST from outside to the listener",
                tcp_to(outsider, 40_000, host, LISTEN_PORT, tcp::RST),
                DropGuarded,
            ),
            (
                "FIN from outside to the listener",
                tcp_to(outsider, 40_000, host, LISTEN_PORT, tcp::FIN),
                DropGuarded,
            ),
            (
                "SYN+ACK from outside to the listener",
                tcp_to(outsider, 40_000, host, LISTEN_PORT, tcp::SYN | tcp::ACK),
                DropGuarded,
            ),
            (
                "ACK of the connection to its accepted end",
                tcp_to(peer, CLIENT_PORT, host, LISTEN_PORT, tcp::ACK),
                PassReply,
            ),
            (
                "data of the connection to its connecting end",
                tcp_to(host, LISTEN_PORT, peer, CLIENT_PORT, tcp::PSH | tcp::ACK),
                PassReply,
            ),
            (
                "SYN+ACK to the connecting end's port from elsewhere: no socket",
                tcp_to(
                    outsider,
                    LISTEN_PORT,
                    peer,
                    CLIENT_PORT,
                    tcp::SYN | tcp::ACK,
                ),
                PassReply,
            ),
            (
                "ACK one source port off the connection: the listener",
                tcp_to(peer, CLIENT_PORT + 1, host, LISTEN_PORT, tcp::ACK),
                DropGuarded,
            ),
            (
                "ACK from an allowed source to the listener",
                tcp_to(insider, 40_000, host, LISTEN_PORT, tcp::ACK),
                PassAllowed,
            ),
            (
                "ACK to the dual-stack wildcard listener",
                tcp_to(outsider, 40_000, host, DUAL_STACK_TCP_PORT, tcp::ACK),
                DropGuarded,
            ),
            (
                "UDP from outside to the unconnected socket",
                udp_to(outsider, 53, host, UDP_BOUND_PORT),
                DropGuarded,
            ),
            (
                "UDP from the peer to the socket connected to it",
                udp_to(peer, UDP_PEER_PORT, host, UDP_CONNECTED_PORT),
                PassReply,
            ),
            (
                "UDP from elsewhere to the connected socket's port: no socket",
                udp_to(outsider, UDP_PEER_PORT, host, UDP_CONNECTED_PORT),
                PassReply,
            ),
            (
                "UDP from the peer to the shared port: the connected socket",
                udp_to(peer, UDP_SHARED_PEER_PORT, host, UDP_SHARED_PORT),
                PassReply,
            ),
            (
                "UDP from elsewhere to the shared port: the unconnected socket",
                udp_to(outsider, UDP_SHARED_PEER_PORT, host, UDP_SHARED_PORT),
                DropGuarded,
            ),
        ];
        for (name, number) in [
            ("DCCP", proto::DCCP),
            ("SCTP", proto::SCTP),
            ("UDP-Lite", proto::UDPLITE),
        ] {
            cases.push((
                name,
                frame(outsider, host)
                    .port_protocol(number, UDP_CONNECTED_PORT)
                    .build(),
                DropGuarded,
            ));
        }
        // The IPv4 wildcards: a v4 listener and a v4 UDP socket on 0.0.0.0 (no IPv6 socket).
        let (wild_tcp, wild_udp) = if family == Family::Ipv4 {
            (DropGuarded, DropGuarded)
        } else {
            (PassReply, PassReply)
        };
        cases.push((
            "ACK to the IPv4 wildcard listener's port",
            tcp_to(outsider, 40_000, host, WILDCARD_TCP_PORT, tcp::ACK),
            wild_tcp,
        ));
        cases.push((
            "UDP to the IPv4 wildcard socket's port",
            udp_to(outsider, 53, peer, WILDCARD_UDP_PORT),
            wild_udp,
        ));
        for (name, bytes, reason) in cases {
            checked += 1;
            let action = if reason == DropGuarded {
                model::Action::Drop
            } else {
                model::Action::Pass
            };
            let expected = model::Verdict {
                action,
                reason,
                family,
            };
            let modelled = model::verdict(&bytes, &policy);
            if modelled != expected {
                failures.push(format!(
                    "{} {name}: the model says {modelled}, not {expected}",
                    family.name()
                ));
            }
            let observed = programs.observe(&bytes, false).expect("BPF_PROG_TEST_RUN");
            if !observed.agrees(&expected) {
                failures.push(format!(
                    "{} {name}: program {observed}, expected {expected}",
                    family.name()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} directed frames failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The fuzzer's allow-lists hold clusters dense enough to be stored as groups (scenario's
/// `dense_v4`, `dense_v6`), so its frames judge the group paths of the walk too: an address of
/// each cluster is reached with one read fewer (depth 1) or two (depth 2) than the nodes of
/// every stride would take.
#[test]
fn the_fuzzers_lists_are_walked_through_groups() {
    use serve_guard_tests::fuzz::scenario;
    let program = scenario::program_in(0, false, Hook::Xdp).expect("load the scenario");
    let cases = [
        // Root, directory, then one node per stride below 198.0.0.0/8 (splitting on /12, /16,
        // /20, /24, /28, /32): 8 without groups. The /24's node (its 16 /28s hold two host
        // routes each but one) is a group: one read for the last two strides.
        ("198.18.16.13", 7),
        // Root, directory, one node per stride from /20 to /128: 30 without groups.
        ("fd00:7::7", 29),
        // Depth 2. Root, directory, nodes splitting on /12, /16, /20, /24, /28: 7 without
        // groups; 198.19.0.0/16's slot is a group for the /20 and /24 nodes.
        ("198.19.3.64", 5),
        // Root, directory, nodes splitting on /20 ... /44, then the /48's tail: 10 without
        // groups; fd00:9::/32's slot is a group for the /36 and /40 nodes.
        ("fd00:9:500::1", 8),
    ];
    for (addr, reads) in cases {
        let addr = addr.parse().expect("address");
        assert!(program.lookup_allows(addr), "{addr} is listed");
        assert_eq!(program.lookup_reads(addr), reads, "reads for {addr}");
    }
}
