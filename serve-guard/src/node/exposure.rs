//! Paths by which traffic reaches Serve without crossing a covered interface, and settings that
//! weaken what the filter can promise (docs/filter.md, "What the filter cannot see"). Found at
//! start-up and on every `status`, each named so the operator can act on it.

use super::netlink::{self, Link, Seg6LocalRoute};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Link kinds whose device hands the stack packets it decapsulated, and whether the program
/// can judge them when the device is listed in `interfaces` (Ethernet-framed inner packets).
const DECAPSULATING_KINDS: &[(&str, bool)] = &[
    ("vxlan", true),
    ("geneve", true),
    ("gretap", true),
    ("ip6gretap", true),
    ("erspan", true),
    ("ip6erspan", true),
    ("l2tpeth", true),
    ("gre", false),
    ("ip6gre", false),
    ("ipip", false),
    ("sit", false),
    ("ip6tnl", false),
    ("vti", false),
    ("vti6", false),
    ("xfrm", false),
    ("wireguard", false),
    ("bareudp", false),
    ("gtp", false),
    ("tun", false),
    ("ppp", false),
];

/// SEG6_LOCAL_ACTION_* values that decapsulate (uapi/linux/seg6_local.h) and their names.
const DECAPSULATING_SEG6_ACTIONS: &[(u32, &str)] = &[
    (4, "End.DX2"),
    (5, "End.DX6"),
    (6, "End.DX4"),
    (7, "End.DT6"),
    (8, "End.DT4"),
    (16, "End.DT46"),
];

/// One finding. Serialised into `status --json` as `{"kind": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exposure {
    /// An up tunnel device not in `interfaces`.
    TunnelDevice {
        name: String,
        link_kind: String,
        /// Listing it in `interfaces` covers it (its inner packets are Ethernet frames).
        coverable: bool,
    },
    /// An SRv6 route whose action decapsulates.
    Srv6DecapRoute {
        dst: String,
        table: u32,
        action: String,
        device: Option<String>,
    },
    /// IPv4 reverse-path filtering is off on a covered interface.
    RpFilterOff { interface: String },
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exposure::TunnelDevice {
                name,
                link_kind,
                coverable: true,
            } => write!(
                f,
                "{link_kind} device {name} decapsulates traffic that never crosses the filter; add \"{name}\" to interfaces to cover it"
            ),
            Exposure::TunnelDevice {
                name, link_kind, ..
            } => write!(
                f,
                "{link_kind} device {name} decapsulates traffic that never crosses the filter and cannot be covered by XDP (no Ethernet header); restrict who may send to it or remove it"
            ),
            Exposure::Srv6DecapRoute {
                dst,
                table,
                action,
                device,
            } => write!(
                f,
                "SRv6 route {dst} (table {table}{}) with action {action} decapsulates traffic that never crosses the filter; restrict who may send to it or remove it",
                device
                    .as_ref()
                    .map(|d| format!(", dev {d}"))
                    .unwrap_or_default()
            ),
            Exposure::RpFilterOff { interface } => write!(
                f,
                "reverse-path filtering is off on {interface} (net.ipv4.conf.{interface}.rp_filter and .all.rp_filter are 0): a spoofed allowed IPv4 source can send one-way traffic through; set it to 1 (strict) or 2 (loose)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot list the node's {what} to look for paths around the filter: {error}")]
pub struct ScanError {
    what: &'static str,
    error: std::io::Error,
}

/// Every exposure of this network namespace given the `covered` interfaces.
pub fn scan(covered: &[String]) -> Result<Vec<Exposure>, ScanError> {
    let links = netlink::links().map_err(|error| ScanError {
        what: "links",
        error,
    })?;
    scan_links(&links, covered)
}

