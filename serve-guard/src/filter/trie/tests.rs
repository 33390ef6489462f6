use super::*;
use serve_guard_common::trie::{DEFAULT_CAPACITY, LARGEST_CAPACITY};

const TAILS_PER_HALF: u32 = DEFAULT_CAPACITY.tails_per_half;
const NODES_PER_HALF: u32 = DEFAULT_CAPACITY.nodes_per_half_v6;
use std::collections::BTreeMap;

/// The compiled structure in memory, as the maps would hold it.
struct Memory {
    shape: Shape,
    bases: Bases,
    compiled: Compiled,
}

fn shape(width: u8) -> Shape {
    if width == 32 { Shape::V4 } else { Shape::V6 }
}

impl Memory {
    fn compile(prefixes: &[Prefix], width: u8) -> Self {
        // Use the second half, so global and local indices differ.
        let bases = Bases {
            half: 1,
            node: NODES_PER_HALF,
            tail: TAILS_PER_HALF,
        };
        let shape = shape(width);
        Self {
            shape,
            bases,
            compiled: compile(prefixes, shape, bases, Grouping::Dense),
        }
    }

    /// The XDP program's walk ([`lookup`], the bench's copy of it), on a left-aligned address;
    /// it never reads more than the root, the directory, one node per stride and a tail.
    fn allows(&self, addr: u128) -> bool {
        let (allowed, reads) = lookup(self.compiled.root, addr, self.shape, self);
        let most = 3 + self.shape.levels() as usize;
        assert!(reads <= most, "{reads} reads for {addr:#x}, at most {most}");
        allowed
    }

    fn allowed_set(&self) -> Vec<Prefix> {
        allowed_set(self.compiled.root, self.shape, self).unwrap()
    }
}

impl TrieSource for Memory {
    fn dir_slot(&self, half: u32, index: usize) -> Option<u32> {
        (half == self.bases.half)
            .then(|| self.compiled.dir.get(index).copied())
            .flatten()
    }

    fn node_slot(&self, node: u32, index: usize) -> Option<u32> {
        let local = node.checked_sub(self.bases.node)? as usize;
        self.compiled
            .nodes
            .get(local * self.shape.fanout() + index)
            .copied()
    }

    fn tail(&self, index: u32) -> Option<Prefix> {
        let local = index.checked_sub(self.bases.tail)?;
        self.compiled.tails.get(local as usize).copied()
    }
}

fn v4(a: [u8; 4], len: u8) -> Prefix {
    Prefix::new(u128::from(u32::from_be_bytes(a)) << 96, len)
}

fn v4_addr(a: [u8; 4]) -> u128 {
    u128::from(u32::from_be_bytes(a)) << 96
}

fn v6(a: u128, len: u8) -> Prefix {
    Prefix::new(a, len)
}

fn brute(prefixes: &[Prefix], addr: u128) -> bool {
    prefixes.iter().any(|p| addr & mask(p.len) == p.bits)
}

/// splitmix64, for reproducible random lists.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn wide(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// Addresses worth probing for `prefixes`: each prefix's first and last address and the ones
/// just outside it, plus random ones.
fn probes(prefixes: &[Prefix], width: u8, rng: &mut Rng) -> Vec<u128> {
    let unit = 1u128 << (128 - u32::from(width));
    let mut out = Vec::new();
    for p in prefixes {
        let last = p.bits | !mask(p.len) & mask(width);
        out.extend([
            p.bits,
            last,
            p.bits.wrapping_sub(unit),
            last.wrapping_add(unit),
        ]);
    }
    out.extend(stride_edges(prefixes, width));
    out.extend((0..200).map(|_| rng.wide() & mask(width)));
    out
}

/// The prefix lengths where a walk moves from the directory or a node to the next level: /16,
/// then every stride below it.
fn stride_boundaries(width: u8) -> impl Iterator<Item = u32> {
    serve_guard_common::trie::level_boundaries(u32::from(width))
}

