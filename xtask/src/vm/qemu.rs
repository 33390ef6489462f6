//! One test VM: QEMU (TCG) booting a kernel on a qcow2 overlay of the image, its virtio-net NIC on
//! a multi-queue tap inside a network namespace of its own (the host side of the tap is where
//! the clients are), the console in a file and a command channel on the second serial port.
//! Every wait is bounded; QEMU is killed by its PID when the VM is dropped.

use super::kernels::Kernel;
use crate::cmd;
use anyhow::{Context as _, Result, anyhow, bail};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tap's name inside the VM's own namespace.
pub const TAP: &str = "sgvm0";
/// The guest's MAC address (locally administered).
const GUEST_MAC: &str = "52:54:00:5e:00:02";
/// Guest size: two vCPUs (multi-queue virtio-net, so native XDP attaches) and enough memory for
/// a systemd boot and the maps.
const VCPUS: &str = "2";
const MEMORY_MIB: &str = "1024";
/// Queues of the tap and the NIC; the vectors are 2 per queue pair plus config and control.
const NIC_QUEUES: &str = "4";
const NIC_VECTORS: &str = "10";
const KERNEL_ARGS: &str =
    "root=/dev/vda rw console=ttyS0 net.ifnames=0 fsck.mode=skip panic=-1 systemd.show_status=0";
/// Bounds. A TCG boot of a Debian kernel to multi-user takes ~25 s on a quiet machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);
/// Console lines shown with a failure.
const CONSOLE_TAIL_LINES: usize = 60;

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        cmd::run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        cmd::output(Command::new("ip").args(["-n", &self.name]).args(args)).map(|_| ())
    }

    /// A command run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = cmd::output(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A running VM.
pub struct Vm {
    qemu: Child,
    console: PathBuf,
    ctl: UnixStream,
    buffer: Vec<u8>,
    next_id: u64,
    /// Set once the guest missed a deadline or QEMU died: later commands fail at once instead
    /// of each waiting out its own bound.
    broken: Option<String>,
    pub boot_id: String,
    // Dropped after QEMU is gone: the tap lives in it.
    pub netns: Netns,
}

