//! The few libxdp (xdp-tools 1.3, dispatcher protocol v2) calls the agent makes, behind owned
//! handles. libxdp builds the dispatcher, re-attaches every component program to it, pins the
//! result under `/sys/fs/bpf/xdp/dispatch-IFINDEX-ID/`, swaps it in atomically
//! (`XDP_FLAGS_REPLACE` with the expected fd) and holds its flock on `/sys/fs/bpf/xdp` meanwhile:
//! going through the library is what makes every other libxdp user see us as one of theirs.
//!
//! Only glibc builds link it (the static musl package cannot load a shared library); there,
//! [`available`] is false and every call fails with [`XdpLibError::Unavailable`].

#![allow(unsafe_code, reason = "FFI to libxdp")]

#[cfg(not(target_env = "musl"))]
use std::ffi::CStr;
#[cfg(not(target_env = "musl"))]
use std::os::fd::AsRawFd as _;
use std::os::fd::BorrowedFd;

/// The XDP action values (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// Every action, with its name, for the chain-call summary in `status`.
pub const ACTIONS: [(u32, &str); 5] = [
    (XDP_ABORTED, "aborted"),
    (XDP_DROP, "drop"),
    (XDP_PASS, "pass"),
    (XDP_TX, "tx"),
    (XDP_REDIRECT, "redirect"),
];

/// `enum xdp_attach_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub enum Mode {
    Unspec = 0,
    Native = 1,
    Skb = 2,
    Hw = 3,
}

#[derive(Debug, thiserror::Error)]
pub enum XdpLibError {
    #[error(
        "this build of serve-guard has no libxdp (the static package cannot load it): it cannot share the interface through a dispatcher"
    )]
    Unavailable,
    #[error("libxdp {call}: {error}")]
    Call {
        call: &'static str,
        error: std::io::Error,
    },
}

impl XdpLibError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            XdpLibError::Call { error, .. } => error.raw_os_error(),
            XdpLibError::Unavailable => None,
        }
    }
}

#[cfg(not(target_env = "musl"))]
mod sys {
    use super::Mode;
    use std::ffi::{c_char, c_int, c_long, c_uint, c_void};

    #[repr(C)]
    pub struct XdpProgram {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct XdpMultiprog {
        _private: [u8; 0],
    }
    /// `libxdp_print_fn_t`: the arguments come as a `va_list`, which C passes as a pointer.
    pub type PrintFn =
        unsafe extern "C" fn(level: c_int, format: *const c_char, args: *mut c_void) -> c_int;

    unsafe extern "C" {
        pub fn vsnprintf(
            buf: *mut c_char,
            size: usize,
            format: *const c_char,
            args: *mut c_void,
        ) -> c_int;
    }

