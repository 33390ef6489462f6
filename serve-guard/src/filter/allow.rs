//! The allow-list maps (roots, directories, nodes, tails; layout in `serve_guard_common::trie`)
//! and the one way they change: compile the whole new list into the half the live one does not
//! use, then
//! switch the family's root slot with a single 32-bit store. A packet reads the root once, so it
//! is judged entirely by the old list or entirely by the new one: a source in both lists is never
//! dropped, a source in neither is never passed, and there is no moment with a partial list.
//!
//! Before a half is rewritten, [`grace_period`] waits until no program run that could have read
//! the old root is still walking it (XDP runs inside an RCU read-side section).

#![allow(
    unsafe_code,
    reason = "the allow-list maps written through a shared mmap; membarrier(2)"
)]

use super::trie::{self, Bases, Compiled, Corrupt, Prefix, Shape, TrieSource};
use super::{FilterError, error_chain};
use crate::cidr::CidrList;
use aya::maps::{Map, MapData};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serve_guard_common::maps;
use serve_guard_common::trie::{
    DIR_BLOCK_SLOTS, DirBlock, HALVES, ROOT_ENTRIES, ROOT_V4, ROOT_V6, Slot, Slots, TailV4, TailV6,
    V4_FANOUT, V6_FANOUT, dir_position,
};
use std::marker::PhantomData;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The kernel lays array elements out at 8-byte multiples.
const ELEMENT_ALIGN: usize = 8;
/// `MEMBARRIER_CMD_GLOBAL`: returns after an RCU grace period (synchronize_rcu).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
/// If membarrier is unavailable (nohz_full, seccomp), wait this long instead: an XDP run takes
/// microseconds, so this is orders of magnitude past any run that read the old root.
const GRACE_FALLBACK: Duration = Duration::from_millis(100);

/// One array map, mapped into this process.
struct Mapped<T> {
    name: &'static str,
    ptr: *mut u8,
    len: usize,
    entries: u32,
    stride: usize,
    _map: MapData,
    _t: PhantomData<T>,
}

// SAFETY: the mapping is owned by this value (nothing else unmaps it) and holds plain `T: Copy`
// values, so it may move to another thread.
unsafe impl<T> Send for Mapped<T> {}
// SAFETY: plain writes take `&mut self`; through `&self` there are only reads and atomic accesses
// (`atomic`), so threads sharing it never race on the mapping from this process.
unsafe impl<T> Sync for Mapped<T> {}

impl<T: Copy> Mapped<T> {
    fn new(name: &'static str, map: MapData, writable: bool) -> Result<Self, FilterError> {
        let info = map.info().map_err(|e| FilterError::Map {
            name,
            action: "open",
            detail: error_chain(&e),
        })?;
        let stride = size_of::<T>().next_multiple_of(ELEMENT_ALIGN);
        if info.value_size() as usize != size_of::<T>() {
            return Err(FilterError::IncompatibleMap {
                name: name.to_owned(),
                detail: format!(
                    "value size is {}, expected {}",
                    info.value_size(),
                    size_of::<T>()
                ),
            });
        }
        let entries = info.max_entries();
        let page = page_size();
        let len = (entries as usize * stride).next_multiple_of(page);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's whole value area; the kernel checks the
        // length and that the map is mmapable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FilterError::Map {
                name,
                action: "map into memory",
                detail: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(Self {
            name,
            ptr: ptr.cast(),
            len,
            entries,
            stride,
            _map: map,
            _t: PhantomData,
        })
    }

    fn get(&self, index: u32) -> Option<T> {
        (index < self.entries).then(|| {
            // SAFETY: index is in bounds; the element is at its stride, aligned for T.
            unsafe {
                self.ptr
                    .add(index as usize * self.stride)
                    .cast::<T>()
                    .read_volatile()
            }
        })
    }

    /// Writes `values` from `first` on. The program may read these elements only once a root
    /// points at them, which happens after a release store.
    fn write(&mut self, first: u32, values: &[T]) -> Result<(), FilterError> {
        if first as usize + values.len() > self.entries as usize {
            return Err(FilterError::MapFull { name: self.name });
        }
        for (i, value) in values.iter().enumerate() {
            // SAFETY: in bounds (checked above), aligned, and this process is the only writer.
            unsafe {
                self.ptr
                    .add((first as usize + i) * self.stride)
                    .cast::<T>()
                    .write_volatile(*value);
            }
        }
        Ok(())
    }
}

