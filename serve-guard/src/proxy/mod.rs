//! Public mode: the token-checking reverse proxy in front of Ray Serve (being written).

pub mod status;
