//! Public mode end to end (issue 3, "Tests" 1-9): a real Ray Serve app behind the agent's token
//! proxy, XDP on the server's interface, clients in a namespace outside the VPC list, a real
//! headless Chromium and a real gRPC server.
//!
//! Ray takes a long while to start on two cores, so the whole file shares one Ray instance: a
//! single `#[test]` sets up the topology, Ray, the gRPC server and the agent, then runs the
//! scenarios in order, each isolated by `catch_unwind`, and prints `N passed, N failed`. Every
//! resource is owned by a Drop guard (agent, Ray's process group, chromedriver's process group,
//! namespaces, temp dirs), so a failing scenario still cleans up.

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use serve_guard_common::{Family, Reason};
use serve_guard_proxy::test_util::{TestCert, self_signed_cert};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::browser::Browser;
use serve_guard_tests::netns::Netns;
use serve_guard_tests::probe::{self, HttpResponse};
use serve_guard_tests::ray::{self, GrpcHealthServer, RayServe};
use serve_guard_tests::topology::{IFACE, SERVER_V4, Topology};
use serve_guard_tests::{limits, wait_for};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The proxy's public port (the config default).
const PROXY_PORT: u16 = 8443;
/// The gRPC proxy's port.
const GRPC_PROXY_PORT: u16 = 9443;
/// The docs link's cookie.
const COOKIE: &str = "SERVE_TOKEN";
/// Its name over HTTPS (the `__Host-` prefix).
const SECURE_COOKIE: &str = "__Host-SERVE_TOKEN";
/// `cookie_max_age` default: 7 days.
const DEFAULT_COOKIE_MAX_AGE_S: u64 = 7 * 24 * 3600;
/// The challenge for a request without a token (RFC 6750 section 3).
const CHALLENGE: &str = "Bearer realm=\"serve-guard\"";
/// A token-shaped string that is not the token (43 base64url characters).
const WRONG_TOKEN: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// The token: 32 random bytes, base64url without padding.
const TOKEN_LEN: usize = 43;
/// From the agent's start to its proxy answering.
const PROXY_READY: Duration = Duration::from_secs(30);
/// One request through the proxy to Ray Serve (slow on 2 busy cores).
const REQUEST: Duration = Duration::from_secs(30);
/// Waiting for one chunk of a stream or one WebSocket message.
const CHUNK: Duration = Duration::from_secs(30);
/// Swagger UI rendering the app's operations in Chromium.
const SWAGGER_RENDER: Duration = Duration::from_secs(60);
/// Where the browser scenario keeps its screenshot (gitignored).
const SCREENSHOT: &str = "artifacts/public_mode_swagger.png";
/// Server name in the test certificate (besides the server's IP).
const TLS_NAME: &str = "serve-guard.test";
/// Paths in the echo app's OpenAPI document (tests/python/serve_app.py).
const APP_PATHS: [&str; 4] = ["/", "/stream/{gate}", "/release/{gate}", "/ticks"];
/// Its operations: GET and POST /, and one for each other path.
const APP_OPERATIONS: usize = 5;

/// Everything the scenarios share. Field order is drop order: agent first, then the servers,
/// then the namespaces.
struct Suite {
    agent: Option<Agent>,
    /// Logs of agents already stopped (scenario 9 reads them all).
    old_agent_logs: Vec<String>,
    grpc: GrpcHealthServer,
    ray: RayServe,
    topo: Topology,
    /// Token file, TLS material, the wrong-token file for the gRPC client.
    dir: TempDir,
    /// The certificate the TLS clients trust, once scenario 7 has made it.
    tls_root: Option<CertificateDer<'static>>,
    /// Every token the suite has seen (scenario 9 looks for each in the logs).
    tokens_seen: Vec<String>,
}

impl Suite {
    fn setup() -> Result<Suite> {
        let topo = Topology::new().context("creating the namespaces")?;
        let dir = tempfile::Builder::new()
            .prefix("sg-public-")
            .tempdir()
            .context("temp dir")?;
        eprintln!(
            "starting Ray Serve in {} (takes a while)...",
            topo.server.ns.name()
        );
        let ray = RayServe::start(&topo.server.ns, Ipv4Addr::UNSPECIFIED.into())?;
        let grpc = GrpcHealthServer::start(
            &topo.server.ns,
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ray::SERVE_GRPC_PORT),
        )?;
        // Without the filter, the raw Serve port is open to the outside client: what scenario 6
        // sees closed is closed by XDP, not by a missing listener.
        probe::tcp_connect(&topo.outside.ns, raw_serve_addr(), limits::PROBE_IO)
            .context("the raw Serve port must be reachable before the agent runs")?;
        let mut suite = Suite {
            agent: None,
            old_agent_logs: Vec::new(),
            grpc,
            ray,
            topo,
            dir,
            tls_root: None,
            tokens_seen: Vec::new(),
        };
        let cfg = suite.agent_config(None);
        suite.start_agent(cfg, false)?;
        Ok(suite)
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Public mode on the server's interface; the outside client is not in the VPC list.
    fn agent_config(&self, tls: Option<&TestCert>) -> AgentConfig {
        let mut public = toml::Table::new();
        public.insert("listen".into(), format!("0.0.0.0:{PROXY_PORT}").into());
        public.insert("upstream".into(), self.ray.upstream_url().into());
        // The URL users are given: what `serve-guard status` builds the docs links from.
        let scheme = if tls.is_some() { "https" } else { "http" };
        public.insert(
            "external_url".into(),
            format!("{scheme}://{}", proxy_addr()).into(),
        );
        public.insert(
            "token_file".into(),
            self.token_file().display().to_string().into(),
        );
        match tls {
            Some(tls) => {
                public.insert("tls_cert".into(), tls.cert.display().to_string().into());
                public.insert("tls_key".into(), tls.key.display().to_string().into());
            }
            None => {
                public.insert(
                    "grpc_listen".into(),
                    format!("0.0.0.0:{GRPC_PROXY_PORT}").into(),
                );
                public.insert("grpc_upstream".into(), self.grpc.upstream_url().into());
            }
        }
        AgentConfig::public(&[IFACE])
            .cidrs(&Topology::vpc_cidrs())
            .serve_ports(&[ray::SERVE_HTTP_PORT, ray::SERVE_GRPC_PORT])
            .set("public", public)
    }

