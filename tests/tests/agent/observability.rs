//! What an operator sees, against a real agent in public mode: the proxy's metrics after real
//! requests, `promtool check metrics` on a real scrape, OpenMetrics by content negotiation, the
//! refused-request and access log lines (never the token, no colour codes in a file), JSON logs;
//! the alert rules (`promtool check rules`, `promtool test rules`) and the Grafana dashboard,
//! whose every expression must name metrics a real scrape has.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::metrics::sample;
use serve_guard_tests::probe;
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, SERVER_V4, Topology};
use serve_guard_tests::{limits, wait_for};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PROXY_PORT: u16 = 8443;
const UPSTREAM_PORT: u16 = 8000;
const METRICS: &str = "127.0.0.1:9464";
const WRONG_TOKEN: &str = "not-the-token-0123456789abcdef";
/// Larger than the default `max_header_bytes` (32 KiB).
const OVERSIZED_HEADER: usize = 40 * 1024;
/// `[public.limits] max_connections` of the test's proxy: small, so the test can exceed it.
const MAX_CONNECTIONS: usize = 2;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

/// Runs promtool with `args` (and `stdin`); its combined output, failing unless it exits 0.
fn promtool(args: &[&str], dir: &Path, stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus; `cargo xtask setup`)")?;
    let mut input = child.stdin.take().context("promtool stdin")?;
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    Ok(text)
}

/// Metric names (`serve_guard_*`, `process_*`) used in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("serve_guard_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Whether a 0.0.4 scrape has a sample of `name`.
fn scraped(scrape: &str, name: &str) -> bool {
    scrape.lines().any(|l| {
        !l.starts_with('#')
            && l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    })
}

/// Whether the proxy closed `stream` (end of file or a reset) without sending anything.
fn closed_by_proxy(stream: &mut TcpStream) -> Result<bool> {
    stream.set_read_timeout(Some(limits::AGENT_READY))?;
    let mut byte = [0u8; 1];
    Ok(match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    })
}

/// A GET with `authorization` on an open keep-alive connection; its status, once the head of
/// the answer is read (the connection stays open for the next one).
fn keep_alive_get(stream: &mut TcpStream, path: &str, authorization: &str) -> Result<u16> {
    stream.set_read_timeout(Some(limits::AGENT_READY))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: serve\r\nAuthorization: {authorization}\r\n\r\n")
            .as_bytes(),
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(
            stream.read(&mut byte)? == 1,
            "the proxy closed the connection"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("no Content-Length in the answer")?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    head.get(9..12)
        .and_then(|code| code.parse().ok())
        .context("no status line")
}

struct Public {
    topo: Topology,
    agent: Agent,
    upstream: Option<HttpServer>,
    dir: tempfile::TempDir,
}

impl Public {
    fn start() -> Result<Public> {
        let topo = Topology::new()?;
        let upstream = HttpServer::start(&topo.server.ns, &[UPSTREAM_PORT])?;
        let dir = tempfile::tempdir()?;
        let mut public = toml::Table::new();
        public.insert("listen".into(), format!("0.0.0.0:{PROXY_PORT}").into());
        public.insert(
            "upstream".into(),
            format!("http://127.0.0.1:{UPSTREAM_PORT}").into(),
        );
        public.insert(
            "token_file".into(),
            dir.path().join("token").display().to_string().into(),
        );
        public.insert("access_log".into(), true.into());
        let mut limits = toml::Table::new();
        limits.insert("max_connections".into(), (MAX_CONNECTIONS as i64).into());
        public.insert("limits".into(), limits.into());
        let cfg = AgentConfig::public(&[IFACE])
            .cidrs(&Topology::vpc_cidrs())
            .serve_ports(&[UPSTREAM_PORT])
            .metrics_listen(METRICS)
            .set("public", public);
        let agent = Agent::start(&topo.server.ns, cfg)?;
        Ok(Public {
            topo,
            agent,
            upstream: Some(upstream),
            dir,
        })
    }

    fn token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("token"))?
            .trim()
            .to_owned())
    }

    /// GET `path` from the outside client through the proxy.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<u16> {
        let addr = SocketAddr::from((SERVER_V4, PROXY_PORT));
        Ok(probe::http_request(&self.topo.outside.ns, addr, path, headers)?.status)
    }

    /// `MAX_CONNECTIONS` connections from the outside client to the proxy, nothing sent.
    fn connect_all(&self) -> Result<Vec<TcpStream>> {
        let proxy = SocketAddr::from((SERVER_V4, PROXY_PORT));
        Ok(self.topo.outside.ns.run(|| {
            (0..MAX_CONNECTIONS)
                .map(|_| TcpStream::connect(proxy))
                .collect::<std::io::Result<Vec<_>>>()
        })??)
    }

    fn scrape(&self, accept: Option<&str>) -> Result<(String, String)> {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let r = probe::http_request(&self.topo.server.ns, METRICS.parse()?, "/metrics", &headers)?;
        ensure!(r.status == 200, "/metrics answered {}", r.status);
        let content_type = r.header("content-type").unwrap_or_default().to_owned();
        Ok((content_type, r.body_text()))
    }
}

