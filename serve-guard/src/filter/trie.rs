//! Compiling an allow-list into the trie the XDP program walks (layout in
//! `serve_guard_common::trie`), and reading a trie back as the set of addresses it allows.
//!
//! Addresses are handled as `u128` left-aligned (an IPv4 address in the top 32 bits), so one
//! compiler serves both families; only the tails' format differs.

use serve_guard_common::trie::{FANOUT, STRIDE, STRIDE_MASK, Slot, TrieNode};

/// A prefix as the compiler sees it: left-aligned address bits, host bits clear, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub bits: u128,
    pub len: u8,
}

impl Prefix {
    pub fn new(bits: u128, len: u8) -> Self {
        Self {
            bits: bits & mask(len),
            len,
        }
    }

    fn contains(&self, other: &Prefix) -> bool {
        self.len <= other.len && other.bits & mask(self.len) == self.bits
    }

    /// The `STRIDE` bits of the address at `level`.
    fn nibble(&self, level: u32) -> usize {
        nibble(self.bits, level)
    }
}

/// Mask of the first `len` bits of a left-aligned address.
pub fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        len => u128::MAX << (u128::BITS - u32::from(len)),
    }
}

fn nibble(bits: u128, level: u32) -> usize {
    ((bits >> (u128::BITS - STRIDE * (level + 1))) & u128::from(STRIDE_MASK)) as usize
}

/// A compiled trie for one half of the maps: slots already carry the half's global indices.
#[derive(Debug, Default)]
pub struct Compiled {
    pub root: u32,
    pub nodes: Vec<TrieNode>,
    pub tails: Vec<Prefix>,
}

/// Where the compiled trie goes: the index of its first node and first tail in the maps.
#[derive(Clone, Copy, Debug)]
pub struct Bases {
    pub node: u32,
    pub tail: u32,
}

/// Compiles `prefixes` (any order, overlaps allowed: an address is allowed iff some prefix
/// contains it) into nodes and tails numbered from `bases`.
pub fn compile(prefixes: &[Prefix], bases: Bases) -> Compiled {
    let disjoint = disjoint(prefixes);
    let mut out = Compiled::default();
    out.root = build(&disjoint, 0, bases, &mut out);
    out
}

/// Sorted, without prefixes another one contains: what remains is pairwise disjoint.
fn disjoint(prefixes: &[Prefix]) -> Vec<Prefix> {
    let mut sorted = prefixes.to_vec();
    // By address, then shortest first, so a covering prefix comes before what it contains.
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<Prefix> = Vec::with_capacity(sorted.len());
    for p in sorted {
        if out.last().is_none_or(|last| !last.contains(&p)) {
            out.push(p);
        }
    }
    out
}

/// The slot for the range at `level` (its first `STRIDE * level` bits fixed) that holds exactly
/// `prefixes` (disjoint, sorted, all inside the range).
fn build(prefixes: &[Prefix], level: u32, bases: Bases, out: &mut Compiled) -> u32 {
    match prefixes {
        [] => Slot::Empty.encode(),
        // Disjoint prefixes: one that covers the range is alone in it.
        [p] if u32::from(p.len) <= STRIDE * level => Slot::Full.encode(),
        [p] => {
            let index = bases.tail + out.tails.len() as u32;
            out.tails.push(*p);
            Slot::Tail(index).encode()
        }
        _ => {
            // Two disjoint prefixes in one range: the range is wider than one address, so
            // `level` is below the number of levels and the node's nibble exists.
            let local = out.nodes.len();
            out.nodes.push(TrieNode::default());
            let mut slots = [Slot::Empty.encode(); FANOUT];
            let child_len = STRIDE * (level + 1);
            let mut rest = prefixes;
            for (n, slot) in slots.iter_mut().enumerate() {
                // A prefix shorter than the child ranges covers several of them: all full.
                if let Some(p) = rest.first()
                    && u32::from(p.len) < child_len
                    && covers_nibble(p, level, n)
                {
                    *slot = Slot::Full.encode();
                    if is_last_nibble_of(p, level, n) {
                        rest = &rest[1..];
                    }
                    continue;
                }
                let here = rest.partition_point(|p| p.nibble(level) == n);
                *slot = build(&rest[..here], level + 1, bases, out);
                rest = &rest[here..];
            }
            out.nodes[local] = TrieNode { slots };
            Slot::Node(bases.node + local as u32).encode()
        }
    }
}