/// [`scan`] with the namespace's links already listed (start-up lists them once).
pub fn scan_links(links: &[Link], covered: &[String]) -> Result<Vec<Exposure>, ScanError> {
    let routes = netlink::seg6local_routes().map_err(|error| ScanError {
        what: "IPv6 routes",
        error,
    })?;
    let mut found = tunnels(links, covered);
    found.extend(srv6_decap_routes(&routes, links));
    found.extend(
        covered
            .iter()
            .filter(|name| rp_filter(name) == Some(0))
            .map(|name| Exposure::RpFilterOff {
                interface: name.clone(),
            }),
    );
    Ok(found)
}

fn tunnels(links: &[Link], covered: &[String]) -> Vec<Exposure> {
    links
        .iter()
        .filter(|l| l.up && !covered.contains(&l.name))
        .filter_map(|l| {
            let kind = l.kind.as_deref()?;
            let (_, coverable) = DECAPSULATING_KINDS.iter().find(|(k, _)| *k == kind)?;
            Some(Exposure::TunnelDevice {
                name: l.name.clone(),
                link_kind: kind.to_owned(),
                coverable: *coverable,
            })
        })
        .collect()
}

fn srv6_decap_routes(routes: &[Seg6LocalRoute], links: &[Link]) -> Vec<Exposure> {
    routes
        .iter()
        .filter_map(|r| {
            let (_, action) = DECAPSULATING_SEG6_ACTIONS
                .iter()
                .find(|(number, _)| *number == r.action)?;
            Some(Exposure::Srv6DecapRoute {
                dst: r.dst.clone(),
                table: r.table,
                action: (*action).to_owned(),
                device: r
                    .oif
                    .and_then(|i| links.iter().find(|l| l.index == i))
                    .map(|l| l.name.clone()),
            })
        })
        .collect()
}

/// The effective IPv4 rp_filter of `interface`: the kernel uses the larger of `all` and the
/// interface's own value. `None` if either cannot be read (no IPv4 on it).
fn rp_filter(interface: &str) -> Option<u8> {
    let read = |scope: &str| -> Option<u8> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(read("all")?.max(read(interface)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, up: bool) -> Link {
        Link {
            index: 7,
            name: name.to_owned(),
            hw_type: netlink::ARPHRD_ETHER,
            up,
            kind: kind.map(str::to_owned),
            xdp_program: None,
        }
    }

    #[test]
    fn up_uncovered_tunnels_are_named() {
        let links = [
            link("eth0", None, true),
            link("vx0", Some("vxlan"), true),
            link("vx1", Some("vxlan"), true),
            link("tunl0", Some("ipip"), false),
            link("gre1", Some("gre"), true),
            link("veth0", Some("veth"), true),
        ];
        let found = tunnels(&links, &["eth0".to_owned(), "vx1".to_owned()]);
        assert_eq!(
            found,
            vec![
                Exposure::TunnelDevice {
                    name: "vx0".into(),
                    link_kind: "vxlan".into(),
                    coverable: true
                },
                Exposure::TunnelDevice {
                    name: "gre1".into(),
                    link_kind: "gre".into(),
                    coverable: false
                },
            ]
        );
        assert!(found[0].to_string().contains("add \"vx0\" to interfaces"));
    }

    #[test]
    fn only_decapsulating_srv6_actions_are_named() {
        let routes = [
            Seg6LocalRoute {
                dst: "fd00:5e::100/128".into(),
                table: 254,
                action: 6,
                oif: Some(7),
            },
            // End (1) only moves to the next segment.
            Seg6LocalRoute {
                dst: "fd00:5e::101/128".into(),
                table: 254,
                action: 1,
                oif: Some(7),
            },
        ];
        let found = srv6_decap_routes(&routes, &[link("eth0", None, true)]);
        assert_eq!(found.len(), 1);
        let text = found[0].to_string();
        assert!(text.contains("fd00:5e::100/128") && text.contains("End.DX4"));
        assert!(text.contains("dev eth0"), "{text}");
    }

    #[test]
    fn exposures_round_trip_as_json() {
        let e = Exposure::RpFilterOff {
            interface: "eth0".into(),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "rp_filter_off");
        assert_eq!(serde_json::from_value::<Exposure>(json).unwrap(), e);
    }
}
