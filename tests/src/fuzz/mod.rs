//! The in-process differential fuzzer of the XDP verdict (issue 7): structure-aware generated
//! frames through the real program (BPF_PROG_TEST_RUN) and through an independent reference
//! model of docs/filter.md; any disagreement in return value or counter is a mismatch.
//!
//! - [`model`]: the verdict as docs/filter.md states it, written without the program's source.
//! - [`generate`]: seeded generators; `(seed, index)` reproduces a frame.
//! - [`scenario`]: the ports and allow-lists both sides judge with.
//! - [`differential`]: the run, with counters checked per batch and bad batches replayed.
//! - [`prng`]: splitmix64, one stream per frame.

pub mod differential;
pub mod generate;
pub mod model;
pub mod prng;
pub mod scenario;
