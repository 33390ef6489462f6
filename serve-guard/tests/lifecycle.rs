//! The agent's lifecycle on a real kernel: start (pins, XDP on the interface), restart (adopts
//! maps and link, replaces the program), stop (keep / detach), `serve-guard detach`, and configs
//! that must attach nothing.
//!
//! Each test builds its own pair of network namespaces (server and client joined by a veth,
//! 198.18.0.0/15 and fd00::/8 only), its own pin folder on bpffs and temp dir; guards remove all
//! of it on drop, also when a test fails. Waits are polls with a deadline.

use serve_guard::filter::{LinkState, read_pinned_counters};
use serve_guard_common::{Family, Reason, maps};
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_serve-guard");
const BPFFS: &str = "/sys/fs/bpf";
const NETNS_DIR: &str = "/run/netns";
/// Longest wait for the agent to start or stop, and for counters to move.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// The line the agent logs once the filter is attached and the maps are filled.
const READY_LINE: &str = "serve-guard running:";

const SERVER_V4: &str = "198.18.7.1";
const CLIENT_V4: &str = "198.18.7.2";
const PREFIX_V4: u8 = 24;
/// The client is outside this allow-list; its packets to a protected port are dropped.
/// Its IPv6 entry has host bits set: the agent normalises it with a warning.
const ALLOW_LIST: &str = "10.0.0.0/8\nfd00:1::1/64\n";
const PROTECTED_PORT: u16 = 8000;
const OPEN_PORT: u16 = 7000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `prefix` + pid + counter: unique across tests and test processes; <= 15 chars for a prefix of
/// at most 3.
fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// The id of the XDP program on `interface`, as `ip -d link show` reports it.
    fn xdp_program_id(&self, interface: &str) -> Option<u32> {
        let out = self.ip(&["-d", "link", "show", "dev", interface]);
        let text = String::from_utf8_lossy(&out.stdout);
        let rest = text.split("prog/xdp id ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// Runs `f` on a thread that entered only this network namespace (not its mounts, which
    /// would hide bpffs).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// A command whose child enters this network namespace before exec.
    fn command(&self, program: &str) -> Command {
        let ns = File::open(self.path()).expect("open netns");
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Server and client namespaces joined by a veth; the agent guards the server end.
struct Topology {
    server: Netns,
    client: Netns,
    server_if: String,
}

impl Topology {
    fn new() -> Self {
        let server = Netns::new("sls");
        let client = Netns::new("slc");
        let server_if = unique("sl");
        let client_if = format!("{server_if}c");
        server.ip(&[
            "link",
            "add",
            &server_if,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &client.name,
        ]);
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_V4}/{PREFIX_V4}"),
            "dev",
            &server_if,
        ]);
        client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V4}/{PREFIX_V4}"),
            "dev",
            &client_if,
        ]);
        server.ip(&["link", "set", &server_if, "up"]);
        client.ip(&["link", "set", &client_if, "up"]);
        Topology {
            server,
            client,
            server_if,
        }
    }

    /// Sends `count` UDP datagrams from the client to the server's `port`. Nothing listens: the
    /// XDP program counts them before the stack would answer.
    fn send_udp(&self, port: u16, count: usize) {
        let to: SocketAddr = format!("{SERVER_V4}:{port}").parse().unwrap();
        self.client.run(move || {
            let socket = UdpSocket::bind(format!("{CLIENT_V4}:0")).expect("bind");
            for _ in 0..count {
                // ICMP unreachables from earlier sends may fail a send; that is fine.
                let _ = socket.send_to(b"serve-guard lifecycle", to);
            }
        });
    }
}

