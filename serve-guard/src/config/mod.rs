//! The TOML config file (being written).

pub mod public;
