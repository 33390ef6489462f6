//! Layout of the allow-list: per address family a directory on the address's first bits (IPv4:
//! /8, IPv6: /16), then a leaf-pushed trie of 4-bit strides below it, walked by the XDP program
//! with array lookups only (no hash, no LPM trie). A lookup reads the family's root slot, one
//! directory slot, at most one node per stride below the directory ([`V4_LEVELS`],
//! [`V6_LEVELS`]) and maybe a tail: one or two reads fewer than the nibble trie from the root; how many nodes depends on how
//! densely the list fills the space around the address (docs/lookup.md).
//!
//! - A *slot* (`u32`) stands for a range of addresses (an aligned prefix): [`SLOT_EMPTY`] (no
//!   address of the range is allowed), [`SLOT_FULL`] (every address is), a *tail* (exactly the
//!   addresses of one listed prefix inside the range are; [`TAIL_TAG`] | index into the tails
//!   map), a *node* ([`NODE_BASE`] + index into the nodes map), or a *group* ([`GROUP_TAG`],
//!   [`GROUP_DEEP`] for depth 2, | index of the group's first node).
//! - A group is level compression where the list is dense: it stands for one level of nodes
//!   (depth 1: a node) or two (depth 2: a node and its 16 children) that are not stored; the
//!   nodes below them are, all 16 or 256 of them, in address order from the group's index. The
//!   walk takes the node from the next one or two strides of the address instead of reading
//!   it, then reads that node's slot on the stride after: two or three strides for one read.
//!   The compiler makes groups where the list fills the range densely (docs/lookup.md), and
//!   only those that take no more nodes than they replace when the list is near its budget.
//! - A directory is stored as blocks of [`DIR_BLOCK_SLOTS`] (array elements are padded to 8
//!   bytes: one `u32` each would double it). IPv4's is 1 KiB a half: a /16 directory (256 KiB)
//!   was measured and missed the caches and the TLB for denied sources spread over the whole
//!   space at short lists (docs/lookup.md). IPv6's is 256 KiB a half: its lists and the sources
//!   that matter sit in few /16s. A node splits its range on the next stride of the address.
//!   Slots are leaf-pushed: the walk stops at the first slot that is not a node, so it never
//!   needs to remember a shorter match (a listed range covers every address below it).
//! - The root slot of a family (roots map) is [`SLOT_EMPTY`] (no list) or a node slot whose
//!   index is the directory half in use. The directories, nodes and tails maps have two halves.
//!   A list change is compiled into the halves the live root does not use, then the root slot is
//!   switched with one aligned 32-bit store: every packet walks either the whole old structure or
//!   the whole new one. Before a half is rewritten the agent waits for an RCU grace period, after
//!   which no program run can still be walking it.
//! - All-zero maps mean an empty allow-list: fail closed.

/// Address bits each family's directory consumes.
pub const V4_DIR_BITS: u32 = 8;
pub const V6_DIR_BITS: u32 = 16;
/// Slots of one directory (one half).
pub const V4_DIR_SLOTS: usize = 1 << V4_DIR_BITS;
pub const V6_DIR_SLOTS: usize = 1 << V6_DIR_BITS;
/// Slots per directory block (one array element); a power of two.
pub const DIR_BLOCK_SLOTS: usize = 256;
/// Address bits of a directory index that select the slot inside its block.
pub const DIR_BLOCK_BITS: u32 = DIR_BLOCK_SLOTS.trailing_zeros();
/// Blocks of one directory half.
pub const V4_DIR_BLOCKS: u32 = (V4_DIR_SLOTS / DIR_BLOCK_SLOTS) as u32;
pub const V6_DIR_BLOCKS: u32 = (V6_DIR_SLOTS / DIR_BLOCK_SLOTS) as u32;

