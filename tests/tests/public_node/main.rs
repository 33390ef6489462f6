//! Public mode on a node without Ray: one token for a cluster of agents, the proxy process's privileges.
//!
//! One test binary per group (issue 18): each file is a module, as it was a binary before.

mod cluster;
mod proxy_privileges;
