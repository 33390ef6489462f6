//! The systemd unit (issue 4, test 7): `systemd-analyze verify` accepts it; the capabilities it
//! grants are exactly the ones the agent needs (with the unit's bounding set the real agent loads,
//! attaches and applies a CIDR change; without any one of them it cannot start); and its system
//! call filter allows every call the agent makes (traced with strace through start and its
//! READY=1 notification, CIDR changes, a watched edit, status, stats, a scrape, a SIGHUP reload
//! with RELOADING=1/READY=1, and SIGTERM with STOPPING=1).

use super::cidr_support::*;
use anyhow::{Context as _, Result, bail, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig, agent_bin};
use serve_guard_tests::netns::Netns;
use serve_guard_tests::topology::{IFACE, Topology, VPC_V4, VPC_V6};
use serve_guard_tests::{limits, wait_for};
use std::collections::{BTreeMap, BTreeSet};
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
    // Public mode: the agent starts the proxy process, which drops to `nobody` with these.
    let proxy_caps = ["setuid", "setgid", "setpcap"];
    let tokens = tempfile::Builder::new().prefix("sg-unit-caps-").tempdir()?;
    let public_config = || {
        let mut public = toml::Table::new();
        public.insert("listen".into(), "127.0.0.1:18443".into());
        public.insert(
            "token_file".into(),
            tokens.path().join("token").display().to_string().into(),
        );
        config().set("mode", "public").set("public", public)
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
                Ok(topo.server.ns.xdp_program(IFACE)?.is_some() && agent_answers(&agent)?)
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
    // Public mode with the unit's set: the proxy process starts without privileges.
    let agent = Agent::new(&topo.server.ns, public_config())?;
    {
        let mut restricted = Restricted::start(&topo.server.ns, &agent, &caps)?;
        wait_for(
            "the restricted public-mode agent to run its proxy process",
            limits::AGENT_READY,
            || {
                if restricted.exited()? {
                    bail!("the agent exited:\n{}", log(&agent));
                }
                Ok(log(&agent).contains("proxy process serving, without privileges"))
            },
        )?;
    }
    drop(agent);

    // Without any one of them the agent cannot start (and says why in its log): the filter's
    // in either mode, the proxy process's in public mode.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let config = if proxy_caps.contains(&missing.as_str()) {
            public_config()
        } else {
            config()
        };
        let agent = Agent::new(&topo.server.ns, config)?;
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

/// The unit's `SystemCallFilter=` expanded to system call names, with systemd's own table of
/// groups (`systemd-analyze syscall-filter`).
fn unit_syscalls() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(unit_source())?;
    let filter = text
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .context("no SystemCallFilter= in the unit")?;
    ensure!(!filter.starts_with('~'), "expected an allow-list filter");
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()?;
    ensure!(
        out.status.success(),
        "systemd-analyze syscall-filter failed"
    );
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8(out.stdout)?.lines() {
        let entry = line.trim();
        if line.starts_with('@') {
            current = Some(entry.to_owned());
            groups.insert(entry.to_owned(), Vec::new());
        } else if let Some(group) = &current
            && !entry.is_empty()
            && !entry.starts_with('#')
        {
            groups.get_mut(group).unwrap().push(entry.to_owned());
        }
    }
    fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(name) {
            Some(members) => {
                for m in members {
                    if out.insert(m.clone()) && m.starts_with('@') {
                        expand(m, groups, out);
                    }
                }
            }
            None => {
                out.insert(name.to_owned());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    for entry in filter.split_whitespace() {
        expand(entry, &groups, &mut allowed);
    }
    Ok(allowed)
}

/// The system calls named in an `strace -f` log.
fn traced_syscalls(trace: &Path) -> Result<BTreeSet<String>> {
    let mut used = BTreeSet::new();
    for line in std::fs::read_to_string(trace)?.lines() {
        // "<pid> name(args...", "<pid> <... name resumed>..."; signals and exits have no call.
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let rest = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = &rest[name.len()..];
        if !name.is_empty() && (after.starts_with('(') || after.starts_with(" resumed")) {
            used.insert(name);
        }
    }
    Ok(used)
}

/// The first child of `pid` (the agent under strace).
fn child_of(pid: u32) -> Result<Option<u32>> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(children
        .split_whitespace()
        .next()
        .map(str::parse)
        .transpose()?)
}

