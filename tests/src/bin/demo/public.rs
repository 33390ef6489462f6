//! The demo's public-mode part: the token proxy in front of a Serve port, seen from a client
//! outside the VPC. The upstream is the harness's small HTTP server on port 8000 standing in
//! for Ray Serve, so the demo runs in seconds (the tests use the real Ray Serve).

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe::{self, HttpResponse};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, SERVER_V4, Topology};
use serve_guard_tests::{limits, wait_for};
use std::net::SocketAddr;
use std::time::Duration;

/// Ray Serve's HTTP port (protected by XDP) and the proxy's public port.
const SERVE_PORT: u16 = 8000;
const PROXY_PORT: u16 = 8443;
/// From the agent being ready to its proxy answering.
const PROXY_READY: Duration = Duration::from_secs(30);
/// Characters of the token shown; the rest is masked (a demo's output gets pasted around).
const TOKEN_SHOWN: usize = 6;

/// Runs the public-mode demo and prints what a user sees.
pub fn run() -> Result<()> {
    println!("== public mode: token proxy in front of Serve ==");
    let topo = Topology::new().context("creating the demo namespaces")?;
    let _upstream = HttpServer::start(&topo.server.ns, &[SERVE_PORT])
        .context("starting the stand-in Serve upstream")?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    let mut public = toml::Table::new();
    public.insert("listen".into(), format!("0.0.0.0:{PROXY_PORT}").into());
    public.insert(
        "upstream".into(),
        format!("http://127.0.0.1:{SERVE_PORT}").into(),
    );
    public.insert("token_file".into(), token_file.display().to_string().into());
    let cfg = AgentConfig::public(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .serve_ports(&[SERVE_PORT])
        .set("public", public);
    let agent = Agent::start(&topo.server.ns, cfg)?;
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
        "agent: public mode on {IFACE} of {}, proxy {proxy}, token {} (in {}, mode 0600)",
        topo.server.ns.name(),
        mask(&token),
        token_file.display()
    );
    println!(
        "client {} is outside the VPC list {:?}",
        topo.outside.v4,
        Topology::vpc_cidrs()
    );

    let raw = SocketAddr::new(SERVER_V4.into(), SERVE_PORT);
    let direct = probe::tcp_connect(client, raw, limits::DROPPED_CONNECT);
    println!("\n$ curl http://{raw}/            # straight to Serve");
    println!(
        "  -> {}",
        match &direct {
            Ok(()) => "connected (NOT expected)".to_owned(),
            Err(e) => format!("{e} (XDP dropped the SYN)"),
        }
    );
    ensure!(
        direct.is_err(),
        "the raw Serve port is reachable from outside the VPC"
    );

    let without = probe::http_request(client, proxy, "/", &[])?;
    show(
        &format!("curl http://{proxy}/            # no token"),
        &without,
        &["www-authenticate"],
    );
    ensure!(without.status == 401, "expected 401 without a token");

    let auth = format!("Bearer {token}");
    let with = probe::http_request(client, proxy, "/", &[("Authorization", &auth)])?;
    show(
        &format!(
            "curl -H 'Authorization: Bearer {}' http://{proxy}/",
            mask(&token)
        ),
        &with,
        &[],
    );
    ensure!(with.status == 200, "expected 200 with the token");

    let link = probe::http_request(client, proxy, &format!("/docs?token={token}"), &[])?;
    show(
        &format!(
            "curl 'http://{proxy}/docs?token={}'   # the API docs link",
            mask(&token)
        ),
        &link,
        &["location", "set-cookie"],
    );
    ensure!(link.status == 303, "expected 303 from the docs link");
    let cookie = format!("SERVE_TOKEN={token}");
    let followed = probe::http_request(client, proxy, "/docs", &[("Cookie", &cookie)])?;
    show(
        &format!(
            "curl -b 'SERVE_TOKEN={}' http://{proxy}/docs   # the browser follows",
            mask(&token)
        ),
        &followed,
        &[],
    );
    ensure!(followed.status == 200, "expected 200 on the cookie");

    ensure!(!agent.logs().contains(&token), "the agent logged the token");
    println!("\nthe agent's log does not contain the token");
    Ok(())
}

fn mask(token: &str) -> String {
    format!("{}…", &token[..TOKEN_SHOWN.min(token.len())])
}

/// One request and its answer, like `curl -i` trimmed to what matters.
fn show(command: &str, resp: &HttpResponse, headers: &[&str]) {
    println!("\n$ {command}");
    println!("  -> HTTP {}", resp.status);
    for name in headers {
        if let Some(value) = resp.header(name) {
            let value = value
                .split(';')
                .next()
                .filter(|_| *name == "set-cookie")
                .map(|first| {
                    let (n, v) = first.split_once('=').unwrap_or((first, ""));
                    value.replacen(first, &format!("{n}={}", mask(v)), 1)
                })
                .unwrap_or_else(|| value.to_owned());
            println!("     {name}: {value}");
        }
    }
    let body = resp.body_text();
    if !body.trim().is_empty() {
        println!(
            "     body: {}",
            body.trim().lines().next().unwrap_or_default()
        );
    }
}