/// For each end of each prefix (and the addresses just outside it): the first address of every
/// stride-aligned range around it and the address just past that range, where a walk moves
/// from one directory or node slot to the next.
fn stride_edges(prefixes: &[Prefix], width: u8) -> Vec<u128> {
    let unit = 1u128 << (128 - u32::from(width));
    let mut out = Vec::new();
    for p in prefixes {
        let last = p.bits | !mask(p.len) & mask(width);
        for a in [
            p.bits,
            last,
            p.bits.wrapping_sub(unit),
            last.wrapping_add(unit),
        ] {
            for at in stride_boundaries(width) {
                let span = 1u128 << (128 - at);
                let start = a & !(span - 1);
                out.extend([start, start.wrapping_sub(unit), start.wrapping_add(span)]);
            }
        }
    }
    out
}

fn check(prefixes: &[Prefix], width: u8) {
    let memory = Memory::compile(prefixes, width);
    let mut rng = Rng(7);
    for addr in probes(prefixes, width, &mut rng) {
        let addr = addr & mask(width);
        assert_eq!(
            memory.allows(addr),
            brute(prefixes, addr),
            "address {addr:#x} with {prefixes:?}"
        );
    }
    // Read back: the same set of addresses.
    let set = memory.allowed_set();
    assert_eq!(merged(&set), merged(&disjoint(prefixes)), "{prefixes:?}");
}

#[test]
fn empty_list_allows_nothing() {
    for width in [32, 128] {
        let memory = Memory::compile(&[], width);
        assert_eq!(memory.compiled.root, SLOT_EMPTY_RAW);
        assert!(memory.compiled.dir.is_empty());
        assert!(!memory.allows(v4_addr([198, 18, 0, 1])));
        assert!(memory.allowed_set().is_empty());
    }
}

const SLOT_EMPTY_RAW: u32 = serve_guard_common::trie::SLOT_EMPTY;

#[test]
fn slash_zero_fills_the_directory_without_a_node() {
    for width in [32, 128] {
        let memory = Memory::compile(&[Prefix::new(0, 0)], width);
        assert_eq!(Slot::decode(memory.compiled.root), Slot::Node(1));
        assert!(memory.compiled.nodes.is_empty());
        assert!(
            memory
                .compiled
                .dir
                .iter()
                .all(|&s| Slot::decode(s) == Slot::Full)
        );
        assert!(memory.allows(0));
        assert!(memory.allows(mask(width)));
        assert_eq!(memory.allowed_set().len(), memory.shape.dir_slots());
    }
}

#[test]
fn a_single_prefix_is_one_tail_and_host_routes_work() {
    let host = v4([198, 18, 0, 10], 32);
    let memory = Memory::compile(&[host], 32);
    assert!(memory.compiled.nodes.is_empty());
    let index = 198;
    assert!(matches!(
        Slot::decode(memory.compiled.dir[index]),
        Slot::Tail(_)
    ));
    assert!(memory.allows(v4_addr([198, 18, 0, 10])));
    assert!(!memory.allows(v4_addr([198, 18, 0, 11])));
    check(&[host], 32);
    check(&[v6(0xfd00_0001 << 96 | 0x10, 128)], 128);
}

/// IPv4 reads at most the root, the directory, six nibble nodes and a tail, whatever the list:
/// two host routes one apart and a /25 beside them need nodes down to the last nibble.
#[test]
fn ipv4_walks_at_most_six_nodes() {
    let list = [
        v4([198, 18, 0, 10], 32),
        v4([198, 18, 0, 11], 32),
        v4([198, 18, 1, 0], 25),
    ];
    let memory = Memory::compile(&list, 32);
    // /12, /16, /20 and /24 shared by all three; /28 and /32 by the host routes.
    assert_eq!(memory.compiled.nodes.len(), 6 * Shape::V4.fanout());
    let (allowed, reads) = lookup(
        memory.compiled.root,
        v4_addr([198, 18, 0, 11]),
        Shape::V4,
        &memory,
    );
    assert!(allowed);
    assert_eq!(reads, 8, "root, directory, six nodes");
    let (allowed, reads) = lookup(
        memory.compiled.root,
        v4_addr([198, 18, 1, 1]),
        Shape::V4,
        &memory,
    );
    assert!(allowed);
    assert_eq!(reads, 7, "root, directory, four nodes, tail");
    check(&list, 32);
}

#[test]
fn host_routes_that_share_all_but_the_last_bit() {
    // Forces nodes down to the last level: /32s and /128s one apart.
    check(&[v4([198, 18, 0, 10], 32), v4([198, 18, 0, 11], 32)], 32);
    let a = 0xfd00_0001u128 << 96;
    check(&[v6(a | 0x10, 128), v6(a | 0x11, 128)], 128);
    check(
        &[v6(a | 0x10, 128), v6(a | 0x11, 128), v6(a | 0x13, 128)],
        128,
    );
}

