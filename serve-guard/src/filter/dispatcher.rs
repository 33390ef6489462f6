//! Sharing the interface with other XDP programs: serve-guard as one component program of a
//! libxdp dispatcher (protocol v2, see `libxdp.rs`).
//!
//! Our programs in a dispatcher are told apart from everyone else's by the maps they use: every
//! serve-guard program of one `pin_dir` runs on that folder's pinned maps, so a program whose map
//! ids hold our config map's id is ours, whatever its name or slot. A start joins the new program
//! first and then takes the old one out: two atomic dispatcher swaps, the filter in place at every
//! moment (both copies read the same maps).

use super::libxdp::{self, Mode, Multiprog, OnInterface, Program, ProgramEntry};
use super::{AttachMode, AttachedInterface, FilterError, PinLayout};
use crate::config::XdpModeSetting;
use serve_guard_common::maps;
use std::os::fd::BorrowedFd;

/// Where serve-guard runs in a dispatcher (`status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// Kernel id of the dispatcher program on the interface (changes at every swap).
    pub dispatcher_id: u32,
    /// Our component program.
    pub program_id: u32,
    pub run_prio: u32,
    /// Programs that run before ours, in order: they see every packet first.
    pub before: Vec<ProgramEntry>,
    /// Programs after ours (they see what we pass).
    pub after: Vec<ProgramEntry>,
    /// Actions of ours after which the chain goes on.
    pub chain_call: Vec<String>,
    /// The dispatcher's XDP mode.
    pub mode: AttachMode,
}

/// The kernel id of our config map: what every serve-guard program of this `pin_dir` uses.
pub fn our_map_id(layout: &PinLayout) -> Option<u32> {
    aya::maps::MapInfo::from_pin(layout.map(maps::CONFIG))
        .ok()
        .map(|info| info.id())
}

/// The ids among `candidates` of programs that use map `map_id`.
fn using_map(candidates: &[u32], map_id: u32) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| candidates.contains(&p.id()))
        .filter(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&map_id))
        })
        .map(|p| p.id())
        .collect()
}

/// Our slot on `ifindex`, read from the kernel now (programs may have joined since the start).
pub fn slot(ifindex: u32, map_id: u32) -> Option<Slot> {
    let OnInterface::Dispatcher(mp) = Multiprog::read(ifindex).ok()? else {
        return None;
    };
    let programs = mp.programs();
    let ids: Vec<u32> = programs.iter().map(|p| p.id).collect();
    let ours = using_map(&ids, map_id);
    // The last of ours in run order is the one a start left (an older copy goes out right after).
    let at = programs.iter().rposition(|p| ours.contains(&p.id))?;
    let me = &programs[at];
    Some(Slot {
        dispatcher_id: mp.dispatcher_id(),
        program_id: me.id,
        run_prio: me.run_prio,
        before: programs[..at].to_vec(),
        after: programs[at + 1..].to_vec(),
        chain_call: me.chain_call.clone(),
        mode: match mp.mode() {
            Mode::Skb => AttachMode::Skb,
            _ => AttachMode::Driver,
        },
    })
}

/// Our slots on the named interfaces, read from the kernel (for `status` without an agent).
pub fn slots(layout: &PinLayout, interfaces: &[String]) -> Vec<(String, Slot)> {
    let Some(map_id) = our_map_id(layout) else {
        return Vec::new();
    };
    interfaces
        .iter()
        .filter_map(|name| {
            let c = std::ffi::CString::new(name.as_str()).ok()?;
            #[allow(unsafe_code, reason = "if_nametoindex(3)")]
            // SAFETY: a NUL-terminated name that outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            (ifindex != 0)
                .then(|| slot(ifindex, map_id))
                .flatten()
                .map(|s| (name.clone(), s))
        })
        .collect()
}

/// The interfaces among `interfaces` that run a program outside the protocol (a lone XDP
/// program, another tool's BPF link), found before anything is loaded: joining would mean
/// replacing it.
pub(crate) fn foreign_programs(
    interfaces: &[(String, u32)],
) -> Result<Vec<(String, super::tc::XdpHolder)>, FilterError> {
    let mut foreign = Vec::new();
    for (name, ifindex) in interfaces {
        if let OnInterface::Foreign { name: program, id } =
            Multiprog::read(*ifindex).map_err(|e| lib_error(name, e))?
        {
            foreign.push((name.clone(), super::tc::XdpHolder { program, id }));
        }
    }
    Ok(foreign)
}

fn lib_error(interface: &str, error: libxdp::XdpLibError) -> FilterError {
    let mut detail = error.to_string();
    if error.errno() == Some(libc::EPERM) {
        // libxdp opens the programs of a dispatcher by id; BPF_PROG_GET_FD_BY_ID needs it.
        detail.push_str(
            " (libxdp needs CAP_SYS_ADMIN to open the programs on an interface: add it to the \
             unit with a drop-in, see docs/operations.md)",
        );
    }
    FilterError::Dispatcher {
        interface: interface.to_owned(),
        detail,
    }
}

