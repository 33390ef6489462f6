//! The TC ingress fallback: the same filter as a classifier at TC ingress, for an interface whose
//! XDP hook another program holds outside libxdp's protocol (a lone XDP program, another tool's
//! BPF link). serve-guard never replaces such a program; it filters one hook later instead:
//! same verdicts and counters, on every packet that program passes up the stack (what it drops,
//! redirects or sends back never reaches a socket either).
//!
//! - tcx (Linux 6.6): a BPF link at the front of the ingress chain, pinned as
//!   `links/<ifname>@tcx` and adopted across restarts like the XDP link (atomic replacement);
//! - before that, a direct-action cls_bpf filter on the clsact qdisc at a fixed priority and
//!   handle. Netlink filters stay until removed, so the filter outlives the agent; the program is
//!   pinned as `links/<ifname>@clsact` to record where it runs, and a restart replaces the
//!   filter's program in place (cls_bpf swaps it atomically).

use super::attach::{LinkHandle, LinkState};
use super::kernel::KernelVersion;
use super::pins::PinLayout;
use super::{AttachMode, AttachedInterface, FilterError, error_chain};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcHandle};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use serve_guard_common::TC_PROGRAM_NAME;

/// tcx came with Linux 6.6 (commit e420bed02507).
pub const TCX_SINCE: KernelVersion = KernelVersion::new(6, 6);

/// The clsact filter's priority: the lowest number runs first, so nothing on the ingress chain
/// sees a packet before the filter judged it.
const CLSACT_PRIORITY: u16 = 1;
/// The filter's handle ("SG"): with the priority, where a restart finds it to replace it.
const CLSACT_HANDLE: u32 = 0x5347;

/// Who holds the interface's XDP hook (`status`, the log, the metrics). The default, empty name
/// and id 0, stands for a holder that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XdpHolder {
    /// Empty when this process may not read it (see [`XdpHolder::of`]).
    pub program: String,
    pub id: u32,
}

impl std::fmt::Display for XdpHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.program.is_empty() {
            // Reading another program's name by id takes CAP_SYS_ADMIN, which the unit lacks.
            write!(f, "id {}", self.id)
        } else {
            write!(f, "`{}` (id {})", self.program, self.id)
        }
    }
}

impl XdpHolder {
    /// The XDP program on `ifindex` now, named from the kernel's program info (unnamed without
    /// CAP_SYS_ADMIN: the id comes from rtnetlink, the name needs the program opened by id);
    /// `None` when the hook is free again.
    pub fn of(ifindex: u32) -> Option<XdpHolder> {
        let links = crate::node::netlink::links().ok()?;
        let id = links.iter().find(|l| l.index == ifindex)?.xdp_program?;
        let program = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .and_then(|p| p.name_as_str().map(str::to_owned))
            .unwrap_or_default();
        Some(XdpHolder { program, id })
    }
}

/// Set to `clsact` in the agent's environment, the fallback uses a clsact filter even where tcx
/// exists: how the older kernels' path is exercised on a new one (tests, or a node whose tooling
/// lists TC programs with `tc filter show` only).
pub const HOOK_ENV: &str = "SERVE_GUARD_TC_HOOK";

/// The TC hook the fallback uses on this kernel.
pub fn mode_for(kernel: KernelVersion) -> AttachMode {
    if std::env::var(HOOK_ENV).is_ok_and(|v| v == "clsact") {
        return AttachMode::Clsact;
    }
    if kernel >= TCX_SINCE {
        AttachMode::Tcx
    } else {
        AttachMode::Clsact
    }
}

