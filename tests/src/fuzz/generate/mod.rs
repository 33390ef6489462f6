//! Structure-aware frame generators, seeded and reproducible: frame `index` of the run seeded
//! with `seed` is a pure function of the pair ([`sample`]), so any frame can be regenerated
//! alone from those two numbers.

mod distort;
mod fields;
mod packets;

use crate::rng::Rng;
use packets::Fragmenting;
use serve_guard_common::wire;

/// What the kernel's BPF_PROG_TEST_RUN accepts for XDP is at least an Ethernet header and at
/// most about a page minus headroom; frames are cut to this (a long chain's rare 2 KiB header
/// could pass it).
pub const MAX_FRAME: usize = 3000;
/// One frame in this many is judged in audit mode.
const AUDIT_ONE_IN: usize = 8;
/// VLAN stacks reach past the program's limit of 8 tags.
const MAX_TAGS: usize = 10;

/// The families of frames, each a generator of its own; every frame is counted under the one
/// that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generator {
    /// 0-10 802.1Q/802.1ad tags, priority and VLAN ids, in front of any frame.
    Vlan,
    /// IPv4 with 0-40 bytes of options, every protocol.
    Ipv4,
    /// IPv4 fragments: first, later, atomic; tiny first fragments cutting the transport header.
    Ipv4Fragment,
    /// IPv6 with extension chains of every kind, order and length, nested fragment headers.
    Ipv6Chain,
    /// Declared lengths longer or shorter than the frame, with header-like trailers; zero.
    LengthLie,
    /// Valid frames cut at and around every header boundary.
    Truncation,
    /// Valid frames with bytes flipped, set, inserted or removed.
    Mutation,
    /// Random bytes behind a plausible EtherType.
    Noise,
    /// Well-formed frames at the fuzzer namespace's sockets (issue 16's guarded rule): exact
    /// 4-tuples of connections, one field off, anyone to a listener; TCP flag combinations.
    Socket,
}

impl Generator {
    pub const ALL: [Generator; 9] = [
        Generator::Vlan,
        Generator::Ipv4,
        Generator::Ipv4Fragment,
        Generator::Ipv6Chain,
        Generator::LengthLie,
        Generator::Truncation,
        Generator::Mutation,
        Generator::Noise,
        Generator::Socket,
    ];

    /// Relative share of the frames: the structural hazards (chains, lies, cuts) get most.
    const fn weight(self) -> usize {
        match self {
            Generator::Vlan => 2,
            Generator::Ipv4 => 2,
            Generator::Ipv4Fragment => 2,
            Generator::Ipv6Chain => 4,
            Generator::LengthLie => 4,
            Generator::Truncation => 3,
            Generator::Mutation => 3,
            Generator::Noise => 1,
            Generator::Socket => 3,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Generator::Vlan => "vlan",
            Generator::Ipv4 => "ipv4",
            Generator::Ipv4Fragment => "ipv4_fragment",
            Generator::Ipv6Chain => "ipv6_chain",
            Generator::LengthLie => "length_lie",
            Generator::Truncation => "truncation",
            Generator::Mutation => "mutation",
            Generator::Noise => "noise",
            Generator::Socket => "socket",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    fn pick(rng: &mut Rng) -> Self {
        let total: usize = Self::ALL.iter().map(|g| g.weight()).sum();
        let mut ticket = rng.below(total);
        for generator in Self::ALL {
            if ticket < generator.weight() {
                return generator;
            }
            ticket -= generator.weight();
        }
        unreachable!("the ticket is below the sum of the weights")
    }

    fn generate(self, rng: &mut Rng) -> Vec<u8> {
        match self {
            Generator::Vlan => {
                let tags = packets::tags(rng, MAX_TAGS);
                match rng.below(3) {
                    0 => packets::ipv4(rng, &tags, Fragmenting::No).frame,
                    1 => packets::ipv6(rng, &tags).frame,
                    _ => packets::non_ip(rng, &tags).frame,
                }
            }
            Generator::Ipv4 => {
                let tags = packets::tags(rng, 2);
                packets::ipv4(rng, &tags, Fragmenting::No).frame
            }
            Generator::Ipv4Fragment => distort::ipv4_fragment(rng),
            Generator::Ipv6Chain => {
                let tags = packets::tags(rng, 2);
                packets::ipv6(rng, &tags).frame
            }
            Generator::LengthLie => distort::length_lie(rng),
            Generator::Truncation => distort::truncation(rng),
            Generator::Mutation => distort::mutation(rng),
            Generator::Noise => distort::noise(rng),
            Generator::Socket => packets::aimed(rng).frame,
        }
    }
}

/// One generated frame and how to judge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub generator: Generator,
    /// Judge in audit mode (drops counted as `audit_would_drop` and passed).
    pub audit: bool,
    /// The port table ([`super::scenario::ports`]) the frame is judged with.
    pub layout: usize,
    /// At least an Ethernet header, at most [`MAX_FRAME`] bytes.
    pub frame: Vec<u8>,
}

/// Frame `index` of the run seeded with `seed`, from `only` if given, else from a generator
/// drawn by weight.
pub fn sample(seed: u64, index: u64, only: Option<Generator>) -> Sample {
    let mut rng = Rng::for_frame(seed, index);
    let drawn = Generator::pick(&mut rng);
    let generator = only.unwrap_or(drawn);
    let audit = rng.one_in(AUDIT_ONE_IN);
    let layout = rng.below(super::scenario::LAYOUTS);
    let mut frame = generator.generate(&mut rng);
    frame.truncate(MAX_FRAME);
    if frame.len() < wire::ETH_HLEN {
        frame.resize(wire::ETH_HLEN, 0);
    }
    Sample {
        generator,
        audit,
        layout,
        frame,
    }
}
