//! serve-guard: keeps Ray Serve's ports private to the VPC with an XDP filter, or (public mode)
//! behind a per-cluster bearer token.