    /// Starts the agent and waits until its proxy answers the outside client.
    fn start_agent(&mut self, cfg: AgentConfig, tls: bool) -> Result<()> {
        let agent = Agent::start(&self.topo.server.ns, cfg)?;
        self.agent = Some(agent);
        let ns = self.topo.outside.ns.clone();
        let probe_tls = tls.then(|| self.tls_client_config(&[b"http/1.1"]));
        let probe_tls = probe_tls.transpose()?;
        wait_for("the proxy to answer", PROXY_READY, || {
            let got = match &probe_tls {
                None => probe::http_request(&ns, proxy_addr(), "/-/healthz", &[]).ok(),
                Some(cfg) => {
                    let cfg = cfg.clone();
                    in_ns(&ns, move || async move {
                        tls_send(cfg, get("/-/healthz", &[])?).await
                    })
                    .ok()
                }
            };
            Ok(got.is_some_and(|r| r.status == 200))
        })
        .with_context(|| format!("agent log:\n{}", self.agent().logs()))?;
        let token = self.token()?;
        if !self.tokens_seen.contains(&token) {
            self.tokens_seen.push(token);
        }
        Ok(())
    }

    fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .expect("the agent runs during the scenarios")
    }

    /// The primary token (the file's first line), from the file the agent created (0600) at
    /// first start.
    fn token(&self) -> Result<String> {
        let text = std::fs::read_to_string(self.token_file()).context("reading the token file")?;
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    }

    fn outside(&self) -> &Netns {
        &self.topo.outside.ns
    }

    /// GET `path` (sent exactly as given) from the outside client to the proxy.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        Ok(probe::http_request(
            self.outside(),
            proxy_addr(),
            path,
            headers,
        )?)
    }

    fn tls_client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
        let root = self.tls_root.clone().context("no test certificate yet")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root)?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

fn proxy_addr() -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), PROXY_PORT)
}

fn grpc_proxy_addr() -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), GRPC_PROXY_PORT)
}

fn raw_serve_addr() -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), ray::SERVE_HTTP_PORT)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn cookie(token: &str) -> String {
    format!("{COOKIE}={token}")
}

fn secure_cookie(token: &str) -> String {
    format!("{SECURE_COOKIE}={token}")
}

/// The echo endpoint's report of what reached the app.
fn echo_of(resp: &HttpResponse) -> Result<Value> {
    ensure!(
        resp.status == 200,
        "expected 200 from the app, got {}: {}",
        resp.status,
        resp.body_text()
    );
    serde_json::from_slice(&resp.body).context("the echo endpoint's JSON")
}

/// Header values named `name` that reached the app.
fn echoed_headers<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str())
        .collect()
}

/// The token must be nowhere in what the app saw: not in a header, cookie, path or query.
fn assert_token_absent(echo: &Value, token: &str) -> Result<()> {
    let seen = echo.to_string();
    ensure!(
        !seen.contains(token),
        "the token reached the upstream app (echo: {})",
        seen.replace(token, "<TOKEN>")
    );
    ensure!(
        echo["cookies"].get(COOKIE).is_none(),
        "the {COOKIE} cookie reached the upstream app"
    );
    Ok(())
}

