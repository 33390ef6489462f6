//! `serve-guard cidr` (being written).

use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn exec(_config: &Path, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`cidr` is not implemented yet")
}
