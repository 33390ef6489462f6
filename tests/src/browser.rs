//! A real headless Chromium in a test namespace, driven over WebDriver (chromedriver): the
//! public-mode test opens the API docs link in it the way a user would.
//!
//! chromedriver runs inside the namespace (only the network namespace is entered) in a process
//! group of its own; Chromium is its child, so it lives in the same namespace and group. The
//! WebDriver HTTP calls go to chromedriver's loopback port from a thread in that namespace.
//! [`Drop`] ends the session, then stops the group (SIGTERM, bounded wait, SIGKILL).

use crate::netns::Netns;
use crate::probe;
use crate::ray;
use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Debian's chromium and chromium-driver (installed by `cargo xtask setup`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Headless, and nothing that reaches for the network on its own (the namespace has no route
/// out anyway; these keep its logs and timings clean). QUIC off: the proxy speaks TCP.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    // Crashpad's handler double-forks out of chromedriver's process group: keep it from starting.
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--window-size=1280,1024",
];

/// chromedriver starting and answering /status.
pub const DRIVER_READY: Duration = Duration::from_secs(30);
/// Creating a session starts Chromium: slow on a busy 2-core machine.
pub const SESSION_START: Duration = Duration::from_secs(90);
/// One WebDriver command (page loads included: the Swagger bundle is ~1 MB).
pub const COMMAND: Duration = Duration::from_secs(60);
/// SIGTERM to the group until it is gone.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Between polls of the DOM or of chromedriver's readiness.
const POLL: Duration = Duration::from_millis(100);
/// Largest WebDriver response read (screenshots are base64 PNGs of a few hundred KB).
const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{0} is not installed (run `cargo xtask setup`)")]
    Missing(&'static str),
    #[error("starting chromedriver: {0}")]
    Spawn(#[source] io::Error),
    #[error("chromedriver did not answer within {0:?}")]
    DriverNotReady(Duration),
    #[error("WebDriver {method} {path}: {detail}")]
    Command {
        method: &'static str,
        path: String,
        detail: String,
    },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("screenshot: {0}")]
    Screenshot(String),
}

/// One Chromium session in a namespace.
#[derive(Debug)]
pub struct Browser {
    ns: Netns,
    driver: Child,
    driver_addr: SocketAddr,
    session: String,
    /// Fresh profile: an empty cookie jar, no state from any earlier run.
    profile: TempDir,
    log_path: PathBuf,
    _log_dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session inside `ns`.
    pub fn start(ns: &Netns) -> Result<Self, BrowserError> {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            if !Path::new(path).exists() {
                return Err(BrowserError::Missing(what));
            }
        }
        let port = free_port(ns).map_err(BrowserError::Spawn)?;
        let driver_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let log_dir = tempfile::Builder::new()
            .prefix("sgchrome-log")
            .tempdir()
            .map_err(BrowserError::Spawn)?;
        let log_path = log_dir.path().join("chromedriver.log");
        let mut cmd = ns.command(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        ray::process::terminate_with_parent(&mut cmd);
        let driver = cmd.spawn().map_err(BrowserError::Spawn)?;
        let profile = tempfile::Builder::new()
            .prefix("sgchrome")
            .tempdir()
            .map_err(BrowserError::Spawn)?;
        let mut browser = Browser {
            ns: ns.clone(),
            driver,
            driver_addr,
            session: String::new(),
            profile,
            log_path,
            _log_dir: log_dir,
        };
        browser.wait_driver()?;
        browser.session = browser.new_session()?;
        Ok(browser)
    }

    fn wait_driver(&mut self) -> Result<(), BrowserError> {
        let deadline = Instant::now() + DRIVER_READY;
        loop {
            if let Ok(v) = self.call("GET", "/status", None, POLL.max(Duration::from_secs(2)))
                && v.pointer("/value/ready").and_then(Value::as_bool) == Some(true)
            {
                return Ok(());
            }
            if matches!(self.driver.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
                return Err(BrowserError::DriverNotReady(DRIVER_READY));
            }
            std::thread::sleep(POLL);
        }
    }