/// Puts the extension program `ext` into the dispatcher on one interface (joining the one there
/// or installing a new one), then takes out the serve-guard programs that were there before.
pub(crate) fn join(
    ext: BorrowedFd<'_>,
    name: &str,
    ifindex: u32,
    setting: XdpModeSetting,
    run_prio: u32,
    map_id: u32,
) -> Result<AttachedInterface, FilterError> {
    let (old, existing_mode) = match Multiprog::read(ifindex).map_err(|e| lib_error(name, e))? {
        OnInterface::Foreign { name: program, id } => {
            return Err(FilterError::ForeignProgram {
                interface: name.to_owned(),
                program,
                id,
            });
        }
        OnInterface::Nothing => (Vec::new(), None),
        OnInterface::Dispatcher(mp) => {
            let ids: Vec<u32> = mp.programs().iter().map(|p| p.id).collect();
            (using_map(&ids, map_id), Some(mp.mode()))
        }
    };
    // libxdp reads the run priority and the chain-call actions of a program it did not load
    // from the program's BTF (`.xdp_run_config`, written into the object before it is loaded:
    // see `run_config`); it refuses to set them on a loaded program.
    let mut program = Program::from_fd(ext).map_err(|e| lib_error(name, e))?;
    let entry = program.entry();
    if entry.run_prio != run_prio {
        tracing::warn!(
            interface = name,
            "libxdp sees run priority {} for serve-guard, not xdp_priority = {run_prio}",
            entry.run_prio
        );
    }

    // A dispatcher already there keeps its mode: replacing it in another mode is refused by the
    // kernel, and detaching it first would open a gap for every program on it.
    let candidates: Vec<AttachMode> = match existing_mode {
        Some(Mode::Skb) => vec![AttachMode::Skb],
        Some(_) => vec![AttachMode::Driver],
        None => match setting {
            XdpModeSetting::Auto => vec![AttachMode::Driver, AttachMode::Skb],
            XdpModeSetting::Driver => vec![AttachMode::Driver],
            XdpModeSetting::Skb => vec![AttachMode::Skb],
        },
    };
    if let (Some(&mode), XdpModeSetting::Driver | XdpModeSetting::Skb) =
        (candidates.first(), setting)
        && existing_mode.is_some()
        && mode.name() != setting.name()
    {
        tracing::warn!(
            interface = name,
            "the dispatcher on {name} runs in {} mode, xdp_mode = {} asks for another; joining it in {} mode",
            mode.name(),
            setting.name(),
            mode.name()
        );
    }
    let mut last_error = None;
    let mut joined = None;
    for &mode in &candidates {
        let lib_mode = match mode {
            AttachMode::Driver => Mode::Native,
            // The candidates are XDP modes only.
            AttachMode::Skb | AttachMode::Tcx | AttachMode::Clsact => Mode::Skb,
        };
        match program.attach(ifindex, lib_mode) {
            Ok(()) => {
                joined = Some(mode);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(mode) = joined else {
        let error = last_error.expect("at least one candidate mode");
        // Someone put a program of their own there between our look and our attach.
        if matches!(error.errno(), Some(libc::EBUSY | libc::EEXIST))
            && let Ok(OnInterface::Foreign { name: program, id }) = Multiprog::read(ifindex)
        {
            return Err(FilterError::ForeignProgram {
                interface: name.to_owned(),
                program,
                id,
            });
        }
        return Err(lib_error(name, error));
    };
    let program_id = program.id();
    drop(program);
    // A serve-guard program was there: this start took over its slot (as a link is adopted).
    let adopted = old.iter().any(|&id| id != program_id);
    for id in old.into_iter().filter(|&id| id != program_id) {
        match libxdp::detach_id(ifindex, id) {
            Ok(()) => tracing::debug!(
                interface = name,
                "took the previous serve-guard program {id} out of the dispatcher"
            ),
            // Two copies on the same maps judge alike: a leftover costs time, not safety.
            Err(e) => tracing::warn!(
                interface = name,
                "cannot take the previous serve-guard program {id} out of the dispatcher: {e}"
            ),
        }
    }
    let slot = slot(ifindex, map_id);
    Ok(AttachedInterface {
        name: name.to_owned(),
        ifindex,
        mode,
        link_id: 0,
        adopted,
        slot,
        xdp_held_by: None,
    })
}

/// Takes every serve-guard program of this `pin_dir` (map `map_id`) out of the dispatcher of
/// every interface of this network namespace; returns the interfaces.
pub fn leave_all(map_id: u32) -> Result<Vec<String>, FilterError> {
    leave_except(map_id, &[])
}

/// [`leave_all`] but for the interfaces in `keep` (ifindexes): a start takes the filter out of
/// the dispatchers of interfaces no longer in `interfaces`.
pub(crate) fn leave_except(map_id: u32, keep: &[u32]) -> Result<Vec<String>, FilterError> {
    let mut left = Vec::new();
    if !libxdp::available() {
        return Ok(left);
    }
    for (ifindex, name) in interfaces().into_iter().filter(|(i, _)| !keep.contains(i)) {
        let Ok(OnInterface::Dispatcher(mp)) = Multiprog::read(ifindex) else {
            continue;
        };
        let ids: Vec<u32> = mp.programs().iter().map(|p| p.id).collect();
        drop(mp);
        for id in using_map(&ids, map_id) {
            libxdp::detach_id(ifindex, id).map_err(|e| lib_error(&name, e))?;
            if !left.contains(&name) {
                left.push(name.clone());
            }
        }
    }
    Ok(left)
}

/// Takes one program out of the dispatcher on `ifindex` (undoing a start that cannot finish).
pub(crate) fn leave(name: &str, ifindex: u32, program_id: u32) -> Result<(), FilterError> {
    libxdp::detach_id(ifindex, program_id).map_err(|e| lib_error(name, e))
}

/// Every interface of this network namespace, (ifindex, name). From the kernel, not
/// /sys/class/net: sysfs shows the namespace it was mounted in, not the caller's.
fn interfaces() -> Vec<(u32, String)> {
    #[allow(unsafe_code, reason = "if_nameindex(3)")]
    // SAFETY: if_nameindex returns an array ending with a zero entry, freed below once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        out
    }
}
