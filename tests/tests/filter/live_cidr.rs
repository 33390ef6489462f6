//! Live CIDR changes on the real agent and the real XDP program (issue 4, tests 1, 3, 4, 5):
//! probers in client namespaces while the list changes, edits of the file by rename and by a
//! ConfigMap-style symlink swap, bad input that must change nothing, concurrent changes.

use super::cidr_support::*;
use anyhow::{Result, ensure};
use serve_guard_common::{Family, Reason};
use serve_guard_tests::agent::{Agent, AgentConfig};
use serve_guard_tests::probe::{self, ConnectError};
use serve_guard_tests::server::HttpServer;
use serve_guard_tests::topology::{IFACE, Ip, Topology, VPC_V4, VPC_V6};
use serve_guard_tests::{limits, wait_for};
use std::time::Duration;

/// Bound on waiting for a prober to make progress between two edits.
const PROGRESS: Duration = Duration::from_secs(30);
/// Probes to let pass between two edits.
const PROBES_BETWEEN_EDITS: u64 = 4;
/// The agent's metrics endpoint in its namespace (the config's default).
const METRICS: &str = "127.0.0.1:9464";
/// CIDRs of the "big" list change, to make one map update long.
const BIG_LIST: u32 = 2_000;

/// Fields drop in order: the agent goes before the namespaces it runs in.
struct Scene {
    agent: Agent,
    _http: HttpServer,
    topo: Topology,
}

impl Scene {
    fn new(cidrs: &[&str]) -> Result<Scene> {
        Self::with(|c| c.cidrs(cidrs))
    }

    fn with(configure: impl FnOnce(AgentConfig) -> AgentConfig) -> Result<Scene> {
        let topo = Topology::new()?;
        let http = HttpServer::start(&topo.server.ns, &[SERVE_HTTP])?;
        let config = configure(AgentConfig::private(&[IFACE]).serve_ports(&[SERVE_HTTP]));
        let agent = Agent::start(&topo.server.ns, config)?;
        Ok(Scene {
            agent,
            _http: http,
            topo,
        })
    }

    fn inside_gets(&self, ip: Ip) -> Result<bool> {
        Ok(matches!(
            probe::http_get(&self.topo.inside.ns, self.topo.server.sock(ip, SERVE_HTTP)),
            Ok(200)
        ))
    }

    /// A SYN from the inside client is dropped (the connect times out).
    fn inside_dropped(&self, ip: Ip) -> Result<bool> {
        Ok(matches!(
            probe::tcp_connect(
                &self.topo.inside.ns,
                self.topo.server.sock(ip, SERVE_HTTP),
                limits::DROPPED_CONNECT
            ),
            Err(ConnectError::TimedOut(_))
        ))
    }
}