    fn new_session(&self) -> Result<String, BrowserError> {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", self.profile.path().display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": false,
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": COMMAND.as_millis() as u64, "script": COMMAND.as_millis() as u64 },
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
                }
            }
        });
        let v = self.call("POST", "/session", Some(&caps), SESSION_START)?;
        v.pointer("/value/sessionId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| BrowserError::Command {
                method: "POST",
                path: "/session".into(),
                detail: format!("no sessionId in {v}"),
            })
    }

    /// Navigates to `url` and waits for the page load (WebDriver's "normal" strategy).
    pub fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.session_call("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The URL the tab shows now (after any redirects).
    pub fn current_url(&self) -> Result<String, BrowserError> {
        let v = self.session_call("GET", "/url", None)?;
        Ok(v["value"].as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value, BrowserError> {
        let v = self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )?;
        Ok(v["value"].clone())
    }

    /// Number of elements matching `css` in the current document.
    pub fn count(&self, css: &str) -> Result<usize, BrowserError> {
        let v = self.session_call(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        Ok(v["value"].as_array().map_or(0, Vec::len))
    }

    /// Text content of every element matching `css`.
    pub fn texts(&self, css: &str) -> Result<Vec<String>, BrowserError> {
        let v = self.execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);",
            json!([css]),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Polls until at least `min` elements match `css`, bounded by `timeout`.
    pub fn wait_for_css(
        &self,
        css: &str,
        min: usize,
        timeout: Duration,
    ) -> Result<usize, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count(css)?;
            if n >= min {
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("{min} element(s) matching {css:?} (found {n})"),
                    timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every cookie the browser holds for the current page, HttpOnly ones included (WebDriver
    /// sees what page scripts cannot).
    pub fn cookies(&self) -> Result<Vec<Value>, BrowserError> {
        let v = self.session_call("GET", "/cookie", None)?;
        Ok(v["value"].as_array().cloned().unwrap_or_default())
    }

    /// The page's resource timing entries: `{name, responseStatus}` per subresource fetched.
    pub fn resources(&self) -> Result<Vec<(String, u64)>, BrowserError> {
        let v = self.execute(
            "return performance.getEntriesByType('resource')\
             .map(e => [e.name, e.responseStatus || 0]);",
            json!([]),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e[0].as_str().unwrap_or_default().to_owned(),
                            e[1].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Saves a PNG of the viewport to `path` (parent directories created).
    pub fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let v = self.session_call("GET", "/screenshot", None)?;
        let b64 = v["value"]
            .as_str()
            .ok_or_else(|| BrowserError::Screenshot("no image in the answer".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| BrowserError::Screenshot(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| BrowserError::Screenshot(e.to_string()))?;
        }
        std::fs::write(path, png).map_err(|e| BrowserError::Screenshot(e.to_string()))
    }

    /// chromedriver's log so far (for failure messages).
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn session_call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, BrowserError> {
        self.call(
            method,
            &format!("/session/{}{path}", self.session),
            body,
            COMMAND,
        )
    }

    /// One WebDriver command; a WebDriver error (`value.error`) becomes `BrowserError::Command`.
    fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let err = |detail: String| BrowserError::Command {
            method,
            path: path.to_owned(),
            detail,
        };
        let addr = self.driver_addr;
        let body = body.map(Value::to_string);
        let raw = self
            .ns
            .run(|| http_call(addr, method, path, body.as_deref(), timeout))
            .map_err(|e| err(format!("entering the namespace: {e}")))?
            .map_err(|e| err(e.to_string()))?;
        let resp = probe::parse_response(&raw).map_err(|e| err(e.to_string()))?;
        let v: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| err(format!("status {}: not JSON: {e}", resp.status)))?;
        if let Some(error) = v.pointer("/value/error").and_then(Value::as_str) {
            let message = v
                .pointer("/value/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(err(format!("{error}: {message}")));
        }
        Ok(v)
    }

    /// Ends the session (Chromium exits) and stops chromedriver's process group; anything of
    /// its process tree still running after that is killed by PID.
    fn stop(&mut self) {
        let pgid = self.driver.id() as libc::pid_t;
        let tree = ray::process::Tree::of(pgid);
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.call("DELETE", &path, None, Duration::from_secs(10));
            self.session.clear();
        }
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            ray::signal_group(pgid, sig);
            if sig == libc::SIGKILL {
                tree.kill();
            }
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                // Reap the leader: a zombie leader would keep the group "alive".
                let _ = self.driver.try_wait();
                if !ray::group_alive(pgid) && !tree.any_alive() {
                    return;
                }
                std::thread::sleep(crate::limits::POLL_INTERVAL);
            }
        }
        eprintln!("warning: chromedriver (pid {pgid}) or a child still present after SIGKILL");
    }

    /// chromedriver's process tree now (driver, Chromium and its helpers).
    pub fn process_tree(&self) -> ray::process::Tree {
        ray::process::Tree::of(self.driver.id() as libc::pid_t)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free in `ns` right now (the namespace is the test's own: nothing races it).
fn free_port(ns: &Netns) -> io::Result<u16> {
    ns.run(|| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr().map(|a| a.port()))
    })?
}

/// A minimal HTTP/1.1 JSON call: all WebDriver needs. The response is read by its
/// Content-Length: chromedriver says `Connection: close` but keeps the socket open.
fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let total = head_end + 4 + content_length(&raw[..head_end])?;
            if raw.len() >= total {
                raw.truncate(total);
                return Ok(raw);
            }
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            // Closed: what we have is the whole answer (parse_response judges it).
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(io::Error::other("WebDriver response too large"));
        }
    }
}

/// The Content-Length of a response head (`Content-Length:249`, any case, spaces optional).
fn content_length(head: &[u8]) -> io::Result<usize> {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .ok_or_else(|| io::Error::other("WebDriver response without Content-Length"))?
        .map_err(|e| io::Error::other(format!("bad Content-Length: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{HttpServer, body_for};

    /// Port of the page server in the test namespace.
    const PAGE_PORT: u16 = 8089;

    #[test]
    fn chromium_loads_a_page_in_the_namespace_and_leaves_nothing_behind() {
        let ns = Netns::new("w").unwrap();
        let server = HttpServer::start(&ns, &[PAGE_PORT]).unwrap();
        let browser = Browser::start(&ns).unwrap();
        browser
            .goto(&format!("http://127.0.0.1:{PAGE_PORT}/hello"))
            .unwrap();
        assert_eq!(
            browser.current_url().unwrap(),
            format!("http://127.0.0.1:{PAGE_PORT}/hello")
        );
        // The test server answers text/plain: Chromium shows it in one <pre>.
        let text = browser.texts("pre").unwrap();
        assert_eq!(text, [body_for(PAGE_PORT)]);
        assert!(server.requests(PAGE_PORT) >= 1);
        let shot = tempfile::tempdir().unwrap();
        let png = shot.path().join("page.png");
        browser.screenshot(&png).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        let tree = browser.process_tree();
        drop(browser);
        assert!(
            !tree.any_alive(),
            "a browser process survived the drop: {tree:?}"
        );
    }
}