#[test]
fn overlapping_prefixes_are_the_union() {
    let list = [
        v4([10, 0, 0, 0], 8),
        v4([10, 1, 0, 0], 16),
        v4([10, 1, 2, 3], 32),
        v4([192, 168, 0, 0], 16),
        v4([192, 168, 5, 0], 24),
        v4([172, 16, 0, 0], 12),
    ];
    check(&list, 32);
    let memory = Memory::compile(&list, 32);
    // Contained prefixes add nothing: three ranges, each alone in its /8 (full, or a tail).
    assert_eq!(memory.allowed_set().len(), 3);
    assert!(memory.compiled.nodes.is_empty());
}

#[test]
fn prefix_lengths_between_strides_cover_the_right_children() {
    // Lengths that are not multiples of the stride expand into several full slots.
    for len in 1..=32u8 {
        check(&[v4([198, 18, 0, 0], len), v4([203, 0, 113, 0], 24)], 32);
        check(&[v4([255, 255, 255, 255], len), v4([0, 0, 0, 0], len)], 32);
    }
    for len in (1..=128u8).step_by(3) {
        check(
            &[v6(0xfd00 << 112, len), v6(u128::MAX, len), v6(0, 128)],
            128,
        );
    }
}

/// Every prefix length, both families, each ending on the last address of a stride-aligned
/// range, with a host route just before it (sharing its first len - 1 bits, so the
/// structure splits down to the prefix's own stride): probed at every stride edge around both
/// (/16 and /24 for IPv4; /16, /24, ... /120 for IPv6).
#[test]
fn every_prefix_length_at_the_edges_of_every_stride() {
    for (width, region_bits) in [(32u8, 8u32), (128, 8)] {
        for len in 1..=width {
            // The prefix of length `len` that ends where the region (first byte = len) ends.
            let region = u128::from(len) << (128 - region_bits);
            let end = region | (mask(width) & !mask(region_bits as u8));
            let p = Prefix::new(end, len);
            let host = Prefix::new(
                p.bits.wrapping_sub(1u128 << (128 - u32::from(width))),
                width,
            );
            check(&[p, host], width);
        }
    }
}

/// Slots of a compiled list (directory and nodes) that are groups.
fn groups(compiled: &Compiled) -> usize {
    compiled
        .dir
        .iter()
        .chain(&compiled.nodes)
        .filter(|&&s| matches!(Slot::decode(s), Slot::Group { .. }))
        .count()
}

/// Two host routes in each of the first `children` /12s of 198.0.0.0/8: the /8's node has that
/// many node children.
fn two_in_each_slash12(children: u8) -> Vec<Prefix> {
    (0..children)
        .flat_map(|n| [v4([198, n << 4, 0, 1], 32), v4([198, n << 4, 0, 2], 32)])
        .collect()
}

/// A node with 15 or 16 node children is stored as a group: its slot (here the directory's)
/// names the first of 16 consecutive nodes, and the walk reads one node for two strides.
/// With 14 it stays a node.
#[test]
fn dense_nodes_become_groups_read_once_for_two_strides() {
    for (children, grouped) in [(16, true), (15, true), (14, false)] {
        let list = two_in_each_slash12(children);
        let memory = Memory::compile(&list, 32);
        let slot = Slot::decode(memory.compiled.dir[198]);
        let expected = grouped.then_some(1);
        let depth = match slot {
            Slot::Group { depth, .. } => Some(depth),
            _ => None,
        };
        assert_eq!(depth, expected, "{children}: {slot:?}");
        let (allowed, reads) = lookup(
            memory.compiled.root,
            v4_addr([198, 16, 0, 2]),
            Shape::V4,
            &memory,
        );
        assert!(allowed);
        // Root, directory, then /16 and /20 ... /32 below the /12: the group saves the /8's node.
        assert_eq!(reads, if grouped { 7 } else { 8 }, "{children}");
        check(&list, 32);
    }
}

