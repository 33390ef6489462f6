//! The node as the kernel sees it, in the agent's network namespace: its links and routes
//! (`netlink`), and the paths around the filter they open (`exposure`).

pub mod exposure;
pub mod netlink;

pub use exposure::{Exposure, ScanError, scan};
