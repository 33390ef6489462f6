//! One fuzz case: the frames of one datagram (a TCP segment, most often a SYN, or a UDP
//! datagram, fragmented or not)
//! and what it claims: family, source (inside or outside the allow-list), transport and port.
//! The `token` ties what the sockets see back to the case: it is the UDP payload's id, and for
//! TCP what the server's answer carries (a SYN-ACK acknowledges it plus one; a reset to a
//! segment with ACK has it as its sequence number; a reset to one without acknowledges it plus
//! one).

use crate::topology::Ip;
use std::fmt;
use std::net::IpAddr;

/// First bytes of every fuzz UDP payload, then the token (big endian).
pub const UDP_MAGIC: &[u8; 4] = b"sgfz";
pub const TOKEN_LEN: usize = 4;

/// Which side of the allow-list the source address is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Inside,
    Outside,
}

impl Origin {
    pub const fn name(self) -> &'static str {
        match self {
            Origin::Inside => "inside",
            Origin::Outside => "outside",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The generators, each biased to one kind of deliverable-but-tricky traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generator {
    /// Named regression frames (the bypass and every later finding).
    Regression,
    /// One well-formed packet: the control group.
    Plain,
    Ipv4Options,
    Ipv4Fragments,
    Ipv6ExtChain,
    Ipv6Fragments,
    VlanTags,
    LengthLie,
    Padding,
    /// Any shape, each packet in SRv6 to the server (decapsulated by the kernel).
    Srv6Decap,
}

impl Generator {
    /// The random generators and their weights (out of the sum).
    pub const WEIGHTED: [(Generator, usize); 9] = [
        (Generator::Plain, 1),
        (Generator::Ipv4Options, 2),
        (Generator::Ipv4Fragments, 3),
        (Generator::Ipv6ExtChain, 3),
        (Generator::Ipv6Fragments, 4),
        (Generator::VlanTags, 2),
        (Generator::LengthLie, 4),
        (Generator::Padding, 1),
        (Generator::Srv6Decap, 1),
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Generator::Regression => "regression",
            Generator::Plain => "plain",
            Generator::Ipv4Options => "ipv4_options",
            Generator::Ipv4Fragments => "ipv4_fragments",
            Generator::Ipv6ExtChain => "ipv6_ext_chain",
            Generator::Ipv6Fragments => "ipv6_fragments",
            Generator::VlanTags => "vlan_tags",
            Generator::LengthLie => "length_lie",
            Generator::Padding => "padding",
            Generator::Srv6Decap => "srv6_decap",
        }
    }
}

/// Where a case comes from: a seeded index, or a named regression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseId {
    Seeded { seed: u64, index: u64 },
    Named(&'static str),
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseId::Seeded { seed, index } => write!(f, "seed {seed} index {index}"),
            CaseId::Named(name) => write!(f, "regression {name}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub id: CaseId,
    pub generator: Generator,
    pub ip: Ip,
    pub origin: Origin,
    pub transport: Transport,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// The TCP flags of the segment (`None` for UDP).
    pub tcp_flags: Option<u8>,
    pub token: u32,
    /// What the generator chose, in words.
    pub shape: String,
    /// Ethernet frames, in sending order.
    pub frames: Vec<Vec<u8>>,
}

impl Case {
    /// One line: id, generator, claims and shape.
    pub fn summary(&self) -> String {
        format!(
            "{} [{}] {} {} {}{} {}:{} -> {}: {}",
            self.id,
            self.generator.name(),
            self.ip.name(),
            self.origin.name(),
            self.transport.name(),
            self.tcp_flags
                .map(|f| format!(" flags {}", flag_names(f)))
                .unwrap_or_default(),
            self.src,
            self.src_port,
            self.dst_port,
            self.shape
        )
    }
}

/// TCP flags in words: `SYN|ACK`, or `none`.
pub fn flag_names(flags: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let set: Vec<&str> = (0..8)
        .filter(|bit| flags & (1 << bit) != 0)
        .map(|bit| NAMES[bit])
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join("|")
    }
}

/// The UDP payload of case `token`: magic, token, then `filler`.
pub fn udp_payload(token: u32, filler: &[u8]) -> Vec<u8> {
    let mut p = UDP_MAGIC.to_vec();
    p.extend_from_slice(&token.to_be_bytes());
    p.extend_from_slice(filler);
    p
}

/// The token of a fuzz UDP payload, if it is one.
pub fn token_of(payload: &[u8]) -> Option<u32> {
    let rest = payload.strip_prefix(UDP_MAGIC)?;
    Some(u32::from_be_bytes(rest.get(..TOKEN_LEN)?.try_into().ok()?))
}
