//! Least privilege in public mode (issue 8): the internet-facing proxy runs as a separate
//! process of the agent with no capabilities at all, another uid than root, no BPF object, and a
//! crash of it neither stops the agent nor leaves the port answering with an old token set.
//!
//! The real agent in a server namespace with XDP attached; clients in the outside namespace.
//! The proxy process cannot read the TLS key (root's, 0600): a renewed certificate reaches it
//! over the agent's channel on SIGHUP.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe;
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, SERVER_V4, Topology};
use serve_guard_tests::{limits, wait_for};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serve_guard_proxy::test_util::self_signed_cert;
use serve_guard_tests::netns::Netns;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const PROXY_PORT: u16 = 8443;
/// The stand-in for Ray Serve's HTTP port, behind the proxy.
const UPSTREAM_PORT: u16 = 8000;
/// From start (or a crash) to the proxy process answering.
const PROXY_READY: Duration = Duration::from_secs(30);
/// A second token, written over the first while the proxy process is down.
const NEW_TOKEN: &str = "NEWTOKENnewtokenNEWTOKENnewtokenNEWTOKEN123";

fn proxy_addr() -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), PROXY_PORT)
}

/// Direct children of `pid` whose command line runs the proxy process.
fn proxy_processes(pid: u32) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let children = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("proxy-worker") {
                found.push(child);
            }
        }
    }
    Ok(found)
}

/// `Name:\tvalue` lines of `/proc/<pid>/status`.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn get_status(ns: &Netns, token: Option<&str>) -> Option<u16> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    probe::http_request(ns, proxy_addr(), "/x", &headers)
        .ok()
        .map(|r| r.status)
}

/// The public table for the agent: the listener, the stand-in upstream, the token file.
fn public_table(token_file: &Path) -> toml::Table {
    let mut public = toml::Table::new();
    public.insert("listen".into(), format!("0.0.0.0:{PROXY_PORT}").into());
    public.insert(
        "upstream".into(),
        format!("http://127.0.0.1:{UPSTREAM_PORT}").into(),
    );
    public.insert("token_file".into(), token_file.display().to_string().into());
    public
}

fn agent_config(public: toml::Table) -> AgentConfig {
    AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .serve_ports(&[UPSTREAM_PORT, 9000])
        .set("public", public)
}

/// Whether a TLS handshake from `ns` succeeds when only `trusted` is trusted.
fn handshake_trusting(ns: &Netns, trusted: &CertificateDer<'static>) -> Result<bool> {
    let trusted = trusted.clone();
    ns.run(move || -> Result<bool> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(trusted)?;
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp =
                tokio::time::timeout(limits::PROBE_IO, TcpStream::connect(proxy_addr())).await??;
            let name = ServerName::IpAddress(std::net::IpAddr::from(SERVER_V4).into());
            let connected = tokio::time::timeout(
                limits::PROBE_IO,
                TlsConnector::from(Arc::new(config)).connect(name, tcp),
            )
            .await?;
            Ok(connected.is_ok())
        })
    })?
}

fn read_primary(token_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(token_file)?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .context("no token in the token file")
}