/// Test 1: edits under a prober from an allowed namespace (zero failures) and one outside every
/// list (zero successes); then removing the prober's range blocks it from the end of the call.
#[test]
fn live_edits_keep_allowed_sources_and_never_pass_outside_ones() -> Result<()> {
    let s = Scene::new(&[VPC_V4, VPC_V6])?;
    let targets = |_| {
        Ip::BOTH
            .map(|ip| s.topo.server.sock(ip, SERVE_HTTP))
            .to_vec()
    };
    let counters_before = s.agent.counters()?;
    let inside = Prober::start(&s.topo.inside.ns, targets(()), ProbeKind::Http)?;
    let outside = Prober::start(&s.topo.outside.ns, targets(()), ProbeKind::Connect)?;
    inside.wait_probes(PROBES_BETWEEN_EDITS, PROGRESS)?;

    let big: String = (0..BIG_LIST)
        .map(|i| format!("10.{}.{}.0/24\n", 100 + i / 256, i % 256))
        .collect();
    let edits: Vec<Box<dyn Fn() -> Result<()>>> = vec![
        Box::new(|| {
            cli_ok(
                &s.agent,
                &[
                    "cidr",
                    "add",
                    "10.1.0.0/16",
                    "172.16.0.0/12",
                    "fd00:aa::/32",
                ],
            )
            .map(drop)
        }),
        Box::new(|| cli_ok(&s.agent, &["cidr", "remove", "10.1.0.0/16", "fd00:aa::/32"]).map(drop)),
        // A narrower range that still holds the prober, and the v6 range unchanged.
        Box::new(|| {
            cli_ok_stdin(
                &s.agent,
                &["cidr", "replace", "-f", "-"],
                format!("198.18.0.0/26\n172.20.0.0/16\n{VPC_V6}\n").as_bytes(),
            )
            .map(drop)
        }),
        // A big list in one change: a long map update, add before remove.
        Box::new(|| {
            let text = format!("{VPC_V4}\n{VPC_V6}\n{big}");
            cli_ok_stdin(&s.agent, &["cidr", "replace", "-f", "-"], text.as_bytes()).map(drop)
        }),
        // Back to a small list, written to the file the way an editor does.
        Box::new(|| {
            let before = revision(&s.agent)?;
            write_by_rename(
                &s.agent.files().cidr_file,
                &format!("# ops\n{VPC_V4}\n{VPC_V6}\n10.2.0.0/16\n"),
            )?;
            wait_revision(&s.agent, before + 1)
        }),
    ];
    for edit in &edits {
        edit()?;
        inside.wait_probes(PROBES_BETWEEN_EDITS, PROGRESS)?;
        outside.wait_probes(PROBES_BETWEEN_EDITS, PROGRESS)?;
    }
    let inside = inside.finish()?;
    let outside = outside.finish()?;
    eprintln!("inside prober: {inside:?}\noutside prober: {outside:?}");
    ensure!(
        inside.blocked.is_empty() && inside.passed > 0,
        "the allowed prober was blocked during live edits ({} of {} probes passed): {:?}",
        inside.passed,
        inside.probes,
        inside.blocked
    );
    ensure!(
        outside.passed == 0 && outside.probes > 0,
        "the outside prober got through {} of {} times",
        outside.passed,
        outside.probes
    );
    // Each outside probe is one SYN; every one of them must have met the drop verdict.
    let dropped = s.agent.counters()?.since(&counters_before);
    let dropped = [Family::Ipv4, Family::Ipv6]
        .map(|f| dropped.packets(Reason::DropOutsideVpc, f))
        .iter()
        .sum::<u64>();
    ensure!(
        dropped >= outside.probes,
        "{} outside probes but only {dropped} drops counted",
        outside.probes
    );
    ensure!(
        attached_cidrs(&s.topo.server.ns, IFACE)? == as_allowed(&listed_cidrs(&s.agent)?)?,
        "the maps and the list disagree"
    );

    // The prober's ranges leave the list: from the end of the call, its SYNs are dropped.
    cli_ok(&s.agent, &["cidr", "remove", VPC_V4, VPC_V6])?;
    for ip in Ip::BOTH {
        ensure!(
            s.inside_dropped(ip)?,
            "{}: the removed source still got an answer",
            ip.name()
        );
    }
    Ok(())
}

/// Test 3 (rename): an editor-style replacement of the file applies, in both directions.
#[test]
fn an_edit_by_rename_applies() -> Result<()> {
    let s = Scene::new(&[VPC_V6, "10.0.0.0/8"])?;
    ensure!(s.inside_dropped(Ip::V4)?, "not in the list yet, yet served");
    let file = s.agent.files().cidr_file.clone();

    write_by_rename(&file, &format!("{VPC_V4}\n{VPC_V6}\n"))?;
    wait_revision(&s.agent, 2)?;
    ensure!(s.inside_gets(Ip::V4)?, "added by rename, yet not served");

    write_by_rename(&file, &format!("{VPC_V6}\n"))?;
    wait_revision(&s.agent, 3)?;
    ensure!(s.inside_dropped(Ip::V4)?, "removed by rename, yet served");
    ensure!(
        s.inside_gets(Ip::V6)?,
        "the range that stayed is no longer served"
    );
    Ok(())
}

