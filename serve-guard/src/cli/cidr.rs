//! `serve-guard cidr list|add|remove|replace|discover`: the VPC allow-list, through the running
//! agent's control socket, or straight on the file (same validation, same atomic write, same
//! lock) when no agent runs. `discover` asks the cloud and changes nothing.

use super::output::{self, outln};
use crate::config::{Config, Overrides};
use crate::control::client::{Client, ClientError};
use crate::control::{CidrsRequest, ReplaceRequest, routes};
use crate::store::{Change, Listing, Outcome, Store};
use anyhow::{Context as _, Result};
use clap::Subcommand;
use hyper::Method;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// How long a change waits for a starting agent (lock held, socket not yet answering).
const AGENT_START_WAIT: Duration = Duration::from_secs(30);
const AGENT_START_POLL: Duration = Duration::from_millis(50);
/// Largest list file `replace` reads (the agent applies the same limit to the CIDR file).
const MAX_REPLACE_BYTES: u64 = crate::cidr::MAX_FILE_BYTES;
/// How many added and removed entries a change's summary names (`--verbose`: all of them).
const SUMMARY_ENTRIES: usize = 5;

/// How a change reports what it did.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Report {
    /// Print the outcome as JSON (every added and removed entry).
    #[arg(long)]
    json: bool,
    /// Name every added and removed entry, not only the first few.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Show the list and its revision.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add CIDRs (a bare address is a /32 or /128). All or nothing.
    Add {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Refuse the change unless the list is at revision N.
        #[arg(long, value_name = "N")]
        if_revision: Option<u64>,
        /// Accept an entry that allows every source (`0.0.0.0/0`, `::/0`).
        #[arg(long)]
        allow_everyone: bool,
        #[command(flatten)]
        report: Report,
    },
    /// Remove CIDRs; each must be in the list, and the list cannot become empty. All or nothing.
    Remove {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Refuse the change unless the list is at revision N.
        #[arg(long, value_name = "N")]
        if_revision: Option<u64>,
        #[command(flatten)]
        report: Report,
    },
    /// Ask the cloud for the VPC's ranges and show how they differ from the list in force;
    /// changes nothing. Works with no agent running and without `[cloud]` in the config.
    Discover {
        /// Ask this cloud (aws, gcp, azure) instead of `[cloud] provider` (default: detect).
        #[arg(long, value_name = "PROVIDER")]
        provider: Option<crate::config::cloud::Provider>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the whole list with a CIDR file (one CIDR per line, `#` comments; `-` = stdin).
    Replace {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Refuse the change unless the list is at revision N.
        #[arg(long, value_name = "N")]
        if_revision: Option<u64>,
        /// Accept an entry that allows every source (`0.0.0.0/0`, `::/0`).
        #[arg(long)]
        allow_everyone: bool,
        #[command(flatten)]
        report: Report,
    },
}

pub async fn exec(config: &Path, args: Args) -> Result<()> {
    let config = Config::load(config, &Overrides::default())?;
    let client = Client::new(&config.control_socket);
    let (request, change, guard, source, report) = match args.verb {
        Verb::List { json } => return list(&config, &client, json).await,
        Verb::Discover { provider, json } => {
            return discover(&config, &client, provider, json).await;
        }
        Verb::Add {
            cidrs,
            if_revision,
            allow_everyone,
            report,
        } => (
            Request::new(
                Method::POST,
                routes::CIDRS_ADD,
                &CidrsRequest {
                    cidrs: cidrs.clone(),
                    if_revision,
                    allow_everyone,
                },
            )?,
            Change::Add(cidrs),
            Guard {
                if_revision,
                allow_everyone,
            },
            None,
            report,
        ),
        Verb::Remove {
            cidrs,
            if_revision,
            report,
        } => (
            Request::new(
                Method::POST,
                routes::CIDRS_REMOVE,
                &CidrsRequest {
                    cidrs: cidrs.clone(),
                    if_revision,
                    allow_everyone: false,
                },
            )?,
            Change::Remove(cidrs),
            Guard {
                if_revision,
                allow_everyone: false,
            },
            None,
            report,
        ),
        Verb::Replace {
            file,
            if_revision,
            allow_everyone,
            report,
        } => {
            let (name, text) = read_replacement(&file)?;
            (
                Request::new(
                    Method::PUT,
                    routes::CIDRS,
                    &ReplaceRequest {
                        text: text.clone(),
                        if_revision,
                        allow_everyone,
                    },
                )?,
                Change::Replace(text),
                Guard {
                    if_revision,
                    allow_everyone,
                },
                Some(name),
                report,
            )
        }
    };
    let outcome = finish(&config, &client, &request, change, guard, source.as_deref()).await?;
    if report.json {
        return output::json(&outcome);
    }
    print_outcome(&outcome, report.verbose);
    if !outcome.applied_to_maps {
        outln!(
            "no agent is running: {} is updated and the change applies at the next start",
            config.cidr_file.display()
        );
    }
    Ok(())
}

