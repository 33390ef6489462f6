//! Becoming an unprivileged process: the proxy process drops everything before it reads a byte
//! from the network. No capability in any set (effective, permitted, inheritable, ambient, and
//! the bounding set, so nothing can come back), another uid and gid than root's and no
//! supplementary groups, `no_new_privs` (no setuid binary or file capability can raise it again),
//! not dumpable (no other process of the same user can ptrace it or read its memory), and killed
//! when the agent dies. [`verify`] reads the result back from `/proc/self/status` and fails
//! closed if any of it did not take.
//!
//! Capability sets and `no_new_privs` are per thread: this must run while the process is still
//! single-threaded (before any async runtime starts).

use std::ffi::CString;
use std::io;

/// An account to run as: never uid or gid 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("[public] proxy_user `{0}` is not a user on this system (create it, or pick another)")]
    UnknownUser(String),
    #[error("[public] proxy_user `{0}` is root (uid or primary gid 0); pick an unprivileged user")]
    RootUser(String),
    #[error("cannot {step}: {source}")]
    Call {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("privileges were not dropped: {0}")]
    NotDropped(String),
}

/// Linux capability header version 3 (64-bit sets in two 32-bit halves).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Highest capability number the running kernel knows.
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";
/// Capability numbers beyond any kernel's (for when CAP_LAST_CAP cannot be read).
const CAP_FALLBACK_LAST: u64 = 63;

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

impl Account {
    /// Looks `name` up in the user database; its primary group is the group.
    pub fn lookup(name: &str) -> Result<Account, PrivilegeError> {
        let c_name = CString::new(name).map_err(|_| PrivilegeError::UnknownUser(name.into()))?;
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s strings
        // (none are used).
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(PrivilegeError::UnknownUser(name.into()));
        }
        if pwd.pw_uid == 0 || pwd.pw_gid == 0 {
            return Err(PrivilegeError::RootUser(name.into()));
        }
        Ok(Account {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

fn check(step: &'static str, rc: libc::c_long) -> Result<(), PrivilegeError> {
    if rc < 0 {
        return Err(PrivilegeError::Call {
            step,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn prctl(
    step: &'static str,
    option: libc::c_int,
    arg: libc::c_ulong,
) -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only.
    check(step, unsafe { libc::prctl(option, arg, 0, 0, 0) }
        as libc::c_long)
}

fn last_cap() -> u64 {
    std::fs::read_to_string(CAP_LAST_CAP)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_FALLBACK_LAST)
}

/// Drops to `account` with no capabilities at all. `parent` is the agent's pid: if it is already
/// gone when the death signal is armed, the process exits at once.
pub fn drop_to(account: Account, parent: libc::pid_t) -> Result<(), PrivilegeError> {
    prctl("set no_new_privs", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the uid.
    for cap in 0..=last_cap() {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(PrivilegeError::Call {
                step: "drop a capability from the bounding set",
                source: io::Error::last_os_error(),
            });
        }
    }
    prctl(
        "clear the ambient capabilities",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    // SAFETY: plain syscalls with integer arguments (and a null list for setgroups).
    unsafe {
        check(
            "drop supplementary groups",
            libc::setgroups(0, std::ptr::null()) as libc::c_long,
        )?;
        check(
            "set the group ids",
            libc::setresgid(account.gid, account.gid, account.gid) as libc::c_long,
        )?;
        check(
            "set the user ids",
            libc::setresuid(account.uid, account.uid, account.uid) as libc::c_long,
        )?;
    }
    // A uid change from 0 clears the permitted and effective sets; clear all three explicitly.
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are valid for the v3 layout (two CapData).
    check("clear the capability sets", unsafe {
        libc::syscall(libc::SYS_capset, &header, data.as_ptr())
    })?;
    prctl("make the process non-dumpable", libc::PR_SET_DUMPABLE, 0)?;
    // After the uid change: changing credentials resets the parent-death signal. It fires when
    // the agent's thread that spawned this process ends (the runtime's threads live as long as
    // the agent); the end of the channel, which closes with the agent's process, is what
    // `process` stops on in any case.
    prctl(
        "arm the parent-death signal",
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
    )?;
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(PrivilegeError::NotDropped(
            "the agent exited while the proxy process started".into(),
        ));
    }
    verify()
}

/// The credentials of this process as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub capabilities: [u64; 5],
    /// Real, effective, saved, filesystem uid.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: Vec<u32>,
    pub no_new_privs: bool,
}

/// Parses `/proc/<pid>/status`.
pub fn credentials(status: &str) -> Credentials {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(u64::MAX);
    let ids = |name: &str| {
        field(name)
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect::<Vec<u32>>()
    };
    Credentials {
        capabilities: [
            hex("CapInh:"),
            hex("CapPrm:"),
            hex("CapEff:"),
            hex("CapBnd:"),
            hex("CapAmb:"),
        ],
        uids: ids("Uid:"),
        gids: ids("Gid:"),
        groups: ids("Groups:"),
        no_new_privs: field("NoNewPrivs:") == "1",
    }
}

/// Fails unless every capability set is empty, no uid or gid is 0, there are no supplementary
/// groups and `no_new_privs` is set.
pub fn verify() -> Result<(), PrivilegeError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|source| PrivilegeError::Call {
            step: "read /proc/self/status",
            source,
        })?;
    let creds = credentials(&status);
    let clean = creds.capabilities == [0; 5]
        && creds.uids.len() == 4
        && creds.gids.len() == 4
        && !creds.uids.contains(&0)
        && !creds.gids.contains(&0)
        && creds.groups.is_empty()
        && creds.no_new_privs;
    if clean {
        Ok(())
    } else {
        Err(PrivilegeError::NotDropped(format!("{creds:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tx\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let c = credentials(status);
        assert_eq!(c.capabilities, [0; 5]);
        assert_eq!(c.uids, vec![65534; 4]);
        assert!(c.groups.is_empty() && c.no_new_privs);
        let root = status.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        assert_ne!(credentials(&root).capabilities[3], 0);
    }

    #[test]
    fn root_and_unknown_users_are_refused() {
        assert!(matches!(
            Account::lookup("root"),
            Err(PrivilegeError::RootUser(_))
        ));
        assert!(matches!(
            Account::lookup("no-such-user-serve-guard"),
            Err(PrivilegeError::UnknownUser(_))
        ));
        let nobody = Account::lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
    }
}
