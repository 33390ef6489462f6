//! The control socket's requests and answers: one type per body, shared by the agent (which
//! serialises them) and the CLI (which reads them and prints them as `--json`). A field added
//! here reaches the agent, the CLI and `status --json` with the compiler's help; renaming or
//! removing one changes what scripts read, so it raises `cli::output::JSON_SCHEMA_VERSION`.
//!
//! The answers are made from the domain's own types (the filter's status and counters, the
//! node's exposures and listener audit, the public mode's status): this module only decides
//! their shape on the wire.

use crate::config::Mode;
use crate::control::public_status::PublicStatus;
use crate::filter::{AttachMode, AttachedInterface, CounterSnapshot, FilterStatus, PortRun};
use crate::node::{Exposure, ListenerAudit};
use crate::ports::Guard;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Body of `cidr add` and `cidr remove`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CidrsRequest {
    pub cidrs: Vec<String>,
    /// Refuse the change unless the list is at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// Allow an entry that allows every source (`0.0.0.0/0`, `::/0`); ignored by remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_everyone: bool,
}

/// Body of `cidr replace`: the new list in the CIDR file format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_everyone: bool,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// Answer of `POST /v1/token/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenReloaded {
    pub reloaded: bool,
}

/// Answer of `GET /v1/mode`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModeReport {
    pub mode: Mode,
}

/// The agent process, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub pid: u32,
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
    pub uptime_seconds: u64,
}

/// The CIDR list's state, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CidrSummary {
    pub file: String,
    pub revision: u64,
    pub ipv4: usize,
    pub ipv6: usize,
    /// With `[cloud]`: entries from the file and from the cloud, and the cloud's refresh.
    #[serde(default)]
    pub from_file: usize,
    #[serde(default)]
    pub from_cloud: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<crate::store::CloudStatus>,
}

/// Answer of `GET /v1/status`, and what `status` prints without an agent (then `agent` is `None`
/// and the filter part comes from the pins).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub mode: Mode,
    pub agent: Option<AgentInfo>,
    pub cidrs: CidrSummary,
    pub filter: FilterReport,
    /// Public mode only: the URL, the token and the API docs links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<PublicStatus>,
    /// Paths around the filter on the agent's node (docs/filter.md); empty when none.
    #[serde(default)]
    pub exposures: Vec<Exposure>,
    /// Set when the exposures could not be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposures_error: Option<String>,
    /// The node's listeners beyond loopback and who outside the allow-list reaches them,
    /// sessions the port rules put at risk, what the audit cannot see; `None` when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_audit: Option<ListenerAudit>,
    /// Set when the listeners could not be audited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_audit_error: Option<String>,
}

/// The filter in `status`: the port rules it enforces and where it is pinned, then what only
/// its source knows (the running agent's program, or without an agent what the pins hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterReport {
    /// Ray Serve's ports (strict).
    pub ports: Vec<u16>,
    /// What is guarded beyond them.
    pub guard: Guard,
    /// Every port's class, in runs of consecutive ports.
    pub port_classes: Vec<PortRun>,
    /// Would-be drops are counted and passed.
    pub audit: bool,
    pub pin_dir: PathBuf,
    /// Flattened: the two sources have always printed their fields side by side with the ones
    /// above, and `status --json` keeps that shape.
    #[serde(flatten)]
    pub source: FilterSource,
}

/// Who described the filter. Told apart on the wire by their fields (untagged), as `status
/// --json` has no tag for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FilterSource {
    /// The running agent, from the filter it holds.
    Agent(RunningFilter),
    /// The CLI without an agent, from the pins.
    Pins(PinnedFilter),
}

/// The running agent's program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningFilter {
    pub interfaces: Vec<AttachedInterface>,
    pub program_log: bool,
    /// Kernel id of the running program (changes on every start).
    pub program_id: u32,
    /// Allow-list entries per family after the last apply.
    pub cidrs_v4: usize,
    pub cidrs_v6: usize,
}

/// What the pins hold when no agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedFilter {
    /// Something is pinned under `pin_dir`: the filter keeps filtering with the last list.
    pub pinned: bool,
    pub interfaces: Vec<PinnedInterface>,
}

/// One pinned link, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedInterface {
    pub name: String,
    pub mode: AttachMode,
    /// `None` (null) when the pinned link could not be read.
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// False once the interface went away (the link is defunct) or the link could not be read.
    pub attached: bool,
    /// In a libxdp dispatcher instead of a link of its own (`link_id` is then null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<crate::filter::dispatcher::Slot>,
}

impl FilterReport {
    /// The interfaces as `status` prints them: name, XDP mode, and whether the interface is
    /// gone from under its pinned link.
    pub fn interfaces(&self) -> Vec<(&str, AttachMode, bool)> {
        match &self.source {
            FilterSource::Agent(running) => running
                .interfaces
                .iter()
                .map(|i| (i.name.as_str(), i.mode, false))
                .collect(),
            FilterSource::Pins(pins) => pins
                .interfaces
                .iter()
                .map(|i| (i.name.as_str(), i.mode, !i.attached))
                .collect(),
        }
    }

    /// Whether the filter is in place: a running agent's always is (it pinned it).
    pub fn pinned(&self) -> bool {
        match &self.source {
            FilterSource::Agent(_) => true,
            FilterSource::Pins(pins) => pins.pinned,
        }
    }
}

impl From<FilterStatus> for FilterReport {
    fn from(status: FilterStatus) -> Self {
        FilterReport {
            ports: status.ports,
            guard: status.guard,
            port_classes: status.port_classes,
            audit: status.audit,
            pin_dir: status.pin_dir,
            source: FilterSource::Agent(RunningFilter {
                interfaces: status.interfaces,
                program_log: status.program_log,
                program_id: status.program_id,
                cidrs_v4: status.cidrs_v4,
                cidrs_v6: status.cidrs_v6,
            }),
        }
    }
}

/// One counter of `GET /v1/stats` (the filter's counter snapshot, summed over CPUs). Reason and
/// family are their names, so a reader needs no enum of this version to read them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterRow {
    pub reason: String,
    pub family: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Answer of `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsReport {
    pub counters: Vec<CounterRow>,
}

impl From<&CounterSnapshot> for StatsReport {
    fn from(snapshot: &CounterSnapshot) -> Self {
        StatsReport {
            counters: snapshot
                .counters
                .iter()
                .map(|c| CounterRow {
                    reason: c.reason.name().to_owned(),
                    family: c.family.name().to_owned(),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
        }
    }
}
