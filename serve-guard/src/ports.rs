//! The port policy: which destination ports the filter guards from sources outside the
//! allow-list, and how (docs/ports.md).
//!
//! Three classes, one per port, written to the program's port map:
//! - [`PortClass::Strict`]: Ray Serve's own ports (`serve_ports`). Every packet from outside is
//!   dropped, as it always was.
//! - [`PortClass::Guarded`]: with `guard = "node"` every other port. From outside, nothing may
//!   open a connection (TCP SYN without ACK) or reach a listening or unconnected socket; packets
//!   of the node's own connections (replies to pip, object storage, DNS) pass.
//! - [`PortClass::Open`]: `public_ports` (SSH and the DHCP clients by default) and, in public mode, the proxy's
//!   listeners. Anyone may reach them.
//!
//! Port lists are written as numbers, `"LO-HI"` ranges or presets (`"ssh"`, `"serve"`,
//! `"ray"`); a bad entry is named with the key it came from, and nothing is applied.

use serde::{Deserialize, Serialize};
use serve_guard_common::{PORT_GUARDED, PORT_OPEN, PORT_PROTECTED, PortValue};
use std::fmt;
use std::ops::RangeInclusive;

/// How the filter treats packets from outside the allow-list to one destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortClass {
    /// Anyone may reach it.
    Open,
    /// No new connection and nothing to a listening or unconnected socket; replies pass.
    Guarded,
    /// Nothing at all.
    Strict,
}

impl PortClass {
    pub const fn name(self) -> &'static str {
        match self {
            PortClass::Open => "open",
            PortClass::Guarded => "guarded",
            PortClass::Strict => "strict",
        }
    }

    /// The value the program's port map holds for this class.
    pub const fn map_value(self) -> PortValue {
        match self {
            PortClass::Open => PORT_OPEN,
            PortClass::Guarded => PORT_GUARDED,
            PortClass::Strict => PORT_PROTECTED,
        }
    }

    /// The class a port map value stands for; an unknown value is read as what the program
    /// does with it (it drops everything from outside).
    pub const fn from_map_value(value: PortValue) -> PortClass {
        match value {
            PORT_OPEN => PortClass::Open,
            PORT_GUARDED => PortClass::Guarded,
            _ => PortClass::Strict,
        }
    }
}

impl fmt::Display for PortClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the filter guards beyond the strict Serve ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// Every port but the public ones: a Ray node's GCS, client server, dashboard, agents and
    /// Serve's replicas move and multiply, so only "everything" keeps up with them.
    #[default]
    Node,
    /// Only `serve_ports` and `guarded_ports`; everything else is left to other firewalls.
    Ports,
}

impl Guard {
    pub const fn name(self) -> &'static str {
        match self {
            Guard::Node => "node",
            Guard::Ports => "ports",
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Named sets of ports, for the lists in the config.
pub mod presets {
    use std::ops::RangeInclusive;

    /// SSH, the operator's way in.
    #[allow(
        clippy::single_range_in_vec_init,
        reason = "a list of ranges that has one"
    )]
    pub const SSH: &[RangeInclusive<u16>] = &[22..=22];
    /// DHCP and DHCPv6 clients. Lease renewals arrive at an unconnected socket from a server
    /// that is often outside the VPC's ranges (GCP's 169.254.169.254, Azure's 168.63.129.16):
    /// guarded, the node would lose its address when the lease ends.
    pub const DHCP: &[RangeInclusive<u16>] = &[68..=68, 546..=546];
    /// Ray Serve's HTTP and gRPC defaults.
    pub const SERVE: &[RangeInclusive<u16>] = &[8000..=8000, 9000..=9000];
    /// Ray's documented defaults besides Serve's two (Ray 2.60: ray start --help, the Ray
    /// cluster configuration reference, ray/serve/_private/constants.py): GCS 6379, object
    /// manager 8076, dashboard 8265 (its Jobs API runs code), HAProxy stats 8404 and metrics
    /// 9101, Serve's proxy behind HAProxy 8500, Ray client 10001, the worker ports 10002-19999,
    /// the dashboard agent 52365, and Serve's direct-ingress replicas (HTTP 30000-31000, gRPC
    /// 40000-41000). Random ports (raylet, agents, actors) are not in any list: only
    /// `guard = "node"` covers those.
    pub const RAY: &[RangeInclusive<u16>] = &[
        6379..=6379,
        8076..=8076,
        8265..=8265,
        8404..=8404,
        8500..=8500,
        9101..=9101,
        10001..=19999,
        30000..=31000,
        40000..=41000,
        52365..=52365,
    ];

