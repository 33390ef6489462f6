//! Every map of the program, declared in one place. All are pinned by name so that an agent
//! restarted with the same pin directory adopts the live maps instead of creating empty ones
//! (no window where the allow-list is empty or the counters reset).

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use serve_guard_common::{
    AllowValue, COUNTER_ENTRIES, Counter, FilterConfig, LPM_ENTRIES, PORT_ENTRIES, PortValue, maps,
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

const _: () = assert!(same_name(maps::PORTS, "SG_PORTS"));
const _: () = assert!(same_name(maps::ALLOW_V4, "SG_ALLOW_V4"));
const _: () = assert!(same_name(maps::ALLOW_V6, "SG_ALLOW_V6"));
const _: () = assert!(same_name(maps::CONFIG, "SG_CONFIG"));
const _: () = assert!(same_name(maps::COUNTERS, "SG_COUNTERS"));

/// Indexed by destination port; `PORT_PROTECTED` marks a Serve port.
#[map(name = "SG_PORTS")]
pub static PORTS: Array<PortValue> = Array::pinned(PORT_ENTRIES, 0);

/// IPv4 allow-list, key data in network order. aya-ebpf adds BPF_F_NO_PREALLOC, which the
/// kernel requires for LPM tries.
#[map(name = "SG_ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::pinned(LPM_ENTRIES, 0);

/// IPv6 allow-list, key data in network order.
#[map(name = "SG_ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::pinned(LPM_ENTRIES, 0);

/// One `FilterConfig` at index 0.
#[map(name = "SG_CONFIG")]
pub static CONFIG: Array<FilterConfig> = Array::pinned(1, 0);

/// Per-CPU (reason, family) counters: per-CPU so the hot path needs no atomic operations.
#[map(name = "SG_COUNTERS")]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);
