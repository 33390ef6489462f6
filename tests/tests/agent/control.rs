//! The control socket, `status`, `stats` and the metrics endpoint on the real agent: `curl
//! --unix-socket` speaks to it, the socket is root's only, a mode change is refused, the CLI shows
//! the agent's view, and without an agent the CLI falls back to the file and the pinned maps.

use super::cidr_support::*;
use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::metrics::sample;
use serve_guard_tests::probe;
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, Ip, Topology, VPC_V4, VPC_V6};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::Command;

/// Where the agent's metrics listen inside its namespace (the config's default).
const METRICS: &str = "127.0.0.1:9464";

struct Scene {
    agent: Agent,
    _http: HttpServer,
    topo: Topology,
}

impl Scene {
    fn new() -> Result<Scene> {
        let topo = Topology::new()?;
        let http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP])?;
        let config = AgentConfig::private(&[IFACE])
            .serve_ports(&[SERVE_HTTP])
            .cidrs(&[VPC_V4, VPC_V6])
            .metrics_listen(METRICS);
        let agent = Agent::start(&topo.server.ns, config)?;
        Ok(Scene {
            agent,
            _http: http,
            topo,
        })
    }

    /// `curl --unix-socket` against the control socket: (HTTP status, JSON body).
    fn curl(
        &self,
        method: &str,
        route: &str,
        body: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut cmd = Command::new("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--unix-socket",
        ])
        .arg(&self.agent.files().control_socket)
        .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let out = cmd.arg(format!("http://serve-guard{route}")).output()?;
        ensure!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let (json, code) = text.rsplit_once('\n').context("no status line from curl")?;
        Ok((
            code.parse()?,
            serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?,
        ))
    }

    fn metrics(&self) -> Result<String> {
        let r = probe::http_request(&self.topo.server.ns, METRICS.parse()?, "/metrics", &[])?;
        ensure!(r.status == 200, "/metrics answered {}", r.status);
        Ok(r.body_text())
    }
}

