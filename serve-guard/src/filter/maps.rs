//! Typed handles on the program's maps and the writes the agent makes to them.

use super::allow::{self, AllowMaps};
use super::{FilterError, error_chain};
use crate::cidr::CidrList;
use crate::ports::PortClass;
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray};
use serve_guard_common::{Counter, FilterConfig, PORT_ENTRIES, PortTable, maps};
/// Index of the single element of the port map.
const PORTS_INDEX: u32 = 0;
/// Index of the single element of the config map.
const CONFIG_INDEX: u32 = 0;
/// No BPF_ANY/BPF_NOEXIST distinction needed: plain upserts.
const NO_FLAGS: u64 = 0;

/// The program's maps, taken out of the loaded object.
pub(crate) struct FilterMaps {
    pub ports: Array<MapData, PortTable>,
    pub allow: AllowMaps,
    /// The list the allow-list was last compiled from (exactly as given; the maps only keep
    /// the addresses it covers). `None` until this process applied one.
    applied: Option<CidrList>,
    pub config: Array<MapData, FilterConfig>,
    pub counters: PerCpuArray<MapData, Counter>,
}

/// Counts of one CIDR apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyStats {
    pub added: usize,
    pub removed: usize,
    /// Entries per family once applied.
    pub v4: usize,
    pub v6: usize,
}

impl FilterMaps {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, FilterError> {
        Ok(Self {
            ports: typed(ebpf, maps::PORTS)?,
            allow: AllowMaps::take(ebpf)?,
            applied: None,
            config: typed(ebpf, maps::CONFIG)?,
            counters: typed(ebpf, maps::COUNTERS)?,
        })
    }

    /// Writes the class of every port (`table[port]`) in one update. The kernel copies the
    /// value over the old one in place, so while it does every port has either its old class
    /// or its new one.
    pub fn set_ports(&mut self, table: &[PortClass]) -> Result<(), FilterError> {
        debug_assert_eq!(table.len(), PORT_ENTRIES as usize);
        let mut value = Box::new(PortTable::OPEN);
        for (slot, class) in value.classes.iter_mut().zip(table) {
            *slot = class.map_value();
        }
        self.ports
            .set(PORTS_INDEX, value.as_ref(), NO_FLAGS)
            .map_err(map_err(maps::PORTS, "write"))
    }

    pub fn set_config(&mut self, config: FilterConfig) -> Result<(), FilterError> {
        self.config
            .set(CONFIG_INDEX, &config, NO_FLAGS)
            .map_err(map_err(maps::CONFIG, "write"))
    }

    pub fn read_config(&self) -> Result<FilterConfig, FilterError> {
        self.config
            .get(&CONFIG_INDEX, NO_FLAGS)
            .map_err(map_err(maps::CONFIG, "read"))
    }

    /// The class of every port as the map holds it (index = port).
    pub fn read_ports(&self) -> Result<Vec<PortClass>, FilterError> {
        let table = self
            .ports
            .get(&PORTS_INDEX, NO_FLAGS)
            .map_err(map_err(maps::PORTS, "read"))?;
        Ok(table
            .classes
            .iter()
            .map(|&value| PortClass::from_map_value(value))
            .collect())
    }

    /// The list the allow-lists were compiled from, checked against the addresses the maps
    /// allow now. Before this process applied a list (adopted maps), the allowed addresses as
    /// the fewest CIDRs.
    pub fn read_cidrs(&self) -> Result<CidrList, FilterError> {
        let allowed = self.allow.allowed()?;
        match &self.applied {
            Some(list) if allow::merged(list) == allowed => Ok(list.clone()),
            Some(_) => Err(FilterError::Map {
                name: maps::ROOTS,
                action: "read",
                detail: "the allow-list maps no longer hold the list last applied".to_owned(),
            }),
            None => Ok(allowed),
        }
    }

    /// The CIDRs per family the allow-list maps hold.
    pub fn capacity(&self) -> u32 {
        self.allow.capacity()
    }

    /// Makes the allow-lists equal to `list` in one switch per family: every packet is judged by
    /// the whole old list or the whole new one, so a source in both lists is never dropped and
    /// a source in neither is never passed. If the new list does not fit, nothing changes.
    /// An empty list is applied too: it passes no source (with `[cloud]`, a first start before
    /// the cloud ever answered); the store refuses to empty the list by an edit.
    pub fn apply_cidrs(&mut self, list: &CidrList) -> Result<ApplyStats, FilterError> {
        list.check_capacity(self.allow.capacity())?;
        let old = match &self.applied {
            Some(old) => old.clone(),
            None => self.allow.allowed()?,
        };
        self.allow.apply(list)?;
        let stats = ApplyStats {
            added: list.iter().filter(|n| !old.contains(n)).count(),
            removed: old.iter().filter(|n| !list.contains(n)).count(),
            v4: list.v4().len(),
            v6: list.v6().len(),
        };
        self.applied = Some(list.clone());
        Ok(stats)
    }
}

fn typed<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, FilterError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(FilterError::MissingMap { name })?;
    T::try_from(map).map_err(|e| FilterError::Map {
        name,
        action: "open",
        detail: error_chain(&e),
    })
}

pub(crate) fn map_err(
    name: &'static str,
    action: &'static str,
) -> impl Fn(MapError) -> FilterError {
    move |e| FilterError::Map {
        name,
        action,
        detail: error_chain(&e),
    }
}
