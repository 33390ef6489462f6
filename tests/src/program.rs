//! The real XDP program, loaded (not attached) for verdict tests and the benchmark: fills the
//! port classes (open, strict, guarded), allow-lists and config, runs frames through
//! BPF_PROG_TEST_RUN and reads the counters summed over CPUs.
//!
//! BPF_PROG_TEST_RUN runs the program on the loopback device of the calling thread's network
//! namespace: a guarded port's socket lookups search that namespace's sockets. Tests of guarded
//! ports run frames from a thread inside a namespace of their own (`Netns::run`).
//!
//! The object declares its maps pinned by name. aya pins such maps under
//! `default_map_pin_directory` (or /sys/fs/bpf itself when none is set) and *reuses* maps
//! already pinned there, so every instance gets its own directory, removed on Drop: two tests
//! must never share maps.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use ipnet::IpNet;
use serve_guard::cidr::CidrList;
use serve_guard::filter::{
    allow::AllowMaps,
    object::OBJECT,
    test_run::{TestRun, test_run},
};
use serve_guard_common::{
    COUNTER_ENTRIES, Counter, Family, FilterConfig, PORT_ENTRIES, PORT_GUARDED, PORT_PROTECTED,
    PROGRAM_NAME, PortTable, PortValue, Reason, TC_PROGRAM_NAME, counter_index, maps,
};
use std::{
    ffi::CString,
    io,
    net::IpAddr,
    os::fd::{AsFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

const BPFFS: &str = "/sys/fs/bpf";
/// Pin directories of test instances: `<prefix><pid>-<n>`. Distinct from the agent harness's
/// `sg-test-` so the two never pick the same directory in one process.
const PIN_PREFIX: &str = "sg-prog-";
/// statfs f_type of a bpf filesystem (uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// XDP verdicts as BPF_PROG_TEST_RUN reports them (uapi `enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// The TC program's verdicts as BPF_PROG_TEST_RUN reports them: TC_ACT_SHOT, and TC_ACT_UNSPEC
/// (-1: the next program runs) as the u32 the kernel writes back.
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Which of the object's two programs an instance runs: the XDP program, or the same filter as
/// a TC classifier (the agent's fallback beside an XDP program outside libxdp's protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    #[default]
    Xdp,
    Tc,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    /// Whether BPF_PROG_TEST_RUN runs `frame` through this hook's program. For an skb the kernel
    /// refuses (EINVAL) a frame whose EtherType is IPv4 or IPv6 but which is shorter than that
    /// fixed header: such packets reach TC ingress on a real interface, but no test run can show
    /// what the program does with them (the XDP run covers the same parse).
    pub fn test_run_accepts(self, frame: &[u8]) -> bool {
        const ETH_HLEN: usize = 14;
        const IPV4_HLEN: usize = 20;
        const IPV6_HLEN: usize = 40;
        if self == Hook::Xdp {
            return true;
        }
        let l3 = frame.len().saturating_sub(ETH_HLEN);
        match frame.get(12..ETH_HLEN) {
            Some([0x08, 0x00]) => l3 >= IPV4_HLEN,
            Some([0x86, 0xdd]) => l3 >= IPV6_HLEN,
            _ => true,
        }
    }

    /// The return value that passes a packet at this hook.
    pub fn pass(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc => TC_ACT_UNSPEC,
        }
    }

    /// The return value that drops a packet at this hook.
    pub fn drop(self) -> u32 {
        match self {
            Hook::Xdp => XDP_DROP,
            Hook::Tc => TC_ACT_SHOT,
        }
    }
}

impl std::str::FromStr for Hook {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Hook::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| format!("no hook {s:?} (known: xdp, tc)"))
    }
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Counters of every (reason, family), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([[Counter; Family::COUNT]; Reason::COUNT]);

impl Counters {
    pub fn get(&self, reason: Reason, family: Family) -> Counter {
        self.0[reason as usize][family as usize]
    }

    /// Every (reason, family) whose packet count differs from `before`, with the difference.
    pub fn moved_since(&self, before: &Counters) -> Vec<(Reason, Family, u64)> {
        let mut moved = Vec::new();
        for reason in Reason::ALL {
            for family in Family::ALL {
                let (now, then) = (self.get(reason, family), before.get(reason, family));
                if now.packets != then.packets {
                    moved.push((reason, family, now.packets.wrapping_sub(then.packets)));
                }
            }
        }
        moved
    }
}

