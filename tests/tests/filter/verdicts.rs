//! Verdict tests (issue 2, Tests item 2): crafted frames through BPF_PROG_TEST_RUN on the real
//! XDP program, each with its expected verdict and the one (reason, family) counter that must
//! move by exactly one packet and the frame's length in bytes. Each test loads its own program
//! instance with its own pinned maps.

use serve_guard::filter::test_run::MIN_DATA_LEN;
use serve_guard_common::{
    Family::{self, Ipv4, Ipv6, Other},
    FilterConfig, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
    Reason::{self, AuditWouldDrop, DropOutsideVpc, DropUnparseable, PassAllowed, PassUnprotected},
    wire::{self, proto},
};
use serve_guard_tests::{
    frames::{Ext, Frame},
    program::{TestProgram, XDP_DROP, XDP_PASS},
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const HTTP: u16 = 8000;
const GRPC: u16 = 9000;
const PROTECTED: [u16; 2] = [HTTP, GRPC];
const UNPROTECTED: u16 = 8080;

/// The VPC: 198.18.0.0/24 and fd00:1::/64. Clients inside and outside it, and the server.
const VPC_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 24);
const VPC_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0), 64);
const INSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Just past the /24: the longest-prefix match must not round it in.
const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const INSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10);
const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);

/// IPv4 option: Record Route with room for one address (type 7, length 7, pointer 4).
const OPT_RECORD_ROUTE: [u8; 7] = [7, 7, 4, 0, 0, 0, 0];
/// The largest IPv4 header: IHL 15, 40 bytes of options (NOPs).
const OPT_MAX_NOPS: [u8; 40] = [1; 40];
/// A non-first fragment offset (in 8-octet units).
const LATER_FRAGMENT: u16 = 185;
const LLDP: u16 = 0x88cc;
/// Port protocols besides TCP and UDP: the kernel delivers them by port too.
const OTHER_PORT_PROTOCOLS: [(&str, u8); 3] = [
    ("DCCP", proto::DCCP),
    ("SCTP", proto::SCTP),
    ("UDP-Lite", proto::UDPLITE),
];
/// Generic Routing Encapsulation: an upper layer without ports.
const GRE: u8 = 47;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Inside,
    Outside,
}

use Src::{Inside, Outside};

