//! The checks on one kernel, driven from the host: the guest runs its steps
//! (tests/vm/guest/steps.sh) over the control channel, the host's clients (tests/vm/probe.py, in
//! the VM's network namespace) send the traffic. Addresses: the guest is .2 / ::2 of its tap's
//! subnets; the "inside" clients are in the guest's VPC list (tests/vm/guest/vpc-cidrs), the
//! "outside" ones are not. The guest's config leaves the port policy at its default
//! (`guard = "node"`, `public_ports = ["ssh", "dhcp"]`).

use super::image::Image;
use super::kernels::Kernel;
use super::qemu::{Netns, Vm};
use super::report::{Check, KernelResult, NotApplicable};
use crate::cmd;
use anyhow::{Context as _, Result, bail, ensure};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const GUEST_V4: &str = "198.18.0.2";
const GUEST_V6: &str = "fd00:5e::2";
/// A client on the tap's host side.
struct Client {
    label: &'static str,
    address: &'static str,
    /// Inside the guest's VPC list.
    inside: bool,
}

const CLIENTS: &[Client] = &[
    Client {
        label: "in4",
        address: "198.18.0.10",
        inside: true,
    },
    Client {
        label: "out4",
        address: "198.18.0.200",
        inside: false,
    },
    Client {
        label: "in6",
        address: "fd00:5e::10",
        inside: true,
    },
    Client {
        label: "out6",
        address: "fd00:5e::1:200",
        inside: false,
    },
];
const HOST_PREFIX_V4: u8 = 24;
const HOST_PREFIX_V6: u8 = 64;

impl Client {
    fn v6(&self) -> bool {
        self.address.contains(':')
    }

    /// The guest's address in this client's family.
    fn guest(&self) -> &'static str {
        if self.v6() { GUEST_V6 } else { GUEST_V4 }
    }

    /// The address as the tap's host side carries it.
    fn with_prefix(&self) -> String {
        let prefix = if self.v6() {
            HOST_PREFIX_V6
        } else {
            HOST_PREFIX_V4
        };
        format!("{}/{prefix}", self.address)
    }

    /// `label,source,destination,port` for the probe's stream and boot modes.
    fn pair(&self, port: u16) -> String {
        format!("{},{},{},{port}", self.label, self.address, self.guest())
    }

    /// The label of this client's probes of one of several ports.
    fn port_label(&self, port: u16) -> String {
        format!("{}_{port}", self.label)
    }

    /// [`Client::pair`] labelled with the port too.
    fn labelled_pair(&self, port: u16) -> String {
        format!(
            "{},{},{},{port}",
            self.port_label(port),
            self.address,
            self.guest()
        )
    }
}

/// Serve's ports (`serve_ports`): closed to every packet from outside.
const PROTECTED_PORTS: [u16; 2] = [8000, 9000];
/// A port no list names: guarded by the default `guard = "node"` (closed to new connections and
/// to unconnected sockets from outside).
const GUARDED_PORT: u16 = 8080;
/// SSH's port, public by default: open to everyone (a stand-in listens there, the image has no
/// sshd).
const PUBLIC_PORT: u16 = 22;
/// Where the host's outside addresses serve the guest's own outbound connections.
const REMOTE_PORT: u16 = 7000;
const STEPS: &str = "/usr/local/lib/sg-vm/steps.sh";
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// The probe's own bound for a matrix run is a few seconds; this is the host's.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Probes sent before the disruption starts, so the stream covers the whole gap.
const LEAD_IN: Duration = Duration::from_secs(1);
/// Separates the journal step's values from the journal itself.
const JOURNAL_MARK: &str = "@@JOURNAL";
/// Journal lines quoted in a failure.
const JOURNAL_EXCERPT_LINES: usize = 12;
const POLL: Duration = Duration::from_millis(50);

