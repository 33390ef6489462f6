//! Least privilege for the internet-facing proxy: the agent (root, with CAP_BPF, CAP_NET_ADMIN,
//! CAP_PERFMON for the filter) never parses a client's byte. It binds the listeners, reads the
//! token and TLS files, and runs the proxy as a separate process of the same binary that
//!
//! - inherits only the listening sockets and one end of a socketpair (checked after exec);
//! - drops to `[public] proxy_user` (default `nobody`) with no supplementary groups, clears every
//!   capability set including the bounding and ambient sets, sets `no_new_privs`, is not
//!   dumpable, and dies with the agent ([`privileges`]);
//! - gets its config, the token set and the TLS material over the socketpair, and every change
//!   after ([`protocol`]); it reads no file.
//!
//! So a compromise of the proxy code gains no capability, no BPF map or pin (it holds no such
//! descriptor and could not open one), and no file the agent applies (the CIDR file and the
//! token file are root's). The agent restarts a crashed process with back-off ([`supervisor`]).

pub mod privileges;
pub mod process;
pub mod protocol;
pub mod supervisor;

pub use supervisor::{SUBCOMMAND, Supervisor, SupervisorError};
