//! Layout of the allow-list: one compiled trie per address family, walked by the XDP program with
//! array lookups only (no hash, no LPM trie): at most one step per nibble of the address
//! whatever the number of CIDRs, as many as the list splits the address's range (more for a
//! list that fills the space around it densely; measured in docs/lookup.md).
//!
//! - A *slot* (`u32`) stands for a range of addresses (an aligned prefix): [`SLOT_EMPTY`] (no
//!   address of the range is allowed), [`SLOT_FULL`] (every address is), a *tail* (exactly the
//!   addresses of one listed prefix inside the range are; [`TAIL_TAG`] | index into the tails
//!   map), or a *node* ([`NODE_BASE`] + index into the nodes map).
//! - A node splits its range on the next [`STRIDE`] bits of the address into [`FANOUT`] slots.
//!   The root slot of each family covers the whole address space (`0/0`) and lives in the roots
//!   map. Slots are leaf-pushed: the walk stops at the first slot that is not a node, so it never
//!   needs to remember a shorter match (a listed range covers every address below it).
//! - The nodes and tails maps have two halves. A list change is compiled into the half the live
//!   root does not use, then the root slot is switched with one aligned 32-bit store: every
//!   packet walks either the whole old trie or the whole new one. Before a half is rewritten the
//!   agent waits for an RCU grace period, after which no program run can still be walking it.
//! - All-zero maps mean an empty allow-list: fail closed.

/// Address bits consumed per node.
pub const STRIDE: u32 = 4;
/// Slots per node.
pub const FANOUT: usize = 1 << STRIDE;
/// Mask of one stride of address bits.
pub const STRIDE_MASK: u32 = (FANOUT as u32) - 1;

pub const SLOT_EMPTY: u32 = 0;
pub const SLOT_FULL: u32 = 1;
/// Slot values from here up to [`TAIL_TAG`] are nodes.
pub const NODE_BASE: u32 = 2;
/// High bit set: the rest of the slot indexes the tails map.
pub const TAIL_TAG: u32 = 1 << 31;

/// Index of each family's root slot in the roots map.
pub const ROOT_V4: u32 = 0;
pub const ROOT_V6: u32 = 1;
pub const ROOT_ENTRIES: u32 = 2;

/// Address widths, and the most nodes a walk can visit (one per stride).
pub const V4_BITS: u32 = 32;
pub const V6_BITS: u32 = 128;
pub const V4_LEVELS: usize = (V4_BITS / STRIDE) as usize;
pub const V6_LEVELS: usize = (V6_BITS / STRIDE) as usize;

/// The CIDRs per family the maps are built for unless configured otherwise (`max_cidrs`).
pub const DEFAULT_CIDRS_PER_FAMILY: u32 = 1 << 16;
/// The most `max_cidrs` may be: 2^20 per family (about 272 MiB of maps).
pub const MAX_CIDRS_PER_FAMILY: u32 = 1 << 20;
/// The fewest `max_cidrs` may be (and a multiple of it, so both halves stay aligned).
pub const MIN_CIDRS_PER_FAMILY: u32 = 1 << 4;

/// Entries of each map: two halves.
pub const HALVES: u32 = 2;

/// How many entries each allow-list map has, for a capacity of `cidrs` per family. Tails: one
/// per listed prefix at most, so `cidrs` per half. Nodes: a node exists only where at least two
/// listed prefixes share a range, so random lists of `cidrs` prefixes need a fraction of one per
/// prefix; the compiler reports a full map when a list needs more (long shared prefixes, e.g.
/// many /128s in one /64).
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
}

/// The sizes the eBPF object declares (the loader overrides them with the configured ones).
pub const DEFAULT_CAPACITY: Capacity = Capacity::for_cidrs(DEFAULT_CIDRS_PER_FAMILY);
pub const NODES_V4_ENTRIES: u32 = DEFAULT_CAPACITY.nodes_v4_entries();
pub const NODES_V6_ENTRIES: u32 = DEFAULT_CAPACITY.nodes_v6_entries();
pub const TAILS_ENTRIES: u32 = DEFAULT_CAPACITY.tails_entries();

// Every node and tail index of both halves, at the largest capacity, must fit its slot encoding.
const LARGEST: Capacity = Capacity::for_cidrs(MAX_CIDRS_PER_FAMILY);
const _: () = assert!(NODE_BASE as u64 + LARGEST.nodes_v6_entries() as u64 <= TAIL_TAG as u64);
const _: () = assert!(NODE_BASE as u64 + LARGEST.nodes_v4_entries() as u64 <= TAIL_TAG as u64);
const _: () = assert!((LARGEST.tails_entries() as u64) < TAIL_TAG as u64);

/// `BPF_F_MMAPABLE`: the agent writes the maps through a shared mapping (a whole trie is a
/// memcpy, not one syscall per node).
pub const MAP_FLAGS: u32 = 1 << 10;

/// One node: the slots of its [`FANOUT`] sub-ranges, in address order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrieNode {
    pub slots: [u32; FANOUT],
}

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
        }
    }
}

/// The nibble of `addr` (host-order value of a `bits`-wide address) that selects the slot at
/// `level` (0 = the root node's).
#[inline(always)]
pub const fn nibble_v4(addr: u32, level: usize) -> usize {
    ((addr >> (V4_BITS - STRIDE * (level as u32 + 1))) & STRIDE_MASK) as usize
}

/// Same for IPv6, the address as (high, low) 64-bit halves.
#[inline(always)]
pub const fn nibble_v6(addr: [u64; 2], level: usize) -> usize {
    const HALF_LEVELS: usize = V6_LEVELS / 2;
    let (word, level) = if level < HALF_LEVELS {
        (addr[0], level)
    } else {
        (addr[1], level - HALF_LEVELS)
    };
    ((word >> (u64::BITS - STRIDE * (level as u32 + 1))) & STRIDE_MASK as u64) as usize
}
