//! The XDP program: loading, pinning, attaching, maps, counters.
//!
//! [`Filter::start`] loads the embedded program with its maps pinned under `pin_dir`
//! (adopting maps pinned by an earlier run), fills the maps, then puts the program on every
//! interface: an interface with a pinned link gets the new program atomically, others get a new
//! pinned link. The pins keep the node filtering when the agent is gone (fail closed);
//! [`pins::remove_pins`] takes everything away.

pub mod allow;
pub mod attach;
pub mod counters;
pub mod dispatcher;
pub mod kernel;
pub mod libxdp;
pub mod maps;
pub mod object;
pub mod pins;
mod place;
pub mod program_log;
pub mod run_config;
pub mod tc;
pub mod test_run;
pub mod trie;

pub use attach::{AttachedInterface, LinkState};
pub use counters::{CounterEntry, CounterSnapshot, read_pinned_counters};
pub use maps::ApplyStats;
pub use pins::{PinLayout, Removed, remove_pins};
pub use program_log::ProgramLog;

use crate::cidr::{CidrError, CidrList};
use crate::config::{Config, HostCheck, XdpAttach, XdpModeSetting};
use crate::ports::{Guard, PortClass, PortPolicy};
use attach::LinkHandle;
use aya::programs::{Extension, ProgramError, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};
use maps::FilterMaps;
use serve_guard_common::trie::Capacity;
use serve_guard_common::{FilterConfig, PROGRAM_NAME, TC_PROGRAM_NAME};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(
        "pin_dir {pin_dir} is not on a bpffs (is bpffs mounted at {mount}?): mount -t bpf bpf {mount}",
        mount = pins::BPFFS_MOUNT
    )]
    NotBpffs { pin_dir: PathBuf },
    #[error("cannot create or read pin folder {path}: {error}")]
    PinDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "pinned map {name} does not match this version's layout ({detail}); stop the agent, run `serve-guard detach`, then start again"
    )]
    IncompatibleMap { name: String, detail: String },
    #[error(
        "max_cidrs = {max_cidrs} needs {expected} entries in map {name}, but the pinned filter's has {actual}: a pinned map cannot be resized. Set max_cidrs back, or stop the agent, run `serve-guard detach` (the Serve ports are open until the next start) and start again; a reboot clears the pins too"
    )]
    Resize {
        name: String,
        actual: String,
        expected: String,
        max_cidrs: u32,
    },
    #[error("cannot load the XDP program: {detail}")]
    Load { detail: String },
    #[error(
        "the embedded eBPF object has no program `{0}`: the agent was built with a mismatched program"
    )]
    MissingProgram(&'static str),
    #[error(
        "the embedded eBPF object has no map {name}: the agent was built with a mismatched program"
    )]
    MissingMap { name: &'static str },
    #[error("cannot {action} map {name}: {detail}")]
    Map {
        name: &'static str,
        action: &'static str,
        detail: String,
    },
    #[error(
        "map {name} is full: the list exceeds its capacity (aggregate ranges, or apply a smaller list)"
    )]
    MapFull { name: &'static str },
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(
        "interface {interface} has another XDP program attached ({holder}) and xdp_mode = \"driver\" forbids the TC ingress fallback: if it is a libxdp program (xdp-loader, xdp-filter; `xdp-loader status {interface}` lists a dispatcher), set xdp_attach = \"dispatcher\" to run beside it; set xdp_mode = \"auto\" to filter at TC ingress; or remove it (`ip link set dev {interface} xdp off`) or leave this interface out of `interfaces`"
    )]
    AnotherProgram { interface: String, holder: String },
    #[error(
        "interface {interface} has another XDP program attached: serve-guard's own filter (program id {id}) from another pin_dir, i.e. another agent. Run one agent per node (stop the other and `serve-guard detach -c <its config>`), or leave this interface out of `interfaces`"
    )]
    AnotherServeGuard { interface: String, id: u32 },
    #[error(
        "interface {interface} runs XDP program `{program}` (id {id}), which does not use a libxdp dispatcher: serve-guard does not replace another program, and xdp_mode = \"driver\" forbids the TC ingress fallback. Set xdp_mode = \"auto\" to filter at TC ingress beside it, load it through libxdp (xdp-loader) to share the interface, remove it (`ip link set dev {interface} xdp off`), or leave this interface out of `interfaces`"
    )]
    ForeignProgram {
        interface: String,
        program: String,
        id: u32,
    },
    #[error(
        "this kernel refuses extension (freplace) programs, which libxdp's dispatcher is made of: {detail}. No libxdp program can share an interface here (xdp-filter and xdp-loader fall back to a lone program too); set xdp_attach = \"link\""
    )]
    ExtensionsRefused { detail: String },
    #[error("cannot put the filter into the XDP dispatcher of {interface}: {detail}")]
    Dispatcher { interface: String, detail: String },
    #[error("cannot attach the XDP program to {interface} in {} mode: {detail}", mode.name())]
    Attach {
        interface: String,
        mode: AttachMode,
        detail: String,
    },
    #[error(
        "cannot attach to {interface} through a BPF link (Linux >= 5.9 is required to pin XDP programs)"
    )]
    NoLinkSupport { interface: String },
    #[error("cannot put the filter at TC ingress of {interface} ({}): {detail}", mode.name())]
    TcAttach {
        interface: String,
        mode: AttachMode,
        detail: String,
    },
    #[error("cannot replace the program on the pinned link of {interface}: {detail}")]
    Replace { interface: String, detail: String },
    #[error("cannot read the pinned link {path}: {reason}")]
    LinkInfo { path: PathBuf, reason: String },
    #[error("cannot pin {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("cannot remove {path}: {error}")]
    Unpin {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot forward the XDP program's log: {detail}")]
    ProgramLog { detail: String },
}