/// Free groups never take more nodes than the node(s) and children they replace: 16 children
/// that are nodes save the group's own node, 15 take as many; without groups, as many.
#[test]
fn free_groups_never_take_more_nodes() {
    let bases = Bases {
        half: 0,
        node: 0,
        tail: 0,
    };
    let nodes = |list: &[Prefix], grouping| compile(list, Shape::V4, bases, grouping).nodes.len();
    for children in [14, 15, 16] {
        let list = two_in_each_slash12(children);
        let saved = if children == 16 { 1 } else { 0 };
        let fanout = Shape::V4.fanout();
        assert_eq!(
            nodes(&list, Grouping::Free) / fanout + saved,
            nodes(&list, Grouping::Never) / fanout,
            "{children}"
        );
    }
    let mut rng = Rng(5);
    for _ in 0..8 {
        let list = random_v4(&mut rng, 20_000);
        assert!(nodes(&list, Grouping::Free) <= nodes(&list, Grouping::Never));
    }
}

/// Random IPv4 /16-/28 anywhere, as the benchmark's lists.
fn random_v4(rng: &mut Rng, n: usize) -> Vec<Prefix> {
    (0..n)
        .map(|_| {
            let len = 16 + (rng.next() % 13) as u8;
            Prefix::new(u128::from(rng.next() as u32) << 96, len)
        })
        .collect()
}

/// Two prefixes in each /24 of 198.18.0.0/16, but the /16's first /20 covered whole: every /20
/// and every /24 below it is a node but 16 (the covered ones), so the directory slot is a
/// depth-2 group of 256 nodes (one per /24); the walk reads one node for three strides.
#[test]
fn dense_ranges_become_depth_two_groups_read_once_for_three_strides() {
    let mut list = vec![v4([198, 18, 0, 0], 20)];
    list.extend((16..=255u8).flat_map(|n| [v4([198, 18, n, 1], 32), v4([198, 18, n, 200], 30)]));
    let memory = Memory::compile(&list, 32);
    // The directory's /8 holds one /16: the /8's node and the /12's stay nodes; the /16's
    // slot in the /12's node is the group.
    assert_eq!(groups(&memory.compiled), 1);
    let (allowed, reads) = lookup(
        memory.compiled.root,
        v4_addr([198, 18, 77, 1]),
        Shape::V4,
        &memory,
    );
    assert!(allowed);
    // Root, directory, /8's node, /12's node, the group's /24 node, the /28 node: 6, against 8.
    assert_eq!(reads, 6);
    let bases = Bases {
        half: 0,
        node: 0,
        tail: 0,
    };
    let never = compile(&list, Shape::V4, bases, Grouping::Never);
    let (_, plain) = lookup(
        never.root,
        v4_addr([198, 18, 77, 1]),
        Shape::V4,
        &Memory {
            shape: Shape::V4,
            bases,
            compiled: never,
        },
    );
    assert_eq!(plain, 8);
    check(&list, 32);
}

/// Groups at the deepest level they can be (their children the last nodes, on the address's
/// last stride), in both families, with the stride edges around every prefix probed.
#[test]
fn groups_down_to_the_last_stride() {
    // 198.18.0.0/24: two /32s in each of its 16 /28s.
    let v4_list: Vec<Prefix> = (0..16u8)
        .flat_map(|n| {
            [
                v4([198, 18, 0, n << 4], 32),
                v4([198, 18, 0, (n << 4) | 15], 32),
            ]
        })
        .collect();
    let memory = Memory::compile(&v4_list, 32);
    assert_eq!(groups(&memory.compiled), 1);
    check(&v4_list, 32);
    let net = 0xfd00_0000_0000_0000_0000_0000_0000_0000u128;
    let v6_list: Vec<Prefix> = (0..16u128)
        .flat_map(|n| [v6(net | n << 4, 128), v6(net | n << 4 | 9, 128)])
        .collect();
    let memory = Memory::compile(&v6_list, 128);
    assert_eq!(groups(&memory.compiled), 1);
    check(&v6_list, 128);
}