fn expect_401(resp: &HttpResponse, invalid: bool, what: &str) -> Result<()> {
    ensure!(
        resp.status == 401,
        "{what}: expected 401, got {}",
        resp.status
    );
    let challenge = resp
        .header("www-authenticate")
        .with_context(|| format!("{what}: 401 without WWW-Authenticate"))?;
    ensure!(
        challenge.starts_with(CHALLENGE),
        "{what}: challenge {challenge:?} does not start with {CHALLENGE:?}"
    );
    ensure!(
        challenge.contains("error=\"invalid_token\"") == invalid,
        "{what}: challenge {challenge:?} (invalid_token expected: {invalid})"
    );
    ensure!(
        resp.header("set-cookie").is_none(),
        "{what}: a 401 must not set a cookie"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. No token 401; wrong token 401 invalid_token; header 200; cookie 200; nothing reaches the app.
// ---------------------------------------------------------------------------------------------
fn token_checks(s: &mut Suite) -> Result<()> {
    let token = s.token()?;
    ensure!(
        token.len() == TOKEN_LEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "the token is not 32 bytes of base64url without padding (length {})",
        token.len()
    );
    let mode = std::fs::metadata(s.token_file())?.permissions();
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o600,
        "token file mode {:o}",
        std::os::unix::fs::PermissionsExt::mode(&mode)
    );

    expect_401(&s.get("/echo/", &[])?, false, "no token")?;
    expect_401(
        &s.get("/echo/", &[("Authorization", &bearer(WRONG_TOKEN))])?,
        true,
        "wrong header token",
    )?;
    expect_401(
        &s.get("/echo/", &[("Cookie", &cookie(WRONG_TOKEN))])?,
        true,
        "wrong cookie",
    )?;
    // A token in the query is the docs link (any GET path): a wrong one is refused, no cookie.
    expect_401(
        &s.get(&format!("/echo/?x=1&token={WRONG_TOKEN}"), &[])?,
        true,
        "wrong docs-link token",
    )?;

    // Header, any case of the scheme.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let resp = s.get(
            "/echo/?q=1",
            &[("Authorization", &format!("{scheme} {token}"))],
        )?;
        let echo = echo_of(&resp).with_context(|| format!("scheme {scheme}"))?;
        assert_token_absent(&echo, &token)?;
        ensure!(
            echoed_headers(&echo, "authorization").is_empty(),
            "the serve token's Authorization header was forwarded"
        );
        ensure!(echo["query"] == "q=1", "query changed: {}", echo["query"]);
    }

    // Cookie: only SERVE_TOKEN is removed; the app's own cookies pass.
    let resp = s.get(
        "/echo/",
        &[("Cookie", &format!("app=1; {}; theme=dark", cookie(&token)))],
    )?;
    let echo = echo_of(&resp)?;
    assert_token_absent(&echo, &token)?;
    ensure!(
        echo["cookies"] == serde_json::json!({"app": "1", "theme": "dark"}),
        "the app's own cookies must pass untouched: {}",
        echo["cookies"]
    );

    // An Authorization header that is not the serve token belongs to the app: it passes.
    let resp = s.get(
        "/echo/",
        &[
            ("Cookie", &cookie(&token)),
            ("Authorization", "Basic YXBwOnNlY3JldA=="),
        ],
    )?;
    let echo = echo_of(&resp)?;
    assert_token_absent(&echo, &token)?;
    ensure!(
        echoed_headers(&echo, "authorization") == ["Basic YXBwOnNlY3JldA=="],
        "the app's own Authorization header must pass: {:?}",
        echoed_headers(&echo, "authorization")
    );

    // Forwarding headers: the outside client's address, plain HTTP, the host it asked for.
    let xff = echoed_headers(&echo, "x-forwarded-for");
    ensure!(
        xff.last()
            .is_some_and(|v| v.contains(&s.topo.outside.v4.to_string())),
        "X-Forwarded-For {xff:?} lacks the client {}",
        s.topo.outside.v4
    );
    ensure!(
        echoed_headers(&echo, "x-forwarded-proto") == ["http"],
        "X-Forwarded-Proto {:?}",
        echoed_headers(&echo, "x-forwarded-proto")
    );
    ensure!(
        echoed_headers(&echo, "x-forwarded-host") == [proxy_addr().to_string().as_str()],
        "X-Forwarded-Host {:?}",
        echoed_headers(&echo, "x-forwarded-host")
    );
    // Hop-by-hop headers stay on the client's hop.
    let resp = s.get(
        "/echo/",
        &[
            ("Authorization", &bearer(&token)),
            ("Connection", "close, x-hop"),
            ("X-Hop", "1"),
        ],
    )?;
    let echo = echo_of(&resp)?;
    ensure!(
        echoed_headers(&echo, "x-hop").is_empty(),
        "a header named in Connection was forwarded"
    );

    // The configured unauthenticated path needs no token.
    let health = s.get("/-/healthz", &[])?;
    ensure!(
        health.status == 200,
        "/-/healthz without token: {}",
        health.status
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. The docs link: 303 + cookie + Location; then the docs page and openapi.json on the cookie.
// ---------------------------------------------------------------------------------------------
fn docs_link(s: &mut Suite) -> Result<()> {
    let token = s.token()?;
    let resp = s.get(&format!("/echo/docs?token={token}"), &[])?;
    ensure!(
        resp.status == 303,
        "docs link: expected 303, got {}",
        resp.status
    );
    let location = resp.header("location").context("303 without Location")?;
    ensure!(location == "/echo/docs", "Location {location:?}");
    let set_cookie = resp
        .header("set-cookie")
        .context("303 without Set-Cookie")?;
    check_cookie(set_cookie, &token, false)?;

    // Other query parameters are kept, in order; only token= goes.
    let resp = s.get(&format!("/echo/docs?a=1&token={token}&b=two"), &[])?;
    ensure!(resp.status == 303, "docs link with params: {}", resp.status);
    ensure!(
        resp.header("location") == Some("/echo/docs?a=1&b=two"),
        "Location {:?}",
        resp.header("location")
    );

    // A wrong token: 401 and no cookie.
    let bad = s.get(&format!("/echo/docs?token={WRONG_TOKEN}"), &[])?;
    expect_401(&bad, true, "docs link with a wrong token")?;

    // The cookie alone opens the docs page and the OpenAPI document it loads.
    let page = s.get("/echo/docs", &[("Cookie", &cookie(&token))])?;
    ensure!(
        page.status == 200,
        "docs page on the cookie: {}",
        page.status
    );
    let html = page.body_text();
    ensure!(
        html.contains("swagger-ui") && html.contains("/echo/openapi.json"),
        "the docs page is not Swagger UI loading /echo/openapi.json"
    );
    let spec = s.get("/echo/openapi.json", &[("Cookie", &cookie(&token))])?;
    ensure!(
        spec.status == 200,
        "openapi.json on the cookie: {}",
        spec.status
    );
    let spec: Value = serde_json::from_slice(&spec.body).context("openapi.json")?;
    for op in APP_PATHS {
        ensure!(spec["paths"].get(op).is_some(), "openapi.json lacks {op}");
    }
    // And without it, neither.
    expect_401(
        &s.get("/echo/openapi.json", &[])?,
        false,
        "openapi.json without cookie",
    )?;

    open_redirects(s, &token)
}

/// Cookie attributes of the docs link: HttpOnly, SameSite=Lax, Path=/, Max-Age; on TLS Secure
/// and the `__Host-` name.
fn check_cookie(set_cookie: &str, token: &str, secure: bool) -> Result<()> {
    let mut parts = set_cookie.split(';').map(str::trim);
    let (name, pair) = if secure {
        (SECURE_COOKIE, secure_cookie(token))
    } else {
        (COOKIE, cookie(token))
    };
    ensure!(
        parts.next() == Some(pair.as_str()),
        "Set-Cookie does not start with {name}=<token>"
    );
    let attrs: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    for want in ["path=/", "httponly", "samesite=lax"] {
        ensure!(
            attrs.iter().any(|a| a == want),
            "Set-Cookie lacks {want}: {attrs:?}"
        );
    }
    ensure!(
        attrs.contains(&format!("max-age={DEFAULT_COOKIE_MAX_AGE_S}")),
        "Set-Cookie Max-Age is not the 7-day default: {attrs:?}"
    );
    ensure!(
        attrs.iter().any(|a| a == "secure") == secure,
        "Set-Cookie Secure should be {secure}: {attrs:?}"
    );
    ensure!(
        !attrs.iter().any(|a| a.starts_with("domain")),
        "the cookie must stay host-only: {attrs:?}"
    );
    Ok(())
}

/// Request targets that try to turn the docs link's redirect into an open redirect. Each must be
/// refused, or redirect to a place on this same origin.
fn open_redirects(s: &Suite, token: &str) -> Result<()> {
    let attempts = [
        "//evil.example/echo/docs",
        "///evil.example/echo/docs",
        "/\\evil.example/echo/docs",
        "/\\\\evil.example/",
        "/%2F%2Fevil.example/",
        "/%2f%2fevil.example/",
        "/%5C%5Cevil.example/",
        "/%5Cevil.example/",
        "/%252F%252Fevil.example/",
        "/./%2F/evil.example/",
        "/..//evil.example/",
        "/echo/..//evil.example/",
        "/%09/evil.example/",
        "http://evil.example/echo/docs",
        "https:evil.example/",
    ];
    let origin = url::Url::parse(&format!("http://{}/", proxy_addr()))?;
    for target in attempts {
        let sep = if target.contains('?') { '&' } else { '?' };
        let resp = s.get(&format!("{target}{sep}token={token}"), &[])?;
        if resp.status != 303 {
            ensure!(
                resp.status >= 400,
                "{target:?}: expected a 303 to this origin or an error, got {}",
                resp.status
            );
            continue;
        }
        let location = resp.header("location").context("303 without Location")?;
        ensure!(
            location.starts_with('/'),
            "{target:?}: Location {location:?} is not a relative path"
        );
        // Resolve it as a browser would (WHATWG URL: backslashes count as slashes).
        let resolved = origin.join(location)?;
        ensure!(
            resolved.origin() == origin.origin(),
            "{target:?}: Location {location:?} leaves the origin (resolves to {resolved})"
        );
        ensure!(
            !location.contains("token="),
            "{target:?}: Location keeps the token"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `serve-guard status`: one API docs link per Serve route, read from the real `/-/routes`.
// ---------------------------------------------------------------------------------------------
fn status_links(s: &mut Suite) -> Result<()> {
    let token = s.token()?;
    let out = s.agent().cli(&["status", "--json"])?;
    ensure!(
        out.status.success(),
        "status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).context("status --json output")?;
    let links = find_key(&status, "docs_links")
        .and_then(Value::as_array)
        .context("status --json has no docs_links")?;
    let want = format!("http://{}/echo/docs?token={token}", proxy_addr());
    let echo = links
        .iter()
        .find(|l| l["route"] == ray::ROUTE)
        .with_context(|| {
            format!(
                "no docs link for {} among {} links",
                ray::ROUTE,
                links.len()
            )
        })?;
    ensure!(
        echo["url"] == want.as_str(),
        "the {} docs link is not <external_url>{}/docs?token=<token>",
        ray::ROUTE,
        ray::ROUTE
    );
    // The link works as given: its path and query through the proxy give the 303 and cookie.
    let url = url::Url::parse(&want)?;
    let resp = s.get(
        &format!("{}?{}", url.path(), url.query().unwrap_or("")),
        &[],
    )?;
    ensure!(
        resp.status == 303,
        "the status docs link answered {}",
        resp.status
    );
    check_cookie(
        resp.header("set-cookie").context("no Set-Cookie")?,
        &token,
        false,
    )
}

/// The first value under `key` anywhere in `v` (the JSON layout of `status` is the CLI's).
fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|child| find_key(child, key))),
        Value::Array(items) => items.iter().find_map(|child| find_key(child, key)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A real browser: Chromium opens the docs link and ends on the rendered Swagger UI.
// ---------------------------------------------------------------------------------------------
fn browser(s: &mut Suite) -> Result<()> {
    let token = s.token()?;
    let browser = Browser::start(s.outside())?;
    let link = format!("http://{}/echo/docs?token={token}", proxy_addr());
    let result = (|| -> Result<()> {
        browser.goto(&link)?;
        // Swagger UI renders one .opblock per operation once openapi.json has loaded.
        browser.wait_for_css(".opblock", APP_OPERATIONS, SWAGGER_RENDER)?;
        let url = browser.current_url()?;
        ensure!(
            url == format!("http://{}/echo/docs", proxy_addr()),
            "the browser ended on {:?}, not the docs page without the token",
            url.replace(&token, "<TOKEN>")
        );
        let paths = browser.texts(".opblock-summary-path")?;
        for op in ["/stream/{gate}", "/release/{gate}", "/ticks"] {
            ensure!(
                paths
                    .iter()
                    .any(|p| p.trim().trim_start_matches("/echo") == op || p.trim().ends_with(op)),
                "Swagger UI does not show {op}: {paths:?}"
            );
        }
        // openapi.json was fetched without the token in its URL and succeeded: the cookie alone.
        let resources = browser.resources()?;
        let spec = resources
            .iter()
            .find(|(name, _)| name.ends_with("/echo/openapi.json"))
            .with_context(|| format!("no openapi.json request in {resources:?}"))?;
        ensure!(
            spec.1 == 200,
            "openapi.json answered {} in the browser",
            spec.1
        );
        ensure!(
            resources.iter().all(|(name, _)| !name.contains(&token)),
            "a subresource URL carries the token"
        );
        let cookies = browser.cookies()?;
        let jar = cookies
            .iter()
            .find(|c| c["name"] == COOKIE)
            .with_context(|| format!("no {COOKIE} cookie in the browser: {cookies:?}"))?;
        ensure!(
            jar["value"] == token.as_str(),
            "the cookie holds another value"
        );
        ensure!(jar["httpOnly"] == true, "the cookie is not HttpOnly");
        ensure!(jar["sameSite"] == "Lax", "SameSite {}", jar["sameSite"]);
        let visible = browser.execute("return document.cookie;", serde_json::json!([]))?;
        ensure!(
            !visible.as_str().unwrap_or_default().contains(COOKIE),
            "page scripts can read the HttpOnly cookie"
        );
        Ok(())
    })();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCREENSHOT);
    let saved = browser.screenshot(&shot);
    match (&result, saved) {
        (_, Ok(())) => eprintln!("    screenshot: {}", shot.display()),
        (_, Err(e)) => eprintln!("    no screenshot: {e}"),
    }
    if result.is_err() {
        eprintln!("---- chromedriver log (tail) ----");
        let log = browser.driver_log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{}", line.replace(&token, "<TOKEN>"));
        }
    }
    result
}

// ---------------------------------------------------------------------------------------------
// 4. Streaming responses and request bodies without buffering; WebSocket echo.
// ---------------------------------------------------------------------------------------------
fn streaming(s: &mut Suite) -> Result<()> {
    let token = s.token()?;
    let gate = format!("g{}", std::process::id());
    in_ns(s.outside(), move || async move {
        let auth = bearer(&token);
        // The app sends chunk N+1 only after we release it, so receiving chunk 0 while the
        // response is still open proves the proxy forwards as it receives (a buffering proxy
        // would hold chunk 0 until the end, which never comes without the release).
        let resp = h1_send(get(
            &format!("/echo/stream/{gate}"),
            &[("authorization", &auth)],
        )?)
        .await?;
        ensure!(resp.status() == StatusCode::OK, "stream: {}", resp.status());
        let mut body = resp.into_body();
        let mut got = String::new();
        for i in 0..3 {
            read_until(&mut body, &mut got, &format!("chunk {i}\n")).await?;
            ensure!(!got.contains("done"), "the stream ended early: {got:?}");
            if i < 2 {
                let rel = h1_send(post(
                    &format!("/echo/release/{gate}"),
                    &[("authorization", &auth)],
                    Bytes::new(),
                )?)
                .await?;
                ensure!(rel.status() == StatusCode::OK, "release: {}", rel.status());
            }
        }
        read_until(&mut body, &mut got, "done\n").await?;
        ensure!(
            got == "chunk 0\nchunk 1\nchunk 2\ndone\n",
            "stream content {got:?}"
        );

        // Server-sent events keep their type and every event.
        let resp = h1_send(get(
            "/echo/ticks?n=3&delay=0.05",
            &[("authorization", &auth)],
        )?)
        .await?;
        ensure!(
            resp.headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
            "SSE content type {:?}",
            resp.headers().get("content-type")
        );
        let all = timeout(REQUEST, resp.into_body().collect())
            .await
            .context("SSE body")??
            .to_bytes();
        ensure!(
            all == "data: tick 0\n\ndata: tick 1\n\ndata: tick 2\n\n",
            "SSE {all:?}"
        );

        // A streamed (chunked) request body arrives whole.
        let parts: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..8)
            .map(|i| Ok(Frame::data(Bytes::from(format!("part{i};")))))
            .collect();
        let body = BoxBody::new(StreamBody::new(futures_util::stream::iter(parts)));
        let req = Request::post("/echo/")
            .header("host", proxy_addr().to_string())
            .header("authorization", &auth)
            .body(body)?;
        let resp = h1_send(req).await?;
        let bytes = timeout(REQUEST, resp.into_body().collect())
            .await
            .context("echo body")??
            .to_bytes();
        let echo: Value = serde_json::from_slice(&bytes)?;
        let want: String = (0..8).map(|i| format!("part{i};")).collect();
        ensure!(
            echo["body"] == want.as_str(),
            "streamed body arrived as {}",
            echo["body"]
        );

        // WebSocket: refused without the token, echoes with it.
        let url = format!("ws://{}/echo/ws", proxy_addr());
        let stream = TcpStream::connect(proxy_addr()).await?;
        match tokio_tungstenite::client_async(url.as_str(), stream).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => ensure!(
                resp.status() == StatusCode::UNAUTHORIZED,
                "WebSocket without token: {}",
                resp.status()
            ),
            Err(e) => bail!("WebSocket without token: unexpected error {e}"),
            Ok(_) => bail!("WebSocket upgrade without the token succeeded"),
        }
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        req.headers_mut().insert("authorization", auth.parse()?);
        let stream = TcpStream::connect(proxy_addr()).await?;
        let (mut ws, resp) = timeout(REQUEST, tokio_tungstenite::client_async(req, stream))
            .await
            .context("WebSocket handshake")??;
        ensure!(
            resp.status() == StatusCode::SWITCHING_PROTOCOLS,
            "upgrade: {}",
            resp.status()
        );
        for text in ["hello", "second message"] {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                .await?;
            let reply = timeout(CHUNK, ws.next())
                .await
                .context("no WebSocket reply")?
                .context("WebSocket closed")??;
            ensure!(
                reply.to_text()? == format!("echo: {text}"),
                "WebSocket reply {reply:?}"
            );
        }
        ws.close(None).await?;
        Ok(())
    })
}

