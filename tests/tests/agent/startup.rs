//! Start-up is all or nothing. The filter attaches before the agent's subsystems start (control
//! socket, metrics, token, proxy); a subsystem that cannot start must take back what this start
//! attached: everything when nothing was pinned before, only its new links when it adopted
//! pinned state (the previous filter keeps filtering). One test per failure point, on a real
//! kernel, each in its own namespaces.

use anyhow::{Context as _, Result};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::netns::Netns;
use serve_guard_tests::topology::{IFACE, Topology};
use std::os::unix::fs::PermissionsExt as _;

/// An address no interface of the test namespaces holds: binding to it fails (EADDRNOTAVAIL)
/// after the filter is attached.
const UNASSIGNED: &str = "198.18.255.254";

fn config() -> AgentConfig {
    AgentConfig::private(&[IFACE])
        .serve_ports(&[8000])
        .cidrs(&["10.0.0.0/8"])
}

fn xdp_program(ns: &Netns, iface: &str) -> Result<Option<u64>> {
    ns.xdp_program(iface)
}

/// `serve-guard run <args>` must fail naming `message`, then nothing may be pinned or attached.
fn fails_and_leaves_nothing(agent: &mut Agent, args: &[&str], message: &str) -> Result<()> {
    let status = agent.run_to_exit(args)?;
    let logs = agent.run_logs();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains(message), "expected `{message}` in:\n{logs}");
    assert!(
        logs.contains("the start failed; removed"),
        "the undo is not logged:\n{logs}"
    );
    assert!(
        !agent.files().pin_dir.exists(),
        "still pinned after the failed start:\n{logs}"
    );
    assert_eq!(xdp_program(agent.netns(), IFACE)?, None, "{logs}");
    Ok(())
}

#[test]
fn a_metrics_address_that_cannot_be_bound_leaves_nothing_attached() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::new(&topo.server.ns, config())?;
    fails_and_leaves_nothing(
        &mut agent,
        &["--metrics-listen", &format!("{UNASSIGNED}:9464")],
        "cannot listen for metrics",
    )
}

#[test]
fn a_control_socket_that_cannot_be_bound_leaves_nothing_attached() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::new(&topo.server.ns, config())?;
    // The socket's folder would have to be created under a regular file.
    let blocker = agent.files().state_dir.with_file_name("not-a-dir");
    std::fs::write(&blocker, "")?;
    let socket = blocker.join("control.sock");
    fails_and_leaves_nothing(
        &mut agent,
        &["--control-socket", socket.to_str().context("path")?],
        "control socket",
    )
}

/// A public-mode config whose token file is `token_file` (so the test never touches /etc).
fn public(token_file: &std::path::Path, listen: &str) -> AgentConfig {
    let mut table = toml::Table::new();
    table.insert("token_file".into(), token_file.display().to_string().into());
    table.insert("listen".into(), listen.into());
    AgentConfig::public(&[IFACE])
        .serve_ports(&[8000])
        .cidrs(&["10.0.0.0/8"])
        .set("public", table)
}

#[test]
fn an_unreadable_token_file_leaves_nothing_attached() -> Result<()> {
    let topo = Topology::new()?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    // Readable by others: the agent refuses to use it.
    std::fs::write(&token, "a-token-that-is-long-enough-to-be-one-0123456789\n")?;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644))?;
    let mut agent = Agent::new(&topo.server.ns, public(&token, "127.0.0.1:0"))?;
    fails_and_leaves_nothing(&mut agent, &[], &token.display().to_string())
}

#[test]
fn a_proxy_address_that_cannot_be_bound_leaves_nothing_attached() -> Result<()> {
    let topo = Topology::new()?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    let mut agent = Agent::new(
        &topo.server.ns,
        public(&token, &format!("{UNASSIGNED}:8443")),
    )?;
    fails_and_leaves_nothing(&mut agent, &[], "cannot listen on")
}

#[test]
fn a_failed_restart_leaves_the_adopted_filter_filtering() -> Result<()> {
    let topo = Topology::new()?;
    let mut agent = Agent::start(&topo.server.ns, config())?;
    let before = xdp_program(&topo.server.ns, IFACE)?.context("not attached")?;
    assert!(agent.stop()?.success(), "{}", agent.logs());
    // on_stop = keep: still attached with nobody running.
    assert_eq!(xdp_program(&topo.server.ns, IFACE)?, Some(before));

    let status = agent.run_to_exit(&["--metrics-listen", &format!("{UNASSIGNED}:9464")])?;
    let logs = agent.run_logs();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("the adopted filter stays in place"), "{logs}");
    assert!(agent.files().pin_dir.exists(), "pins removed:\n{logs}");
    assert!(
        xdp_program(&topo.server.ns, IFACE)?.is_some(),
        "the adopted filter was taken off:\n{logs}"
    );
    // And the CLI still sees it as the node's filter.
    let out = agent.cli(&["status", "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["filter"]["pinned"], true, "{json}");
    assert_eq!(out.status.code(), Some(3), "no agent runs");
    Ok(())
}
