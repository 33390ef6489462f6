//! The control socket end to end over a real Unix socket, with a real store on temp files and a
//! stand-in for the agent's filter (the real filter is exercised by tests/tests/agent/control.rs).

use super::agent_view::{AgentView, Allowed, ViewFuture};
use super::client::{Client, ClientError};
use super::server::{ControlServer, ControlState};
use super::*;
use crate::config::Mode;
use crate::control::public_status::PublicStatus;
use crate::filter::{
    AttachMode, AttachedInterface, CounterEntry, CounterSnapshot, FilterError, FilterStatus,
    PortRun,
};
use crate::node::{AuditError, Exposure, ListenerAudit, ScanError};
use crate::store::{Listing, Outcome, Store};
use crate::token::TokenError;
use hyper::Method;
use serde::Serialize;
use serde::de::IgnoredAny;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sg-control-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct FakeView {
    public: bool,
    reloads: AtomicUsize,
}

impl AgentView for FakeView {
    fn mode(&self) -> Mode {
        if self.public {
            Mode::Public
        } else {
            Mode::Private
        }
    }
    fn filter_status(&self) -> ViewFuture<'_, FilterStatus> {
        Box::pin(async {
            FilterStatus {
                interfaces: vec![AttachedInterface {
                    name: "eth0".into(),
                    ifindex: 2,
                    mode: AttachMode::Driver,
                    link_id: 7,
                    adopted: false,
                    slot: None,
                    xdp_held_by: None,
                }],
                ports: vec![8000],
                guard: crate::ports::Guard::Node,
                port_classes: vec![PortRun {
                    from: 0,
                    to: 65535,
                    class: crate::ports::PortClass::Guarded,
                }],
                audit: false,
                program_log: false,
                pin_dir: "/sys/fs/bpf/serve-guard".into(),
                program_id: 42,
                cidrs_v4: 1,
                cidrs_v6: 0,
            }
        })
    }
    fn stats(&self) -> ViewFuture<'_, Result<CounterSnapshot, FilterError>> {
        use serve_guard_common::{Family, Reason};
        Box::pin(async {
            Ok(CounterSnapshot {
                counters: vec![CounterEntry {
                    reason: Reason::DropOutsideVpc,
                    family: Family::Ipv4,
                    packets: 7,
                    bytes: 420,
                }],
            })
        })
    }
    fn public_status(&self) -> ViewFuture<'_, Option<PublicStatus>> {
        let public = self.public;
        Box::pin(async move {
            public.then(|| PublicStatus {
                user_service_url: "https://x".into(),
                token_file: "/etc/serve-guard/token".into(),
                token: None,
                tokens_accepted: 0,
                token_error: Some("token file /etc/serve-guard/token is missing".into()),
                docs_links: Vec::new(),
                routes_error: None,
            })
        })
    }
    fn exposures(&self) -> Result<Vec<Exposure>, ScanError> {
        Ok(vec![Exposure::RpFilterOff {
            interface: "eth0".into(),
        }])
    }
    fn listener_audit<'a>(
        &'a self,
        allowed: &'a Allowed<'a>,
    ) -> ViewFuture<'a, Result<ListenerAudit, AuditError>> {
        Box::pin(async move { Ok(fake_audit(allowed)) })
    }
    fn reload_token(&self) -> Option<Result<(), TokenError>> {
        self.public.then(|| {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// One reachable listener; its `reason` records what `allowed` said of an address inside the
/// store's list (10.0.0.0/8) and one outside, to show the server asks the list in force.
fn fake_audit(allowed: &Allowed<'_>) -> ListenerAudit {
    use crate::node::listeners::Listener;
    use crate::node::sockets::{Process, Protocol};
    let asked = |ip: &str| allowed(ip.parse().unwrap());
    ListenerAudit {
        audit_mode: false,
        listeners: vec![Listener {
            protocol: Protocol::Tcp,
            local: "0.0.0.0:22".parse().unwrap(),
            port: 22,
            owners: vec![Process {
                pid: 42,
                comm: "sshd".into(),
                cmdline: "sshd: /usr/sbin/sshd -D".into(),
            }],
            what: Some("SSH".into()),
            class: crate::ports::PortClass::Open,
            reason: format!(
                "10.1.1.1 allowed: {}, 203.0.113.1 allowed: {}",
                asked("10.1.1.1"),
                asked("203.0.113.1")
            ),
            reachable: true,
            would_close: false,
        }],
        sessions_at_risk: Vec::new(),
        blind_spots: Vec::new(),
    }
}

struct Running {
    _dir: TempDir,
    client: Client,
    socket: PathBuf,
    cidr_file: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(public: bool) -> Running {
    let dir = TempDir::new();
    let cidr_file = dir.0.join("cidrs");
    std::fs::write(&cidr_file, "10.0.0.0/8\n").unwrap();
    let store = Arc::new(Store::open(&cidr_file, &dir.0.join("state")).unwrap());
    let socket = dir.0.join("run/control.sock");
    let state = ControlState {
        store,
        view: Arc::new(FakeView {
            public,
            reloads: AtomicUsize::new(0),
        }),
        started_at: SystemTime::now(),
    };
    let server = ControlServer::bind(&socket, state).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        client: Client::new(&socket),
        socket,
        cidr_file,
        _dir: dir,
        _stop: stop,
    }
}

fn add(cidrs: &[&str], if_revision: Option<u64>) -> CidrsRequest {
    CidrsRequest {
        cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        if_revision,
        allow_everyone: false,
    }
}

fn refused(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Refused { status, message } => (status, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn socket_is_private_and_its_directory_too() {
    let r = start(false).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&r.socket), SOCKET_MODE);
    assert_eq!(mode(r.socket.parent().unwrap()), SOCKET_DIR_MODE);
}

#[tokio::test]
async fn cidr_routes_change_the_list() {
    let r = start(false).await;
    let listing: Listing = r.client.get(routes::CIDRS).await.unwrap();
    assert_eq!((listing.revision, listing.ipv4, listing.ipv6), (1, 1, 0));

    let out: Outcome = r
        .client
        .send(
            Method::POST,
            routes::CIDRS_ADD,
            &add(&["fd00::/8", "198.18.0.0/15"], Some(1)),
        )
        .await
        .unwrap();
    assert_eq!((out.revision, out.ipv4, out.ipv6), (2, 2, 1));

    let out: Outcome = r
        .client
        .send(
            Method::POST,
            routes::CIDRS_REMOVE,
            &add(&["10.0.0.0/8"], None),
        )
        .await
        .unwrap();
    assert_eq!((out.revision, out.ipv4), (3, 1));

    let out: Outcome = r
        .client
        .send(
            Method::PUT,
            routes::CIDRS,
            &ReplaceRequest {
                text: "172.16.0.0/12\n".into(),
                if_revision: Some(3),
                allow_everyone: false,
            },
        )
        .await
        .unwrap();
    assert_eq!((out.revision, out.ipv4, out.ipv6), (4, 1, 0));
    assert!(
        std::fs::read_to_string(&r.cidr_file)
            .unwrap()
            .contains("172.16.0.0/12")
    );
}

#[tokio::test]
async fn bad_requests_are_named_and_change_nothing() {
    let r = start(false).await;
    let before = std::fs::read_to_string(&r.cidr_file).unwrap();

    let (status, msg) = refused(
        r.client
            .send::<_, Outcome>(
                Method::POST,
                routes::CIDRS_ADD,
                &add(&["fd00::/8", "nope"], None),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert!(msg.starts_with("argument 2: `nope`"), "{msg}");

    let (status, msg) = refused(
        r.client
            .send::<_, Outcome>(
                Method::POST,
                routes::CIDRS_ADD,
                &add(&["fd00::/8"], Some(9)),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert!(msg.contains("revision 9"), "{msg}");

    /// A client's typo: the agent names the field it does not know.
    #[derive(Serialize)]
    struct Typo {
        text: &'static str,
        if_revison: u64,
    }
    let (status, msg) = refused(
        r.client
            .send::<_, Outcome>(
                Method::PUT,
                routes::CIDRS,
                &Typo {
                    text: "10.0.0.0/8\n",
                    if_revison: 1,
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert!(
        msg.contains("if_revison"),
        "the unknown field is named: {msg}"
    );

    let (status, msg) = refused(
        r.client
            .send::<_, IgnoredAny>(
                Method::PUT,
                routes::MODE,
                &ModeReport { mode: Mode::Public },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert!(msg.contains("fixed for the life of the agent"), "{msg}");

    let (status, _) = refused(
        r.client
            .send::<_, IgnoredAny>(Method::POST, routes::TOKEN_RELOAD, &())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409, "no token in private mode");

    let (status, _) = refused(r.client.get::<IgnoredAny>("/v1/nope").await.unwrap_err());
    assert_eq!(status, 404);
    let (status, _) = refused(
        r.client
            .send::<_, IgnoredAny>(Method::DELETE, routes::CIDRS, &())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 405);

    let huge = ReplaceRequest {
        text: "#".repeat(MAX_BODY_BYTES + 1),
        if_revision: None,
        allow_everyone: false,
    };
    let (status, msg) = refused(
        r.client
            .send::<_, Outcome>(Method::PUT, routes::CIDRS, &huge)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 413, "{msg}");

    assert_eq!(std::fs::read_to_string(&r.cidr_file).unwrap(), before);
    let listing: Listing = r.client.get(routes::CIDRS).await.unwrap();
    assert_eq!(listing.revision, 1);
}

#[tokio::test]
async fn status_stats_and_token_reload() {
    let r = start(true).await;
    let status: StatusReport = r.client.get(routes::STATUS).await.unwrap();
    assert_eq!(status.mode, Mode::Public);
    assert_eq!(status.cidrs.revision, 1);
    assert_eq!(status.agent.unwrap().pid, std::process::id());
    assert_eq!(
        status.filter.interfaces(),
        vec![("eth0", AttachMode::Driver, false)]
    );
    assert!(matches!(
        status.filter.source,
        FilterSource::Agent(RunningFilter { program_id: 42, .. })
    ));
    let public = status.public.expect("the public part in public mode");
    assert_eq!(public.user_service_url, "https://x");
    assert!(public.token_error.is_some_and(|e| e.contains("missing")));
    assert_eq!(
        status.exposures,
        vec![Exposure::RpFilterOff {
            interface: "eth0".into()
        }]
    );
    let audit = status
        .listener_audit
        .expect("the listener audit is in the status");
    assert_eq!(audit.listeners[0].owners[0].pid, 42);
    assert_eq!(
        audit.listeners[0].reason,
        "10.1.1.1 allowed: true, 203.0.113.1 allowed: false"
    );
    assert_eq!(status.listener_audit_error, None);

    let stats: StatsReport = r.client.get(routes::STATS).await.unwrap();
    assert_eq!(
        stats.counters,
        vec![CounterRow {
            reason: "drop_outside_vpc".into(),
            family: "ipv4".into(),
            packets: 7,
            bytes: 420,
        }]
    );
    let mode: ModeReport = r.client.get(routes::MODE).await.unwrap();
    assert_eq!(mode.mode, Mode::Public);

    let reloaded: TokenReloaded = r
        .client
        .send(Method::POST, routes::TOKEN_RELOAD, &())
        .await
        .unwrap();
    assert!(reloaded.reloaded);
}

#[tokio::test]
async fn concurrent_adds_are_all_applied() {
    const CALLS: usize = 6;
    let r = start(false).await;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let client = r.client.clone();
            tokio::spawn(async move {
                client
                    .send::<_, Outcome>(
                        Method::POST,
                        routes::CIDRS_ADD,
                        &add(&[&format!("198.18.{i}.0/24")], None),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let listing: Listing = r.client.get(routes::CIDRS).await.unwrap();
    assert_eq!(listing.ipv4, 1 + CALLS);
    assert_eq!(listing.revision, 1 + CALLS as u64);
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
    let r = start(false).await;
    let dir = TempDir::new();
    std::fs::write(dir.0.join("cidrs"), "10.0.0.0/8\n").unwrap();
    let state = || ControlState {
        store: Arc::new(Store::open(&dir.0.join("cidrs"), &dir.0.join("state")).unwrap()),
        view: Arc::new(FakeView {
            public: false,
            reloads: AtomicUsize::new(0),
        }),
        started_at: SystemTime::now(),
    };
    let err = ControlServer::bind(&r.socket, state()).await.err().unwrap();
    assert!(matches!(err, server::ServerError::InUse { .. }), "{err}");

    // A socket file nobody listens on (an agent killed with -9) is replaced.
    let stale = dir.0.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(matches!(
        Client::new(&stale)
            .get::<Listing>(routes::CIDRS)
            .await
            .unwrap_err(),
        ClientError::NotRunning { .. }
    ));
    ControlServer::bind(&stale, state()).await.unwrap();
}
