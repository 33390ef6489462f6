//! Frames the differential fuzzer (issue 7) found where the XDP program disagreed with
//! docs/filter.md, one per cause, kept as named regression frames. Each runs through the real
//! program (BPF_PROG_TEST_RUN) in the fuzzer's environment (`fuzz::scenario`, port layout 0:
//! ports 1, 8000, 9000, 65535 strict; allow-lists of several prefix lengths) and must get the verdict and the counter
//! the page gives; the model must agree too, so a frame here cannot go stale against the page.
//!
//! Found against main at c20b38f (before "XDP: judge exactly the bytes the kernel keeps"),
//! `fuzz_verdict --seed 1`; the index reproduces each frame there (`--replay INDEX`).

use serve_guard_common::{
    Family::{self, Ipv4, Ipv6},
    Reason::{self, AuditWouldDrop, DropUnparseable, PassAllowed},
};
use serve_guard_tests::frames::hex::from_hex;
use serve_guard_tests::fuzz::{
    differential::Programs,
    model::{self, Action, Verdict},
    scenario,
};
use serve_guard_tests::program::Hook;

struct Regression {
    name: &'static str,
    /// The program's old answer, and why the page says otherwise.
    why: &'static str,
    audit: bool,
    frame: &'static str,
    expected: (Action, Reason, Family),
}

const DROP_UNPARSEABLE_V4: (Action, Reason, Family) = (Action::Drop, DropUnparseable, Ipv4);
const DROP_UNPARSEABLE_V6: (Action, Reason, Family) = (Action::Drop, DropUnparseable, Ipv6);

