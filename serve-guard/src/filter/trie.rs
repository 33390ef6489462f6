//! Compiling an allow-list into the directory and trie the XDP program walks (layout in
//! `serve_guard_common::trie`), and reading them back as the set of addresses they allow.
//!
//! Addresses are handled as `u128` left-aligned (an IPv4 address in the top 32 bits), so one
//! compiler serves both families; a [`Shape`] says the family's width and stride, and only the
//! tails' format differs.

use serve_guard_common::trie::{
    GROUP_MAX_DEPTH, Slot, V4_BITS, V4_DIR_BITS, V4_STRIDE, V6_BITS, V6_DIR_BITS, V6_STRIDE,
};

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
}

/// Mask of the first `len` bits of a left-aligned address.
pub fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        len => u128::MAX << (u128::BITS - u32::from(len)),
    }
}

/// A family's address width, the bits its directory takes and the stride of its nodes below
/// it. Level 0 is the directory (the whole space, split on the first `dir_bits` bits); a node at
/// level `k >= 1` splits a range of `dir_bits + (k - 1) * stride` fixed bits on the next `stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub width: u8,
    pub dir_bits: u32,
    pub stride: u32,
}

impl Shape {
    pub const V4: Shape = Shape {
        width: V4_BITS as u8,
        dir_bits: V4_DIR_BITS,
        stride: V4_STRIDE,
    };
    pub const V6: Shape = Shape {
        width: V6_BITS as u8,
        dir_bits: V6_DIR_BITS,
        stride: V6_STRIDE,
    };

    /// Slots per node.
    pub fn fanout(self) -> usize {
        1 << self.stride
    }

    /// Slots of the directory.
    pub fn dir_slots(self) -> usize {
        1 << self.dir_bits
    }

    /// Node levels below the directory.
    pub fn levels(self) -> u32 {
        (u32::from(self.width) - self.dir_bits) / self.stride
    }

    /// Fixed bits of a child range of the node (or directory) at `level`.
    fn child_len(self, level: u32) -> u32 {
        self.dir_bits + level * self.stride
    }

    /// The slot of the left-aligned `bits` in the node (or directory) at `level`.
    fn index(self, bits: u128, level: u32) -> usize {
        let end = self.child_len(level);
        let width = if level == 0 {
            self.dir_bits
        } else {
            self.stride
        };
        ((bits >> (u128::BITS - end)) & ((1u128 << width) - 1)) as usize
    }

    /// The first address of child `n` of the range `bits` at `level`.
    fn child_bits(self, bits: u128, level: u32, n: usize) -> u128 {
        bits | ((n as u128) << (u128::BITS - self.child_len(level)))
    }
}

/// A compiled allow-list for one half of the maps: slots already carry the half's global
/// indices. `dir` is empty for an empty list (the root slot then says so: nothing is read).
#[derive(Debug, Default)]
pub struct Compiled {
    pub root: u32,
    pub dir: Vec<u32>,
    /// The nodes' slots, `fanout` a node, in node order.
    pub nodes: Vec<u32>,
    pub tails: Vec<Prefix>,
}

/// Where the compiled list goes: the directory half, and the index of its first node and first
/// tail in the maps.
#[derive(Clone, Copy, Debug)]
pub struct Bases {
    pub half: u32,
    pub node: u32,
    pub tail: u32,
}

/// Where the compiler stores nodes as groups (level compression, `serve_guard_common::trie`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// Never: the structure before groups, which tests compare with.
    Never,
    /// Only where a group takes no more nodes than the node(s) it replaces with their children:
    /// a list never needs more nodes than without groups.
    Free,
    /// Also a depth-2 group where at least a quarter of its 256 nodes would be nodes anyway
    /// (the top of a list of hundreds of thousands, whose ranges the list covers whole or in
    /// part): at most four times the nodes there, for one read fewer on every address below.
    Dense,
}

impl Grouping {
    /// Whether a group of `depth` storing `nodes` nodes may replace `replaced` nodes.
    fn allows(self, depth: u32, replaced: usize, nodes: usize) -> bool {
        match self {
            Grouping::Never => false,
            Grouping::Dense if depth == GROUP_MAX_DEPTH => replaced * 4 >= nodes,
            Grouping::Free | Grouping::Dense => replaced >= nodes,
        }
    }
}