/// Address bits consumed per IPv4 node below the directory: nibbles, as the trie before the
/// directory had. 8-bit strides (/8 -> /16 -> /24 -> /32, one read fewer or two) were measured:
/// their 1 KiB nodes spread a list over 4-16 times the memory of 64-byte nibble nodes, and under
/// sources rotating over 1,000-60,000 CIDRs that cost more in cache and TLB misses (107-111 ns
/// against the trie's 100 at 1,000) than the reads they save (docs/lookup.md).
pub const V4_STRIDE: u32 = 4;
/// Address bits consumed per IPv6 node below the directory: nibbles, as the trie before the
/// directory had. IPv6 lists are sparse in the 112 bits below a /16: 256-slot nodes would be
/// mostly empty (1 KiB each; the benchmark's random list of 65,536 needs 17,587 of them, 17 MiB a
/// half, against 23,646 nibble nodes of 64 bytes, 1.5 MiB), for 2-3 fewer reads.
pub const V6_STRIDE: u32 = 4;
/// Slots per node.
pub const V4_FANOUT: usize = 1 << V4_STRIDE;
pub const V6_FANOUT: usize = 1 << V6_STRIDE;

pub const SLOT_EMPTY: u32 = 0;
pub const SLOT_FULL: u32 = 1;
/// Slot values from here up to [`TAIL_TAG`] are nodes.
pub const NODE_BASE: u32 = 2;
/// High bit set: the rest of the slot indexes the tails map.
pub const TAIL_TAG: u32 = 1 << 31;
/// Next bit set (and not the high one): a group; the rest of the slot but [`GROUP_DEEP`] is the
/// index of its first node. A program of the layout before groups reads one as a node past its
/// map, and denies.
pub const GROUP_TAG: u32 = 1 << 30;
/// In a group slot: depth 2 (two levels not stored, 256 nodes) instead of 1 (16 nodes).
pub const GROUP_DEEP: u32 = 1 << 29;
/// The most levels one group stands for.
pub const GROUP_MAX_DEPTH: u32 = 2;

/// Index of each family's root slot in the roots map.
pub const ROOT_V4: u32 = 0;
pub const ROOT_V6: u32 = 1;
pub const ROOT_ENTRIES: u32 = 2;

/// Address widths, and the most nodes a walk can visit below the directory (one per stride).
pub const V4_BITS: u32 = 32;
pub const V6_BITS: u32 = 128;
pub const V4_LEVELS: usize = ((V4_BITS - V4_DIR_BITS) / V4_STRIDE) as usize;
pub const V6_LEVELS: usize = ((V6_BITS - V6_DIR_BITS) / V6_STRIDE) as usize;
// Strides tile the address below the directory, and none straddles IPv6's two 64-bit words.
const _: () = assert!((V4_BITS - V4_DIR_BITS).is_multiple_of(V4_STRIDE));
const _: () = assert!((V6_BITS - V6_DIR_BITS).is_multiple_of(V6_STRIDE));
const _: () = assert!((u64::BITS - V6_DIR_BITS).is_multiple_of(V6_STRIDE));
const _: () = assert!(V4_DIR_SLOTS.is_multiple_of(DIR_BLOCK_SLOTS));
const _: () = assert!(V6_DIR_SLOTS.is_multiple_of(DIR_BLOCK_SLOTS));

/// The CIDRs per family the maps are built for unless configured otherwise (`max_cidrs`).
pub const DEFAULT_CIDRS_PER_FAMILY: u32 = 1 << 16;
/// The most `max_cidrs` may be: 2^20 per family.
pub const MAX_CIDRS_PER_FAMILY: u32 = 1 << 20;
/// The fewest `max_cidrs` may be (and a multiple of it, so both halves stay aligned).
pub const MIN_CIDRS_PER_FAMILY: u32 = 1 << 4;

/// Entries of each map: two halves.
pub const HALVES: u32 = 2;

/// How many entries each allow-list map has, for a capacity of `cidrs` per family. Tails: one
/// per listed prefix at most, so `cidrs` per half. Nodes exist only where at least two listed
/// prefixes share a range: as the nibble trie had, IPv4 one per 2 CIDRs, IPv6 one per CIDR (the
/// benchmark's random lists need one per 2.8 CIDRs of either family at 65,536 and 1,048,576);
/// measured by the compiler's test `random_lists_stay_within_the_node_budget`. The compiler
/// reports a full map when a list needs more (many long prefixes, pairs in their own /24s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub tails_per_half: u32,
    pub nodes_per_half_v4: u32,
    pub nodes_per_half_v6: u32,
}

