//! The XDP program's debug log (aya-log), forwarded into the agent's tracing output. aya-log
//! emits `log` records; the tracing subscriber's log bridge (see `crate::logging`) turns them into
//! tracing events under the `serve_guard_ebpf` target.

use super::{FilterError, error_chain};
use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// Name of the global aya-log-ebpf reads its level from; 0 turns every statement off, so the
/// verifier can prune the logging code when `program_log` is off.
pub(crate) const LEVEL_GLOBAL: &str = aya_log::LEVEL;
pub(crate) const LEVEL_OFF: u8 = 0;

/// The program's log ring buffer, ready to be drained.
pub struct ProgramLog {
    logger: EbpfLogger<&'static dyn log::Log>,
}

impl ProgramLog {
    pub(crate) fn init(ebpf: &mut aya::Ebpf) -> Result<Self, FilterError> {
        let logger = EbpfLogger::init(ebpf).map_err(|e| FilterError::ProgramLog {
            detail: error_chain(&e),
        })?;
        Ok(Self { logger })
    }

    /// Forwards records until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), FilterError> {
        // SAFETY: the logger owns its ring-buffer fd and flushing never closes or replaces it.
        let mut fd = unsafe { AsyncFd::register_with_interest(self.logger, Interest::READABLE) }
            .map_err(|e| FilterError::ProgramLog {
                detail: e.to_string(),
            })?;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                guard = fd.readable_mut() => {
                    let mut guard = guard.map_err(|e| FilterError::ProgramLog {
                        detail: e.to_string(),
                    })?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        fd.get_mut().flush();
        Ok(())
    }
}