/// Compiles `prefixes` (any order, overlaps allowed: an address is allowed iff some prefix
/// contains it) into a directory, nodes and tails numbered from `bases`.
pub fn compile(prefixes: &[Prefix], shape: Shape, bases: Bases, grouping: Grouping) -> Compiled {
    let disjoint = disjoint(prefixes);
    let mut out = Compiled::default();
    if disjoint.is_empty() {
        out.root = Slot::Empty.encode();
        return out;
    }
    let mut builder = Builder {
        shape,
        bases,
        grouping,
        out: &mut out,
    };
    let dir = builder.split(&disjoint, 0);
    debug_assert_eq!(dir.len(), shape.dir_slots());
    out.dir = dir;
    out.root = Slot::Node(bases.half).encode();
    out
}

/// [`compile`] for maps of `node_budget` nodes a half: dense groups where the budget has room
/// for them, else only free ones, which fit wherever the list without groups fits. The caller
/// still checks the result against the budget (a list may not fit at all).
pub fn compile_within(
    prefixes: &[Prefix],
    shape: Shape,
    bases: Bases,
    node_budget: usize,
) -> (Compiled, Grouping) {
    let dense = compile(prefixes, shape, bases, Grouping::Dense);
    if dense.nodes.len() / shape.fanout() <= node_budget {
        return (dense, Grouping::Dense);
    }
    (
        compile(prefixes, shape, bases, Grouping::Free),
        Grouping::Free,
    )
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

struct Builder<'a> {
    shape: Shape,
    bases: Bases,
    grouping: Grouping,
    out: &'a mut Compiled,
}

impl Builder<'_> {
    /// The slot for a child range of `level` (its first `child_len(level)` bits fixed) that
    /// holds exactly `prefixes` (disjoint, sorted, all inside the range).
    fn slot(&mut self, prefixes: &[Prefix], level: u32) -> u32 {
        match prefixes {
            [] => Slot::Empty.encode(),
            // Disjoint prefixes: one that covers the range is alone in it.
            [p] if u32::from(p.len) <= self.shape.child_len(level) => Slot::Full.encode(),
            [p] => {
                let index = self.bases.tail + self.out.tails.len() as u32;
                self.out.tails.push(*p);
                Slot::Tail(index).encode()
            }
            _ => {
                // Two disjoint prefixes in one range: the range is wider than one address, so
                // the node's level exists.
                let children = self.shape.children(prefixes, level + 1);
                // The node, and its children that are nodes.
                let replaced = 1 + children.iter().filter(|c| c.len() >= 2).count();
                let levels = self.shape.levels();
                // Each grandchild that is a node holds two prefixes: with too few prefixes
                // for the rule, the 256 grandchildren are not worth splitting out.
                let at_most = replaced + (prefixes.len() / 2).min(1 << (2 * self.shape.stride));
                if level + GROUP_MAX_DEPTH < levels
                    && self
                        .grouping
                        .allows(GROUP_MAX_DEPTH, at_most, 1 << (2 * self.shape.stride))
                {
                    let grandchildren: Vec<&[Prefix]> = children
                        .iter()
                        .flat_map(|child| self.shape.children(child, level + 2))
                        .collect();
                    let replaced = replaced + grandchildren.iter().filter(|c| c.len() >= 2).count();
                    if self
                        .grouping
                        .allows(GROUP_MAX_DEPTH, replaced, grandchildren.len())
                    {
                        return self.group(&grandchildren, level, GROUP_MAX_DEPTH);
                    }
                }
                if level + 1 < levels && self.grouping.allows(1, replaced, children.len()) {
                    return self.group(&children, level, 1);
                }
                let local = self.reserve(1);
                let slots: Vec<u32> = children
                    .iter()
                    .map(|child| self.slot(child, level + 1))
                    .collect();
                self.place(local, &slots);
                Slot::Node(self.bases.node + local as u32).encode()
            }
        }
    }

    /// A group standing for the `depth` levels below a child range of `level`: one node per
    /// range of `ranges` (the ranges `depth` strides below, in address order).
    fn group(&mut self, ranges: &[&[Prefix]], level: u32, depth: u32) -> u32 {
        let first = self.reserve(ranges.len());
        for (n, range) in ranges.iter().enumerate() {
            let slots = self.split(range, level + depth + 1);
            self.place(first + n, &slots);
        }
        Slot::Group {
            first: self.bases.node + first as u32,
            depth,
        }
        .encode()
    }

    /// The slots of the node (or directory) at `level` over a range holding exactly
    /// `prefixes` (disjoint, sorted, all inside it).
    fn split(&mut self, prefixes: &[Prefix], level: u32) -> Vec<u32> {
        self.shape
            .children(prefixes, level)
            .iter()
            .map(|child| self.slot(child, level))
            .collect()
    }

    /// Appends `count` consecutive empty nodes; returns the first one's local index. Nodes are
    /// numbered before their children are compiled, so a parent precedes its children.
    fn reserve(&mut self, count: usize) -> usize {
        let fanout = self.shape.fanout();
        let first = self.out.nodes.len() / fanout;
        self.out
            .nodes
            .resize(self.out.nodes.len() + count * fanout, Slot::Empty.encode());
        first
    }

    fn place(&mut self, local: usize, slots: &[u32]) {
        let fanout = self.shape.fanout();
        self.out.nodes[local * fanout..(local + 1) * fanout].copy_from_slice(slots);
    }
}

