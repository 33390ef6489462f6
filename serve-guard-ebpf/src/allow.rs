//! The allow-list lookup: a walk of the family's compiled trie (`serve_guard_common::trie`),
//! at most one node per nibble of the address, each an inlined array lookup. Its cost depends on
//! how deep the address's range is split, not on how many CIDRs are listed.

use serve_guard_common::trie::{
    ROOT_V4, ROOT_V6, Slot, V4_LEVELS, V6_LEVELS, nibble_v4, nibble_v6,
};

use crate::maps::{NODES_V4, NODES_V6, ROOTS, TAILS_V4, TAILS_V6};

/// Whether `addr` (network order) is inside a listed IPv4 CIDR.
#[inline(always)]
pub fn allowed_v4(addr: [u8; 4]) -> bool {
    let addr = u32::from_be_bytes(addr);
    let mut slot = root(ROOT_V4);
    // One more round than levels: the last one reads the slot the deepest node gave.
    for level in 0..=V4_LEVELS {
        match Slot::decode(slot) {
            Slot::Empty => return false,
            Slot::Full => return true,
            Slot::Tail(index) => {
                return TAILS_V4
                    .get(index)
                    .is_some_and(|tail| addr & tail.mask == tail.prefix);
            }
            // The compiler never nests nodes deeper than the address has nibbles; a corrupt
            // trie that does is treated as empty.
            Slot::Node(_) if level == V4_LEVELS => return false,
            Slot::Node(index) => match NODES_V4.get(index) {
                Some(node) => slot = node.slots[nibble_v4(addr, level)],
                None => return false,
            },
        }
    }
    false
}

/// Whether `addr` (network order) is inside a listed IPv6 CIDR.
#[inline(always)]
pub fn allowed_v6(addr: [u8; 16]) -> bool {
    let addr = u128::from_be_bytes(addr);
    let addr = [(addr >> 64) as u64, addr as u64];
    let mut slot = root(ROOT_V6);
    for level in 0..=V6_LEVELS {
        match Slot::decode(slot) {
            Slot::Empty => return false,
            Slot::Full => return true,
            Slot::Tail(index) => {
                return TAILS_V6.get(index).is_some_and(|tail| {
                    addr[0] & tail.mask[0] == tail.prefix[0]
                        && addr[1] & tail.mask[1] == tail.prefix[1]
                });
            }
            Slot::Node(_) if level == V6_LEVELS => return false,
            Slot::Node(index) => match NODES_V6.get(index) {
                Some(node) => slot = node.slots[nibble_v6(addr, level)],
                None => return false,
            },
        }
    }
    false
}

/// A missing root reads as empty: fail closed.
#[inline(always)]
fn root(family: u32) -> u32 {
    ROOTS.get(family).copied().unwrap_or_default()
}
