//! The one environment every fuzzed frame is judged in: protected ports and allow-lists, given
//! to the real program's maps and to the model alike. The generators aim sources inside, at the
//! edge of and outside these prefixes, and ports at, next to and away from these ports.

use super::model::Policy;
use crate::program::TestProgram;
use anyhow::{Context as _, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serve_guard_common::FilterConfig;
use std::{net::IpAddr, sync::LazyLock};

/// Serve's two ports and the ends of the port map (an off-by-one in its index shows there).
pub const PROTECTED_PORTS: [u16; 4] = [1, 8000, 9000, u16::MAX];

/// Several prefix lengths, nested and adjacent, all in the test ranges.
pub const ALLOW_V4: [&str; 5] = [
    "198.18.0.0/24",
    "198.18.64.0/18",
    "198.19.0.128/25",
    "198.19.16.0/20",
    "198.19.200.7/32",
];
pub const ALLOW_V6: [&str; 5] = [
    "fd00:1::/64",
    "fd00:2:3::/48",
    "fd00:4::5/128",
    "fd10::/16",
    "fd00:6:7:8:9::/80",
];

/// Parsed once: the generators draw sources from them for every frame.
static PARSED_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| parse(&ALLOW_V4));
static PARSED_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| parse(&ALLOW_V6));

fn parse<T: std::str::FromStr>(cidrs: &[&str]) -> Vec<T> {
    cidrs
        .iter()
        .map(|s| s.parse().ok().expect("valid constant"))
        .collect()
}

pub fn allow_v4() -> &'static [Ipv4Net] {
    &PARSED_V4
}

pub fn allow_v6() -> &'static [Ipv6Net] {
    &PARSED_V6
}

/// The model's view of the environment.
pub fn policy(audit: bool) -> Policy {
    Policy {
        protected_ports: PROTECTED_PORTS.into(),
        allow_v4: allow_v4().to_vec(),
        allow_v6: allow_v6().to_vec(),
        audit,
    }
}

/// The real program loaded with the same environment.
pub fn program(audit: bool) -> Result<TestProgram> {
    let mut program = TestProgram::load()?;
    for port in PROTECTED_PORTS {
        program
            .protect_port(port)
            .with_context(|| format!("protecting port {port}"))?;
    }
    for net in allow_v4() {
        program.allow(IpAddr::V4(net.addr()), net.prefix_len())?;
    }
    for net in allow_v6() {
        program.allow(IpAddr::V6(net.addr()), net.prefix_len())?;
    }
    let flags = if audit { FilterConfig::FLAG_AUDIT } else { 0 };
    program.set_config(FilterConfig { flags })?;
    Ok(program)
}