/// A temp dir with the config, the CIDR file and the state; removed on drop.
struct Files {
    dir: PathBuf,
    config: PathBuf,
    cidr_file: PathBuf,
    state_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Files {
    fn new(interfaces: &[&str], extra: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("sg-lifecycle-"));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Files {
            config: dir.join("serve-guard.toml"),
            cidr_file: dir.join("vpc-cidrs"),
            state_dir: dir.join("state"),
            pin_dir: Path::new(BPFFS).join(unique("sg-lc-")),
            dir,
        };
        std::fs::write(&files.cidr_file, ALLOW_LIST).unwrap();
        let interfaces = interfaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &files.config,
            format!(
                "mode = \"private\"\ninterfaces = [{interfaces}]\nserve_ports = [{PROTECTED_PORT}]\n\
                 cidr_file = \"{}\"\npin_dir = \"{}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n{extra}",
                files.cidr_file.display(),
                files.pin_dir.display(),
                files.state_dir.display(),
                files.dir.join("control.sock").display(),
            ),
        )
        .unwrap();
        files
    }

    fn link_pin(&self, interface: &str, mode: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{interface}@{mode}"))
    }

    fn map_id(&self, name: &str) -> u32 {
        aya::maps::MapData::from_pin(self.pin_dir.join("maps").join(name))
            .and_then(|m| m.info())
            .map(|info| info.id())
            .unwrap_or_else(|e| panic!("pinned map {name}: {e}"))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        // Runs after the agent guard: nothing holds the links open any more.
        let _ = serve_guard::filter::remove_pins(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running agent; killed on drop. Its stderr is collected for assertions and failure output.
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn spawn(ns: &Netns, files: &Files, args: &[&str]) -> Agent {
        let mut child = ns
            .command(AGENT)
            .arg("-c")
            .arg(&files.config)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Agent { child, log }
    }

    /// Starts the agent and waits for its summary line.
    fn start(ns: &Netns, files: &Files) -> Agent {
        let mut agent = Agent::spawn(ns, files, &[]);
        wait_until("the agent's summary line", || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited ({status}):\n{}", agent.logs());
            }
            agent.logs().contains(READY_LINE).then_some(())
        });
        agent
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill on the pid of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_until("the agent to exit", || self.child.try_wait().ok().flatten())
    }

    /// SIGTERM and wait: the orderly stop systemd does.
    fn stop(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        // Let the reader thread drain the last lines.
        std::thread::sleep(POLL);
        (status, self.logs())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn cli(ns: &Netns, files: &Files, args: &[&str]) -> Output {
    ns.command(AGENT)
        .arg("-c")
        .arg(&files.config)
        .args(args)
        .output()
        .expect("run the CLI")
}

fn counter(files: &Files, reason: Reason) -> u64 {
    read_pinned_counters(&files.pin_dir)
        .expect("read pinned counters")
        .expect("counters are pinned")
        .get(reason, Family::Ipv4)
        .packets
}

fn pinned_names(files: &Files) -> Vec<String> {
    let mut names: Vec<String> = ["", "links", "maps"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(files.pin_dir.join(sub))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn start_pins_everything_and_attaches_to_the_interface() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    let agent = Agent::start(&topo.server, &files);

    let mut expected: Vec<String> = maps::ALL.iter().map(|m| m.to_string()).collect();
    expected.push(format!("{}@driver", topo.server_if));
    expected.push("prog".into());
    expected.sort();
    assert_eq!(pinned_names(&files), expected);

    let link = LinkState::read(&files.link_pin(&topo.server_if, "driver")).unwrap();
    let on_interface = topo.server.xdp_program_id(&topo.server_if);
    assert_eq!(on_interface, Some(link.program_id), "ip -d link show");

    let logs = agent.logs();
    assert!(
        logs.contains("line 2: `fd00:1::1/64` has host bits set; using fd00:1::/64"),
        "{logs}"
    );
    assert!(
        logs.contains(&format!(
            "serve-guard running: mode private, interfaces {} (driver, new), ports {PROTECTED_PORT}, CIDRs 1 IPv4 + 1 IPv6, audit off, on_stop keep",
            topo.server_if
        )),
        "{logs}"
    );

    // The filter filters: the client (outside the list) to the protected port is dropped, to
    // another port it passes.
    topo.send_udp(PROTECTED_PORT, 5);
    topo.send_udp(OPEN_PORT, 3);
    wait_until("the drop and pass counters", || {
        (counter(&files, Reason::DropOutsideVpc) >= 5
            && counter(&files, Reason::PassUnprotected) >= 3)
            .then_some(())
    });

    // on_stop = keep: after SIGTERM the program stays on the interface with its pins.
    let (status, logs) = agent.stop();
    assert!(status.success(), "{status}\n{logs}");
    assert!(logs.contains("on_stop = keep"), "{logs}");
    // program_log is off by default: no logger runs, so no record can have been forwarded.
    assert!(!logs.contains("serve_guard::xdp"), "{logs}");
    assert_eq!(pinned_names(&files), expected);
    assert_eq!(
        topo.server.xdp_program_id(&topo.server_if),
        Some(link.program_id)
    );
    let before = counter(&files, Reason::DropOutsideVpc);
    topo.send_udp(PROTECTED_PORT, 4);
    wait_until("drops with no agent running", || {
        (counter(&files, Reason::DropOutsideVpc) >= before + 4).then_some(())
    });
}

#[test]
fn restart_adopts_the_pinned_maps_and_link() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    let first = Agent::start(&topo.server, &files);
    let link_path = files.link_pin(&topo.server_if, "driver");
    let link_before = LinkState::read(&link_path).unwrap();
    let maps_before: Vec<u32> = maps::ALL.iter().map(|m| files.map_id(m)).collect();

    topo.send_udp(PROTECTED_PORT, 5);
    wait_until("drops before the restart", || {
        (counter(&files, Reason::DropOutsideVpc) >= 5).then_some(())
    });
    let drops_before = counter(&files, Reason::DropOutsideVpc);

    // kill -9: no orderly stop at all; the pins keep the filter in place.
    let mut first = first;
    first.signal(libc::SIGKILL);
    first.wait_exit();
    assert_eq!(
        topo.server.xdp_program_id(&topo.server_if),
        Some(link_before.program_id)
    );

    let second = Agent::start(&topo.server, &files);
    let link_after = LinkState::read(&link_path).unwrap();
    assert_eq!(link_after.link_id, link_before.link_id, "same link");
    assert_ne!(
        link_after.program_id, link_before.program_id,
        "the program was replaced"
    );
    assert_eq!(
        topo.server.xdp_program_id(&topo.server_if),
        Some(link_after.program_id)
    );
    let maps_after: Vec<u32> = maps::ALL.iter().map(|m| files.map_id(m)).collect();
    assert_eq!(maps_after, maps_before, "the same maps were adopted");
    assert!(
        second
            .logs()
            .contains(&format!("interfaces {} (driver, adopted)", topo.server_if)),
        "{}",
        second.logs()
    );

    // Counters kept their value and keep counting with the new program.
    assert!(counter(&files, Reason::DropOutsideVpc) >= drops_before);
    topo.send_udp(PROTECTED_PORT, 3);
    wait_until("drops after the restart", || {
        (counter(&files, Reason::DropOutsideVpc) >= drops_before + 3).then_some(())
    });
    let (status, logs) = second.stop();
    assert!(status.success(), "{logs}");
}

#[test]
fn detach_removes_every_pin_and_the_program() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    let agent = Agent::start(&topo.server, &files);

    // Refused while the agent runs, and nothing is removed.
    let out = cli(&topo.server, &files, &["detach"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is running"), "{stderr}");
    assert!(topo.server.xdp_program_id(&topo.server_if).is_some());
    assert!(files.pin_dir.join("prog").exists());

    let (status, _) = agent.stop();
    assert!(status.success());
    let out = cli(&topo.server, &files, &["detach"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("removed XDP links on {}", topo.server_if))
            && stdout.contains("the program")
            && stdout.contains(maps::ALLOW_V4),
        "{stdout}"
    );
    assert!(!files.pin_dir.exists(), "no pin left");
    assert_eq!(topo.server.xdp_program_id(&topo.server_if), None);

    let out = cli(&topo.server, &files, &["detach"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to remove"),
        "{out:?}"
    );
}

#[test]
fn on_stop_detach_removes_the_filter() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "on_stop = \"detach\"\n");
    let agent = Agent::start(&topo.server, &files);
    assert!(topo.server.xdp_program_id(&topo.server_if).is_some());
    let (status, logs) = agent.stop();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("on_stop = detach: removed"), "{logs}");
    assert!(!files.pin_dir.exists());
    assert_eq!(topo.server.xdp_program_id(&topo.server_if), None);
}

