#![no_std]
// The program is the `serve-guard` binary target. This empty library exists so the agent can
// name this crate as a build-dependency (cargo then rebuilds the agent when the program changes)
// without compiling the program for the host.