/// What a change may do beyond its entries.
#[derive(Debug, Clone, Copy)]
struct Guard {
    if_revision: Option<u64>,
    allow_everyone: bool,
}

/// One change request for the agent, kept so it can be sent again while the agent starts.
struct Request {
    method: Method,
    route: &'static str,
    body: serde_json::Value,
}

impl Request {
    fn new(method: Method, route: &'static str, body: &impl serde::Serialize) -> Result<Self> {
        Ok(Request {
            method,
            route,
            body: serde_json::to_value(body)?,
        })
    }

    async fn send(&self, client: &Client) -> Result<Outcome, ClientError> {
        client
            .send(self.method.clone(), self.route, &self.body)
            .await
    }
}

fn read_replacement(file: &Path) -> Result<(String, String)> {
    let mut text = String::new();
    let name = if file == Path::new("-") {
        std::io::stdin()
            .take(MAX_REPLACE_BYTES + 1)
            .read_to_string(&mut text)
            .context("reading the list from stdin")?;
        "<stdin>".to_owned()
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_REPLACE_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("reading {}", file.display()))?;
        file.display().to_string()
    };
    if text.len() as u64 > MAX_REPLACE_BYTES {
        anyhow::bail!("{name} is larger than {MAX_REPLACE_BYTES} bytes");
    }
    Ok((name, text))
}

/// The agent's answer, or, when no agent runs, the change made on the file. An agent that
/// holds its lock but does not answer yet is starting: the CLI waits for it (bounded) rather than
/// edit the file behind its back while it reads it.
async fn finish(
    config: &Config,
    client: &Client,
    request: &Request,
    change: Change,
    guard: Guard,
    source: Option<&str>,
) -> Result<Outcome> {
    // A bad list file is named with its line: "FILE: line 3: ...".
    let name = |e: anyhow::Error| match source {
        Some(name) => e.context(name.to_owned()),
        None => e,
    };
    let deadline = Instant::now() + AGENT_START_WAIT;
    let outcome = loop {
        match request.send(client).await {
            Ok(outcome) => break outcome,
            Err(ClientError::NotRunning { path }) => {
                if !crate::agent::agent_running(&config.state_dir) {
                    let store = Store::open(&config.cidr_file, &config.state_dir)?;
                    store.set_file_allows_everyone(config.allow_everyone);
                    store.set_capacity(config.max_cidrs);
                    break tokio::task::spawn_blocking(move || {
                        store.apply_blocking_with(change, guard.if_revision, guard.allow_everyone)
                    })
                    .await
                    .context("the change worker stopped")?
                    .map_err(|e| name(e.into()))?;
                }
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "an agent is running but has not answered on {} for {}s; nothing was changed",
                        path.display(),
                        AGENT_START_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(AGENT_START_POLL).await;
            }
            Err(e) => return Err(name(e.into())),
        }
    };
    Ok(outcome)
}

/// Counts, then the first few added and removed entries (all of them with `verbose`).
fn print_outcome(o: &Outcome, verbose: bool) {
    for w in &o.warnings {
        eprintln!("warning: {w}");
    }
    let counts = format!("{} IPv4 and {} IPv6 CIDRs", o.ipv4, o.ipv6);
    if o.changed {
        let mut diff = Vec::new();
        if !o.added.is_empty() {
            diff.push(format!("added {}", join(&o.added, verbose)));
        }
        if !o.removed.is_empty() {
            diff.push(format!("removed {}", join(&o.removed, verbose)));
        }
        outln!("revision {}: {counts} ({})", o.revision, diff.join("; "));
    } else {
        outln!(
            "revision {}: {counts} (unchanged: the list already was that)",
            o.revision
        );
    }
}

/// `n: a, b, c` with at most [`SUMMARY_ENTRIES`] entries unless `all`.
fn join(nets: &[ipnet::IpNet], all: bool) -> String {
    let shown = if all {
        nets.len()
    } else {
        nets.len().min(SUMMARY_ENTRIES)
    };
    let mut text = nets[..shown]
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if shown < nets.len() {
        text.push_str(&format!(
            " and {} more (--verbose or --json lists them)",
            nets.len() - shown
        ));
    }
    format!("{}: {text}", nets.len())
}

