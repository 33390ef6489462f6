//! The VPC CIDR allow-list: parsing (file and command-line forms), normalisation, duplicates and
//! the per-family capacity. Validation is all-or-nothing: a list either parses whole or the error
//! names the first bad entry, and nothing is returned to apply.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serve_guard_common::MAX_CIDRS_PER_FAMILY;
use std::collections::BTreeSet;
use std::fmt;

/// Largest CIDR file read: a full list at the largest `max_cidrs`
/// ([`serve_guard_common::MAX_CIDRS_PER_FAMILY`] entries per family, IPv6 ones up to 44 bytes)
/// with comments. The config's reader, the store and `cidr replace` all hold to it.
pub const MAX_FILE_BYTES: u64 = 128 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{at}: `{text}` is not a CIDR ({reason})")]
    Invalid {
        at: Location,
        text: String,
        reason: BadEntry,
    },
    #[error(
        "{count} {family} CIDRs exceed the capacity of {max} per address family (`max_cidrs`); aggregate ranges, split the list or raise `max_cidrs` (at most 1048576)"
    )]
    Capacity {
        family: &'static str,
        count: usize,
        max: u32,
    },
    #[error(
        "the CIDR list would be empty, which would cut the Serve ports off from every source; give at least one range (use `serve-guard detach` to remove the filter)"
    )]
    Empty,
}

/// Why one entry is not a CIDR; [`CidrError::Invalid`] says where it is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BadEntry {
    #[error("expected ADDRESS/PREFIX")]
    NoPrefix,
    #[error("`{address}` is not an IPv4 or IPv6 address")]
    Address { address: String },
    #[error("prefix length `{length}` must be a number from 0 to {max}")]
    PrefixLength { length: String, max: u8 },
}

/// Where an entry came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 1-based line of a CIDR file.
    Line(usize),
    /// 1-based position among command-line arguments.
    Argument(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Argument(n) => write!(f, "argument {n}"),
        }
    }
}

/// A CIDR given with host bits set, and the network it was normalised to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    pub at: Location,
    pub given: String,
    pub network: IpNet,
}

impl fmt::Display for Normalised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: `{}` has host bits set; using {}",
            self.at, self.given, self.network
        )
    }
}

/// Parsed entries in input order, with the normalisation warnings.
#[derive(Debug, Default)]
pub struct Parsed {
    pub networks: Vec<IpNet>,
    pub warnings: Vec<Normalised>,
}

/// Parses one entry: `a.b.c.d/n`, `x::/n`, or a bare address (a /32 or /128 host route).
/// Host bits are cleared; the caller reports the returned flag as a warning.
pub fn parse_entry(text: &str) -> Result<(IpNet, bool), BadEntry> {
    let net: IpNet = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<std::net::IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(describe_bad_entry(text)),
        },
    };
    let network = net.trunc();
    Ok((network, network != net))
}

fn describe_bad_entry(text: &str) -> BadEntry {
    match text.split_once('/') {
        None => BadEntry::NoPrefix,
        Some((addr, len)) => {
            if addr.parse::<std::net::IpAddr>().is_err() {
                BadEntry::Address {
                    address: addr.to_owned(),
                }
            } else {
                BadEntry::PrefixLength {
                    length: len.to_owned(),
                    max: if addr.contains(':') { 128 } else { 32 },
                }
            }
        }
    }
}

/// Parses a CIDR file: one CIDR per line, `#` starts a comment, blank lines are ignored.
pub fn parse_file(text: &str) -> Result<Parsed, CidrError> {
    let entries = text.lines().enumerate().filter_map(|(i, line)| {
        let content = line.split('#').next().unwrap_or("").trim();
        (!content.is_empty()).then_some((Location::Line(i + 1), content))
    });
    parse_located(entries)
}

/// Parses command-line arguments, numbering them from 1 for errors.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Parsed, CidrError> {
    parse_located(
        args.into_iter()
            .enumerate()
            .map(|(i, a)| (Location::Argument(i + 1), a.trim())),
    )
}

fn parse_located<'a>(
    entries: impl Iterator<Item = (Location, &'a str)>,
) -> Result<Parsed, CidrError> {
    let mut parsed = Parsed::default();
    for (at, text) in entries {
        let (network, normalised) = parse_entry(text).map_err(|reason| CidrError::Invalid {
            at,
            text: text.to_owned(),
            reason,
        })?;
        if normalised {
            parsed.warnings.push(Normalised {
                at,
                given: text.to_owned(),
                network,
            });
        }
        parsed.networks.push(network);
    }
    Ok(parsed)
}