/// How the program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native XDP, in the driver.
    Driver,
    /// Generic XDP, after the kernel built an skb.
    Skb,
    /// TC ingress through a tcx link (Linux 6.6): the fallback when another program holds XDP.
    Tcx,
    /// TC ingress as a clsact filter (before tcx): the same fallback on older kernels.
    Clsact,
}

impl AttachMode {
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
        }
    }

    /// At the XDP hook (else at TC ingress).
    pub const fn is_xdp(self) -> bool {
        matches!(self, AttachMode::Driver | AttachMode::Skb)
    }

    /// The hook, as `status` and the metrics name it.
    pub const fn hook(self) -> &'static str {
        if self.is_xdp() { "xdp" } else { "tc" }
    }

    /// The kernel's type of the pinned link (`link_type` in its fdinfo); none for clsact, whose
    /// filter is no BPF link.
    pub const fn link_type(self) -> Option<&'static str> {
        match self {
            AttachMode::Driver | AttachMode::Skb => Some("xdp"),
            AttachMode::Tcx => Some("tcx"),
            AttachMode::Clsact => None,
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Consecutive ports of one class.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRun {
    pub from: u16,
    pub to: u16,
    pub class: PortClass,
}

impl PortRun {
    pub fn of(policy: &PortPolicy) -> Vec<PortRun> {
        policy
            .runs()
            .into_iter()
            .map(|(from, to, class)| PortRun { from, to, class })
            .collect()
    }
}

/// What the filter does, for `status` and the summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterStatus {
    pub interfaces: Vec<AttachedInterface>,
    /// Ray Serve's ports (strict).
    pub ports: Vec<u16>,
    /// What is guarded beyond them, and every port's class in runs.
    pub guard: Guard,
    pub port_classes: Vec<PortRun>,
    pub audit: bool,
    pub program_log: bool,
    pub pin_dir: PathBuf,
    /// Kernel id of the running program (changes on every start).
    pub program_id: u32,
    /// Allow-list entries per family after the last apply.
    pub cidrs_v4: usize,
    pub cidrs_v6: usize,
}

/// The loaded, attached filter. Dropping it leaves everything pinned (the node keeps
/// filtering); [`Filter::detach`] removes it.
pub struct Filter {
    maps: FilterMaps,
    status: FilterStatus,
    layout: PinLayout,
    /// Holds new links open; adopted ones live in the program inside `ebpf`.
    _links: Vec<LinkHandle>,
    program_log: Option<ProgramLog>,
    /// Keeps the program loaded for the lifetime of the filter.
    _ebpf: Ebpf,
    /// The extension instance in dispatcher slots (libxdp's pins keep it there after us).
    _extension: Option<Ebpf>,
    /// Our config map's kernel id: how our programs in a dispatcher are recognised.
    map_id: Option<u32>,
    /// Nothing was pinned before this start (see [`Filter::undo_start`]).
    fresh: bool,
}