const REGRESSIONS: &[Regression] = &[
    Regression {
        name: "ipv6_fragment_header_past_the_declared_end",
        why: "index 39031; was pass_unprotected: the declared payload ends after a hop-by-hop \
              header that names a fragment header; the program read that fragment header (and \
              its 'next header ICMPv6') from the 8 trailing bytes the kernel trims (issue 7's \
              bypass class)",
        audit: false,
        frame: "02000000000202000000000186dd6e033dae00100040fd8340f3210d67e1dda177199e1f47a7\
                fd0000010000000000000000000000012c01010c0000000000000000000000003a000000",
        expected: DROP_UNPARSEABLE_V6,
    },
    Regression {
        name: "ipv6_nested_first_fragments_chain_cut_by_the_declared_end",
        why: "index 93981; was pass_unprotected: three nested offset-0 fragment headers, the \
              declared end right after them, then a trailing hop-by-hop header saying 'no next \
              header' (the shape of issue 7's f1)",
        audit: false,
        frame: "02000000000202000000000186dd61422d4600182c40fd3921315a8a7471b2c318aecb415fdd\
                fd0000010000000000000000000000012c0700039add0f542cae0007543bf3ae005600029baa\
                f7a13b000000",
        expected: DROP_UNPARSEABLE_V6,
    },
    Regression {
        name: "ipv6_payload_length_zero",
        why: "index 17; was pass_unprotected: payload length 0 (jumbogram or empty) with \
              UDP-Lite bytes behind it; the kernel does not keep those bytes as this packet",
        audit: false,
        frame: "02000000000202000000000186dd6041d28f00008840fd6ec75432ad983cd12c7887f12aeb73\
                b8efdd5a557132f9400c6ec1a17a8e1cc4162823fbf4f9bb502d0994ea78ddb06829f7",
        expected: DROP_UNPARSEABLE_V6,
    },
    Regression {
        name: "ipv6_payload_length_past_the_frame",
        why: "index 30; was drop_outside_vpc: payload length 58 in a frame holding 20 bytes of \
              payload (the kernel drops it); the port is not to be believed",
        audit: false,
        frame: "02000000000202000000000188a8800081005d4786dd663b97cb003a0640fd00000400000000\
                0000000000000004fd000001000000000000000000000001630f1f401fcd32788054842c5089\
                9b2e8814ae03",
        expected: DROP_UNPARSEABLE_V6,
    },
    Regression {
        name: "ipv6_fixed_header_cut_after_the_source",
        why: "index 173; was pass_allowed: the frame ends inside the destination address; the \
              fixed header must be whole before the source is trusted",
        audit: false,
        frame: "02000000000202000000000188a879ca86dd621709a80006fb40fd0000040000000000000000\
                000000059fea275ac8b5e4a9183a1112",
        expected: DROP_UNPARSEABLE_V6,
    },
    Regression {
        name: "ipv4_fixed_header_cut_after_the_source",
        why: "index 199; was pass_allowed: 16 bytes of IPv4 header, source inside the list, \
              nothing after it",
        audit: false,
        frame: "0200000000020200000000018100e00008004f84006aec2f00004006f06dc6120000",
        expected: DROP_UNPARSEABLE_V4,
    },
    Regression {
        name: "ipv4_total_length_cuts_the_udp_header",
        why: "index 34; was drop_outside_vpc: total length 27 keeps 7 bytes of UDP; the \
              program read the port from the trailing byte",
        audit: false,
        frame: "020000000002020000000001080045f3001b1391400040119928c6120100c6120001e9050001\
                00085d",
        expected: DROP_UNPARSEABLE_V4,
    },
    Regression {
        name: "ipv4_later_fragment_total_length_past_the_frame",
        why: "index 4; was pass_unprotected: a non-first fragment, but its total length (128) \
              exceeds the frame (88): the length check comes first",
        audit: false,
        frame: "02000000000202000000000188a8600008004d41008017e6004140066d95c612c8983ff8581a\
                441a04000000000000000000000000000000000000000000000094040000e99ef2331f41753f\
                7e76e1a0b0fd5023fbd7a42e134a32b2321bcf7133eec8afeadab7dd6708",
        expected: DROP_UNPARSEABLE_V4,
    },
    Regression {
        name: "ipv4_tiny_first_fragment_sctp",
        why: "index 618; was pass_unprotected: a first fragment (MF, offset 0) holding 6 of \
              SCTP's 12 header bytes",
        audit: false,
        frame: "02000000000202000000000188a82000810068d208004576001ae2b82000408476c7c6137443\
                c612000147d00001d969",
        expected: DROP_UNPARSEABLE_V4,
    },
    Regression {
        name: "ipv4_first_fragment_ends_before_the_udp_header",
        why: "index 901; was drop_outside_vpc: IHL 14 and total length 56 leave no UDP byte in \
              the packet; the port came from the bytes after the declared end",
        audit: false,
        frame: "02000000000202000000000108004e090038724b20004011daccc613faeec612000116940400\
                00940400000000441304000000000000000000000000000000004403040703048e7300010029\
                83c72e5a9c736daadde68e4f0f45c5ec401d3209dd0b15ba7b4484317828deefe00467",
        expected: DROP_UNPARSEABLE_V4,
    },
    Regression {
        name: "ipv4_sctp_to_a_protected_port",
        why: "index 11; was pass_unprotected: SCTP is a port protocol",
        audit: false,
        frame: "02000000000202000000000188a820000800458f00245bc840004084cfc1c6138216c6120001\
                1b3223289466cff26a95f2ccdb1a0a5c",
        expected: (Action::Drop, Reason::DropOutsideVpc, Ipv4),
    },
    Regression {
        name: "ipv6_dccp_behind_ah_and_hop_by_hop_audit",
        why: "index 214 (audit); was pass_unprotected: DCCP to 8000 from outside, behind AH and \
              hop-by-hop: a drop, which audit mode counts and passes",
        audit: true,
        frame: "0200000000020200000000018100900086dd6a11c3d6004e3340fd000000ffffffffffffffff\
                fffffffffd0000010000000000000000000000010007db11d5522e8a95544dfa339602c103ab\
                a54394447df1bdc89da787eba6cc6a7d5ce32100010400000000c0d01f401ccafb85b20c4cd2\
                931d620aaa26c0685c17f901ef584f81b9a978753ace",
        expected: (Action::Pass, AuditWouldDrop, Ipv6),
    },
    Regression {
        name: "five_vlan_tags_inside_source",
        why: "index 544; was drop_unparseable/other: five 802.1Q/802.1ad tags, up to 8 are \
              read through; DCCP to 65535 from inside",
        audit: false,
        frame: "02000000000202000000000181002ef881002a1f88a8e0008100ca4a88a80d1e0800467f0028\
                97c64000402191cbc61275afc61200010dcf0000262bffffa6feaa64cb9bf578d08c163d",
        expected: (Action::Pass, PassAllowed, Ipv4),
    },
];

#[test]
fn fuzz_regression_frames_get_the_verdict_of_docs_filter_md() {
    let mut failures = Vec::new();
    // The XDP program and its TC twin (the fallback beside a foreign XDP program).
    for hook in Hook::ALL {
        regression_frames(hook, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} regression frames x hooks failed:\n{}",
        failures.len(),
        REGRESSIONS.len() * Hook::ALL.len(),
        failures.join("\n")
    );
}

fn regression_frames(hook: Hook, failures: &mut Vec<String>) {
    let programs = Programs::load(hook).expect("load the program");
    for r in REGRESSIONS {
        if !hook.test_run_accepts(&from_hex(r.frame)) {
            continue;
        }
        let frame = from_hex(r.frame);
        let (action, reason, family) = r.expected;
        let expected = Verdict {
            action,
            reason,
            family,
        };
        let modelled = model::verdict(&frame, &scenario::policy(r.audit));
        if modelled != expected {
            failures.push(format!(
                "{}: the model says {modelled}, not {expected}",
                r.name
            ));
        }
        let observed = programs
            .observe(&frame, r.audit)
            .expect("BPF_PROG_TEST_RUN");
        if !observed.agrees(&expected) {
            failures.push(format!(
                "{}: program {observed}, expected {expected} ({})",
                r.name, r.why
            ));
        }
    }
}