/// A validated allow-list: normalised, without duplicates, within capacity, never empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList {
    v4: BTreeSet<Ipv4Net>,
    v6: BTreeSet<Ipv6Net>,
}

impl CidrList {
    /// Builds a list from networks (duplicates fold) and checks it.
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Result<Self, CidrError> {
        let mut list = Self::default();
        for net in networks {
            list.insert(net);
        }
        list.validate()?;
        Ok(list)
    }

    /// Parses and validates a whole CIDR file.
    pub fn from_file_text(text: &str) -> Result<(Self, Vec<Normalised>), CidrError> {
        let parsed = parse_file(text)?;
        Ok((Self::new(parsed.networks)?, parsed.warnings))
    }

    /// [`Self::from_file_text`] for a file that may hold no CIDR at all: the CIDR file beside
    /// the cloud's ranges (`[cloud]`), which adds only what the cloud cannot know.
    pub fn from_file_text_maybe_empty(text: &str) -> Result<(Self, Vec<Normalised>), CidrError> {
        let parsed = parse_file(text)?;
        let list = Self::from_iter_unchecked(parsed.networks);
        list.check_capacity(MAX_CIDRS_PER_FAMILY)?;
        Ok((list, parsed.warnings))
    }

    fn from_iter_unchecked(networks: impl IntoIterator<Item = IpNet>) -> Self {
        let mut list = Self::default();
        for net in networks {
            list.insert(net);
        }
        list
    }

    /// Every network of both lists.
    pub fn union(&self, other: &CidrList) -> CidrList {
        CidrList {
            v4: self.v4.union(&other.v4).copied().collect(),
            v6: self.v6.union(&other.v6).copied().collect(),
        }
    }

    /// Inserts a (normalised) network; false if it was already there.
    pub fn insert(&mut self, net: IpNet) -> bool {
        match net.trunc() {
            IpNet::V4(n) => self.v4.insert(n),
            IpNet::V6(n) => self.v6.insert(n),
        }
    }

    /// Removes a network; false if it was not in the list.
    pub fn remove(&mut self, net: &IpNet) -> bool {
        match net.trunc() {
            IpNet::V4(n) => self.v4.remove(&n),
            IpNet::V6(n) => self.v6.remove(&n),
        }
    }

    pub fn contains(&self, net: &IpNet) -> bool {
        match net.trunc() {
            IpNet::V4(n) => self.v4.contains(&n),
            IpNet::V6(n) => self.v6.contains(&n),
        }
    }