impl Capacity {
    pub const fn for_cidrs(cidrs: u32) -> Capacity {
        Capacity {
            tails_per_half: cidrs,
            nodes_per_half_v4: cidrs / 2,
            nodes_per_half_v6: cidrs,
        }
    }

    pub const fn nodes_v4_entries(self) -> u32 {
        HALVES * self.nodes_per_half_v4
    }

    pub const fn nodes_v6_entries(self) -> u32 {
        HALVES * self.nodes_per_half_v6
    }

    pub const fn tails_entries(self) -> u32 {
        HALVES * self.tails_per_half
    }

    /// Bytes of locked kernel memory the allow-list maps take, both families, both halves.
    pub const fn bytes(self) -> u64 {
        let dirs = (DIR_V4_ENTRIES + DIR_V6_ENTRIES) as u64 * size_of::<DirBlock>() as u64;
        let nodes = self.nodes_v4_entries() as u64 * size_of::<NodeV4>() as u64
            + self.nodes_v6_entries() as u64 * size_of::<NodeV6>() as u64;
        let tails =
            self.tails_entries() as u64 * (size_of::<TailV4>() as u64 + size_of::<TailV6>() as u64);
        dirs + nodes + tails
    }
}

/// The sizes the eBPF object declares (the loader overrides them with the configured ones).
pub const DEFAULT_CAPACITY: Capacity = Capacity::for_cidrs(DEFAULT_CIDRS_PER_FAMILY);
pub const NODES_V4_ENTRIES: u32 = DEFAULT_CAPACITY.nodes_v4_entries();
pub const NODES_V6_ENTRIES: u32 = DEFAULT_CAPACITY.nodes_v6_entries();
pub const TAILS_ENTRIES: u32 = DEFAULT_CAPACITY.tails_entries();
pub const DIR_V4_ENTRIES: u32 = HALVES * V4_DIR_BLOCKS;
pub const DIR_V6_ENTRIES: u32 = HALVES * V6_DIR_BLOCKS;

// Every node and tail index of both halves, at the largest capacity, must fit its slot encoding.
pub const LARGEST_CAPACITY: Capacity = Capacity::for_cidrs(MAX_CIDRS_PER_FAMILY);
const _: () =
    assert!(NODE_BASE as u64 + LARGEST_CAPACITY.nodes_v4_entries() as u64 <= GROUP_TAG as u64);
const _: () =
    assert!(NODE_BASE as u64 + LARGEST_CAPACITY.nodes_v6_entries() as u64 <= GROUP_TAG as u64);
// A group's first node index and the last one it names fit below the depth bit.
const _: () = assert!(
    LARGEST_CAPACITY.nodes_v6_entries() as u64 + (1 << (2 * V6_STRIDE)) < GROUP_DEEP as u64
);
const _: () = assert!(
    LARGEST_CAPACITY.nodes_v4_entries() as u64 + (1 << (2 * V4_STRIDE)) < GROUP_DEEP as u64
);
const _: () = assert!((LARGEST_CAPACITY.tails_entries() as u64) < TAIL_TAG as u64);
// A root's node index is a directory half.
const _: () = assert!(NODE_BASE as u64 + (HALVES as u64) < TAIL_TAG as u64);

/// `BPF_F_MMAPABLE`: the agent writes the maps through a shared mapping (a whole structure is a
/// memcpy, not one syscall per node).
pub const MAP_FLAGS: u32 = 1 << 10;

/// `F` slots in address order: a node (`F` = its fanout) or a directory block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots<const F: usize> {
    pub slots: [u32; F],
}

impl<const F: usize> Default for Slots<F> {
    fn default() -> Self {
        Self {
            slots: [SLOT_EMPTY; F],
        }
    }
}

pub type DirBlock = Slots<DIR_BLOCK_SLOTS>;
pub type NodeV4 = Slots<V4_FANOUT>;
pub type NodeV6 = Slots<V6_FANOUT>;

