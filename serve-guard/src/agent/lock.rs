//! One agent per state directory: an exclusive flock on `<state_dir>/agent.lock`, held for the
//! agent's whole life. The kernel drops it when the process dies however it dies, so a crashed
//! agent never blocks the next one.

#![allow(unsafe_code, reason = "flock(2) on the lock file")]

use super::AgentError;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "agent.lock";
/// The state directory may hold the token and the CIDR revision: owner only.
pub const STATE_DIR_MODE: u32 = 0o700;
const LOCK_FILE_MODE: u32 = 0o600;
/// The lock file holds the agent's pid in decimal; anything longer is not ours.
const MAX_PID_TEXT: u64 = 32;
/// `agent_running` probes with a shared lock held for microseconds; an agent starting at that
/// instant retries for this long before concluding that another agent holds the lock.
const ACQUIRE_PATIENCE: Duration = Duration::from_secs(1);
const ACQUIRE_RETRY: Duration = Duration::from_millis(10);

pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE)
}

/// Held while the agent runs; released on drop (or by the kernel when the process dies).
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    /// Creates the state directory if needed and takes the lock, or says which agent holds it.
    pub fn acquire(state_dir: &Path) -> Result<AgentLock, AgentError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(STATE_DIR_MODE)
            .create(state_dir)
            .map_err(|error| AgentError::StateDir {
                path: state_dir.to_owned(),
                error,
            })?;
        let path = lock_path(state_dir);
        let lock_err = |error| AgentError::Lock {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(LOCK_FILE_MODE)
            .open(&path)
            .map_err(lock_err)?;
        let deadline = Instant::now() + ACQUIRE_PATIENCE;
        while !try_flock(&file, libc::LOCK_EX).map_err(lock_err)? {
            if Instant::now() >= deadline {
                return Err(AgentError::AlreadyRunning {
                    state_dir: state_dir.to_owned(),
                    pid: read_pid(&mut file),
                });
            }
            std::thread::sleep(ACQUIRE_RETRY);
        }
        // Only the lock holder writes: the pid helps the operator find the running agent.
        file.set_len(0).map_err(lock_err)?;
        file.seek(SeekFrom::Start(0)).map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(AgentLock { _file: file })
    }
}

/// True when an agent holds the lock of `state_dir` (for verbs that must not act behind a
/// running agent's back, such as `detach`).
pub fn agent_running(state_dir: &Path) -> bool {
    running_agent_pid(state_dir).is_some()
}

/// The pid of the agent holding the lock of `state_dir` (0 if it could not be read), or `None`
/// when no agent runs.
pub fn running_agent_pid(state_dir: &Path) -> Option<u32> {
    let mut file = File::open(lock_path(state_dir)).ok()?;
    match try_flock(&file, libc::LOCK_SH) {
        // We got it, so nobody holds it exclusively; closing the file releases it.
        Ok(true) => None,
        Ok(false) => Some(read_pid(&mut file).unwrap_or(0)),
        Err(_) => None,
    }
}

/// Non-blocking flock; false when another open file holds a conflicting lock.
fn try_flock(file: &File, operation: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a valid open fd; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(MAX_PID_TEXT).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sg-lock-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_second_agent_is_refused_until_the_first_stops() {
        let dir = temp_state_dir("two");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!agent_running(&dir));
        let first = AgentLock::acquire(&dir).unwrap();
        assert_eq!(running_agent_pid(&dir), Some(std::process::id()));
        let err = AgentLock::acquire(&dir).unwrap_err();
        assert!(
            matches!(err, AgentError::AlreadyRunning { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        drop(first);
        assert!(!agent_running(&dir));
        let again = AgentLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