impl Filter {
    /// Loads, fills and attaches the filter. `host` comes from [`Config::check_host`], so
    /// every interface existed and the CIDR list was valid a moment ago.
    pub fn start(config: &Config, host: &HostCheck) -> Result<Filter, FilterError> {
        // Before anything is created: an old kernel gets a reason, not a verifier log.
        let tc_mode = tc::mode_for(kernel::check_running()?);
        let layout = PinLayout::new(&config.pin_dir);
        pins::check_on_bpffs(layout.root())?;
        // Nothing pinned yet: a failed start removes everything it created.
        let fresh = !layout.exists();
        let started = Self::start_pinned(config, host, layout, tc_mode).map(|mut filter| {
            filter.fresh = fresh;
            filter
        });
        if started.is_err()
            && fresh
            && let Err(e) = remove_pins(&config.pin_dir)
        {
            tracing::warn!("cannot clean up after the failed start: {e}");
        }
        started
    }

    fn start_pinned(
        config: &Config,
        host: &HostCheck,
        layout: PinLayout,
        tc_mode: AttachMode,
    ) -> Result<Filter, FilterError> {
        layout.create_dirs()?;

        let mut ebpf = load(&layout, config.program_log, config.max_cidrs)?;
        // Verify the program before touching the maps: a program the kernel refuses changes
        // nothing (adopted maps keep serving the old program as they were).
        let program_id = {
            let program = xdp_program(&mut ebpf)?;
            program.load().map_err(|e| FilterError::Load {
                detail: error_chain(&e),
            })?;
            program
                .info()
                .map_err(|e| FilterError::Load {
                    detail: error_chain(&e),
                })?
                .id()
        };
        let mut maps = FilterMaps::take(&mut ebpf)?;

        // Fill the maps before the program runs anywhere. With adopted maps the old program
        // is still running on them: ports and flags switch at once, CIDRs add before remove.
        maps.set_ports(&config.ports.table())?;
        maps.set_config(filter_config(config))?;
        let applied = maps.apply_cidrs(&host.cidrs)?;

        // Interfaces whose XDP hook a program outside libxdp's protocol holds: filtered at TC
        // ingress instead (never by replacing it), unless xdp_mode = "driver" forbids that.
        let mut xdp_held: Vec<(String, tc::XdpHolder)> = Vec::new();
        // In a dispatcher the filter runs as an extension (BPF_PROG_TYPE_EXT) of a slot. The
        // kernel checks an extension against a target's BTF when it is loaded: the XDP instance's
        // own main function has the slots' signature, and libxdp re-attaches the extension to
        // the dispatcher's slot from there.
        let mut extension = match config.xdp_attach {
            XdpAttach::Link => None,
            XdpAttach::Dispatcher => {
                // Our own earlier link is adopted below; anything else outside the protocol is
                // found before the extension is even loaded.
                let bare: Vec<(String, u32)> = host
                    .interfaces
                    .iter()
                    .filter(|(name, _)| matches!(layout.find_link(name), Ok(None)))
                    .cloned()
                    .collect();
                for (interface, holder) in dispatcher::foreign_programs(&bare)? {
                    if config.xdp_mode == XdpModeSetting::Driver {
                        return Err(FilterError::ForeignProgram {
                            interface,
                            program: holder.program,
                            id: holder.id,
                        });
                    }
                    xdp_held.push((interface, holder));
                }
                let joining = host
                    .interfaces
                    .iter()
                    .any(|(name, _)| xdp_held.iter().all(|(held, _)| held != name));
                joining
                    .then(|| load_extension(&mut ebpf, &layout, config))
                    .transpose()?
            }
        };
        // Only dispatcher slots are recognised by it (link mode never looks for them).
        let map_id = match config.xdp_attach {
            XdpAttach::Dispatcher => dispatcher::our_map_id(&layout),
            XdpAttach::Link => None,
        };

        let program_log = if config.program_log {
            // The log comes from the instance that runs on the interfaces.
            Some(ProgramLog::init(extension.as_mut().unwrap_or(&mut ebpf))?)
        } else {
            None
        };
        let extension_fd = match extension.as_mut() {
            Some(ext) => Some(
                extension_program(ext)?
                    .fd()
                    .and_then(|fd| fd.try_clone().map_err(Into::into))
                    .map_err(|e| FilterError::Load {
                        detail: error_chain(&e),
                    })?,
            ),
            None => None,
        };
        let (program, tc_program) = programs(&mut ebpf)?;

        // From here on a failure takes back what this start added: new links and the new
        // program pin. Adopted links keep the new program, which is complete (maps filled).
        let next_pin = pin_program_next(program, &layout)?;
        let mut interfaces = Vec::new();
        let mut links = Vec::new();
        let attached = (|| {
            let mut placement = place::Placement {
                config,
                layout: &layout,
                program,
                tc_program,
                tc_mode,
                dispatcher: extension_fd.as_ref().zip(map_id),
                xdp_held: &xdp_held,
            };
            for (name, ifindex) in &host.interfaces {
                let (attached, handle) = placement.attach(name, *ifindex)?;
                interfaces.push(attached);
                links.extend(handle);
            }
            remove_unconfigured_links(&layout, &host.interfaces)?;
            // Back at XDP where the other program left: the TC attachment goes, after XDP is in.
            for attached in interfaces.iter().filter(|i| i.mode.is_xdp()) {
                if let Some(entry) = layout.find_tc(&attached.name)? {
                    pins::remove_link(&entry)?;
                    tracing::info!(
                        interface = %attached.name,
                        "{}: the XDP hook is free again; filtering there, the TC ingress filter is removed",
                        attached.name
                    );
                }
            }
            if let (Some(_), Some(map_id)) = (&extension_fd, map_id) {
                let keep: Vec<u32> = host.interfaces.iter().map(|(_, i)| *i).collect();
                for name in dispatcher::leave_except(map_id, &keep)? {
                    tracing::info!(
                        interface = %name,
                        "took the filter out of the dispatcher of {name} (no longer in `interfaces`)"
                    );
                }
            }
            std::fs::rename(&next_pin, layout.program()).map_err(|e| FilterError::Pin {
                path: layout.program(),
                detail: e.to_string(),
            })
        })();
        if let Err(error) = attached {
            undo_new_links(&layout, &interfaces);
            drop(extension);
            let _ = std::fs::remove_file(&next_pin);
            return Err(error);
        }
        // The program that read an earlier version's allow-list is gone from every link.
        pins::remove_retired_maps(&layout);

        Ok(Filter {
            maps,
            status: FilterStatus {
                interfaces,
                ports: config.serve_ports.clone(),
                guard: config.ports.guard,
                port_classes: PortRun::of(&config.ports),
                audit: config.audit,
                program_log: config.program_log,
                pin_dir: config.pin_dir.clone(),
                program_id,
                cidrs_v4: applied.v4,
                cidrs_v6: applied.v6,
            },
            layout,
            _links: links,
            program_log,
            _ebpf: ebpf,
            _extension: extension,
            map_id,
            fresh: false,
        })
    }

