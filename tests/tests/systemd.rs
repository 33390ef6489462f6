//! The systemd unit (issue 4, test 7): `systemd-analyze verify` accepts it, and the capabilities
//! it grants are exactly the ones the agent needs: with the unit's bounding set the real agent
//! loads, attaches and applies a CIDR change; without any one of them it cannot start.

mod cidr_support;

use anyhow::{Context as _, Result, bail, ensure};
use cidr_support::*;
use serve_guard_tests::agent::{Agent, AgentConfig, agent_bin};
use serve_guard_tests::netns::Netns;
use serve_guard_tests::topology::{IFACE, Topology, VPC_V4, VPC_V6};
use serve_guard_tests::{limits, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const UNIT: &str = "serve-guard.service";
/// Where the unit runs the agent; the test points the copy it verifies at the built binary.
const INSTALLED_BIN: &str = "/usr/local/bin/serve-guard";

fn unit_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(UNIT)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() -> Result<()> {
    let text = std::fs::read_to_string(unit_source())?;
    ensure!(
        text.contains(INSTALLED_BIN),
        "the unit does not run {INSTALLED_BIN}"
    );
    // verify checks that ExecStart= is executable: point a copy at the binary under test.
    let dir = tempfile::tempdir()?;
    let unit = dir.path().join(UNIT);
    std::fs::write(
        &unit,
        text.replace(INSTALLED_BIN, &agent_bin()?.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .context("running systemd-analyze (Debian package systemd)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings about other units of the host are not ours; any line naming our unit is.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(UNIT)).collect();
    ensure!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify refused the unit ({}):\n{stderr}",
        out.status
    );
    Ok(())
}

/// The capabilities the unit grants, e.g. `["bpf", "net_admin", "perfmon"]`.
fn unit_capabilities() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(unit_source())?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("no CapabilityBoundingSet= in the unit")?;
    let ambient = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .context("no AmbientCapabilities= in the unit")?;
    ensure!(
        line == ambient,
        "bounding set {line:?} != ambient set {ambient:?}"
    );
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect())
}

/// The agent started through `setpriv` with only `caps`; killed (by PID) on drop.
struct Restricted(Child);

impl Restricted {
    fn start(ns: &Netns, agent: &Agent, caps: &[String]) -> Result<Restricted> {
        let bounding: String = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::File::create(agent.files().dir().join("restricted.log"))?;
        let child = ns
            .command("setpriv")
            .arg(format!("--bounding-set={bounding}"))
            .args(["--inh-caps=-all", "--"])
            .arg(agent_bin()?)
            .args(["run", "-c"])
            .arg(&agent.files().config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Restricted(child))
    }

    fn exited(&mut self) -> Result<bool> {
        Ok(self.0.try_wait()?.is_some())
    }
}

impl Drop for Restricted {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn log(agent: &Agent) -> String {
    std::fs::read_to_string(agent.files().dir().join("restricted.log")).unwrap_or_default()
}

#[test]
fn the_unit_capabilities_are_enough_and_each_is_needed() -> Result<()> {
    let caps = unit_capabilities()?;
    ensure!(
        !caps.iter().any(|c| c == "sys_admin"),
        "the unit grants CAP_SYS_ADMIN, which the agent does not need"
    );
    let topo = Topology::new()?;
    let config = || {
        AgentConfig::private(&[IFACE])
            .serve_ports(&[SERVE_HTTP])
            .cidrs(&[VPC_V4, VPC_V6])
    };

    // With the unit's set: attached, answering, applying a change to the maps.
    let agent = Agent::new(&topo.server.ns, config())?;
    {
        let mut restricted = Restricted::start(&topo.server.ns, &agent, &caps)?;
        wait_for(
            "the restricted agent to attach and answer",
            limits::AGENT_READY,
            || {
                if restricted.exited()? {
                    bail!("the agent exited:\n{}", log(&agent));
                }
                Ok(topo.server.ns.xdp_program(IFACE)?.is_some()
                    && cli_ok(&agent, &["status"])?.contains("running (pid"))
            },
        )?;
        cli_ok(&agent, &["cidr", "add", "10.70.0.0/16"])?;
        ensure!(
            attached_cidrs(&topo.server.ns, IFACE)?.contains("10.70.0.0/16"),
            "the restricted agent did not update the maps:\n{}",
            log(&agent)
        );
    }
    drop(agent);

    // Without any one of them the agent cannot start (and says why in its log).
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let agent = Agent::new(&topo.server.ns, config())?;
        let mut restricted = Restricted::start(&topo.server.ns, &agent, &fewer)?;
        wait_for(
            &format!("the agent without CAP_{} to fail", missing.to_uppercase()),
            limits::AGENT_READY,
            || restricted.exited(),
        )
        .with_context(|| format!("it kept running:\n{}", log(&agent)))?;
        ensure!(
            !restricted.0.wait()?.success(),
            "the agent without CAP_{} exited successfully",
            missing.to_uppercase()
        );
    }
    Ok(())
}