    #[link(name = "xdp")]
    unsafe extern "C" {
        pub fn libxdp_get_error(ptr: *const c_void) -> c_long;
        pub fn libxdp_set_print(f: Option<PrintFn>) -> Option<PrintFn>;
        pub fn xdp_program__from_fd(fd: c_int) -> *mut XdpProgram;
        pub fn xdp_program__close(p: *mut XdpProgram);
        pub fn xdp_program__name(p: *const XdpProgram) -> *const c_char;
        pub fn xdp_program__id(p: *const XdpProgram) -> u32;
        pub fn xdp_program__run_prio(p: *const XdpProgram) -> c_uint;
        pub fn xdp_program__set_run_prio(p: *mut XdpProgram, prio: c_uint) -> c_int;
        pub fn xdp_program__chain_call_enabled(p: *const XdpProgram, action: c_uint) -> bool;
        pub fn xdp_program__set_chain_call_enabled(
            p: *mut XdpProgram,
            action: c_uint,
            enabled: bool,
        ) -> c_int;
        pub fn xdp_program__attach(
            p: *mut XdpProgram,
            ifindex: c_int,
            mode: Mode,
            flags: c_uint,
        ) -> c_int;
        pub fn xdp_program__detach(
            p: *mut XdpProgram,
            ifindex: c_int,
            mode: Mode,
            flags: c_uint,
        ) -> c_int;
        pub fn xdp_multiprog__get_from_ifindex(ifindex: c_int) -> *mut XdpMultiprog;
        pub fn xdp_multiprog__next_prog(
            p: *const XdpProgram,
            mp: *const XdpMultiprog,
        ) -> *mut XdpProgram;
        pub fn xdp_multiprog__main_prog(mp: *const XdpMultiprog) -> *mut XdpProgram;
        pub fn xdp_multiprog__is_legacy(mp: *const XdpMultiprog) -> bool;
        pub fn xdp_multiprog__attach_mode(mp: *const XdpMultiprog) -> Mode;
        pub fn xdp_multiprog__close(mp: *mut XdpMultiprog);
    }
}

/// Whether this build links libxdp.
pub const fn available() -> bool {
    cfg!(not(target_env = "musl"))
}

/// libxdp prints to stderr unless told otherwise; the agent's log is the place for it.
#[cfg(not(target_env = "musl"))]
fn quiet() {
    use std::ffi::{c_char, c_int, c_void};
    use std::sync::Once;
    static ONCE: Once = Once::new();
    unsafe extern "C" fn print(level: c_int, format: *const c_char, args: *mut c_void) -> c_int {
        if format.is_null() {
            return 0;
        }
        let mut buf = [0 as c_char; 512];
        // SAFETY: libxdp hands us its format and the matching va_list; vsnprintf writes at most
        // `buf.len()` bytes including the NUL.
        let text = unsafe {
            sys::vsnprintf(buf.as_mut_ptr(), buf.len(), format, args);
            CStr::from_ptr(buf.as_ptr())
        }
        .to_string_lossy();
        let text = text.trim_end();
        // LIBXDP_WARN = 0, LIBXDP_INFO = 1, LIBXDP_DEBUG = 2. Its warnings are explained by
        // the error the agent reports; they are debug detail here.
        match level {
            0 | 1 => tracing::debug!(target: "libxdp", "{text}"),
            _ => tracing::trace!(target: "libxdp", "{text}"),
        }
        0
    }
    // SAFETY: registering a callback with the signature libxdp expects; it lives forever.
    ONCE.call_once(|| unsafe {
        sys::libxdp_set_print(Some(print));
    });
}

#[cfg(not(target_env = "musl"))]
fn call_error(call: &'static str, code: i64) -> XdpLibError {
    XdpLibError::Call {
        call,
        error: std::io::Error::from_raw_os_error((-code) as i32),
    }
}

/// A program as libxdp sees it (owned: closed on drop).
#[derive(Debug)]
pub struct Program {
    #[cfg(not(target_env = "musl"))]
    raw: *mut sys::XdpProgram,
    /// Programs borrowed from a [`Multiprog`] are closed with it, not on their own.
    #[cfg(not(target_env = "musl"))]
    owned: bool,
}

/// What one program in a dispatcher is, for `status` and for telling ours from others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramEntry {
    pub name: String,
    pub id: u32,
    pub run_prio: u32,
    /// Actions after which the dispatcher runs the next program.
    pub chain_call: Vec<String>,
}

#[cfg(not(target_env = "musl"))]
impl Program {
    /// Wraps an already loaded program (libxdp duplicates the fd).
    pub fn from_fd(fd: BorrowedFd<'_>) -> Result<Program, XdpLibError> {
        quiet();
        // SAFETY: a valid fd; libxdp duplicates it and returns an owned object or an error.
        let raw = unsafe { sys::xdp_program__from_fd(fd.as_raw_fd()) };
        // SAFETY: libxdp_get_error accepts any pointer libxdp returned.
        let err = unsafe { sys::libxdp_get_error(raw.cast()) };
        if err != 0 || raw.is_null() {
            return Err(call_error("xdp_program__from_fd", err.min(-1)));
        }
        Ok(Program { raw, owned: true })
    }

    pub fn set_run_prio(&mut self, prio: u32) -> Result<(), XdpLibError> {
        // SAFETY: `raw` is a live program object.
        let rc = unsafe { sys::xdp_program__set_run_prio(self.raw, prio) };
        if rc < 0 {
            return Err(call_error("xdp_program__set_run_prio", rc.into()));
        }
        Ok(())
    }