    /// Every preset by the name the config uses.
    pub const ALL: &[(&str, &[RangeInclusive<u16>])] =
        &[("ssh", SSH), ("dhcp", DHCP), ("serve", SERVE), ("ray", RAY)];

    pub fn get(name: &str) -> Option<&'static [RangeInclusive<u16>]> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    pub fn names() -> String {
        ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }
}

/// A bad entry in a port list, named with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("`{key}`: {value} is not a port (1-65535)")]
    OutOfRange { key: &'static str, value: String },
    #[error("`{key}`: range \"{value}\" is out of order: write the lower port first")]
    OutOfOrder { key: &'static str, value: String },
    #[error(
        "`{key}`: \"{value}\" is neither a port, a \"LO-HI\" range nor a preset (presets: {known})"
    )]
    UnknownPreset {
        key: &'static str,
        value: String,
        known: String,
    },
    #[error("`{key}` is empty: give at least one Ray Serve port to protect")]
    Empty { key: &'static str },
    #[error(
        "port {port} is both in `{first}` ({first_entry}) and in `{second}` ({second_entry}): a port is either public or protected; remove it from one list"
    )]
    Overlap {
        port: u16,
        first: &'static str,
        first_entry: String,
        second: &'static str,
        second_entry: String,
    },
    #[error("`{key}` only applies with guard = \"{needs}\"; remove it or set guard = \"{needs}\"")]
    NeedsGuard { key: &'static str, needs: Guard },
}

/// One entry of a port list as written in the config: a number, or a string holding a number,
/// a range or a preset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// Wide, so that an out-of-range port gets our message, not a type error.
    Number(i64),
    Text(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Text(t) => write!(f, "\"{t}\""),
        }
    }
}

impl From<u16> for PortSpec {
    fn from(port: u16) -> Self {
        PortSpec::Number(i64::from(port))
    }
}

/// A validated port list: its ranges, each with the entry it came from (for error messages and
/// `status`), in the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortList {
    entries: Vec<PortEntry>,
}

/// One validated entry: the ports it covers and how it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortEntry {
    pub written: String,
    pub ranges: Vec<(u16, u16)>,
}