#[test]
fn a_second_agent_on_the_same_state_is_refused() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    let first = Agent::start(&topo.server, &files);
    let mut second = Agent::spawn(&topo.server, &files, &[]);
    let status = second.wait_exit();
    assert!(!status.success());
    let logs = second.logs();
    assert!(
        logs.contains(&format!(
            "another agent (pid {}) already runs",
            first.child.id()
        )),
        "{logs}"
    );
    drop(first);
}

/// Configs that must fail before the kernel is touched: nothing pinned, nothing attached.
fn assert_attaches_nothing(topo: &Topology, files: &Files, args: &[&str], message: &str) {
    let mut agent = Agent::spawn(&topo.server, files, args);
    let status = agent.wait_exit();
    std::thread::sleep(POLL);
    let logs = agent.logs();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains(message), "expected `{message}` in:\n{logs}");
    assert!(!files.pin_dir.exists(), "pinned despite the error:\n{logs}");
    assert_eq!(topo.server.xdp_program_id(&topo.server_if), None);
}

#[test]
fn a_missing_interface_attaches_nothing() {
    let topo = Topology::new();
    // The real interface first: it must not be attached either.
    let files = Files::new(&[&topo.server_if, "sgnosuch0"], "");
    assert_attaches_nothing(
        &topo,
        &files,
        &[],
        "interface sgnosuch0 does not exist in this network namespace",
    );
}

