//! The agent as shipped: the systemd unit's sandbox, the .deb on a fresh Debian 11, the Kubernetes and `ray up` recipes.
//!
//! One test binary per group (issue 18): each file is a module, as it was a binary before.

#[path = "../cidr_support/mod.rs"]
mod cidr_support;
mod deploy;
mod package;
mod systemd;