/// One loaded instance of the program with its own maps.
pub struct TestProgram {
    ebpf: Ebpf,
    hook: Hook,
    allow: AllowMaps,
    /// What `allow` added so far: each change recompiles the whole list, as the agent does.
    allowed: CidrList,
    pin_dir: PathBuf,
}

impl TestProgram {
    /// Loads the embedded object with its maps pinned in a fresh directory under /sys/fs/bpf.
    pub fn load() -> Result<Self> {
        Self::load_with_capacity(serve_guard_common::trie::DEFAULT_CIDRS_PER_FAMILY)
    }

    /// [`Self::load`] with allow-list maps sized for `cidrs` per family, as `max_cidrs` sizes
    /// the agent's.
    pub fn load_with_capacity(cidrs: u32) -> Result<Self> {
        Self::load_hook(cidrs, Hook::Xdp)
    }

    /// [`Self::load_with_capacity`] running the program of `hook` (the TC classifier runs on
    /// the same maps, so everything else stays as it is).
    pub fn load_hook(cidrs: u32, hook: Hook) -> Result<Self> {
        use serve_guard_common::maps;
        let capacity = serve_guard_common::trie::Capacity::for_cidrs(cidrs);
        ensure_bpffs()?;
        sweep_stale_pin_dirs();
        let pin_dir = PathBuf::from(BPFFS).join(format!(
            "{PIN_PREFIX}{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        if pin_dir.exists() {
            // Left by a crashed run of a process with the same pid: stale, not ours to reuse.
            remove_pin_dir(&pin_dir)?;
        }
        std::fs::create_dir(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
        let guard = PinDirGuard(pin_dir.clone());
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(maps::NODES_V4, capacity.nodes_v4_entries())
            .map_max_entries(maps::NODES_V6, capacity.nodes_v6_entries())
            .map_max_entries(maps::TAILS_V4, capacity.tails_entries())
            .map_max_entries(maps::TAILS_V6, capacity.tails_entries())
            .load(OBJECT)
            .context("loading the embedded eBPF object")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .with_context(|| format!("program {PROGRAM_NAME} not in the object"))?
            .try_into()?;
        program
            .load()
            .context("verifier rejected the XDP program")?;
        if hook == Hook::Tc {
            let program: &mut SchedClassifier = ebpf
                .program_mut(TC_PROGRAM_NAME)
                .with_context(|| format!("program {TC_PROGRAM_NAME} not in the object"))?
                .try_into()?;
            program.load().context("verifier rejected the TC program")?;
        }
        let allow = AllowMaps::take(&mut ebpf).context("allow-list maps")?;
        #[allow(clippy::mem_forget, reason = "disarmed: the program keeps its pins")]
        std::mem::forget(guard);
        Ok(Self {
            ebpf,
            hook,
            allow,
            allowed: CidrList::default(),
            pin_dir,
        })
    }

    /// Where this instance's maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Pins the program in this instance's pin directory (removed with it on Drop), so tools
    /// such as `ip link set ... xdp pinned` can attach it.
    pub fn pin_program(&mut self) -> Result<PathBuf> {
        const PROGRAM_PIN: &str = "prog";
        let path = self.pin_dir.join(PROGRAM_PIN);
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .context("program missing")?
            .try_into()?;
        program
            .pin(&path)
            .with_context(|| format!("pinning the program at {}", path.display()))?;
        Ok(path)
    }

    /// A second instance of the program as an extension (BPF_PROG_TYPE_EXT) on this instance's
    /// pinned maps, targeting this instance's main function, as the agent loads it for a libxdp
    /// dispatcher slot (`xdp_attach = "dispatcher"`).
    pub fn load_extension(&self) -> Result<Ebpf> {
        let xdp: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .context("program missing")?
            .try_into()?;
        let target = xdp.fd()?.try_clone()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&self.pin_dir)
            .extension(PROGRAM_NAME)
            .load(OBJECT)
            .context("loading the embedded eBPF object as an extension")?;
        let program: &mut aya::programs::Extension = ebpf
            .program_mut(PROGRAM_NAME)
            .with_context(|| format!("program {PROGRAM_NAME} not in the object"))?
            .try_into()?;
        program
            .load(target, PROGRAM_NAME)
            .context("loading the extension (the kernel may refuse extension programs)")?;
        Ok(ebpf)
    }

    /// The hook whose program [`Self::run`] runs.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// The program of this instance's hook.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        self.fd_of(self.hook)
    }

