//! The allow-list lookup (layout in `serve_guard_common::trie`): the family's root slot, one
//! slot of its directory (IPv4: /8, IPv6: /16), then at most one node per nibble below it (one
//! per two or three where the list is dense: groups), each an inlined array lookup, and maybe a
//! tail.
//! Its cost depends on how many nodes the list puts on the address's path and, under many
//! sources, on how many of them are still in cache (docs/lookup.md).

use serve_guard_common::trie::{
    DirBlock, HALVES, ROOT_V4, ROOT_V6, SLOT_EMPTY, Slot, Slots, V4_DIR_BLOCKS, V4_LEVELS,
    V4_STRIDE, V6_DIR_BLOCKS, V6_LEVELS, V6_STRIDE, dir_index_v4, dir_index_v6, dir_position,
    slot_v4, slot_v6,
};

use aya_ebpf::maps::Array;

use crate::maps::{DIR_V4, DIR_V6, NODES_V4, NODES_V6, ROOTS, TAILS_V4, TAILS_V6};

/// What one level of the walk found.
enum Step {
    /// A slot that is not a node or a group (empty, full, a tail: judged once, after the
    /// walk), or empty for a structure the walk cannot follow.
    Stop(u32),
    /// The slot to decode at the next level.
    Next(u32),
    /// The slot to decode after skipping this many levels (a group's depth).
    Skip(u32, u32),
}

/// Writes the walk out level by level, [`step`] with each level as a constant, and evaluates to
/// the slot it stopped at. Kernels before ~6.3 reject a loop whose last instruction falls
/// through to its head ("back-edge"), which is what LLVM makes of a `for` over the levels;
/// straight-line code loads everywhere from 5.10 on. A group jumps forward over one or two
/// levels, which keeps every level's stride a constant: the verifier sees each level at most
/// three times (reached, or skipped with one or two left), not once per path.
macro_rules! walk {
    ($levels:ident, $slot:ident, [$($level:literal)*]) => {
        'walk: {
            let mut skip = 0u32;
            $(
                if skip > 0 {
                    skip -= 1;
                } else {
                    match step($slot, &$levels, $level) {
                        Step::Stop(leaf) => break 'walk leaf,
                        Step::Next(next) => $slot = next,
                        Step::Skip(levels, next) => {
                            $slot = next;
                            skip = levels;
                        }
                    }
                }
            )*
            let _ = (skip, $slot);
            SLOT_EMPTY
        }
    };
}

// The literal level lists below must cover 1..=LEVELS + 1.
const _: () = assert!(V4_LEVELS == 6 && V6_LEVELS == 28);

/// The directory slot for `index` in the half the root slot names; `None` (deny) for no list
/// or a root that names no directory.
#[inline(always)]
fn directory(family: u32, map: &Array<DirBlock>, blocks: u32, index: u32) -> Option<u32> {
    // A missing root reads as empty: fail closed.
    let root = ROOTS.get(family).copied().unwrap_or_default();
    let Slot::Node(half) = Slot::decode(root) else {
        return None;
    };
    if half >= HALVES {
        return None;
    }
    let (block, slot) = dir_position(half, index, blocks);
    map.get(block).map(|block| block.slots[slot])
}