impl Shape {
    /// The prefixes inside each child range of the node (or directory) at `level`, from a
    /// range holding exactly `prefixes` (disjoint, sorted): one slice per child, in order. A
    /// prefix that covers several children is in each of their slices, alone.
    fn children(self, prefixes: &[Prefix], level: u32) -> Vec<&[Prefix]> {
        let fanout = if level == 0 {
            self.dir_slots()
        } else {
            self.fanout()
        };
        let child_len = self.child_len(level);
        // A prefix that covers the whole range (inside a group: a child it covered with its
        // neighbours) covers every child.
        let range_len = child_len
            - if level == 0 {
                self.dir_bits
            } else {
                self.stride
            };
        if let [p] = prefixes
            && u32::from(p.len) <= range_len
        {
            return vec![prefixes; fanout];
        }
        let mut children: Vec<&[Prefix]> = vec![&[]; fanout];
        let mut rest = prefixes;
        while let Some(p) = rest.first() {
            let first = self.index(p.bits, level);
            if u32::from(p.len) < child_len {
                let span = 1usize << (child_len - u32::from(p.len));
                children[first..first + span].fill(&rest[..1]);
                rest = &rest[1..];
                continue;
            }
            let here = rest.partition_point(|p| self.index(p.bits, level) == first);
            children[first] = &rest[..here];
            rest = &rest[here..];
        }
        children
    }
}

/// Read access to a compiled list in the maps, for [`allowed_set`] and [`lookup`].
pub trait TrieSource {
    /// Slot `index` of directory `half`, `None` past the map.
    fn dir_slot(&self, half: u32, index: usize) -> Option<u32>;
    /// Slot `index` of the node at a global index, `None` past the map.
    fn node_slot(&self, node: u32, index: usize) -> Option<u32>;
    /// The prefix of the tail at a global index, `None` past the map.
    fn tail(&self, index: u32) -> Option<Prefix>;
}

/// A structure that cannot be read back: an index past its map, or nodes deeper than the
/// address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt allow-list: {0}")]
pub struct Corrupt(pub String);

/// Every prefix the structure starting at `root` allows, disjoint and sorted: the set of
/// allowed addresses, whatever list it was compiled from.
pub fn allowed_set(
    root: u32,
    shape: Shape,
    source: &impl TrieSource,
) -> Result<Vec<Prefix>, Corrupt> {
    let mut out = Vec::new();
    match Slot::decode(root) {
        Slot::Empty => {}
        Slot::Node(half) => {
            for n in 0..shape.dir_slots() {
                let slot = source
                    .dir_slot(half, n)
                    .ok_or_else(|| Corrupt(format!("directory {half} is past the map")))?;
                walk(slot, shape.child_bits(0, 0, n), 0, shape, source, &mut out)?;
            }
        }
        other => return Err(Corrupt(format!("root slot {other:?} is not a directory"))),
    }
    out.sort_unstable();
    Ok(out)
}