#[test]
fn a_bad_cidr_attaches_nothing() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    std::fs::write(&files.cidr_file, "10.0.0.0/8\n# peered\n10.1.0.0/33\n").unwrap();
    assert_attaches_nothing(&topo, &files, &[], "line 3: `10.1.0.0/33` is not a CIDR");
}

#[test]
fn bad_config_values_attach_nothing() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    assert_attaches_nothing(
        &topo,
        &files,
        &["--serve-port", "70000"],
        "serve port 70000 is out of range",
    );
    std::fs::write(&files.cidr_file, "").unwrap();
    std::fs::remove_file(&files.cidr_file).unwrap();
    assert_attaches_nothing(&topo, &files, &[], "vpc-cidrs does not exist");
    let config = std::fs::read_to_string(&files.config).unwrap();
    std::fs::write(&files.config, format!("{config}serve_port = 1\n")).unwrap();
    assert_attaches_nothing(&topo, &files, &[], "unknown field `serve_port`");
}

#[test]
fn program_log_forwards_the_programs_records() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "program_log = true\n");
    let agent = Agent::start(&topo.server, &files);
    topo.send_udp(PROTECTED_PORT, 2);
    wait_until("a record from the XDP program in the agent's log", || {
        agent
            .logs()
            .lines()
            .any(|l| l.contains("serve_guard::xdp") && l.contains("drop_outside_vpc ipv4"))
            .then_some(())
    });
}