/// Whether `addr` (network order) is inside a listed IPv4 CIDR.
///
/// A BPF subprogram, not inlined: inlined into the parser's function (three call sites), the
/// walk's unrolled levels shared its registers with the parser's offsets, LLVM spilled and
/// merged across both, one inlined copy of it made the verifier refuse the parser ("pointer
/// arithmetic with >>= operator prohibited", a stack slot reused on a path the verifier cannot
/// rule out), and a walk ending on a tail several levels down cost 7-15 ns more than its reads
/// (docs/lookup.md). As a call it costs 2-3 ns on every protected packet.
#[inline(never)]
pub fn allowed_v4(addr: [u8; 4]) -> bool {
    let addr = u32::from_be_bytes(addr);
    let Some(mut slot) = directory(ROOT_V4, &DIR_V4, V4_DIR_BLOCKS, dir_index_v4(addr)) else {
        return false;
    };
    let levels = Levels {
        nodes: &NODES_V4,
        deepest: V4_LEVELS,
        stride: V4_STRIDE,
        slot_at: |level| slot_v4(addr, level),
    };
    // One more round than levels: the last one reads the slot the deepest node gave.
    let leaf = walk!(levels, slot, [1 2 3 4 5 6 7]);
    // One copy of the tail's check, whatever the level the walk stopped at.
    match Slot::decode(leaf) {
        Slot::Full => true,
        Slot::Tail(index) => TAILS_V4
            .get(index)
            .is_some_and(|tail| addr & tail.mask == tail.prefix),
        Slot::Empty | Slot::Node(_) | Slot::Group { .. } => false,
    }
}

/// One family's nodes as the walk reads them: their map, how many levels the address has below
/// the directory, the stride, and the address's slot at a level.
struct Levels<'a, const F: usize, S: Fn(usize) -> usize> {
    nodes: &'a Array<Slots<F>>,
    deepest: usize,
    stride: u32,
    slot_at: S,
}

/// One level of the walk: what `slot` names, and if it is a node or a group, that node's slot for
/// the address (`level` is a constant in each unrolled copy).
#[inline(always)]
fn step<const F: usize, S: Fn(usize) -> usize>(
    slot: u32,
    levels: &Levels<F, S>,
    level: usize,
) -> Step {
    let slot_at = &levels.slot_at;
    match Slot::decode(slot) {
        Slot::Empty | Slot::Full | Slot::Tail(_) => Step::Stop(slot),
        // The compiler never nests nodes deeper than the address has strides; a corrupt
        // structure that does is treated as empty.
        Slot::Node(_) if level > levels.deepest => Step::Stop(SLOT_EMPTY),
        Slot::Node(index) => match levels.nodes.get(index) {
            Some(node) => Step::Next(node.slots[slot_at(level)]),
            None => Step::Stop(SLOT_EMPTY),
        },
        // The node a group names, from the strides it stands for, and that node's slot on the
        // stride after; none below the deepest level. `level` is a constant: the depths that
        // fit are decided when the walk is compiled.
        Slot::Group { first, depth } => {
            let (offset, next) = if depth == 1 && level < levels.deepest {
                (slot_at(level), slot_at(level + 1))
            } else if depth == 2 && level + 1 < levels.deepest {
                let offset = slot_at(level) << levels.stride | slot_at(level + 1);
                (offset, slot_at(level + 2))
            } else {
                return Step::Stop(SLOT_EMPTY);
            };
            match levels.nodes.get(first + offset as u32) {
                Some(node) => Step::Skip(depth, node.slots[next]),
                None => Step::Stop(SLOT_EMPTY),
            }
        }
    }
}

/// Whether `addr` (network order) is inside a listed IPv6 CIDR (a subprogram: see
/// [`allowed_v4`]).
#[inline(never)]
pub fn allowed_v6(addr: [u8; 16]) -> bool {
    let addr = u128::from_be_bytes(addr);
    let addr = [(addr >> 64) as u64, addr as u64];
    let Some(mut slot) = directory(ROOT_V6, &DIR_V6, V6_DIR_BLOCKS, dir_index_v6(addr)) else {
        return false;
    };
    let levels = Levels {
        nodes: &NODES_V6,
        deepest: V6_LEVELS,
        stride: V6_STRIDE,
        slot_at: |level| slot_v6(addr, level),
    };
    let leaf = walk!(levels, slot, [
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29
    ]);
    match Slot::decode(leaf) {
        Slot::Full => true,
        Slot::Tail(index) => TAILS_V6.get(index).is_some_and(|tail| {
            addr[0] & tail.mask[0] == tail.prefix[0] && addr[1] & tail.mask[1] == tail.prefix[1]
        }),
        Slot::Empty | Slot::Node(_) | Slot::Group { .. } => false,
    }
}
