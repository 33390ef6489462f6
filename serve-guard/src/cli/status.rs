//! `serve-guard status [--json]`: mode, interfaces with their XDP mode, ports, CIDR revision and
//! counts, audit flag, pinned state, agent uptime; in public mode the URL, token and API docs
//! links. From the running agent, or from the config, the CIDR file and the pins when none runs.

use crate::config::{Config, Mode, Overrides};
use crate::control::client::{Client, ClientError};
use crate::control::{CidrSummary, StatusReport, routes};
use crate::filter::{LinkState, PinLayout};
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
    let mut report = match Client::new(&config.control_socket)
        .get::<StatusReport>(routes::STATUS)
        .await
    {
        Ok(report) => report,
        Err(ClientError::NotRunning { .. }) => offline(&config)?,
        Err(e) => return Err(e.into()),
    };
    let public = match config.mode {
        Mode::Public => {
            let public = config.public.clone().unwrap_or_default();
            Some(crate::proxy::status::public_status(&public).await)
        }
        Mode::Private => None,
    };
    if args.json {
        if report.public.is_none()
            && let Some(p) = &public
        {
            report.public = Some(match p {
                Ok(p) => serde_json::to_value(p)?,
                Err(e) => json!({ "error": format!("{e:#}") }),
            });
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&report);
    match public {
        Some(Ok(p)) => println!("\n{p}"),
        Some(Err(e)) => println!("\npublic mode: {e:#}"),
        None => {}
    }
    Ok(())
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
    let (exposures, exposures_error) = match crate::node::scan(&config.interfaces) {
        Ok(found) => (found, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
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
            "audit": config.audit,
        }),
        public: None,
        exposures,
        exposures_error,
    })
}

fn print_report(r: &StatusReport) {
    let f = &r.filter;
    println!("mode:        {}", r.mode);
    match &r.agent {
        Some(a) => println!(
            "agent:       running (pid {}, version {}, up {})",
            a.pid,
            a.version,
            uptime(a.uptime_seconds)
        ),
        None => println!(
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
    println!(
        "interfaces:  {}",
        if interfaces.is_empty() {
            "none".to_owned()
        } else {
            interfaces.join(", ")
        }
    );
    let ports: Vec<String> = f["ports"]
        .as_array()
        .map(|p| p.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    println!("ports:       {}", ports.join(", "));
    println!(
        "CIDRs:       revision {}: {} IPv4 and {} IPv6 ({})",
        r.cidrs.revision, r.cidrs.ipv4, r.cidrs.ipv6, r.cidrs.file
    );
    println!(
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
    println!("pinned:      {pinned}");
    if let Some(e) = &r.exposures_error {
        println!("warning:     {e}");
    }
    for exposure in &r.exposures {
        println!("warning:     {exposure}");
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
