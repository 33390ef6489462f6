//! `[cloud]` on the real agent and the real filter: the VPC's ranges from fakes of the three
//! clouds' metadata services and APIs, served at the well-known addresses inside the test's own
//! namespace ([`serve_guard_tests::metadata`]). The hostile answers (garbage, host bits, an
//! allow-everyone range, a redirect, an answer too big, one that never comes) change nothing.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::limits;
use serve_guard_tests::metadata::{AwsInterface, Cloud, Failure, GcpSubnetwork, MetadataServer};
use serve_guard_tests::metrics::sample;
use serve_guard_tests::probe::{self, RequestLoop};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{Host, IFACE, Ip, Topology};
use serve_guard_tests::wait_for;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const SERVE: u16 = 8000;
const METRICS: &str = "127.0.0.1:9464";
/// The cloud's primary range: the inside client (198.18.0.10), not the outside one (.200).
const PRIMARY: &str = "198.18.0.0/28";
/// A secondary range the VPC gains: the `extra` client.
const SECONDARY: &str = "198.18.0.64/27";
const EXTRA_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 70);
const EXTRA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, 2, 0x70);
/// The IPv6 range the VPC gains: the inside client's v6 address (not the outside's).
const V6: &str = "fd00:5e::/112";
/// Another network's subnet in the same project (holds the outside client): never ours.
const OTHER_NETWORK: &str = "198.18.0.128/25";
const REFRESH: &str = "1s";
/// Within one refresh of a change in the cloud, with room for a slow debug build.
const ONE_REFRESH: Duration = Duration::from_secs(10);

/// The server with Serve's port and an agent configured for `[cloud]`, the clients around it.
struct Scene {
    topo: Topology,
    extra: Host,
    metadata: MetadataServer,
    _http: HttpServer,
    /// Holds the CIDR file's folder; the file itself is never written.
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(cloud: Cloud) -> Result<Self> {
        let topo = Topology::new()?;
        let extra = topo.add_client("x", EXTRA_V4, EXTRA_V6)?;
        let metadata = MetadataServer::start(&topo.server.ns, cloud)?;
        let http = HttpServer::start(&topo.server.ns, &[SERVE])?;
        Ok(Scene {
            topo,
            extra,
            metadata,
            _http: http,
            dir: tempfile::tempdir()?,
        })
    }

    /// A private-mode agent with `[cloud]` (`provider` "auto" detects) and no CIDR file.
    fn config(&self, provider: &str) -> AgentConfig {
        let mut cloud = toml::Table::new();
        cloud.insert("provider".into(), provider.into());
        cloud.insert("refresh_interval".into(), REFRESH.into());
        cloud.insert("request_timeout".into(), "500ms".into());
        for key in ["gcp_compute_endpoint", "azure_resource_manager_endpoint"] {
            cloud.insert(key.into(), MetadataServer::api_endpoint().into());
        }
        AgentConfig::private(&[IFACE])
            .serve_ports(&[SERVE])
            .metrics_listen(METRICS)
            .set(
                "cidr_file",
                self.dir.path().join("vpc-cidrs").display().to_string(),
            )
            .set("cloud", cloud)
            .env_all(
                "SSL_CERT_FILE",
                self.metadata.ca_file().display().to_string(),
            )
    }

    fn reaches(&self, client: &Host, ip: Ip) -> bool {
        probe::tcp_connect(
            &client.ns,
            self.topo.server.sock(ip, SERVE),
            limits::DROPPED_CONNECT,
        )
        .is_ok()
    }

    /// Waits until exactly the `(client, family)` pairs in `allowed` reach Serve's port.
    fn wait_for_reach(&self, what: &str, allowed: &[(&Host, Ip)]) -> Result<()> {
        let everyone = [
            (&self.topo.inside, Ip::V4),
            (&self.topo.inside, Ip::V6),
            (&self.extra, Ip::V4),
            (&self.extra, Ip::V6),
            (&self.topo.outside, Ip::V4),
            (&self.topo.outside, Ip::V6),
        ];
        wait_for(what, ONE_REFRESH, || {
            Ok(everyone.iter().all(|(host, ip)| {
                let want = allowed
                    .iter()
                    .any(|(h, i)| h.ns.name() == host.ns.name() && i == ip);
                self.reaches(host, *ip) == want
            }))
        })
    }
}