/// Random lists packed into a few small ranges, so that nodes are dense and groups nest:
/// every address probed agrees with a linear scan, and the set reads back.
#[test]
fn random_dense_lists_match_a_linear_scan() {
    let mut rng = Rng(11);
    let mut seen = 0;
    for round in 0..16 {
        let width = if round % 2 == 0 { 32u8 } else { 128 };
        // A region of 2^span addresses at a random place, holding prefixes of at most
        // 2^host addresses: short enough that none covers much of the region.
        let span = 10 + (rng.next() % 11) as u32;
        let host = (rng.next() % u64::from(span - 7)) as u32;
        let base = rng.wide() & mask(width) & !((1u128 << (128 - u32::from(width) + span)) - 1);
        let n = 300 + (rng.next() % 400) as usize;
        let list: Vec<Prefix> = (0..n)
            .map(|_| {
                let len = u32::from(width) - (rng.next() % u64::from(host + 1)) as u32;
                let offset = (rng.wide() >> (128 - span)) << (128 - u32::from(width));
                Prefix::new(base | offset, len as u8)
            })
            .collect();
        seen += groups(&Memory::compile(&list, width).compiled);
        check(&list, width);
    }
    assert!(seen >= 16, "{seen} groups in 16 lists");
}

#[test]
fn random_lists_match_a_linear_scan() {
    let mut rng = Rng(42);
    for round in 0..40 {
        let n = 1 + (rng.next() % 300) as usize;
        let (width, lo) = if round % 2 == 0 {
            (32u8, 0u8)
        } else {
            (128, 0)
        };
        let list: Vec<Prefix> = (0..n)
            .map(|_| {
                let len = lo + (rng.next() % (u64::from(width) + 1)) as u8;
                // Cluster addresses so ranges overlap and nest.
                let bits = rng.wide() & mask(width) & !(0xff << 112);
                Prefix::new(bits, len)
            })
            .collect();
        check(&list, width);
    }
}

#[test]
fn a_list_swapping_prefix_lengths_compiles_independently() {
    // Two halves: the old list's /16s and the new list's /24s and /32s; each compiles alone and
    // its read-back is exactly itself.
    let old: Vec<Prefix> = (0..50u8).map(|i| v4([10, i, 0, 0], 16)).collect();
    let new: Vec<Prefix> = (0..50u8)
        .flat_map(|i| [v4([10, i, 7, 0], 24), v4([10, i, 9, 9], 32)])
        .collect();
    check(&old, 32);
    check(&new, 32);
}

/// The benchmark's shape: random /16-/28 (v4) and /32-/64 in fd00::/8 (v6) at the default and
/// at the largest capacity. Prints what the nodes take, for docs/lookup.md.
#[test]
fn random_lists_stay_within_the_node_budget() {
    for capacity in [DEFAULT_CAPACITY, LARGEST_CAPACITY] {
        let mut rng = Rng(3);
        let mut by_len: BTreeMap<u8, usize> = BTreeMap::new();
        let cidrs = capacity.tails_per_half;
        let v4_list: Vec<Prefix> = (0..cidrs)
            .map(|_| {
                let len = 16 + (rng.next() % 13) as u8;
                *by_len.entry(len).or_default() += 1;
                Prefix::new(u128::from(rng.next() as u32) << 96, len)
            })
            .collect();
        let v6_list: Vec<Prefix> = (0..cidrs)
            .map(|_| {
                let len = 32 + (rng.next() % 33) as u8;
                Prefix::new((0xfdu128 << 120) | (rng.wide() >> 8), len)
            })
            .collect();
        let bases = Bases {
            half: 0,
            node: 0,
            tail: 0,
        };
        let (v4, v4_grouping) = compile_within(
            &v4_list,
            Shape::V4,
            bases,
            capacity.nodes_per_half_v4 as usize,
        );
        let (v6, v6_grouping) = compile_within(
            &v6_list,
            Shape::V6,
            bases,
            capacity.nodes_per_half_v6 as usize,
        );
        let v4_nodes = v4.nodes.len() / Shape::V4.fanout();
        let v6_nodes = v6.nodes.len() / Shape::V6.fanout();
        eprintln!(
            "{cidrs} CIDRs: nodes v4 {v4_nodes} (tails {}, groups {} {v4_grouping:?}), v6 \
             {v6_nodes} (tails {}, groups {} {v6_grouping:?}); budget v4 {} a half, maps {} MiB",
            v4.tails.len(),
            groups(&v4),
            v6.tails.len(),
            groups(&v6),
            capacity.nodes_per_half_v4,
            capacity.bytes() >> 20
        );
        assert!(v4_nodes <= capacity.nodes_per_half_v4 as usize);
        assert!(v6_nodes <= capacity.nodes_per_half_v6 as usize);
    }
}