/// Boots `kernel` and runs every check; never fails itself: failures are results.
/// `share`: whether the sharing checks run (libxdp dispatcher, TC fallback; left out, their cells
/// read –).
pub fn run(kernel: &Kernel, image: &Image, index: usize, share: bool) -> KernelResult {
    let started = Instant::now();
    let mut result = KernelResult::new(kernel);
    let dir = super::cache_dir().join("runs").join(kernel.suite);
    let host_addresses: Vec<String> = CLIENTS.iter().map(Client::with_prefix).collect();
    let host_addresses: Vec<&str> = host_addresses.iter().map(String::as_str).collect();
    let netns = match Netns::new(format!("sgvm-{}-{index}", std::process::id())) {
        Ok(n) => n,
        Err(e) => {
            result.record(Check::Boot, Err(e));
            return result.finish(started);
        }
    };
    let boot = Instant::now();
    let vm = Vm::boot(
        kernel,
        &image.initrd(kernel),
        &image.raw,
        &dir,
        netns,
        &host_addresses,
    );
    let mut vm = match vm {
        Ok(vm) => {
            result.record(
                Check::Boot,
                Ok(format!("{:.0} s", boot.elapsed().as_secs_f64())),
            );
            vm
        }
        Err(e) => {
            result.record(Check::Boot, Err(e));
            return result.finish(started);
        }
    };
    let mut s = Scenario {
        vm: &mut vm,
        dir: &dir,
    };
    let start = s.start();
    let started_ok = start.is_ok();
    if let Ok((_, ready_ms)) = &start {
        result.ready_ms = Some(*ready_ms);
    }
    result.record(Check::Start, start.map(|(detail, _)| detail));
    if started_ok {
        result.record(Check::Filter, s.filter());
        result.record(Check::Outbound, s.outbound());
        result.record(Check::Kill9, s.kill9());
        result.record(Check::Reload, s.reload());
        result.record(Check::Stop, s.stop());
        result.record(Check::Reboot, s.reboot());
        result.record(Check::Detach, s.detach());
        if share {
            result.record(Check::Share, s.share());
            result.record(Check::TcFallback, s.tc_fallback(&kernel.version));
        }
    }
    result.record(Check::Journal, s.journal());
    if result.failed() {
        result.console = Some(vm.console_tail());
    }
    drop(vm);
    result.finish(started)
}

struct Scenario<'a> {
    vm: &'a mut Vm,
    /// The run's folder (console, journal).
    dir: &'a Path,
}

/// `key=value` lines of a step's output.
type Values = BTreeMap<String, String>;

