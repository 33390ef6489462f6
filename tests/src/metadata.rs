//! The clouds' metadata services and APIs, as their providers document them, served inside a
//! test's own namespace at the well-known addresses: `169.254.169.254:80` (AWS IMDSv2, GCP's
//! metadata server, Azure IMDS) and an HTTPS API endpoint (GCP's Compute API, Azure Resource
//! Manager) at [`API_V4`] with a certificate of its own ([`MetadataServer::ca_file`]). Nothing
//! here is reachable from outside the namespace.
//!
//! Documented behaviour kept: AWS wants a session token (`PUT /latest/api/token` with a TTL of
//! 1-21600 s; 400 without it, 401 for a GET without a valid token, 403 for a proxied request,
//! 404 for a missing category such as `vpc-ipv6-cidr-blocks` of a VPC without IPv6); GCP wants
//! `Metadata-Flavor: Google` (403 without) and sends it back, its Compute API pages with
//! `nextPageToken`, needs a bearer token (401) and the permission (403); Azure wants
//! `Metadata: true` and an `api-version` on every request (400 without), ARM a bearer token
//! (401) and the role (403). A [`Failure`] makes every answer fail one way.

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::netns::Netns;

pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The API endpoint's address on the namespace's loopback (the agent's config names it as
/// `gcp_compute_endpoint` / `azure_resource_manager_endpoint`).
pub const API_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 10);
const API_PORT: u16 = 443;
pub const GCP_TOKEN: &str = "ya29.test-access-token";
pub const AZURE_TOKEN: &str = "eyJ0eXAi.test-access-token";
const AWS_TOKEN: &str = "AQAEAFake-imdsv2-session-token==";
const AZURE_SUBSCRIPTION: &str = "00000000-0000-4000-8000-000000000001";
const AZURE_GROUP: &str = "ray-cluster";
const AZURE_VM: &str = "ray-head";

/// How every answer fails, for outage tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connections are closed without an answer.
    Down,
    /// 500 Internal Server Error.
    Error500,
    /// 200 with an empty body.
    Empty,
    /// 200 with a body that is no answer at all.
    Garbage,
    /// 429 Too Many Requests.
    Throttled,
    /// The answer comes after this long (longer than the agent's `request_timeout`).
    Slow(Duration),
    /// 302 to another host (a hijacked or misconfigured endpoint): never to be followed.
    Redirect,
    /// 200 with a body larger than any answer the client reads (9 MiB).
    Huge,
}

/// Bigger than the agent's 8 MiB cap on an answer.
const HUGE_BODY: usize = 9 << 20;