    /// Takes back what this start attached when the agent cannot finish starting: with nothing
    /// pinned before, everything (as if it never ran); after adopting pinned state, only the links
    /// this start added, so the adopted filter keeps filtering.
    /// The caller drops the filter afterwards: closing its handles takes the links off.
    pub fn undo_start(&self) -> Result<String, FilterError> {
        if self.fresh {
            return remove_pins(self.layout.root()).map(|removed| removed.to_string());
        }
        let added: Vec<String> = self
            .status
            .interfaces
            .iter()
            .filter(|i| !i.adopted)
            .map(|i| i.name.clone())
            .collect();
        undo_new_links(&self.layout, &self.status.interfaces);
        Ok(if added.is_empty() {
            "the adopted filter stays in place".to_owned()
        } else {
            format!(
                "removed the new links on {}; the adopted filter stays in place",
                added.join(", ")
            )
        })
    }

    /// Makes the allow-lists hold exactly `list` (add before remove: no gap).
    pub fn apply_cidrs(&mut self, list: &CidrList) -> Result<ApplyStats, FilterError> {
        let stats = self.maps.apply_cidrs(list)?;
        self.status.cidrs_v4 = stats.v4;
        self.status.cidrs_v6 = stats.v6;
        Ok(stats)
    }

    /// The CIDRs per family the maps hold: `max_cidrs` when they were created.
    pub fn capacity(&self) -> u32 {
        self.maps.capacity()
    }

    /// The allow-lists as the maps hold them.
    pub fn cidrs(&self) -> Result<CidrList, FilterError> {
        self.maps.read_cidrs()
    }

    /// Counters by reason and family, summed over CPUs.
    pub fn counters(&self) -> Result<CounterSnapshot, FilterError> {
        counters::read(&self.maps.counters)
    }

    /// Every port's class as the map holds it (index = port).
    pub fn ports(&self) -> Result<Vec<PortClass>, FilterError> {
        self.maps.read_ports()
    }