/// Puts `program` at TC ingress of one interface, adopting our earlier TC attachment there (its
/// program replaced atomically) or attaching anew.
pub(crate) fn attach_interface(
    program: &mut SchedClassifier,
    pins: &PinLayout,
    name: &str,
    ifindex: u32,
    mode: AttachMode,
    holder: XdpHolder,
) -> Result<(AttachedInterface, LinkHandle), FilterError> {
    let error = |detail: String| FilterError::TcAttach {
        interface: name.to_owned(),
        mode,
        detail,
    };
    let existing = pins.find_tc(name)?.filter(|entry| entry.mode == mode);
    let (link_id, adopted, handle) = match mode {
        AttachMode::Tcx => match existing {
            Some(entry) => {
                let state = LinkState::read(&entry.path, "tcx")?;
                if state.ifindex != ifindex {
                    return Err(error(format!(
                        "the pinned tcx link {} is bound to ifindex {}, the interface now has {ifindex}; run `serve-guard detach` while the agent is stopped",
                        entry.path.display(),
                        state.ifindex
                    )));
                }
                let pinned =
                    PinnedLink::from_pin(&entry.path).map_err(|e| error(error_chain(&e)))?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| error(error_chain(&e)))?;
                program
                    .attach_to_link(link)
                    .map_err(|e| error(error_chain(&e)))?;
                (state.link_id, true, LinkHandle::Program)
            }
            None => {
                let id = program
                    .attach(
                        ifindex,
                        TcAttach::Tcx {
                            attach_type: TcAttachType::Ingress,
                            order: LinkOrder::first(),
                        },
                    )
                    .map_err(|e| error(error_chain(&e)))?;
                let link = program.take_link(id).map_err(|e| error(error_chain(&e)))?;
                let fd_link = FdLink::try_from(link).map_err(|e| error(error_chain(&e)))?;
                let (state, pinned) = super::attach::pin_new_link(fd_link, pins, name, mode)?;
                (state.link_id, false, LinkHandle::Pinned(pinned))
            }
        },
        AttachMode::Clsact => {
            let adopted = existing.is_some();
            let id = if adopted {
                // Replaces the program of our filter at its priority and handle in place.
                let link = SchedClassifierLink::attached(
                    ifindex,
                    TcAttachType::Ingress.into(),
                    CLSACT_PRIORITY,
                    TcHandle::from(CLSACT_HANDLE),
                    None,
                )
                .map_err(|e| error(e.to_string()))?;
                program.attach_to_link(link)
            } else {
                match tc::qdisc_add_clsact(ifindex) {
                    Ok(()) => {}
                    Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                    }
                    Err(e) => return Err(error(format!("adding the clsact qdisc: {e}"))),
                }
                program.attach(
                    ifindex,
                    TcAttach::Netlink {
                        parent: TcAttachType::Ingress.into(),
                        options: NlOptions {
                            priority: CLSACT_PRIORITY,
                            handle: TcHandle::from(CLSACT_HANDLE),
                            classid: None,
                        },
                    },
                )
            }
            .map_err(|e| error(error_chain(&e)))?;
            let link = program.take_link(id).map_err(|e| error(error_chain(&e)))?;
            // Dropping a netlink link deletes the filter; it is to outlive the agent.
            #[allow(
                clippy::mem_forget,
                reason = "the filter must outlive the handle; detach deletes it by name"
            )]
            std::mem::forget(link);
            record_clsact(program, pins, name)?;
            (0, adopted, LinkHandle::Program)
        }
        AttachMode::Driver | AttachMode::Skb => {
            unreachable!("attach_interface is called with a TC mode")
        }
    };
    Ok((
        AttachedInterface {
            name: name.to_owned(),
            ifindex,
            mode,
            link_id,
            adopted,
            slot: None,
            xdp_held_by: Some(holder),
        },
        handle,
    ))
}

/// Pins the program as the record of our clsact filter on `name`: first under a temporary name,
/// then renamed over the record, so a record exists at every moment.
fn record_clsact(
    program: &mut SchedClassifier,
    pins: &PinLayout,
    name: &str,
) -> Result<(), FilterError> {
    let path = pins.link(name, AttachMode::Clsact);
    let next = pins.links_dir().join(format!("next-{name}"));
    let _ = std::fs::remove_file(&next);
    program.pin(&next).map_err(|e| FilterError::Pin {
        path: next.clone(),
        detail: error_chain(&e),
    })?;
    std::fs::rename(&next, &path).map_err(|e| FilterError::Pin {
        path,
        detail: e.to_string(),
    })
}

/// Takes our filter off one interface's TC ingress: for tcx, removing the pin (done by the
/// caller) lets the link go; for clsact, the netlink filter is deleted here. An interface that is
/// gone took its filters with it.
pub fn remove_clsact(interface: &str) -> Result<(), FilterError> {
    if ifindex(interface) == 0 {
        return Ok(());
    }
    let Ok(c_name) = std::ffi::CString::new(interface) else {
        return Ok(());
    };
    match tc::qdisc_detach_program(
        c_name.as_c_str(),
        TcAttachType::Ingress.into(),
        TC_PROGRAM_NAME,
    ) {
        Ok(()) => Ok(()),
        Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FilterError::TcAttach {
            interface: interface.to_owned(),
            mode: AttachMode::Clsact,
            detail: format!("removing the filter: {}", error_chain(&e)),
        }),
    }
}

/// The interface's index in this namespace, 0 when there is none of that name.
pub fn ifindex(interface: &str) -> u32 {
    let Ok(c_name) = std::ffi::CString::new(interface) else {
        return 0;
    };
    #[allow(unsafe_code, reason = "if_nametoindex(3)")]
    // SAFETY: a NUL-terminated name that outlives the call.
    unsafe {
        libc::if_nametoindex(c_name.as_ptr())
    }
}
