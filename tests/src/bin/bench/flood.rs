//! A bounded SYN flood over a veth pair, in two namespaces created here, comparing four
//! filters on the receiving veth: an XDP program that drops everything (the floor), the
//! serve-guard XDP program, an nftables netdev-ingress rule and an iptables raw-table rule (with
//! an ipset `hash:net`), both with the same allow-list.
//!
//! On veth the sender (trafgen) and the receiver's processing share CPUs, so raw packets per
//! second mostly measure the machine; what compares the filters is their cost per packet above
//! the floor: 1/rate(filter) - 1/rate(floor).

use anyhow::{Context as _, Result, bail, ensure};
use serve_guard_common::{Family, Reason};
use serve_guard_tests::{
    frames::{
        Frame,
        ethernet::{TEST_MACS, mac_text},
    },
    program::{TestProgram, XDP_DROP, load_verdict_program, pin_fd},
};
use std::{
    fmt::Write as _,
    net::IpAddr,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

/// Packets per trafgen run: a few seconds at the rates veth reaches here.
pub const PACKETS: u64 = 1_000_000;
/// Hard bound on one trafgen run (it normally ends after PACKETS).
const TRAFGEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard bound on any other command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
pub const ROUNDS: usize = 9;
/// trafgen's TX ring: 128 frames of 2 KiB.
const TRAFGEN_RING: &str = "256KiB";
const RX_ADDR: &str = "198.18.100.1/24";
const TX_ADDR: &str = "198.18.100.2/24";
const NFT_TABLE: &str = "sgbench";
/// The ipset of the iptables peer.
const IPSET: &str = "sgbench";
/// The sender's CPU. On veth the receive path (XDP or the hooks) runs in the sender's softirq
/// context on the same CPU: the receiver cannot be put on another core.
const SENDER_CPU: &str = "0";
/// Filter counters and the veth's count may differ by what was still queued when trafgen
/// returned; more than this means the measurement is not what it claims.
const MAX_COUNT_MISMATCH: f64 = 0.01;

/// One filter's runs, in round order.
pub struct Row {
    pub name: &'static str,
    /// Sender CPU seconds per processed packet, in ns, per round.
    pub ns: Vec<f64>,
    /// Processed packets per wall-clock second, per round.
    pub pps: Vec<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Two namespaces joined by a veth pair; deleted (with the veths) on Drop.
struct Topology {
    tx_ns: String,
    rx_ns: String,
    tx_dev: String,
    rx_dev: String,
}

impl Topology {
    fn create() -> Result<Self> {
        sweep_stale_namespaces();
        let pid = std::process::id();
        let t = Self {
            tx_ns: format!("sgf-tx-{pid}"),
            rx_ns: format!("sgf-rx-{pid}"),
            // At most 15 characters: "sgftx" + a pid of up to 10 digits.
            tx_dev: format!("sgftx{pid}"),
            rx_dev: format!("sgfrx{pid}"),
        };
        for ns in [&t.tx_ns, &t.rx_ns] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        // From here on Drop removes whatever exists. The veths own the MACs the frame builder
        // writes: the receiver must own the destination.
        let (tx_mac, rx_mac) = (mac_text(TEST_MACS.src), mac_text(TEST_MACS.dst));
        run(Command::new("ip").args([
            "link", "add", &t.tx_dev, "address", &tx_mac, "netns", &t.tx_ns, "type", "veth",
            "peer", "name", &t.rx_dev, "address", &rx_mac, "netns", &t.rx_ns,
        ]))?;
        for (ns, dev, addr) in [
            (&t.tx_ns, &t.tx_dev, TX_ADDR),
            (&t.rx_ns, &t.rx_dev, RX_ADDR),
        ] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "dev", dev, "up"]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "dev", "lo", "up"]))?;
        }
        Ok(t)
    }

    /// A command run in the receiver's network namespace only (nsenter --net keeps /sys/fs/bpf
    /// visible, which `ip netns exec` would hide).
    fn in_rx(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.rx_ns))
            .arg(program);
        c
    }

    /// (packets handed to the receiver, packets dropped by veth) of the sending veth.
    fn tx_stats(&self) -> Result<(u64, u64)> {
        let out = run(Command::new("ip").args([
            "-n",
            &self.tx_ns,
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            &self.tx_dev,
        ]))?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("ip -j output")?;
        let tx = &json[0]["stats64"]["tx"];
        let field = |name: &str| {
            tx[name]
                .as_u64()
                .with_context(|| format!("tx {name} missing in ip -j -s output"))
        };
        Ok((field("packets")?, field("dropped")?))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.tx_ns, &self.rx_ns] {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("warning: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces of earlier bench runs that were killed before their Drop ran.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = ["sgf-tx-", "sgf-rx-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// Runs a command to completion within COMMAND_TIMEOUT; fails on a non-zero exit.
fn run(cmd: &mut Command) -> Result<Output> {
    run_bounded(cmd, COMMAND_TIMEOUT)
}

fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut bounded = Command::new("timeout");
    bounded
        .args(["--kill-after=5", &format!("{}", limit.as_secs())])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let out = bounded
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

enum Filter<'a> {
    XdpFloor(&'a Path),
    ServeGuard(&'a Path, &'a TestProgram),
    Nftables(&'a Path),
    /// The `ipset restore` file of the allow-list.
    Iptables(&'a Path, [u16; 2]),
}

impl Filter<'_> {
    fn name(&self) -> &'static str {
        match self {
            Filter::XdpFloor(_) => "XDP drop-everything program (floor)",
            Filter::ServeGuard(..) => "serve-guard XDP program",
            Filter::Nftables(_) => "nftables netdev ingress rule",
            Filter::Iptables(..) => "iptables raw PREROUTING rule + ipset",
        }
    }

    fn install(&self, t: &Topology) -> Result<()> {
        match self {
            Filter::XdpFloor(pin) | Filter::ServeGuard(pin, _) => {
                run(t
                    .in_rx("ip")
                    .args(["link", "set", "dev", &t.rx_dev, "xdpdrv", "pinned"])
                    .arg(pin))?;
            }
            Filter::Nftables(ruleset) => {
                run(t.in_rx("nft").arg("-f").arg(ruleset))?;
            }
            Filter::Iptables(set, ports) => {
                run(t.in_rx("ipset").args(["restore", "-file"]).arg(set))?;
                run(t
                    .in_rx("iptables")
                    .args(iptables_rule("-A", &t.rx_dev, *ports).iter()))?;
            }
        }
        Ok(())
    }

    fn remove(&self, t: &Topology) -> Result<()> {
        match self {
            Filter::XdpFloor(_) | Filter::ServeGuard(..) => {
                run(t
                    .in_rx("ip")
                    .args(["link", "set", "dev", &t.rx_dev, "xdpdrv", "off"]))?;
            }
            Filter::Nftables(_) => {
                run(t
                    .in_rx("nft")
                    .args(["delete", "table", "netdev", NFT_TABLE]))?;
            }
            Filter::Iptables(_, ports) => {
                run(t
                    .in_rx("iptables")
                    .args(iptables_rule("-D", &t.rx_dev, *ports).iter()))?;
                run(t.in_rx("ipset").args(["destroy", IPSET]))?;
            }
        }
        Ok(())
    }

    /// Packets the filter itself says it dropped (None: it keeps no count).
    fn dropped(&self, t: &Topology) -> Result<Option<u64>> {
        match self {
            Filter::XdpFloor(_) => Ok(None),
            Filter::ServeGuard(_, program) => Ok(Some(
                program
                    .counters()?
                    .get(Reason::DropOutsideVpc, Family::Ipv4)
                    .packets,
            )),
            Filter::Nftables(_) => {
                let out = run(t
                    .in_rx("nft")
                    .args(["-j", "list", "table", "netdev", NFT_TABLE]))?;
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let packets = json["nftables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["rule"]["expr"].as_array())
                    .flatten()
                    .find_map(|e| e["counter"]["packets"].as_u64());
                Ok(Some(packets.context("no counter in the nftables rule")?))
            }
            Filter::Iptables(..) => {
                let out = run(t.in_rx("iptables").args([
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ]))?;
                let text = String::from_utf8_lossy(&out.stdout);
                // The rule's line: packets, bytes, target DROP.
                let packets = text
                    .lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>())
                    .find(|f| f.get(2) == Some(&"DROP"))
                    .and_then(|f| f.first().and_then(|p| p.parse::<u64>().ok()));
                Ok(Some(packets.context("no DROP rule in the raw table")?))
            }
        }
    }
}

/// The iptables peer: `-t raw PREROUTING`, the same semantics as the program's.
fn iptables_rule(op: &str, dev: &str, ports: [u16; 2]) -> Vec<String> {
    [
        "-t",
        "raw",
        op,
        "PREROUTING",
        "-i",
        dev,
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("{},{}", ports[0], ports[1])])
    .chain(
        ["-m", "set", "!", "--match-set", IPSET, "src", "-j", "DROP"]
            .iter()
            .map(|s| (*s).to_owned()),
    )
    .collect()
}

fn ipset_restore(v4: &[(IpAddr, u8)]) -> String {
    let mut out = format!(
        "create {IPSET} hash:net family inet maxelem {}\n",
        v4.len().max(1024) * 2
    );
    for (a, l) in v4 {
        out.push_str(&format!("add {IPSET} {a}/{l}\n"));
    }
    out
}

fn nft_ruleset(dev: &str, v4: &[(IpAddr, u8)], ports: [u16; 2]) -> String {
    let elements: Vec<String> = v4.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    format!(
        "table netdev {NFT_TABLE} {{\n\
         \tset allow_v4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}\n\
         \tchain ingress {{\n\
         \t\ttype filter hook ingress device \"{dev}\" priority 0; policy accept;\n\
         \t\tip saddr != @allow_v4 tcp dport {{ {}, {} }} counter drop\n\
         \t}}\n\
         }}\n",
        elements.join(", "),
        ports[0],
        ports[1],
    )
}

fn trafgen_config(frame: &[u8]) -> String {
    let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
    format!("{{ {} }}\n", bytes.join(", "))
}

/// Runs the comparison. `program` is the serve-guard instance with the large list, `v4` that
/// list, `frame` a denied SYN to a protected port.
pub fn compare(
    program: &mut TestProgram,
    v4: &[(IpAddr, u8)],
    ports: [u16; 2],
    frame: &Frame,
) -> Result<Vec<Row>> {
    let work = tempdir()?;
    let topology = Topology::create()?;
    let floor_fd: OwnedFd =
        load_verdict_program(XDP_DROP).context("loading the drop-everything program")?;
    let floor_pin = program.pin_dir().join("floor");
    pin_fd(floor_fd.as_fd(), &floor_pin).context("pinning the floor program")?;
    let sg_pin = program.pin_program()?;
    let ruleset = work.0.join("ruleset.nft");
    std::fs::write(&ruleset, nft_ruleset(&topology.rx_dev, v4, ports))?;
    let set = work.0.join("allow.ipset");
    std::fs::write(&set, ipset_restore(v4))?;
    let traffic = work.0.join("syn.trafgen");
    std::fs::write(&traffic, trafgen_config(&frame.build()))?;

    let filters = [
        Filter::XdpFloor(&floor_pin),
        Filter::ServeGuard(&sg_pin, program),
        Filter::Nftables(&ruleset),
        Filter::Iptables(&set, ports),
    ];
    let mut rows: Vec<Row> = filters
        .iter()
        .map(|f| Row {
            name: f.name(),
            ns: Vec::new(),
            pps: Vec::new(),
        })
        .collect();
    for round in 0..ROUNDS {
        for i in 0..filters.len() {
            let k = (round + i) % filters.len();
            let filter = &filters[k];
            filter.install(&topology)?;
            let measured = flood(&topology, filter, &traffic);
            filter.remove(&topology)?;
            let run = measured?;
            rows[k]
                .ns
                .push(run.cpu_seconds * 1e9 / run.processed as f64);
            rows[k].pps.push(run.processed as f64 / run.wall_seconds);
        }
    }
    drop(topology);
    Ok(rows)
}

struct Run {
    processed: u64,
    wall_seconds: f64,
    cpu_seconds: f64,
}

/// One bounded trafgen run through `filter`.
fn flood(t: &Topology, filter: &Filter, traffic: &Path) -> Result<Run> {
    let (tx_before, dropped_before) = t.tx_stats()?;
    let filter_before = filter.dropped(t)?;
    let mut trafgen = Command::new("taskset");
    trafgen
        .args(["-c", SENDER_CPU, "nsenter"])
        .arg(format!("--net=/run/netns/{}", t.tx_ns))
        .args(["trafgen", "--dev", &t.tx_dev, "--conf"])
        .arg(traffic)
        // One sender process; leave socket memory and IRQ affinity of the machine alone.
        .args([
            "--cpus",
            "1",
            "--num",
            &PACKETS.to_string(),
            "--no-sock-mem",
            "--notouch-irq",
            "--no-cpu-stats",
        ])
        // With the default socket memory, a large ring submits more packets per flush than the
        // send buffer admits and trafgen stops with EAGAIN.
        .args(["--ring-size", TRAFGEN_RING]);
    let started = Instant::now();
    let cpu_before = children_cpu_seconds();
    run_bounded(&mut trafgen, TRAFGEN_TIMEOUT)?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = children_cpu_seconds() - cpu_before;
    let (tx_after, dropped_after) = t.tx_stats()?;
    let processed = tx_after - tx_before;
    ensure!(
        processed > 0,
        "{}: no packet reached the receiver",
        filter.name()
    );
    if let (Some(before), Some(after)) = (filter_before, filter.dropped(t)?) {
        let counted = after - before;
        let mismatch = (counted as f64 - processed as f64).abs() / processed as f64;
        ensure!(
            mismatch <= MAX_COUNT_MISMATCH,
            "{}: the filter counted {counted} drops but the veth delivered {processed} packets",
            filter.name()
        );
    }
    eprintln!(
        "  {}: {processed} of {PACKETS} packets reached the filter ({} dropped by veth) in {seconds:.2} s, cpu {cpu:.2} s",
        filter.name(),
        dropped_after - dropped_before
    );
    Ok(Run {
        processed,
        wall_seconds: seconds,
        cpu_seconds: cpu,
    })
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    let dir = std::env::temp_dir().join(format!("sg-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)?;
    Ok(TempDir(dir))
}

/// The markdown section for one list size, with its own verdict on whether the run was
/// conclusive, and the figures for the JSON.
pub fn report(rows: &[Row], cidrs: usize) -> Result<(String, serde_json::Value)> {
    let [floor, xdp, nft, ipt] = rows else {
        bail!("expected four filters, got {}", rows.len())
    };
    // Per round: each filter's cost above that round's floor.
    let over =
        |row: &Row| -> Vec<f64> { row.ns.iter().zip(&floor.ns).map(|(a, f)| a - f).collect() };
    let range = |v: &[f64]| {
        let (min, max) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        format!("{min:.0}-{max:.0}")
    };
    let mut out = String::new();
    writeln!(
        out,
        "\n## Veth SYN flood: serve-guard vs nftables vs iptables ({cidrs} IPv4 CIDRs)\n"
    )?;
    writeln!(
        out,
        "| filter on the receiving veth | Mpps (median) | ns/packet, sender CPU (median, min-max) | ns above floor (median, min-max) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(
        out,
        "| {} | {:.2} | {:.0} ({}) | - |",
        floor.name,
        median(&floor.pps) / 1e6,
        median(&floor.ns),
        range(&floor.ns)
    )?;
    for row in [xdp, nft, ipt] {
        let o = over(row);
        writeln!(
            out,
            "| {} | {:.2} | {:.0} ({}) | {:.0} ({}) |",
            row.name,
            median(&row.pps) / 1e6,
            median(&row.ns),
            range(&row.ns),
            median(&o),
            range(&o)
        )?;
    }
    writeln!(
        out,
        "\nPer-round comparisons, mean ± 95% confidence interval over {} rounds (Student t); a \
         comparison is conclusive when its interval excludes 1 (ratios) or 0 (differences):\n",
        floor.ns.len()
    )?;
    writeln!(out, "| comparison | mean ± 95% CI | conclusive |")?;
    writeln!(out, "|---|---:|---|")?;
    let mut json = serde_json::Map::new();
    let per_round =
        |a: &Row, b: &Row| -> Vec<f64> { a.ns.iter().zip(&b.ns).map(|(x, y)| x / y).collect() };
    let mut comparisons: Vec<(String, Vec<f64>, f64)> = vec![
        (
            "serve-guard / floor, ns per packet".into(),
            per_round(xdp, floor),
            1.0,
        ),
        (
            "serve-guard / nftables, ns per packet".into(),
            per_round(xdp, nft),
            1.0,
        ),
        (
            "serve-guard / iptables, ns per packet".into(),
            per_round(xdp, ipt),
            1.0,
        ),
    ];
    for (peer, row) in [("nftables", nft), ("iptables", ipt)] {
        let diff: Vec<f64> = over(row)
            .iter()
            .zip(&over(xdp))
            .map(|(p, x)| p - x)
            .collect();
        comparisons.push((
            format!("{peer} − serve-guard, ns above the floor"),
            diff,
            0.0,
        ));
    }
    for (name, values, null) in &mut comparisons {
        let (mean, ci) = super::mean_ci(values);
        let conclusive = (mean - ci > *null) || (mean + ci < *null);
        writeln!(
            out,
            "| {name} | {mean:.2} ± {ci:.2} | {} |",
            if conclusive { "yes" } else { "no" }
        )?;
        json.insert(
            name.clone(),
            serde_json::json!({"mean": mean, "ci95": ci, "conclusive": conclusive, "per_round": values}),
        );
    }
    for row in rows {
        json.insert(
            row.name.to_owned(),
            serde_json::json!({"ns_per_packet": row.ns, "pps": row.pps}),
        );
    }
    writeln!(out, "\n### Method\n")?;
    let start = out.len();
    writeln!(
        out,
        "- Two network namespaces created for the run, joined by a veth pair; trafgen (one \
         process pinned to CPU {SENDER_CPU}, {PACKETS} identical TCP SYNs from a denied IPv4 \
         source to port 8000) sends from one end; the filter sits on the other (XDP in driver \
         mode, an nftables `netdev` `ingress` chain, or an iptables `raw` `PREROUTING` rule). \
         {ROUNDS} rounds, the four filters interleaved (rotating the first); each run is bounded \
         by the packet count and a {}-second timeout.",
        TRAFGEN_TIMEOUT.as_secs()
    )?;
    writeln!(
        out,
        "- Packets counted = what reached the receiving veth (the sender veth's tx count); the \
         serve-guard, nftables and iptables drop counters are checked against it (within {:.0}%). \
         ns/packet = CPU time (user + system) of trafgen / packets: on veth the receive path \
         (XDP or the hooks) runs in the sender's softirq context on the sender's CPU, so this is \
         sending plus filtering, and the sender and the receiver cannot be on separate cores on \
         this machine (no NIC; veth hands the packet over on the same CPU). Mpps = packets / wall \
         time, for scale.",
        MAX_COUNT_MISMATCH * 100.0
    )?;
    writeln!(
        out,
        "- The peers have the program's semantics: nftables `ip saddr != @allow_v4 tcp dport \
         {{8000, 9000}} counter drop` with an interval set; iptables `-p tcp -m multiport \
         --dports 8000,9000 -m set ! --match-set sgbench src -j DROP` with an ipset `hash:net`."
    )?;
    json.insert("method".to_owned(), out[start..].into());
    Ok((out, serde_json::Value::Object(json)))
}

/// User + system CPU time of every waited-for child process so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct of integers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage buffer that outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
