//! The allow-list trie on the real XDP program (BPF_PROG_TEST_RUN): edge cases of the structure
//! (overlapping prefixes, /0, /32, /128, lengths between strides), list changes that swap the
//! prefix lengths in use, a differential check against a linear scan, and the no-gap guarantee
//! under changes made while the program runs on another CPU.

use ipnet::IpNet;
use serve_guard::cidr::CidrList;
use serve_guard_tests::{
    frames::Frame,
    program::{TestProgram, XDP_DROP, XDP_PASS},
    rng::Rng,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HTTP: u16 = 8000;
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// List switches in the no-gap test.
const SWITCHES: usize = 200;
/// Bound on the no-gap test, whatever the machine's load.
const NO_GAP_LIMIT: Duration = Duration::from_secs(60);

fn program() -> TestProgram {
    let mut p = TestProgram::load().expect("load the program");
    p.protect_port(HTTP).expect("protect the port");
    p
}

fn list(cidrs: &[&str]) -> CidrList {
    CidrList::from_file_text(&cidrs.join("\n"))
        .expect("valid list")
        .0
}

fn frame(src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(a) => Frame::ipv4(a, SERVER_V4).tcp(HTTP).build(),
        IpAddr::V6(a) => Frame::ipv6(a, SERVER_V6).tcp(HTTP).build(),
    }
}

fn passes(p: &TestProgram, src: &str) -> bool {
    let src: IpAddr = src.parse().expect("address");
    match p.run(&frame(src)).expect("test run").retval {
        XDP_PASS => true,
        XDP_DROP => false,
        other => panic!("{src}: verdict {other}"),
    }
}

/// Asserts each `(source, allowed)` against the program.
fn expect(p: &TestProgram, cases: &[(&str, bool)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(src, allowed)| passes(p, src) != *allowed)
        .map(|(src, allowed)| format!("{src}: expected {}", if *allowed { "PASS" } else { "DROP" }))
        .collect();
    assert!(wrong.is_empty(), "wrong verdicts: {wrong:#?}");
}

/// Makes the allow-list exactly `nets`.
fn set(p: &mut TestProgram, nets: &[IpNet]) {
    let mut allowed = CidrList::default();
    for net in nets {
        allowed.insert(*net);
    }
    p.set_allowed(allowed).unwrap();
}

