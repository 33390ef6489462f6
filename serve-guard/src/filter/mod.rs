//! The XDP program: loading, pinning, attaching, maps, counters.

pub mod object;
pub mod test_run;