impl Mapped<u32> {
    fn atomic(&self, index: u32) -> &AtomicU32 {
        assert!(index < self.entries, "root index {index} out of range");
        // SAFETY: in bounds, 8-byte aligned, and the kernel and the program access the value
        // only with aligned 32-bit loads and stores.
        unsafe {
            &*self
                .ptr
                .add(index as usize * self.stride)
                .cast::<AtomicU32>()
        }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from our own successful mmap.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// One family's maps. Their halves are half of what the maps hold: the sizes the maps were
/// created with (`max_cidrs` when they were), whatever the config says now.
struct Family<const F: usize, Tail> {
    dir: Mapped<DirBlock>,
    nodes: Mapped<Slots<F>>,
    tails: Mapped<Tail>,
    root: u32,
    shape: Shape,
    nodes_per_half: u32,
    tails_per_half: u32,
}

/// The tails' map format of a family.
trait TailFormat: Copy {
    fn encode(prefix: Prefix) -> Self;
    fn decode(self) -> Prefix;
}

impl TailFormat for TailV4 {
    fn encode(p: Prefix) -> Self {
        TailV4 {
            prefix: (p.bits >> 96) as u32,
            mask: (trie::mask(p.len) >> 96) as u32,
        }
    }

    fn decode(self) -> Prefix {
        Prefix::new(u128::from(self.prefix) << 96, self.mask.count_ones() as u8)
    }
}

impl TailFormat for TailV6 {
    fn encode(p: Prefix) -> Self {
        let mask = trie::mask(p.len);
        TailV6 {
            prefix: [(p.bits >> 64) as u64, p.bits as u64],
            mask: [(mask >> 64) as u64, mask as u64],
        }
    }

    fn decode(self) -> Prefix {
        let bits = (u128::from(self.prefix[0]) << 64) | u128::from(self.prefix[1]);
        Prefix::new(
            bits,
            self.mask[0].count_ones() as u8 + self.mask[1].count_ones() as u8,
        )
    }
}

struct Source<'a, const F: usize, Tail> {
    family: &'a Family<F, Tail>,
}

impl<const F: usize, Tail: TailFormat> TrieSource for Source<'_, F, Tail> {
    fn dir_slot(&self, half: u32, index: usize) -> Option<u32> {
        if half >= HALVES {
            return None;
        }
        let (block, slot) = dir_position(half, index as u32, self.family.dir_blocks());
        self.family.dir.get(block).map(|b| b.slots[slot])
    }

    fn node_slot(&self, node: u32, index: usize) -> Option<u32> {
        self.family.nodes.get(node).map(|n| n.slots[index])
    }

    fn tail(&self, index: u32) -> Option<Prefix> {
        self.family.tails.get(index).map(TailFormat::decode)
    }
}

impl<const F: usize, Tail: TailFormat> Family<F, Tail> {
    /// The half the live list uses, if it uses the maps at all.
    fn live_half(root: u32) -> Option<u32> {
        match Slot::decode(root) {
            Slot::Node(half) => Some(half),
            Slot::Empty | Slot::Full | Slot::Tail(_) | Slot::Group { .. } => None,
        }
    }

    /// Compiles `prefixes` into the half not in use; returns the root slot to switch to.
    fn write_spare(&mut self, live_root: u32, prefixes: &[Prefix]) -> Result<u32, FilterError> {
        let spare = match Self::live_half(live_root) {
            Some(0) => 1,
            _ => 0,
        };
        let bases = Bases {
            half: spare,
            node: spare * self.nodes_per_half,
            tail: spare * self.tails_per_half,
        };
        let (
            Compiled {
                root,
                dir,
                nodes,
                tails,
            },
            _,
        ) = trie::compile_within(prefixes, self.shape, bases, self.nodes_per_half as usize);
        let nodes: Vec<Slots<F>> = nodes
            .as_chunks::<F>()
            .0
            .iter()
            .map(|&slots| Slots { slots })
            .collect();
        if nodes.len() > self.nodes_per_half as usize {
            return Err(FilterError::MapFull {
                name: self.nodes.name,
            });
        }
        if tails.len() > self.tails_per_half as usize {
            return Err(FilterError::MapFull {
                name: self.tails.name,
            });
        }
        let blocks: Vec<DirBlock> = dir
            .as_chunks::<DIR_BLOCK_SLOTS>()
            .0
            .iter()
            .map(|&slots| Slots { slots })
            .collect();
        self.dir.write(spare * self.dir_blocks(), &blocks)?;
        self.nodes.write(bases.node, &nodes)?;
        let tails: Vec<Tail> = tails.into_iter().map(Tail::encode).collect();
        self.tails.write(bases.tail, &tails)?;
        Ok(root)
    }

