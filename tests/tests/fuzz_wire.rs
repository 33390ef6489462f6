//! The black-box wire fuzzer (issue 7) in the test suite: the kernel is the oracle. Named
//! regressions end to end, then a fixed-seed slice of the fuzzer. `cargo xtask fuzz` runs the
//! full campaign (`fuzz_wire --frames 100000`).

use serve_guard_tests::wire_fuzz::{
    campaign::{self, Config, Outcome},
    case::Origin,
    generate::Ids,
    lab::{AttachMode, Lab},
    named::{self, Named},
    report,
};

/// A few thousand frames: a slice of every generator in a few seconds.
const SLICE_FRAMES: u64 = 6_000;
const SLICE_SEED: u64 = 0x5eed;
/// Each regression is sent this many times (fresh IP ids each time).
const SENDINGS: u32 = 3;

/// Sends the named case from `origin` [`SENDINGS`] times and returns what each showed.
fn sendings(lab: &Lab, named: &Named, origin: Origin) -> Vec<Outcome> {
    let mut ids = Ids::new(u64::from(SENDINGS));
    let mut round = 0;
    let mut unattributed = Vec::new();
    let outcomes = (0..SENDINGS)
        .map(|token| {
            let case = (named.build)(origin, token, &mut ids);
            campaign::run_round(lab, &[case], &mut round, &mut unattributed)
                .expect("a round through both lanes")[0]
        })
        .collect();
    assert!(unattributed.is_empty(), "{unattributed:?}");
    outcomes
}

/// From outside, the frames the kernel delivers without the filter never reach the protected
/// port with it; from inside they are delivered with the filter as without it.
fn regression_holds(name: &str) {
    let named = named::find(name).expect("named regression");
    let lab = Lab::new(AttachMode::Driver).expect("lanes");
    for o in sendings(&lab, named, Origin::Outside) {
        assert!(
            o.baseline,
            "{name}: the kernel must deliver these frames without the filter"
        );
        assert!(
            !o.filtered && !o.bypass,
            "{name} from outside got through: {o:?}"
        );
    }
    for o in sendings(&lab, named, Origin::Inside) {
        assert!(o.baseline && o.filtered, "{name} from inside: {o:?}");
    }
}

#[test]
fn issue7_ipv6_fragment_trailer_udp_is_kept_out() {
    regression_holds("issue7_ipv6_fragment_trailer_udp");
}

#[test]
fn issue7_ipv6_fragment_trailer_tcp_is_kept_out() {
    regression_holds("issue7_ipv6_fragment_trailer_tcp");
}

#[test]
fn srv6_srh_decap_inner_v4_udp_is_kept_out() {
    regression_holds("srv6_srh_decap_inner_v4_udp");
}

#[test]
fn srv6_srh_decap_inner_v4_tcp_is_kept_out() {
    regression_holds("srv6_srh_decap_inner_v4_tcp");
}

#[test]
fn srv6_srh_decap_inner_v6_udp_is_kept_out() {
    regression_holds("srv6_srh_decap_inner_v6_udp");
}

#[test]
fn fixed_seed_slice_has_no_bypass_and_no_unexpected_over_block() {
    slice(AttachMode::Driver, SLICE_FRAMES);
}

/// The same in skb (generic XDP) mode, where the program sees the packet after GRO.
#[test]
fn fixed_seed_slice_in_skb_mode() {
    slice(AttachMode::Skb, SLICE_FRAMES / 2);
}

fn slice(mode: AttachMode, frames: u64) {
    let mut config = Config::new(frames, SLICE_SEED);
    config.mode = mode;
    let r = campaign::run(&config).expect("campaign");
    let summary = report::summary(&r);
    println!("{summary}");
    let written = report::write_findings(&r, &config.out_dir).expect("writing findings");
    assert!(r.frames >= frames, "{summary}");
    // The oracle is alive: every generator produced cases the kernel delivers, and from outside
    // to a protected port some of those were kept out by the filter.
    for (g, s) in &r.per_generator {
        assert!(
            s.baseline_delivered > 0,
            "{} delivered nothing\n{summary}",
            g.name()
        );
    }
    assert!(
        r.per_generator.values().map(|s| s.blocked).sum::<u64>() > 0,
        "{summary}"
    );
    assert!(
        r.passed() && r.indeterminate() == 0 && r.unattributed.is_empty(),
        "{summary}\nfindings: {written:?}"
    );
}
