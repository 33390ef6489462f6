//! What systemd and operators rely on (issue 9): `serve-guard check` validates every input `run`
//! would use and attaches nothing; the agent tells systemd READY=1 only once the filter is
//! attached, `/ready` answers and the proxy listens, RELOADING=1 (with MONOTONIC_USEC) and READY=1
//! around a SIGHUP reload that keeps a broken input out, and STOPPING=1 on SIGTERM.
//!
//! systemd's side is a Unix datagram socket the test binds and names in `NOTIFY_SOCKET`, exactly
//! what systemd gives a `Type=notify` service.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::netns::Netns;
use serve_guard_tests::probe;
use serve_guard_tests::topology::{IFACE, Topology};
use serve_guard_tests::{limits, wait_for};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// The public proxy's port (the agent's default listen address).
const PROXY_PORT: u16 = 8443;
/// The agent's metrics endpoint (default), inside its namespace.
const METRICS: &str = "127.0.0.1:9464";
/// Largest notification read (systemd's own limit is far above what the agent sends).
const MAX_DATAGRAM: usize = 4096;
/// `check`'s documented exit codes.
const EXIT_INVALID: i32 = 1;
const EXIT_USAGE: i32 = 2;
/// A token as a cluster distributes it (base64url, 43 characters).
const TOKEN: &str = "readinessToken_ccccccccccccccccccccccccccc";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn public_table(token_file: &Path) -> toml::Table {
    let mut public = toml::Table::new();
    public.insert("token_file".into(), token_file.display().to_string().into());
    public
}