/// The one listed IPv4 prefix of a range: an address `a` is inside iff `a & mask == prefix`
/// (host-order values of the network-order address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailV4 {
    pub prefix: u32,
    pub mask: u32,
}

/// The one listed IPv6 prefix of a range, as two host-order halves (high 64 bits first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailV6 {
    pub prefix: [u64; 2],
    pub mask: [u64; 2],
}

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Empty,
    Full,
    Node(u32),
    Tail(u32),
    /// The index of the first of a group's nodes, and the levels of nodes it stands for (1 or
    /// [`GROUP_MAX_DEPTH`]).
    Group {
        first: u32,
        depth: u32,
    },
}

impl Slot {
    #[inline(always)]
    pub const fn decode(raw: u32) -> Slot {
        if raw == SLOT_EMPTY {
            Slot::Empty
        } else if raw == SLOT_FULL {
            Slot::Full
        } else if raw & TAIL_TAG != 0 {
            Slot::Tail(raw & !TAIL_TAG)
        } else if raw & GROUP_TAG != 0 {
            Slot::Group {
                first: raw & !(GROUP_TAG | GROUP_DEEP),
                depth: if raw & GROUP_DEEP != 0 { 2 } else { 1 },
            }
        } else {
            Slot::Node(raw - NODE_BASE)
        }
    }

    #[inline(always)]
    pub const fn encode(self) -> u32 {
        match self {
            Slot::Empty => SLOT_EMPTY,
            Slot::Full => SLOT_FULL,
            Slot::Node(index) => NODE_BASE + index,
            Slot::Tail(index) => TAIL_TAG | index,
            Slot::Group { first, depth } => {
                GROUP_TAG
                    | if depth >= GROUP_MAX_DEPTH {
                        GROUP_DEEP
                    } else {
                        0
                    }
                    | first
            }
        }
    }
}

/// The directory element and the slot inside it for a directory index (the address's first
/// directory bits) in directory `half` of a family whose directory has `blocks` blocks a half.
#[inline(always)]
pub const fn dir_position(half: u32, index: u32, blocks: u32) -> (u32, usize) {
    (
        half * blocks + (index >> DIR_BLOCK_BITS),
        (index as usize) & (DIR_BLOCK_SLOTS - 1),
    )
}

/// The directory index of an IPv4 address (host-order value).
#[inline(always)]
pub const fn dir_index_v4(addr: u32) -> u32 {
    addr >> (V4_BITS - V4_DIR_BITS)
}

/// The directory index of an IPv6 address, as (high, low) 64-bit halves.
#[inline(always)]
pub const fn dir_index_v6(addr: [u64; 2]) -> u32 {
    (addr[0] >> (u64::BITS - V6_DIR_BITS)) as u32
}

/// The slot of `addr` in a node at `level` (1 = the nodes the directory points to).
#[inline(always)]
pub const fn slot_v4(addr: u32, level: usize) -> usize {
    let end = V4_DIR_BITS + V4_STRIDE * level as u32;
    ((addr >> (V4_BITS - end)) as usize) & (V4_FANOUT - 1)
}

/// Same for IPv6, the address as (high, low) 64-bit halves.
#[inline(always)]
pub const fn slot_v6(addr: [u64; 2], level: usize) -> usize {
    let end = V6_DIR_BITS + V6_STRIDE * level as u32;
    let (word, end) = if end <= u64::BITS {
        (addr[0], end)
    } else {
        (addr[1], end - u64::BITS)
    };
    ((word >> (u64::BITS - end)) as usize) & (V6_FANOUT - 1)
}

/// The prefix lengths where a walk of a `bits`-wide address moves on to its next level: the
/// directory's, then every stride below it. Where tests look for off-by-one errors.
pub fn level_boundaries(bits: u32) -> impl Iterator<Item = u32> {
    let (dir, stride) = if bits == V4_BITS {
        (V4_DIR_BITS, V4_STRIDE)
    } else {
        (V6_DIR_BITS, V6_STRIDE)
    };
    (dir..bits).step_by(stride as usize)
}