    fn allowed(&self, root: u32) -> Result<Vec<Prefix>, Corrupt> {
        trie::allowed_set(root, self.shape, &Source { family: self })
    }

    /// Blocks of one directory half.
    fn dir_blocks(&self) -> u32 {
        (self.shape.dir_slots() / DIR_BLOCK_SLOTS) as u32
    }

    fn lookup(&self, root: u32, addr: u128) -> (bool, usize) {
        trie::lookup(root, addr, self.shape, &Source { family: self })
    }

    fn new(
        dir: Mapped<DirBlock>,
        nodes: Mapped<Slots<F>>,
        tails: Mapped<Tail>,
        root: u32,
        shape: Shape,
    ) -> Result<Self, FilterError> {
        let dir_entries = HALVES * (shape.dir_slots() / DIR_BLOCK_SLOTS) as u32;
        if dir.entries != dir_entries {
            return Err(FilterError::IncompatibleMap {
                name: dir.name.to_owned(),
                detail: format!("{} entries, expected {dir_entries}", dir.entries),
            });
        }
        for (name, entries) in [(nodes.name, nodes.entries), (tails.name, tails.entries)] {
            if entries < HALVES || entries % HALVES != 0 {
                return Err(FilterError::IncompatibleMap {
                    name: name.to_owned(),
                    detail: format!("{entries} entries, not two equal halves"),
                });
            }
        }
        Ok(Family {
            nodes_per_half: nodes.entries / HALVES,
            tails_per_half: tails.entries / HALVES,
            dir,
            nodes,
            tails,
            root,
            shape,
        })
    }
}

/// The allow-list maps of one loaded (or adopted) program.
pub struct AllowMaps {
    roots: Mapped<u32>,
    v4: Family<V4_FANOUT, TailV4>,
    v6: Family<V6_FANOUT, TailV6>,
}