    pub fn set_chain_call(&mut self, action: u32, enabled: bool) -> Result<(), XdpLibError> {
        // SAFETY: `raw` is a live program object.
        let rc = unsafe { sys::xdp_program__set_chain_call_enabled(self.raw, action, enabled) };
        if rc < 0 {
            return Err(call_error("xdp_program__set_chain_call_enabled", rc.into()));
        }
        Ok(())
    }

    /// Joins the dispatcher on `ifindex`, or installs one (libxdp retries when another writer
    /// swapped the dispatcher meanwhile).
    pub fn attach(&mut self, ifindex: u32, mode: Mode) -> Result<(), XdpLibError> {
        // SAFETY: `raw` is a live program object.
        let rc = unsafe { sys::xdp_program__attach(self.raw, ifindex as i32, mode, 0) };
        if rc < 0 {
            return Err(call_error("xdp_program__attach", rc.into()));
        }
        Ok(())
    }

    /// Leaves the dispatcher on `ifindex` (the last program out removes the dispatcher).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), XdpLibError> {
        // SAFETY: `raw` is a live program object.
        let rc = unsafe { sys::xdp_program__detach(self.raw, ifindex as i32, Mode::Unspec, 0) };
        if rc < 0 {
            return Err(call_error("xdp_program__detach", rc.into()));
        }
        Ok(())
    }

    pub fn id(&self) -> u32 {
        // SAFETY: `raw` is a live program object.
        unsafe { sys::xdp_program__id(self.raw) }
    }

    pub fn entry(&self) -> ProgramEntry {
        // SAFETY: `raw` is a live program object; its name is a NUL-terminated string it owns.
        let name = unsafe {
            let name = sys::xdp_program__name(self.raw);
            if name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            }
        };
        let chain_call = ACTIONS
            .iter()
            // SAFETY: as above.
            .filter(|(action, _)| unsafe {
                sys::xdp_program__chain_call_enabled(self.raw, *action)
            })
            .map(|(_, name)| (*name).to_owned())
            .collect();
        ProgramEntry {
            name,
            id: self.id(),
            // SAFETY: as above.
            run_prio: unsafe { sys::xdp_program__run_prio(self.raw) },
            chain_call,
        }
    }
}

#[cfg(not(target_env = "musl"))]
impl Drop for Program {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we own the object and drop it once.
            unsafe { sys::xdp_program__close(self.raw) }
        }
    }
}

/// What is on an interface, read through libxdp (under its lock).
pub struct Multiprog {
    #[cfg(not(target_env = "musl"))]
    raw: *mut sys::XdpMultiprog,
}

/// The XDP program(s) on an interface.
pub enum OnInterface {
    Nothing,
    /// A libxdp dispatcher and its programs in run order.
    Dispatcher(Multiprog),
    /// A program that does not speak the protocol: name and id.
    Foreign {
        name: String,
        id: u32,
    },
}

#[cfg(not(target_env = "musl"))]
impl Multiprog {
    pub fn read(ifindex: u32) -> Result<OnInterface, XdpLibError> {
        quiet();
        // SAFETY: plain call; returns an owned object, NULL or an error pointer.
        let raw = unsafe { sys::xdp_multiprog__get_from_ifindex(ifindex as i32) };
        // SAFETY: libxdp_get_error accepts any pointer libxdp returned.
        let err = unsafe { sys::libxdp_get_error(raw.cast()) };
        if err == -i64::from(libc::ENOENT) || (raw.is_null() && err == 0) {
            return Ok(OnInterface::Nothing);
        }
        if err != 0 {
            return Err(call_error("xdp_multiprog__get_from_ifindex", err));
        }
        let mp = Multiprog { raw };
        // SAFETY: `raw` is live.
        if unsafe { sys::xdp_multiprog__is_legacy(mp.raw) } {
            // SAFETY: `raw` is live; the main program belongs to it.
            let main = unsafe { sys::xdp_multiprog__main_prog(mp.raw) };
            if main.is_null() {
                return Ok(OnInterface::Nothing);
            }
            let entry = Program {
                raw: main,
                owned: false,
            }
            .entry();
            return Ok(OnInterface::Foreign {
                name: entry.name,
                id: entry.id,
            });
        }
        Ok(OnInterface::Dispatcher(mp))
    }

