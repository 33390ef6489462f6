//! Results per kernel and the kernel x check table (printed, and written to docs/KERNELS.md).

use super::kernels::Kernel;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// A check that does not apply to this build (shown as such, not as a pass).
#[derive(Debug)]
pub struct NotApplicable(pub String);

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotApplicable {}

/// The checks, in the order they run: the table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Boot,
    Start,
    Filter,
    Outbound,
    Kill9,
    Reload,
    Stop,
    Reboot,
    Detach,
    Share,
    TcFallback,
    Journal,
}

impl Check {
    pub const ALL: [Check; 12] = [
        Check::Boot,
        Check::Start,
        Check::Filter,
        Check::Outbound,
        Check::Kill9,
        Check::Reload,
        Check::Stop,
        Check::Reboot,
        Check::Detach,
        Check::Share,
        Check::TcFallback,
        Check::Journal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Boot => "boot",
            Check::Start => "enable --now",
            Check::Filter => "filter v4/v6 TCP/UDP",
            Check::Outbound => "own connections out",
            Check::Kill9 => "kill -9",
            Check::Reload => "reload",
            Check::Stop => "stop",
            Check::Reboot => "reboot",
            Check::Detach => "detach",
            Check::Share => "libxdp sharing",
            Check::TcFallback => "TC fallback",
            Check::Journal => "journal",
        }
    }

    /// What the check proves, for the legend under the table.
    fn meaning(self) -> &'static str {
        match self {
            Check::Boot => "the kernel boots the image under QEMU (TCG) to the control channel",
            Check::Start => {
                "`systemctl enable --now serve-guard` (Type=notify); native (driver) XDP on virtio-net; /ready"
            }
            Check::Filter => {
                "inside/outside clients x IPv4/IPv6 x TCP/UDP x ports 8000, 9000 (`serve_ports`), 8080 (in no list: guarded by the default `guard = \"node\"`), 22 (public by default); from outside only 22 answers"
            }
            Check::Outbound => {
                "the guest's own TCP connection and connected UDP socket to an outside host, v4 and v6: the replies reach its guarded ephemeral ports"
            }
            Check::Kill9 => {
                "`kill -9` of the agent under a datagram stream: Restart= adopts the pinned link; no inside datagram lost, no outside one through"
            }
            Check::Reload => "`systemctl reload`: same process, still filtering",
            Check::Stop => "`systemctl stop`: unit inactive, the same program still filters",
            Check::Reboot => {
                "a reboot probed from the host throughout: no outside connection to 8000 or 8080 ever, inside ones do"
            }
            Check::Detach => "`serve-guard detach`: no program, no pins, everything passes",
            Check::Share => {
                "xdp-filter (its rule: UDP 22 dropped) then serve-guard in one libxdp dispatcher, both verdicts; xdp-filter leaves and joins again during a kill -9, probed throughout; detach leaves xdp-filter"
            }
            Check::TcFallback => {
                "a lone XDP program (xdp-filter's allow-all, no dispatcher) on eth0: the packaged agent filters at TC ingress beside it (clsact before 6.6, tcx after), the whole client matrix; kill -9 under a datagram stream, the restart adopts it; detach removes it"
            }
            Check::Journal => "the unit's journal over both boots: no error, no ANSI escape",
        }
    }
}

pub enum Outcome {
    Pass(String),
    Fail(String),
    NotApplicable(String),
}

pub struct KernelResult {
    pub label: &'static str,
    pub suite: &'static str,
    pub version: String,
    pub outcomes: Vec<(Check, Outcome)>,
    /// systemd starting the unit to GET /ready answering 200.
    pub ready_ms: Option<u64>,
    pub wall: Duration,
    /// The console's tail, kept when a check failed.
    pub console: Option<String>,
}

impl KernelResult {
    pub fn new(kernel: &Kernel) -> Self {
        Self {
            label: kernel.label,
            suite: kernel.suite,
            version: kernel.version.clone(),
            outcomes: Vec::new(),
            ready_ms: None,
            wall: Duration::ZERO,
            console: None,
        }
    }

    pub fn record(&mut self, check: Check, outcome: Result<String>) {
        let outcome = match outcome {
            Ok(detail) => Outcome::Pass(detail),
            Err(e) => match e.downcast_ref::<NotApplicable>() {
                Some(na) => Outcome::NotApplicable(na.0.clone()),
                None => Outcome::Fail(format!("{e:#}")),
            },
        };
        let (mark, detail) = match &outcome {
            Outcome::Pass(d) => ("pass", d),
            Outcome::Fail(d) => ("FAIL", d),
            Outcome::NotApplicable(d) => ("n/a ", d),
        };
        eprintln!(
            "test-vm: {} {:<22} {mark}  {detail}",
            self.suite,
            check.name()
        );
        self.outcomes.push((check, outcome));
    }

