//! The proxy process's side of least privilege. The agent (root, with CAP_BPF, CAP_NET_ADMIN,
//! CAP_PERFMON for the filter) never parses a client's byte: it binds the listeners, reads the
//! token and TLS files, and runs the proxy as a separate process of the same binary
//! (`serve-guard proxy-worker`, its supervisor is the agent's `proxy_supervisor`) that
//!
//! - inherits only the listening sockets and one end of a socketpair (checked after exec);
//! - names itself ([`PROCESS_NAME`], [`COMM`]) so `ps` and `ss -ltnp` show what it is;
//! - drops to `[public] proxy_user` (default `nobody`) with no supplementary groups, clears every
//!   capability set including the bounding and ambient sets, sets `no_new_privs`, is not
//!   dumpable, and dies with the agent ([`privileges`]);
//! - gets its config, the token set and the TLS material over the socketpair, and every change
//!   after ([`protocol`], whose types the supervisor shares); it reads no file.
//!
//! So a compromise of the proxy code gains no capability, no BPF map or pin (it holds no such
//! descriptor and could not open one), and no file the agent applies (the CIDR file and the
//! token file are root's).
//!
//! [`bootstrap`] holds the process's unsafe calls; the rest of this module forbids them.

pub mod bootstrap;
pub mod privileges;
pub mod process;
pub mod protocol;

pub use process::{Args, main};

/// The hidden subcommand the agent runs the proxy process with.
pub const SUBCOMMAND: &str = "proxy-worker";
/// The proxy process's argv[0] (`ps -f`, `/proc/<pid>/cmdline`): it is started through
/// /proc/self/exe, which would otherwise show as `exe`.
pub const PROCESS_NAME: &str = "serve-guard-proxy";
/// Its comm (`ps`, `top`, `ss -ltnp`): [`PROCESS_NAME`] cut to the kernel's 15 bytes, as the
/// kernel itself would cut it for a program file of that name (compare `systemd-journal`).
pub const COMM: &std::ffi::CStr = c"serve-guard-pro";