    /// The program of `hook` (the TC classifier is loaded only by an instance of that hook).
    pub fn fd_of(&self, hook: Hook) -> Result<BorrowedFd<'_>> {
        Ok(match hook {
            Hook::Xdp => {
                let program: &Xdp = self
                    .ebpf
                    .program(PROGRAM_NAME)
                    .context("program missing")?
                    .try_into()?;
                program.fd()?.as_fd()
            }
            Hook::Tc => {
                let program: &SchedClassifier = self
                    .ebpf
                    .program(TC_PROGRAM_NAME)
                    .context("program missing")?
                    .try_into()?;
                program.fd()?.as_fd()
            }
        })
    }

    /// Makes `port` strict (`PORT_PROTECTED`).
    pub fn protect_port(&mut self, port: u16) -> Result<()> {
        self.set_port_class(port, PORT_PROTECTED)
    }

    /// Makes `port` guarded (`PORT_GUARDED`).
    pub fn guard_port(&mut self, port: u16) -> Result<()> {
        self.set_port_class(port, PORT_GUARDED)
    }

    /// Writes `class` (`PORT_OPEN`, `PORT_PROTECTED`, `PORT_GUARDED` or any other byte) as the
    /// class of `port`. Every port starts open.
    pub fn set_port_class(&mut self, port: u16, class: PortValue) -> Result<()> {
        let mut ports: Array<_, PortTable> =
            Array::try_from(self.ebpf.map_mut(maps::PORTS).context("ports map")?)?;
        let mut table = Box::new(ports.get(&0, 0).context("reading the port table")?);
        table.classes[usize::from(port)] = class;
        ports
            .set(0, table.as_ref(), 0)
            .with_context(|| format!("setting the class of port {port}"))?;
        Ok(())
    }

    /// Writes the whole port table: `table[port]` for the ports it has, `PORT_OPEN` beyond.
    pub fn set_port_classes(&mut self, table: &[PortValue]) -> Result<()> {
        anyhow::ensure!(
            table.len() <= PORT_ENTRIES as usize,
            "a port table of {} entries",
            table.len()
        );
        let mut value = Box::new(PortTable::OPEN);
        value.classes[..table.len()].copy_from_slice(table);
        let mut ports: Array<_, PortTable> =
            Array::try_from(self.ebpf.map_mut(maps::PORTS).context("ports map")?)?;
        ports
            .set(0, value.as_ref(), 0)
            .context("writing the port table")?;
        Ok(())
    }

    /// Adds `addr/prefix_len` to the allow-list of its family.
    pub fn allow(&mut self, addr: IpAddr, prefix_len: u8) -> Result<()> {
        self.allow_all(&[(addr, prefix_len)])
    }

    /// Adds every `(addr, prefix_len)` to the allow-lists in one change.
    pub fn allow_all(&mut self, cidrs: &[(IpAddr, u8)]) -> Result<()> {
        let mut next = self.allowed.clone();
        for &(addr, len) in cidrs {
            let net = IpNet::new(addr, len)
                .with_context(|| format!("prefix length {len} too long for {addr}"))?;
            next.insert(net.trunc());
        }
        self.set_allowed(next)
    }

    /// Makes the allow-lists exactly `list` (one switch, as the agent applies a change).
    pub fn set_allowed(&mut self, list: CidrList) -> Result<()> {
        self.allow.apply(&list)?;
        self.allowed = list;
        Ok(())
    }

    /// How many map elements the program reads to judge a packet from `src` (the depth of its
    /// allow-list lookup), from the maps as they are now.
    pub fn lookup_reads(&self, src: IpAddr) -> usize {
        self.allow.lookup(src).1
    }

    /// Whether the maps, walked as the program walks them, allow `src`.
    pub fn lookup_allows(&self, src: IpAddr) -> bool {
        self.allow.lookup(src).0
    }

    /// The addresses the maps allow now, as the fewest CIDRs.
    pub fn allowed_now(&self) -> Result<CidrList> {
        Ok(self.allow.allowed()?)
    }

    pub fn set_config(&mut self, config: FilterConfig) -> Result<()> {
        let mut array: Array<_, FilterConfig> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).context("config map")?)?;
        array.set(0, &config, 0)?;
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for reason in Reason::ALL {
            for family in Family::ALL {
                out.0[reason as usize][family as usize] = self.counter(reason, family)?;
            }
        }
        Ok(out)
    }

    /// One (reason, family) counter summed over CPUs: one lookup instead of every counter's.
    pub fn counter(&self, reason: Reason, family: Family) -> Result<Counter> {
        let array: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.ebpf.map(maps::COUNTERS).context("counters map")?)?;
        let index = counter_index(reason, family);
        debug_assert!(index < COUNTER_ENTRIES);
        Ok(array
            .get(&index, 0)?
            .iter()
            .fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }))
    }

    /// Runs the program once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Result<TestRun> {
        self.run_repeat(frame, 1)
    }

    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> Result<TestRun> {
        test_run(self.fd()?, frame, repeat)
            .with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))
    }
}