/// Reads body frames into `got` until it ends with `want` (bounded per chunk).
async fn read_until(body: &mut Incoming, got: &mut String, want: &str) -> Result<()> {
    while !got.ends_with(want) {
        let frame = timeout(CHUNK, body.frame())
            .await
            .with_context(|| format!("no {want:?} within {CHUNK:?} (have {got:?})"))?;
        match frame {
            Some(f) => {
                if let Ok(data) = f?.into_data() {
                    got.push_str(&String::from_utf8_lossy(&data));
                }
            }
            None => bail!("the stream ended before {want:?} (have {got:?})"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Rotation: both tokens work until prune; then the old token and cookie are refused, the new
//    one works, no restart.
// ---------------------------------------------------------------------------------------------
fn rotation(s: &mut Suite) -> Result<()> {
    let old = s.token()?;
    let pid = s.agent().pid();
    let out = s.agent().cli(&["token", "rotate"])?;
    ensure!(
        out.status.success(),
        "token rotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = s.token()?;
    s.tokens_seen.push(new.clone());
    ensure!(new != old, "rotate left the token unchanged");
    ensure!(new.len() == TOKEN_LEN, "new token length {}", new.len());
    // Rotate keeps the old token accepted: clients move over without a 401.
    for (what, token) in [("old", &old), ("new", &new)] {
        let resp = s.get("/echo/", &[("Authorization", &bearer(token))])?;
        ensure!(
            resp.status == 200,
            "{what} token after rotate: {}",
            resp.status
        );
    }
    let out = s.agent().cli(&["token", "prune"])?;
    ensure!(
        out.status.success(),
        "token prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The agent switches when prune returns; poll only to absorb the reload's scheduling.
    wait_for("the old token to be refused", limits::PROBE_IO, || {
        Ok(s.get("/echo/", &[("Authorization", &bearer(&old))])?.status == 401)
    })?;
    expect_401(
        &s.get("/echo/", &[("Authorization", &bearer(&old))])?,
        true,
        "old token after prune",
    )?;
    let old_cookie = s.get("/echo/", &[("Cookie", &cookie(&old))])?;
    ensure!(
        old_cookie.status == 401,
        "old cookie after prune: {}",
        old_cookie.status
    );
    expect_401(
        &s.get(&format!("/echo/docs?token={old}"), &[])?,
        true,
        "old docs link after prune",
    )?;

    assert_token_absent(
        &echo_of(&s.get("/echo/", &[("Authorization", &bearer(&new))])?)?,
        &new,
    )?;
    assert_token_absent(
        &echo_of(&s.get("/echo/", &[("Cookie", &cookie(&new))])?)?,
        &new,
    )?;
    let link = s.get(&format!("/echo/docs?token={new}"), &[])?;
    ensure!(link.status == 303, "new docs link: {}", link.status);

    let show = s.agent().cli(&["token", "show"])?;
    ensure!(show.status.success(), "token show failed");
    ensure!(
        String::from_utf8_lossy(&show.stdout).contains(&new),
        "token show does not print the new token"
    );
    ensure!(s.agent().pid() == pid, "the agent was restarted");
    ensure!(
        s.agent.as_mut().is_some_and(Agent::is_running),
        "the agent is not running after rotate"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. The raw Serve port from outside the VPC: dropped by XDP; the proxy port works.
// ---------------------------------------------------------------------------------------------
fn raw_port_dropped(s: &mut Suite) -> Result<()> {
    let before = s.agent().counters()?;
    match probe::tcp_connect(s.outside(), raw_serve_addr(), limits::DROPPED_CONNECT) {
        Err(probe::ConnectError::TimedOut(_)) => {}
        other => bail!(
            "raw port {} from outside: expected a dropped SYN, got {other:?}",
            raw_serve_addr()
        ),
    }
    let dropped = s
        .agent()
        .counters()?
        .since(&before)
        .packets(Reason::DropOutsideVpc, Family::Ipv4);
    ensure!(
        dropped >= 1,
        "XDP counted no drop_outside_vpc packet for the SYN"
    );

    // Same client, proxy port, token: through.
    let token = s.token()?;
    echo_of(&s.get("/echo/", &[("Authorization", &bearer(&token))])?)?;
    // And inside the VPC the raw port still serves (public mode keeps the VPC path).
    let inside = probe::http_request(&s.topo.inside.ns, raw_serve_addr(), "/echo/", &[])?;
    ensure!(
        inside.status == 200,
        "raw port from inside the VPC: {}",
        inside.status
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. gRPC through grpc_listen: UNAUTHENTICATED without the token, the real answer with it.
// ---------------------------------------------------------------------------------------------
fn grpc(s: &mut Suite) -> Result<()> {
    let ns = s.outside();
    let none = ray::grpc_health_check_in(ns, grpc_proxy_addr(), None, None)?;
    ensure!(
        none.code_value == 16 && none.code == "UNAUTHENTICATED",
        "without token: {none:?}"
    );
    let wrong_file = s.dir.path().join("wrong-token");
    write_private(&wrong_file, WRONG_TOKEN)?;
    let wrong = ray::grpc_health_check_in(ns, grpc_proxy_addr(), Some(&wrong_file), None)?;
    ensure!(wrong.code_value == 16, "wrong token: {wrong:?}");
    let ok = ray::grpc_health_check_in(ns, grpc_proxy_addr(), Some(&s.token_file()), None)?;
    ensure!(
        ok.code == "OK" && ok.status.as_deref() == Some("SERVING"),
        "with the token: {ok:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. TLS: a test certificate; HTTPS over HTTP/1.1 and HTTP/2; the cookie carries Secure.
// ---------------------------------------------------------------------------------------------
fn tls(s: &mut Suite) -> Result<()> {
    // A self-signed certificate for the server's address and [`TLS_NAME`].
    let files = self_signed_cert(s.dir.path(), &[TLS_NAME, &SERVER_V4.to_string()])?;
    s.tls_root = Some(files.der.clone());
    // The same node switches to a TLS listener: stop this agent, start one with tls_cert/key.
    if let Some(mut agent) = s.agent.take() {
        agent.stop()?;
        s.old_agent_logs.push(agent.logs());
    }
    let cfg = s.agent_config(Some(&files));
    s.start_agent(cfg, true)?;
    let token = s.token()?;

    for (alpn, want) in [(&b"h2"[..], "h2"), (&b"http/1.1"[..], "http/1.1")] {
        let cfg = s.tls_client_config(&[alpn])?;
        let token = token.clone();
        in_ns(s.outside(), move || async move {
            let (tls, negotiated) = tls_connect(cfg).await?;
            ensure!(
                negotiated == want,
                "ALPN negotiated {negotiated:?}, wanted {want}"
            );
            let mut sender = TlsSender::handshake(tls, want == "h2").await?;

            let resp = sender.send(get("/echo/", &[])?).await?;
            ensure!(
                resp.status == 401,
                "{want}: no token over TLS: {}",
                resp.status
            );

            let resp = sender
                .send(get("/echo/?tls=1", &[("authorization", &bearer(&token))])?)
                .await?;
            let echo = echo_of(&resp).with_context(|| format!("{want} with the token"))?;
            assert_token_absent(&echo, &token)?;
            ensure!(
                echoed_headers(&echo, "x-forwarded-proto") == ["https"],
                "{want}: X-Forwarded-Proto {:?}",
                echoed_headers(&echo, "x-forwarded-proto")
            );

            let link = sender
                .send(get(&format!("/echo/docs?token={token}"), &[])?)
                .await?;
            ensure!(
                link.status == 303,
                "{want}: docs link over TLS: {}",
                link.status
            );
            ensure!(
                link.header("location") == Some("/echo/docs"),
                "{want}: Location"
            );
            check_cookie(
                link.header("set-cookie")
                    .context("no Set-Cookie over TLS")?,
                &token,
                true,
            )?;

            let page = sender
                .send(get("/echo/docs", &[("cookie", &secure_cookie(&token))])?)
                .await?;
            ensure!(
                page.status == 200,
                "{want}: docs on the cookie: {}",
                page.status
            );
            Ok(())
        })?;
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(cfg: Arc<rustls::ClientConfig>) -> Result<(TlsStream, String)> {
    let tcp = timeout(REQUEST, TcpStream::connect(proxy_addr()))
        .await
        .context("TLS connect")??;
    let name = rustls::pki_types::ServerName::from(IpAddr::from(SERVER_V4));
    let tls = timeout(
        REQUEST,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .context("TLS handshake")??;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    Ok((tls, alpn))
}

enum TlsSender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl TlsSender {
    async fn handshake(tls: TlsStream, h2: bool) -> Result<TlsSender> {
        let io = TokioIo::new(tls);
        Ok(if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            TlsSender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            TlsSender::H1(send)
        })
    }

    async fn send(&mut self, mut req: Request<ReqBody>) -> Result<HttpResponse> {
        let resp = match self {
            TlsSender::H1(s) => timeout(REQUEST, s.send_request(req))
                .await
                .context("TLS request")??,
            TlsSender::H2(s) => {
                // HTTP/2 carries the authority in the URI, not a Host header.
                *req.uri_mut() = format!("https://{}{}", proxy_addr(), req.uri()).parse()?;
                req.headers_mut().remove("host");
                timeout(REQUEST, s.send_request(req))
                    .await
                    .context("TLS request")??
            }
        };
        collect(resp).await
    }
}

/// One request over a new TLS connection (HTTP/1.1): for the readiness probe.
async fn tls_send(cfg: Arc<rustls::ClientConfig>, req: Request<ReqBody>) -> Result<HttpResponse> {
    let (tls, _) = tls_connect(cfg).await?;
    TlsSender::handshake(tls, false).await?.send(req).await
}

// ---------------------------------------------------------------------------------------------
// 9. The agent's whole log never contains the token.
// ---------------------------------------------------------------------------------------------
fn logs_clean(s: &mut Suite) -> Result<()> {
    let mut logs = s.old_agent_logs.clone();
    if let Some(agent) = &s.agent {
        logs.push(agent.logs());
    }
    let lines: usize = logs.iter().map(|l| l.lines().count()).sum();
    ensure!(lines > 0, "the agent wrote no log at all: nothing to check");
    eprintln!(
        "    checking {lines} lines of agent log ({AGENT_LOG_LEVEL} level) for {} tokens",
        s.tokens_seen.len()
    );
    for token in &s.tokens_seen {
        for (i, log) in logs.iter().enumerate() {
            ensure!(
                !log.contains(token.as_str()),
                "agent log #{i} contains a token"
            );
        }
        // Ray's log holds Serve's access log: a token there would have reached the upstream.
        ensure!(
            !s.ray.log().contains(token.as_str()),
            "Ray Serve's log contains a token"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing (runs inside the client namespace).
// ---------------------------------------------------------------------------------------------
type ReqBody = BoxBody<Bytes, std::convert::Infallible>;

fn get(path: &str, headers: &[(&str, &str)]) -> Result<Request<ReqBody>> {
    let mut b = Request::get(path).header("host", proxy_addr().to_string());
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    Ok(b.body(BoxBody::new(Empty::new()))?)
}

fn post(path: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Request<ReqBody>> {
    let mut b = Request::post(path).header("host", proxy_addr().to_string());
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    Ok(b.body(BoxBody::new(Full::new(body)))?)
}

/// Sends `req` on a new HTTP/1.1 connection to the proxy; the body is left to the caller.
async fn h1_send(req: Request<ReqBody>) -> Result<Response<Incoming>> {
    let tcp = timeout(REQUEST, TcpStream::connect(proxy_addr()))
        .await
        .context("connect to the proxy")??;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(timeout(REQUEST, send.send_request(req))
        .await
        .context("response headers")??)
}

async fn collect(resp: Response<Incoming>) -> Result<HttpResponse> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = timeout(REQUEST, resp.into_body().collect())
        .await
        .context("response body")??
        .to_bytes()
        .to_vec();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Runs an async block on a current-thread runtime in a thread inside `ns`: every socket it
/// opens belongs to that namespace.
fn in_ns<F, Fut, T>(ns: &Netns, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T>>,
    T: Send,
{
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f())
    })?
}

// ---------------------------------------------------------------------------------------------
// The runner.
// ---------------------------------------------------------------------------------------------
type Scenario = fn(&mut Suite) -> Result<()>;

/// In order: rotation after the checks that use the first token; TLS replaces the agent, so it
/// comes after everything that needs the plain listener; the log check is last.
const SCENARIOS: [(&str, Scenario); 10] = [
    ("1 token checks", token_checks),
    ("2 docs link", docs_link),
    ("status lists the API docs links", status_links),
    ("3 browser", browser),
    ("4 streaming and WebSocket", streaming),
    ("6 raw port dropped by XDP", raw_port_dropped),
    ("8 gRPC", grpc),
    ("5 token rotation", rotation),
    ("7 TLS and HTTP/2", tls),
    ("9 no token in the agent's log", logs_clean),
];

/// The agents run with debug logging: the token must stay out of the log at every level an
/// operator may turn on, not only the default.
const AGENT_LOG_LEVEL: &str = "debug";

#[test]
fn public_mode_end_to_end() {
    let _ray = ray::exclusive();
    // SAFETY: set before this test starts any thread of its own, while the binary's only other
    // test waits for `ray::exclusive` without reading the environment; the harness reads
    // RUST_LOG when it launches an agent.
    unsafe { std::env::set_var("RUST_LOG", AGENT_LOG_LEVEL) };
    let mut suite = match Suite::setup() {
        Ok(s) => s,
        Err(e) => panic!("public-mode set-up failed: {e:#}"),
    };
    let mut failed = Vec::new();
    for (name, scenario) in SCENARIOS {
        eprintln!("scenario {name} ...");
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut suite)));
        match outcome {
            Ok(Ok(())) => eprintln!("scenario {name}: ok"),
            Ok(Err(e)) => {
                eprintln!("scenario {name}: FAILED: {e:#}");
                failed.push(name);
            }
            Err(_) => {
                eprintln!("scenario {name}: FAILED (panicked)");
                failed.push(name);
            }
        }
    }
    eprintln!(
        "public mode: {} passed, {} failed",
        SCENARIOS.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty()
        && let Some(agent) = &suite.agent
    {
        eprintln!(
            "---- agent log ----\n{}",
            redact(&agent.logs(), &suite.tokens_seen)
        );
    }
    // Tear down now (agent, servers, namespaces) and check Ray's whole process tree went too.
    let trees = [suite.ray.process_tree(), suite.grpc.process_tree()];
    drop(suite);
    for tree in trees {
        assert!(
            !tree.any_alive(),
            "a server process survived the suite: {tree:?}"
        );
    }
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}

fn redact(text: &str, tokens: &[String]) -> String {
    tokens
        .iter()
        .fold(text.to_owned(), |t, tok| t.replace(tok.as_str(), "<TOKEN>"))
}