/// The list in force: the agent's, or the files' when no agent runs (`live` false).
async fn in_force(config: &Config, client: &Client) -> Result<(Listing, bool)> {
    match client.get::<Listing>(routes::CIDRS).await {
        Ok(listing) => Ok((listing, true)),
        Err(ClientError::NotRunning { .. }) => Ok((
            Store::peek(&config.cidr_file, &config.state_dir, config.cloud.is_some())?,
            false,
        )),
        Err(e) => Err(e.into()),
    }
}

async fn list(config: &Config, client: &Client, json: bool) -> Result<()> {
    let (listing, live) = in_force(config, client).await?;
    if json {
        return output::json(&listing);
    }
    outln!(
        "revision {}: {} IPv4 and {} IPv6 CIDRs{}",
        listing.revision,
        listing.ipv4,
        listing.ipv6,
        if live {
            ""
        } else {
            " (from the file; no agent is running)"
        }
    );
    let Some(cloud) = &listing.cloud else {
        for net in &listing.cidrs {
            outln!("{net}");
        }
        return Ok(());
    };
    outln!(
        "{}",
        super::status::describe_cloud(&cloud.status, cloud.cidrs.len())
    );
    let file: std::collections::BTreeSet<_> = listing.file.iter().flatten().collect();
    let from_cloud: std::collections::BTreeSet<_> = cloud.cidrs.iter().collect();
    let provider = cloud.status.provider.map_or("cloud", |p| p.name());
    for net in &listing.cidrs {
        let sources: Vec<&str> = [
            file.contains(net).then_some("file"),
            from_cloud.contains(net).then_some(provider),
        ]
        .into_iter()
        .flatten()
        .collect();
        outln!("{net:<43} {}", sources.join(", "));
    }
    Ok(())
}

/// What `cidr discover --json` prints.
#[derive(serde::Serialize)]
struct DiscoverReport<'a> {
    discovery: &'a crate::cloud::Discovery,
    /// Ranges the cloud gives that the list in force lacks.
    missing: Vec<ipnet::IpNet>,
    /// The cloud's ranges in force that the cloud no longer gives.
    gone: Vec<ipnet::IpNet>,
    /// Whether `[cloud]` is on: only then does the agent apply what the cloud says.
    cloud_enabled: bool,
}

async fn discover(
    config: &Config,
    client: &Client,
    provider: Option<crate::config::cloud::Provider>,
    json: bool,
) -> Result<()> {
    let cloud = config.cloud.clone().unwrap_or_default();
    let api = crate::cloud::ApiClient::new(cloud.request_timeout);
    let discovery = crate::cloud::discover(&cloud, provider, &api).await?;
    let (listing, live) = in_force(config, client).await?;
    let in_force: std::collections::BTreeSet<_> = listing.cidrs.iter().copied().collect();
    let given = discovery.list();
    let report = DiscoverReport {
        discovery: &discovery,
        missing: given.iter().filter(|n| !in_force.contains(n)).collect(),
        gone: listing
            .cloud
            .iter()
            .flat_map(|c| &c.cidrs)
            .filter(|n| !given.contains(n))
            .copied()
            .collect(),
        cloud_enabled: config.cloud.is_some(),
    };
    if json {
        return output::json(&report);
    }
    outln!(
        "{} says the VPC has {} range(s); the list in force ({}) has {} CIDR(s). Nothing was changed.",
        discovery.provider,
        discovery.ranges.len(),
        if live {
            "the agent's"
        } else {
            "from the files; no agent is running"
        },
        listing.cidrs.len()
    );
    for range in &discovery.ranges {
        let mark = if in_force.contains(&range.net) {
            ' '
        } else {
            '+'
        };
        outln!("{mark} {:<43} {}", range.net.to_string(), range.origin);
    }
    for net in &report.gone {
        outln!("- {net:<43} in force from an earlier answer, no longer given");
    }
    for warning in &discovery.warnings {
        outln!("warning: {warning}");
    }
    if !report.cloud_enabled {
        outln!(
            "[cloud] is not in the config: the agent does not use these ranges (see docs/operations.md)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_the_first_few_entries() {
        let nets: Vec<ipnet::IpNet> = (0..8u8)
            .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
            .collect();
        assert_eq!(join(&nets[..2], false), "2: 10.0.0.0/16, 10.1.0.0/16");
        let short = join(&nets, false);
        assert!(short.starts_with("8: 10.0.0.0/16, "), "{short}");
        assert!(
            short.ends_with("10.4.0.0/16 and 3 more (--verbose or --json lists them)"),
            "{short}"
        );
        assert!(join(&nets, true).ends_with("10.7.0.0/16"));
    }
}