    /// Whether `addr` is inside one of the networks: what the filter asks of a source address.
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket shows an IPv4 peer)
    /// is looked up as the IPv4 address it is on the wire. One set lookup per prefix length, so
    /// the cost does not grow with the list.
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        match addr.to_canonical() {
            std::net::IpAddr::V4(ip) => (0..=32)
                .any(|len| Ipv4Net::new(ip, len).is_ok_and(|n| self.v4.contains(&n.trunc()))),
            std::net::IpAddr::V6(ip) => (0..=128)
                .any(|len| Ipv6Net::new(ip, len).is_ok_and(|n| self.v6.contains(&n.trunc()))),
        }
    }

    /// Non-empty and within [`MAX_CIDRS_PER_FAMILY`] (the most any filter can be built for) for
    /// each family. The filter checks its own capacity ([`Self::check_capacity`]) too.
    pub fn validate(&self) -> Result<(), CidrError> {
        if self.is_empty() {
            return Err(CidrError::Empty);
        }
        self.check_capacity(MAX_CIDRS_PER_FAMILY)
    }

    /// At most `max` CIDRs per family (`max_cidrs`, or what a filter's maps hold).
    pub fn check_capacity(&self, max: u32) -> Result<(), CidrError> {
        for (family, count) in [("IPv4", self.v4.len()), ("IPv6", self.v6.len())] {
            if count > max as usize {
                return Err(CidrError::Capacity { family, count, max });
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn v4(&self) -> &BTreeSet<Ipv4Net> {
        &self.v4
    }

    pub fn v6(&self) -> &BTreeSet<Ipv6Net> {
        &self.v6
    }

    /// Every network, IPv4 first, each family in address order.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(self.v6.iter().map(|n| IpNet::V6(*n)))
    }

    /// The file form: a header comment, then one CIDR per line.
    pub fn to_file_text(&self, header: &str) -> String {
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        for net in self.iter() {
            out.push_str(&net.to_string());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allows_looks_addresses_up_by_prefix() {
        let list = CidrList::new([
            net("198.18.0.0/25"),
            net("fd00:5e::/112"),
            net("10.1.2.3/32"),
        ])
        .unwrap();
        for (addr, want) in [
            ("198.18.0.10", true),
            ("198.18.0.200", false),
            ("10.1.2.3", true),
            ("10.1.2.4", false),
            ("fd00:5e::10", true),
            ("fd00:5e::1:200", false),
            // A dual-stack socket's view of an IPv4 peer.
            ("::ffff:198.18.0.10", true),
            ("::ffff:198.18.0.200", false),
        ] {
            assert_eq!(list.allows(addr.parse().unwrap()), want, "{addr}");
        }
        let everyone = CidrList::new([net("0.0.0.0/0")]).unwrap();
        assert!(everyone.allows("203.0.113.9".parse().unwrap()));
        assert!(!everyone.allows("fd00::1".parse().unwrap()));
    }

    #[test]
    fn parses_comments_blanks_and_both_families() {
        let text = "# VPC\n10.0.0.0/8\n\n  172.16.0.0/12   # peered\nfd00::/8\n192.168.1.7\n";
        let (list, warnings) = CidrList::from_file_text(text).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(list.v4().len(), 3);
        assert_eq!(list.v6().len(), 1);
        assert!(list.contains(&net("192.168.1.7/32")));
    }

    #[test]
    fn names_the_line_of_a_bad_entry() {
        let err = CidrList::from_file_text("10.0.0.0/8\n# c\n10.0.0.0/33\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: `10.0.0.0/33` is not a CIDR (prefix length `33` must be a number from 0 to 32)"
        );
        let err = CidrList::from_file_text("10.0.0.0/8\nnot-an-ip/8\n").unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: `not-an-ip/8`"),
            "{err}"
        );
        let err = CidrList::from_file_text("fd00::/129\n").unwrap_err();
        assert!(err.to_string().contains("0 to 128"), "{err}");
    }

    #[test]
    fn names_the_argument_of_a_bad_entry() {
        let err = parse_args(["10.0.0.0/8", "10.1.0.0/x"]).unwrap_err();
        assert!(
            err.to_string().starts_with("argument 2: `10.1.0.0/x`"),
            "{err}"
        );
    }

    #[test]
    fn normalises_host_bits_with_a_warning() {
        let (list, warnings) = CidrList::from_file_text("10.1.2.3/8\nfd00::1/64\n").unwrap();
        assert!(list.contains(&net("10.0.0.0/8")));
        assert!(list.contains(&net("fd00::/64")));
        assert_eq!(warnings.len(), 2);
        assert_eq!(
            warnings[0].to_string(),
            "line 1: `10.1.2.3/8` has host bits set; using 10.0.0.0/8"
        );
    }

    #[test]
    fn folds_duplicates() {
        let (list, _) = CidrList::from_file_text("10.0.0.0/8\n10.0.0.0/8\n10.9.9.9/8\n").unwrap();
        assert_eq!(list.v4().len(), 1);
    }

    #[test]
    fn refuses_an_empty_list() {
        assert_eq!(
            CidrList::from_file_text("# nothing\n\n").unwrap_err(),
            CidrError::Empty
        );
    }

    #[test]
    fn refuses_more_than_the_capacity() {
        let nets = (0..=MAX_CIDRS_PER_FAMILY)
            .map(|i| IpNet::V4(Ipv4Net::new((i << 8).into(), 24).unwrap()));
        let err = CidrList::new(nets).unwrap_err();
        assert!(
            matches!(err, CidrError::Capacity { family: "IPv4", .. }),
            "{err}"
        );
    }

    #[test]
    fn file_text_round_trips() {
        let (list, _) = CidrList::from_file_text("fd00::/8\n10.0.0.0/8\n").unwrap();
        let text = list.to_file_text("managed by serve-guard\nrevision 3");
        assert!(text.starts_with("# managed by serve-guard\n# revision 3\n10.0.0.0/8\nfd00::/8\n"));
        assert_eq!(CidrList::from_file_text(&text).unwrap().0, list);
    }
}
