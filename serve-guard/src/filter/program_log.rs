//! The XDP program's debug log (aya-log), forwarded into the agent's tracing output.
//!
//! aya-log hands out `log` records whose target is the eBPF crate's module path, which is
//! `serve_guard` like the agent's own. They are forwarded as INFO events under the target
//! [`TARGET`] instead: the operator asked for them with `program_log = true`, so they show at the
//! default level and can be filtered apart (`RUST_LOG=serve_guard::xdp=off`).

#![allow(
    unsafe_code,
    reason = "registering aya-log's ring-buffer fd with tokio"
)]

use super::{FilterError, error_chain};
use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// Name of the global aya-log-ebpf reads its level from; 0 turns every statement off, so the
/// verifier can prune the logging code when `program_log` is off.
pub(crate) const LEVEL_GLOBAL: &str = aya_log::LEVEL;
pub(crate) const LEVEL_OFF: u8 = 0;

/// Tracing target of the program's records.
pub const TARGET: &str = "serve_guard::xdp";

/// Turns aya-log's `log` records into tracing events.
struct Forwarder;

impl log::Log for Forwarder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: TARGET, level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// The program's log ring buffer, ready to be drained.
pub struct ProgramLog {
    logger: EbpfLogger<Forwarder>,
}

impl ProgramLog {
    pub(crate) fn init(ebpf: &mut aya::Ebpf) -> Result<Self, FilterError> {
        let logger =
            EbpfLogger::init_with_logger(ebpf, Forwarder).map_err(|e| FilterError::ProgramLog {
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
