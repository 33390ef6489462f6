//! `serve-guard status [--json]`: mode, interfaces with their XDP mode, ports, CIDR revision and
//! counts, audit flag, pinned state, agent uptime; in public mode the URL, token and API docs
//! links; the paths around the filter and the exposure audit of the node's listeners (who
//! outside the allow-list reaches which, sessions at risk, what the audit cannot see). From the running agent (which also asks Serve for its routes, from its own network
//! namespace), or from the config, the CIDR file and the pins when none runs; then the exit
//! status is 3, as `systemctl is-active` says for an inactive unit.

use super::output::{self, Coded, Exit, outln};
use crate::config::{Config, Mode, Overrides};
use crate::control::client::{Client, ClientError};
use crate::control::public_status::public_status_offline;
use crate::control::{
    CidrSummary, FilterReport, FilterSource, PinnedFilter, PinnedInterface, StatusReport, routes,
};
use crate::filter::{LinkState, PinLayout, PortRun};
use crate::store::Store;
use anyhow::Result;
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn exec(config: &Path, args: Args) -> Result<()> {
    let config = Config::load(config, &Overrides::default())?;
    let report = match Client::new(&config.control_socket)
        .get::<StatusReport>(routes::STATUS)
        .await
    {
        Ok(report) => report,
        Err(ClientError::NotRunning { .. }) => offline(&config)?,
        Err(e) => return Err(e.into()),
    };
    if args.json {
        output::json(&report)?;
    } else {
        print_report(&report);
        if let Some(public) = &report.public {
            outln!("\n{public}");
        }
    }
    if report.agent.is_none() {
        return Err(Coded::error(
            Exit::NotRunning,
            format!("no agent answers on {}", config.control_socket.display()),
        ));
    }
    Ok(())
}

