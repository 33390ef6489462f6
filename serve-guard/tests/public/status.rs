//! The public part of `serve-guard status` as the agent builds it: the user service URL, the
//! primary token from the token file, one API docs link per route of Serve's route table.

use serve_guard::control::public_status::public_status;
use serve_guard_proxy::test_util::*;

use crate::token_file::start_file_proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_status_lists_docs_links_per_route() {
    let up = start_upstream().await;
    let proxy = start_file_proxy(&up.url(), |c| {
        c.external_url = Some(
            serve_guard_proxy::config::ExternalUrl::parse("https://serve.example.com/").unwrap(),
        );
    })
    .await;
    let token = proxy.token();
    let status = public_status(&proxy.config).await.unwrap();
    assert_eq!(status.user_service_url, "https://serve.example.com");
    assert_eq!(status.token.as_deref(), Some(token.as_str()));
    assert!(status.routes_error.is_none());
    let urls: Vec<(&str, &str)> = status
        .docs_links
        .iter()
        .map(|l| (l.route.as_str(), l.url.as_str()))
        .collect();
    assert_eq!(
        urls,
        vec![
            (
                "/",
                format!("https://serve.example.com/docs?token={token}").as_str()
            ),
            (
                "/echo",
                format!("https://serve.example.com/echo/docs?token={token}").as_str()
            ),
        ]
    );
    let printed = status.to_string();
    assert!(printed.contains("user service URL: https://serve.example.com"));
    assert!(printed.contains(&format!("/echo/docs?token={token}")));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["token"], token.as_str());
    assert!(!format!("{status:?}").contains(&token), "Debug is redacted");

    // Serve down: still a URL and a token, and a reason for the missing links.
    drop(up);
    let mut config = proxy.config.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.upstream =
        serve_guard_proxy::config::Upstream::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let status = public_status(&config).await.unwrap();
    assert!(status.docs_links.is_empty());
    assert!(status.routes_error.is_some());
    assert_eq!(status.token.as_deref(), Some(token.as_str()));
}