/// Collects what the child slot `slot` of `level`, for the range `bits`, allows.
fn walk(
    slot: u32,
    bits: u128,
    level: u32,
    shape: Shape,
    source: &impl TrieSource,
    out: &mut Vec<Prefix>,
) -> Result<(), Corrupt> {
    let len = shape.child_len(level);
    match Slot::decode(slot) {
        Slot::Empty => {}
        Slot::Full => out.push(Prefix::new(bits, len as u8)),
        Slot::Tail(index) => {
            let tail = source
                .tail(index)
                .ok_or_else(|| Corrupt(format!("tail {index} is past the map")))?;
            if tail.len > shape.width || tail.bits & mask(len as u8) != bits {
                return Err(Corrupt(format!(
                    "tail {index} lies outside the range that points to it"
                )));
            }
            out.push(tail);
        }
        Slot::Node(index) => {
            if level >= shape.levels() {
                return Err(Corrupt(format!("node {index} is deeper than the address")));
            }
            walk_node(index, bits, level + 1, shape, source, out)?;
        }
        Slot::Group { first, depth } => {
            if level + depth >= shape.levels() {
                return Err(Corrupt(format!("group {first} is deeper than the address")));
            }
            let stride = shape.stride;
            for n in 0..1usize << (stride * depth) {
                let node = first
                    .checked_add(n as u32)
                    .ok_or_else(|| Corrupt(format!("group {first} is past the map")))?;
                // The node's range: the group's range, then one stride of `n` per level.
                let range = (0..depth).fold(bits, |range, i| {
                    let digit = (n >> (stride * (depth - 1 - i))) & (shape.fanout() - 1);
                    shape.child_bits(range, level + 1 + i, digit)
                });
                walk_node(node, range, level + depth + 1, shape, source, out)?;
            }
        }
    }
    Ok(())
}

/// Collects what the node `index` at `level`, over the range `bits`, allows.
fn walk_node(
    index: u32,
    bits: u128,
    level: u32,
    shape: Shape,
    source: &impl TrieSource,
    out: &mut Vec<Prefix>,
) -> Result<(), Corrupt> {
    for n in 0..shape.fanout() {
        let child = source
            .node_slot(index, n)
            .ok_or_else(|| Corrupt(format!("node {index} is past the map")))?;
        walk(
            child,
            shape.child_bits(bits, level, n),
            level,
            shape,
            source,
            out,
        )?;
    }
    Ok(())
}

/// The program's walk on the host: whether the structure starting at `root` allows `addr`
/// (left-aligned), and how many map elements the program reads to say so (the root slot, the
/// directory block, each node, the tail). A corrupt structure (an index past its map, nodes
/// deeper than the address) denies, as the program does; `level` is the program's unrolled
/// level, a group moving it on by two.
pub fn lookup(root: u32, addr: u128, shape: Shape, source: &impl TrieSource) -> (bool, usize) {
    let mut reads = 1;
    let Slot::Node(half) = Slot::decode(root) else {
        return (false, reads);
    };
    reads += 1;
    let Some(mut slot) = source.dir_slot(half, shape.index(addr, 0)) else {
        return (false, reads);
    };
    let mut level = 1;
    while level <= shape.levels() + 1 {
        match Slot::decode(slot) {
            Slot::Empty => return (false, reads),
            Slot::Full => return (true, reads),
            Slot::Tail(index) => {
                let allowed = source
                    .tail(index)
                    .is_some_and(|tail| addr & mask(tail.len) == tail.bits);
                return (allowed, reads + 1);
            }
            Slot::Node(_) if level > shape.levels() => return (false, reads),
            Slot::Node(index) => {
                reads += 1;
                match source.node_slot(index, shape.index(addr, level)) {
                    Some(next) => slot = next,
                    None => return (false, reads),
                }
                level += 1;
            }
            Slot::Group { depth, .. } if level + depth > shape.levels() => return (false, reads),
            Slot::Group { first, depth } => {
                reads += 1;
                let offset = (level..level + depth).fold(0, |offset, l| {
                    offset << shape.stride | shape.index(addr, l) as u32
                });
                let index = shape.index(addr, level + depth);
                match first
                    .checked_add(offset)
                    .and_then(|node| source.node_slot(node, index))
                {
                    Some(next) => slot = next,
                    None => return (false, reads),
                }
                level += depth + 1;
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
