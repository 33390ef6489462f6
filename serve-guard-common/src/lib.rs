//! Everything the XDP program and the agent must agree on: map names and sizes, the layout of
//! map keys and values, counter ids and parser bounds. `#![no_std]` so the eBPF crate can use it.
#![no_std]
#![deny(unsafe_code)]

/// Map names, as the eBPF object declares them and the agent looks them up (and pins them).
/// BPF object names are limited to 15 characters.
pub mod maps {
    /// `Array<PortTable>` with one element: the class of every destination port. One value,
    /// so the agent writes the whole policy with one system call (65,536 single-port writes
    /// took 12 s under emulation, and as long to read back).
    pub const PORTS: &str = "SG_PORT_CLASS";
    /// `Array<u32>` of [`crate::trie::ROOT_ENTRIES`]: the root slot of each family's allow-list
    /// (the directory half in use), indexed by [`crate::trie::ROOT_V4`] / [`crate::trie::ROOT_V6`].
    /// (Every allow-list map is renamed whenever the layout changes, last when group slots came
    /// in: a pinned map of an old layout is never read as one of these, and while a start
    /// replaces the old program the new agent never writes a half that program still walks.)
    pub const ROOTS: &str = "SG_LC_ROOT";
    /// `Array<DirBlock>`: the IPv4 directory, one slot per /8 (two halves, see
    /// [`crate::trie`]).
    pub const DIR_V4: &str = "SG_LC_DIR_V4";
    /// `Array<DirBlock>`: the IPv6 directory, one slot per /16.
    pub const DIR_V6: &str = "SG_LC_DIR_V6";
    /// `Array<NodeV4>`: the IPv4 nodes below the directory.
    pub const NODES_V4: &str = "SG_LC_NODE_V4";
    /// `Array<NodeV6>`: the IPv6 nodes below the directory.
    pub const NODES_V6: &str = "SG_LC_NODE_V6";
    /// `Array<TailV4>`: single-prefix leaves of the IPv4 structure.
    pub const TAILS_V4: &str = "SG_LC_TAIL_V4";
    /// `Array<TailV6>`: single-prefix leaves of the IPv6 structure.
    pub const TAILS_V6: &str = "SG_LC_TAIL_V6";
    /// `Array<FilterConfig>` with one element.
    pub const CONFIG: &str = "SG_CONFIG";
    /// `PerCpuArray<Counter>` indexed by [`crate::counter_index`]. (Renamed from `SG_COUNTERS`
    /// when the guarded-port reasons were added: a pinned map keeps its size.)
    pub const COUNTERS: &str = "SG_VERDICTS";
    /// Every map, for pinning and for `detach`.
    pub const ALL: [&str; 10] = [
        PORTS, ROOTS, DIR_V4, DIR_V6, NODES_V4, NODES_V6, TAILS_V4, TAILS_V6, CONFIG, COUNTERS,
    ];
    /// Maps of earlier versions, with a layout this version does not read. A start replaces
    /// the program that used them, then removes their pins (see the agent's `filter::pins`).
    pub const RETIRED: [&str; 16] = [
        "SG_ALLOW_V4",
        "SG_ALLOW_V6",
        "SG_COUNTERS",
        "SG_PORTS",
        // The nibble trie's (issue 21 replaced it with a directory and wider strides).
        "SG_ROOTS",
        "SG_NODES_V4",
        "SG_NODES_V6",
        "SG_TAILS_V4",
        "SG_TAILS_V6",
        // The directory's before group slots (an old program reads a group as a node past its
        // map and denies).
        "SG_DIR_ROOT",
        "SG_DIR8_V4",
        "SG_DIR16_V6",
        "SG_NODE4_V4",
        "SG_NODE4_V6",
        "SG_TAIL16_V4",
        "SG_TAIL16_V6",
    ];
}

