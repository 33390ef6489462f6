//! Ctrl-C (and SIGTERM) without leaving namespaces, pins or an agent behind: the handler only
//! records the signal; the demo checks it between steps and returns an error, so every Drop
//! guard runs while unwinding. Each step is bounded, so the demo stops within a few seconds.

use anyhow::{Result, bail};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic is valid.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "installing the signal handler: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Fails once Ctrl-C was pressed, so `?` unwinds through the guards.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}
