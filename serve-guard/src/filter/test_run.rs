//! A safe wrapper over `bpf(BPF_PROG_TEST_RUN)`, which aya does not expose: runs a loaded
//! program on a crafted packet inside the kernel (no attach, no traffic). The verdict tests
//! and the benchmark use it; the kernel-reported `duration` is the stable per-packet cost on
//! these VMs (the syscall's wall-clock time is not).

#![allow(unsafe_code, reason = "bpf(2) BPF_PROG_TEST_RUN")]

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `enum bpf_cmd` value of BPF_PROG_TEST_RUN (uapi/linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_int = 10;

/// Room for programs that grow the packet (bpf_xdp_adjust_head/tail) on top of the input.
const DATA_OUT_SLACK: usize = 4096;

/// Inputs the kernel accepts for one XDP test run: at least an Ethernet header, at most a page
/// minus XDP headroom and skb_shared_info (the exact limit depends on the kernel; it reports
/// EINVAL past it).
pub const MIN_DATA_LEN: usize = 14;

/// The `test` member of `union bpf_attr` (uapi/linux/bpf.h), up to `batch_size`.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit, so it is zeroed: the kernel rejects (EINVAL) any non-zero byte past the last
    /// field it knows, and implicit padding would carry stack garbage.
    _pad: u32,
}

const _: () = assert!(size_of::<TestRunAttr>() == 80);

/// What one `BPF_PROG_TEST_RUN` reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (for XDP an `xdp_action`: 1 = DROP, 2 = PASS).
    pub retval: u32,
    /// Mean run time per repetition, in nanoseconds, measured by the kernel.
    pub duration_ns: u32,
    /// Length of the packet after the program ran.
    pub data_out_len: u32,
    /// The packet after the program ran.
    pub data_out: Vec<u8>,
}

/// Runs `prog` on `data` `repeat` times (0 counts as 1, as in the kernel).
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<TestRun> {
    let data_size_in = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "test-run data too large"))?;
    let mut data_out = vec![0u8; data.len() + DATA_OUT_SLACK];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in,
        data_size_out: data_out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, fully initialised prefix of bpf_attr for this command and
    // lives across the call; data_in/data_out point to buffers of the stated sizes that
    // outlive the call. The kernel reads data_in and writes at most data_size_out bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    data_out.truncate((attr.data_size_out as usize).min(data_out.len()));
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
        data_out_len: attr.data_size_out,
        data_out,
    })
}
