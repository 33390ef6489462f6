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

#![forbid(unsafe_code)]

use std::io;

use super::bootstrap;

/// An account to run as: never uid or gid 0 (the agent looks it up and refuses root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot {step}: {source}")]
    Call {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("privileges were not dropped: {0}")]
    NotDropped(String),
}

/// Highest capability number the running kernel knows.
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";
/// Capability numbers beyond any kernel's (for when CAP_LAST_CAP cannot be read).
const CAP_FALLBACK_LAST: u64 = 63;

/// Names the failed step of the drop.
fn step(step: &'static str) -> impl FnOnce(io::Error) -> PrivilegeError {
    move |source| PrivilegeError::Call { step, source }
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
    bootstrap::set_no_new_privs().map_err(step("set no_new_privs"))?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the uid.
    for cap in 0..=last_cap() {
        match bootstrap::drop_bounding_capability(cap) {
            // A number beyond this kernel's capabilities: nothing to drop.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => other.map_err(step("drop a capability from the bounding set"))?,
        }
    }
    bootstrap::clear_ambient_capabilities().map_err(step("clear the ambient capabilities"))?;
    bootstrap::clear_supplementary_groups().map_err(step("drop supplementary groups"))?;
    bootstrap::set_group_ids(account.gid).map_err(step("set the group ids"))?;
    bootstrap::set_user_ids(account.uid).map_err(step("set the user ids"))?;
    // A uid change from 0 clears the permitted and effective sets; clear all three explicitly.
    bootstrap::clear_capability_sets().map_err(step("clear the capability sets"))?;
    bootstrap::set_not_dumpable().map_err(step("make the process non-dumpable"))?;
    // After the uid change: changing credentials resets the parent-death signal. It fires when
    // the agent's thread that spawned this process ends (the runtime's threads live as long as
    // the agent); the end of the channel, which closes with the agent's process, is what
    // `process` stops on in any case.
    bootstrap::set_parent_death_signal(libc::SIGKILL)
        .map_err(step("arm the parent-death signal"))?;
    if bootstrap::parent_pid() != parent {
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
}