/// What can be known without the agent: the config, the CIDR file, the pins.
fn offline(config: &Config) -> Result<StatusReport> {
    let listing = Store::peek(&config.cidr_file, &config.state_dir, config.cloud.is_some())?;
    let public = match config.mode {
        Mode::Public => Some(public_status_offline(
            &config.public.clone().unwrap_or_default(),
        )),
        Mode::Private => None,
    };
    let (exposures, exposures_error) = match crate::node::scan(&config.interfaces) {
        Ok(found) => (found, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    // Against the list on disk: what the filter will hold once an agent applies it.
    let (listener_audit, listener_audit_error) =
        match crate::cidr::CidrList::new(listing.cidrs.iter().copied()) {
            Ok(list) => match crate::node::listeners::audit(&config.ports, &list, config.audit) {
                Ok(audit) => (Some(audit), None),
                Err(e) => (None, Some(e.to_string())),
            },
            Err(e) => (None, Some(format!("the CIDR list: {e}"))),
        };
    Ok(StatusReport {
        mode: config.mode,
        agent: None,
        cidrs: CidrSummary {
            file: config.cidr_file.display().to_string(),
            revision: listing.revision,
            ipv4: listing.ipv4,
            ipv6: listing.ipv6,
            from_file: listing.file.as_ref().map_or(listing.cidrs.len(), Vec::len),
            from_cloud: listing.cloud.as_ref().map_or(0, |c| c.cidrs.len()),
            cloud: listing.cloud.map(|c| c.status),
        },
        filter: pinned_filter(config),
        public,
        exposures,
        exposures_error,
        listener_audit,
        listener_audit_error,
    })
}

/// The filter as the config and the pins describe it: the rules the config asks for, the links
/// pinned under `pin_dir` as the kernel reports them.
fn pinned_filter(config: &Config) -> FilterReport {
    let layout = PinLayout::new(&config.pin_dir);
    let interfaces = layout
        .links()
        .unwrap_or_default()
        .into_iter()
        .map(|link| {
            let state = LinkState::of_entry(&link).ok();
            PinnedInterface {
                name: link.interface,
                mode: link.mode,
                link_id: state.map(|s| s.link_id),
                program_id: state.map(|s| s.program_id),
                attached: state.is_some_and(|s| s.ifindex != 0),
                slot: None,
            }
        })
        .chain(
            crate::filter::dispatcher::slots(&layout, &config.interfaces)
                .into_iter()
                .map(|(name, slot)| PinnedInterface {
                    name,
                    mode: slot.mode,
                    link_id: None,
                    program_id: Some(slot.program_id),
                    attached: true,
                    slot: Some(slot),
                }),
        )
        .collect();
    FilterReport {
        ports: config.serve_ports.clone(),
        guard: config.ports.guard,
        port_classes: PortRun::of(&config.ports),
        audit: config.audit,
        pin_dir: config.pin_dir.clone(),
        source: FilterSource::Pins(PinnedFilter {
            pinned: layout.exists(),
            interfaces,
        }),
    }
}

/// Where serve-guard runs in a libxdp dispatcher, and who sees packets before it.
fn describe_slot(interface: &str, slot: &crate::filter::dispatcher::Slot) -> String {
    let program = |p: &crate::filter::libxdp::ProgramEntry| {
        format!(
            "{} (id {}, priority {}, chain goes on after {})",
            p.name,
            p.id,
            p.run_prio,
            p.chain_call.join("/")
        )
    };
    let before = if slot.before.is_empty() {
        "serve-guard runs first".to_owned()
    } else {
        format!(
            "before serve-guard: {} (they see every packet first)",
            slot.before
                .iter()
                .map(program)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let after = if slot.after.is_empty() {
        String::new()
    } else {
        format!(
            "; after it: {}",
            slot.after
                .iter()
                .map(program)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "{interface}: libxdp dispatcher {} slot, program {} priority {}, chain goes on after {}; {before}{after}",
        slot.dispatcher_id,
        slot.program_id,
        slot.run_prio,
        slot.chain_call.join("/")
    )
}

/// The port classes in one line: the strict and the open ports, and the class of the rest.
fn describe_ports(runs: &[PortRun]) -> String {
    use crate::ports::{PortClass, format_range};
    let of = |class: PortClass| -> Vec<String> {
        runs.iter()
            .filter(|r| r.class == class)
            .map(|r| format_range(&(r.from..=r.to)))
            .collect()
    };
    let count = |class: PortClass| -> u32 {
        runs.iter()
            .filter(|r| r.class == class)
            .map(|r| u32::from(r.to - r.from) + 1)
            .sum()
    };
    let list = |class| {
        let ports = of(class);
        if ports.is_empty() {
            "none".to_owned()
        } else {
            ports.join(", ")
        }
    };
    // The largest class is "the rest": named, not listed.
    let rest = [PortClass::Guarded, PortClass::Open]
        .into_iter()
        .max_by_key(|&c| count(c))
        .unwrap_or(PortClass::Open);
    let other = if rest == PortClass::Guarded {
        PortClass::Open
    } else {
        PortClass::Guarded
    };
    format!(
        "strict (Serve): {}; {other}: {}; every other port {rest}",
        list(PortClass::Strict),
        list(other)
    )
}

fn print_report(r: &StatusReport) {
    let f = &r.filter;
    outln!("mode:        {}", r.mode);
    match &r.agent {
        Some(a) => outln!(
            "agent:       running (pid {}, version {}, up {})",
            a.pid,
            a.version,
            uptime(a.uptime_seconds)
        ),
        None => outln!(
            "agent:       not running{}",
            if f.pinned() {
                " (the pinned filter keeps filtering with the last list)"
            } else {
                ""
            }
        ),
    }
    let interfaces: Vec<String> = f
        .interfaces()
        .into_iter()
        .map(|(name, mode, gone)| {
            let gone = if gone { ", interface gone" } else { "" };
            if mode.is_xdp() {
                return format!("{name} ({mode} XDP{gone})");
            }
            let holder = crate::filter::tc::XdpHolder::of(crate::filter::tc::ifindex(name))
                .map_or_else(
                    || "the XDP hook is free again: a restart moves the filter there".to_owned(),
                    |h| format!("XDP is held by {h}, outside libxdp's protocol"),
                );
            format!("{name} (TC ingress, {mode}: {holder}{gone})")
        })
        .collect();
    outln!(
        "interfaces:  {}",
        if interfaces.is_empty() {
            "none".to_owned()
        } else {
            interfaces.join(", ")
        }
    );
    let slots: Vec<(&str, &crate::filter::dispatcher::Slot)> = match &f.source {
        FilterSource::Agent(running) => running
            .interfaces
            .iter()
            .filter_map(|i| Some((i.name.as_str(), i.slot.as_ref()?)))
            .collect(),
        FilterSource::Pins(pins) => pins
            .interfaces
            .iter()
            .filter_map(|i| Some((i.name.as_str(), i.slot.as_ref()?)))
            .collect(),
    };
    for (name, slot) in slots {
        outln!("dispatcher:  {}", describe_slot(name, slot));
    }
    outln!("ports:       {}", describe_ports(&f.port_classes));
    outln!(
        "CIDRs:       revision {}: {} IPv4 and {} IPv6 ({})",
        r.cidrs.revision,
        r.cidrs.ipv4,
        r.cidrs.ipv6,
        r.cidrs.file
    );
    if let Some(cloud) = &r.cidrs.cloud {
        outln!("cloud:       {}", describe_cloud(cloud, r.cidrs.from_cloud));
    }
    outln!(
        "audit:       {}",
        if f.audit {
            "on (would-be drops are counted and passed)"
        } else {
            "off"
        }
    );
    let pin_dir = f.pin_dir.display();
    let pinned = if r.agent.is_some() || f.pinned() {
        format!("yes, under {pin_dir}")
    } else {
        format!("no (nothing under {pin_dir})")
    };
    outln!("pinned:      {pinned}");
    if let Some(e) = &r.exposures_error {
        outln!("warning:     {e}");
    }
    for exposure in &r.exposures {
        outln!("warning:     {exposure}");
    }
    if let Some(e) = &r.listener_audit_error {
        outln!("warning:     cannot audit the node's listeners: {e}");
    }
    if let Some(audit) = &r.listener_audit {
        outln!(
            "listeners:   {} beyond loopback, {} reachable from outside the allow-list{}, {} session(s) at risk",
            audit.listeners.len(),
            audit.reachable().count(),
            if audit.audit_mode {
                format!(
                    " (audit mode; enforcing would close {})",
                    audit.listeners.iter().filter(|l| l.would_close).count()
                )
            } else {
                String::new()
            },
            audit.sessions_at_risk.len()
        );
        for warning in audit.warnings() {
            outln!("warning:     {warning}");
        }
    }
}

/// One line on the cloud's part of the list: provider, age of the answer in force, errors.
pub(super) fn describe_cloud(cloud: &crate::store::CloudStatus, ranges: usize) -> String {
    let now = crate::store::unix_now();
    let mut out = match (cloud.provider, cloud.age_secs(now)) {
        (Some(p), Some(age)) => format!("{p}: {ranges} range(s), answer {} old", uptime(age)),
        _ => "no answer from the cloud yet".to_owned(),
    };
    if cloud.refresh_interval_secs > 0 {
        out.push_str(&format!(
            ", refreshed every {}",
            uptime(cloud.refresh_interval_secs)
        ));
    }
    if let Some(error) = &cloud.last_error {
        let ago = cloud
            .last_attempt_unix
            .map(|t| uptime(now.saturating_sub(t)))
            .unwrap_or_default();
        out.push_str(&format!(
            "; the last refresh ({ago} ago) failed, the last good list stays: {error}"
        ));
    }
    if cloud.errors > 0 {
        out.push_str(&format!(
            "; {} failed refresh(es) since start",
            cloud.errors
        ));
    }
    for warning in &cloud.warnings {
        out.push_str(&format!("; warning: {warning}"));
    }
    out
}

fn uptime(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s >= DAY => format!("{}d {}h", s / DAY, s % DAY / HOUR),
        s if s >= HOUR => format!("{}h {}m", s / HOUR, s % HOUR / MINUTE),
        s if s >= MINUTE => format!("{}m {}s", s / MINUTE, s % MINUTE),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::control::RunningFilter;
    use crate::control::public_status::PublicStatus;
    use crate::filter::{AttachMode, AttachedInterface};
    use crate::ports::{Guard, PortClass};
    use serde_json::json;

    #[test]
    fn the_agents_public_part_prints_as_text() {
        let agent = json!({
            "user_service_url": "https://serve.example.com",
            "token_file": "/etc/serve-guard/token",
            "token": "T0K",
            "docs_links": [{"route": "/echo", "app": "echo", "url": "https://serve.example.com/echo/docs?token=T0K"}],
        });
        let text = serde_json::from_value::<PublicStatus>(agent)
            .unwrap()
            .to_string();
        assert!(
            text.contains("user service URL: https://serve.example.com"),
            "{text}"
        );
        assert!(
            text.contains("/echo  https://serve.example.com/echo/docs?token=T0K"),
            "{text}"
        );
    }

    fn rules(source: FilterSource) -> FilterReport {
        FilterReport {
            ports: vec![8000],
            guard: Guard::Node,
            port_classes: vec![PortRun {
                from: 0,
                to: 65535,
                class: PortClass::Guarded,
            }],
            audit: false,
            pin_dir: "/sys/fs/bpf/serve-guard".into(),
            source,
        }
    }

    /// `status --json` prints the filter part with the field names and shapes the untyped JSON
    /// had: the running agent's and, without one, the pins', each read back as what it was.
    #[test]
    fn the_filter_part_keeps_its_json_shape_from_either_source() {
        let common = |extra: serde_json::Value| {
            let mut object = json!({
                "ports": [8000],
                "guard": "node",
                "port_classes": [{"from": 0, "to": 65535, "class": "guarded"}],
                "audit": false,
                "pin_dir": "/sys/fs/bpf/serve-guard",
            });
            object
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            object
        };
        let running = rules(FilterSource::Agent(RunningFilter {
            interfaces: vec![AttachedInterface {
                name: "eth0".into(),
                ifindex: 2,
                mode: AttachMode::Driver,
                link_id: 7,
                adopted: true,
                slot: None,
                xdp_held_by: None,
            }],
            program_log: false,
            program_id: 42,
            cidrs_v4: 3,
            cidrs_v6: 1,
        }));
        let running_json = common(json!({
            "interfaces": [{"name": "eth0", "ifindex": 2, "mode": "driver", "link_id": 7, "adopted": true}],
            "program_log": false,
            "program_id": 42,
            "cidrs_v4": 3,
            "cidrs_v6": 1,
        }));
        let pinned = rules(FilterSource::Pins(PinnedFilter {
            pinned: true,
            interfaces: vec![
                PinnedInterface {
                    name: "eth0".into(),
                    mode: AttachMode::Skb,
                    link_id: Some(7),
                    program_id: Some(42),
                    attached: true,
                    slot: None,
                },
                PinnedInterface {
                    name: "eth1".into(),
                    mode: AttachMode::Driver,
                    link_id: None,
                    program_id: None,
                    attached: false,
                    slot: None,
                },
            ],
        }));
        let pinned_json = common(json!({
            "pinned": true,
            "interfaces": [
                {"name": "eth0", "mode": "skb", "link_id": 7, "program_id": 42, "attached": true},
                {"name": "eth1", "mode": "driver", "link_id": null, "program_id": null, "attached": false},
            ],
        }));
        for (report, expected) in [(running, running_json), (pinned, pinned_json)] {
            assert_eq!(serde_json::to_value(&report).unwrap(), expected);
            assert_eq!(
                serde_json::from_value::<FilterReport>(expected).unwrap(),
                report
            );
        }
    }

    #[test]
    fn the_interfaces_say_when_one_is_gone() {
        let report = rules(FilterSource::Pins(PinnedFilter {
            pinned: false,
            interfaces: vec![PinnedInterface {
                name: "eth1".into(),
                mode: AttachMode::Driver,
                link_id: None,
                program_id: None,
                attached: false,
                slot: None,
            }],
        }));
        assert_eq!(
            report.interfaces(),
            vec![("eth1", AttachMode::Driver, true)]
        );
        assert!(!report.pinned());
    }

    #[test]
    fn without_an_agent_there_are_no_docs_links_from_here() {
        let status = public_status_offline(&serve_guard_proxy::config::PublicConfig::default());
        assert!(status.docs_links.is_empty());
        assert!(
            status
                .routes_error
                .as_deref()
                .is_some_and(|e| e.contains("no agent is running")),
            "{status:?}"
        );
    }
}
