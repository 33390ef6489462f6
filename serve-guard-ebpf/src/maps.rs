//! Every map of the program, declared in one place. All are pinned by name so that an agent
//! restarted with the same pin directory adopts the live maps instead of creating empty ones
//! (no window where the allow-list is empty or the counters reset).

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use serve_guard_common::{
    COUNTER_ENTRIES, Counter, FilterConfig, PortTable, maps,
    trie::{
        DIR_V4_ENTRIES, DIR_V6_ENTRIES, DirBlock, MAP_FLAGS, NODES_V4_ENTRIES, NODES_V6_ENTRIES,
        NodeV4, NodeV6, ROOT_ENTRIES, TAILS_ENTRIES, TailV4, TailV6,
    },
};

/// The `#[map]` attribute only takes a literal name: fail the build if a literal drifts from
/// the name the agent looks up.
const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(same_name(maps::PORTS, "SG_PORT_CLASS"));
const _: () = assert!(same_name(maps::ROOTS, "SG_LC_ROOT"));
const _: () = assert!(same_name(maps::DIR_V4, "SG_LC_DIR_V4"));
const _: () = assert!(same_name(maps::DIR_V6, "SG_LC_DIR_V6"));
const _: () = assert!(same_name(maps::NODES_V4, "SG_LC_NODE_V4"));
const _: () = assert!(same_name(maps::NODES_V6, "SG_LC_NODE_V6"));
const _: () = assert!(same_name(maps::TAILS_V4, "SG_LC_TAIL_V4"));
const _: () = assert!(same_name(maps::TAILS_V6, "SG_LC_TAIL_V6"));
const _: () = assert!(same_name(maps::CONFIG, "SG_CONFIG"));
const _: () = assert!(same_name(maps::COUNTERS, "SG_VERDICTS"));

/// One `PortTable`: the class of every destination port (`PORT_OPEN`, `PORT_GUARDED`,
/// `PORT_PROTECTED`).
#[map(name = "SG_PORT_CLASS")]
pub static PORTS: Array<PortTable> = Array::pinned(1, 0);

/// The allow-lists: per family a directory, nodes and tails (layout and update protocol in
/// `serve_guard_common::trie`). Arrays only, so every lookup is inlined by the verifier into a
/// bounds check and an add.
#[map(name = "SG_LC_ROOT")]
pub static ROOTS: Array<u32> = Array::pinned(ROOT_ENTRIES, MAP_FLAGS);

#[map(name = "SG_LC_DIR_V4")]
pub static DIR_V4: Array<DirBlock> = Array::pinned(DIR_V4_ENTRIES, MAP_FLAGS);

#[map(name = "SG_LC_DIR_V6")]
pub static DIR_V6: Array<DirBlock> = Array::pinned(DIR_V6_ENTRIES, MAP_FLAGS);

#[map(name = "SG_LC_NODE_V4")]
pub static NODES_V4: Array<NodeV4> = Array::pinned(NODES_V4_ENTRIES, MAP_FLAGS);

#[map(name = "SG_LC_NODE_V6")]
pub static NODES_V6: Array<NodeV6> = Array::pinned(NODES_V6_ENTRIES, MAP_FLAGS);

#[map(name = "SG_LC_TAIL_V4")]
pub static TAILS_V4: Array<TailV4> = Array::pinned(TAILS_ENTRIES, MAP_FLAGS);

#[map(name = "SG_LC_TAIL_V6")]
pub static TAILS_V6: Array<TailV6> = Array::pinned(TAILS_ENTRIES, MAP_FLAGS);

/// One `FilterConfig` at index 0.
#[map(name = "SG_CONFIG")]
pub static CONFIG: Array<FilterConfig> = Array::pinned(1, 0);

/// Per-CPU (reason, family) counters: per-CPU so the hot path needs no atomic operations.
#[map(name = "SG_VERDICTS")]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);