#[test]
fn curl_speaks_to_the_control_socket_which_is_root_only() -> Result<()> {
    let s = Scene::new()?;
    let socket = &s.agent.files().control_socket;
    let meta = std::fs::metadata(socket)?;
    ensure!(
        meta.permissions().mode() & 0o777 == 0o600,
        "socket mode {:o}",
        meta.permissions().mode()
    );
    ensure!(meta.uid() == 0, "socket owned by uid {}", meta.uid());
    let dir_mode = std::fs::metadata(socket.parent().unwrap())?
        .permissions()
        .mode()
        & 0o777;
    ensure!(dir_mode == 0o700, "socket folder mode {dir_mode:o}");

    let (code, status) = s.curl("GET", "/v1/status", None)?;
    ensure!(code == 200, "status answered {code}");
    ensure!(status["mode"] == "private", "{status}");
    ensure!(status["cidrs"]["revision"] == 1, "{status}");
    ensure!(
        status["filter"]["interfaces"][0]["name"] == IFACE,
        "{status}"
    );
    ensure!(status["agent"]["pid"] == s.agent.pid().unwrap(), "{status}");

    let (code, out) = s.curl(
        "POST",
        "/v1/cidrs/add",
        Some(r#"{"cidrs":["10.40.0.0/16"],"if_revision":1}"#),
    )?;
    ensure!(
        code == 200 && out["revision"] == 2 && out["ipv4"] == 2,
        "add answered {code}: {out}"
    );
    ensure!(
        attached_cidrs(&s.topo.server.ns, IFACE)?.contains("10.40.0.0/16"),
        "not in the maps"
    );

    let (code, out) = s.curl(
        "POST",
        "/v1/cidrs/add",
        Some(r#"{"cidrs":["10.41.0.0/16"],"if_revision":1}"#),
    )?;
    ensure!(code == 409, "a stale revision answered {code}: {out}");
    let (code, out) = s.curl(
        "POST",
        "/v1/cidrs/add",
        Some(r#"{"cidrs":["10.41.0.0/99"]}"#),
    )?;
    ensure!(
        code == 400 && out["error"].as_str().unwrap_or("").contains("argument 1"),
        "{code}: {out}"
    );
    let (code, out) = s.curl("PUT", "/v1/mode", Some(r#"{"mode":"public"}"#))?;
    ensure!(code == 409, "a mode change answered {code}: {out}");
    ensure!(
        out["error"]
            .as_str()
            .unwrap_or("")
            .contains("stop the agent"),
        "{out}"
    );
    let (code, _) = s.curl("POST", "/v1/token/reload", None)?;
    ensure!(code == 409, "token reload in private mode answered {code}");
    let (code, _) = s.curl("GET", "/v1/nothing", None)?;
    ensure!(code == 404, "an unknown route answered {code}");
    Ok(())
}

#[test]
fn status_stats_and_metrics_show_the_agent_then_the_pins() -> Result<()> {
    let mut s = Scene::new()?;
    ensure!(
        probe::http_get(&s.topo.inside.ns, s.topo.server.sock(Ip::V4, SERVE_HTTP))? == 200,
        "the inside client is not served"
    );
    cli_ok(&s.agent, &["cidr", "add", "10.50.0.0/16"])?;

    let status = cli_ok(&s.agent, &["status"])?;
    for needle in [
        "mode:        private",
        "running (pid",
        &format!("{IFACE} (driver XDP)"),
        "ports:       strict (Serve): 8000; open: 22, 68, 546; every other port guarded",
        "revision 2: 2 IPv4 and 1 IPv6",
        "audit:       off",
        "pinned:      yes",
    ] {
        ensure!(
            status.contains(needle),
            "status lacks {needle:?}:\n{status}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&cli_ok(&s.agent, &["status", "--json"])?)?;
    ensure!(
        json["filter"]["ports"] == serde_json::json!([SERVE_HTTP]),
        "{json}"
    );
    ensure!(json["filter"]["guard"] == "node", "{json}");
    ensure!(
        json["filter"]["port_classes"][0]
            == serde_json::json!({"from": 1, "to": 21, "class": "guarded"}),
        "{json}"
    );
    ensure!(json["agent"]["uptime_seconds"].is_u64(), "{json}");

    let stats: serde_json::Value = serde_json::from_str(&cli_ok(&s.agent, &["stats", "--json"])?)?;
    let allowed_v4 = stats["counters"]
        .as_array()
        .context("no counters")?
        .iter()
        .find(|c| c["reason"] == "pass_allowed" && c["family"] == "ipv4")
        .and_then(|c| c["packets"].as_u64())
        .context("no pass_allowed/ipv4 counter")?;
    ensure!(allowed_v4 > 0, "the inside request was not counted");
    ensure!(
        cli_ok(&s.agent, &["stats"])?.contains("pass_allowed"),
        "stats table"
    );

    let scrape = s.metrics()?;
    ensure!(
        sample(&scrape, "serve_guard_cidr_revision") == Some(2.0),
        "{scrape}"
    );
    ensure!(
        sample(&scrape, r#"serve_guard_cidrs{family="ipv4"}"#) == Some(2.0),
        "{scrape}"
    );
    ensure!(
        sample(&scrape, "serve_guard_ready") == Some(1.0),
        "{scrape}"
    );
    ensure!(
        sample(&scrape, "serve_guard_cidr_apply_errors_total") == Some(0.0),
        "{scrape}"
    );
    ensure!(
        sample(&scrape, "serve_guard_cidr_last_apply_timestamp_seconds").is_some_and(|t| t > 0.0),
        "{scrape}"
    );
    let scraped = sample(
        &scrape,
        r#"serve_guard_packets_total{reason="pass_allowed",family="ipv4"}"#,
    )
    .context("no pass_allowed/ipv4 series")?;
    ensure!(
        scraped >= allowed_v4 as f64,
        "metrics {scraped} < stats {allowed_v4}"
    );
    let ready = probe::http_request(&s.topo.server.ns, METRICS.parse()?, "/ready", &[])?;
    ensure!(ready.status == 200, "/ready answered {}", ready.status);

    // No agent: the pinned filter keeps counting; the CLI reads the pins and edits the file.
    s.agent.kill9()?;
    let stats = cli_ok(&s.agent, &["stats"])?;
    ensure!(stats.contains("pinned map"), "{stats}");
    // `status` still reports, and says by its exit code (3) that no agent runs.
    let out = s.agent.cli(&["status"])?;
    ensure!(
        out.status.code() == Some(3),
        "status without an agent: {:?}",
        out.status
    );
    let status = String::from_utf8(out.stdout)?;
    ensure!(
        status.contains("not running") && status.contains("pinned:      yes"),
        "{status}"
    );
    let out = cli_ok(&s.agent, &["cidr", "add", "10.60.0.0/16"])?;
    ensure!(
        out.contains("revision 3") && out.contains("applies at the next start"),
        "{out}"
    );
    ensure!(
        !attached_cidrs(&s.topo.server.ns, IFACE)?.contains("10.60.0.0/16"),
        "maps changed without an agent"
    );
    s.agent.restart()?;
    ensure!(
        attached_cidrs(&s.topo.server.ns, IFACE)?.contains("10.60.0.0/16"),
        "the restart did not load the offline change"
    );
    ensure!(
        revision(&s.agent)? == 3,
        "the revision changed across the restart"
    );
    Ok(())
}