    /// Switches to another port policy on the running program, port by port (each port has
    /// its old class or its new one at every moment, never none).
    pub fn apply_ports(&mut self, policy: &PortPolicy) -> Result<(), FilterError> {
        self.maps.set_ports(&policy.table())?;
        self.status.ports = policy.serve.ports();
        self.status.guard = policy.guard;
        self.status.port_classes = PortRun::of(policy);
        Ok(())
    }

    /// The flags as the config map holds them.
    pub fn filter_config(&self) -> Result<FilterConfig, FilterError> {
        self.maps.read_config()
    }

    /// What the filter does; a dispatcher slot is read again (programs join and leave).
    pub fn status(&self) -> FilterStatus {
        let mut status = self.status.clone();
        if let Some(map_id) = self.map_id {
            for interface in status.interfaces.iter_mut().filter(|i| i.slot.is_some()) {
                interface.slot = dispatcher::slot(interface.ifindex, map_id);
            }
        }
        status
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The program's debug log, when `program_log` is on; the agent runs it as a task.
    pub fn take_program_log(&mut self) -> Option<ProgramLog> {
        self.program_log.take()
    }

    /// Removes the filter: unpins links, program and maps, then closes this process's handles
    /// so the links leave the interfaces.
    pub fn detach(self) -> Result<Removed, FilterError> {
        let pin_dir = self.layout.root().to_owned();
        let removed = remove_pins(&pin_dir);
        drop(self);
        let mut removed = removed?;
        removed.wait_released(pins::RELEASE_TIMEOUT);
        Ok(removed)
    }
}

/// The store updates the maps through this (see `crate::store`).
impl crate::store::CidrSink for Filter {
    fn load_cidrs(
        &mut self,
        list: &CidrList,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.apply_cidrs(list).map(|_| ()).map_err(Into::into)
    }
}

/// The XDP program and its TC twin (loaded only when an interface needs it), borrowed together.
fn programs(ebpf: &mut Ebpf) -> Result<(&mut Xdp, &mut SchedClassifier), FilterError> {
    let mut xdp = None;
    let mut tc = None;
    for (name, program) in ebpf.programs_mut() {
        if name == PROGRAM_NAME {
            xdp = Some(program);
        } else if name == TC_PROGRAM_NAME {
            tc = Some(program);
        }
    }
    let convert = |e: ProgramError| FilterError::Load {
        detail: error_chain(&e),
    };
    Ok((
        xdp.ok_or(FilterError::MissingProgram(PROGRAM_NAME))?
            .try_into()
            .map_err(convert)?,
        tc.ok_or(FilterError::MissingProgram(TC_PROGRAM_NAME))?
            .try_into()
            .map_err(convert)?,
    ))
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, FilterError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(FilterError::MissingProgram(PROGRAM_NAME))?
        .try_into()
        .map_err(|e| FilterError::Load {
            detail: error_chain(&e),
        })
}

fn extension_program(ebpf: &mut Ebpf) -> Result<&mut Extension, FilterError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(FilterError::MissingProgram(PROGRAM_NAME))?
        .try_into()
        .map_err(|e| FilterError::Load {
            detail: error_chain(&e),
        })
}

/// A second instance of the program, loaded as an extension whose target is the XDP instance's
/// main function; it shares the pinned maps (filled already).
fn load_extension(
    xdp: &mut Ebpf,
    layout: &PinLayout,
    config: &Config,
) -> Result<Ebpf, FilterError> {
    if !libxdp::available() {
        return Err(FilterError::Dispatcher {
            interface: config.interfaces.join(", "),
            detail: libxdp::XdpLibError::Unavailable.to_string(),
        });
    }
    let load_err = |e: &dyn std::error::Error| FilterError::Load {
        detail: format!("as a dispatcher extension: {}", error_chain(e)),
    };
    let target = xdp_program(xdp)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|e| load_err(&e))?;
    // libxdp reads the run priority from the program's BTF (see run_config.rs).
    let object = run_config::with_priority(object::OBJECT, config.xdp_priority).map_err(|e| {
        FilterError::Load {
            detail: e.to_string(),
        }
    })?;
    let mut ext = load_with(
        &object,
        layout,
        config.program_log,
        config.max_cidrs,
        Some(PROGRAM_NAME),
    )?;
    extension_program(&mut ext)?
        .load(target, PROGRAM_NAME)
        .map_err(|e| {
            let detail = error_chain(&e);
            // Refused before verification: the kernel allows no extension programs at all
            // (seen under kernel lockdown); libxdp's own check fails the same way.
            if detail.contains("(os error 1)") {
                FilterError::ExtensionsRefused { detail }
            } else {
                load_err(&e)
            }
        })?;
    Ok(ext)
}

