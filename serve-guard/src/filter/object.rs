//! The compiled XDP program, embedded in the agent at build time (see build.rs).

/// The eBPF object file (ELF) built from the serve-guard-ebpf crate.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/serve-guard"));
