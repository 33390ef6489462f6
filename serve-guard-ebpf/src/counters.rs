//! Counting a verdict: one per-CPU slot per (reason, family), packets and bytes.

use serve_guard_common::{Family, Reason, counter_index};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(reason: Reason, family: Family, bytes: usize) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(reason, family)) {
        // SAFETY: the slot belongs to this CPU, and both hooks run in softirq, where no other
        // run of either program on the same CPU can interrupt: a plain read-modify-write cannot
        // race.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes as u64;
        }
    }
}