    /// The dispatcher's own program id.
    pub fn dispatcher_id(&self) -> u32 {
        // SAFETY: `raw` is live; the main program belongs to it.
        let main = unsafe { sys::xdp_multiprog__main_prog(self.raw) };
        if main.is_null() {
            return 0;
        }
        Program {
            raw: main,
            owned: false,
        }
        .id()
    }

    pub fn mode(&self) -> Mode {
        // SAFETY: `raw` is live.
        unsafe { sys::xdp_multiprog__attach_mode(self.raw) }
    }

    /// The component programs in run order.
    pub fn programs(&self) -> Vec<ProgramEntry> {
        let mut out = Vec::new();
        let mut p: *mut sys::XdpProgram = std::ptr::null_mut();
        loop {
            // SAFETY: `raw` is live; `p` is NULL or a program it returned.
            p = unsafe { sys::xdp_multiprog__next_prog(p, self.raw) };
            if p.is_null() {
                break;
            }
            out.push(
                Program {
                    raw: p,
                    owned: false,
                }
                .entry(),
            );
        }
        out
    }
}

#[cfg(not(target_env = "musl"))]
impl Drop for Multiprog {
    fn drop(&mut self) {
        // SAFETY: we own the object and drop it once.
        unsafe { sys::xdp_multiprog__close(self.raw) }
    }
}

/// Takes one program (by id) out of the dispatcher on `ifindex`.
#[cfg(not(target_env = "musl"))]
pub fn detach_id(ifindex: u32, id: u32) -> Result<(), XdpLibError> {
    quiet();
    // A program object of our own for the id: libxdp matches programs by id.
    let fd = prog_fd_by_id(id).map_err(|error| XdpLibError::Call {
        call: "bpf_prog_get_fd_by_id",
        error,
    })?;
    let mut prog = Program::from_fd(fd.as_fd_borrowed())?;
    prog.detach(ifindex)
}

#[cfg(not(target_env = "musl"))]
struct ProgFd(std::os::fd::OwnedFd);

#[cfg(not(target_env = "musl"))]
impl ProgFd {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.0.as_fd()
    }
}

/// BPF_PROG_GET_FD_BY_ID.
#[cfg(not(target_env = "musl"))]
fn prog_fd_by_id(id: u32) -> std::io::Result<ProgFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    #[repr(C)]
    struct IdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = IdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const IdAttr,
            size_of::<IdAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(ProgFd(unsafe {
        std::os::fd::OwnedFd::from_raw_fd(fd as i32)
    }))
}

#[cfg(target_env = "musl")]
mod unavailable {
    use super::*;
    impl Program {
        pub fn from_fd(_: BorrowedFd<'_>) -> Result<Program, XdpLibError> {
            Err(XdpLibError::Unavailable)
        }
        pub fn set_run_prio(&mut self, _: u32) -> Result<(), XdpLibError> {
            Err(XdpLibError::Unavailable)
        }
        pub fn set_chain_call(&mut self, _: u32, _: bool) -> Result<(), XdpLibError> {
            Err(XdpLibError::Unavailable)
        }
        pub fn attach(&mut self, _: u32, _: Mode) -> Result<(), XdpLibError> {
            Err(XdpLibError::Unavailable)
        }
        pub fn detach(&mut self, _: u32) -> Result<(), XdpLibError> {
            Err(XdpLibError::Unavailable)
        }
        pub fn id(&self) -> u32 {
            0
        }
        pub fn entry(&self) -> ProgramEntry {
            ProgramEntry {
                name: String::new(),
                id: 0,
                run_prio: 0,
                chain_call: Vec::new(),
            }
        }
    }
    impl Multiprog {
        pub fn read(_: u32) -> Result<OnInterface, XdpLibError> {
            Err(XdpLibError::Unavailable)
        }
        pub fn dispatcher_id(&self) -> u32 {
            0
        }
        pub fn mode(&self) -> Mode {
            Mode::Unspec
        }
        pub fn programs(&self) -> Vec<ProgramEntry> {
            Vec::new()
        }
    }
    pub fn detach_id(_: u32, _: u32) -> Result<(), XdpLibError> {
        Err(XdpLibError::Unavailable)
    }
}
#[cfg(target_env = "musl")]
pub use unavailable::detach_id;