/// libxdp's run configuration of the program (xdp-tools' lib/libxdp/protocol.org, "Processing
/// program metadata"): a struct in the object's BTF that libxdp reads when it takes the loaded
/// program into a dispatcher. Each field is a pointer to an array whose length is the value.
pub mod run_config {
    /// The BTF data section libxdp looks in.
    pub const SECTION: &str = ".xdp_run_config";
    /// The variable: the program's function name after an underscore.
    pub const VAR: &str = "_serve_guard";
    /// The field holding the run priority (lower runs first).
    pub const PRIORITY_FIELD: &str = "priority";
    /// The priority compiled in; the agent writes `xdp_priority` over it before loading. 0 runs
    /// before everything that does not ask for 0 too (libxdp's default is 50, xdp-filter's 10).
    pub const DEFAULT_PRIORITY: usize = 0;
}

/// Name of the XDP program (the function in the eBPF crate).
pub const PROGRAM_NAME: &str = "serve_guard";

/// Name of the same filter as a TC classifier, for interfaces whose XDP hook another program
/// holds outside libxdp's protocol (the TC ingress fallback).
pub const TC_PROGRAM_NAME: &str = "serve_guard_tc";

/// Bytes the TC program asks the kernel to make readable before parsing (bpf_skb_pull_data), at
/// most the packet's length: every header the walk reads in any real packet (Ethernet, tags,
/// IPv6 with a handful of extension headers, the transport header). Headers beyond it read as cut
/// short, so their port is unknown and only an allowed source passes (fail closed).
pub const TC_PULL_LEN: u32 = 512;

/// Entries of the port array: one per possible TCP/UDP port.
pub const PORT_ENTRIES: u32 = 1 << 16;

/// Most CIDRs the allow-list can be configured to hold per address family (`max_cidrs`); the
/// configured figure is the limit users see.
pub const MAX_CIDRS_PER_FAMILY: u32 = trie::MAX_CIDRS_PER_FAMILY;

/// Most 802.1Q / 802.1ad tags parsed in front of the IP header. The kernel strips any number of
/// priority (VID 0) tags and delivers what is behind them, so real stacks (QinQ plus a priority
/// tag) must be read through; a frame with more tags than this is treated as unparseable.
pub const MAX_VLAN_TAGS: usize = 8;

/// Most IPv6 extension headers walked before the transport header. A longer chain is treated as
/// unparseable.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Wire-format numbers and header sizes the XDP program parses and the test frame builder
/// writes. Standard values (IEEE 802, IANA); kept in one place so both sides agree.
pub mod wire {
    /// Ethernet header: destination MAC, source MAC, EtherType.
    pub const ETH_HLEN: usize = 14;
    /// Offset of the EtherType inside the Ethernet header (and of the inner one inside a tag).
    pub const ETH_TYPE_OFFSET: usize = 12;
    /// One 802.1Q / 802.1ad tag: TCI (2 bytes) and the inner EtherType (2 bytes).
    pub const VLAN_HLEN: usize = 4;
    /// Offset of the inner EtherType inside a tag.
    pub const VLAN_INNER_TYPE_OFFSET: usize = 2;

    pub const ETH_P_IPV4: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    /// 802.1Q customer tag.
    pub const ETH_P_8021Q: u16 = 0x8100;
    /// 802.1ad service tag (QinQ outer tag).
    pub const ETH_P_8021AD: u16 = 0x88a8;

    /// The IP version is the high nibble of the first byte (IPv4 and IPv6 alike).
    pub const IP_VERSION_SHIFT: u8 = 4;
    pub const IPV4_VERSION: u8 = 4;
    pub const IPV6_VERSION: u8 = 6;
    /// IHL is the low nibble of the first IPv4 byte.
    pub const IPV4_IHL_MASK: u8 = 0x0f;
    /// IPv4 header without options; IHL counts 32-bit words.
    pub const IPV4_MIN_HLEN: usize = 20;
    pub const IPV4_MIN_IHL: u8 = 5;
    pub const IPV4_IHL_WORD: usize = 4;
    /// Total length: the IPv4 header and its payload. The kernel trims the packet to it.
    pub const IPV4_TOTAL_LEN_OFFSET: usize = 2;
    pub const IPV4_FRAG_OFF_OFFSET: usize = 6;
    /// The 13 fragment-offset bits of the flags/offset field (the other 3 are flags).
    pub const IPV4_FRAG_OFF_MASK: u16 = 0x1fff;
    pub const IPV4_PROTO_OFFSET: usize = 9;
    pub const IPV4_SRC_OFFSET: usize = 12;
    pub const IPV4_ADDR_LEN: usize = 4;