/// The library API other subsystems build on, in-process: apply_cidrs, cidrs, ports, counters.
#[test]
fn filter_api_applies_lists_and_ports_to_the_live_maps() {
    use serve_guard::cidr::CidrList;
    use serve_guard::config::{Config, Overrides};
    use serve_guard::filter::{AttachMode, Filter};

    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    let start = |ports: &str| {
        let text = std::fs::read_to_string(&files.config)
            .unwrap()
            .replace(&format!("serve_ports = [{PROTECTED_PORT}]"), ports);
        let config = Config::from_toml(&text, &files.config, &Overrides::default()).unwrap();
        // Interface names and XDP attach resolve in the caller's network namespace.
        topo.server.run(move || {
            let host = config.check_host().unwrap();
            Filter::start(&config, &host).unwrap()
        })
    };

    let mut filter = start("serve_ports = [8000, 9000]");
    let status = filter.status();
    assert_eq!(status.interfaces.len(), 1);
    assert_eq!(status.interfaces[0].name, topo.server_if);
    assert_eq!(status.interfaces[0].mode, AttachMode::Driver);
    assert!(!status.interfaces[0].adopted);
    assert_eq!((status.cidrs_v4, status.cidrs_v6), (1, 1));
    assert_eq!(filter.ports().unwrap(), [8000, 9000]);
    let original = CidrList::from_file_text(ALLOW_LIST).unwrap().0;
    assert_eq!(filter.cidrs().unwrap(), original);

    let drops = |f: &Filter| {
        f.counters()
            .unwrap()
            .get(Reason::DropOutsideVpc, Family::Ipv4)
            .packets
    };
    let allowed = |f: &Filter| {
        f.counters()
            .unwrap()
            .get(Reason::PassAllowed, Family::Ipv4)
            .packets
    };

    topo.send_udp(PROTECTED_PORT, 3);
    wait_until("drops while the client is outside", || {
        (drops(&filter) >= 3).then_some(())
    });

    // Let the client in.
    let mut with_client = original.clone();
    with_client.insert(format!("{CLIENT_V4}/{PREFIX_V4}").parse().unwrap());
    let stats = filter.apply_cidrs(&with_client).unwrap();
    assert_eq!(
        (stats.added, stats.removed, stats.v4, stats.v6),
        (1, 0, 2, 1)
    );
    assert_eq!(filter.cidrs().unwrap(), with_client);
    let drops_before = drops(&filter);
    topo.send_udp(PROTECTED_PORT, 3);
    wait_until("passes once the client is in the list", || {
        (allowed(&filter) >= 3).then_some(())
    });
    assert_eq!(drops(&filter), drops_before);

    // And out again.
    let stats = filter.apply_cidrs(&original).unwrap();
    assert_eq!((stats.added, stats.removed), (0, 1));
    assert_eq!(filter.cidrs().unwrap(), original);
    topo.send_udp(PROTECTED_PORT, 3);
    wait_until("drops once the client left the list", || {
        (drops(&filter) >= drops_before + 3).then_some(())
    });

    // An empty list is refused and changes nothing.
    let err = filter.apply_cidrs(&CidrList::default()).unwrap_err();
    assert!(err.to_string().contains("would be empty"), "{err}");
    assert_eq!(filter.cidrs().unwrap(), original);

    // A restart with fewer ports clears the ones no longer configured; the link is adopted.
    drop(filter);
    let filter = start("serve_ports = [8000]");
    assert_eq!(filter.ports().unwrap(), [8000]);
    assert!(filter.status().interfaces[0].adopted);
    assert!(drops(&filter) >= drops_before + 3, "counters survive");
}

