//! The token file in front of the proxy: the agent's token source loads (or creates) it and
//! publishes each re-read to the proxy, which applies it to the next request on every
//! connection. Rotation and prune as the CLI does them, the file's mode, and the agent's
//! watcher following edits on disk until what a removed token opened ends.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serve_guard::token::{TokenSource, prune_file, rotate_file};
use serve_guard_proxy::config::PublicConfig;
use serve_guard_proxy::test_util::*;
use serve_guard_proxy::token::Token;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The proxy of the harness, its tokens from the agent's source on a token file.
pub struct FileProxy {
    pub proxy: TestProxy,
    pub source: Arc<TokenSource>,
    pub token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for FileProxy {
    type Target = TestProxy;
    fn deref(&self) -> &TestProxy {
        &self.proxy
    }
}

/// A proxy in front of `upstream` whose tokens come from a token file the agent's source
/// creates (a fresh token, mode 0600) and re-reads; `tweak` adjusts the config.
pub async fn start_file_proxy(upstream: &str, tweak: impl FnOnce(&mut PublicConfig)) -> FileProxy {
    let dir = temp_dir();
    let token_file = dir.path().join("token");
    let source = Arc::new(TokenSource::load_or_create(&token_file).unwrap());
    let file = token_file.clone();
    let proxy = start_proxy_with_tokens(
        upstream,
        |c, _| {
            c.token_file = file;
            tweak(c);
        },
        source.subscribe(),
    )
    .await;
    FileProxy {
        proxy,
        source,
        token_file,
        _dir: dir,
    }
}

fn is_base64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_then_prune_refuses_the_old_token_and_cookie_without_restart() {
    let up = start_upstream().await;
    let proxy = start_file_proxy(&up.url(), |_| {}).await;
    let old = proxy.token();
    let old_auth = format!("Bearer {old}");
    let old_cookie = format!("SERVE_TOKEN={old}");
    let (status, _, _) = get(&proxy.url("/echo"), &[("authorization", &old_auth)]).await;
    assert_eq!(status, StatusCode::OK);

    let new = rotate_file(&proxy.token_file).unwrap();
    proxy.source.reload().unwrap();
    let new = new.expose().to_owned();
    assert_ne!(new, old);
    let new_auth = format!("Bearer {new}");
    // Rotation keeps the old token accepted (no 401 window) until prune.
    for auth in [&old_auth, &new_auth] {
        let (status, _, _) = get(&proxy.url("/echo"), &[("authorization", auth)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(prune_file(&proxy.token_file).unwrap(), 1);
    proxy.source.reload().unwrap();
    for headers in [
        [("authorization", old_auth.as_str())],
        [("cookie", old_cookie.as_str())],
    ] {
        let (status, resp, _) = get(&proxy.url("/echo"), &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(
            resp["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
    let resp = raw(
        proxy.addr,
        &format!("GET /echo/docs?token={old} HTTP/1.1\r\nHost: h"),
    )
    .await;
    assert_eq!(resp.status, 401);
    let (status, _, _) = get(&proxy.url("/echo"), &[("authorization", &new_auth)]).await;
    assert_eq!(status, StatusCode::OK);
    let new_cookie = format!("SERVE_TOKEN={new}");
    let (status, _, _) = get(&proxy.url("/echo"), &[("cookie", &new_cookie)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_not_logged(&old);
    assert_not_logged(&new);
}

/// A change of the token file reaches requests on connections that were open before it: the
/// proxy reads the token set per request, not per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_change_applies_to_open_keep_alive_connections() {
    let up = start_upstream().await;
    let proxy = start_file_proxy(&up.url(), |_| {}).await;
    let old = proxy.token();
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut send = async |token: &str, carrier: &str| {
        let value = match carrier {
            "cookie" => format!("SERVE_TOKEN={token}"),
            _ => format!("Bearer {token}"),
        };
        let req = Request::get("/echo")
            .header("host", "h")
            .header(carrier, value)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        // The same connection: it must still be open (and idle) for the next request.
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(send(&old, "authorization").await, StatusCode::OK);

    let new = rotate_file(&proxy.token_file).unwrap();
    let new = new.expose().to_owned();
    proxy.source.reload().unwrap();
    assert_eq!(send(&new, "authorization").await, StatusCode::OK);
    assert_eq!(
        send(&old, "cookie").await,
        StatusCode::OK,
        "rotate keeps the old token"
    );
    prune_file(&proxy.token_file).unwrap();
    proxy.source.reload().unwrap();
    assert_eq!(send(&old, "authorization").await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&old, "cookie").await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&new, "cookie").await, StatusCode::OK);
    assert_not_logged(&old);
    assert_not_logged(&new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_created_0600_with_a_43_char_base64url_token() {
    let up = start_upstream().await;
    let proxy = start_file_proxy(&up.url(), |_| {}).await;
    let meta = std::fs::metadata(&proxy.token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&proxy.token_file).unwrap();
    let token = text.trim_end_matches('\n');
    assert_eq!(token.len(), 43);
    assert!(is_base64url(token));
    assert_eq!(token, proxy.token());
    // A token file others can read is refused.
    std::fs::set_permissions(&proxy.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = TokenSource::open(&proxy.token_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(token));
}

/// The bound: from the edit on disk to the end of what the removed token opened.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

/// How the token file is changed.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// A new file renamed over the old one (editors, Ansible's `copy`).
    Rename,
    /// The same file truncated and written again.
    InPlace,
}

fn write_token_file(path: &Path, text: &str, edit: Edit) {
    match edit {
        Edit::Rename => {
            let staged = path.with_extension("staged");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&staged)
                .unwrap();
            file.write_all(text.as_bytes()).unwrap();
            std::fs::rename(&staged, path).unwrap();
        }
        Edit::InPlace => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .unwrap();
            file.write_all(text.as_bytes()).unwrap();
        }
    }
}

/// Polls `cond` every 20 ms until true, failing after `WAIT` with `what`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's watcher follows the token file: a token removed on disk (by a rename over the
/// file or an in-place write) ends the WebSocket it opened within a second of the edit, and
/// the remaining token's tunnel goes on. What else a revocation ends (streams over HTTP/1.1,
/// HTTP/2, gRPC, cookies) is the proxy's, covered by its attack suite
/// (serve-guard-proxy/tests/attacks/revocation.rs).
async fn an_edit_on_disk_ends_what_the_removed_token_opened(edit: Edit) {
    let up = start_upstream().await;
    let proxy = start_file_proxy(&up.url(), |_| {}).await;
    let watcher = serve_guard::follow::Watcher::start_tokens(proxy.source.clone()).unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watcher.run(async move {
        let _ = stopped.await;
    }));
    let old = proxy.token();
    let new = Token::generate().unwrap().expose().to_owned();
    write_token_file(&proxy.token_file, &format!("{new}\n{old}\n"), edit);
    eventually("the new token is added", || {
        proxy.source.current().len() == 2
    })
    .await;

    let mut ws_old = open_websocket(proxy.addr, &format!("Bearer {old}")).await;
    let mut ws_new = open_websocket(proxy.addr, &format!("Bearer {new}")).await;
    write_token_file(&proxy.token_file, &format!("{new}\n"), edit);
    let removed = Instant::now();
    let closed = tokio::time::timeout_at(removed + REVOKED_WITHIN, async {
        while let Some(Ok(_)) = ws_old.next().await {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "{edit:?}: the WebSocket was still open {REVOKED_WITHIN:?} after its token was removed"
    );
    println!(
        "{edit:?}: the tunnel ended {:?} after the edit",
        removed.elapsed()
    );
    use futures_util::SinkExt as _;
    ws_new
        .send(tokio_tungstenite::tungstenite::Message::text("still open"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(WAIT, ws_new.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.to_text().unwrap(), "still open");
    let (status, _, _) = get(
        &proxy.url("/echo"),
        &[("authorization", &format!("Bearer {old}"))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_not_logged(&old);
    assert_not_logged(&new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_over_the_token_file_ends_the_removed_tokens_tunnel_within_a_second() {
    an_edit_on_disk_ends_what_the_removed_token_opened(Edit::Rename).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_write_of_the_token_file_ends_the_removed_tokens_tunnel_within_a_second() {
    an_edit_on_disk_ends_what_the_removed_token_opened(Edit::InPlace).await;
}
