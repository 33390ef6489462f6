//! Putting the program on an interface: adopt the pinned link (atomic program replacement) or
//! attach a new link and pin it.

#![allow(unsafe_code, reason = "bpf(2) BPF_OBJ_GET for a pinned link")]

use super::pins::{PinLayout, PinnedLinkEntry};
use super::{AttachMode, FilterError, error_chain};
use crate::config::XdpModeSetting;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// One interface the program runs on (also `status --json`'s shape of it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// Kernel id of the XDP link (stays the same across agent restarts).
    pub link_id: u32,
    /// True when an existing pinned link was adopted (its program replaced in place).
    pub adopted: bool,
    /// Our place in a libxdp dispatcher (`xdp_attach = "dispatcher"`); `link_id` is 0 then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<super::dispatcher::Slot>,
    /// At TC ingress (`mode` tcx or clsact): the program that holds the XDP hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_held_by: Option<super::tc::XdpHolder>,
}

/// What the kernel says about a pinned link (from /proc/self/fdinfo of a link fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub link_id: u32,
    pub program_id: u32,
    /// 0 when the interface went away (the link is defunct).
    pub ifindex: u32,
}

impl LinkState {
    /// Reads the state of the link pinned at `path`, of kernel link type `link_type` ("xdp",
    /// "tcx").
    pub fn read(path: &Path, link_type: &str) -> Result<LinkState, FilterError> {
        let bad = |reason: String| FilterError::LinkInfo {
            path: path.to_owned(),
            reason,
        };
        let fd = bpf_obj_get(path).map_err(|e| bad(e.to_string()))?;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .map_err(|e| bad(e.to_string()))?;
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        match field("link_type") {
            Some(t) if t == link_type => {}
            other => {
                return Err(bad(format!("not a {link_type} link (link_type {other:?})")));
            }
        }
        let number = |key: &str| {
            field(key)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| bad(format!("no `{key}` in the link's fdinfo")))
        };
        Ok(LinkState {
            link_id: number("link_id")?,
            program_id: number("prog_id")?,
            ifindex: number("ifindex")?,
        })
    }
}

impl LinkState {
    /// The state of one of our attachments: a pinned link's, or for a clsact filter (no link)
    /// the recorded program's id and the interface's index (0 when it is gone, taking its
    /// filters with it).
    pub fn of_entry(entry: &PinnedLinkEntry) -> Result<LinkState, FilterError> {
        if let Some(link_type) = entry.mode.link_type() {
            return LinkState::read(&entry.path, link_type);
        }
        let program = aya::programs::ProgramInfo::from_pin(&entry.path).map_err(|e| {
            FilterError::LinkInfo {
                path: entry.path.clone(),
                reason: error_chain(&e),
            }
        })?;
        Ok(LinkState {
            link_id: 0,
            program_id: program.id(),
            ifindex: super::tc::ifindex(&entry.interface),
        })
    }
}

/// BPF_OBJ_GET: opens a pinned object. aya's link types keep their fd private, and the link's
/// interface is only visible through the fd's fdinfo.
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    /// The `obj` member of `union bpf_attr` (the fields this call uses).
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix that outlives the call; the
    // kernel reads `size_of::<ObjAttr>()` bytes of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjAttr,
            size_of::<ObjAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A link this process holds open. Adopted links live in the program's own link set; new ones
