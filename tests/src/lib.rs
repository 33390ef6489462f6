//! Test harness: network-namespace topologies with Drop-guard cleanup, frame builders for the
//! verdict tests, and a handle on a running agent process.
