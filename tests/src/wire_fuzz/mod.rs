//! The black-box wire fuzzer (issue 7): the kernel is the oracle. Seeded frames, biased to
//! traffic a kernel delivers but a parser may misread (fragments, extension chains, options,
//! VLAN priority tags, length lies), go into two identical server namespaces, one behind the
//! serve-guard XDP program and one behind an XDP program that passes everything. What each
//! kernel delivers to its sockets decides:
//! - from a source outside the allow-list, any delivery to a protected port through the filter
//!   is a bypass;
//! - from an inside source, the filter must deliver exactly what the baseline delivers;
//! - from outside to an unprotected port, a difference is an over-block, expected only for the
//!   reasons docs/filter.md lists.
//!
//! - [`lab`]: the two lanes (namespaces, veths, XDP, listeners, sysctls).
//! - [`generate`], [`shapes`], [`packet`], [`named`]: the cases and their frames.
//! - [`observe`]: sending, capturing, the barrier that ends a round.
//! - [`campaign`], [`classify`], [`report`]: judging, counting and writing findings.

pub mod campaign;
pub mod case;
pub mod classify;
pub mod generate;
pub mod lab;
pub mod named;
pub mod observe;
pub mod packet;
pub mod raw;
pub mod report;
pub mod rng;
pub mod shapes;
