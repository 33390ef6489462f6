//! What a connection is counted under: its source (an IPv4 address, an IPv6 /64) and its
//! source's aggregate prefix (an IPv4 /24, an IPv6 /48 or the operator's prefix).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::metrics::Family;

/// An IPv6 client controls at least a /64: it counts as one source.
pub const IPV6_SOURCE_PREFIX: u8 = 64;
/// The smallest block an IPv4 network is routed and rented in: one operator, one prefix.
pub const IPV4_AGGREGATE_PREFIX: u8 = 24;

/// One client: an IPv4 address (an IPv4-mapped IPv6 address counts as IPv4), an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(IpAddr);

/// The block a source belongs to: its IPv4 /24, its IPv6 aggregate prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKey(IpAddr);

impl PrefixKey {
    pub fn family(self) -> Family {
        family(self.0)
    }
}

fn family(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn mask_v4(ip: Ipv4Addr, bits: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn mask_v6(ip: Ipv6Addr, bits: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// How addresses are grouped: the IPv6 aggregate prefix is the operator's choice.
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    pub ipv6_aggregate_prefix: u8,
}

impl Grouping {
    /// The source and prefix `ip` is counted under.
    pub fn keys(self, ip: IpAddr) -> (SourceKey, PrefixKey) {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => (
                SourceKey(ip),
                PrefixKey(IpAddr::V4(mask_v4(v4, IPV4_AGGREGATE_PREFIX))),
            ),
            IpAddr::V6(v6) => (
                SourceKey(IpAddr::V6(mask_v6(v6, IPV6_SOURCE_PREFIX))),
                PrefixKey(IpAddr::V6(mask_v6(v6, self.ipv6_aggregate_prefix))),
            ),
        }
    }

    /// The prefix length a limit of `scope` counts `family` by (the metrics' `prefix_len`).
    pub fn prefix_len(self, scope: Scope, family: Family) -> u8 {
        match (scope, family) {
            (Scope::All, _) => 0,
            (Scope::Prefix, Family::Ipv4) => IPV4_AGGREGATE_PREFIX,
            (Scope::Prefix, Family::Ipv6) => self.ipv6_aggregate_prefix,
            (Scope::Source, Family::Ipv4) => 32,
            (Scope::Source, Family::Ipv6) => IPV6_SOURCE_PREFIX,
        }
    }
}

/// What a count is kept over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Prefix,
    Source,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ip: &str, v6: u8) -> (SourceKey, PrefixKey) {
        Grouping {
            ipv6_aggregate_prefix: v6,
        }
        .keys(ip.parse().unwrap())
    }

    #[test]
    fn sources_and_prefixes() {
        let (s, p) = keys("198.18.64.77", 48);
        assert_eq!(s.0, "198.18.64.77".parse::<IpAddr>().unwrap());
        assert_eq!(p.0, "198.18.64.0".parse::<IpAddr>().unwrap());
        // IPv4-mapped counts as IPv4, in the same source and prefix.
        assert_eq!(keys("::ffff:198.18.64.77", 48), (s, p));
        let (s, p) = keys("fd00:17:0:5:1:2:3:4", 48);
        assert_eq!(s.0, "fd00:17:0:5::".parse::<IpAddr>().unwrap());
        assert_eq!(p.0, "fd00:17::".parse::<IpAddr>().unwrap());
        assert_eq!(p.family(), Family::Ipv6);
        let (_, p) = keys("fd00:17:ab:5::1", 40);
        assert_eq!(p.0, "fd00:17::".parse::<IpAddr>().unwrap());
        let (s, p) = keys("fd00:17:ab:5::1", 64);
        assert_eq!(s.0, p.0);
    }
}
