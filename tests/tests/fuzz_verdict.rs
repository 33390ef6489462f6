//! A fixed-seed slice of the differential fuzzer (issue 7): generated frames through the real
//! XDP program and through the reference model of docs/filter.md must agree on the return value
//! and the counter of every frame. `cargo xtask fuzz verdict` runs the same with 10 million
//! frames; a failure here names the seed and index, which `fuzz_verdict --replay` reproduces.

use serve_guard_common::{Family, Reason};
use serve_guard_tests::fuzz::{
    differential::{self, Options, Programs},
    generate::Generator,
};

/// Another seed than the 10M run's default, so the slice is not a prefix of it.
const SEED: u64 = 0x5e7e_f022_0007;
const FRAMES: u64 = 300_000;

#[test]
fn fixed_seed_slice_program_agrees_with_model() {
    let programs = Programs::load().expect("load the XDP program");
    let options = Options {
        seed: SEED,
        start: 0,
        frames: FRAMES,
        only: None,
    };
    let report = differential::run(&programs, options, |_| {}).expect("run the slice");
    assert_eq!(report.frames, FRAMES);

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
        "{} of {FRAMES} frames mismatch (reproduce: cargo xtask fuzz verdict --seed {SEED} \
         --replay INDEX):\n{}",
        report.mismatches(),
        report.describe_classes()
    );
}