/// A bridge device has no native XDP: `auto` falls back to skb with a warning, `driver` fails
/// and leaves nothing behind.
#[test]
fn xdp_mode_auto_falls_back_to_skb_and_driver_refuses() {
    let ns = Netns::new("sld");
    let bridge = unique("sd");
    ns.ip(&["link", "add", &bridge, "type", "bridge"]);
    ns.ip(&["link", "set", &bridge, "up"]);

    let files = Files::new(&[&bridge], "xdp_mode = \"driver\"\n");
    let mut agent = Agent::spawn(&ns, &files, &[]);
    let status = agent.wait_exit();
    std::thread::sleep(POLL);
    let logs = agent.logs();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!(
            "cannot attach the XDP program to {bridge} in driver mode"
        )) && logs.contains("the driver has no native XDP: set xdp_mode = \"auto\" or \"skb\""),
        "{logs}"
    );
    assert!(
        !files.pin_dir.exists(),
        "a failed first start leaves no pin"
    );
    assert_eq!(ns.xdp_program_id(&bridge), None);

    let agent = Agent::spawn(&ns, &files, &["--xdp-mode", "auto"]);
    let agent = {
        let mut agent = agent;
        wait_until("the summary line", || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited ({status}):\n{}", agent.logs());
            }
            agent.logs().contains(READY_LINE).then_some(())
        });
        agent
    };
    let logs = agent.logs();
    assert!(logs.contains("fell back to skb"), "{logs}");
    assert!(
        logs.contains(&format!("interfaces {bridge} (skb, new)")),
        "{logs}"
    );
    assert!(files.link_pin(&bridge, "skb").exists());
    let out = ns.ip(&["-d", "link", "show", "dev", &bridge]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("xdpgeneric"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// An interface that already runs another XDP program is refused by name; the second agent's
/// (fresh) pin folder is cleaned up and the first program stays.
#[test]
fn an_interface_with_another_xdp_program_is_refused() {
    let topo = Topology::new();
    let first_files = Files::new(&[&topo.server_if], "");
    let first = Agent::start(&topo.server, &first_files);
    let program = topo.server.xdp_program_id(&topo.server_if);

    let other = Files::new(
        &[&topo.server_if],
        "[metrics]\nlisten = \"127.0.0.1:9465\"\n",
    );
    let mut second = Agent::spawn(&topo.server, &other, &[]);
    let status = second.wait_exit();
    std::thread::sleep(POLL);
    let logs = second.logs();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!(
            "interface {} has another XDP program attached",
            topo.server_if
        )),
        "{logs}"
    );
    assert!(!other.pin_dir.exists(), "{logs}");
    assert_eq!(topo.server.xdp_program_id(&topo.server_if), program);
    drop(first);
}

/// Second client address, outside the allow-list (the first one is let in for this test).
const OUTSIDE_V4: &str = "198.18.7.3";
/// An inside probe whose echo takes longer than this counts as dropped. UDP has no
/// retransmission, so a dropped datagram fails its probe however long we wait: this bounds the
/// wait, it does not judge speed.
const INSIDE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Outside probes are expected to go unanswered; their verdict comes from the drop counter,
/// which must account for every one of them, so a short wait loses nothing.
const OUTSIDE_PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// Runs `f` on a thread inside `ns` and returns at once.
fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = File::open(ns.path()).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

#[derive(Debug, Default, Clone, Copy)]
struct ProbeTally {
    sent: u64,
    answered: u64,
}

/// Sends numbered datagrams from `from` to the echo server until `stop`, one at a time, each
/// waiting for its own echo.
fn udp_prober(
    ns: &Netns,
    from: &'static str,
    timeout: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Mutex<ProbeTally>>,
) -> std::thread::JoinHandle<()> {
    spawn_in(ns, move || {
        let socket = UdpSocket::bind(format!("{from}:0")).expect("bind prober");
        socket.set_read_timeout(Some(POLL)).unwrap();
        let server: SocketAddr = format!("{SERVER_V4}:{PROTECTED_PORT}").parse().unwrap();
        let mut seq: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            socket
                .send_to(&seq.to_be_bytes(), server)
                .expect("send probe");
            let deadline = Instant::now() + timeout;
            let mut answered = false;
            let mut buf = [0u8; 8];
            while Instant::now() < deadline {
                if let Ok((8, _)) = socket.recv_from(&mut buf)
                    && u64::from_be_bytes(buf) == seq
                {
                    answered = true;
                    break;
                }
            }
            let mut t = tally.lock().unwrap();
            t.sent += 1;
            t.answered += u64::from(answered);
        }
    })
}

