//! The only unsafe code of the proxy crate: the few calls into the kernel that the proxy
//! process's start must make, each wrapped in a safe function with a fixed meaning. Adopting
//! the descriptors the agent passed, naming the process, and the privilege drop (`privileges`
//! decides the order and checks the result; these functions only make the calls). Every other
//! module of the crate forbids unsafe code.
//!
//! Each function takes plain integers (or a checked string) and passes no pointer the kernel
//! could write through beyond what it names, so none of them can break memory safety whatever
//! its arguments.

#![allow(
    unsafe_code,
    reason = "the worker's start: prctl, setgroups, setres[ug]id, capset, fds"
)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The comm of a process is at most this many bytes (TASK_COMM_LEN, 16, with the NUL).
pub const COMM_MAX: usize = 15;

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// prctl with integer arguments only.
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every caller passes an option whose argument is an integer, not a pointer
    // (PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_SET_DUMPABLE, PR_SET_PDEATHSIG);
    // the unused arguments are 0 as the kernel requires.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) }.into())
}

/// Sets the calling thread's name, which for the main thread is the process's comm (what `ps`,
/// `top` and `ss -p` show). Longer names are refused rather than cut by the kernel.
pub fn set_comm(name: &CStr) -> io::Result<()> {
    if name.to_bytes().len() > COMM_MAX {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer;
    // `name` is NUL-terminated, valid for the call, and checked above to fit.
    check(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) }.into())
}

pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// Drops capability `cap` from the bounding set; EINVAL for a number the kernel does not know.
pub fn drop_bounding_capability(cap: u64) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)
}

pub fn clear_ambient_capabilities() -> io::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
}

pub fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// `signal` is sent to this process when the thread that forked it ends.
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong)
}

pub fn clear_supplementary_groups() -> io::Result<()> {
    // SAFETY: a count of 0 with a null list is the documented way to drop every group; the
    // kernel reads nothing through the pointer.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }.into())
}

/// Real, effective and saved gid. The C library applies it to every thread of the process.
pub fn set_group_ids(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) }.into())
}

/// Real, effective and saved uid. The C library applies it to every thread of the process.
pub fn set_user_ids(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) }.into())
}

/// Linux capability header version 3 (64-bit sets in two 32-bit halves).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the effective, permitted and inheritable capability sets of the calling thread.
pub fn clear_capability_sets() -> io::Result<()> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data match the kernel's v3 layout (a header and two CapData), live for
    // the call, and capset only reads them.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
}

pub fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid takes nothing and cannot fail.
    unsafe { libc::getppid() }
}

/// What the agent passed the proxy process: its end of the channel and the listening sockets.
pub struct Inherited {
    pub channel: std::os::unix::net::UnixStream,
    pub http: std::net::TcpListener,
    pub grpc: Option<std::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("the inherited descriptors were already taken")]
    AlreadyAdopted,
    #[error("descriptor {0} is not one the agent could have passed (stdio, negative or repeated)")]
    NotInherited(RawFd),
}

/// Set once the inherited descriptors have owners: a second call would make two.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the descriptors the agent passed (by number, on the command line). Once
/// per process; stdio and repeated numbers are refused. The caller has checked that exactly
/// these descriptors (and stdio) are open (`process::only_these_fds`).
pub fn adopt(channel: RawFd, http: RawFd, grpc: Option<RawFd>) -> Result<Inherited, AdoptError> {
    let mut fds = vec![channel, http];
    fds.extend(grpc);
    for (i, &fd) in fds.iter().enumerate() {
        if fd <= 2 || fds[..i].contains(&fd) {
            return Err(AdoptError::NotInherited(fd));
        }
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(AdoptError::AlreadyAdopted);
    }
    // SAFETY: the agent passed these descriptors for exactly these uses; they are open (checked
    // by the caller), distinct and not stdio (checked above), and nothing else in this process
    // owns them: this is the one place that takes them, and only once (`ADOPTED`).
    unsafe {
        Ok(Inherited {
            channel: std::os::unix::net::UnixStream::from_raw_fd(channel),
            http: std::net::TcpListener::from_raw_fd(http),
            grpc: grpc.map(|fd| std::net::TcpListener::from_raw_fd(fd)),
        })
    }
}