impl Scenario<'_> {
    fn step(&mut self, step: &str) -> Result<Values> {
        Ok(values(
            &self.vm.run(&format!("{STEPS} {step}"), STEP_TIMEOUT)?,
        ))
    }

    /// `systemctl enable --now`, then the filter attached in driver mode and /ready.
    fn start(&mut self) -> Result<(String, u64)> {
        let v = self.step("start")?;
        ensure!(
            get(&v, "xdp_mode")? == "driver",
            "XDP is attached in {} mode, not driver mode",
            get(&v, "xdp_mode")?
        );
        let ready_ms: u64 = get(&v, "ready_ms")?.parse()?;
        Ok((
            format!(
                "driver mode, ready in {:.1} s ({})",
                ready_ms as f64 / 1000.0,
                get(&v, "unit_type")?
            ),
            ready_ms,
        ))
    }

    /// Every client to every port over TCP and UDP: the outside ones are dropped on Serve's
    /// ports and on the guarded one, and pass on the public one.
    fn filter(&mut self) -> Result<String> {
        self.matrix(true)
    }

    fn matrix(&mut self, filtering: bool) -> Result<String> {
        self.matrix_beside(filtering, false)
    }

    /// The matrix; with `xdp_filter`, xdp-filter's rule (UDP to the public port dropped, see
    /// steps.sh) holds beside serve-guard's verdicts.
    fn matrix_beside(&mut self, filtering: bool, xdp_filter: bool) -> Result<String> {
        let mut probes = Vec::new();
        for client in CLIENTS {
            for proto in ["tcp", "udp"] {
                for port in PROTECTED_PORTS.iter().chain([&GUARDED_PORT, &PUBLIC_PORT]) {
                    let pass = (!filtering || client.inside || *port == PUBLIC_PORT)
                        && !(xdp_filter && proto == "udp" && *port == PUBLIC_PORT);
                    let name = format!("{}-{proto}-{port}", client.label);
                    let spec = format!(
                        "{name},{proto},{},{},{port}",
                        client.address,
                        client.guest()
                    );
                    probes.push((name, spec, pass));
                }
            }
        }
        let out = self.probe("matrix", probes.iter().map(|p| p.1.as_str()))?;
        let seen: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
        let wrong: Vec<String> = probes
            .iter()
            .filter_map(|(name, _, pass)| {
                let want = if *pass { "pass" } else { "drop" };
                let got = seen.get(name.as_str()).copied().unwrap_or("missing");
                (got != want).then(|| format!("{name}: {got}, expected {want}"))
            })
            .collect();
        ensure!(wrong.is_empty(), "{}", wrong.join("; "));
        Ok(format!("{}/{} probes", probes.len(), probes.len()))
    }

    /// The guest's own TCP connection and connected UDP socket to a host outside its VPC list,
    /// over IPv4 and IPv6: the replies come from outside to an ephemeral port of the guest, a
    /// guarded one, and pass (`pass_reply`), while the matrix shows a guarded port closed.
    fn outbound(&mut self) -> Result<String> {
        let remotes: Vec<&str> = CLIENTS
            .iter()
            .filter(|c| !c.inside)
            .map(|c| c.address)
            .collect();
        let listen: Vec<String> = remotes
            .iter()
            .map(|a| format!("{a},{REMOTE_PORT}"))
            .collect();
        let server = self.spawn_probe("serve", listen.iter().map(String::as_str))?;
        let v = self.step(&format!("outbound {} {REMOTE_PORT}", remotes.join(" ")));
        let served = values(&finish_probe(server)?);
        let v = v?;
        let wrong: Vec<String> = ["tcp_v4", "udp_v4", "tcp_v6", "udp_v6"]
            .iter()
            .filter_map(|key| {
                let got = v.get(*key).map_or("missing", String::as_str);
                (got != "pass").then(|| format!("{key}: {got}"))
            })
            .collect();
        ensure!(
            wrong.is_empty(),
            "the guest's own connections out: {} (the host served {served:?})",
            wrong.join("; ")
        );
        Ok("TCP and connected UDP to outside hosts, v4 and v6: replies pass".into())
    }

    /// `kill -9` of the agent while numbered datagrams flow to Serve's port from inside and
    /// outside: Restart= brings it back, it adopts the pinned link (swapping its own program in
    /// atomically), and throughout no inside datagram is lost and no outside one gets through.
    fn kill9(&mut self) -> Result<String> {
        let before = self.step("state")?;
        let pairs = client_pairs(PROTECTED_PORTS[0]);
        let stream = self.spawn_probe("stream", pairs.iter().map(String::as_str))?;
        std::thread::sleep(LEAD_IN);
        let killed = self.step("kill9");
        std::thread::sleep(LEAD_IN);
        let counts = values(&finish_probe(stream)?);
        let v = killed?;
        ensure!(
            get(&v, "adopted")? == "yes",
            "the restarted agent did not adopt the pinned link of eth0"
        );
        ensure!(
            get(&before, "prog_id")? != "0" && get(&v, "prog_id")? != "0",
            "no program on eth0 around the restart"
        );
        ensure!(
            get(&v, "xdp_mode")? == "driver",
            "not in driver mode after the restart"
        );
        check_stream(&counts)?;
        Ok(format!(
            "back in {:.1} s, link adopted, {}",
            get(&v, "restart_ms")?.parse::<f64>()? / 1000.0,
            stream_summary(&counts)
        ))
    }

    /// `systemctl reload`: the agent stays (same PID), the filter stays and still filters.
    fn reload(&mut self) -> Result<String> {
        let v = self.step("reload")?;
        if get(&v, "reload")? == "unsupported" {
            return Err(NotApplicable("the unit has no ExecReload".into()).into());
        }
        ensure!(
            get(&v, "same_pid")? == "yes",
            "the agent was replaced, not reloaded"
        );
        ensure!(
            get(&v, "xdp_mode")? == "driver",
            "not in driver mode after reload"
        );
        self.matrix(true)?;
        Ok("same process, still filtering".into())
    }

    /// `systemctl stop`: the unit is inactive and the same program still filters.
    fn stop(&mut self) -> Result<String> {
        let before = self.step("state")?;
        let v = self.step("stop")?;
        ensure!(get(&v, "active")? != "active", "the unit is still active");
        ensure!(
            get(&v, "xdp_mode")? == "driver" && get(&v, "prog_id")? == get(&before, "prog_id")?,
            "the filter did not stay: {v:?}"
        );
        self.matrix(true)?;
        Ok("inactive, still filtering".into())
    }

    /// A reboot while the host tries Serve's port and the guarded one from outside and inside the
    /// whole time: the outside clients never connect (the filter is back before the ports are
    /// reachable), the inside one does (the ports were reachable while probing).
    fn reboot(&mut self) -> Result<String> {
        let boot_ports = [PROTECTED_PORTS[0], GUARDED_PORT];
        let pairs: Vec<String> = boot_ports
            .iter()
            .flat_map(|&port| CLIENTS.iter().map(move |c| c.labelled_pair(port)))
            .collect();
        let probe = self.spawn_probe("boot", pairs.iter().map(String::as_str))?;
        let previous = self.vm.boot_id.clone();
        let rebooted = self
            .vm
            .send(&format!("{STEPS} reboot"))
            .and_then(|_| self.vm.wait_ready(Some(&previous)));
        let times = rebooted.and_then(|id| {
            self.vm.boot_id = id;
            self.step("boot-times")
        });
        std::thread::sleep(LEAD_IN);
        let counts = values(&finish_probe(probe)?);
        let v = times?;
        let mut outside_tries = 0;
        for port in boot_ports {
            for client in CLIENTS {
                let label = client.port_label(port);
                let connects = count(&counts, &format!("{label}_connects"))?;
                if client.inside {
                    ensure!(connects > 0, "{label} never connected during the boot");
                } else {
                    outside_tries += count(&counts, &format!("{label}_tries"))?;
                    ensure!(
                        connects == 0,
                        "{label} connected {connects} times during the boot: port {port} was reachable before the filter"
                    );
                }
            }
        }
        ensure!(
            get(&v, "xdp_mode")? == "driver",
            "not in driver mode after the reboot"
        );
        self.matrix(true)?;
        Ok(format!(
            "outside 0/{outside_tries} connects to {} and {GUARDED_PORT}; ready {:.1} s after boot, network-pre.target {:.1} s",
            PROTECTED_PORTS[0],
            count(&v, "unit_active_at_ms")? as f64 / 1000.0,
            count(&v, "network_pre_at_ms")? as f64 / 1000.0
        ))
    }

    /// `serve-guard detach` after a stop: no program, no pins, and the outside gets through.
    fn detach(&mut self) -> Result<String> {
        let v = self.step("detach")?;
        ensure!(get(&v, "xdp_mode")? == "none", "XDP still attached: {v:?}");
        ensure!(get(&v, "pins")? == "0", "pins left: {v:?}");
        self.matrix(false)?;
        Ok("removed, everything passes".into())
    }

    /// Issue 20 under systemd: xdp-filter with its own rule, then serve-guard (the glibc build
    /// with libxdp) joins its dispatcher; both verdicts hold. xdp-filter leaves while a stream
    /// runs (no gap for serve-guard), then joins again while the agent is killed (-9) and
    /// restarted; `detach` takes out serve-guard only.
    fn share(&mut self) -> Result<String> {
        let listed = |v: &Values, sg: &str, filter: &str| -> Result<()> {
            ensure!(
                get(v, "dispatcher")? == "yes"
                    && get(v, "listed_sg")? == sg
                    && get(v, "listed_filter")? == filter,
                "xdp-loader status: {v:?} (expected serve_guard {sg}, xdp-filter {filter})"
            );
            Ok(())
        };
        let v = self.step("share-start")?;
        listed(&v, "yes", "yes")?;
        ensure!(
            get(&v, "xdp_mode")? == "driver",
            "not in driver mode: {v:?}"
        );
        let both = self.matrix_beside(true, true)?;
        let status = self.step("share-status")?;
        let status = get(&status, "status_line")?.replace('~', " ");

        let pairs = client_pairs(PROTECTED_PORTS[0]);
        let stream = self.spawn_probe("stream", pairs.iter().map(String::as_str))?;
        std::thread::sleep(LEAD_IN);
        let left = self.step("share-leave");
        std::thread::sleep(LEAD_IN);
        let leave_counts = values(&finish_probe(stream)?);
        listed(&left?, "yes", "no")?;
        check_stream(&leave_counts).map_err(|e| anyhow::anyhow!("while xdp-filter left: {e}"))?;
        self.matrix_beside(true, false)?;

        let stream = self.spawn_probe("stream", pairs.iter().map(String::as_str))?;
        std::thread::sleep(LEAD_IN);
        let joined = self.step("share-kill9-join");
        std::thread::sleep(LEAD_IN);
        let join_counts = values(&finish_probe(stream)?);
        listed(&joined?, "yes", "yes")?;
        check_stream(&join_counts)
            .map_err(|e| anyhow::anyhow!("while xdp-filter joined during a kill -9: {e}"))?;
        self.matrix_beside(true, true)?;

        let v = self.step("share-detach")?;
        ensure!(
            get(&v, "offline_status")? == "yes",
            "`status` without the agent shows no dispatcher slot"
        );
        listed(&v, "no", "yes")?;
        Ok(format!(
            "xdp-filter first: {both}; xdp-filter left: {}; joined after serve-guard during a kill -9: {}; `status` without the agent shows the slot; detach left xdp-filter; {status}",
            stream_summary(&leave_counts),
            stream_summary(&join_counts)
        ))
    }

    /// Issue 20's fallback under systemd with the package's static agent: a lone XDP program
    /// holds eth0; serve-guard filters at TC ingress (clsact before 6.6, tcx after) with the whole
    /// client matrix's verdicts, survives a kill -9 under a stream (the restart adopts the
    /// filter), and `detach` removes it.
    fn tc_fallback(&mut self, kernel: &str) -> Result<String> {
        let want = if kernel_at_least(kernel, 6, 6) {
            "tcx"
        } else {
            "clsact"
        };
        let placed = |v: &Values| -> Result<()> {
            ensure!(
                get(v, "tc_hook")? == want && get(v, "xdp_holder")? == "lone",
                "expected serve_guard_tc at {want} beside the lone XDP program: {v:?}"
            );
            Ok(())
        };
        let v = self.step("tc-start")?;
        placed(&v)?;
        let status = get(&v, "status_line")?.replace('~', " ");
        ensure!(
            status.contains(&format!("TC ingress, {want}")),
            "`status`: {status}"
        );
        let matrix = self.matrix_beside(true, false)?;

        let pairs = client_pairs(PROTECTED_PORTS[0]);
        let stream = self.spawn_probe("stream", pairs.iter().map(String::as_str))?;
        std::thread::sleep(LEAD_IN);
        let killed = self.step("tc-kill9");
        std::thread::sleep(LEAD_IN);
        let counts = values(&finish_probe(stream)?);
        placed(&killed?)?;
        check_stream(&counts).map_err(|e| anyhow::anyhow!("during a kill -9: {e}"))?;

        let v = self.step("tc-detach")?;
        ensure!(get(&v, "tc_hook")? == "none", "left at TC ingress: {v:?}");
        Ok(format!(
            "{want}: {matrix}; kill -9: {}; detach removed it; {status}",
            stream_summary(&counts)
        ))
    }

    /// The unit's journal over both boots: no error, no ANSI escape. The whole journal goes to
    /// the run's folder.
    fn journal(&mut self) -> Result<String> {
        let out = self.vm.run(&format!("{STEPS} journal"), STEP_TIMEOUT)?;
        let (summary, journal) = out.split_once(JOURNAL_MARK).unwrap_or((&out, ""));
        std::fs::write(self.dir.join("journal.txt"), journal.trim_start())?;
        let v = values(summary);
        let errors: u64 = count(&v, "error_lines")?;
        let escapes: u64 = count(&v, "escape_lines")?;
        ensure!(
            errors == 0 && escapes == 0,
            "{errors} error lines, {escapes} lines with ANSI escapes (journal in {}):\n{}",
            self.dir.join("journal.txt").display(),
            excerpt(journal)
        );
        Ok(format!("{} lines, clean", get(&v, "lines")?))
    }

    /// Runs tests/vm/probe.py `mode` in the VM's namespace to completion.
    fn probe<'s>(&self, mode: &str, specs: impl Iterator<Item = &'s str>) -> Result<String> {
        let child = self.spawn_probe(mode, specs)?;
        finish_probe(child)
    }

    fn spawn_probe<'s>(&self, mode: &str, specs: impl Iterator<Item = &'s str>) -> Result<Child> {
        let script = crate::toolchains::workspace_root().join("tests/vm/probe.py");
        let mut c = self.vm.netns.exec("python3");
        c.arg(script)
            .arg(mode)
            .args(specs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn()
            .with_context(|| format!("starting {}", cmd::display(&c)))
    }
}