/// The host-side addresses of the tap: (address with prefix length).
pub type HostAddresses<'a> = &'a [&'a str];

impl Vm {
    /// Boots `kernel` from an overlay of `image` in `dir`, sets the tap's host side up with
    /// `host_addresses`, and waits for the guest's control channel.
    pub fn boot(
        kernel: &Kernel,
        initrd: &Path,
        image: &Path,
        dir: &Path,
        netns: Netns,
        host_addresses: HostAddresses,
    ) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let overlay = dir.join("overlay.qcow2");
        cmd::output(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(image)
                .arg(&overlay),
        )?;
        let console = dir.join("console.log");
        let socket = dir.join("ctl.sock");
        let log = std::fs::File::create(dir.join("qemu.log"))?;
        let mut qemu = netns.exec("qemu-system-x86_64");
        qemu.args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", VCPUS, "-m", MEMORY_MIB])
            .arg("-kernel")
            .arg(kernel.vmlinuz())
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", KERNEL_ARGS])
            .arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=virtio,cache=unsafe",
                overlay.display()
            ))
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off,queues={NIC_QUEUES}"
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mq=on,vectors={NIC_VECTORS},mac={GUEST_MAC},romfile="
            ))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=ctl,path={},server=on,wait=off",
                socket.display()
            ))
            .args(["-serial", "chardev:ctl"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        eprintln!("+ {}", cmd::display(&qemu));
        // `ip netns exec` execs QEMU: this PID is QEMU's.
        let child = qemu.spawn().context("starting qemu-system-x86_64")?;
        let mut vm = VmStarting {
            qemu: Some(child),
            dir: dir.to_path_buf(),
        };
        let ctl = vm.wait_for(SOCKET_TIMEOUT, "the control socket", || {
            Ok(UnixStream::connect(&socket).ok())
        })?;
        vm.wait_for(SOCKET_TIMEOUT, "the tap", || {
            Ok(netns.ip(&["link", "show", TAP]).ok())
        })?;
        for address in host_addresses {
            // nodad: the addresses are usable at once; no one else is on this link.
            let mut args = vec!["addr", "add", address, "dev", TAP];
            if address.contains(':') {
                args.push("nodad");
            }
            netns.ip(&args)?;
        }
        netns.ip(&["link", "set", TAP, "up"])?;
        netns.ip(&["link", "set", "lo", "up"])?;
        ctl.set_read_timeout(Some(POLL))?;
        let mut vm = Vm {
            qemu: vm.qemu.take().expect("still running"),
            console,
            ctl,
            buffer: Vec::new(),
            next_id: 1,
            broken: None,
            boot_id: String::new(),
            netns,
        };
        vm.boot_id = vm.wait_ready(None)?;
        Ok(vm)
    }

    /// Waits for the guest's `@@READY <boot id>`, from a boot other than `previous`.
    pub fn wait_ready(&mut self, previous: Option<&str>) -> Result<String> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let line = self.read_line(deadline, "the guest's control channel (boot)")?;
            if let Some(id) = line.strip_prefix("@@READY ") {
                let id = id.trim();
                if previous != Some(id) {
                    return Ok(id.to_owned());
                }
            }
        }
    }

    /// Runs `command` in the guest; its output, or an error with the output if it failed.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let id = self.send(command)?;
        let deadline = Instant::now() + timeout;
        let what = format!("`{command}` in the guest");
        let begin = format!("@@BEGIN {id}");
        while self.read_line(deadline, &what)?.trim_end() != begin {}
        let end = format!("@@END {id} ");
        let mut output = String::new();
        loop {
            let line = self.read_line(deadline, &what)?;
            if let Some(rc) = line.strip_prefix(&end) {
                let output = output.trim_end().to_owned();
                return match rc.trim() {
                    "0" => Ok(output),
                    rc => Err(anyhow!("{what} exited with {rc}: {output}")),
                };
            }
            output.push_str(&line);
        }
    }

    /// Sends `command` without waiting for its answer (a reboot never answers).
    pub fn send(&mut self, command: &str) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.ctl
            .write_all(format!("{id} {command}\n").as_bytes())
            .context("writing to the guest's control channel")?;
        Ok(id)
    }

    /// One line from the control channel (with its newline), or an error at the deadline or when
    /// QEMU has exited, with the console's tail.
    fn read_line(&mut self, deadline: Instant, what: &str) -> Result<String> {
        if let Some(reason) = &self.broken {
            bail!("not waiting for {what}: the guest is gone ({reason})");
        }
        let line = self.next_line(deadline, what);
        if let Err(e) = &line {
            self.broken = Some(e.to_string().lines().next().unwrap_or_default().to_owned());
        }
        line
    }

    fn next_line(&mut self, deadline: Instant, what: &str) -> Result<String> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line).replace('\r', ""));
            }
            if let Some(status) = self.qemu.try_wait()? {
                bail!(
                    "QEMU exited ({status}) while waiting for {what}\n{}",
                    console_tail(&self.console)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}\n{}",
                    console_tail(&self.console)
                );
            }
            let mut chunk = [0u8; 4096];
            match self.ctl.read(&mut chunk) {
                Ok(0) => bail!(
                    "the control channel closed while waiting for {what}\n{}",
                    console_tail(&self.console)
                ),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the guest's control channel"),
            }
        }
    }

    pub fn console_tail(&self) -> String {
        console_tail(&self.console)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Our own QEMU, by its PID (Child::kill is SIGKILL to that PID).
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// QEMU before the control channel is connected: killed on an early error.
struct VmStarting {
    qemu: Option<Child>,
    dir: PathBuf,
}

impl VmStarting {
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe()? {
                return Ok(v);
            }
            let qemu = self.qemu.as_mut().expect("running");
            if let Some(status) = qemu.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
                bail!("QEMU exited ({status}) before {what} was there:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("{what} did not appear within {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for VmStarting {
    fn drop(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
    }
}

fn console_tail(console: &Path) -> String {
    let text = std::fs::read(console).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    format!(
        "--- console ({}, last {} lines) ---\n{}",
        console.display(),
        lines.len() - start,
        lines[start..].join("\n")
    )
}