#[test]
fn the_proxy_is_measured_logged_and_promtool_clean() -> Result<()> {
    let mut s = Public::start()?;
    let token = s.token()?;
    let bearer = format!("Bearer {token}");
    let wrong = format!("Bearer {WRONG_TOKEN}");
    ensure!(s.get("/secret-path", &[])? == 401, "no token");
    ensure!(
        s.get("/guess", &[("Authorization", &wrong)])? == 401,
        "wrong token"
    );
    ensure!(
        s.get("/echo", &[("Authorization", &bearer)])? == 200,
        "valid token"
    );
    // A head over the size limit: hyper answers 431 before the handler sees the request.
    let big = "a".repeat(OVERSIZED_HEADER);
    // (hyper closes with the rest of the head unread, so the client may see a reset instead of
    // the answer: the metric and the log below are what this checks.)
    if let Ok(status) = s.get("/big", &[("X-Big", &big)]) {
        ensure!(status == 431, "oversized head answered {status}");
    }
    s.upstream.take();
    ensure!(
        s.get("/echo", &[("Authorization", &bearer)])? == 502,
        "dead upstream"
    );

    // The proxy process sends its figures every second: wait for the last request's.
    wait_for(
        "the proxy's figures to reach the agent",
        limits::AGENT_READY,
        || {
            let scrape = s.scrape(None)?.1;
            Ok(sample(
                &scrape,
                r#"serve_guard_proxy_requests_total{listener="http",outcome="bad_gateway"}"#,
            ) == Some(1.0))
        },
    )?;
    let (content_type, scrape) = s.scrape(None)?;
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    for (series, want) in [
        (
            r#"serve_guard_proxy_requests_total{listener="http",outcome="missing_token"}"#,
            1.0,
        ),
        (
            r#"serve_guard_proxy_requests_total{listener="http",outcome="invalid_token"}"#,
            1.0,
        ),
        (
            r#"serve_guard_proxy_requests_total{listener="http",outcome="forwarded"}"#,
            1.0,
        ),
        (
            r#"serve_guard_proxy_requests_total{listener="http",outcome="bad_gateway"}"#,
            1.0,
        ),
        (
            r#"serve_guard_proxy_requests_total{listener="http",outcome="header_too_large"}"#,
            1.0,
        ),
        (
            r#"serve_guard_proxy_request_duration_seconds_count{listener="http"}"#,
            4.0,
        ),
        (
            r#"serve_guard_filter_attached{interface="eth0",hook="xdp",mode="driver"}"#,
            1.0,
        ),
        ("serve_guard_token_reload_errors_total", 0.0),
    ] {
        ensure!(
            sample(&scrape, series) == Some(want),
            "{series} != {want} in\n{scrape}"
        );
    }
    for name in [
        "serve_guard_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "serve_guard_proxy_open_connections",
        "serve_guard_proxy_rejected_connections_total",
    ] {
        ensure!(scraped(&scrape, name), "{name} missing in\n{scrape}");
    }
    let lint = promtool(&["check", "metrics"], Path::new("."), Some(&scrape))?;
    ensure!(lint.trim().is_empty(), "promtool check metrics: {lint}");

    let (content_type, openmetrics) = s.scrape(Some(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ))?;
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    ensure!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

    // Every expression of the dashboard and the alert rules names metrics this scrape has.
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        deploy().join("grafana/serve-guard.json"),
    )?)?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            exprs.push(target["expr"].as_str().context("expr")?.to_owned());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let rules = std::fs::read_to_string(deploy().join("prometheus/serve-guard.rules.yml"))?;
    // An `expr:` runs until the rule's next key (`for:` or `labels:`).
    let mut in_expr = false;
    for line in rules.lines().map(str::trim_start) {
        if line.starts_with("for:") || line.starts_with("labels:") {
            in_expr = false;
        }
        if line.starts_with("expr:") {
            in_expr = true;
        }
        if in_expr {
            exprs.push(line.to_owned());
        }
    }
    ensure!(exprs.len() > 15, "too few expressions found: {exprs:?}");
    for expr in &exprs {
        for name in metric_names(expr) {
            ensure!(
                scraped(&scrape, &name),
                "`{name}` (in `{expr}`) is not in a real scrape"
            );
        }
    }

    // Refused requests: client, listener, path, reason; never a token; no colour in a file.
    let logs = s.agent.logs();
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    ensure!(refused.len() == 3, "refused lines: {refused:?}\n{logs}");
    let outside = s.topo.outside.v4.to_string();
    ensure!(
        refused[0].contains(&format!("client={outside}:"))
            && refused[0].contains("listener=\"http\"")
            && refused[0].contains("path=\"/secret-path\"")
            && refused[0].contains("reason=\"missing_token\""),
        "{}",
        refused[0]
    );
    ensure!(
        refused[1].contains("reason=\"invalid_token\""),
        "{}",
        refused[1]
    );
    ensure!(
        refused[2].contains("reason=\"header_too_large\"") && refused[2].contains("status=431"),
        "{}",
        refused[2]
    );
    ensure!(
        logs.lines()
            .any(|l| l.contains("serve_guard::access") && l.contains("path=\"/echo\"")),
        "no access log line:\n{logs}"
    );
    ensure!(
        !logs.contains(WRONG_TOKEN) && !logs.contains(&token),
        "a token in the log"
    );
    ensure!(
        !logs.contains('\u{1b}'),
        "escape codes in a log file:\n{logs}"
    );

    // A full pool (issue 17's admission): a newcomer displaces the oldest connection that has
    // not completed a request head, and is refused only when nobody can be displaced. The one
    // outside client holds every place: its source's and its /24's limits are capped at
    // `max_connections`, and the source's is checked first, so that is the limit named.
    let limit = r#"limit="max_connections_per_source",family="ipv4",prefix_len="32""#;
    let displaced = format!("serve_guard_proxy_displaced_connections_total{{{limit}}}");
    let refused = format!("serve_guard_proxy_refused_connections_total{{{limit}}}");
    let rejected = r#"serve_guard_proxy_rejected_connections_total{listener="http"}"#;
    let open = r#"serve_guard_proxy_open_connections{listener="http"}"#;
    let before = s.scrape(None)?.1;
    let (displaced_before, refused_before, rejected_before) = (
        sample(&before, &displaced).context("no displaced series")?,
        sample(&before, &refused).context("no refused series")?,
        sample(&before, rejected).context("no rejected series")?,
    );

    // Two silent connections (fresh: no request head) fill the pool...
    let mut held = s.connect_all()?;
    wait_for("the held connections to count", limits::AGENT_READY, || {
        Ok(sample(&s.scrape(None)?.1, open) == Some(MAX_CONNECTIONS as f64))
    })?;
    // ...and a newcomer is served, in the place of the oldest of them, which is closed.
    ensure!(
        s.get("/echo", &[])? == 401,
        "a newcomer to a pool of fresh connections is not served"
    );
    ensure!(
        closed_by_proxy(&mut held[0])?,
        "the oldest fresh connection was not displaced"
    );
    wait_for("the displacement to count", limits::AGENT_READY, || {
        Ok(sample(&s.scrape(None)?.1, &displaced) == Some(displaced_before + 1.0))
    })?;
    ensure!(
        s.agent
            .logs()
            .lines()
            .any(|l| l.contains("fresh connection displaced")
                && l.contains("limit=\"max_connections_per_source\"")),
        "no log line for the displaced connection"
    );
    drop(held);
    wait_for("the pool to empty", limits::AGENT_READY, || {
        Ok(sample(&s.scrape(None)?.1, open) == Some(0.0))
    })?;

    // Two connections that showed the token have earned their places: a newcomer is refused
    // (closed at accept, unanswered), counted and logged. (Serve has been down since the 502
    // above: the proxy checks the token, then answers 502 itself, keeping the connection.)
    let mut earned = s.connect_all()?;
    for conn in &mut earned {
        ensure!(
            keep_alive_get(conn, "/echo", &bearer)? == 502,
            "an authenticated keep-alive request failed"
        );
    }
    wait_for(
        "a connection over the limit to be refused",
        limits::AGENT_READY,
        || {
            // Each try is one more connection over the limit, closed by the proxy at accept.
            // (It fails: the proxy closes it without an answer.)
            let _ = s.get("/echo", &[]);
            let scrape = s.scrape(None)?.1;
            Ok(
                sample(&scrape, &refused).is_some_and(|n| n > refused_before)
                    && sample(&scrape, rejected).is_some_and(|n| n > rejected_before),
            )
        },
    )?;
    ensure!(
        sample(&s.scrape(None)?.1, &displaced) == Some(displaced_before + 1.0),
        "a connection that showed the token was displaced"
    );
    ensure!(
        s.agent
            .logs()
            .lines()
            .any(|l| l.contains("connection refused")
                && l.contains("reason=\"max_connections_per_source\"")),
        "no log line for the refused connection"
    );
    for conn in &mut earned {
        ensure!(
            keep_alive_get(conn, "/echo", &bearer)? == 502,
            "a connection that showed the token lost its place"
        );
    }
    drop(earned);
    Ok(())
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let dir = deploy().join("prometheus");
    let check = promtool(&["check", "rules", "serve-guard.rules.yml"], &dir, None)?;
    ensure!(check.contains("SUCCESS: 7 rules found"), "{check}");
    let test = promtool(&["test", "rules", "serve-guard.rules.test.yml"], &dir, None)?;
    ensure!(test.contains("SUCCESS"), "{test}");
    Ok(())
}

#[test]
fn json_logs_are_one_object_a_line() -> Result<()> {
    let topo = Topology::new()?;
    let cfg = AgentConfig::private(&[IFACE])
        .cidrs(&Topology::vpc_cidrs())
        .metrics_listen(METRICS)
        .set("log_format", "json");
    let mut agent = Agent::start(&topo.server.ns, cfg)?;
    agent.stop()?;
    let logs = agent.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(!lines.is_empty(), "no log");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    ensure!(
        lines.iter().any(|l| l.contains("serve-guard running")),
        "{logs}"
    );
    Ok(())
}
