//! The program's per-CPU counters, summed: one (packets, bytes) pair per reason and family.

use super::pins::PinLayout;
use super::{FilterError, error_chain, maps::map_err};
use aya::maps::{Map, MapData, PerCpuArray};
use serde::{Serialize, Serializer};
use serve_guard_common::{Counter, Family, Reason, counter_index, maps};
use std::path::Path;

/// One counter, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CounterEntry {
    #[serde(serialize_with = "reason_name")]
    pub reason: Reason,
    #[serde(serialize_with = "family_name")]
    pub family: Family,
    pub packets: u64,
    pub bytes: u64,
}

/// Every (reason, family) counter, in `Reason::ALL` x `Family::ALL` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub counters: Vec<CounterEntry>,
}

impl CounterSnapshot {
    /// The counter of one reason and family (zero if absent).
    pub fn get(&self, reason: Reason, family: Family) -> Counter {
        self.counters
            .iter()
            .find(|c| c.reason == reason && c.family == family)
            .map(|c| Counter {
                packets: c.packets,
                bytes: c.bytes,
            })
            .unwrap_or_default()
    }

    /// One reason summed over families.
    pub fn total(&self, reason: Reason) -> Counter {
        self.counters
            .iter()
            .filter(|c| c.reason == reason)
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets.saturating_add(c.packets),
                bytes: acc.bytes.saturating_add(c.bytes),
            })
    }
}

fn reason_name<S: Serializer>(reason: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(reason.name())
}

fn family_name<S: Serializer>(family: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(family.name())
}

/// Sums every counter of the map over CPUs.
pub(crate) fn read(map: &PerCpuArray<MapData, Counter>) -> Result<CounterSnapshot, FilterError> {
    let mut snapshot = CounterSnapshot::default();
    for reason in Reason::ALL {
        for family in Family::ALL {
            let per_cpu = map
                .get(&counter_index(reason, family), 0)
                .map_err(map_err(maps::COUNTERS, "read"))?;
            let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), c| {
                (p.wrapping_add(c.packets), b.wrapping_add(c.bytes))
            });
            snapshot.counters.push(CounterEntry {
                reason,
                family,
                packets,
                bytes,
            });
        }
    }
    Ok(snapshot)
}

/// Reads the counters from the pinned map when no agent runs (`serve-guard stats`). `None` when
/// nothing is pinned under `pin_dir`.
pub fn read_pinned_counters(pin_dir: &Path) -> Result<Option<CounterSnapshot>, FilterError> {
    let path = PinLayout::new(pin_dir).map(maps::COUNTERS);
    if !path.exists() {
        return Ok(None);
    }
    let open_err = |detail: String| FilterError::Map {
        name: maps::COUNTERS,
        action: "open the pinned",
        detail,
    };
    let data = MapData::from_pin(&path).map_err(|e| open_err(error_chain(&e)))?;
    let map = Map::from_map_data(data).map_err(|e| open_err(error_chain(&e)))?;
    let counters: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(map).map_err(|e| open_err(error_chain(&e)))?;
    read(&counters).map(Some)
}
