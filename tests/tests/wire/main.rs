//! Real frames over veths through the attached filter: the wire fuzzer's CI slice, private mode end to end, and the paths around the filter (exposure).
//!
//! One test binary per group (issue 18): each file is a module, as it was a binary before.

mod exposure;
mod fuzz_wire;
mod private_mode;