fn aws(v4: &[&str], v6: &[&str]) -> Cloud {
    Cloud::Aws {
        interfaces: vec![AwsInterface {
            mac: "0e:49:61:0f:c3:11".into(),
            v4: v4.iter().map(|s| (*s).to_owned()).collect(),
            v6: v6.iter().map(|s| (*s).to_owned()).collect(),
        }],
    }
}

fn status_json(agent: &Agent) -> Result<serde_json::Value> {
    let out = agent.cli(&["status", "--json"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn cloud_errors(agent: &Agent) -> Result<u64> {
    status_json(agent)?["cidrs"]["cloud"]["errors"]
        .as_u64()
        .context("status lacks cidrs.cloud.errors")
}

fn scrape(scene: &Scene) -> Result<String> {
    let r = probe::http_request(&scene.topo.server.ns, METRICS.parse()?, "/metrics", &[])?;
    Ok(r.body_text())
}

#[test]
fn aws_ranges_guard_a_node_without_a_cidr_file_and_follow_the_vpc() -> Result<()> {
    let scene = Scene::new(aws(&[PRIMARY], &[]))?;
    let agent = Agent::start(&scene.topo.server.ns, scene.config("auto"))?;
    let (topo, extra) = (&scene.topo, &scene.extra);
    scene.wait_for_reach(
        "the VPC's primary range to be in force",
        &[(&topo.inside, Ip::V4)],
    )?;

    // The VPC gains a secondary IPv4 range and an IPv6 range: in force within one refresh,
    // with no gap for the inside client meanwhile.
    let prober = RequestLoop::start(
        &topo.inside.ns,
        topo.server.sock(Ip::V4, SERVE),
        "/",
        &[],
        Duration::from_millis(20),
        limits::PROBE_IO,
        |r| {
            if r.status == 200 {
                Ok("ok".into())
            } else {
                Err(format!("status {}", r.status))
            }
        },
    )?;
    scene
        .metadata
        .update(|c| *c = aws(&[PRIMARY, SECONDARY], &[V6]));
    scene.wait_for_reach(
        "the secondary and IPv6 ranges to be in force",
        &[
            (&topo.inside, Ip::V4),
            (&topo.inside, Ip::V6),
            (extra, Ip::V4),
        ],
    )?;
    let report = prober.finish()?;
    ensure!(
        report.failed == 0 && report.answered > 0,
        "a gap: {report:?}"
    );

    // Each entry's source, the answer's age, the counts by source.
    let out = agent.cli(&["cidr", "list"])?;
    let listed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        listed.contains("aws: 3 range(s)")
            && listed
                .lines()
                .any(|l| l.starts_with(SECONDARY) && l.ends_with("aws")),
        "{listed}"
    );
    let scrape = scrape(&scene)?;
    ensure!(
        sample(&scrape, "serve_guard_cidrs_by_source{source=\"cloud\"}") == Some(3.0)
            && sample(&scrape, "serve_guard_cloud_refresh_ok") == Some(1.0),
        "{scrape}"
    );

    // The file adds what the cloud cannot know (a peering); its entries are the file's.
    let out = agent.cli(&["cidr", "add", "198.18.0.200/32"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    scene.wait_for_reach(
        "the file's entry beside the cloud's",
        &[
            (&topo.inside, Ip::V4),
            (&topo.inside, Ip::V6),
            (extra, Ip::V4),
            (&topo.outside, Ip::V4),
        ],
    )?;
    let json: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["cidr", "list", "--json"])?.stdout)?;
    ensure!(
        json["file"] == serde_json::json!(["198.18.0.200/32"]),
        "{json}"
    );
    agent.cli(&["cidr", "remove", "198.18.0.200/32"])?;

    // A range goes away in the cloud: the answer shrinks the list.
    scene.metadata.update(|c| *c = aws(&[PRIMARY], &[V6]));
    scene.wait_for_reach(
        "the removed range to leave the list",
        &[(&topo.inside, Ip::V4), (&topo.inside, Ip::V6)],
    )?;

    // An answer that allows everyone is refused whole and named; the list stays.
    let before = cloud_errors(&agent)?;
    scene
        .metadata
        .update(|c| *c = aws(&[PRIMARY, "0.0.0.0/0"], &[V6]));
    wait_for("the refusal to be counted", ONE_REFRESH, || {
        Ok(cloud_errors(&agent)? > before)
    })?;
    let status = status_json(&agent)?;
    ensure!(
        status["cidrs"]["cloud"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("0.0.0.0/0") && e.contains("allows every source")),
        "{status}"
    );
    ensure!(
        !scene.reaches(&topo.outside, Ip::V4),
        "the outside client got in"
    );
    Ok(())
}

#[test]
fn outages_change_nothing_and_a_restart_uses_the_persisted_list() -> Result<()> {
    let scene = Scene::new(aws(&[PRIMARY, SECONDARY], &[]))?;
    let mut agent = Agent::start(&scene.topo.server.ns, scene.config("aws").on_stop("detach"))?;
    let (topo, extra) = (&scene.topo, &scene.extra);
    let in_force = [(&topo.inside, Ip::V4), (extra, Ip::V4)];
    scene.wait_for_reach("the VPC's ranges to be in force", &in_force)?;

    for failure in [
        Failure::Down,
        Failure::Error500,
        Failure::Empty,
        Failure::Garbage,
        Failure::Throttled,
        Failure::Slow(Duration::from_secs(2)),
        Failure::Redirect,
        Failure::Huge,
    ] {
        let before = cloud_errors(&agent)?;
        scene.metadata.fail(Some(failure));
        wait_for(&format!("{failure:?} to be counted"), ONE_REFRESH, || {
            Ok(cloud_errors(&agent)? > before)
        })?;
        scene.wait_for_reach(&format!("the list to stay through {failure:?}"), &in_force)?;
        let out = agent.cli(&["status"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("answer")
                && text.contains("old")
                && text.contains("failed, the last good list stays"),
            "{failure:?}: {text}"
        );
    }
    let scrape = scrape(&scene)?;
    ensure!(
        sample(&scrape, "serve_guard_cloud_refresh_ok") == Some(0.0)
            && sample(&scrape, "serve_guard_cloud_refresh_errors_total").is_some_and(|n| n >= 8.0)
            && sample(&scrape, "serve_guard_cloud_answer_age_seconds").is_some(),
        "{scrape}"
    );

    // Stopped with the filter removed, started again while the metadata service is down: the
    // persisted answer is in force as soon as the agent is ready.
    scene.metadata.fail(Some(Failure::Down));
    agent.stop()?;
    ensure!(
        topo.server.ns.xdp_program(IFACE)?.is_none(),
        "on_stop = detach left the filter"
    );
    agent.restart()?;
    for (host, ip) in in_force {
        ensure!(
            scene.reaches(host, ip),
            "{} lost at restart",
            host.ns.name()
        );
    }
    ensure!(
        !scene.reaches(&topo.outside, Ip::V4),
        "the outside client got in"
    );
    Ok(())
}

fn gcp(may_list: bool) -> Cloud {
    let subnet = |name: &str, region: &str, network: &str, range: &str| GcpSubnetwork {
        name: name.into(),
        region: region.into(),
        network: network.into(),
        range: range.into(),
        secondary: Vec::new(),
        internal_ipv6: None,
    };
    Cloud::Gcp {
        ip: "198.18.0.1".into(),
        mask: "255.255.255.240".into(),
        network: "projects/test-project/networks/ray-vpc".into(),
        service_account: true,
        may_list,
        subnetworks: vec![
            GcpSubnetwork {
                secondary: vec![("pods".into(), SECONDARY.into())],
                ..subnet("nodes", "us-central1", "ray-vpc", PRIMARY)
            },
            GcpSubnetwork {
                internal_ipv6: Some(V6.into()),
                ..subnet("nodes-v6", "us-east1", "ray-vpc", "198.18.0.16/28")
            },
            subnet("elsewhere", "us-east1", "other-vpc", OTHER_NETWORK),
        ],
    }
}

#[test]
fn gcp_lists_the_vpc_through_the_compute_api_once_permitted() -> Result<()> {
    let scene = Scene::new(gcp(false))?;
    let agent = Agent::start(&scene.topo.server.ns, scene.config("auto"))?;
    let (topo, extra) = (&scene.topo, &scene.extra);
    // Without compute.subnetworks.list: the instance's own subnet, and a warning that says why.
    scene.wait_for_reach("the instance's subnet", &[(&topo.inside, Ip::V4)])?;
    let status = String::from_utf8_lossy(&agent.cli(&["status"])?.stdout).into_owned();
    ensure!(
        status.contains("roles/compute.networkViewer") && status.contains("403"),
        "{status}"
    );

    scene.metadata.update(|c| *c = gcp(true));
    scene.wait_for_reach(
        "the VPC's subnets from the Compute API",
        &[
            (&topo.inside, Ip::V4),
            (&topo.inside, Ip::V6),
            (extra, Ip::V4),
        ],
    )?;
    let log = scene.metadata.log();
    ensure!(
        log.iter().any(|l| l.contains(
            "aggregated/subnetworks?filter=network eq \".*/networks/ray-vpc\"&pageToken=page-1"
        )),
        "the second page was not asked for: {log:#?}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["cidr", "list", "--json"])?.stdout)?;
    ensure!(
        json["cloud"]["provider"] == "gcp"
            && json["cloud"]["cidrs"]
                .as_array()
                .is_some_and(|c| c.len() == 4)
            && json["cloud"]["warnings"]
                .as_array()
                .is_some_and(Vec::is_empty),
        "{json}"
    );
    Ok(())
}

fn azure(identity: bool, may_read: bool) -> Cloud {
    Cloud::Azure {
        subnet: ("198.18.0.0".into(), "28".into()),
        identity,
        may_read,
        address_space: vec![PRIMARY.into(), SECONDARY.into(), V6.into()],
    }
}

#[test]
fn azure_reads_the_address_space_once_an_identity_has_the_role() -> Result<()> {
    let scene = Scene::new(azure(false, false))?;
    let agent = Agent::start(&scene.topo.server.ns, scene.config("auto"))?;
    let (topo, extra) = (&scene.topo, &scene.extra);
    scene.wait_for_reach("the interface's subnet", &[(&topo.inside, Ip::V4)])?;
    let status = String::from_utf8_lossy(&agent.cli(&["status"])?.stdout).into_owned();
    ensure!(
        status.contains("managed identity") && status.contains("Identity not found"),
        "{status}"
    );

    // An identity without the role: still the subnet, and the refusal named.
    scene.metadata.update(|c| *c = azure(true, false));
    wait_for("the missing role to be named", ONE_REFRESH, || {
        Ok(
            String::from_utf8_lossy(&agent.cli(&["status"])?.stdout)
                .contains("AuthorizationFailed"),
        )
    })?;
    ensure!(
        !scene.reaches(extra, Ip::V4),
        "the address space came without the role"
    );

    scene.metadata.update(|c| *c = azure(true, true));
    scene.wait_for_reach(
        "the virtual network's address space",
        &[
            (&topo.inside, Ip::V4),
            (&topo.inside, Ip::V6),
            (extra, Ip::V4),
        ],
    )?;
    let log = scene.metadata.log();
    // Azure's requests (detection also asked the other clouds' paths once).
    let unversioned: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" /metadata/") || l.contains(" /subscriptions/"))
        .filter(|l| !l.contains("api-version="))
        .collect();
    ensure!(
        unversioned.is_empty() && log.iter().any(|l| l.contains("virtualNetworks/ray-vnet")),
        "requests without an api-version: {unversioned:?} in {log:?}"
    );
    Ok(())
}

#[test]
fn discover_shows_the_cloud_and_the_difference_and_changes_nothing() -> Result<()> {
    let scene = Scene::new(aws(&[PRIMARY, SECONDARY], &[V6]))?;
    // A config that does not use the cloud yet, and no agent.
    let cfg = AgentConfig::private(&[IFACE])
        .serve_ports(&[SERVE])
        .cidrs(&[PRIMARY, "10.9.0.0/16"]);
    let agent = Agent::new(&scene.topo.server.ns, cfg)?;
    let files_before = std::fs::read_dir(agent.files().dir())?.count();
    let out = agent.cli(&["cidr", "discover"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains("aws says the VPC has 3 range(s)")
            && text.lines().any(|l| l.starts_with(&format!("  {PRIMARY}")))
            && text
                .lines()
                .any(|l| l.starts_with(&format!("+ {SECONDARY}"))
                    && l.contains("vpc-ipv4-cidr-blocks of 0e:49:61:0f:c3:11"))
            && text.lines().any(|l| l.starts_with(&format!("+ {V6}")))
            && text.contains("[cloud] is not in the config"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["cidr", "discover", "--json"])?.stdout)?;
    ensure!(
        json["missing"] == serde_json::json!([SECONDARY, V6]),
        "{json}"
    );
    ensure!(
        std::fs::read_dir(agent.files().dir())?.count() == files_before
            && !agent.files().state_dir.join("cloud-cidrs").exists(),
        "discover wrote something"
    );
    // A cloud that answers garbage: a named error, a failing exit, still nothing written.
    scene.metadata.update(|c| *c = aws(&["10.0.0.1/16"], &[]));
    let out = agent.cli(&["cidr", "discover"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("10.0.0.1/16") && err.contains("host bits"),
        "{err}"
    );
    Ok(())
}
