//! `serve-guard status [--json]`: mode, interfaces with their XDP mode, ports, CIDR revision and
//! counts, audit flag, pinned state, agent uptime; in public mode the URL, token and API docs
//! links; the paths around the filter and the exposure audit of the node's listeners (who
//! outside the allow-list reaches which, sessions at risk, what the audit cannot see). From the running agent (which also asks Serve for its routes, from its own network
//! namespace), or from the config, the CIDR file and the pins when none runs; then the exit
//! status is 3, as `systemctl is-active` says for an inactive unit.

use super::output::{self, Coded, Exit, outln};
use crate::config::{Config, Mode, Overrides};
use crate::control::client::{Client, ClientError};
use crate::control::{CidrSummary, StatusReport, routes};
use crate::filter::{LinkState, PinLayout};
use crate::proxy::status::{PublicStatus, public_status_offline};
use crate::store::Store;
use anyhow::Result;
use serde_json::{Value, json};
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
        match report.public.as_ref().map(public_text) {
            Some(Ok(text)) => outln!("\n{text}"),
            Some(Err(e)) => outln!("\npublic mode: {e}"),
            None => {}
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

/// The agent's public part as text; its `error` when it could not build one.
fn public_text(public: &Value) -> Result<String, String> {
    if let Some(e) = public.get("error") {
        return Err(e.as_str().unwrap_or("unknown error").to_owned());
    }
    serde_json::from_value::<PublicStatus>(public.clone())
        .map(|p| p.to_string())
        .map_err(|e| format!("unexpected answer from the agent ({e})"))
}

/// What can be known without the agent: the config, the CIDR file, the pins.
fn offline(config: &Config) -> Result<StatusReport> {
    let listing = Store::peek(&config.cidr_file, &config.state_dir)?;
    let layout = PinLayout::new(&config.pin_dir);
    let links = layout.links().unwrap_or_default();
    let interfaces: Vec<Value> = links
        .iter()
        .map(|l| {
            let state = LinkState::read(&l.path).ok();
            json!({
                "name": l.interface,
                "mode": l.mode.name(),
                "link_id": state.map(|s| s.link_id),
                "program_id": state.map(|s| s.program_id),
                "attached": state.is_some_and(|s| s.ifindex != 0),
            })
        })
        .collect();
    let public = match config.mode {
        Mode::Public => {
            let public = config.public.clone().unwrap_or_default();
            Some(serde_json::to_value(public_status_offline(&public))?)
        }
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
        mode: config.mode.name().to_owned(),
        agent: None,
        cidrs: CidrSummary {
            file: config.cidr_file.display().to_string(),
            revision: listing.revision,
            ipv4: listing.ipv4,
            ipv6: listing.ipv6,
        },
        filter: json!({
            "pinned": layout.exists(),
            "pin_dir": config.pin_dir,
            "interfaces": interfaces,
            "ports": config.serve_ports,
            "guard": config.ports.guard,
            "port_classes": crate::filter::PortRun::of(&config.ports),
            "audit": config.audit,
        }),
        public,
        exposures,
        exposures_error,
        listener_audit,
        listener_audit_error,
    })
}

/// The port classes in one line: the strict and the open ports, and the class of the rest.
fn describe_ports(runs: &[crate::filter::PortRun]) -> String {
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
        if ports.is_empty() { "none".to_owned() } else { ports.join(", ") }
    };
    // The largest class is "the rest": named, not listed.
    let rest = [PortClass::Guarded, PortClass::Open]
        .into_iter()
        .max_by_key(|&c| count(c))
        .unwrap_or(PortClass::Open);
    let other = if rest == PortClass::Guarded { PortClass::Open } else { PortClass::Guarded };
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
            if f["pinned"] == json!(true) {
                " (the pinned filter keeps filtering with the last list)"
            } else {
                ""
            }
        ),
    }
    let interfaces: Vec<String> = f["interfaces"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    let mut s = format!(
                        "{} ({} XDP",
                        i["name"].as_str().unwrap_or("?"),
                        i["mode"].as_str().unwrap_or("?")
                    );
                    if i["attached"] == json!(false) {
                        s.push_str(", interface gone");
                    }
                    s.push(')');
                    s
                })
                .collect()
        })
        .unwrap_or_default();
    outln!(
        "interfaces:  {}",
        if interfaces.is_empty() {
            "none".to_owned()
        } else {
            interfaces.join(", ")
        }
    );
    let runs: Vec<crate::filter::PortRun> =
        serde_json::from_value(f["port_classes"].clone()).unwrap_or_default();
    outln!("ports:       {}", describe_ports(&runs));
    outln!(
        "CIDRs:       revision {}: {} IPv4 and {} IPv6 ({})",
        r.cidrs.revision,
        r.cidrs.ipv4,
        r.cidrs.ipv6,
        r.cidrs.file
    );
    outln!(
        "audit:       {}",
        if f["audit"] == json!(true) {
            "on (would-be drops are counted and passed)"
        } else {
            "off"
        }
    );
    let pin_dir = f["pin_dir"].as_str().unwrap_or("?");
    let pinned = match (&r.agent, f["pinned"].as_bool()) {
        (Some(_), _) | (None, Some(true)) => format!("yes, under {pin_dir}"),
        (None, _) => format!("no (nothing under {pin_dir})"),
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

    #[test]
    fn the_agents_public_part_prints_as_text() {
        let agent = json!({
            "user_service_url": "https://serve.example.com",
            "token_file": "/etc/serve-guard/token",
            "token": "T0K",
            "docs_links": [{"route": "/echo", "app": "echo", "url": "https://serve.example.com/echo/docs?token=T0K"}],
        });
        let text = public_text(&agent).unwrap();
        assert!(
            text.contains("user service URL: https://serve.example.com"),
            "{text}"
        );
        assert!(
            text.contains("/echo  https://serve.example.com/echo/docs?token=T0K"),
            "{text}"
        );
        assert_eq!(
            public_text(&json!({"error": "token file unreadable"})).unwrap_err(),
            "token file unreadable"
        );
    }

    #[test]
    fn without_an_agent_there_are_no_docs_links_from_here() {
        let status = public_status_offline(&crate::config::public::PublicConfig::default());
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
