//! Typed handles on the program's maps and the writes the agent makes to them.

use super::{FilterError, error_chain};
use crate::cidr::CidrList;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serve_guard_common::{
    AllowValue, Counter, FilterConfig, PORT_ENTRIES, PORT_PROTECTED, PortValue, maps,
};
use std::collections::BTreeSet;

/// Value written for every allow-list entry; the program only looks at the key.
const ALLOW_ENTRY: AllowValue = 1;
/// Value of an unprotected port.
const PORT_OPEN: PortValue = 0;
/// Index of the single element of the config map.
const CONFIG_INDEX: u32 = 0;
/// No BPF_ANY/BPF_NOEXIST distinction needed: plain upserts.
const NO_FLAGS: u64 = 0;

pub(crate) type V4Trie = LpmTrie<MapData, [u8; 4], AllowValue>;
pub(crate) type V6Trie = LpmTrie<MapData, [u8; 16], AllowValue>;

/// The program's maps, taken out of the loaded object.
pub(crate) struct FilterMaps {
    pub ports: Array<MapData, PortValue>,
    pub allow_v4: V4Trie,
    pub allow_v6: V6Trie,
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
            allow_v4: typed(ebpf, maps::ALLOW_V4)?,
            allow_v6: typed(ebpf, maps::ALLOW_V6)?,
            config: typed(ebpf, maps::CONFIG)?,
            counters: typed(ebpf, maps::COUNTERS)?,
        })
    }

    /// Marks exactly `ports` as protected; ports protected by an earlier run are cleared.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), FilterError> {
        let wanted: BTreeSet<u32> = ports.iter().map(|&p| u32::from(p)).collect();
        for port in 0..PORT_ENTRIES {
            let want = if wanted.contains(&port) {
                PORT_PROTECTED
            } else {
                PORT_OPEN
            };
            let have = self
                .ports
                .get(&port, NO_FLAGS)
                .map_err(map_err(maps::PORTS, "read"))?;
            if have != want {
                self.ports
                    .set(port, &want, NO_FLAGS)
                    .map_err(map_err(maps::PORTS, "write"))?;
            }
        }
        Ok(())
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

    /// The protected ports as the map holds them.
    pub fn read_ports(&self) -> Result<Vec<u16>, FilterError> {
        let mut ports = Vec::new();
        for port in 0..PORT_ENTRIES {
            let value = self
                .ports
                .get(&port, NO_FLAGS)
                .map_err(map_err(maps::PORTS, "read"))?;
            if value != PORT_OPEN {
                ports.push(u16::try_from(port).expect("PORT_ENTRIES fits u16 indices"));
            }
        }
        Ok(ports)
    }

    /// What the allow-lists hold now.
    pub fn read_cidrs(&self) -> Result<CidrList, FilterError> {
        let mut list = CidrList::default();
        for net in read_v4(&self.allow_v4)? {
            list.insert(IpNet::V4(net));
        }
        for net in read_v6(&self.allow_v6)? {
            list.insert(IpNet::V6(net));
        }
        Ok(list)
    }

    /// Makes the allow-lists equal to `list`, adding every new entry before removing any old
    /// one: a source in both lists is never dropped, a source in neither is never passed. If an
    /// add fails, the entries added so far are taken out again (the old list stays whole).
    pub fn apply_cidrs(&mut self, list: &CidrList) -> Result<ApplyStats, FilterError> {
        list.validate()?;
        let old_v4 = read_v4(&self.allow_v4)?;
        let old_v6 = read_v6(&self.allow_v6)?;
        let add_v4: Vec<Ipv4Net> = list.v4().difference(&old_v4).copied().collect();
        let add_v6: Vec<Ipv6Net> = list.v6().difference(&old_v6).copied().collect();
        let del_v4: Vec<Ipv4Net> = old_v4.difference(list.v4()).copied().collect();
        let del_v6: Vec<Ipv6Net> = old_v6.difference(list.v6()).copied().collect();

        let mut added_v4 = Vec::new();
        let mut added_v6 = Vec::new();
        let added = (|| {
            for net in &add_v4 {
                insert(&mut self.allow_v4, maps::ALLOW_V4, &v4_key(net))?;
                added_v4.push(*net);
            }
            for net in &add_v6 {
                insert(&mut self.allow_v6, maps::ALLOW_V6, &v6_key(net))?;
                added_v6.push(*net);
            }
            Ok::<(), FilterError>(())
        })();
        if let Err(error) = added {
            // Roll back: a source in neither list must not stay allowed.
            for net in &added_v4 {
                let _ = self.allow_v4.remove(&v4_key(net));
            }
            for net in &added_v6 {
                let _ = self.allow_v6.remove(&v6_key(net));
            }
            return Err(error);
        }
        for net in &del_v4 {
            remove(&mut self.allow_v4, maps::ALLOW_V4, &v4_key(net))?;
        }
        for net in &del_v6 {
            remove(&mut self.allow_v6, maps::ALLOW_V6, &v6_key(net))?;
        }
        Ok(ApplyStats {
            added: add_v4.len() + add_v6.len(),
            removed: del_v4.len() + del_v6.len(),
            v4: list.v4().len(),
            v6: list.v6().len(),
        })
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

fn v4_key(net: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn v6_key(net: &Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn insert<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], AllowValue>,
    name: &'static str,
    key: &Key<[u8; N]>,
) -> Result<(), FilterError> {
    trie.insert(key, &ALLOW_ENTRY, NO_FLAGS).map_err(|e| {
        if is_full(&e) {
            FilterError::MapFull { name }
        } else {
            map_err(name, "add to")(e)
        }
    })
}

fn remove<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], AllowValue>,
    name: &'static str,
    key: &Key<[u8; N]>,
) -> Result<(), FilterError> {
    match trie.remove(key) {
        Ok(()) => Ok(()),
        // Already gone: the goal state holds.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(map_err(name, "remove from")(e)),
    }
}

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOSPC))
}

fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

pub(crate) fn read_v4(trie: &V4Trie) -> Result<BTreeSet<Ipv4Net>, FilterError> {
    let mut out = BTreeSet::new();
    for key in trie.keys() {
        let key = key.map_err(map_err(maps::ALLOW_V4, "read"))?;
        let prefix = u8::try_from(key.prefix_len()).unwrap_or(u8::MAX);
        let net = Ipv4Net::new(key.data().into(), prefix).map_err(|_| FilterError::Map {
            name: maps::ALLOW_V4,
            action: "read",
            detail: format!("entry with prefix length {}", key.prefix_len()),
        })?;
        out.insert(net);
    }
    Ok(out)
}

pub(crate) fn read_v6(trie: &V6Trie) -> Result<BTreeSet<Ipv6Net>, FilterError> {
    let mut out = BTreeSet::new();
    for key in trie.keys() {
        let key = key.map_err(map_err(maps::ALLOW_V6, "read"))?;
        let prefix = u8::try_from(key.prefix_len()).unwrap_or(u8::MAX);
        let net = Ipv6Net::new(key.data().into(), prefix).map_err(|_| FilterError::Map {
            name: maps::ALLOW_V6,
            action: "read",
            detail: format!("entry with prefix length {}", key.prefix_len()),
        })?;
        out.insert(net);
    }
    Ok(out)
}