#[derive(Debug, Clone)]
pub struct AwsInterface {
    pub mac: String,
    pub v4: Vec<String>,
    pub v6: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GcpSubnetwork {
    pub name: String,
    pub region: String,
    /// The network's name (`networks/<name>`).
    pub network: String,
    pub range: String,
    pub secondary: Vec<(String, String)>,
    pub internal_ipv6: Option<String>,
}

/// One cloud's view of the node.
#[derive(Debug, Clone)]
pub enum Cloud {
    Aws {
        interfaces: Vec<AwsInterface>,
    },
    Gcp {
        ip: String,
        mask: String,
        /// `projects/<project>/networks/<name>`.
        network: String,
        service_account: bool,
        /// `compute.subnetworks.list` granted.
        may_list: bool,
        subnetworks: Vec<GcpSubnetwork>,
    },
    Azure {
        /// The interface's subnet (`address`, `prefix`).
        subnet: (String, String),
        identity: bool,
        /// Reader on the resource group.
        may_read: bool,
        address_space: Vec<String>,
    },
}

#[derive(Debug)]
struct State {
    cloud: Cloud,
    failure: Option<Failure>,
    /// Every request: `METHOD target` (percent-decoded).
    log: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

/// The servers, on a thread inside the namespace; stopped on drop.
pub struct MetadataServer {
    state: Shared,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<std::io::Result<()>>>>,
}

impl MetadataServer {
    /// Adds the well-known addresses to `ns`'s loopback and serves `cloud` there.
    pub fn start(ns: &Netns, cloud: Cloud) -> Result<Self> {
        for addr in [METADATA_V4, API_V4] {
            ns.add_loopback_address(&format!("{addr}/32"))?;
        }
        let dir = tempfile::tempdir()?;
        let cert =
            serve_guard_proxy::test_util::self_signed_cert(dir.path(), &[&API_V4.to_string()])?;
        // The proxy's own acceptor: the same PEM reading and TLS settings as public mode.
        let tls = serve_guard_proxy::tls::acceptor(&cert.cert, &cert.key)?;
        let state = Arc::new(Mutex::new(State {
            cloud,
            failure: None,
            log: Vec::new(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shared = Arc::clone(&state);
        let thread = ns.spawn(move || -> std::io::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let plain = tokio::net::TcpListener::bind((METADATA_V4, 80)).await?;
                let secure = tokio::net::TcpListener::bind((API_V4, API_PORT)).await?;
                let _ = ready_tx.send(());
                serve(plain, secure, tls, shared, stopped).await;
                Ok(())
            })
        })?;
        if ready_rx.recv_timeout(crate::limits::SETUP).is_err() {
            // The thread ended (a bind failed) or hangs: its error says which.
            let _ = stop.send(());
            let why = match thread.join() {
                Ok(Ok(Err(e)) | Err(e)) => e.to_string(),
                _ => "no error".into(),
            };
            anyhow::bail!("the metadata server did not start: {why}");
        }
        Ok(MetadataServer {
            state,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The API endpoint for `gcp_compute_endpoint` / `azure_resource_manager_endpoint`.
    pub fn api_endpoint() -> String {
        format!("https://{API_V4}")
    }

    /// The API's certificate: the agent's `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Changes what the cloud says.
    pub fn update(&self, f: impl FnOnce(&mut Cloud)) {
        f(&mut self.lock().cloud);
    }

    /// Every answer fails this way from now on (`None`: answers again).
    pub fn fail(&self, failure: Option<Failure>) {
        self.lock().failure = failure;
    }

    /// The requests so far (`METHOD target`, percent-decoded).
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    plain: tokio::net::TcpListener,
    secure: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Shared,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (stream, https) = tokio::select! {
            _ = &mut stopped => return,
            Ok((s, _)) = plain.accept() => (s, false),
            Ok((s, _)) = secure.accept() => (s, true),
        };
        if state.lock().unwrap_or_else(|p| p.into_inner()).failure == Some(Failure::Down) {
            drop(stream);
            continue;
        }
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(answer(&state, req, https).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            if https {
                if let Ok(stream) = tls.accept(stream).await {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            } else {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("a response")
}

fn json(value: serde_json::Value) -> Answer {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("a response")
}

async fn answer(state: &Shared, req: Request<hyper::body::Incoming>, https: bool) -> Answer {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let decoded = percent_decode(&target);
    let (failure, cloud) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.log.push(format!("{} {decoded}", req.method()));
        (s.failure, s.cloud.clone())
    };
    match failure {
        Some(Failure::Error500) => {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
        Some(Failure::Empty) => return reply(StatusCode::OK, ""),
        Some(Failure::Garbage) => return reply(StatusCode::OK, "<html>captive portal</html>"),
        Some(Failure::Throttled) => return reply(StatusCode::TOO_MANY_REQUESTS, "slow down"),
        Some(Failure::Slow(d)) => tokio::time::sleep(d).await,
        Some(Failure::Redirect) => {
            return Response::builder()
                .status(StatusCode::FOUND)
                .header("location", "http://198.18.0.200/latest/meta-data/")
                .body(Full::new(Bytes::new()))
                .expect("a response");
        }
        Some(Failure::Huge) => return reply(StatusCode::OK, vec![b'1'; HUGE_BODY]),
        Some(Failure::Down) | None => {}
    }
    let asked = Asked {
        method: req.method().clone(),
        path: decoded
            .split_once('?')
            .map_or(decoded.as_str(), |(p, _)| p)
            .to_owned(),
        query: decoded
            .split_once('?')
            .map(|(_, q)| parse_query(q))
            .unwrap_or_default(),
        headers: req.headers().clone(),
    };
    if asked.header("x-forwarded-for").is_some() {
        // All three refuse proxied requests (an SSRF defence).
        return reply(StatusCode::FORBIDDEN, "forwarded requests are refused");
    }
    match (&cloud, https) {
        (Cloud::Aws { interfaces }, false) => aws(interfaces, &asked),
        (Cloud::Gcp { .. }, false) => gcp_metadata(&cloud, &asked),
        (Cloud::Gcp { .. }, true) => gcp_api(&cloud, &asked),
        (Cloud::Azure { .. }, false) => azure_imds(&cloud, &asked),
        (Cloud::Azure { .. }, true) => azure_arm(&cloud, &asked),
        (Cloud::Aws { .. }, true) => reply(StatusCode::NOT_FOUND, "no API here"),
    }
}

/// A request as the handlers read it.
struct Asked {
    method: Method,
    /// Percent-decoded, without the query.
    path: String,
    query: BTreeMap<String, String>,
    headers: http::HeaderMap,
}

impl Asked {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

fn aws(interfaces: &[AwsInterface], asked: &Asked) -> Answer {
    let (method, path, header) = (&asked.method, asked.path.as_str(), |n: &str| {
        asked.header(n)
    });
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        return match header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|t| t.parse::<u32>().ok())
        {
            Some(1..=21600) => reply(StatusCode::OK, AWS_TOKEN),
            _ => reply(StatusCode::BAD_REQUEST, "missing or invalid TTL"),
        };
    }
    if !path.starts_with("/latest/") {
        return reply(StatusCode::NOT_FOUND, "");
    }
    if header("x-aws-ec2-metadata-token").as_deref() != Some(AWS_TOKEN) {
        return reply(StatusCode::UNAUTHORIZED, "");
    }
    let Some(rest) = path.strip_prefix("/latest/meta-data/network/interfaces/macs/") else {
        return reply(StatusCode::NOT_FOUND, "");
    };
    if rest.is_empty() {
        let macs: Vec<String> = interfaces.iter().map(|i| format!("{}/", i.mac)).collect();
        return reply(StatusCode::OK, macs.join("\n"));
    }
    let Some((mac, key)) = rest.split_once('/') else {
        return reply(StatusCode::NOT_FOUND, "");
    };
    let Some(nic) = interfaces.iter().find(|i| i.mac == mac) else {
        return reply(StatusCode::NOT_FOUND, "");
    };
    let lines = match key {
        "vpc-ipv4-cidr-blocks" => &nic.v4,
        "vpc-ipv6-cidr-blocks" if !nic.v6.is_empty() => &nic.v6,
        _ => return reply(StatusCode::NOT_FOUND, ""),
    };
    reply(StatusCode::OK, lines.join("\n"))
}

fn google(answer: Answer) -> Answer {
    let (mut parts, body) = answer.into_parts();
    parts
        .headers
        .insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    Response::from_parts(parts, body)
}

fn gcp_metadata(cloud: &Cloud, asked: &Asked) -> Answer {
    let (path, header) = (asked.path.as_str(), |n: &str| asked.header(n));
    let Cloud::Gcp {
        ip,
        mask,
        network,
        service_account,
        ..
    } = cloud
    else {
        unreachable!()
    };
    if header("metadata-flavor").as_deref() != Some("Google") {
        return google(reply(
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.",
        ));
    }
    google(match path {
        "/computeMetadata/v1/instance/id" => reply(StatusCode::OK, "4520031799277581759"),
        "/computeMetadata/v1/instance/network-interfaces/" => json(serde_json::json!([{
            "ip": ip, "subnetmask": mask, "network": network, "ipAliases": [],
            "gateway": "198.18.0.1", "mac": "42:01:0a:80:00:02"
        }])),
        "/computeMetadata/v1/instance/service-accounts/default/token" if *service_account => json(
            serde_json::json!({"access_token": GCP_TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
        ),
        _ => reply(StatusCode::NOT_FOUND, "not found"),
    })
}

fn gcp_api(cloud: &Cloud, asked: &Asked) -> Answer {
    let (path, query, header) = (asked.path.as_str(), &asked.query, |n: &str| asked.header(n));
    let Cloud::Gcp {
        network,
        may_list,
        subnetworks,
        ..
    } = cloud
    else {
        unreachable!()
    };
    if header("authorization") != Some(format!("Bearer {GCP_TOKEN}")) {
        return reply(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#,
        );
    }
    let project = network.split('/').nth(1).unwrap_or_default();
    if path != format!("/compute/v1/projects/{project}/aggregated/subnetworks") {
        return reply(StatusCode::NOT_FOUND, "");
    }
    if !may_list {
        return reply(
            StatusCode::FORBIDDEN,
            r#"{"error":{"code":403,"message":"Required 'compute.subnetworks.list' permission","status":"PERMISSION_DENIED"}}"#,
        );
    }
    // `network eq ".*/networks/<name>"`, as the API reads it (a full match of the URL).
    let wanted = query
        .get("filter")
        .and_then(|f| f.strip_prefix("network eq \".*/networks/"))
        .and_then(|f| f.strip_suffix('"'))
        .map(str::to_owned);
    // One region per page, so every listing of more than one region pages.
    let mut regions: Vec<&str> = subnetworks.iter().map(|s| s.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    let page: usize = query
        .get("pageToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let Some(region) = regions.get(page) else {
        return json(serde_json::json!({"kind": "compute#subnetworkAggregatedList", "items": {}}));
    };
    let listed: Vec<serde_json::Value> = subnetworks
        .iter()
        .filter(|s| s.region == *region)
        .filter(|s| wanted.as_deref().is_none_or(|w| w == s.network))
        .map(|s| {
            let mut v = serde_json::json!({
                "name": s.name,
                "network": format!("https://www.googleapis.com/compute/v1/projects/{project}/networks/{}", s.network),
                "region": format!("https://www.googleapis.com/compute/v1/projects/{project}/regions/{}", s.region),
                "ipCidrRange": s.range,
                "secondaryIpRanges": s.secondary.iter().map(|(n, r)| serde_json::json!({"rangeName": n, "ipCidrRange": r})).collect::<Vec<_>>(),
            });
            if let Some(v6) = &s.internal_ipv6 {
                v["internalIpv6Prefix"] = v6.clone().into();
            }
            v
        })
        .collect();
    let mut body = serde_json::json!({
        "kind": "compute#subnetworkAggregatedList",
        "items": { format!("regions/{region}"): { "subnetworks": listed } },
    });
    if page + 1 < regions.len() {
        body["nextPageToken"] = format!("page-{}", page + 1).into();
    }
    json(body)
}

fn azure_imds(cloud: &Cloud, asked: &Asked) -> Answer {
    let (path, query, header) = (asked.path.as_str(), &asked.query, |n: &str| asked.header(n));
    let Cloud::Azure {
        subnet, identity, ..
    } = cloud
    else {
        unreachable!()
    };
    if header("metadata").as_deref() != Some("true") {
        return reply(
            StatusCode::BAD_REQUEST,
            r#"{"error":"Bad request. Required metadata header not specified"}"#,
        );
    }
    if !query.contains_key("api-version") {
        return reply(
            StatusCode::BAD_REQUEST,
            r#"{"error":"Bad request. api-version was not specified"}"#,
        );
    }
    match path {
        "/metadata/instance" => json(serde_json::json!({
            "compute": {"subscriptionId": AZURE_SUBSCRIPTION, "resourceGroupName": AZURE_GROUP, "name": AZURE_VM},
            "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "198.18.0.1"}], "subnet": [{"address": subnet.0, "prefix": subnet.1}]}, "macAddress": "000D3A000001"}]}
        })),
        "/metadata/identity/oauth2/token" => {
            if !identity {
                return reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
                );
            }
            if query.get("resource").map(String::as_str)
                != Some(&format!("{}/", MetadataServer::api_endpoint()))
            {
                return reply(StatusCode::BAD_REQUEST, r#"{"error":"invalid_resource"}"#);
            }
            json(
                serde_json::json!({"access_token": AZURE_TOKEN, "token_type": "Bearer", "expires_in": "86399"}),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, ""),
    }
}

fn azure_arm(cloud: &Cloud, asked: &Asked) -> Answer {
    let (path, query, header) = (asked.path.as_str(), &asked.query, |n: &str| asked.header(n));
    let Cloud::Azure {
        may_read,
        address_space,
        ..
    } = cloud
    else {
        unreachable!()
    };
    if !query.contains_key("api-version") {
        return reply(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"MissingApiVersionParameter"}}"#,
        );
    }
    if header("authorization") != Some(format!("Bearer {AZURE_TOKEN}")) {
        return reply(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"AuthenticationFailed"}}"#,
        );
    }
    if !may_read {
        return reply(
            StatusCode::FORBIDDEN,
            r#"{"error":{"code":"AuthorizationFailed","message":"does not have authorization to perform action 'Microsoft.Compute/virtualMachines/read'"}}"#,
        );
    }
    let group = format!("/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{AZURE_GROUP}");
    let nic = format!("{group}/providers/Microsoft.Network/networkInterfaces/{AZURE_VM}-nic");
    let vnet = format!("{group}/providers/Microsoft.Network/virtualNetworks/ray-vnet");
    // Resource ids are case-insensitive in ARM.
    let path = path.to_ascii_lowercase();
    if path
        == format!("{group}/providers/Microsoft.Compute/virtualMachines/{AZURE_VM}")
            .to_ascii_lowercase()
    {
        json(
            serde_json::json!({"properties": {"networkProfile": {"networkInterfaces": [{"id": nic}]}}}),
        )
    } else if path == nic.to_ascii_lowercase() {
        json(
            serde_json::json!({"properties": {"ipConfigurations": [{"properties": {"subnet": {"id": format!("{vnet}/subnets/default")}}}]}}),
        )
    } else if path == vnet.to_ascii_lowercase() {
        json(
            serde_json::json!({"properties": {"addressSpace": {"addressPrefixes": address_space}}}),
        )
    } else {
        reply(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"ResourceNotFound"}}"#,
        )
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `%XX` decoded (the log and the routes read what the client meant).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
