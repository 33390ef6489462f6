//! The agent as operators run it: start, stop, restart and adoption, start-up failures, systemd readiness and reload, the control socket, the CLI, metrics.
//!
//! One test binary per group (issue 18): each file is a module, as it was a binary before.

#[path = "../cidr_support/mod.rs"]
mod cidr_support;
mod cli;
mod cloud;
mod control;
mod lifecycle;
mod observability;
mod readiness;
mod sharing;
mod startup;