#[test]
fn the_unit_syscall_filter_allows_every_call_the_agent_makes() -> Result<()> {
    let allowed = unit_syscalls()?;
    ensure!(allowed.contains("bpf"), "the filter does not allow bpf(2)");
    let topo = Topology::new()?;
    let config = AgentConfig::private(&[IFACE])
        .serve_ports(&[SERVE_HTTP])
        .cidrs(&[VPC_V4, VPC_V6]);
    let agent = Agent::new(&topo.server.ns, config)?;
    let trace = agent.files().dir().join("strace.log");
    let output = std::fs::File::create(agent.files().dir().join("restricted.log"))?;
    // What systemd gives a Type=notify service: sd_notify's socket calls are traced too.
    let notify_path = agent.files().dir().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(limits::AGENT_READY))?;
    let mut datagram = [0u8; 256];
    let mut strace = Restricted(
        topo.server
            .ns
            .command("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg(agent_bin()?)
            .args(["run", "-c"])
            .arg(&agent.files().config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("running strace (Debian package strace)")?,
    );
    wait_for("the traced agent to answer", limits::AGENT_READY, || {
        if strace.exited()? {
            bail!("the traced agent exited:\n{}", log(&agent));
        }
        Ok(topo.server.ns.xdp_program(IFACE)?.is_some() && agent_answers(&agent)?)
    })?;

    cli_ok(&agent, &["cidr", "add", "10.80.0.0/16"])?;
    cli_ok(&agent, &["cidr", "remove", "10.80.0.0/16"])?;
    write_by_rename(
        &agent.files().cidr_file,
        &format!("{VPC_V4}\n{VPC_V6}\n10.81.0.0/16\n"),
    )?;
    wait_revision(&agent, 4)?;
    cli_ok(&agent, &["stats"])?;
    let scrape = serve_guard_tests::probe::http_request(
        &topo.server.ns,
        "127.0.0.1:9464".parse()?,
        "/metrics",
        &[],
    )?;
    ensure!(scrape.status == 200, "/metrics answered {}", scrape.status);

    let pid = child_of(strace.0.id())?.context("strace has no child")?;
    let n = notify.recv(&mut datagram).context("no READY=1")?;
    ensure!(&datagram[..n] == b"READY=1\n", "{:?}", &datagram[..n]);
    // SAFETY: kill(2) on the agent, a child of our strace child, which is still running.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    ensure!(rc == 0, "SIGHUP failed");
    for want in ["RELOADING=1", "READY=1"] {
        let n = notify
            .recv(&mut datagram)
            .with_context(|| format!("no {want}"))?;
        ensure!(
            datagram[..n].starts_with(want.as_bytes()),
            "{want}: {:?}",
            String::from_utf8_lossy(&datagram[..n])
        );
    }
    // SAFETY: as above.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    ensure!(rc == 0, "SIGTERM failed");
    wait_for("the traced agent to stop", limits::AGENT_STOP, || {
        strace.exited()
    })?;

    let used = traced_syscalls(&trace)?;
    eprintln!("{} distinct system calls traced: {used:?}", used.len());
    ensure!(
        used.contains("bpf") && used.len() > 20,
        "the trace looks empty: {used:?}"
    );
    let refused: Vec<&String> = used.difference(&allowed).collect();
    ensure!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?} (EPERM)"
    );
    Ok(())
}

/// Whether `status` reports a running agent (it exits 3 while none answers yet).
fn agent_answers(agent: &Agent) -> Result<bool> {
    let out = agent.cli(&["status"])?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("running (pid"))
}
