//! The XDP program and its allow-list on the real kernel: verdict tables, the verdict fuzzer's CI slice and its regressions, the allow-list, live CIDR edits, a million CIDRs per family.
//!
//! One test binary per group (issue 18): each file is a module, as it was a binary before.

mod allow_list;
mod capacity;
#[path = "../cidr_support/mod.rs"]
mod cidr_support;
mod fuzz_regressions;
mod fuzz_verdict;
mod live_cidr;
mod verdicts;
