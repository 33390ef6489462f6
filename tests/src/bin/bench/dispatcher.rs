//! The dispatcher path (issue 20): the filter as an extension in the first slot of libxdp's own
//! dispatcher, against the same filter run directly and the empty-program floor, in the same run.
//! The dispatcher is made by libxdp on a veth of a namespace of its own (skb mode: the test run
//! does not care, and a veth needs a peer up for native mode); the test run goes to the
//! dispatcher program, which calls the slot.

use super::{DISPATCHER_CASES, PROTECTED_CASES, Scenario, median_of};
use anyhow::{Context as _, Result};
use serve_guard::filter::libxdp::{Mode, Multiprog, OnInterface, Program};
use serve_guard_tests::netns::Netns;
use serve_guard_tests::program::TestProgram;
use std::fmt::Write as _;
use std::os::fd::{AsFd as _, OwnedFd};

const IFACE: &str = "sgb0";
const PEER: &str = "sgb1";

/// The dispatcher with the filter in it; dropping it takes everything down with the namespace
/// (libxdp's pins go with the unload).
pub struct Dispatched {
    pub fd: OwnedFd,
    ns: Netns,
    ifindex: u32,
    program_id: u32,
    _extension: aya::Ebpf,
}

impl Dispatched {
    pub fn new(filter: &TestProgram) -> Result<Dispatched> {
        let extension = filter.load_extension()?;
        let ns = Netns::new("sg-bench-disp")?;
        ns.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", PEER])?;
        ns.ip(&["link", "set", IFACE, "up"])?;
        ns.ip(&["link", "set", PEER, "up"])?;
        let ext: &aya::programs::Extension = extension
            .program(serve_guard_common::PROGRAM_NAME)
            .context("extension missing")?
            .try_into()?;
        let ext_fd = ext.fd()?.try_clone()?;
        let (ifindex, program_id, dispatcher_id) =
            ns.run(move || -> Result<(u32, u32, u32)> {
                let ifindex = nix_ifindex(IFACE)?;
                let mut program = Program::from_fd(ext_fd.as_fd())?;
                program.set_run_prio(0)?;
                program.attach(ifindex, Mode::Skb)?;
                let id = program.id();
                let OnInterface::Dispatcher(mp) = Multiprog::read(ifindex)? else {
                    anyhow::bail!("libxdp put no dispatcher on {IFACE}");
                };
                Ok((ifindex, id, mp.dispatcher_id()))
            })??;
        let fd = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == dispatcher_id)
            .context("the dispatcher is not loaded")?
            .fd()?;
        let fd = fd.as_fd().try_clone_to_owned()?;
        Ok(Dispatched {
            fd,
            ns,
            ifindex,
            program_id,
            _extension: extension,
        })
    }
}

impl Drop for Dispatched {
    fn drop(&mut self) {
        let (ifindex, id) = (self.ifindex, self.program_id);
        let _ = self
            .ns
            .run(move || serve_guard::filter::libxdp::detach_id(ifindex, id));
    }
}

fn nix_ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    #[allow(unsafe_code, reason = "if_nametoindex(3)")]
    // SAFETY: a NUL-terminated name; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {name}");
    Ok(index)
}

/// The section of the report: the dispatcher path against direct and floor.
pub fn report(
    scenarios: &[Scenario],
    size: usize,
    skipped: Option<&anyhow::Error>,
) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "\n## Through libxdp's dispatcher\n")?;
    if let Some(e) = skipped {
        writeln!(
            out,
            "Not measured on this machine: {e:#}. (A kernel that refuses extension programs, as \
             under kernel lockdown, cannot run any libxdp dispatcher.)"
        )?;
        return Ok(out);
    }
    let floor = f64::from(scenarios[0].median().max(1));
    writeln!(
        out,
        "The filter in the first slot of libxdp's dispatcher (Debian's libxdp, the dispatcher \
         program run by BPF_PROG_TEST_RUN), the same filter run directly, and the empty \
         program, at {size} CIDRs, in the same run.\n"
    )?;
    writeln!(
        out,
        "| packet | direct ns | dispatcher ns | dispatcher - direct | x floor (direct / dispatcher) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for (dispatched, direct) in DISPATCHER_CASES.iter().zip(PROTECTED_CASES) {
        let d = median_of(scenarios, direct, size).unwrap_or(0);
        let x = median_of(scenarios, dispatched, size).unwrap_or(0);
        writeln!(
            out,
            "| {} | {d} | {x} | {} | {:.1} / {:.1} |",
            direct.trim_start_matches("filter: protected port, "),
            i64::from(x) - i64::from(d),
            f64::from(d) / floor,
            f64::from(x) / floor
        )?;
    }
    Ok(out)
}