fn filter_config(config: &Config) -> FilterConfig {
    let mut flags = 0;
    if config.audit {
        flags |= FilterConfig::FLAG_AUDIT;
    }
    if config.program_log {
        flags |= FilterConfig::FLAG_LOG;
    }
    FilterConfig { flags }
}

fn load(layout: &PinLayout, program_log: bool, max_cidrs: u32) -> Result<Ebpf, FilterError> {
    load_with(object::OBJECT, layout, program_log, max_cidrs, None)
}

fn load_with(
    object: &[u8],
    layout: &PinLayout,
    program_log: bool,
    max_cidrs: u32,
    extension: Option<&str>,
) -> Result<Ebpf, FilterError> {
    use serve_guard_common::maps;
    let mut loader = EbpfLoader::new();
    if let Some(name) = extension {
        loader.extension(name);
    }
    for name in maps::ALL {
        loader.map_pin_path(name, layout.map(name));
    }
    // Sized for `max_cidrs` when created; pinned maps keep the size they were created with.
    let capacity = Capacity::for_cidrs(max_cidrs);
    loader
        .map_max_entries(maps::NODES_V4, capacity.nodes_v4_entries())
        .map_max_entries(maps::NODES_V6, capacity.nodes_v6_entries())
        .map_max_entries(maps::TAILS_V4, capacity.tails_entries())
        .map_max_entries(maps::TAILS_V6, capacity.tails_entries());
    if !program_log {
        loader.override_global(program_log::LEVEL_GLOBAL, &program_log::LEVEL_OFF, false);
    }
    loader.load(object).map_err(|e| match e {
        aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
            name,
            property: "max_entries",
            expected,
            actual,
        }) => FilterError::Resize {
            name,
            actual: actual.to_string(),
            expected: expected.to_string(),
            max_cidrs,
        },
        aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
            name,
            property,
            expected,
            actual,
        }) => FilterError::IncompatibleMap {
            name,
            detail: format!("{property} is {actual}, expected {expected}"),
        },
        other => FilterError::Load {
            detail: error_chain(&other),
        },
    })
}

/// Pins the new program next to the old one; it is renamed over `prog` once attached, so
/// `prog` never goes missing.
fn pin_program_next(program: &mut Xdp, layout: &PinLayout) -> Result<PathBuf, FilterError> {
    let next = layout.program_next();
    let _ = std::fs::remove_file(&next);
    program.pin(&next).map_err(|e| FilterError::Pin {
        path: next.clone(),
        detail: error_chain(&e),
    })?;
    Ok(next)
}

/// After a failed start: takes off the links this start created, so a failed start leaves the
/// interfaces as they were. Adopted links keep the new program (it is complete: maps filled).
fn undo_new_links(layout: &PinLayout, attached: &[AttachedInterface]) {
    for interface in attached.iter().filter(|i| !i.adopted) {
        if let Some(slot) = &interface.slot {
            if let Err(e) = dispatcher::leave(&interface.name, interface.ifindex, slot.program_id) {
                tracing::warn!("cannot leave the dispatcher after a failed start: {e}");
            }
            continue;
        }
        let entry = pins::PinnedLinkEntry {
            interface: interface.name.clone(),
            mode: interface.mode,
            path: layout.link(&interface.name, interface.mode),
        };
        if let Err(e) = pins::remove_link(&entry) {
            tracing::warn!(
                "cannot remove {} after a failed start: {e}",
                entry.path.display()
            );
        }
    }
}

/// Links pinned by an earlier run for interfaces no longer configured are taken off: the
/// config names every interface the filter runs on.
fn remove_unconfigured_links(
    layout: &PinLayout,
    configured: &[(String, u32)],
) -> Result<(), FilterError> {
    for link in layout.links()? {
        if configured.iter().any(|(name, _)| *name == link.interface) {
            continue;
        }
        pins::remove_link(&link)?;
        tracing::info!(
            interface = %link.interface,
            "removed the filter from {} (no longer in `interfaces`)",
            link.interface
        );
    }
    Ok(())
}

/// An error with its sources, `: `-separated (aya's errors put the useful part in the source).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