/// A matrix answer / a step's output lacks a value.
fn get<'v>(v: &'v Values, key: &str) -> Result<&'v str> {
    v.get(key)
        .map(String::as_str)
        .with_context(|| format!("the guest did not report {key}: {v:?}"))
}

fn count(v: &Values, key: &str) -> Result<u64> {
    get(v, key)?
        .parse()
        .with_context(|| format!("{key} is not a number"))
}

/// The journal's lines that show the problem (errors, escapes), or its last lines.
fn excerpt(journal: &str) -> String {
    let lines: Vec<&str> = journal.lines().collect();
    let bad: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("^[") || l.contains("rror") || l.contains("ailed"))
        .take(JOURNAL_EXCERPT_LINES)
        .collect();
    if bad.is_empty() {
        lines[lines.len().saturating_sub(JOURNAL_EXCERPT_LINES)..].join("\n")
    } else {
        bad.join("\n")
    }
}

/// Every client against `port` on the guest, for the stream and boot probes.
/// Whether the release `version` (`uname -r`, e.g. 5.10.0-32-amd64) is at least major.minor.
fn kernel_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

fn client_pairs(port: u16) -> Vec<String> {
    CLIENTS.iter().map(|c| c.pair(port)).collect()
}

/// Closes the probe's stdin (its signal to stop), waits for it within a bound (killing it by
/// PID past that) and returns its output.
fn finish_probe(mut child: Child) -> Result<String> {
    drop(child.stdin.take());
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the host-side probe did not finish within {PROBE_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "the host-side probe failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The `key=value` words of a step's or probe's output.
fn values(text: &str) -> Values {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Inside: every datagram echoed; outside: none.
fn check_stream(counts: &Values) -> Result<()> {
    for Client { label, inside, .. } in CLIENTS {
        let sent = count(counts, &format!("{label}_sent"))?;
        let echoed = count(counts, &format!("{label}_echoed"))?;
        ensure!(sent > 0, "{label} sent nothing");
        if *inside {
            ensure!(
                echoed == sent,
                "{label}: {} of {sent} datagrams lost",
                sent - echoed
            );
        } else {
            ensure!(
                echoed == 0,
                "{label}: {echoed} of {sent} datagrams got through"
            );
        }
    }
    Ok(())
}

fn stream_summary(counts: &Values) -> String {
    let total = |inside: bool| -> u64 {
        CLIENTS
            .iter()
            .filter(|c| c.inside == inside)
            .filter_map(|c| {
                counts
                    .get(&format!("{}_sent", c.label))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    format!(
        "{} inside datagrams all echoed, {} outside all dropped",
        total(true),
        total(false)
    )
}