    pub fn failed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Fail(_)))
    }

    pub fn finish(mut self, started: Instant) -> Self {
        self.wall = started.elapsed();
        self
    }

    fn cell(&self, check: Check) -> &'static str {
        match self.outcomes.iter().find(|(c, _)| *c == check) {
            Some((_, Outcome::Pass(_))) => "✓",
            Some((_, Outcome::Fail(_))) => "✗",
            Some((_, Outcome::NotApplicable(_))) => "n/a",
            None => "–",
        }
    }
}

/// The table in Markdown (readable as plain text too).
pub fn table(results: &[KernelResult]) -> String {
    let mut t = String::from("| kernel | version |");
    for c in Check::ALL {
        let _ = write!(t, " {} |", c.name());
    }
    t.push_str(" start → ready | wall |\n|---|---|");
    for _ in Check::ALL {
        t.push_str("---|");
    }
    t.push_str("---|---|\n");
    for r in results {
        let _ = write!(t, "| {} | {} |", r.label, r.version);
        for c in Check::ALL {
            let _ = write!(t, " {} |", r.cell(c));
        }
        let ready = r
            .ready_ms
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(t, " {ready} | {:.0} s |", r.wall.as_secs_f64());
    }
    t
}

/// Every failure and n/a with its reason, and the console of a failed kernel.
pub fn failures(results: &[KernelResult]) -> String {
    let mut t = String::new();
    for r in results {
        for (c, o) in &r.outcomes {
            match o {
                Outcome::Fail(d) => {
                    let _ = writeln!(t, "{} {}: FAILED: {d}", r.suite, c.name());
                }
                Outcome::NotApplicable(d) => {
                    let _ = writeln!(t, "{} {}: n/a: {d}", r.suite, c.name());
                }
                Outcome::Pass(_) => {}
            }
        }
        if let Some(console) = &r.console {
            let _ = writeln!(t, "{console}");
        }
    }
    t
}

/// docs/KERNELS.md: the table, what each check means, and the run's figures.
/// `share_on`: the suites the sharing check was limited to (all when empty).
pub fn write_doc(
    path: &Path,
    results: &[KernelResult],
    total: Duration,
    share_on: &[String],
) -> Result<()> {
    let mut doc = String::from(
        "# Kernels tested\n\n\
         Written by `cargo xtask test-vm` (`cargo xtask test`, CI, boots Debian 11, 12 and 13 and \
         leaves this file as it is): each Debian kernel boots \
         under QEMU (TCG) with a virtio-net NIC, a Debian 12 userspace with systemd as PID 1 and \
         serve-guard's .deb (`cargo xtask package`) installed with dpkg and the default port policy \
         (`guard = \"node\"`); the host side of the NIC's tap \
         plays clients inside and outside the VPC list. Times are TCG times on a 2-core CI \
         machine: slow, and only comparable to each other. One kernel: `cargo xtask test-vm \
         --kernel bullseye` (or bookworm, bookworm-backports, trixie); each run leaves its \
         console, QEMU log and the unit's journal in target/vm/runs/<suite>/.\n\n",
    );
    doc.push_str(&table(results));
    let _ = writeln!(
        doc,
        "\nTotal {:.0} s (the image was built or taken from the cache before). start → ready: \
         from systemd starting the unit (its `udevadm settle` and bpffs check included) until \
         `GET /ready` answers 200 (filter attached, maps filled), on `systemctl enable --now`; \
         the unit is `Type=notify`, so systemd's own start ends there too. wall: the kernel's \
         whole run, both boots included.\n",
        total.as_secs_f64()
    );
    if !share_on.is_empty() {
        let _ = writeln!(
            doc,
            "– : not run. `cargo xtask test` (CI) runs the libxdp sharing and TC fallback checks \
             on {} only, to keep CI's time (they cost about a minute per kernel under TCG); \
             `cargo xtask test-vm` runs them on every kernel.\n",
            share_on.join(", ")
        );
    }
    doc.push_str("| check | what it proves |\n|---|---|\n");
    for c in Check::ALL {
        let _ = writeln!(doc, "| {} | {} |", c.name(), c.meaning());
    }
    let notes = failures(results);
    if !notes.is_empty() {
        let _ = write!(doc, "\n## Not passed\n\n```text\n{notes}```\n");
    }
    std::fs::write(path, doc)?;
    Ok(())
}
