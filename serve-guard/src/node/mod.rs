//! The node as the kernel sees it, in the agent's network namespace: its links, addresses and
//! routes (`netlink`) and the paths around the filter they open (`exposure`); its sockets and
//! their owner processes (`sockets`) and the audit of who outside the allow-list can reach them
//! (`listeners`).

pub mod exposure;
pub mod listeners;
pub mod netlink;
pub mod sockets;

pub use exposure::{Exposure, ScanError, scan};
pub use listeners::{AuditError, ListenerAudit};