/// Test 3 (ConfigMap): the kubelet's update, a new timestamped folder and an atomic swap of the
/// `..data` symlink, applies.
#[test]
fn a_configmap_symlink_swap_applies() -> Result<()> {
    let mount = tempfile::Builder::new().prefix("sg-configmap-").tempdir()?;
    let m = mount.path();
    let first = m.join("..2026_11_21_00_00_00.000000001");
    std::fs::create_dir(&first)?;
    std::fs::write(first.join("vpc-cidrs"), format!("{VPC_V6}\n10.0.0.0/8\n"))?;
    std::os::unix::fs::symlink(first.file_name().unwrap(), m.join("..data"))?;
    std::os::unix::fs::symlink("..data/vpc-cidrs", m.join("vpc-cidrs"))?;
    let cidr_file = m.join("vpc-cidrs").display().to_string();
    let s = Scene::with(|c| c.set("cidr_file", cidr_file.as_str()))?;
    ensure!(s.inside_dropped(Ip::V4)?, "not in the list yet, yet served");

    let second = m.join("..2026_11_21_00_05_00.000000002");
    std::fs::create_dir(&second)?;
    std::fs::write(second.join("vpc-cidrs"), format!("{VPC_V4}\n{VPC_V6}\n"))?;
    std::os::unix::fs::symlink(second.file_name().unwrap(), m.join("..data_tmp"))?;
    std::fs::rename(m.join("..data_tmp"), m.join("..data"))?;
    std::fs::remove_dir_all(&first)?;

    wait_revision(&s.agent, 2)?;
    ensure!(s.inside_gets(Ip::V4)?, "swapped in, yet not served");
    ensure!(
        attached_cidrs(&s.topo.server.ns, IFACE)? == [VPC_V4, VPC_V6].map(str::to_owned).into(),
        "the maps do not hold the swapped-in list"
    );
    Ok(())
}

/// The state a bad change must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    file: Vec<u8>,
    listing: serde_json::Value,
    maps: std::collections::BTreeSet<String>,
}

fn snapshot(s: &Scene) -> Result<Snapshot> {
    Ok(Snapshot {
        file: std::fs::read(&s.agent.files().cidr_file)?,
        listing: listing(&s.agent)?,
        maps: attached_cidrs(&s.topo.server.ns, IFACE)?,
    })
}

/// Test 4: bad input gets a clear error and changes neither the file nor the maps.
#[test]
fn bad_input_changes_neither_file_nor_maps() -> Result<()> {
    let s = Scene::new(&[VPC_V4, VPC_V6])?;
    cli_ok(&s.agent, &["cidr", "add", "10.0.0.0/8"])?;
    let before = snapshot(&s)?;
    let dir = s.agent.files().dir().to_owned();
    let file = |name: &str, text: &str| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    // One more than the maps of a default `max_cidrs` hold.
    let over: String = (0..=serve_guard_common::trie::DEFAULT_CIDRS_PER_FAMILY)
        .map(|i| format!("{}/32\n", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let bad_line = file("bad.txt", "10.0.0.0/8\n\nnot-a-cidr/8\n")?;
    let empty = file("empty.txt", "# nothing here\n\n")?;
    let too_many = file("over.txt", &over)?;
    let rev = revision(&s.agent)?.to_string();
    let stale = (revision(&s.agent)? - 1).to_string();

    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["cidr", "add", "10.9.0.0/16", "10.300.0.0/16", "fd00:1::/32"],
            &["argument 2", "10.300.0.0/16"],
        ),
        (
            &["cidr", "replace", "-f", &bad_line],
            &["bad.txt", "line 3", "not-a-cidr/8"],
        ),
        (&["cidr", "replace", "-f", &empty], &["empty"]),
        (
            &["cidr", "replace", "-f", &too_many],
            &["65537 IPv4", "65536"],
        ),
        (
            &["cidr", "add", "10.9.0.0/16", "--if-revision", &stale],
            &[
                &format!("against revision {stale}"),
                &format!("at revision {rev}"),
            ],
        ),
        (
            &["cidr", "remove", "10.9.0.0/16"],
            &["10.9.0.0/16 is not in the list"],
        ),
    ];
    for (args, expected) in cases {
        let stderr = cli_err(&s.agent, args)?;
        for needle in expected {
            ensure!(
                stderr.contains(needle),
                "`{}`: the error does not say {needle:?}:\n{stderr}",
                args.join(" ")
            );
        }
        ensure!(
            snapshot(&s)? == before,
            "`{}` changed the list",
            args.join(" ")
        );
    }
    // Removing every range would leave an empty list.
    let stderr = cli_err(&s.agent, &["cidr", "remove", VPC_V4, VPC_V6, "10.0.0.0/8"])?;
    ensure!(stderr.contains("empty"), "{stderr}");
    ensure!(snapshot(&s)? == before, "emptying the list changed it");
    ensure!(
        s.inside_gets(Ip::V4)?,
        "the list still holds the inside client"
    );

    // An invalid edit of the file itself: the watcher logs and counts it, the old list stays.
    let file = s.agent.files().cidr_file.clone();
    write_by_rename(&file, &format!("{VPC_V4}\n{VPC_V6}\n10.0.0.0/8\nbogus/8\n"))?;
    wait_for("the watcher to refuse the edit", limits::CLI, || {
        Ok(apply_errors(&s)? >= 1.0)
    })?;
    let after = snapshot(&s)?;
    ensure!(
        after.listing == before.listing && after.maps == before.maps,
        "an invalid edit on disk changed the list"
    );
    ensure!(
        s.agent.logs().contains("line 4: `bogus/8`"),
        "the log does not name the bad line:\n{}",
        s.agent.logs()
    );
    Ok(())
}

