//! Public mode: the agent's token proxy in front of a Serve port, seen from a client outside the
//! VPC. The upstream is the harness's small HTTP server on port 8000 standing in for Ray Serve,
//! so this part runs in seconds; the public-mode tests (tests/tests/ray/public_mode.rs) do the same
//! against a real Ray Serve and a real browser.

use crate::interrupt;
use anyhow::{Context as _, Result};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe::{self, ConnectError, HttpResponse};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, SERVER_V4, Topology, VPC_V4, VPC_V6};
use serve_guard_tests::{limits, wait_for};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Ray Serve's HTTP port (the filter protects it) and the proxy's public port.
const SERVE_PORT: u16 = 8000;
const PROXY_PORT: u16 = 8443;
/// From the filter being attached to the proxy answering.
const PROXY_READY: Duration = Duration::from_secs(30);
/// Characters of the token shown; the rest is masked (demo output gets pasted around).
const TOKEN_SHOWN: usize = 6;

const OK: &str = "✓";
const WRONG: &str = "✗ expected";

pub fn run() -> Result<bool> {
    println!("serve-guard demo: public mode");
    println!("=============================\n");
    let topo = Topology::new().context("creating the namespaces")?;
    println!(
        "  server   {:<16} an HTTP server on {SERVE_PORT} standing in for Ray Serve",
        topo.server.v4.to_string()
    );
    println!(
        "  outside  {:<16} a client on the internet (VPC CIDRs: {VPC_V4}, {VPC_V6})\n",
        topo.outside.v4.to_string()
    );
    let _upstream =
        HttpServer::start(&topo.server.ns, &[SERVE_PORT]).context("starting the upstream")?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    let mut public = toml::Table::new();
    public.insert("listen".into(), format!("0.0.0.0:{PROXY_PORT}").into());
    public.insert(
        "upstream".into(),
        format!("http://127.0.0.1:{SERVE_PORT}").into(),
    );
    public.insert("token_file".into(), token_file.display().to_string().into());
    println!(
        "Starting `serve-guard run`: mode = \"public\", [public] listen = \"0.0.0.0:{PROXY_PORT}\", upstream = \"http://127.0.0.1:{SERVE_PORT}\""
    );
    let started = Instant::now();
    let cfg = AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .serve_ports(&[SERVE_PORT])
        .set("public", public);
    let mut agent = Agent::start(&topo.server.ns, cfg).context("starting the agent")?;
    let client = &topo.outside.ns;
    let proxy = SocketAddr::new(SERVER_V4.into(), PROXY_PORT);
    wait_for("the proxy to answer", PROXY_READY, || {
        Ok(probe::http_request(client, proxy, "/", &[]).is_ok())
    })
    .with_context(|| format!("agent log:\n{}", agent.logs()))?;
    let token = std::fs::read_to_string(&token_file)
        .context("the agent did not create the token file")?
        .trim()
        .to_owned();
    println!(
        "  ready after {:.1} s; first start created the cluster token {} in {} (mode 0600)\n",
        started.elapsed().as_secs_f64(),
        mask(&token),
        token_file.display()
    );
    interrupt::check()?;

    let mut all_good = true;
    let raw = SocketAddr::new(SERVER_V4.into(), SERVE_PORT);
    println!("$ curl http://{raw}/                        # Serve's own port, bypassing the proxy");
    let direct = probe::tcp_connect(client, raw, limits::DROPPED_CONNECT);
    let dropped = matches!(direct, Err(ConnectError::TimedOut(_)));
    all_good &= dropped;
    println!(
        "  {} {}\n",
        match &direct {
            Ok(()) => "connected".to_owned(),
            Err(e) => format!("{e}: the XDP filter dropped the SYN"),
        },
        verdict(dropped, "dropped")
    );
    interrupt::check()?;

    let without = probe::http_request(client, proxy, "/", &[])?;
    all_good &= show(
        &format!("curl http://{proxy}/                        # no token"),
        &without,
        401,
        &["www-authenticate"],
        &token,
    );

    let wrong = probe::http_request(
        client,
        proxy,
        "/",
        &[("Authorization", "Bearer not-the-token")],
    )?;
    all_good &= show(
        &format!("curl -H 'Authorization: Bearer not-the-token' http://{proxy}/"),
        &wrong,
        401,
        &["www-authenticate"],
        &token,
    );

    let auth = format!("Bearer {token}");
    let with = probe::http_request(client, proxy, "/", &[("Authorization", &auth)])?;
    all_good &= show(
        &format!(
            "curl -H 'Authorization: Bearer {}' http://{proxy}/",
            mask(&token)
        ),
        &with,
        200,
        &[],
        &token,
    );
    interrupt::check()?;

    let link = probe::http_request(client, proxy, &format!("/docs?token={token}"), &[])?;
    all_good &= show(
        &format!(
            "curl 'http://{proxy}/docs?token={}'      # the API docs link",
            mask(&token)
        ),
        &link,
        303,
        &["location", "set-cookie"],
        &token,
    );
    let cookie = format!("SERVE_TOKEN={token}");
    let followed = probe::http_request(client, proxy, "/docs", &[("Cookie", &cookie)])?;
    all_good &= show(
        &format!(
            "curl -b 'SERVE_TOKEN={}' http://{proxy}/docs  # what the browser does next",
            mask(&token)
        ),
        &followed,
        200,
        &[],
        &token,
    );

    let clean = !agent.logs().contains(&token);
    all_good &= clean;
    println!(
        "The agent's log does not contain the token {}",
        verdict(clean, "no token in the log")
    );
    println!(
        "  On a node, `serve-guard token show` prints the token, `serve-guard token rotate` puts a new\n  one first (`token prune` then drops the old), and `serve-guard status` lists one API docs link\n  per Serve route. A cluster shares one token file: docs/cluster.md.\n"
    );

    println!("Tearing down: stopping the agent, detaching the filter, deleting the namespaces.");
    agent.stop().context("stopping the agent")?;
    drop(agent);
    drop(topo);
    println!("Done.\n");
    Ok(all_good)
}

fn mask(token: &str) -> String {
    format!("{}…", &token[..TOKEN_SHOWN.min(token.len())])
}

fn verdict(good: bool, want: &str) -> String {
    if good {
        OK.to_owned()
    } else {
        format!("{WRONG} {want}")
    }
}

/// One request and its answer, like `curl -i` trimmed to what matters; true if the status is
/// `want`.
fn show(command: &str, resp: &HttpResponse, want: u16, headers: &[&str], token: &str) -> bool {
    println!("$ {command}");
    let good = resp.status == want;
    println!(
        "  HTTP {} {}",
        resp.status,
        verdict(good, &format!("HTTP {want}"))
    );
    for name in headers {
        if let Some(value) = resp.header(name) {
            println!("  {name}: {}", value.replace(token, &mask(token)));
        }
    }
    let body = resp.body_text();
    if let Some(first) = body.lines().find(|l| !l.trim().is_empty()) {
        println!("  {}", first.trim().replace(token, &mask(token)));
    }
    println!();
    good
}
