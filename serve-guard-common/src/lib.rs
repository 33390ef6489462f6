//! Everything the XDP program and the agent must agree on: map names and sizes, the layout of
//! map keys and values, counter ids and parser bounds. `#![no_std]` so the eBPF crate can use it.
#![no_std]

/// Map names, as the eBPF object declares them and the agent looks them up (and pins them).
/// BPF object names are limited to 15 characters.
pub mod maps {
    /// `Array<u8>` indexed by destination port: non-zero = protected Serve port.
    pub const PORTS: &str = "SG_PORTS";
    /// `LpmTrie<[u8; 4], u8>`: the IPv4 allow-list (VPC CIDRs), key data in network order.
    pub const ALLOW_V4: &str = "SG_ALLOW_V4";
    /// `LpmTrie<[u8; 16], u8>`: the IPv6 allow-list.
    pub const ALLOW_V6: &str = "SG_ALLOW_V6";
    /// `Array<FilterConfig>` with one element.
    pub const CONFIG: &str = "SG_CONFIG";
    /// `PerCpuArray<Counter>` indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "SG_COUNTERS";
    /// Every map, for pinning and for `detach`.
    pub const ALL: [&str; 5] = [PORTS, ALLOW_V4, ALLOW_V6, CONFIG, COUNTERS];
}

/// Name of the XDP program (the function in the eBPF crate).
pub const PROGRAM_NAME: &str = "serve_guard";

/// Entries of the port array: one per possible TCP/UDP port.
pub const PORT_ENTRIES: u32 = 1 << 16;

/// Most CIDRs the allow-list holds per address family. This is the limit users see.
pub const MAX_CIDRS_PER_FAMILY: u32 = 65_536;

/// Capacity of each LPM trie. Twice the user limit so that a list change can add every new entry
/// before it removes an old one (no instant where a source in both lists is dropped) even when the
/// old and the new list are both full.
pub const LPM_ENTRIES: u32 = 2 * MAX_CIDRS_PER_FAMILY;

/// Most 802.1Q / 802.1ad tags parsed in front of the IP header. A frame with more is not
/// understood and is treated as unparseable.
pub const MAX_VLAN_TAGS: usize = 2;

/// Most IPv6 extension headers walked before the transport header. A longer chain is treated as
/// unparseable.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The agent's settings for the program, stored at index 0 of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Bit set of `FLAG_*`.
    pub flags: u32,
}

impl FilterConfig {
    /// Audit mode: count what would be dropped, pass it.
    pub const FLAG_AUDIT: u32 = 1 << 0;
    /// Debug logging through aya-log (costly; off by default).
    pub const FLAG_LOG: u32 = 1 << 1;

    pub const fn audit(&self) -> bool {
        self.flags & Self::FLAG_AUDIT != 0
    }

    pub const fn log(&self) -> bool {
        self.flags & Self::FLAG_LOG != 0
    }
}

/// Why the program passed or dropped a packet. One counter per reason and address family.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Protected port, source inside the allow-list.
    PassAllowed = 0,
    /// Not for a protected port, not TCP/UDP, not IP, or a non-first fragment.
    PassUnprotected = 1,
    /// Protected port, source outside the allow-list.
    DropOutsideVpc = 2,
    /// The program could not tell the destination port (truncated header, unknown or too long
    /// extension chain, too many VLAN tags) and the source is not in the allow-list.
    DropUnparseable = 3,
    /// Audit mode: would have been dropped (either drop reason), was passed.
    AuditWouldDrop = 4,
}

impl Reason {
    pub const COUNT: usize = 5;
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::PassAllowed,
        Reason::PassUnprotected,
        Reason::DropOutsideVpc,
        Reason::DropUnparseable,
        Reason::AuditWouldDrop,
    ];

    /// Stable name used in CLI output, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassAllowed => "pass_allowed",
            Reason::PassUnprotected => "pass_unprotected",
            Reason::DropOutsideVpc => "drop_outside_vpc",
            Reason::DropUnparseable => "drop_unparseable",
            Reason::AuditWouldDrop => "audit_would_drop",
        }
    }
}

/// Address family a counter is kept for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4 = 0,
    Ipv6 = 1,
    /// Not IP (ARP, LLDP, ...) or a frame too short to tell.
    Other = 2,
}

impl Family {
    pub const COUNT: usize = 3;
    pub const ALL: [Family; Self::COUNT] = [Family::Ipv4, Family::Ipv6, Family::Other];

    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Other => "other",
        }
    }
}

/// Entries of [`maps::COUNTERS`].
pub const COUNTER_ENTRIES: u32 = (Reason::COUNT * Family::COUNT) as u32;

/// Index of a (reason, family) counter in [`maps::COUNTERS`].
#[inline(always)]
pub const fn counter_index(reason: Reason, family: Family) -> u32 {
    reason as u32 * Family::COUNT as u32 + family as u32
}

/// One per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Value stored for every allow-list entry. The key is what matters; the value is reserved.
pub type AllowValue = u8;
/// Value stored in [`maps::PORTS`]: `PORT_PROTECTED` or 0.
pub type PortValue = u8;
pub const PORT_PROTECTED: PortValue = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) structs of integers without padding.
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::Counter {}
}