/// are kept here. Either way the pin keeps the link alive when the handle drops.
#[derive(Debug)]
pub(crate) enum LinkHandle {
    Program,
    Pinned(#[allow(dead_code, reason = "held for its drop: the pin keeps the link")] PinnedLink),
}

/// Puts `program` on one interface, without a gap: an existing pinned link on the same
/// interface gets the new program atomically (bpf_link_update); otherwise a new link is
/// attached and pinned.
pub(crate) fn attach_interface(
    program: &mut Xdp,
    pins: &PinLayout,
    name: &str,
    ifindex: u32,
    setting: XdpModeSetting,
) -> Result<(AttachedInterface, LinkHandle), FilterError> {
    if let Some(entry) = pins.find_link(name)? {
        match usable_link(&entry, ifindex) {
            Ok(state) => return adopt(program, entry, ifindex, setting, state),
            Err(reason) => {
                tracing::warn!(
                    interface = name,
                    "pinned link {} is stale ({reason}); attaching a new one",
                    entry.path.display()
                );
                std::fs::remove_file(&entry.path).map_err(|error| FilterError::Unpin {
                    path: entry.path.clone(),
                    error,
                })?;
            }
        }
    }
    attach_new(program, pins, name, ifindex, setting)
}

/// Why a pinned link is not adopted (it is replaced by a new one, with a warning).
#[derive(Debug, thiserror::Error)]
enum StaleLink {
    #[error(transparent)]
    Unreadable(#[from] FilterError),
    #[error("it is bound to ifindex {bound}, the interface now has {now}")]
    Moved { bound: u32, now: u32 },
}

/// The pinned link still runs on this very interface (not on a deleted one of the same name).
fn usable_link(entry: &PinnedLinkEntry, ifindex: u32) -> Result<LinkState, StaleLink> {
    let state = LinkState::read(&entry.path, "xdp")?;
    if state.ifindex != ifindex {
        return Err(StaleLink::Moved {
            bound: state.ifindex,
            now: ifindex,
        });
    }
    Ok(state)
}

fn adopt(
    program: &mut Xdp,
    entry: PinnedLinkEntry,
    ifindex: u32,
    setting: XdpModeSetting,
    state: LinkState,
) -> Result<(AttachedInterface, LinkHandle), FilterError> {
    let wanted = match setting {
        XdpModeSetting::Auto => None,
        XdpModeSetting::Driver => Some(AttachMode::Driver),
        XdpModeSetting::Skb => Some(AttachMode::Skb),
    };
    if wanted.is_some_and(|w| w != entry.mode) {
        // Changing the mode needs a detach, which would open a gap; keep filtering instead.
        tracing::warn!(
            interface = %entry.interface,
            "the pinned link runs in {} mode, xdp_mode = {} asks for another; keeping {} \
             (run `serve-guard detach` while the agent is stopped to change it)",
            entry.mode.name(),
            setting.name(),
            entry.mode.name()
        );
    }
    let replace_err = |detail: String| FilterError::Replace {
        interface: entry.interface.clone(),
        detail,
    };
    let pinned = PinnedLink::from_pin(&entry.path).map_err(|e| replace_err(error_chain(&e)))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| replace_err(error_chain(&e)))?;
    program
        .attach_to_link(link)
        .map_err(|e| replace_err(error_chain(&e)))?;
    tracing::debug!(
        interface = %entry.interface,
        link_id = state.link_id,
        old_program_id = state.program_id,
        "replaced the program on the pinned link"
    );
    Ok((
        AttachedInterface {
            name: entry.interface,
            ifindex,
            mode: entry.mode,
            link_id: state.link_id,
            adopted: true,
            slot: None,
            xdp_held_by: None,
        },
        LinkHandle::Program,
    ))
}

fn attach_new(
    program: &mut Xdp,
    pins: &PinLayout,
    name: &str,
    ifindex: u32,
    setting: XdpModeSetting,
) -> Result<(AttachedInterface, LinkHandle), FilterError> {
    let candidates: &[AttachMode] = match setting {
        XdpModeSetting::Auto => &[AttachMode::Driver, AttachMode::Skb],
        XdpModeSetting::Driver => &[AttachMode::Driver],
        XdpModeSetting::Skb => &[AttachMode::Skb],
    };
    let mut last_error = None;
    for &mode in candidates {
        match program.attach(ifindex, mode.to_aya()) {
            Ok(id) => {
                if let Some(error) = last_error.take() {
                    tracing::warn!(
                        interface = name,
                        "driver-mode XDP is not available ({error}); fell back to skb (generic) \
                         mode, which filters later in the stack and costs more per packet"
                    );
                }
                let link = program.take_link(id).map_err(|e| FilterError::Attach {
                    interface: name.to_owned(),
                    mode,
                    detail: error_chain(&e),
                })?;
                let fd_link = FdLink::try_from(link).map_err(|_| FilterError::NoLinkSupport {
                    interface: name.to_owned(),
                })?;
                let (state, pinned) = pin_new_link(fd_link, pins, name, mode)?;
                return Ok((
                    AttachedInterface {
                        name: name.to_owned(),
                        ifindex,
                        mode,
                        link_id: state.link_id,
                        adopted: false,
                        slot: None,
                        xdp_held_by: None,
                    },
                    LinkHandle::Pinned(pinned),
                ));
            }
            Err(e) if is_busy(&e) => {
                return Err(FilterError::AnotherProgram {
                    interface: name.to_owned(),
                    holder: "unknown".to_owned(),
                });
            }
            Err(e) if mode == AttachMode::Driver && os_error(&e) == Some(libc::EOPNOTSUPP) => {
                last_error = Some(format!(
                    "{}; the driver has no native XDP: set xdp_mode = \"auto\" or \"skb\"",
                    error_chain(&e)
                ));
            }
            Err(e) => last_error = Some(error_chain(&e)),
        }
    }
    Err(FilterError::Attach {
        interface: name.to_owned(),
        mode: *candidates.last().expect("at least one candidate mode"),
        detail: last_error.unwrap_or_default(),
    })
}

/// Pins a link this start created as `links/<name>@<mode>` and reads back its kernel state.
pub(crate) fn pin_new_link(
    link: FdLink,
    pins: &PinLayout,
    name: &str,
    mode: AttachMode,
) -> Result<(LinkState, PinnedLink), FilterError> {
    let path = pins.link(name, mode);
    let pinned = link.pin(&path).map_err(|e| FilterError::Pin {
        path: path.clone(),
        detail: error_chain(&e),
    })?;
    let link_type = mode
        .link_type()
        .expect("a mode attached through a BPF link");
    Ok((LinkState::read(&path, link_type)?, pinned))
}

/// EBUSY/EEXIST from attaching: the interface already runs an XDP program we do not own.
fn is_busy(error: &ProgramError) -> bool {
    matches!(os_error(error), Some(libc::EBUSY | libc::EEXIST))
}

fn os_error(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

impl AttachMode {
    fn to_aya(self) -> XdpMode {
        match self {
            AttachMode::Driver => XdpMode::Driver,
            // Only XDP modes are tried here.
            AttachMode::Skb | AttachMode::Tcx | AttachMode::Clsact => XdpMode::Skb,
        }
    }
}