impl Drop for TestProgram {
    fn drop(&mut self) {
        if let Err(e) = remove_pin_dir(&self.pin_dir) {
            eprintln!(
                "warning: could not remove {}: {e:#}",
                self.pin_dir.display()
            );
        }
    }
}

/// Removes a pin directory if `load` fails half way.
struct PinDirGuard(PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = remove_pin_dir(&self.0);
    }
}

/// Unpins every map in `dir` (the maps live on while a program or fd holds them) and removes it.
fn remove_pin_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::remove_dir(dir)?;
    Ok(())
}

/// Removes pin directories left by test processes that were killed before their Drop ran
/// (their pid no longer exists). Best effort: a failure only leaves them for the next sweep.
fn sweep_stale_pin_dirs() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PIN_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = remove_pin_dir(&entry.path());
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf unless it already is (what `cargo xtask setup` does too).
fn ensure_bpffs() -> Result<()> {
    let path = CString::new(BPFFS)?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct of integers.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a statfs buffer that outlives the call.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = CString::new("bpf")?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
    }
    Ok(())
}

/// `bpf_insn` (uapi/linux/bpf.h): opcode, dst/src registers, offset, immediate.
#[repr(C)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl BpfInsn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: dst | src << 4,
            off,
            imm,
        }
    }
}

/// `enum bpf_cmd`, `enum bpf_prog_type`, `enum bpf_map_type` values used here.
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_OBJ_PIN: libc::c_int = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// Opcodes (class | operation | source, uapi/linux/bpf_common.h and bpf.h).
const BPF_MOV64_IMM: u8 = 0xb7;
const BPF_MOV64_REG: u8 = 0xbf;
const BPF_ADD64_IMM: u8 = 0x07;
const BPF_AND64_IMM: u8 = 0x57;
const BPF_OR64_IMM: u8 = 0x47;
const BPF_TO_BE: u8 = 0xdc;
const BPF_LDX_W: u8 = 0x61;
const BPF_LDX_DW: u8 = 0x79;
const BPF_STX_W: u8 = 0x63;
const BPF_LD_IMM64: u8 = 0x18;
const BPF_JGT_REG: u8 = 0x2d;
const BPF_JEQ_IMM: u8 = 0x15;
const BPF_CALL: u8 = 0x85;
const BPF_EXIT: u8 = 0x95;
/// `src_reg` of BPF_LD_IMM64 when the immediate is a map's file descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// The prefix of `union bpf_attr` BPF_PROG_LOAD needs, up to `expected_attach_type`.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

// No implicit padding: the kernel rejects non-zero bytes it does not know (EINVAL).
const _: () = assert!(size_of::<ProgLoadAttr>() == 72);

/// Loads the smallest XDP program there is, `r0 = XDP_PASS; exit`, straight from raw
/// instructions: the floor every other measurement is compared with.
pub fn load_pass_program() -> io::Result<OwnedFd> {
    load_verdict_program(XDP_PASS)
}

/// `r0 = verdict; exit`: an XDP program that returns `verdict` for every packet.
pub fn load_verdict_program(verdict: u32) -> io::Result<OwnedFd> {
    load_program(BPF_PROG_TYPE_XDP, &verdict_insns(verdict), b"sg_verdict")
}

/// The same as a TC classifier (`TC_ACT_UNSPEC` passes): the floor of the TC hook.
pub fn load_tc_verdict_program(verdict: u32) -> io::Result<OwnedFd> {
    load_program(
        BPF_PROG_TYPE_SCHED_CLS,
        &verdict_insns(verdict),
        b"sg_tc_verdict",
    )
}

fn verdict_insns(verdict: u32) -> [BpfInsn; 2] {
    [
        BpfInsn::new(BPF_MOV64_IMM, 0, 0, 0, verdict as i32),
        BpfInsn::new(BPF_EXIT, 0, 0, 0, 0),
    ]
}