fn write_token(path: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `serve-guard check` with `cfg`'s files in `ns`.
fn check(ns: &Netns, cfg: AgentConfig, extra: &[&str]) -> Result<(Agent, Output)> {
    let agent = Agent::new(ns, cfg)?;
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    let out = agent.cli(&args)?;
    Ok((agent, out))
}

fn expect_invalid(out: &Output, names: &str, what: &str) -> Result<()> {
    ensure!(
        out.status.code() == Some(EXIT_INVALID),
        "{what}: expected exit {EXIT_INVALID}, got {} ({})",
        out.status,
        text(&out.stderr)
    );
    ensure!(
        text(&out.stderr).contains(names),
        "{what}: the error does not name {names:?}: {}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn check_validates_every_input_and_attaches_nothing() -> Result<()> {
    let ns = Netns::new("chk")?;
    let dir = tempfile::Builder::new().prefix("sg-check-").tempdir()?;
    let token_file = dir.path().join("token");

    // A valid private config: exit 0, what was checked on stdout, nothing attached or created.
    let (agent, out) = check(
        &ns,
        AgentConfig::private(&["lo"]).cidrs(&["10.0.0.0/8"]),
        &[],
    )?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("check passed"),
        "valid config: {} {}",
        out.status,
        text(&out.stderr)
    );
    ensure!(
        text(&out.stdout).contains("1 IPv4"),
        "{}",
        text(&out.stdout)
    );
    ensure!(ns.xdp_program("lo")?.is_none(), "check attached XDP");
    ensure!(
        !agent.files().pin_dir.exists() && !agent.files().control_socket.exists(),
        "check pinned or listened"
    );

    // Each bad input: exit 1 and an error that names it.
    let (_, out) = check(
        &ns,
        AgentConfig::private(&["nope0"]).cidrs(&["10.0.0.0/8"]),
        &[],
    )?;
    expect_invalid(&out, "nope0", "missing interface")?;
    let (_, out) = check(
        &ns,
        AgentConfig::private(&["lo"]).cidrs(&["10.0.0.0/8", "10.0.0.0/99"]),
        &[],
    )?;
    expect_invalid(&out, "line 2", "bad CIDR")?;

    // Public mode: a missing token file is reported (run would create it), and not created.
    let public = |table: toml::Table| {
        AgentConfig::public(&["lo"])
            .cidrs(&["10.0.0.0/8"])
            .set("public", table)
    };
    let (_, out) = check(&ns, public(public_table(&token_file)), &[])?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("missing"),
        "missing token file: {} {} {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    ensure!(!token_file.exists(), "check created the token file");

    write_token(&token_file, &format!("{TOKEN}\n"), 0o644)?;
    let (_, out) = check(&ns, public(public_table(&token_file)), &[])?;
    expect_invalid(&out, "defaultMode", "world-readable token file")?;
    ensure!(
        !text(&out.stderr).contains(TOKEN),
        "the error shows the token"
    );

    write_token(&token_file, &format!("# cluster\n{TOKEN}\n"), 0o440)?;
    let (_, out) = check(&ns, public(public_table(&token_file)), &[])?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("1 token(s) accepted"),
        "a Secret-style token file: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let mut with_tls = public_table(&token_file);
    let cert = dir.path().join("missing-cert.pem");
    with_tls.insert("tls_cert".into(), cert.display().to_string().into());
    with_tls.insert(
        "tls_key".into(),
        dir.path().join("key.pem").display().to_string().into(),
    );
    let (_, out) = check(&ns, public(with_tls), &[])?;
    expect_invalid(&out, "missing-cert.pem", "missing TLS certificate")?;

    let (_, out) = check(&ns, AgentConfig::private(&["lo"]), &["--bogus"])?;
    ensure!(
        out.status.code() == Some(EXIT_USAGE),
        "a bad command line: {}",
        out.status
    );
    Ok(())
}

/// The test's end of `NOTIFY_SOCKET`.
struct NotifySocket(UnixDatagram);

impl NotifySocket {
    fn bind(path: &Path) -> Result<Self> {
        let socket = UnixDatagram::bind(path).context("binding the notify socket")?;
        Ok(NotifySocket(socket))
    }

    /// The next notification, waiting at most `timeout`.
    fn next(&self, timeout: Duration) -> Result<String> {
        self.0.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = self
            .0
            .recv(&mut buf)
            .context("no notification from the agent in time")?;
        Ok(text(&buf[..n]))
    }
}

#[test]
fn notify_ready_after_attach_reloading_on_sighup_stopping_on_sigterm() -> Result<()> {
    let topo = Topology::new()?;
    let dir = tempfile::Builder::new().prefix("sg-notify-").tempdir()?;
    let socket_path = dir.path().join("notify.sock");
    let notify = NotifySocket::bind(&socket_path)?;
    let token_file = dir.path().join("token");
    write_token(&token_file, &format!("{TOKEN}\n"), 0o600)?;
    let cfg = AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .set("public", public_table(&token_file))
        .env("NOTIFY_SOCKET", socket_path.display().to_string());
    let mut agent = Agent::new(&topo.server.ns, cfg)?;
    agent.launch()?;
    let ns = &topo.server.ns;

    // READY=1 is the first thing systemd hears, and by then everything is up.
    let first = notify
        .next(limits::AGENT_READY)
        .with_context(|| agent.logs())?;
    ensure!(first == "READY=1\n", "first notification: {first:?}");
    ensure!(
        ns.xdp_program(IFACE)?.is_some(),
        "READY=1 before the filter was attached"
    );
    let ready = probe::http_request(ns, METRICS.parse()?, "/ready", &[])?;
    ensure!(
        ready.status == 200,
        "READY=1 but /ready is {}",
        ready.status
    );
    probe::tcp_connect(
        ns,
        format!("127.0.0.1:{PROXY_PORT}").parse()?,
        limits::PROBE_IO,
    )
    .context("READY=1 but the proxy does not listen")?;

    // SIGHUP with a broken token file: RELOADING=1 + MONOTONIC_USEC, then READY=1; the error is
    // reported, the old token stays, the agent keeps running.
    write_token(&token_file, "short\n", 0o600)?;
    agent.signal(libc::SIGHUP)?;
    let reloading = notify.next(limits::CLI)?;
    let mut lines = reloading.lines();
    ensure!(
        lines.next() == Some("RELOADING=1"),
        "on SIGHUP: {reloading:?}"
    );
    let usec = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .with_context(|| format!("no MONOTONIC_USEC with RELOADING=1: {reloading:?}"))?;
    ensure!(usec.parse::<u64>()? > 0, "MONOTONIC_USEC={usec}");
    let again = notify.next(limits::CLI)?;
    ensure!(again == "READY=1\n", "after the reload: {again:?}");
    let logs = agent.logs();
    ensure!(
        logs.contains("SIGHUP: CIDR file") && logs.contains("unchanged"),
        "the reload of the CIDR file is not logged:\n{logs}"
    );
    ensure!(
        logs.contains("line 1") && logs.contains("kept as they were"),
        "the broken token file is not reported:\n{logs}"
    );
    ensure!(agent.is_running(), "the agent stopped on SIGHUP:\n{logs}");
    wait_for("the agent to answer /ready", limits::CLI, || {
        Ok(probe::http_request(ns, METRICS.parse()?, "/ready", &[])?.status == 200)
    })?;

    // SIGTERM: STOPPING=1, then a clean exit.
    agent.signal(libc::SIGTERM)?;
    let stopping = notify.next(limits::AGENT_STOP)?;
    ensure!(stopping == "STOPPING=1\n", "on SIGTERM: {stopping:?}");
    let status = agent.wait_exit(limits::AGENT_STOP)?;
    ensure!(status.success(), "exit after SIGTERM: {status}");
    Ok(())
}

/// The config's port rules on SIGHUP (issue 16): a new `public_ports` is applied live to the
/// running filter; a bad rule is refused with its entry, in `check` and on reload, and the rules
/// in force stay.
#[test]
fn port_rules_reload_live_and_a_bad_rule_changes_nothing() -> Result<()> {
    use serve_guard_tests::server::HttpServer;
    use serve_guard_tests::topology::Ip;
    const PUBLISHED: u16 = 8080;
    const LATER: u16 = 6379;
    let topo = Topology::new()?;
    let _servers = HttpServer::start(&topo.server.ns, &[PUBLISHED, LATER])?;
    let mut agent = Agent::start(
        &topo.server.ns,
        AgentConfig::private(&[IFACE])
            .public_ports(&[&PUBLISHED.to_string()])
            .cidrs(&Topology::vpc_cidrs()),
    )?;
    let outside = &topo.outside.ns;
    let reach = |port: u16| -> bool {
        Ip::BOTH.iter().all(|&ip| {
            probe::tcp_connect(outside, topo.server.sock(ip, port), limits::DROPPED_CONNECT).is_ok()
        })
    };
    ensure!(
        reach(PUBLISHED),
        "the published port is closed from outside"
    );
    ensure!(
        !reach(LATER),
        "an unlisted port answers a source outside the VPC"
    );

    // Publish the other port instead, live.
    let publish = |agent: &Agent, ports: &[&str]| -> Result<()> {
        let ports: Vec<toml::Value> = ports.iter().map(|&p| p.into()).collect();
        agent.set_config("public_ports", ports)
    };
    publish(&agent, &[&LATER.to_string()])?;
    agent.signal(libc::SIGHUP)?;
    wait_for("the new public port to open", limits::CLI, || {
        Ok(reach(LATER) && !reach(PUBLISHED))
    })
    .with_context(|| agent.logs())?;
    ensure!(
        agent.logs().contains("port rules applied"),
        "the applied rules are not logged:\n{}",
        agent.logs()
    );

    // A range out of order: `check` names it; SIGHUP refuses it and keeps the rules in force.
    publish(&agent, &["9000-8000"])?;
    let out = agent.cli(&["check"])?;
    expect_invalid(
        &out,
        "\"9000-8000\" is out of order",
        "check with a bad port rule",
    )?;
    agent.signal(libc::SIGHUP)?;
    wait_for("the refused rule to be logged", limits::CLI, || {
        Ok(agent.logs().contains("the port rules in force stay"))
    })?;
    ensure!(
        agent.logs().contains("range \"9000-8000\" is out of order"),
        "the bad entry is not named:\n{}",
        agent.logs()
    );
    ensure!(
        reach(LATER) && !reach(PUBLISHED),
        "a refused reload changed the ports"
    );
    ensure!(agent.is_running(), "the agent stopped on a bad reload");
    Ok(())
}
