//! File-system primitives the store relies on: atomic replacement, a private directory, and an
//! exclusive lock with a deadline.

#![allow(unsafe_code, reason = "flock(2) on the store lock")]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Mode of the state directory: the revision and lock files are root's business.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of private files (lock, revision).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of a CIDR file the store creates; an existing file keeps its mode.
pub const NEW_FILE_MODE: u32 = 0o644;
/// Largest file the store reads (the CIDR file, the revision file that records the list): the
/// limit of a CIDR file.
pub const MAX_FILE_BYTES: u64 = crate::cidr::MAX_FILE_BYTES;
/// How often a waiting lock is retried.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Reads a text file, refusing one larger than [`MAX_FILE_BYTES`].
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let len = fs::metadata(path)?.len();
    if len > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes is more than the limit of {MAX_FILE_BYTES}"),
        ));
    }
    fs::read_to_string(path)
}

/// Where a write to `path` lands: through a symlink to its target, so a link the operator made
/// (e.g. into a config repository) stays a link.
fn write_target(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path),
        _ => Ok(path.to_owned()),
    }
}

/// Replaces `path` with `bytes` so that a reader sees the old or the new content, never a mix,
/// and a crash leaves one of the two: temp file in the same directory, fsync, rename, fsync of
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with_mode(path, bytes, NEW_FILE_MODE)
}

/// [`write_atomic`] with the mode a new file gets; an existing file keeps its own.
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], new_file_mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let target = write_target(path)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mode = fs::metadata(&target)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(new_file_mode);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; the file keeps the one it had.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// Takes an exclusive lock on `path` (created 0600), waiting at most `timeout`
/// (`ErrorKind::TimedOut` after that).
pub fn lock_exclusive(path: &Path, timeout: Duration) -> io::Result<LockGuard> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(LockGuard { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.kind() != io::ErrorKind::Interrupted
        {
            return Err(err);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "lock held too long",
            ));
        }
        std::thread::sleep(LOCK_POLL);
    }
}