/// An address as a left-aligned `u128` (IPv4 in the top 32 bits) and its family's width.
fn wide(a: IpAddr) -> (u128, u32) {
    match a {
        IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn narrow(x: u128, width: u32) -> IpAddr {
    match width {
        32 => IpAddr::V4(((x >> 96) as u32).into()),
        _ => IpAddr::V6(x.into()),
    }
}

/// Each prefix's first and last address, the addresses next to them, and around each of
/// those the edges of every directory- and stride-aligned range (/8, /12, ... /28 for IPv4;
/// /16, /20, ... /124 for IPv6): where a walk moves from one slot to the next.
fn stride_probes(nets: &[IpNet]) -> Vec<IpAddr> {
    use serve_guard_common::trie::level_boundaries;
    let mut probes: Vec<IpAddr> = Vec::new();
    for net in nets {
        let ((f, width), (l, _)) = (wide(net.network()), wide(net.broadcast()));
        let unit = 1u128 << (128 - width);
        for a in [f, l, f.wrapping_sub(unit), l.wrapping_add(unit)] {
            probes.push(narrow(a, width));
            for at in level_boundaries(width) {
                let span = 1u128 << (128 - at);
                let start = a & !(span - 1);
                probes.extend(
                    [start, start.wrapping_sub(unit), start.wrapping_add(span)]
                        .map(|x| narrow(x, width)),
                );
            }
        }
    }
    probes.sort_unstable();
    probes.dedup();
    probes
}

/// Asserts that the program, and the host's copy of its walk, judge every probe as a linear
/// scan of `nets` does.
fn assert_linear_scan(p: &TestProgram, nets: &[IpNet], probes: &[IpAddr]) {
    let wrong: Vec<String> = probes
        .iter()
        .filter(|addr| {
            let expected = nets.iter().any(|n| n.contains(*addr));
            passes(p, &addr.to_string()) != expected || p.lookup_allows(**addr) != expected
        })
        .map(|addr| format!("{addr}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} probes judged wrong: {:?}",
        wrong.len(),
        probes.len(),
        &wrong[..wrong.len().min(20)]
    );
}

#[test]
fn overlapping_prefixes_allow_their_union() {
    let mut p = program();
    p.set_allowed(list(&[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3/32",
        "192.168.0.0/22",
        "192.168.2.0/24",
        "fd00::/16",
        "fd00:1::/32",
        "fd00:1::7/128",
    ]))
    .unwrap();
    expect(
        &p,
        &[
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("10.1.2.3", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.3.255", true),
            ("192.168.4.0", false),
            ("fd00:ffff::1", true),
            ("fd00:1::7", true),
            ("fd01::", false),
        ],
    );
    // Contained ranges add no addresses.
    assert_eq!(
        p.allowed_now().unwrap(),
        list(&["10.0.0.0/8", "192.168.0.0/22", "fd00::/16"])
    );
}

#[test]
fn slash_zero_host_routes_and_lengths_between_strides() {
    let mut p = program();
    p.set_allowed(list(&["0.0.0.0/0", "fd00:1::/64"])).unwrap();
    expect(
        &p,
        &[
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("fd00:1::ffff", true),
            ("fd00:2::", false),
            ("::", false),
        ],
    );
    p.set_allowed(list(&["198.18.0.7/32", "::/0"])).unwrap();
    expect(
        &p,
        &[
            ("198.18.0.7", true),
            ("198.18.0.6", false),
            ("198.18.0.8", false),
            ("::", true),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ],
    );
    // Two /128s one apart and a /127 beside them: nodes down to the last nibble.
    p.set_allowed(list(&[
        "fd00:1::10/128",
        "fd00:1::11/128",
        "fd00:1::12/127",
        "198.18.0.0/23",
        "198.18.7.0/25",
    ]))
    .unwrap();
    expect(
        &p,
        &[
            ("fd00:1::f", false),
            ("fd00:1::10", true),
            ("fd00:1::11", true),
            ("fd00:1::13", true),
            ("fd00:1::14", false),
            ("198.18.1.255", true),
            ("198.18.2.0", false),
            ("198.18.7.127", true),
            ("198.18.7.128", false),
            ("0.0.0.0", false),
        ],
    );
}

#[test]
fn a_change_that_swaps_the_lengths_in_use_takes_effect_whole() {
    let mut p = program();
    // Old: /16s only. New: /24s and /32s inside other ranges, plus one range in both.
    let old = list(&["10.1.0.0/16", "10.2.0.0/16", "198.18.0.0/24", "fd00:a::/32"]);
    let new = list(&[
        "10.3.7.0/24",
        "10.4.9.9/32",
        "198.18.0.0/24",
        "fd00:b:c::/48",
    ]);
    let cases_old = [
        ("10.1.200.1", true),
        ("10.3.7.1", false),
        ("10.4.9.9", false),
        ("198.18.0.9", true),
        ("fd00:a::1", true),
        ("fd00:b:c::1", false),
    ];
    p.set_allowed(old.clone()).unwrap();
    expect(&p, &cases_old);
    p.set_allowed(new).unwrap();
    expect(
        &p,
        &[
            ("10.1.200.1", false),
            ("10.3.7.1", true),
            ("10.3.8.1", false),
            ("10.4.9.9", true),
            ("10.4.9.10", false),
            ("198.18.0.9", true),
            ("fd00:a::1", false),
            ("fd00:b:c::1", true),
        ],
    );
    // And back: the half the first list used is rewritten.
    p.set_allowed(old).unwrap();
    expect(&p, &cases_old);
}

/// `count` prefixes, alternately inside each of `regions` (a network and the lengths to draw),
/// at random addresses there: reproducible lists that nest and overlap.
fn random_nets(rng: &mut Rng, count: usize, regions: &[(&str, RangeInclusive<u8>)]) -> Vec<IpNet> {
    (0..count)
        .map(|i| {
            let (region, lens) = &regions[i % regions.len()];
            let region: IpNet = region.parse().expect("region");
            let (base, width) = wide(region.network());
            let random = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            let addr = base | (random >> region.prefix_len());
            let len =
                lens.start() + (rng.next_u64() % u64::from(lens.end() - lens.start() + 1)) as u8;
            IpNet::new(narrow(addr, width), len).unwrap().trunc()
        })
        .collect()
}

/// `rounds` random lists of `count` prefixes in `regions` (seeded): each prefix's ends and the
/// stride edges around them against a linear scan.
fn random_lists_match_a_linear_scan_in(
    seed: u64,
    rounds: usize,
    count: usize,
    regions: &[(&str, RangeInclusive<u8>)],
) {
    let mut p = program();
    let mut rng = Rng::new(seed);
    for _ in 0..rounds {
        let nets = random_nets(&mut rng, count, regions);
        set(&mut p, &nets);
        assert_linear_scan(&p, &nets, &stride_probes(&nets));
    }
}

/// Random lists clustered in 10.0.0.0/12 and fd00::/20.
#[test]
fn random_lists_match_a_linear_scan() {
    random_lists_match_a_linear_scan_in(
        11,
        4,
        400,
        &[("10.0.0.0/12", 12..=32), ("fd00::/20", 20..=128)],
    );
}

/// Lists packed densely into one /16 (IPv4) and one /112 (IPv6), of prefixes of at most 64
/// addresses, so that most nodes have node children on every side and are stored as groups of
/// both depths (docs/lookup.md).
#[test]
fn dense_lists_read_through_groups_match_a_linear_scan() {
    random_lists_match_a_linear_scan_in(
        23,
        3,
        1200,
        &[("10.7.0.0/16", 26..=32), ("fd00:9::/112", 122..=128)],
    );
}

/// While the list switches back and forth between two lists with different lengths in use, a
/// thread runs the program on another CPU: a source in both lists is never dropped, one in
/// neither is never passed, and sources in only one list see both verdicts (the switches
/// happened while it ran).
#[test]
fn no_gap_while_the_list_switches_under_traffic() {
    let mut p = program();
    let a = list(&["198.18.0.0/24", "10.1.0.0/16", "fd00:1::/64", "fd00:a::/32"]);
    let b = list(&[
        "198.18.0.0/25",
        "198.18.0.128/25",
        "10.2.3.0/24",
        "fd00:1::/65",
        "fd00:1:0:0:8000::/65",
        "fd00:b::7/128",
    ]);
    p.set_allowed(a.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let runner = {
        let (stop, runs) = (stop.clone(), runs.clone());
        // The runner works on its own duplicate of the program's fd; this thread switches.
        let fd = p.fd().unwrap().try_clone_to_owned().unwrap();
        std::thread::spawn(move || {
            let both = [
                "198.18.0.10",
                "198.18.0.200",
                "fd00:1::10",
                "fd00:1::8000:0:0:10",
            ];
            let neither = ["198.18.1.10", "10.3.0.1", "fd00:2::10", "fd00:b::8"];
            let only_a = "10.1.2.3";
            let mut seen_a = [false, false];
            let mut wrong = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < NO_GAP_LIMIT {
                use std::os::fd::AsFd as _;
                let run = |src: &str| {
                    let src: IpAddr = src.parse().unwrap();
                    serve_guard::filter::test_run::test_run(fd.as_fd(), &frame(src), 1)
                        .unwrap()
                        .retval
                };
                for src in both {
                    if run(src) != XDP_PASS {
                        wrong.push(format!("{src} (in both lists) dropped"));
                    }
                }
                for src in neither {
                    if run(src) != XDP_DROP {
                        wrong.push(format!("{src} (in neither list) passed"));
                    }
                }
                seen_a[usize::from(run(only_a) == XDP_PASS)] = true;
                runs.fetch_add(1, Ordering::Relaxed);
            }
            (wrong, seen_a)
        })
    };
    let started = Instant::now();
    for i in 0..SWITCHES {
        let next = if i % 2 == 0 { b.clone() } else { a.clone() };
        p.set_allowed(next).unwrap();
        assert!(started.elapsed() < NO_GAP_LIMIT, "switching took too long");
    }
    stop.store(true, Ordering::Relaxed);
    let (wrong, seen_a) = runner.join().expect("runner panicked");
    eprintln!(
        "{SWITCHES} switches, {} runs of the probe set",
        runs.load(Ordering::Relaxed)
    );
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert!(runs.load(Ordering::Relaxed) > 0, "the runner never ran");
    assert!(
        seen_a[0] || seen_a[1],
        "the source in one list was never judged"
    );
}

/// Prefixes of every length, both families, each in a region of its own (first byte = length)
/// and ending on the region's last address, with a host route just before it: the two share
/// their first length - 1 bits, so the lookup splits down to the prefix's own stride. Every
/// prefix's and host route's ends, the addresses next to them, and the edges of every
/// directory- and stride-aligned range around them (/8, /12, ... /28 for IPv4; /16, /20, ... /124 for IPv6), against a linear scan, through the real program.
#[test]
fn every_prefix_length_at_the_edges_of_every_stride() {
    let mut p = program();
    let mut nets: Vec<IpNet> = Vec::new();
    for width in [32u32, 128] {
        let unit = 1u128 << (128 - width);
        for len in 8..=width as u8 {
            // The region's last address: its first byte is `len`, every other bit set.
            let end = (u128::from(len) << 120) | (u128::MAX >> 8);
            let net = IpNet::new(narrow(end, width), len).unwrap().trunc();
            let host = wide(net.network()).0.wrapping_sub(unit);
            nets.push(net);
            nets.push(IpNet::new(narrow(host, width), width as u8).unwrap());
        }
    }
    set(&mut p, &nets);
    assert_linear_scan(&p, &nets, &stride_probes(&nets));
    // Lengths below /8 cover regions above: alone, each with a host route.
    for len in 0..8u8 {
        let (v4, v6) = (format!("128.0.0.0/{len}"), format!("8000::/{len}"));
        p.set_allowed(list(&[v4.as_str(), "0.0.0.1/32", v6.as_str(), "::1/128"]))
            .unwrap();
        expect(
            &p,
            &[
                ("128.0.0.0", true),
                ("255.255.255.255", len <= 1),
                ("127.255.255.255", len == 0),
                ("0.0.0.1", true),
                ("0.0.0.2", len == 0),
                ("8000::", true),
                ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", len <= 1),
                ("7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", len == 0),
                ("::1", true),
                ("::2", len == 0),
            ],
        );
    }
}
