//! `[public] proxy_user` in the user database: the account the proxy process drops to. Looked
//! up by the agent (and `check`), which passes the ids on the process's command line: the
//! process itself reads no file, `/etc/passwd` included.

#![allow(unsafe_code, reason = "getpwnam_r(3)")]

use std::ffi::CString;

use serve_guard_proxy::worker::privileges::Account;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("[public] proxy_user `{0}` is not a user on this system (create it, or pick another)")]
    UnknownUser(String),
    #[error("[public] proxy_user `{0}` is root (uid or primary gid 0); pick an unprivileged user")]
    RootUser(String),
}

/// Looks `name` up in the user database; its primary group is the group. Root (uid or primary
/// gid 0) is refused: the point of the account is to hold nothing.
pub fn lookup(name: &str) -> Result<Account, AccountError> {
    let c_name = CString::new(name).map_err(|_| AccountError::UnknownUser(name.into()))?;
    // SAFETY: an all-zero passwd is a valid value of this plain C struct (null pointers, zero
    // ids); getpwnam_r fills it.
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
        return Err(AccountError::UnknownUser(name.into()));
    }
    if pwd.pw_uid == 0 || pwd.pw_gid == 0 {
        return Err(AccountError::RootUser(name.into()));
    }
    Ok(Account {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown_users_are_refused() {
        assert!(matches!(lookup("root"), Err(AccountError::RootUser(_))));
        assert!(matches!(
            lookup("no-such-user-serve-guard"),
            Err(AccountError::UnknownUser(_))
        ));
        let nobody = lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
    }
}