/// Issue 4, test 2: `kill -9` of the agent leaves the filter working (the inside prober is
/// served, the outside one blocked), and a restart adopts the pinned state with no change for
/// either prober. The counters, which survive both, account for every probe exactly.
#[test]
fn kill_9_and_restart_change_nothing_for_the_probers() {
    let topo = Topology::new();
    let client_if = format!("{}c", topo.server_if);
    topo.client.ip(&[
        "addr",
        "add",
        &format!("{OUTSIDE_V4}/{PREFIX_V4}"),
        "dev",
        &client_if,
    ]);
    let files = Files::new(&[&topo.server_if], "");
    std::fs::write(&files.cidr_file, format!("{ALLOW_LIST}{CLIENT_V4}/32\n")).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        spawn_in(&topo.server, move || {
            let socket = UdpSocket::bind(format!("{SERVER_V4}:{PROTECTED_PORT}")).unwrap();
            socket.set_read_timeout(Some(POLL)).unwrap();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        })
    };

    let mut first = Agent::start(&topo.server, &files);
    let inside = Arc::new(Mutex::new(ProbeTally::default()));
    let outside = Arc::new(Mutex::new(ProbeTally::default()));
    let probers = [
        udp_prober(
            &topo.client,
            CLIENT_V4,
            INSIDE_PROBE_TIMEOUT,
            Arc::clone(&stop),
            Arc::clone(&inside),
        ),
        udp_prober(
            &topo.client,
            OUTSIDE_V4,
            OUTSIDE_PROBE_TIMEOUT,
            Arc::clone(&stop),
            Arc::clone(&outside),
        ),
    ];
    let both_probed = |at_least: u64| {
        wait_until("probes from both clients", || {
            let (i, o) = (*inside.lock().unwrap(), *outside.lock().unwrap());
            (i.sent >= at_least && o.sent >= at_least).then_some(())
        })
    };
    both_probed(2);

    first.signal(libc::SIGKILL);
    first.wait_exit();
    let after_kill = outside.lock().unwrap().sent;
    both_probed(after_kill + 2);

    let second = Agent::start(&topo.server, &files);
    let after_restart = outside.lock().unwrap().sent;
    both_probed(after_restart + 2);

    let (status, logs) = second.stop();
    stop.store(true, Ordering::Relaxed);
    for prober in probers {
        prober.join().expect("prober panicked");
    }
    echo.join().expect("echo server panicked");
    assert!(status.success(), "{logs}");

    let (inside, outside) = (*inside.lock().unwrap(), *outside.lock().unwrap());
    assert_eq!(
        inside.answered, inside.sent,
        "inside probes lost: {inside:?}"
    );
    assert_eq!(outside.answered, 0, "outside probes answered: {outside:?}");
    // Every probe has been through the program by now; poll in case a counter update is
    // still in flight, then compare exactly.
    let count = |reason| counter(&files, reason);
    let deadline = Instant::now() + WAIT;
    while (count(Reason::DropOutsideVpc), count(Reason::PassAllowed)) != (outside.sent, inside.sent)
        && Instant::now() < deadline
    {
        std::thread::sleep(POLL);
    }
    assert_eq!(
        count(Reason::DropOutsideVpc),
        outside.sent,
        "every outside probe dropped, no inside one"
    );
    assert_eq!(
        count(Reason::PassAllowed),
        inside.sent,
        "every inside probe passed"
    );
}

/// An interface deleted and re-created under the same name (a container runtime does this)
/// leaves a defunct pinned link behind: the next start replaces it with a new one.
#[test]
fn a_recreated_interface_gets_a_new_link() {
    let topo = Topology::new();
    let files = Files::new(&[&topo.server_if], "");
    let (status, _) = Agent::start(&topo.server, &files).stop();
    assert!(status.success());
    let link_path = files.link_pin(&topo.server_if, "driver");
    let old = LinkState::read(&link_path).unwrap();

    topo.server.ip(&["link", "del", &topo.server_if]);
    topo.server.ip(&[
        "link",
        "add",
        &topo.server_if,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}p", topo.server_if),
    ]);
    topo.server.ip(&["link", "set", &topo.server_if, "up"]);
    assert_eq!(LinkState::read(&link_path).unwrap().ifindex, 0, "defunct");

    let agent = Agent::start(&topo.server, &files);
    let logs = agent.logs();
    assert!(logs.contains("is stale"), "{logs}");
    assert!(
        logs.contains(&format!("interfaces {} (driver, new)", topo.server_if)),
        "{logs}"
    );
    let new = LinkState::read(&link_path).unwrap();
    assert_ne!(new.link_id, old.link_id);
    assert_eq!(
        topo.server.xdp_program_id(&topo.server_if),
        Some(new.program_id)
    );
}