/// Whether a prefix shorter than the child ranges of `level` covers child `n`.
fn covers_nibble(p: &Prefix, level: u32, n: usize) -> bool {
    let span = 1usize << (STRIDE * (level + 1) - u32::from(p.len));
    let first = p.nibble(level);
    (first..first + span).contains(&n)
}

fn is_last_nibble_of(p: &Prefix, level: u32, n: usize) -> bool {
    let span = 1usize << (STRIDE * (level + 1) - u32::from(p.len));
    n == p.nibble(level) + span - 1
}

/// Read access to a trie in the maps, for [`allowed_set`].
pub trait TrieSource {
    /// The node at a global index, `None` past the map.
    fn node(&self, index: u32) -> Option<TrieNode>;
    /// The prefix of the tail at a global index, `None` past the map.
    fn tail(&self, index: u32) -> Option<Prefix>;
}

/// A trie that cannot be read back: an index past its map, or nodes deeper than the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt allow-list trie: {0}")]
pub struct Corrupt(pub String);

/// Every prefix the trie starting at `root` allows, disjoint and sorted: the set of allowed
/// addresses, whatever list it was compiled from. `width` is the address width in bits.
pub fn allowed_set(root: u32, width: u8, source: &impl TrieSource) -> Result<Vec<Prefix>, Corrupt> {
    let mut out = Vec::new();
    walk(root, 0, 0, width, source, &mut out)?;
    out.sort_unstable();
    Ok(out)
}

fn walk(
    slot: u32,
    bits: u128,
    level: u32,
    width: u8,
    source: &impl TrieSource,
    out: &mut Vec<Prefix>,
) -> Result<(), Corrupt> {
    match Slot::decode(slot) {
        Slot::Empty => {}
        Slot::Full => out.push(Prefix::new(bits, (STRIDE * level) as u8)),
        Slot::Tail(index) => {
            let tail = source
                .tail(index)
                .ok_or_else(|| Corrupt(format!("tail {index} is past the map")))?;
            if tail.len > width || tail.bits & mask(STRIDE as u8 * level as u8) != bits {
                return Err(Corrupt(format!(
                    "tail {index} lies outside the range that points to it"
                )));
            }
            out.push(tail);
        }
        Slot::Node(index) => {
            if STRIDE * level >= u32::from(width) {
                return Err(Corrupt(format!("node {index} is deeper than the address")));
            }
            let node = source
                .node(index)
                .ok_or_else(|| Corrupt(format!("node {index} is past the map")))?;
            for (n, &child) in node.slots.iter().enumerate() {
                let child_bits = bits | ((n as u128) << (u128::BITS - STRIDE * (level + 1)));
                walk(child, child_bits, level + 1, width, source, out)?;
            }
        }
    }
    Ok(())
}

/// The program's walk on the host: whether the trie starting at `root` allows `addr`
/// (left-aligned, `width` bits wide), and how many map elements the program reads to say so
/// (the root slot, each node, the tail). A corrupt trie (an index past its map, nodes deeper
/// than the address) denies, as the program does.
pub fn lookup(root: u32, addr: u128, width: u8, source: &impl TrieSource) -> (bool, usize) {
    let mut slot = root;
    let mut reads = 1;
    for level in 0..=u32::from(width) / STRIDE {
        match Slot::decode(slot) {
            Slot::Empty => return (false, reads),
            Slot::Full => return (true, reads),
            Slot::Tail(index) => {
                let allowed = source
                    .tail(index)
                    .is_some_and(|tail| addr & mask(tail.len) == tail.bits);
                return (allowed, reads + 1);
            }
            Slot::Node(_) if level == u32::from(width) / STRIDE => return (false, reads),
            Slot::Node(index) => {
                reads += 1;
                match source.node(index) {
                    Some(node) => slot = node.slots[nibble(addr, level)],
                    None => return (false, reads),
                }
            }
        }
    }
    (false, reads)
}

/// The addresses `prefixes` cover, as the fewest prefixes, sorted.
pub fn union(prefixes: &[Prefix]) -> Vec<Prefix> {
    merged(&disjoint(prefixes))
}

/// Merges a sorted, disjoint set into the fewest prefixes (siblings into their parent), so
/// two tries, or a trie and a list, compare by the addresses they allow.
pub fn merged(set: &[Prefix]) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = Vec::with_capacity(set.len());
    for &p in set {
        let mut p = p;
        while let Some(&last) = out.last() {
            if p.len == 0 || last.len != p.len {
                break;
            }
            let parent = Prefix::new(p.bits, p.len - 1);
            if !parent.contains(&last) {
                break;
            }
            out.pop();
            p = parent;
        }
        if out.last().is_none_or(|last| !last.contains(&p)) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests;