#[test]
fn the_proxy_process_has_no_privileges_and_restarts_with_the_current_tokens() -> Result<()> {
    let topo = Topology::new()?;
    let _upstream = HttpServer::start(&topo.server.ns, &[UPSTREAM_PORT])?;
    let dir = tempfile::Builder::new().prefix("sg-privs-").tempdir()?;
    let token_file = dir.path().join("token");
    let mut agent = Agent::start(&topo.server.ns, agent_config(public_table(&token_file)))?;
    let outside = topo.outside.ns;
    wait_for("the proxy to answer", PROXY_READY, || {
        Ok(get_status(&outside, None) == Some(401))
    })
    .with_context(|| agent.logs())?;
    let old = read_primary(&token_file)?;
    ensure!(
        get_status(&outside, Some(&old)) == Some(200),
        "the token is refused"
    );

    let agent_pid = agent.pid().context("agent pid")?;
    let workers = proxy_processes(agent_pid)?;
    ensure!(workers.len() == 1, "proxy processes: {workers:?}");
    let worker = workers[0];
    // What `ps`, `ps -f` and `ss -ltnp` show for the internet-facing listener: its own name,
    // not `exe` (it is started through /proc/self/exe). The comm is argv[0] cut to the kernel's
    // 15 bytes.
    let comm = std::fs::read_to_string(format!("/proc/{worker}/comm"))?;
    ensure!(
        comm.trim_end() == "serve-guard-pro",
        "the proxy process's comm is {comm:?}"
    );
    let cmdline = std::fs::read(format!("/proc/{worker}/cmdline"))?;
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    ensure!(
        argv0 == b"serve-guard-proxy",
        "the proxy process's argv[0] is {:?}",
        String::from_utf8_lossy(argv0)
    );
    println!(
        "proxy  pid {worker}: comm {}, argv[0] serve-guard-proxy",
        comm.trim_end()
    );
    let status = std::fs::read_to_string(format!("/proc/{worker}/status"))?;
    let agent_status = std::fs::read_to_string(format!("/proc/{agent_pid}/status"))?;
    println!(
        "agent  pid {agent_pid}: Uid {} CapEff {} CapBnd {}",
        status_field(&agent_status, "Uid:"),
        status_field(&agent_status, "CapEff:"),
        status_field(&agent_status, "CapBnd:")
    );
    println!(
        "proxy  pid {worker}: Uid {} Gid {} Groups [{}] CapInh {} CapPrm {} CapEff {} CapBnd {} CapAmb {} NoNewPrivs {}",
        status_field(&status, "Uid:"),
        status_field(&status, "Gid:"),
        status_field(&status, "Groups:"),
        status_field(&status, "CapInh:"),
        status_field(&status, "CapPrm:"),
        status_field(&status, "CapEff:"),
        status_field(&status, "CapBnd:"),
        status_field(&status, "CapAmb:"),
        status_field(&status, "NoNewPrivs:")
    );
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        ensure!(
            status_field(&status, set) == "0000000000000000",
            "the proxy process has {set} {}",
            status_field(&status, set)
        );
    }
    for ids in ["Uid:", "Gid:"] {
        let values = status_field(&status, ids);
        ensure!(
            values.split_whitespace().all(|v| v != "0"),
            "the proxy process runs with {ids} {values}"
        );
    }
    ensure!(
        status_field(&status, "Groups:").is_empty(),
        "supplementary groups"
    );
    ensure!(
        status_field(&status, "NoNewPrivs:") == "1",
        "no_new_privs is not set"
    );
    ensure!(
        status_field(&agent_status, "CapEff:") != "0000000000000000",
        "the agent itself should keep its capabilities (sanity check of the reading)"
    );
    // It holds no BPF object and no file beyond the agent's stdio (its log): sockets, pipes and
    // the runtime's own descriptors only.
    for fd in std::fs::read_dir(format!("/proc/{worker}/fd"))? {
        let fd = fd?;
        if fd
            .file_name()
            .to_str()
            .is_some_and(|n| ["0", "1", "2"].contains(&n))
        {
            continue;
        }
        let target = std::fs::read_link(fd.path())?.display().to_string();
        ensure!(
            target.starts_with("socket:")
                || target.starts_with("pipe:")
                || target.starts_with("anon_inode:[eventpoll]")
                || target.starts_with("anon_inode:[eventfd]")
                || target.starts_with("anon_inode:[timerfd]")
                || target == "/dev/null",
            "the proxy process holds {target}"
        );
    }
    // A crash: kill -9 the proxy process, replace the token while it is down. The port never
    // answers with the old set again, and the agent runs on.
    // SAFETY: signalling the proxy process this test found by pid.
    unsafe {
        libc::kill(worker as libc::pid_t, libc::SIGKILL);
    }
    std::fs::write(&token_file, format!("{NEW_TOKEN}\n"))?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    wait_for(
        "a new proxy process with the new token",
        PROXY_READY,
        || Ok(get_status(&outside, Some(NEW_TOKEN)) == Some(200)),
    )
    .with_context(|| agent.logs())?;
    ensure!(
        get_status(&outside, Some(&old)) == Some(401),
        "the old token is still accepted after the restart"
    );
    let restarted = proxy_processes(agent_pid)?;
    ensure!(
        restarted.len() == 1 && restarted[0] != worker,
        "proxy processes after the crash: {restarted:?}"
    );
    ensure!(
        agent.is_running(),
        "the agent stopped with its proxy process"
    );
    ensure!(
        agent.logs().contains("restarting it"),
        "the crash is not in the agent's log"
    );
    ensure!(
        !agent.logs().contains(&old) && !agent.logs().contains(NEW_TOKEN),
        "a token in the log"
    );

    // Stopping the agent stops the proxy process.
    agent.stop()?;
    wait_for("the proxy process to exit", limits::AGENT_STOP, || {
        Ok(!Path::new(&format!("/proc/{}", restarted[0])).exists())
    })?;
    Ok(())
}

#[test]
fn a_renewed_certificate_reaches_the_proxy_process_on_sighup() -> Result<()> {
    let topo = Topology::new()?;
    let _upstream = HttpServer::start(&topo.server.ns, &[UPSTREAM_PORT])?;
    let dir = tempfile::Builder::new().prefix("sg-privs-tls-").tempdir()?;
    // A self-signed certificate for the server's address; the key written 0600 (root's).
    let server = SERVER_V4.to_string();
    let first = self_signed_cert(dir.path(), &[&server])?;
    let mut public = public_table(&dir.path().join("token"));
    public.insert("tls_cert".into(), first.cert.display().to_string().into());
    public.insert("tls_key".into(), first.key.display().to_string().into());
    let mut agent = Agent::start(&topo.server.ns, agent_config(public))?;
    let outside = topo.outside.ns;
    wait_for(
        "the TLS proxy to serve the first certificate",
        PROXY_READY,
        || handshake_trusting(&outside, &first.der),
    )
    .with_context(|| agent.logs())?;

    let renewed = self_signed_cert(dir.path(), &[&server])?.der;
    ensure!(
        !handshake_trusting(&outside, &renewed)?,
        "the renewed certificate is served before the reload"
    );
    agent.signal(libc::SIGHUP)?;
    wait_for("the renewed certificate after SIGHUP", PROXY_READY, || {
        handshake_trusting(&outside, &renewed)
    })
    .with_context(|| agent.logs())?;
    ensure!(
        !handshake_trusting(&outside, &first.der)?,
        "the old certificate is still served"
    );
    ensure!(agent.is_running(), "the agent stopped");
    Ok(())
}
