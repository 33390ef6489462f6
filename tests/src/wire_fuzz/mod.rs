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
//! Port classes (issue 16): the filtered lane runs `guard = "node"` (every port guarded but the
//! strict Serve ports and one open port). A guarded port with a listener and an unconnected UDP
//! socket is kept out like a strict one, for every TCP segment (a SYN, or a bare ACK guessing a
//! SYN cookie, which the listener would answer with a reset) and every datagram; a guarded port
//! without sockets only for a SYN without ACK: every other segment looks like a reply and must
//! get the kernel's answer as without the filter ([`lab::kept_out`]).
//!
//! - [`lab`]: the two lanes (namespaces, veths, XDP, listeners, sysctls).
//! - [`generate`], [`shapes`], [`named`]: the cases, their frames written with
//!   [`crate::frames`].
//! - [`observe`]: sending, capturing, the barrier that ends a round.
//! - [`campaign`], [`classify`], [`report`]: judging, counting and writing findings.
//! - [`replies`]: the server's own connections, whose replies must get through guarded ports.

pub mod campaign;
pub mod case;
pub mod classify;
pub mod generate;
pub mod lab;
pub mod named;
pub mod observe;
pub mod raw;
pub mod replies;
pub mod report;
pub mod shapes;

/// The frame writers under the names tests/tests/wire/fuzz_wire.rs imports them by; they are
/// [`crate::frames`]'s, framed from the lab's client to its server.
pub mod packet {
    pub use super::lab::ethernet;
    pub use crate::frames::ipv4::{Datagram as V4Header, fragment as ipv4};
    pub use crate::frames::ipv6::packet as ipv6;
    pub use crate::frames::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};
}