    pub const IPV6_HLEN: usize = 40;
    /// Payload length: everything after the fixed header. The kernel trims the packet to it.
    pub const IPV6_PAYLOAD_LEN_OFFSET: usize = 4;
    pub const IPV6_NEXT_HEADER_OFFSET: usize = 6;
    pub const IPV6_SRC_OFFSET: usize = 8;
    pub const IPV6_ADDR_LEN: usize = 16;
    /// Generic extension headers (hop-by-hop, routing, destination options) count their
    /// length in 8-octet units, not counting the first 8.
    pub const IPV6_EXT_UNIT: usize = 8;
    /// AH counts its length in 4-octet units, not counting the first 8 (RFC 4302).
    pub const IPV6_AH_UNIT: usize = 4;
    pub const IPV6_AH_LEN_BIAS: usize = 2;
    /// The fragment header has a fixed size; its length byte is reserved.
    pub const IPV6_FRAG_HLEN: usize = 8;
    /// Offset of the 16-bit offset/flags field in the fragment header; the offset is its top
    /// 13 bits.
    pub const IPV6_FRAG_OFF_OFFSET: usize = 2;
    pub const IPV6_FRAG_OFF_SHIFT: u16 = 3;

    /// IP protocol / IPv6 next-header numbers (IANA).
    pub mod proto {
        pub const HOPOPTS: u8 = 0;
        pub const ICMP: u8 = 1;
        /// IPv4 inside IP.
        pub const IPIP: u8 = 4;
        pub const TCP: u8 = 6;
        pub const UDP: u8 = 17;
        pub const DCCP: u8 = 33;
        /// IPv6 inside IP.
        pub const IPV6: u8 = 41;
        pub const ROUTING: u8 = 43;
        pub const FRAGMENT: u8 = 44;
        pub const ESP: u8 = 50;
        pub const AH: u8 = 51;
        pub const ICMPV6: u8 = 58;
        pub const NONE: u8 = 59;
        pub const DSTOPTS: u8 = 60;
        pub const SCTP: u8 = 132;
        pub const MOBILITY: u8 = 135;
        pub const UDPLITE: u8 = 136;
        pub const HIP: u8 = 139;
        pub const SHIM6: u8 = 140;
        pub const EXPERIMENTAL_1: u8 = 253;
        pub const EXPERIMENTAL_2: u8 = 254;
    }

    /// Offset of the source and the destination port in the header of every port protocol.
    pub const L4_SRC_PORT_OFFSET: usize = 0;
    pub const L4_DST_PORT_OFFSET: usize = 2;
    /// The TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub const TCP_FLAGS_OFFSET: usize = 13;
    pub const TCP_FLAG_SYN: u8 = 0x02;
    pub const TCP_FLAG_ACK: u8 = 0x10;
    /// IPv4 destination address (after the source).
    pub const IPV4_DST_OFFSET: usize = 16;
    /// IPv6 destination address (after the source).
    pub const IPV6_DST_OFFSET: usize = 24;

    /// Socket states as `struct bpf_sock` reports them (include/net/tcp_states.h). A connected
    /// UDP socket is `TCP_ESTABLISHED`.
    pub mod sock_state {
        pub const ESTABLISHED: u32 = 1;
        pub const LISTEN: u32 = 10;
    }
    pub const TCP_MIN_HLEN: usize = 20;
    pub const UDP_HLEN: usize = 8;
    /// DCCP's generic header without extended sequence numbers (RFC 4340).
    pub const DCCP_MIN_HLEN: usize = 12;
    /// SCTP's common header (RFC 9260).
    pub const SCTP_HLEN: usize = 12;
    pub const UDPLITE_HLEN: usize = 8;