impl AllowMaps {
    /// Maps the seven allow-list maps; `writable` for the agent, read-only for inspection.
    pub fn from_maps(
        mut take: impl FnMut(&'static str) -> Result<MapData, FilterError>,
        writable: bool,
    ) -> Result<Self, FilterError> {
        let roots = Mapped::new(maps::ROOTS, take(maps::ROOTS)?, writable)?;
        if roots.entries < ROOT_ENTRIES {
            return Err(FilterError::IncompatibleMap {
                name: maps::ROOTS.to_owned(),
                detail: format!("{} entries, expected {ROOT_ENTRIES}", roots.entries),
            });
        }
        Ok(Self {
            roots,
            v4: Family::new(
                Mapped::new(maps::DIR_V4, take(maps::DIR_V4)?, writable)?,
                Mapped::new(maps::NODES_V4, take(maps::NODES_V4)?, writable)?,
                Mapped::new(maps::TAILS_V4, take(maps::TAILS_V4)?, writable)?,
                ROOT_V4,
                Shape::V4,
            )?,
            v6: Family::new(
                Mapped::new(maps::DIR_V6, take(maps::DIR_V6)?, writable)?,
                Mapped::new(maps::NODES_V6, take(maps::NODES_V6)?, writable)?,
                Mapped::new(maps::TAILS_V6, take(maps::TAILS_V6)?, writable)?,
                ROOT_V6,
                Shape::V6,
            )?,
        })
    }

    /// The CIDRs per family these maps hold (the smaller family's tails).
    pub fn capacity(&self) -> u32 {
        self.v4.tails_per_half.min(self.v6.tails_per_half)
    }

    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, FilterError> {
        Self::from_maps(
            |name| match ebpf.take_map(name) {
                Some(Map::Array(data)) => Ok(data),
                Some(_) => Err(FilterError::IncompatibleMap {
                    name: name.to_owned(),
                    detail: "not an array".to_owned(),
                }),
                None => Err(FilterError::MissingMap { name }),
            },
            true,
        )
    }

    /// Makes the program judge by exactly `list`: both families compiled into their spare
    /// halves, then each root switched. On error nothing the program reads has changed.
    pub fn apply(&mut self, list: &CidrList) -> Result<(), FilterError> {
        grace_period();
        let v4: Vec<Prefix> = list.v4().iter().map(v4_prefix).collect();
        let v6: Vec<Prefix> = list.v6().iter().map(v6_prefix).collect();
        let root_v4 = self.root(ROOT_V4);
        let root_v6 = self.root(ROOT_V6);
        let next_v4 = self.v4.write_spare(root_v4, &v4)?;
        let next_v6 = self.v6.write_spare(root_v6, &v6)?;
        // Release: the nodes and tails are visible before a root that points at them.
        self.roots
            .atomic(self.v4.root)
            .store(next_v4, Ordering::Release);
        self.roots
            .atomic(self.v6.root)
            .store(next_v6, Ordering::Release);
        Ok(())
    }

    fn root(&self, index: u32) -> u32 {
        self.roots.atomic(index).load(Ordering::Acquire)
    }

    /// Whether the program, walking the maps as they are now, allows `src`, and how many map
    /// elements it reads to say so (the depth of the lookup: what the bench reports).
    pub fn lookup(&self, src: IpAddr) -> (bool, usize) {
        match src {
            IpAddr::V4(a) => self
                .v4
                .lookup(self.root(ROOT_V4), u128::from(u32::from(a)) << 96),
            IpAddr::V6(a) => self.v6.lookup(self.root(ROOT_V6), u128::from(a)),
        }
    }

    /// The addresses the program allows now, as the fewest CIDRs per family (overlapping or
    /// adjacent listed ranges come back merged).
    pub fn allowed(&self) -> Result<CidrList, FilterError> {
        let corrupt = |e: Corrupt| FilterError::Map {
            name: maps::ROOTS,
            action: "read",
            detail: e.to_string(),
        };
        let v4 = self.v4.allowed(self.root(ROOT_V4)).map_err(corrupt)?;
        let v6 = self.v6.allowed(self.root(ROOT_V6)).map_err(corrupt)?;
        Ok(to_list(&trie::merged(&v4), &trie::merged(&v6)))
    }
}

/// `list` as the fewest CIDRs per family: what [`AllowMaps::allowed`] returns once the maps hold
/// `list`.
pub fn merged(list: &CidrList) -> CidrList {
    let v4: Vec<Prefix> = list.v4().iter().map(v4_prefix).collect();
    let v6: Vec<Prefix> = list.v6().iter().map(v6_prefix).collect();
    to_list(&trie::union(&v4), &trie::union(&v6))
}

fn to_list(v4: &[Prefix], v6: &[Prefix]) -> CidrList {
    let mut list = CidrList::default();
    for p in v4 {
        let addr = ((p.bits >> 96) as u32).into();
        list.insert(IpNet::V4(
            Ipv4Net::new(addr, p.len).expect("prefix length <= 32"),
        ));
    }
    for p in v6 {
        list.insert(IpNet::V6(
            Ipv6Net::new(p.bits.into(), p.len).expect("prefix length <= 128"),
        ));
    }
    list
}

fn v4_prefix(net: &Ipv4Net) -> Prefix {
    Prefix::new(u128::from(u32::from(net.network())) << 96, net.prefix_len())
}

fn v6_prefix(net: &Ipv6Net) -> Prefix {
    Prefix::new(u128::from(net.network()), net.prefix_len())
}

/// Waits for an RCU grace period: every XDP run that started before returns has finished.
fn grace_period() {
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        tracing::debug!(
            "membarrier unavailable ({}); waiting {GRACE_FALLBACK:?} instead",
            std::io::Error::last_os_error()
        );
        std::thread::sleep(GRACE_FALLBACK);
    }
}