/// A named way to wrap a frame (a VLAN tag stack).
type Wrap = (&'static str, fn(Frame) -> Frame);
/// A named frame shape from a source, in one family.
type Shape = (&'static str, Family, fn(Src) -> Frame);

fn v4(src: Src) -> Frame {
    let ip = match src {
        Inside => INSIDE_V4,
        Outside => OUTSIDE_V4,
    };
    Frame::ipv4(ip, SERVER_V4)
}

fn v6(src: Src) -> Frame {
    let ip = match src {
        Inside => INSIDE_V6,
        Outside => OUTSIDE_V6,
    };
    Frame::ipv6(ip, SERVER_V6)
}

/// The verdict a protected-port packet gets: allowed in, the rest dropped.
fn protected(src: Src) -> (u32, Reason) {
    match src {
        Inside => (XDP_PASS, PassAllowed),
        Outside => (XDP_DROP, DropOutsideVpc),
    }
}

/// The verdict when the port cannot be known: only an allowed source passes.
fn unknown_port(src: Src) -> (u32, Reason) {
    match src {
        Inside => (XDP_PASS, PassAllowed),
        Outside => (XDP_DROP, DropUnparseable),
    }
}

const UNPROTECTED_PASS: (u32, Reason) = (XDP_PASS, PassUnprotected);

struct Case {
    name: String,
    frame: Vec<u8>,
    verdict: u32,
    reason: Reason,
    family: Family,
}

impl Case {
    fn new(
        name: impl Into<String>,
        frame: Vec<u8>,
        (verdict, reason): (u32, Reason),
        family: Family,
    ) -> Self {
        Self {
            name: name.into(),
            frame,
            verdict,
            reason,
            family,
        }
    }
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_PASS => "XDP_PASS",
        XDP_DROP => "XDP_DROP",
        _ => "other",
    }
}

/// A program with 8000 and 9000 protected, the VPC allowed and `flags` set.
fn program(flags: u32) -> TestProgram {
    let mut p = TestProgram::load().expect("load the XDP program");
    for port in PROTECTED {
        p.protect_port(port).expect("protect port");
    }
    p.allow(IpAddr::V4(VPC_V4.0), VPC_V4.1).expect("allow v4");
    p.allow(IpAddr::V6(VPC_V6.0), VPC_V6.1).expect("allow v6");
    p.set_config(FilterConfig { flags }).expect("config");
    p
}

/// Runs every case, collecting every mismatch so one failure report lists them all.
fn check(program: &TestProgram, cases: &[Case]) {
    assert!(!cases.is_empty(), "a test without cases asserts nothing");
    let mut failures = Vec::new();
    for case in cases {
        let before = program.counters().expect("read counters");
        let run = program.run(&case.frame).expect("BPF_PROG_TEST_RUN");
        let after = program.counters().expect("read counters");
        let moved = after.moved_since(&before);
        let expected_moved = vec![(case.reason, case.family, 1)];
        let bytes =
            after.get(case.reason, case.family).bytes - before.get(case.reason, case.family).bytes;
        if run.retval != case.verdict || moved != expected_moved || bytes != case.frame.len() as u64
        {
            failures.push(format!(
                "{}: expected {} counted {}/{} (+{} bytes), got {} with counters moved {:?} (+{} bytes)",
                case.name,
                verdict_name(case.verdict),
                case.reason.name(),
                case.family.name(),
                case.frame.len(),
                verdict_name(run.retval),
                moved
                    .iter()
                    .map(|(r, f, n)| format!("{}/{} +{n}", r.name(), f.name()))
                    .collect::<Vec<_>>(),
                bytes,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn protected_ports_allowed_and_denied_v4_v6_tcp_udp() {
    let mut cases = Vec::new();
    for port in PROTECTED {
        for src in [Inside, Outside] {
            let want = protected(src);
            cases.push(Case::new(
                format!("v4 {src:?} tcp/{port}"),
                v4(src).tcp(port).build(),
                want,
                Ipv4,
            ));
            cases.push(Case::new(
                format!("v4 {src:?} udp/{port}"),
                v4(src).udp(port).build(),
                want,
                Ipv4,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} tcp/{port}"),
                v6(src).tcp(port).build(),
                want,
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} udp/{port}"),
                v6(src).udp(port).build(),
                want,
                Ipv6,
            ));
        }
    }
    check(&program(0), &cases);
}

#[test]
fn unprotected_ports_pass_from_anywhere() {
    let mut cases = Vec::new();
    // Neighbours of the protected ports, the bottom and the top of the port space.
    for port in [UNPROTECTED, HTTP - 1, HTTP + 1, GRPC + 1, 0, u16::MAX] {
        for src in [Inside, Outside] {
            cases.push(Case::new(
                format!("v4 {src:?} tcp/{port}"),
                v4(src).tcp(port).build(),
                UNPROTECTED_PASS,
                Ipv4,
            ));
            cases.push(Case::new(
                format!("v4 {src:?} udp/{port}"),
                v4(src).udp(port).build(),
                UNPROTECTED_PASS,
                Ipv4,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} tcp/{port}"),
                v6(src).tcp(port).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} udp/{port}"),
                v6(src).udp(port).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
        }
    }
    check(&program(0), &cases);
}

#[test]
fn vlan_and_qinq_tags_are_looked_through() {
    let tagged: [Wrap; 4] = [
        ("802.1Q", |f| f.vlan_8021q(10)),
        ("802.1ad", |f| f.vlan_8021ad(10)),
        ("QinQ 802.1ad+802.1Q", |f| f.vlan_8021ad(100).vlan_8021q(10)),
        ("double 802.1Q", |f| f.vlan_8021q(100).vlan_8021q(10)),
    ];
    let mut cases = Vec::new();
    for (tags, tag) in tagged {
        for src in [Inside, Outside] {
            cases.push(Case::new(
                format!("{tags} v4 {src:?} tcp/{HTTP}"),
                tag(v4(src).tcp(HTTP)).build(),
                protected(src),
                Ipv4,
            ));
            cases.push(Case::new(
                format!("{tags} v6 {src:?} udp/{GRPC}"),
                tag(v6(src).udp(GRPC)).build(),
                protected(src),
                Ipv6,
            ));
            cases.push(Case::new(
                format!("{tags} v4 {src:?} tcp/{UNPROTECTED}"),
                tag(v4(src).tcp(UNPROTECTED)).build(),
                UNPROTECTED_PASS,
                Ipv4,
            ));
        }
        cases.push(Case::new(
            format!("{tags} ARP"),
            tag(Frame::arp()).build(),
            UNPROTECTED_PASS,
            Other,
        ));
    }
    check(&program(0), &cases);
}

/// `count` tags, alternating 802.1ad and 802.1Q, the first a priority tag (VID 0).
fn tags(frame: Frame, count: usize) -> Frame {
    (0..count).fold(frame, |f, i| {
        if i % 2 == 0 {
            f.vlan_8021ad(i as u16)
        } else {
            f.vlan_8021q(i as u16)
        }
    })
}

/// One tag more than the program reads through.
fn too_many_tags(frame: Frame) -> Frame {
    tags(frame, MAX_VLAN_TAGS + 1)
}

#[test]
fn stacks_of_tags_up_to_the_bound_are_looked_through() {
    // The kernel strips any number of priority tags: QinQ plus a priority tag must work.
    let mut cases = Vec::new();
    for count in 3..=MAX_VLAN_TAGS {
        for src in [Inside, Outside] {
            cases.push(Case::new(
                format!("{count} tags v4 {src:?} tcp/{HTTP}"),
                tags(v4(src).tcp(HTTP), count).build(),
                protected(src),
                Ipv4,
            ));
            cases.push(Case::new(
                format!("{count} tags v6 {src:?} udp/{GRPC}"),
                tags(v6(src).udp(GRPC), count).build(),
                protected(src),
                Ipv6,
            ));
        }
    }
    check(&program(0), &cases);
}

#[test]
fn more_vlan_tags_than_the_bound_are_dropped_whatever_the_source() {
    let drop = (XDP_DROP, DropUnparseable);
    let cases = vec![
        // No source is known behind too many tags, so none is trusted.
        Case::new(
            "too many tags v4 Inside tcp/8000",
            too_many_tags(v4(Inside).tcp(HTTP)).build(),
            drop,
            Other,
        ),
        Case::new(
            "too many tags v4 Outside tcp/8000",
            too_many_tags(v4(Outside).tcp(HTTP)).build(),
            drop,
            Other,
        ),
        Case::new(
            "too many tags v6 Outside udp/9000",
            too_many_tags(v6(Outside).udp(GRPC)).build(),
            drop,
            Other,
        ),
        Case::new(
            "too many tags v4 Outside tcp/8080",
            too_many_tags(v4(Outside).tcp(UNPROTECTED)).build(),
            drop,
            Other,
        ),
        Case::new(
            "too many tags ARP",
            too_many_tags(Frame::arp()).build(),
            drop,
            Other,
        ),
    ];
    check(&program(0), &cases);
}

#[test]
fn ipv4_options_and_bad_header_lengths() {
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        cases.push(Case::new(
            format!("v4 {src:?} record-route option tcp/8000"),
            v4(src).ipv4_options(&OPT_RECORD_ROUTE).tcp(HTTP).build(),
            protected(src),
            Ipv4,
        ));
        cases.push(Case::new(
            format!("v4 {src:?} 40 bytes of options (IHL 15) udp/9000"),
            v4(src).ipv4_options(&OPT_MAX_NOPS).udp(GRPC).build(),
            protected(src),
            Ipv4,
        ));
        cases.push(Case::new(
            format!("v4 {src:?} 40 bytes of options tcp/8080"),
            v4(src).ipv4_options(&OPT_MAX_NOPS).tcp(UNPROTECTED).build(),
            UNPROTECTED_PASS,
            Ipv4,
        ));
        // IHL below 5: the kernel discards it; we cannot find a port.
        cases.push(Case::new(
            format!("v4 {src:?} IHL 4 tcp/8000"),
            v4(src).ihl(4).tcp(HTTP).build(),
            unknown_port(src),
            Ipv4,
        ));
        cases.push(Case::new(
            format!("v4 {src:?} IHL 0 tcp/8080"),
            v4(src).ihl(0).tcp(UNPROTECTED).build(),
            unknown_port(src),
            Ipv4,
        ));
        // IHL 15 without options: the header claims more bytes than the frame has.
        cases.push(Case::new(
            format!("v4 {src:?} IHL 15 past the end of the frame"),
            v4(src).ihl(15).tcp(HTTP).build(),
            unknown_port(src),
            Ipv4,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn ipv6_behind_each_extension_header() {
    let exts = [
        ("hop-by-hop", Ext::HopByHop),
        ("routing", Ext::Routing),
        ("destination options", Ext::DestOpts { extra_units: 0 }),
        (
            "destination options of 2048 bytes",
            Ext::DestOpts {
                extra_units: u8::MAX,
            },
        ),
        (
            "first fragment",
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ),
        ("AH", Ext::Ah),
    ];
    let mut cases = Vec::new();
    for (name, ext) in exts {
        for src in [Inside, Outside] {
            cases.push(Case::new(
                format!("v6 {src:?} {name} tcp/8000"),
                v6(src).ext(ext).tcp(HTTP).build(),
                protected(src),
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} {name} udp/9000"),
                v6(src).ext(ext).udp(GRPC).build(),
                protected(src),
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} {name} tcp/8080"),
                v6(src).ext(ext).tcp(UNPROTECTED).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
        }
    }
    // Every walkable kind in one chain, as the kernel would accept it.
    for src in [Inside, Outside] {
        let chain = v6(src)
            .ext(Ext::HopByHop)
            .ext(Ext::DestOpts { extra_units: 1 })
            .ext(Ext::Routing)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .ext(Ext::Ah)
            .ext(Ext::DestOpts { extra_units: 0 });
        cases.push(Case::new(
            format!("v6 {src:?} six-header chain tcp/8000"),
            chain.tcp(HTTP).build(),
            protected(src),
            Ipv6,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn ipv6_chain_at_and_beyond_the_bound() {
    let chain =
        |src: Src, n: usize| (0..n).fold(v6(src), |f, _| f.ext(Ext::DestOpts { extra_units: 0 }));
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        cases.push(Case::new(
            format!("v6 {src:?} {MAX_IPV6_EXT_HEADERS} extension headers (the bound) tcp/8000"),
            chain(src, MAX_IPV6_EXT_HEADERS).tcp(HTTP).build(),
            protected(src),
            Ipv6,
        ));
        cases.push(Case::new(
            format!("v6 {src:?} {MAX_IPV6_EXT_HEADERS} extension headers tcp/8080"),
            chain(src, MAX_IPV6_EXT_HEADERS).tcp(UNPROTECTED).build(),
            UNPROTECTED_PASS,
            Ipv6,
        ));
        // One more: the program stops looking, so even an unprotected port is unknown.
        for port in [HTTP, UNPROTECTED] {
            cases.push(Case::new(
                format!(
                    "v6 {src:?} {} extension headers (beyond the bound) tcp/{port}",
                    MAX_IPV6_EXT_HEADERS + 1
                ),
                chain(src, MAX_IPV6_EXT_HEADERS + 1).tcp(port).build(),
                unknown_port(src),
                Ipv6,
            ));
        }
    }
    check(&program(0), &cases);
}

#[test]
fn ipv6_unwalkable_extension_headers_and_other_upper_layers() {
    let unwalkable = [
        ("Mobility", proto::MOBILITY),
        ("HIP", proto::HIP),
        ("Shim6", proto::SHIM6),
        ("experimental 253", proto::EXPERIMENTAL_1),
        ("experimental 254", proto::EXPERIMENTAL_2),
    ];
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        for (name, value) in unwalkable {
            cases.push(Case::new(
                format!("v6 {src:?} {name} header then tcp/8000"),
                v6(src).ext(Ext::Other(value)).tcp(HTTP).build(),
                unknown_port(src),
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} hop-by-hop, {name} then tcp/8080"),
                v6(src)
                    .ext(Ext::HopByHop)
                    .ext(Ext::Other(value))
                    .tcp(UNPROTECTED)
                    .build(),
                unknown_port(src),
                Ipv6,
            ));
        }
        for (name, number) in [
            ("ESP", proto::ESP),
            ("no-next-header", proto::NONE),
            ("GRE", GRE),
        ] {
            cases.push(Case::new(
                format!("v6 {src:?} {name}"),
                v6(src).protocol(number).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} routing then {name}"),
                v6(src).ext(Ext::Routing).protocol(number).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
        }
        cases.push(Case::new(
            format!("v6 {src:?} ICMPv6 echo"),
            v6(src).icmp().build(),
            UNPROTECTED_PASS,
            Ipv6,
        ));
        cases.push(Case::new(
            format!("v6 {src:?} hop-by-hop then ICMPv6"),
            v6(src).ext(Ext::HopByHop).icmp().build(),
            UNPROTECTED_PASS,
            Ipv6,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn fragments_first_judged_by_port_later_ones_pass() {
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        cases.push(Case::new(
            format!("v4 {src:?} first fragment tcp/8000"),
            v4(src).ipv4_fragment(0, true).tcp(HTTP).build(),
            protected(src),
            Ipv4,
        ));
        cases.push(Case::new(
            format!("v4 {src:?} first fragment udp/8080"),
            v4(src).ipv4_fragment(0, true).udp(UNPROTECTED).build(),
            UNPROTECTED_PASS,
            Ipv4,
        ));
        // Whatever its payload looks like, a later fragment carries no port.
        for more in [true, false] {
            cases.push(Case::new(
                format!("v4 {src:?} later fragment (more={more}) bytes look like tcp/8000"),
                v4(src)
                    .ipv4_fragment(LATER_FRAGMENT, more)
                    .tcp(HTTP)
                    .build(),
                UNPROTECTED_PASS,
                Ipv4,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} later fragment (more={more}) bytes look like tcp/8000"),
                v6(src)
                    .ext(Ext::Fragment {
                        offset: LATER_FRAGMENT,
                        more,
                    })
                    .tcp(HTTP)
                    .build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
        }
        cases.push(Case::new(
            format!("v6 {src:?} first fragment udp/9000"),
            v6(src)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .udp(GRPC)
                .build(),
            protected(src),
            Ipv6,
        ));
        cases.push(Case::new(
            format!("v6 {src:?} hop-by-hop, later fragment"),
            v6(src)
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment {
                    offset: LATER_FRAGMENT,
                    more: true,
                })
                .tcp(HTTP)
                .build(),
            UNPROTECTED_PASS,
            Ipv6,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn arp_icmp_and_other_ethertypes_pass() {
    let mut cases = vec![
        Case::new("ARP request", Frame::arp().build(), UNPROTECTED_PASS, Other),
        Case::new(
            "LLDP",
            Frame::ethertype(LLDP).build(),
            UNPROTECTED_PASS,
            Other,
        ),
    ];
    for src in [Inside, Outside] {
        cases.push(Case::new(
            format!("v4 {src:?} ICMP echo"),
            v4(src).icmp().build(),
            UNPROTECTED_PASS,
            Ipv4,
        ));
        cases.push(Case::new(
            format!("v4 {src:?} ESP"),
            v4(src).protocol(proto::ESP).build(),
            UNPROTECTED_PASS,
            Ipv4,
        ));
        cases.push(Case::new(
            format!("v4 {src:?} GRE"),
            v4(src).protocol(GRE).build(),
            UNPROTECTED_PASS,
            Ipv4,
        ));
    }
    check(&program(0), &cases);
}

/// The verdict for `frame` cut to `len` bytes, from where its layers start: what
/// docs/filter.md says, computed independently of the program. A cut frame holds fewer bytes
/// than its IP header declares, which the kernel drops: only the whole frame has a known port.
fn expected_at(
    len: usize,
    frame: &Frame,
    family: Family,
    src: Src,
    port_verdict: (u32, Reason),
) -> ((u32, Reason), Family) {
    let layout = frame.layout();
    if len < layout.l3 {
        // Ethernet or a tag cut short: nothing is known.
        return ((XDP_DROP, DropUnparseable), Other);
    }
    let fixed_header = match family {
        Ipv4 => wire::IPV4_MIN_HLEN,
        Ipv6 => wire::IPV6_HLEN,
        Other => return (UNPROTECTED_PASS, Other),
    };
    if len < layout.l3 + fixed_header {
        return ((XDP_DROP, DropUnparseable), family);
    }
    if len < frame.build().len() {
        return (unknown_port(src), family);
    }
    (port_verdict, family)
}

#[test]
fn frames_cut_at_every_length() {
    let program = program(0);
    // The shortest input the kernel accepts: below it BPF_PROG_TEST_RUN refuses the frame,
    // above it every length must get a verdict.
    for len in 0..MIN_DATA_LEN {
        assert!(
            program.run(&Frame::arp().truncate(len).build()).is_err(),
            "the kernel accepted a {len}-byte frame; MIN_DATA_LEN is wrong"
        );
    }
    let shapes: Vec<Shape> = vec![
        ("v4 tcp/8000", Ipv4, |s| v4(s).tcp(HTTP)),
        ("v4 udp/9000", Ipv4, |s| v4(s).udp(GRPC)),
        ("v4 tcp/8080", Ipv4, |s| v4(s).tcp(UNPROTECTED)),
        ("v4 options tcp/8000", Ipv4, |s| {
            v4(s).ipv4_options(&OPT_RECORD_ROUTE).tcp(HTTP)
        }),
        ("QinQ v4 tcp/8000", Ipv4, |s| {
            v4(s).tcp(HTTP).vlan_8021ad(100).vlan_8021q(10)
        }),
        ("v6 tcp/8000", Ipv6, |s| v6(s).tcp(HTTP)),
        ("v6 udp/8080", Ipv6, |s| v6(s).udp(UNPROTECTED)),
        ("802.1Q v6 udp/9000", Ipv6, |s| {
            v6(s).udp(GRPC).vlan_8021q(10)
        }),
        ("v6 hop-by-hop, fragment, AH tcp/8000", Ipv6, |s| {
            v6(s)
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .ext(Ext::Ah)
                .tcp(HTTP)
        }),
        ("802.1Q ARP", Other, |_| Frame::arp().vlan_8021q(10)),
    ];
    let mut cases = Vec::new();
    let mut lengths = 0;
    for (name, family, shape) in &shapes {
        for src in [Inside, Outside] {
            let frame = shape(src);
            let full = frame.build();
            let l4 = frame.layout().l4;
            let port_verdict = match family {
                Other => UNPROTECTED_PASS,
                _ if PROTECTED.contains(&u16::from_be_bytes([full[l4 + 2], full[l4 + 3]])) => {
                    protected(src)
                }
                _ => UNPROTECTED_PASS,
            };
            for len in MIN_DATA_LEN..=full.len() {
                let (want, fam) = expected_at(len, &frame, *family, src, port_verdict);
                // The property the table encodes: a source outside the VPC never passes
                // while the port is unknown.
                if src == Outside && *family != Other && len < frame.headers_len() {
                    assert_eq!(
                        want.0, XDP_DROP,
                        "{name}: the expectation itself would let a denied source pass"
                    );
                }
                cases.push(Case::new(
                    format!("{name} {src:?} cut to {len} of {} bytes", full.len()),
                    frame.clone().truncate(len).build(),
                    want,
                    fam,
                ));
                lengths += 1;
            }
        }
    }
    assert!(
        lengths > 500,
        "expected every length of every shape, built {lengths}"
    );
    check(&program, &cases);
}

#[test]
fn audit_mode_passes_and_counts_what_it_would_drop() {
    let audit = (XDP_PASS, AuditWouldDrop);
    let cases = vec![
        Case::new(
            "audit v4 Outside tcp/8000",
            v4(Outside).tcp(HTTP).build(),
            audit,
            Ipv4,
        ),
        Case::new(
            "audit v6 Outside udp/9000",
            v6(Outside).udp(GRPC).build(),
            audit,
            Ipv6,
        ),
        Case::new(
            "audit v4 Outside cut before the port",
            v4(Outside).tcp(HTTP).truncate(36).build(),
            audit,
            Ipv4,
        ),
        Case::new(
            "audit v4 cut before the source",
            v4(Outside).tcp(HTTP).truncate(20).build(),
            audit,
            Ipv4,
        ),
        Case::new(
            "audit v6 Outside beyond the chain bound",
            (0..=MAX_IPV6_EXT_HEADERS)
                .fold(v6(Outside), |f, _| f.ext(Ext::HopByHop))
                .tcp(HTTP)
                .build(),
            audit,
            Ipv6,
        ),
        Case::new(
            "audit too many tags",
            too_many_tags(v4(Outside).tcp(HTTP)).build(),
            audit,
            Other,
        ),
        // What would pass anyway is counted as usual.
        Case::new(
            "audit v4 Inside tcp/8000",
            v4(Inside).tcp(HTTP).build(),
            (XDP_PASS, PassAllowed),
            Ipv4,
        ),
        Case::new(
            "audit v6 Outside tcp/8080",
            v6(Outside).tcp(UNPROTECTED).build(),
            UNPROTECTED_PASS,
            Ipv6,
        ),
        Case::new("audit ARP", Frame::arp().build(), UNPROTECTED_PASS, Other),
    ];
    check(&program(FilterConfig::FLAG_AUDIT), &cases);
}

#[test]
fn debug_logging_does_not_change_verdicts() {
    // Nobody reads the log ring here: logging must neither fail the program nor alter it.
    for flags in [
        FilterConfig::FLAG_LOG,
        FilterConfig::FLAG_LOG | FilterConfig::FLAG_AUDIT,
    ] {
        let audit = flags & FilterConfig::FLAG_AUDIT != 0;
        let dropped = |reason| {
            if audit {
                (XDP_PASS, AuditWouldDrop)
            } else {
                (XDP_DROP, reason)
            }
        };
        let cases = vec![
            Case::new(
                format!("log flags={flags} v4 Inside tcp/8000"),
                v4(Inside).tcp(HTTP).build(),
                (XDP_PASS, PassAllowed),
                Ipv4,
            ),
            Case::new(
                format!("log flags={flags} v4 Outside tcp/8000"),
                v4(Outside).tcp(HTTP).build(),
                dropped(DropOutsideVpc),
                Ipv4,
            ),
            Case::new(
                format!("log flags={flags} v6 Outside cut before the port"),
                v6(Outside).tcp(HTTP).truncate(56).build(),
                dropped(DropUnparseable),
                Ipv6,
            ),
            Case::new(
                format!("log flags={flags} v6 Outside tcp/8080"),
                v6(Outside).tcp(UNPROTECTED).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ),
        ];
        check(&program(flags), &cases);
    }
}

#[test]
fn allow_list_is_longest_prefix_match_per_family() {
    let mut p = program(0);
    // A host route outside the /24 and a /128 outside the /64.
    let host_v4 = Ipv4Addr::new(198, 19, 7, 7);
    let host_v6 = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 7);
    p.allow(IpAddr::V4(host_v4), 32).unwrap();
    p.allow(IpAddr::V6(host_v6), 128).unwrap();
    let cases = vec![
        Case::new(
            "v4 /32 host",
            Frame::ipv4(host_v4, SERVER_V4).tcp(HTTP).build(),
            (XDP_PASS, PassAllowed),
            Ipv4,
        ),
        Case::new(
            "v4 neighbour of the /32",
            Frame::ipv4(Ipv4Addr::new(198, 19, 7, 8), SERVER_V4)
                .tcp(HTTP)
                .build(),
            (XDP_DROP, DropOutsideVpc),
            Ipv4,
        ),
        Case::new(
            "v4 last address of the /24",
            Frame::ipv4(Ipv4Addr::new(198, 18, 0, 255), SERVER_V4)
                .tcp(HTTP)
                .build(),
            (XDP_PASS, PassAllowed),
            Ipv4,
        ),
        Case::new(
            "v6 /128 host",
            Frame::ipv6(host_v6, SERVER_V6).udp(GRPC).build(),
            (XDP_PASS, PassAllowed),
            Ipv6,
        ),
        Case::new(
            "v6 neighbour of the /128",
            Frame::ipv6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 8), SERVER_V6)
                .udp(GRPC)
                .build(),
            (XDP_DROP, DropOutsideVpc),
            Ipv6,
        ),
        // The v4 list says nothing about IPv4-mapped IPv6 sources.
        Case::new(
            "v6 IPv4-mapped address of an allowed v4 host",
            Frame::ipv6(host_v4.to_ipv6_mapped(), SERVER_V6)
                .tcp(HTTP)
                .build(),
            (XDP_DROP, DropOutsideVpc),
            Ipv6,
        ),
    ];
    check(&p, &cases);
}

#[test]
fn empty_allow_list_and_no_ports_fail_closed_only_where_protected() {
    // A fresh instance: no port protected, nothing allowed, default config.
    let mut p = TestProgram::load().expect("load");
    let before = vec![
        Case::new(
            "no ports: v4 Outside tcp/8000",
            v4(Outside).tcp(HTTP).build(),
            UNPROTECTED_PASS,
            Ipv4,
        ),
        Case::new(
            "no ports: v4 Outside cut before the port",
            v4(Outside).tcp(HTTP).truncate(36).build(),
            (XDP_DROP, DropUnparseable),
            Ipv4,
        ),
    ];
    check(&p, &before);
    p.protect_port(HTTP).unwrap();
    let after = vec![
        Case::new(
            "empty list: v4 Inside tcp/8000",
            v4(Inside).tcp(HTTP).build(),
            (XDP_DROP, DropOutsideVpc),
            Ipv4,
        ),
        Case::new(
            "empty list: v6 Inside tcp/8000",
            v6(Inside).tcp(HTTP).build(),
            (XDP_DROP, DropOutsideVpc),
            Ipv6,
        ),
    ];
    check(&p, &after);
}

#[test]
fn instances_do_not_share_maps() {
    let a = program(0);
    let b = TestProgram::load().expect("load a second instance");
    assert_ne!(a.pin_dir(), b.pin_dir());
    // b has no protected port: the packet a drops, b passes.
    let frame = v4(Outside).tcp(HTTP).build();
    assert_eq!(a.run(&frame).unwrap().retval, XDP_DROP);
    assert_eq!(b.run(&frame).unwrap().retval, XDP_PASS);
    let dir = a.pin_dir().to_owned();
    drop(a);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn test_run_reports_the_verdict_and_the_packet() {
    use serve_guard::filter::test_run::test_run;
    use serve_guard_tests::program::load_verdict_program;
    use std::os::fd::AsFd as _;
    let frame = v4(Outside).tcp(HTTP).build();
    for verdict in [XDP_PASS, XDP_DROP] {
        let program = load_verdict_program(verdict).expect("load a raw XDP program");
        let run = test_run(program.as_fd(), &frame, 1).expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            run.retval,
            verdict,
            "raw program returning {}",
            verdict_name(verdict)
        );
        assert_eq!(run.data_out_len as usize, frame.len());
        assert_eq!(run.data_out, frame, "the program does not touch the packet");
    }
}

// Issue 7: the program judges exactly the bytes the kernel keeps. Named regression frames for
// the wave-1 bypass and its relatives: lengths that lie, first fragments that stop short of the
// transport header, other port protocols.

/// `frame` with its IP header declaring `len` (IPv4: total length, IPv6: payload length); an
/// IPv4 checksum stays correct (the kernel would drop a bad one, so a lie must be well-formed
/// to be a real attack).
fn declaring(frame: &Frame, len: usize) -> Vec<u8> {
    let mut built = frame.built();
    built.set_declared_len(len as u16);
    built.frame
}

/// The wave-1 bypass, byte for byte as reported: a first fragment whose declared payload ends
/// inside the fragmentable part (after one destination-options header), followed by two bytes
/// beyond the declared length that fake "no next header". The kernel trims them, reassembles
/// with the next fragment and delivers to the port behind the second options header.
fn fragment_bypass_first(src: Src, transport: fn(Frame) -> Frame) -> Vec<u8> {
    const NO_NEXT_HEADER_TRAILER: [u8; 2] = [proto::NONE, 0];
    let frame = transport(
        v6(src)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .ext(Ext::DestOpts { extra_units: 0 })
            .ext(Ext::DestOpts { extra_units: 0 }),
    );
    let mut built = frame.built();
    let declared_end =
        built.layout.l3 + wire::IPV6_HLEN + wire::IPV6_FRAG_HLEN + wire::IPV6_EXT_UNIT;
    built.declare_end(declared_end);
    built.frame.truncate(declared_end);
    built.frame.extend_from_slice(&NO_NEXT_HEADER_TRAILER);
    built.frame
}

#[test]
fn regression_ipv6_fragment_trailer_bypass() {
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        cases.push(Case::new(
            format!("issue 7 bypass, UDP, {src:?}"),
            fragment_bypass_first(src, |f| f.udp(HTTP)),
            unknown_port(src),
            Ipv6,
        ));
        cases.push(Case::new(
            format!("issue 7 bypass, TCP, {src:?}"),
            fragment_bypass_first(src, |f| f.tcp(HTTP)),
            unknown_port(src),
            Ipv6,
        ));
        // The same first fragment without the trailer: its chain ends at the declared end.
        let mut no_trailer = fragment_bypass_first(src, |f| f.udp(HTTP));
        no_trailer.truncate(no_trailer.len() - 2);
        cases.push(Case::new(
            format!("issue 7 bypass without the trailer, {src:?}"),
            no_trailer,
            unknown_port(src),
            Ipv6,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn declared_lengths_bound_every_read() {
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        // Ethernet pads short frames: bytes past the declared length are ignored, the port in
        // front of them counts.
        let mut padded = v4(src).udp(HTTP).build();
        padded.extend_from_slice(&[0; 16]);
        cases.push(Case::new(
            format!("v4 {src:?} udp/8000 with Ethernet padding"),
            padded,
            protected(src),
            Ipv4,
        ));
        let mut padded = v6(src).udp(UNPROTECTED).build();
        padded.extend_from_slice(&[0; 16]);
        cases.push(Case::new(
            format!("v6 {src:?} udp/8080 with Ethernet padding"),
            padded,
            UNPROTECTED_PASS,
            Ipv6,
        ));

        // IPv4 whose total length ends inside the TCP header: the port bytes exist in the
        // frame but the kernel trims them away.
        cases.push(Case::new(
            format!("v4 {src:?} total length ends inside the TCP header"),
            declaring(
                &v4(src).tcp(UNPROTECTED),
                wire::IPV4_MIN_HLEN + wire::UDP_HLEN,
            ),
            unknown_port(src),
            Ipv4,
        ));
        // Total length below the header, and beyond the frame.
        for (what, len) in [("below its IHL", 19), ("beyond the frame", 1500)] {
            cases.push(Case::new(
                format!("v4 {src:?} total length {what}"),
                declaring(&v4(src).udp(UNPROTECTED), len),
                unknown_port(src),
                Ipv4,
            ));
        }

        // IPv6: payload length zero (jumbogram or empty), beyond the frame, and ending inside
        // an extension header whose real end is in the frame.
        for (what, len) in [("zero", 0), ("beyond the frame", 1400)] {
            cases.push(Case::new(
                format!("v6 {src:?} payload length {what}"),
                declaring(&v6(src).udp(UNPROTECTED), len),
                unknown_port(src),
                Ipv6,
            ));
        }
        let inside_ext = declaring(
            &v6(src)
                .ext(Ext::DestOpts { extra_units: 1 })
                .udp(UNPROTECTED),
            wire::IPV6_EXT_UNIT,
        );
        cases.push(Case::new(
            format!("v6 {src:?} payload ends inside a destination-options header"),
            inside_ext,
            unknown_port(src),
            Ipv6,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn first_fragments_must_hold_the_whole_transport_header() {
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        // 8 bytes of TCP in an IPv4 first fragment: the port is there, but not the header.
        let tiny = declaring(
            &v4(src).ipv4_fragment(0, true).tcp(UNPROTECTED),
            wire::IPV4_MIN_HLEN + wire::IPV6_FRAG_HLEN,
        );
        cases.push(Case::new(
            format!("v4 {src:?} first fragment with 8 bytes of TCP"),
            tiny,
            unknown_port(src),
            Ipv4,
        ));
        // The same 8 bytes of UDP are the whole UDP header: judged by its port.
        let udp = declaring(
            &v4(src).ipv4_fragment(0, true).udp(HTTP),
            wire::IPV4_MIN_HLEN + wire::UDP_HLEN,
        );
        cases.push(Case::new(
            format!("v4 {src:?} first fragment with exactly the UDP header, udp/8000"),
            udp,
            protected(src),
            Ipv4,
        ));
        // An IPv6 first fragment cut inside the UDP header.
        let cut = declaring(
            &v6(src)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .udp(UNPROTECTED),
            wire::IPV6_FRAG_HLEN + 4,
        );
        cases.push(Case::new(
            format!("v6 {src:?} first fragment cut inside the UDP header"),
            cut,
            unknown_port(src),
            Ipv6,
        ));
    }
    check(&program(0), &cases);
}

#[test]
fn every_port_protocol_is_judged_by_its_port() {
    let mut cases = Vec::new();
    for (name, number) in OTHER_PORT_PROTOCOLS {
        for src in [Inside, Outside] {
            cases.push(Case::new(
                format!("v4 {src:?} {name}/{HTTP}"),
                v4(src).port_protocol(number, HTTP).build(),
                protected(src),
                Ipv4,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} routing then {name}/{GRPC}"),
                v6(src)
                    .ext(Ext::Routing)
                    .port_protocol(number, GRPC)
                    .build(),
                protected(src),
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} {name}/{UNPROTECTED}"),
                v6(src).port_protocol(number, UNPROTECTED).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
        }
    }
    check(&program(0), &cases);
}

#[test]
fn ip_behind_a_routing_header_is_unknown() {
    // With seg6_enabled the kernel decapsulates an SRv6 packet whose last segment is local and
    // re-injects the inner packet behind XDP: its port cannot be known.
    let mut cases = Vec::new();
    for src in [Inside, Outside] {
        for (name, inner) in [("IPv4", proto::IPIP), ("IPv6", proto::IPV6)] {
            cases.push(Case::new(
                format!("v6 {src:?} routing header then {name}"),
                v6(src).ext(Ext::Routing).protocol(inner).build(),
                unknown_port(src),
                Ipv6,
            ));
            cases.push(Case::new(
                format!("v6 {src:?} destination options, routing, fragment then {name}"),
                v6(src)
                    .ext(Ext::DestOpts { extra_units: 0 })
                    .ext(Ext::Routing)
                    .ext(Ext::Fragment {
                        offset: 0,
                        more: false,
                    })
                    .protocol(inner)
                    .build(),
                unknown_port(src),
                Ipv6,
            ));
            // Without a routing header only a tunnel device decapsulates: named by `status`.
            cases.push(Case::new(
                format!("v6 {src:?} {name} in IPv6 without a routing header"),
                v6(src).protocol(inner).build(),
                UNPROTECTED_PASS,
                Ipv6,
            ));
        }
    }
    check(&program(0), &cases);
}

// Guarded ports (issue 16): the rest of the node, with `guard = "node"`. From outside the
// allow-list nothing may open a connection (a TCP SYN without ACK, with Fast Open data or not) or
// reach a listening or unconnected socket; the packets of the node's own connections pass. The
// program asks the kernel's socket tables of the namespace the packet arrives in: for
// BPF_PROG_TEST_RUN, the calling thread's. So these tests run in a namespace of their own with
// real sockets, and a known table.

mod guarded {
    use super::*;
    use serve_guard_common::{PORT_GUARDED, PORT_OPEN, PORT_PROTECTED, PortValue};
    use serve_guard_tests::{frames::tcp, fuzz::scenario::connect_from, netns::Netns};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

    use Reason::{DropGuarded, PassReply};

    /// Ray's GCS: a listener on the server's address.
    const GCS: u16 = 6379;
    /// A UDP server (statsd-like) bound, not connected.
    const UDP_SERVER: u16 = 8125;
    /// A guarded port nothing listens on.
    const NOTHING: u16 = 10_005;
    const SSH: u16 = 22;
    /// The outside web server the node downloads from, and the resolver it asks.
    const WEB: u16 = 443;
    const DNS: u16 = 53;
    /// Another outside address: the resolver.
    const RESOLVER_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 53);
    const RESOLVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x53);

    /// The namespace: the server's and the outside hosts' addresses on its loopback, and the
    /// node's sockets, per family: a listener on the GCS port, an unconnected UDP socket, the
    /// node's own TCP connection to an outside web server (whose listener is here too: both ends
    /// must be local) and its UDP socket connected to the outside resolver.
    struct Node {
        ns: Netns,
        /// The node's ends: (connection to WEB, connected UDP socket) local ports per family.
        own_tcp: [u16; 2],
        own_udp: [u16; 2],
        _keep: (Vec<TcpListener>, Vec<TcpStream>, Vec<UdpSocket>),
    }

    fn family_addrs(family: Family) -> (IpAddr, IpAddr, IpAddr, IpAddr) {
        match family {
            Ipv4 => (
                SERVER_V4.into(),
                OUTSIDE_V4.into(),
                RESOLVER_V4.into(),
                INSIDE_V4.into(),
            ),
            _ => (
                SERVER_V6.into(),
                OUTSIDE_V6.into(),
                RESOLVER_V6.into(),
                INSIDE_V6.into(),
            ),
        }
    }

    impl Node {
        fn new() -> Self {
            let ns = Netns::new("vg").expect("namespace");
            for (addr, len) in [
                (SERVER_V4.to_string(), "32"),
                (OUTSIDE_V4.to_string(), "32"),
                (SERVER_V6.to_string(), "128"),
                (OUTSIDE_V6.to_string(), "128"),
                (RESOLVER_V4.to_string(), "32"),
                (RESOLVER_V6.to_string(), "128"),
            ] {
                ns.add_loopback_address(&format!("{addr}/{len}"))
                    .expect("address");
            }
            let (own_tcp, own_udp, keep) = ns
                .run(|| {
                    let mut listeners = Vec::new();
                    let mut streams = Vec::new();
                    let mut udp = Vec::new();
                    let mut own_tcp = [0; 2];
                    let mut own_udp = [0; 2];
                    for (i, family) in [Ipv4, Ipv6].into_iter().enumerate() {
                        let (server, outside, resolver, _) = family_addrs(family);
                        listeners.push(TcpListener::bind((server, GCS)).expect("GCS listener"));
                        udp.push(UdpSocket::bind((server, UDP_SERVER)).expect("UDP server"));
                        let web = TcpListener::bind((outside, WEB)).expect("web listener");
                        // Bound first: to a local destination the kernel would pick it as
                        // the source too.
                        let node_end =
                            connect_from(SocketAddr::new(server, 0), SocketAddr::new(outside, WEB))
                                .expect("connect");
                        own_tcp[i] = node_end.local_addr().unwrap().port();
                        let (web_end, _) = web.accept().expect("accept");
                        streams.extend([node_end, web_end]);
                        listeners.push(web);
                        let client = UdpSocket::bind((server, 0)).expect("UDP client");
                        client
                            .connect(SocketAddr::new(resolver, DNS))
                            .expect("UDP connect");
                        own_udp[i] = client.local_addr().unwrap().port();
                        udp.push(client);
                    }
                    (own_tcp, own_udp, (listeners, streams, udp))
                })
                .expect("entering the namespace");
            Node {
                ns,
                own_tcp,
                own_udp,
                _keep: keep,
            }
        }

        fn check(&self, program: &TestProgram, cases: &[Case]) {
            self.ns
                .run(|| check(program, cases))
                .expect("entering the namespace");
        }
    }

    /// `guard = "node"`: every port guarded but SSH (open) and Serve's (strict).
    fn node_program(flags: u32) -> TestProgram {
        let mut table: Vec<PortValue> = vec![PORT_GUARDED; 1 << 16];
        table[usize::from(SSH)] = PORT_OPEN;
        for port in PROTECTED {
            table[usize::from(port)] = PORT_PROTECTED;
        }
        let mut p = program(flags);
        p.set_port_classes(&table).expect("port classes");
        p
    }

    fn frame(src: IpAddr, dst: IpAddr) -> Frame {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Frame::ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => Frame::ipv6(s, d),
            _ => unreachable!("one family"),
        }
    }

    const DROP_GUARDED: (u32, Reason) = (XDP_DROP, DropGuarded);
    const PASS_REPLY: (u32, Reason) = (XDP_PASS, PassReply);

    /// The attacks and the replies, per family, as `(name, frame, verdict)`.
    fn cases(node: &Node) -> Vec<Case> {
        let mut cases = Vec::new();
        for (i, family) in [Ipv4, Ipv6].into_iter().enumerate() {
            let (server, outside, resolver, inside) = family_addrs(family);
            let f = family.name();
            let tcp_in = |src: IpAddr, sport: u16, dport: u16, flags: u8| {
                frame(src, server)
                    .src_port(sport)
                    .tcp(dport)
                    .tcp_flags(flags)
                    .build()
            };
            let udp_in = |src: IpAddr, sport: u16, dport: u16| {
                frame(src, server).src_port(sport).udp(dport).build()
            };
            let (own_tcp, own_udp) = (node.own_tcp[i], node.own_udp[i]);
            let mut push = |name: &str, bytes: Vec<u8>, want: (u32, Reason)| {
                cases.push(Case::new(format!("{f} {name}"), bytes, want, family));
            };
            // Opening a connection: refused before any lookup, listener or not.
            push(
                "SYN to the GCS listener",
                tcp_in(outside, 40_000, GCS, tcp::SYN),
                DROP_GUARDED,
            );
            push(
                "Fast Open SYN with data to the GCS listener",
                tcp_in(outside, 40_000, GCS, tcp::SYN | tcp::PSH),
                DROP_GUARDED,
            );
            push(
                "SYN with ECN setup",
                tcp_in(outside, 40_000, GCS, tcp::SYN | tcp::ECE | tcp::CWR),
                DROP_GUARDED,
            );
            push(
                "SYN+FIN",
                tcp_in(outside, 40_000, GCS, tcp::SYN | tcp::FIN),
                DROP_GUARDED,
            );
            push(
                "SYN+RST",
                tcp_in(outside, 40_000, GCS, tcp::SYN | tcp::RST),
                DROP_GUARDED,
            );
            push(
                "SYN to a port nothing listens on",
                tcp_in(outside, 40_000, NOTHING, tcp::SYN),
                DROP_GUARDED,
            );
            push(
                "simultaneous open: a SYN to the node's own connection",
                tcp_in(outside, WEB, own_tcp, tcp::SYN),
                DROP_GUARDED,
            );
            // Reaching the listener without a SYN: a guessed SYN cookie, an ACK scan, the rest.
            push(
                "bare ACK to the GCS listener (the SYN-cookie path)",
                tcp_in(outside, 40_000, GCS, tcp::ACK),
                DROP_GUARDED,
            );
            push(
                "data (PSH+ACK) to the GCS listener",
                tcp_in(outside, 40_000, GCS, tcp::PSH | tcp::ACK),
                DROP_GUARDED,
            );
            push(
                "SYN+ACK to the GCS listener",
                tcp_in(outside, 40_000, GCS, tcp::SYN | tcp::ACK),
                DROP_GUARDED,
            );
            push(
                "RST to the GCS listener",
                tcp_in(outside, 40_000, GCS, tcp::RST),
                DROP_GUARDED,
            );
            push(
                "FIN to the GCS listener",
                tcp_in(outside, 40_000, GCS, tcp::FIN),
                DROP_GUARDED,
            );
            push(
                "no flags to the GCS listener",
                tcp_in(outside, 40_000, GCS, 0),
                DROP_GUARDED,
            );
            push(
                "every flag but SYN",
                tcp_in(outside, 40_000, GCS, !tcp::SYN),
                DROP_GUARDED,
            );
            // The node's own connection: replies pass.
            push(
                "SYN+ACK answering the node's connection",
                tcp_in(outside, WEB, own_tcp, tcp::SYN | tcp::ACK),
                PASS_REPLY,
            );
            push(
                "ACK of the node's connection",
                tcp_in(outside, WEB, own_tcp, tcp::ACK),
                PASS_REPLY,
            );
            push(
                "data of the node's connection",
                tcp_in(outside, WEB, own_tcp, tcp::PSH | tcp::ACK),
                PASS_REPLY,
            );
            push(
                "FIN of the node's connection",
                tcp_in(outside, WEB, own_tcp, tcp::FIN | tcp::ACK),
                PASS_REPLY,
            );
            push(
                "RST of the node's connection",
                tcp_in(outside, WEB, own_tcp, tcp::RST),
                PASS_REPLY,
            );
            // No socket: the kernel answers with a reset (or the packet is forwarded elsewhere).
            push(
                "ACK to a port nothing listens on",
                tcp_in(outside, 40_000, NOTHING, tcp::ACK),
                PASS_REPLY,
            );
            push(
                "ACK to the node's port from another peer",
                tcp_in(resolver, WEB, own_tcp, tcp::ACK),
                PASS_REPLY,
            );
            // UDP: an unconnected socket takes anyone's datagram; a connected one only its peer's.
            push(
                "UDP to the unconnected socket",
                udp_in(outside, 40_000, UDP_SERVER),
                DROP_GUARDED,
            );
            push(
                "UDP answer from the resolver",
                udp_in(resolver, DNS, own_udp),
                PASS_REPLY,
            );
            push(
                "UDP to the resolver client's port from another host",
                udp_in(outside, DNS, own_udp),
                PASS_REPLY,
            );
            push(
                "UDP to the resolver client's port from another source port",
                udp_in(resolver, DNS + 1, own_udp),
                PASS_REPLY,
            );
            push(
                "UDP to a port with no socket",
                udp_in(outside, 40_000, NOTHING),
                PASS_REPLY,
            );
            // No lookup helper: nothing passes.
            for (name, number) in OTHER_PORT_PROTOCOLS {
                push(
                    &format!("{name} to a guarded port"),
                    frame(outside, server)
                        .port_protocol(number, NOTHING)
                        .build(),
                    DROP_GUARDED,
                );
                push(
                    &format!("{name} from the resolver to the node's UDP port"),
                    frame(resolver, server)
                        .src_port(DNS)
                        .port_protocol(number, own_udp)
                        .build(),
                    DROP_GUARDED,
                );
            }
            // The other classes and sources, unchanged.
            push(
                "SYN to SSH (open)",
                tcp_in(outside, 40_000, SSH, tcp::SYN),
                UNPROTECTED_PASS,
            );
            push(
                "ACK to Serve (strict)",
                tcp_in(outside, 40_000, HTTP, tcp::ACK),
                protected(Outside),
            );
            push(
                "reply-looking ACK to Serve (strict)",
                tcp_in(outside, WEB, HTTP, tcp::SYN | tcp::ACK),
                protected(Outside),
            );
            push(
                "SYN from inside to the GCS listener",
                tcp_in(inside, 40_000, GCS, tcp::SYN),
                (XDP_PASS, PassAllowed),
            );
            push(
                "UDP from inside to the unconnected socket",
                udp_in(inside, 40_000, UDP_SERVER),
                (XDP_PASS, PassAllowed),
            );
            push(
                "ICMP echo",
                frame(outside, server).icmp().build(),
                UNPROTECTED_PASS,
            );
            push(
                "SYN to the GCS listener behind a VLAN tag",
                frame(outside, server).tcp(GCS).vlan_8021q(7).build(),
                DROP_GUARDED,
            );
            push(
                "a later fragment to a guarded port",
                match family {
                    Ipv4 => v4(Outside)
                        .ipv4_fragment(LATER_FRAGMENT, false)
                        .tcp(GCS)
                        .build(),
                    _ => v6(Outside)
                        .ext(Ext::Fragment {
                            offset: LATER_FRAGMENT,
                            more: false,
                        })
                        .tcp(GCS)
                        .build(),
                },
                UNPROTECTED_PASS,
            );
            push(
                "SYN cut before the flags",
                frame(outside, server)
                    .tcp(GCS)
                    .truncate(frame(outside, server).tcp(GCS).layout().l4 + 13)
                    .build(),
                unknown_port(Outside),
            );
        }
        cases
    }

    #[test]
    fn guarded_ports_refuse_new_connections_and_listeners_and_pass_replies() {
        let node = Node::new();
        node.check(&node_program(0), &cases(&node));
    }

    /// Audit mode: every drop of a guarded port is counted as `audit_would_drop` and passed;
    /// what passes anyway is counted as usual.
    #[test]
    fn audit_mode_passes_what_guarded_ports_would_drop() {
        let node = Node::new();
        let cases: Vec<Case> = cases(&node)
            .into_iter()
            .map(|mut c| {
                if c.verdict == XDP_DROP {
                    c.name = format!("audit {}", c.name);
                    c.verdict = XDP_PASS;
                    c.reason = AuditWouldDrop;
                }
                c
            })
            .collect();
        assert!(cases.iter().any(|c| c.reason == AuditWouldDrop));
        assert!(cases.iter().any(|c| c.reason == PassReply));
        node.check(&node_program(FilterConfig::FLAG_AUDIT), &cases);
    }

    /// The lookups search the namespace the packet arrives in: the same ACK to the GCS port is a
    /// reply where no listener exists.
    #[test]
    fn lookups_search_the_arrival_namespace() {
        let node = Node::new();
        let empty = Netns::new("ve").expect("namespace");
        let program = node_program(0);
        for family in [Ipv4, Ipv6] {
            let (server, outside, ..) = family_addrs(family);
            let ack = frame(outside, server)
                .src_port(40_000)
                .tcp(GCS)
                .tcp_flags(tcp::ACK)
                .build();
            let name = |ns: &str| format!("{} ACK to the GCS port, {ns}", family.name());
            node.check(
                &program,
                &[Case::new(
                    name("listener"),
                    ack.clone(),
                    DROP_GUARDED,
                    family,
                )],
            );
            empty
                .run(|| {
                    check(
                        &program,
                        &[Case::new(
                            name("no listener"),
                            ack.clone(),
                            PASS_REPLY,
                            family,
                        )],
                    );
                })
                .expect("entering the namespace");
        }
    }
}