impl PortList {
    /// Parses every entry of the list at `key`; the first bad one is the error.
    pub fn parse(key: &'static str, specs: &[PortSpec]) -> Result<PortList, PortError> {
        let entries = specs
            .iter()
            .map(|spec| parse_spec(key, spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortList { entries })
    }

    pub fn from_ports(ports: &[u16]) -> PortList {
        PortList {
            entries: ports
                .iter()
                .map(|&p| PortEntry {
                    written: p.to_string(),
                    ranges: vec![(p, p)],
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[PortEntry] {
        &self.entries
    }

    /// Every port the list covers, ascending, once each.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .entries
            .iter()
            .flat_map(|e| e.ranges.iter().flat_map(|&(lo, hi)| lo..=hi))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The entry that covers `port`, as written.
    pub fn entry_for(&self, port: u16) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)))
            .map(|e| e.written.as_str())
    }

    pub fn contains(&self, port: u16) -> bool {
        self.entry_for(port).is_some()
    }

    /// The first port both lists cover, as an error naming both entries.
    pub fn check_disjoint(
        &self,
        key: &'static str,
        other: &PortList,
        other_key: &'static str,
    ) -> Result<(), PortError> {
        for entry in &self.entries {
            for &(lo, hi) in &entry.ranges {
                for other_entry in &other.entries {
                    for &(olo, ohi) in &other_entry.ranges {
                        if lo <= ohi && olo <= hi {
                            return Err(PortError::Overlap {
                                port: lo.max(olo),
                                first: key,
                                first_entry: entry.written.clone(),
                                second: other_key,
                                second_entry: other_entry.written.clone(),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn parse_spec(key: &'static str, spec: &PortSpec) -> Result<PortEntry, PortError> {
    let out_of_range = || PortError::OutOfRange {
        key,
        value: spec.to_string(),
    };
    let one = |n: i64| u16::try_from(n).ok().filter(|&p| p != 0);
    let ranges = match spec {
        PortSpec::Number(n) => {
            let p = one(*n).ok_or_else(out_of_range)?;
            vec![(p, p)]
        }
        PortSpec::Text(text) => {
            let text = text.trim();
            let number = |s: &str| -> Option<Result<u16, PortError>> {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(s.parse::<i64>().ok().and_then(one).ok_or_else(out_of_range))
            };
            if let Some(p) = number(text) {
                let p = p?;
                vec![(p, p)]
            } else if let Some((lo, hi)) = text.split_once('-')
                && let (Some(lo), Some(hi)) = (number(lo), number(hi))
            {
                let (lo, hi) = (lo?, hi?);
                if lo > hi {
                    return Err(PortError::OutOfOrder {
                        key,
                        value: text.to_owned(),
                    });
                }
                vec![(lo, hi)]
            } else if let Some(ranges) = presets::get(text) {
                ranges.iter().map(|r| (*r.start(), *r.end())).collect()
            } else {
                return Err(PortError::UnknownPreset {
                    key,
                    value: text.to_owned(),
                    known: presets::names(),
                });
            }
        }
    };
    Ok(PortEntry {
        written: spec.to_string(),
        ranges,
    })
}

/// The class of every port, as the config asks for it. Built by the config; written to the
/// program's port map by the filter; read by the exposure audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPolicy {
    pub guard: Guard,
    /// Strict: Ray Serve's ports.
    pub serve: PortList,
    /// Open (guard = "node" only).
    pub public: PortList,
    /// Guarded (guard = "ports" only).
    pub guarded: PortList,
    /// Open because the token proxy listens there (public mode).
    pub proxy: Vec<u16>,
}

impl PortPolicy {
    /// The class of one port.
    pub fn class(&self, port: u16) -> PortClass {
        if self.serve.contains(port) {
            PortClass::Strict
        } else if self.proxy.contains(&port) || self.public.contains(port) {
            PortClass::Open
        } else if self.guard == Guard::Node || self.guarded.contains(port) {
            PortClass::Guarded
        } else {
            PortClass::Open
        }
    }

    /// Why a port has its class, for reports: the list entry or the rule.
    pub fn reason(&self, port: u16) -> String {
        if let Some(entry) = self.serve.entry_for(port) {
            format!("serve_ports {entry}")
        } else if self.proxy.contains(&port) {
            "the token proxy's listener".to_owned()
        } else if let Some(entry) = self.public.entry_for(port) {
            format!("public_ports {entry}")
        } else if let Some(entry) = self.guarded.entry_for(port) {
            format!("guarded_ports {entry}")
        } else if self.guard == Guard::Node {
            "guard = \"node\"".to_owned()
        } else {
            "not listed (guard = \"ports\")".to_owned()
        }
    }

    /// The class of every port, for the port map (index = port; port 0 is never a
    /// destination a socket can have and stays open like the unlisted ports of `ports`).
    pub fn table(&self) -> Vec<PortClass> {
        (0..=u16::MAX)
            .map(|port| {
                if port == 0 {
                    PortClass::Open
                } else {
                    self.class(port)
                }
            })
            .collect()
    }

    /// The policy in runs of one class, for `status`: `[(lo, hi, class)]`, ascending.
    pub fn runs(&self) -> Vec<(u16, u16, PortClass)> {
        runs(&self.table())
    }
}

/// The policy in one line for logs: the strict ports, and what else is guarded or open.
pub fn describe(policy: &PortPolicy) -> String {
    let of_class = |class| -> String {
        let ports: Vec<u16> = (1..=u16::MAX)
            .filter(|&p| policy.class(p) == class)
            .collect();
        if ports.is_empty() {
            "none".to_owned()
        } else {
            format_ports(&ports)
        }
    };
    let strict = of_class(PortClass::Strict);
    match policy.guard {
        Guard::Node => format!(
            "serve ports {strict} (strict), every other port guarded, open: {}",
            of_class(PortClass::Open)
        ),
        Guard::Ports => format!(
            "serve ports {strict} (strict), guarded: {}, every other port open",
            of_class(PortClass::Guarded)
        ),
    }
}

/// Consecutive ports of one class, from a table indexed by port.
pub fn runs(table: &[PortClass]) -> Vec<(u16, u16, PortClass)> {
    let mut out: Vec<(u16, u16, PortClass)> = Vec::new();
    for (port, &class) in table.iter().enumerate().skip(1) {
        let port = u16::try_from(port).expect("a port table has 65536 entries");
        match out.last_mut() {
            Some((_, hi, c)) if *c == class && *hi + 1 == port => *hi = port,
            _ => out.push((port, port, class)),
        }
    }
    out
}

/// `a-b` or `a` for a run of ports.
pub fn format_range(range: &RangeInclusive<u16>) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}-{}", range.start(), range.end())
    }
}

/// Ports as a short list of runs: `22, 8000-8001`.
pub fn format_ports(ports: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        out.push(format_range(&(ports[i]..=ports[j])));
        i = j + 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(key: &'static str, specs: &[&str]) -> Result<PortList, PortError> {
        let specs: Vec<PortSpec> = specs
            .iter()
            .map(|s| PortSpec::Text((*s).to_owned()))
            .collect();
        PortList::parse(key, &specs)
    }

    #[test]
    fn numbers_ranges_and_presets_parse() {
        let l = list("public_ports", &["22", "8000-8002", "ssh"]).unwrap();
        assert_eq!(l.ports(), [22, 8000, 8001, 8002]);
        let ray = list("guarded_ports", &["ray"]).unwrap();
        for port in [
            6379, 8265, 10001, 10002, 19999, 30000, 31000, 40000, 41000, 52365,
        ] {
            assert!(ray.contains(port), "{port}");
        }
        assert!(!ray.contains(8000), "Serve's own ports are serve_ports");
        let n = PortList::parse("serve_ports", &[PortSpec::Number(65535)]).unwrap();
        assert_eq!(n.ports(), [65535]);
    }

    #[test]
    fn bad_entries_are_named() {
        for (spec, want) in [
            ("0", "`public_ports`: \"0\" is not a port (1-65535)"),
            ("65536", "`public_ports`: \"65536\" is not a port (1-65535)"),
            (
                "10-70000",
                "`public_ports`: \"10-70000\" is not a port (1-65535)",
            ),
            (
                "30-20",
                "`public_ports`: range \"30-20\" is out of order: write the lower port first",
            ),
            (
                "rayy",
                "`public_ports`: \"rayy\" is neither a port, a \"LO-HI\" range nor a preset (presets: ssh, dhcp, serve, ray)",
            ),
            (
                "-5",
                "`public_ports`: \"-5\" is neither a port, a \"LO-HI\" range nor a preset (presets: ssh, dhcp, serve, ray)",
            ),
        ] {
            assert_eq!(
                list("public_ports", &[spec]).unwrap_err().to_string(),
                want,
                "{spec}"
            );
        }
        let e = PortList::parse("serve_ports", &[PortSpec::Number(-1)]).unwrap_err();
        assert_eq!(e.to_string(), "`serve_ports`: -1 is not a port (1-65535)");
    }

    #[test]
    fn overlap_names_both_entries() {
        let a = list("public_ports", &["22", "8000-8100"]).unwrap();
        let b = list("serve_ports", &["9000", "8050"]).unwrap();
        assert_eq!(
            a.check_disjoint("public_ports", &b, "serve_ports")
                .unwrap_err()
                .to_string(),
            "port 8050 is both in `public_ports` (\"8000-8100\") and in `serve_ports` (\"8050\"): a port is either public or protected; remove it from one list"
        );
    }

    #[test]
    fn classes_follow_the_guard() {
        let policy = PortPolicy {
            guard: Guard::Node,
            serve: PortList::from_ports(&[8000, 9000]),
            public: list("public_ports", &["ssh"]).unwrap(),
            guarded: PortList::default(),
            proxy: vec![8443],
        };
        assert_eq!(policy.class(8000), PortClass::Strict);
        assert_eq!(policy.class(22), PortClass::Open);
        assert_eq!(policy.class(8443), PortClass::Open);
        assert_eq!(policy.class(6379), PortClass::Guarded);
        assert_eq!(policy.class(45000), PortClass::Guarded);
        assert_eq!(
            policy.runs()[..3],
            [
                (1, 21, PortClass::Guarded),
                (22, 22, PortClass::Open),
                (23, 7999, PortClass::Guarded)
            ]
        );
        let ports = PortPolicy {
            guard: Guard::Ports,
            guarded: list("guarded_ports", &["ray"]).unwrap(),
            public: PortList::default(),
            ..policy
        };
        assert_eq!(ports.class(6379), PortClass::Guarded);
        assert_eq!(ports.class(45000), PortClass::Open);
        assert_eq!(ports.class(9000), PortClass::Strict);
        for class in [PortClass::Open, PortClass::Guarded, PortClass::Strict] {
            assert_eq!(PortClass::from_map_value(class.map_value()), class);
        }
    }

    #[test]
    fn ports_format_as_runs() {
        assert_eq!(
            format_ports(&[22, 8000, 8001, 8002, 9000]),
            "22, 8000-8002, 9000"
        );
    }
}