/// An XDP program making one read per packet from an array map of `entries` elements of
/// `value_size` bytes, at an index taken from the IPv4 source address, and the map. The cost of
/// that one read under many sources is what the memory charges any lookup structure of that
/// size (`cargo xtask bench`, issue 21).
pub struct MemoryProbe {
    pub program: OwnedFd,
    /// Held for the program's lifetime (the program holds its own reference too).
    _map: OwnedFd,
}

impl MemoryProbe {
    /// `entries` is a power of two; frames without a whole IPv4 source pass without a read.
    pub fn load(entries: u32, value_size: u32) -> io::Result<MemoryProbe> {
        assert!(entries.is_power_of_two(), "the index is the source masked");
        let map = create_array(value_size, entries)?;
        // Ethernet, then the IPv4 source at 12 bytes into the IP header.
        const SRC: i16 = 14 + 12;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&map);
        let insns = [
            BpfInsn::new(BPF_LDX_W, 6, 1, 0, 0),     // r6 = ctx->data
            BpfInsn::new(BPF_LDX_W, 7, 1, 4, 0),     // r7 = ctx->data_end
            BpfInsn::new(BPF_MOV64_REG, 2, 6, 0, 0), // r2 = r6
            BpfInsn::new(BPF_ADD64_IMM, 2, 0, 0, i32::from(SRC) + 4),
            BpfInsn::new(BPF_JGT_REG, 2, 7, 14, 0), // past the end: pass without a read
            BpfInsn::new(BPF_LDX_W, 3, 6, SRC, 0),  // r3 = the source
            BpfInsn::new(BPF_TO_BE, 3, 0, 0, 32),   // in host order: the low bits vary most
            BpfInsn::new(BPF_AND64_IMM, 3, 0, 0, (entries - 1) as i32),
            BpfInsn::new(BPF_STX_W, 10, 3, -4, 0), // the key on the stack
            BpfInsn::new(BPF_MOV64_REG, 2, 10, 0, 0),
            BpfInsn::new(BPF_ADD64_IMM, 2, 0, 0, -4),
            BpfInsn::new(BPF_LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, fd),
            BpfInsn::new(0, 0, 0, 0, 0),
            BpfInsn::new(BPF_CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
            BpfInsn::new(BPF_JEQ_IMM, 0, 0, 4, 0), // (never: the index is in range)
            BpfInsn::new(BPF_LDX_DW, 0, 0, 0, 0),  // the read
            // The verdict depends on the value read, so the run cannot end before the read.
            BpfInsn::new(BPF_AND64_IMM, 0, 0, 0, 0),
            BpfInsn::new(BPF_OR64_IMM, 0, 0, 0, XDP_PASS as i32),
            BpfInsn::new(BPF_EXIT, 0, 0, 0, 0),
            BpfInsn::new(BPF_MOV64_IMM, 0, 0, 0, XDP_PASS as i32),
            BpfInsn::new(BPF_EXIT, 0, 0, 0, 0),
        ];
        Ok(MemoryProbe {
            program: load_program(BPF_PROG_TYPE_XDP, &insns, b"sg_memory_probe")?,
            _map: map,
        })
    }
}

/// The prefix of `union bpf_attr` BPF_MAP_CREATE needs.
#[repr(C, align(8))]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// A BPF_MAP_TYPE_ARRAY of `entries` zeroed values of `value_size` bytes.
fn create_array(value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: entries,
        ..Default::default()
    };
    bpf_fd(BPF_MAP_CREATE, &attr)
}

/// Loads `insns` as a program of `prog_type` named `name` (at most 15 bytes).
fn load_program(prog_type: u32, insns: &[BpfInsn], name: &[u8]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name);
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    bpf_fd(BPF_PROG_LOAD, &attr)
}

/// bpf(2) for a command that returns a new file descriptor.
fn bpf_fd<A>(cmd: libc::c_int, attr: &A) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd` (the callers' types), and whatever it
    // points to (instructions, strings) outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            size_of::<A>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The prefix of `union bpf_attr` BPF_OBJ_PIN needs.
#[repr(C, align(8))]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

const _: () = assert!(size_of::<ObjPinAttr>() == 16);

/// Pins a BPF object (e.g. a program from [`load_verdict_program`]) at `path` on bpffs.
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _};
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_OBJ_PIN; the path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPinAttr,
            size_of::<ObjPinAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
