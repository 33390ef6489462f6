//! `serve-guard stats [--json]`: packet counters by reason and address family, summed over CPUs.
//! From the running agent, or straight from the pinned counter map when no agent runs (the
//! pinned filter keeps counting without it).

use super::output::outln;
use crate::config::{Config, Overrides};
use crate::control::client::{Client, ClientError};
use crate::control::{StatsReport, routes};
use anyhow::{Result, bail};
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn exec(config: &Path, args: Args) -> Result<()> {
    let config = Config::load(config, &Overrides::default())?;
    let (stats, source) = match Client::new(&config.control_socket)
        .get::<StatsReport>(routes::STATS)
        .await
    {
        Ok(stats) => (stats, "the running agent"),
        Err(ClientError::NotRunning { .. }) => (
            read_pinned(&config)?,
            "the pinned map (no agent is running)",
        ),
        Err(e) => return Err(e.into()),
    };
    if args.json {
        return super::output::json(&stats);
    }
    outln!("counters from {source}, summed over CPUs:");
    outln!(
        "{:<18} {:<6} {:>14} {:>16}",
        "reason",
        "family",
        "packets",
        "bytes"
    );
    for row in &stats.counters {
        outln!(
            "{:<18} {:<6} {:>14} {:>16}",
            row.reason,
            row.family,
            row.packets,
            row.bytes
        );
    }
    Ok(())
}

fn read_pinned(config: &Config) -> Result<StatsReport> {
    let Some(snapshot) = crate::filter::read_pinned_counters(&config.pin_dir)? else {
        bail!(
            "no agent is running and nothing is pinned under {}: the filter is not installed",
            config.pin_dir.display()
        );
    };
    Ok(StatsReport::from(&snapshot))
}