    /// The protocols the kernel delivers to a socket by destination port, with the smallest
    /// header each can have: the whole of it must be in the packet before the port is
    /// believed. `None` for every other protocol.
    #[inline(always)]
    pub const fn port_header_len(protocol: u8) -> Option<usize> {
        match protocol {
            proto::TCP => Some(TCP_MIN_HLEN),
            proto::UDP => Some(UDP_HLEN),
            proto::DCCP => Some(DCCP_MIN_HLEN),
            proto::SCTP => Some(SCTP_HLEN),
            proto::UDPLITE => Some(UDPLITE_HLEN),
            _ => None,
        }
    }
}

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
    /// Not for a protected port, no port protocol, not IP, or a non-first fragment.
    PassUnprotected = 1,
    /// Protected port, source outside the allow-list.
    DropOutsideVpc = 2,
    /// The program could not tell the destination port (a header cut short or lying about its
    /// length, a first fragment without its whole transport header, an unknown or too long
    /// extension chain, too many VLAN tags) and the source is not in the allow-list.
    DropUnparseable = 3,
    /// Audit mode: would have been dropped (any drop reason), was passed.
    AuditWouldDrop = 4,
    /// Guarded port, source outside the allow-list, neither opening a connection nor for a
    /// listening or unconnected socket: a packet of one of the node's own connections (or for
    /// no socket of this namespace: forwarded traffic, or one the kernel answers with a reset).
    PassReply = 5,
    /// Guarded port, source outside the allow-list: a TCP SYN without ACK (a new connection,
    /// with or without Fast Open data), a segment or datagram that would reach a listening or
    /// unconnected socket, or a protocol whose sockets cannot be looked up (DCCP, SCTP,
    /// UDP-Lite).
    DropGuarded = 6,
}

impl Reason {
    pub const COUNT: usize = 7;
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::PassAllowed,
        Reason::PassUnprotected,
        Reason::DropOutsideVpc,
        Reason::DropUnparseable,
        Reason::AuditWouldDrop,
        Reason::PassReply,
        Reason::DropGuarded,
    ];

    /// Stable name used in CLI output, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassAllowed => "pass_allowed",
            Reason::PassUnprotected => "pass_unprotected",
            Reason::DropOutsideVpc => "drop_outside_vpc",
            Reason::DropUnparseable => "drop_unparseable",
            Reason::AuditWouldDrop => "audit_would_drop",
            Reason::PassReply => "pass_reply",
            Reason::DropGuarded => "drop_guarded",
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

pub mod trie;

/// The value of [`maps::PORTS`]: every destination port's [`PortValue`], indexed by port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortTable {
    pub classes: [PortValue; PORT_ENTRIES as usize],
}

impl PortTable {
    /// Every port open.
    pub const OPEN: PortTable = PortTable {
        classes: [PORT_OPEN; PORT_ENTRIES as usize],
    };

    #[inline(always)]
    pub fn class(&self, port: u16) -> PortValue {
        self.classes[port as usize]
    }
}

/// One entry of [`PortTable`]: how packets from outside the allow-list to that destination
/// port are judged (the agent's `ports::PortClass`).
pub type PortValue = u8;
/// Anyone may reach the port.
pub const PORT_OPEN: PortValue = 0;
/// Strict (Ray Serve's ports): every packet from outside is dropped.
pub const PORT_PROTECTED: PortValue = 1;
/// Guarded (the rest of the node): from outside, nothing may open a connection (a TCP SYN
/// without ACK) or reach a listening or unconnected socket; packets of the node's own
/// connections pass. Any other value is read as [`PORT_PROTECTED`].
pub const PORT_GUARDED: PortValue = 2;

// aya reads and writes map values as raw bytes: `Pod` promises that every bit pattern of the
// type's size is a valid value and that it has no padding. The only unsafe code of this crate.
#[cfg(feature = "user")]
#[allow(unsafe_code, reason = "aya::Pod is an unsafe trait")]
mod pod {
    // SAFETY: repr(C), one u32: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FilterConfig {}
    // SAFETY: repr(C), an array of u8: no padding, every bit pattern valid (an unknown class
    // reads as strict).
    unsafe impl aya::Pod for super::PortTable {}
    // SAFETY: repr(C), two u64: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: repr(C), an array of u32: no padding, every bit pattern valid.
    unsafe impl<const F: usize> aya::Pod for super::trie::Slots<F> {}
    // SAFETY: repr(C), two u32: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::trie::TailV4 {}
    // SAFETY: repr(C), two [u64; 2]: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::trie::TailV6 {}
}
