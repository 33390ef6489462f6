//! `serve-guard detach`: takes the filter off every interface and removes the pinned program and
//! maps. Refuses while an agent runs (it holds the links open and would re-create them).

use super::output::outln;
use crate::agent::running_agent_pid;
use crate::config::{Config, Overrides, defaults};
use crate::filter::pins::RELEASE_TIMEOUT;
use crate::filter::remove_pins;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// bpffs folder to clean. Given without a usable config, the config is not needed.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The agent's state folder (to check no agent runs). Overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn exec(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let overrides = Overrides {
        pin_dir: args.pin_dir.clone(),
        state_dir: args.state_dir.clone(),
        ..Overrides::default()
    };
    let (pin_dir, state_dir) = match Config::load(config_path, &overrides) {
        Ok(config) => (config.pin_dir, config.state_dir),
        // Removing the filter must not depend on a config that may be broken or gone, as long
        // as the operator names the pin folder explicitly.
        Err(e) if args.pin_dir.is_some() => {
            eprintln!("serve-guard: ignoring the config ({e})");
            (
                args.pin_dir
                    .clone()
                    .unwrap_or_else(|| defaults::PIN_DIR.into()),
                args.state_dir
                    .clone()
                    .unwrap_or_else(|| defaults::STATE_DIR.into()),
            )
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "cannot find the pin folder (pass --pin-dir to detach without a config)",
            ));
        }
    };
    if let Some(pid) = running_agent_pid(&state_dir) {
        let pid = if pid == 0 {
            String::new()
        } else {
            format!(" (pid {pid})")
        };
        anyhow::bail!(
            "an agent{pid} is running with state_dir {}: stop it first (systemctl stop serve-guard); with on_stop = \"detach\" it removes the filter itself",
            state_dir.display()
        );
    }
    let mut removed = remove_pins(&pin_dir)?;
    // Report only once the programs have really left the interfaces.
    removed.wait_released(RELEASE_TIMEOUT);
    if args.json {
        super::output::json(&removed)?;
    } else {
        outln!("{}: {removed}", pin_dir.display());
    }
    if !removed.still_attached.is_empty() {
        anyhow::bail!(
            "the filter is still attached to {}",
            removed.still_attached.join(", ")
        );
    }
    Ok(())
}