/// `serve_guard_cidr_apply_errors_total` from the agent's metrics (default listen address).
fn apply_errors(s: &Scene) -> Result<f64> {
    const SERIES: &str = "serve_guard_cidr_apply_errors_total ";
    let r = probe::http_request(&s.topo.server.ns, METRICS.parse()?, "/metrics", &[])?;
    r.body_text()
        .lines()
        .find_map(|l| l.strip_prefix(SERIES)?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {SERIES}in the scrape"))
}

/// Test 5: two `cidr add` at the same time, through the agent and with no agent: both applied.
#[test]
fn concurrent_adds_are_both_applied() -> Result<()> {
    let mut s = Scene::new(&[VPC_V4, VPC_V6])?;
    let add_both = |s: &Scene, a: &'static str, b: &'static str| -> Result<()> {
        std::thread::scope(|scope| {
            let calls =
                [a, b].map(|cidr| scope.spawn(move || cli_ok(&s.agent, &["cidr", "add", cidr])));
            calls
                .into_iter()
                .map(|c| c.join().expect("CLI thread panicked").map(drop))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    };

    add_both(&s, "10.10.0.0/16", "fd00:10::/32")?;
    ensure!(revision(&s.agent)? == 3, "two changes, two revisions");
    let listed = listed_cidrs(&s.agent)?;
    ensure!(
        listed.contains("10.10.0.0/16") && listed.contains("fd00:10::/32"),
        "a change was lost: {listed:?}"
    );
    ensure!(
        attached_cidrs(&s.topo.server.ns, IFACE)? == as_allowed(&listed)?,
        "the maps lost a change"
    );

    // No agent: both edit the file under the lock; the restarted agent applies both.
    s.agent.kill9()?;
    add_both(&s, "10.20.0.0/16", "10.30.0.0/16")?;
    let text = std::fs::read_to_string(&s.agent.files().cidr_file)?;
    ensure!(
        text.contains("10.20.0.0/16") && text.contains("10.30.0.0/16"),
        "a change to the file was lost:\n{text}"
    );
    s.agent.restart()?;
    ensure!(
        revision(&s.agent)? == 5,
        "the revision did not survive the restart"
    );
    let listed = listed_cidrs(&s.agent)?;
    ensure!(
        attached_cidrs(&s.topo.server.ns, IFACE)? == as_allowed(&listed)?
            && listed.contains("10.30.0.0/16"),
        "the restarted agent did not load both offline changes: {listed:?}"
    );
    wait_for("the inside client to be served", limits::CLI, || {
        s.inside_gets(Ip::V4)
    })?;
    Ok(())
}
