//! Real Ray Serve behind the agent: a whole Ray node (HAProxy ingress, scaling) and public mode end to end with a browser. One Ray at a time (`ray::exclusive`).
//!
//! One test binary per group (issue 18): each file is a module, as it was a binary before.

mod public_mode;
mod ray_node;
