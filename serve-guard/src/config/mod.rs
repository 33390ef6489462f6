//! The TOML config file, command-line overrides, and validation.
//!
//! Loading happens in two steps so that every verb can find the agent's files while only `run`
//! insists on a usable host:
//! - [`Config::load`] parses the file, applies overrides and checks everything that needs no
//!   system access (keys, types, port ranges, interface names). Every verb uses it.
//! - [`Config::check_host`] checks what the agent is about to touch (the interfaces exist in this
//!   network namespace, the CIDR file parses) and returns the CIDR list. `run` calls it before it
//!   touches the kernel, so a bad config attaches nothing.
//!
//! The config may carry public-mode settings, so it is never Debug-printed whole into logs.

pub mod cloud;

use crate::cidr::{CidrError, CidrList, Normalised};
use crate::ports::{Guard, PortError, PortList, PortPolicy, PortSpec};
use serde::Deserialize;
// The `[public]` section is the proxy's own type: the proxy process gets it over the socketpair.
use serve_guard_proxy::config::{PublicConfig, PublicConfigError};
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Defaults, as documented in the README's config reference.
pub mod defaults {
    pub const SERVE_PORTS: [u16; 2] = [8000, 9000];
    /// With `guard = "node"`: SSH, so that an administrator outside the VPC (`ray up` from a
    /// laptop, an SSH jump host elsewhere) keeps the node, and the DHCP clients, so that it
    /// keeps its address (see `ports::presets::DHCP`). Closing either is one line.
    pub const PUBLIC_PORTS: [&str; 2] = ["ssh", "dhcp"];

    pub fn public_ports() -> Vec<crate::ports::PortSpec> {
        PUBLIC_PORTS
            .iter()
            .map(|p| crate::ports::PortSpec::Text((*p).to_owned()))
            .collect()
    }
    pub const CIDR_FILE: &str = "/etc/serve-guard/vpc-cidrs";
    pub const PIN_DIR: &str = "/sys/fs/bpf/serve-guard";
    pub const STATE_DIR: &str = "/var/lib/serve-guard";
    pub const CONTROL_SOCKET: &str = "/run/serve-guard/control.sock";
    pub const METRICS_LISTEN: &str = "127.0.0.1:9464";
}

/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Largest config file read; a config is a few hundred bytes, anything huge is a mistake.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error(
        "`max_cidrs = {0}`: must be a multiple of {min} from {min} to {max} (CIDRs per address family)",
        min = serve_guard_common::trie::MIN_CIDRS_PER_FAMILY,
        max = serve_guard_common::trie::MAX_CIDRS_PER_FAMILY
    )]
    MaxCidrs(i64),
    /// toml's message carries the line, the column and the offending key.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "`mode` is not set: add `mode = \"private\"` or `mode = \"public\"` to the config or pass --mode"
    )]
    MissingMode,
    #[error(
        "no interfaces: set `interfaces = [\"eth0\", ...]` in the config or pass --interface (the filter must guard at least one)"
    )]
    NoInterfaces,
    #[error("interface name `{name}` is invalid: {reason}")]
    InterfaceName { name: String, reason: &'static str },
    #[error("interface {0} is listed twice")]
    DuplicateInterface(String),
    #[error(
        "interface {0} does not exist in this network namespace (see `ip link`); nothing was attached"
    )]
    MissingInterface(String),
    #[error(
        "interface {name} is not an Ethernet device (ARPHRD type {hw_type}): the filter parses Ethernet frames and would misjudge its packets; nothing was attached (docs/filter.md says how to handle tunnels)"
    )]
    NotEthernet { name: String, hw_type: u16 },
    #[error("cannot list the network interfaces: {0}")]
    ListLinks(std::io::Error),
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error(
        "[public] {key} = {addr}: its port is in `guarded_ports` ({entry}), so clients outside the VPC could never reach the proxy; remove it from guarded_ports"
    )]
    ListenOnGuardedPort {
        key: &'static str,
        addr: SocketAddr,
        entry: String,
    },
    #[error("`{key}` must not be empty")]
    EmptyPath { key: &'static str },
    #[error(
        "CIDR file {path} does not exist: create it with one VPC CIDR per line (or set `cidr_file`)"
    )]
    MissingCidrFile { path: PathBuf },
    #[error("cannot read CIDR file {path}: {error}")]
    ReadCidrFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("CIDR file {path} is larger than {max} bytes")]
    CidrFileTooLarge { path: PathBuf, max: u64 },
    #[error("CIDR file {path}: {error}")]
    Cidr { path: PathBuf, error: CidrError },
    #[error(transparent)]
    Public(#[from] PublicConfigError),
    #[error(transparent)]
    Cloud(#[from] cloud::CloudConfigError),
}

/// `private`: XDP keeps the Serve ports to the VPC. `public`: the token proxy fronts Serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Private,
    Public,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Private => "private",
            Mode::Public => "public",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A command-line word that is not one of a setting's values (`--mode`, `--xdp-mode`,
/// `--on-stop`); clap prints it after the option's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not {what}: use {choices}")]
pub struct UnknownValue {
    pub given: String,
    what: &'static str,
    choices: &'static str,
}

impl UnknownValue {
    fn new(given: &str, what: &'static str, choices: &'static str) -> Self {
        UnknownValue {
            given: given.to_owned(),
            what,
            choices,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "private" => Ok(Mode::Private),
            "public" => Ok(Mode::Public),
            _ => Err(UnknownValue::new(s, "a mode", "private or public")),
        }
    }
}

/// How the XDP program is attached. `auto` tries the driver first and falls back to generic
/// (skb) XDP with a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    #[default]
    Auto,
    Driver,
    Skb,
}

impl XdpModeSetting {
    pub const fn name(self) -> &'static str {
        match self {
            XdpModeSetting::Auto => "auto",
            XdpModeSetting::Driver => "driver",
            XdpModeSetting::Skb => "skb",
        }
    }
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for XdpModeSetting {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "auto" => Ok(Self::Auto),
            "driver" => Ok(Self::Driver),
            "skb" => Ok(Self::Skb),
            _ => Err(UnknownValue::new(s, "an XDP mode", "auto, driver or skb")),
        }
    }
}

/// How the program goes onto an interface: its own BPF link (the interface is serve-guard's
/// alone), or a slot of a libxdp dispatcher (protocol v2) shared with xdp-filter, xdp-loader and
/// any other libxdp program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    #[default]
    Link,
    Dispatcher,
}

impl XdpAttach {
    pub const fn name(self) -> &'static str {
        match self {
            XdpAttach::Link => "link",
            XdpAttach::Dispatcher => "dispatcher",
        }
    }
}

/// The default run priority in a dispatcher: libxdp runs lower values first and gives programs
/// without one 50, so serve-guard runs before them. A filter that runs after a program that
/// passes or redirects packets on its own protects nothing.
pub const DEFAULT_XDP_PRIORITY: u32 = serve_guard_common::run_config::DEFAULT_PRIORITY as u32;

pub use serve_guard_proxy::logging::LogFormat;

/// What the agent does with the filter when it stops (SIGINT/SIGTERM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// Leave the pinned filter in place: the node keeps filtering with the last list.
    #[default]
    Keep,
    /// Remove links, program and map pins.
    Detach,
}

impl OnStop {
    pub const fn name(self) -> &'static str {
        match self {
            OnStop::Keep => "keep",
            OnStop::Detach => "detach",
        }
    }
}

impl fmt::Display for OnStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OnStop {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "keep" => Ok(Self::Keep),
            "detach" => Ok(Self::Detach),
            _ => Err(UnknownValue::new(s, "an on_stop action", "keep or detach")),
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` and `/ready` endpoint.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    defaults::METRICS_LISTEN
        .parse()
        .expect("the default metrics address parses")
}

/// The file as written: everything optional so that command-line overrides can fill the gaps and
/// the errors for missing keys can say how to fix them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    mode: Option<Mode>,
    interfaces: Option<Vec<String>>,
    guard: Option<Guard>,
    serve_ports: Option<Vec<PortSpec>>,
    public_ports: Option<Vec<PortSpec>>,
    guarded_ports: Option<Vec<PortSpec>>,
    cidr_file: Option<PathBuf>,
    xdp_mode: Option<XdpModeSetting>,
    xdp_attach: Option<XdpAttach>,
    xdp_priority: Option<u32>,
    audit: Option<bool>,
    program_log: Option<bool>,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    on_stop: Option<OnStop>,
    log_format: Option<LogFormat>,
    allow_everyone: Option<bool>,
    /// Wide, so that an out-of-range figure gets our message, not a type error.
    max_cidrs: Option<i64>,
    metrics: Option<MetricsConfig>,
    public: Option<PublicConfig>,
    cloud: Option<cloud::CloudConfig>,
}

/// Command-line overrides for the scalar keys (`serve-guard run --mode ...`). A non-empty list
/// replaces the file's list.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mode: Option<Mode>,
    pub interfaces: Vec<String>,
    pub serve_ports: Vec<i64>,
    pub cidr_file: Option<PathBuf>,
    pub xdp_mode: Option<XdpModeSetting>,
    pub audit: Option<bool>,
    pub program_log: Option<bool>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub on_stop: Option<OnStop>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub mode: Mode,
    /// Interface names, in the order given, without duplicates.
    pub interfaces: Vec<String>,
    /// Ray Serve's ports (strict), sorted, without duplicates.
    pub serve_ports: Vec<u16>,
    /// The class of every port (`guard`, `serve_ports`, `public_ports`, `guarded_ports`, the
    /// proxy's listeners).
    pub ports: PortPolicy,
    pub cidr_file: PathBuf,
    pub xdp_mode: XdpModeSetting,
    /// Own BPF link, or a slot in a libxdp dispatcher.
    pub xdp_attach: XdpAttach,
    /// Run priority in a dispatcher (lower runs first).
    pub xdp_priority: u32,
    pub audit: bool,
    /// Debug logging from the XDP program through aya-log (costly per packet; off by default).
    pub program_log: bool,
    /// bpffs folder holding the pinned program, links and maps.
    pub pin_dir: PathBuf,
    /// Holds the agent lock and the agent's own state.
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub on_stop: OnStop,
    /// `text` (human-readable lines) or `json` (one object a line).
    pub log_format: LogFormat,
    /// Whether the CIDR file may hold an entry that allows every source (`0.0.0.0/0`, `::/0`).
    pub allow_everyone: bool,
    /// CIDRs per address family the filter's maps are built for (when they are created).
    pub max_cidrs: u32,
    pub metrics: MetricsConfig,
    /// The `[public]` table, if present (public mode uses its defaults when absent).
    pub public: Option<PublicConfig>,
    /// The `[cloud]` table: when present, the allow-list is the cloud's ranges and the file's.
    pub cloud: Option<cloud::CloudConfig>,
}

/// Debug without the `[public]` table, which may name secrets.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mode", &self.mode)
            .field("interfaces", &self.interfaces)
            .field("serve_ports", &self.serve_ports)
            .field("ports", &self.ports)
            .field("cidr_file", &self.cidr_file)
            .field("xdp_mode", &self.xdp_mode)
            .field("xdp_attach", &self.xdp_attach)
            .field("xdp_priority", &self.xdp_priority)
            .field("audit", &self.audit)
            .field("program_log", &self.program_log)
            .field("pin_dir", &self.pin_dir)
            .field("state_dir", &self.state_dir)
            .field("control_socket", &self.control_socket)
            .field("on_stop", &self.on_stop)
            .field("log_format", &self.log_format)
            .field("allow_everyone", &self.allow_everyone)
            .field("max_cidrs", &self.max_cidrs)
            .field("metrics", &self.metrics)
            .field("public", &self.public.as_ref().map(|_| "<set>"))
            .field("cloud", &self.cloud)
            .finish()
    }
}

/// What [`Config::check_host`] found: the interfaces with their index, and the CIDR list.
#[derive(Debug, Clone)]
pub struct HostCheck {
    pub interfaces: Vec<(String, u32)>,
    /// The namespace's links as the check listed them, for the exposure scan.
    pub links: Vec<crate::node::netlink::Link>,
    pub cidrs: CidrList,
    /// CIDRs with host bits set that were normalised; the caller logs them as warnings.
    pub warnings: Vec<Normalised>,
}

impl Config {
    /// Reads the config file, applies the overrides and validates everything that needs no
    /// system access.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|e| match e {
            LimitedReadError::Io(error) => ConfigError::Read {
                path: path.to_owned(),
                error,
            },
            LimitedReadError::TooLarge => ConfigError::TooLarge {
                path: path.to_owned(),
                max: MAX_CONFIG_BYTES,
            },
        })?;
        Self::from_toml(&text, path, overrides)
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn from_toml(
        text: &str,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::merge(file, overrides.clone())
    }

    fn merge(file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let mode = o.mode.or(file.mode).ok_or(ConfigError::MissingMode)?;
        let interfaces = if o.interfaces.is_empty() {
            file.interfaces.unwrap_or_default()
        } else {
            o.interfaces
        };
        let serve_specs = if o.serve_ports.is_empty() {
            file.serve_ports
                .unwrap_or_else(|| defaults::SERVE_PORTS.iter().map(|&p| p.into()).collect())
        } else {
            o.serve_ports.into_iter().map(PortSpec::Number).collect()
        };
        let path = |over: Option<PathBuf>, file: Option<PathBuf>, default: &str, key| {
            let p = over.or(file).unwrap_or_else(|| default.into());
            if p.as_os_str().is_empty() {
                Err(ConfigError::EmptyPath { key })
            } else {
                Ok(p)
            }
        };
        let metrics = match o.metrics_listen {
            Some(listen) => MetricsConfig { listen },
            None => file.metrics.unwrap_or_default(),
        };
        // Public mode always runs the proxy, with the defaults when there is no [public] table; its
        // listeners must not sit on a port the filter closes to the internet.
        let public = match (mode, file.public) {
            (Mode::Public, public) => Some(public.unwrap_or_default()),
            (Mode::Private, public) => public,
        };
        let ports = port_policy(
            file.guard.unwrap_or_default(),
            &serve_specs,
            file.public_ports,
            file.guarded_ports,
            public.as_ref().filter(|_| mode == Mode::Public),
        )?;
        let serve_ports = ports.serve.ports();
        if let Some(public) = &public {
            public.validate_for(&serve_ports)?;
        }
        Ok(Config {
            mode,
            interfaces: validate_interfaces(interfaces)?,
            serve_ports,
            ports,
            cidr_file: path(
                o.cidr_file,
                file.cidr_file,
                defaults::CIDR_FILE,
                "cidr_file",
            )?,
            xdp_mode: o.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            xdp_attach: file.xdp_attach.unwrap_or_default(),
            xdp_priority: file.xdp_priority.unwrap_or(DEFAULT_XDP_PRIORITY),
            audit: o.audit.or(file.audit).unwrap_or(false),
            program_log: o.program_log.or(file.program_log).unwrap_or(false),
            pin_dir: path(o.pin_dir, file.pin_dir, defaults::PIN_DIR, "pin_dir")?,
            state_dir: path(
                o.state_dir,
                file.state_dir,
                defaults::STATE_DIR,
                "state_dir",
            )?,
            control_socket: path(
                o.control_socket,
                file.control_socket,
                defaults::CONTROL_SOCKET,
                "control_socket",
            )?,
            on_stop: o.on_stop.or(file.on_stop).unwrap_or_default(),
            log_format: o.log_format.or(file.log_format).unwrap_or_default(),
            allow_everyone: file.allow_everyone.unwrap_or(false),
            max_cidrs: validate_max_cidrs(file.max_cidrs)?,
            metrics,
            public,
            cloud: match file.cloud {
                Some(cloud) => {
                    cloud.validate()?;
                    Some(cloud)
                }
                None => None,
            },
        })
    }

    /// Checks what the agent is about to use: every interface exists in this network namespace
    /// and the CIDR file parses into a valid list. Touches nothing.
    pub fn check_host(&self) -> Result<HostCheck, ConfigError> {
        let interfaces = self
            .interfaces
            .iter()
            .map(|name| {
                interface_index(name)
                    .map(|index| (name.clone(), index))
                    .ok_or_else(|| ConfigError::MissingInterface(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let links = crate::node::netlink::links().map_err(ConfigError::ListLinks)?;
        for (name, index) in &interfaces {
            if let Some(link) = links.iter().find(|l| l.index == *index)
                && !link.is_ethernet_framed()
            {
                return Err(ConfigError::NotEthernet {
                    name: name.clone(),
                    hw_type: link.hw_type,
                });
            }
        }
        let (cidrs, warnings) = self.read_cidr_file()?;
        // The list must fit the filter this config builds (an adopted filter's own maps are
        // checked again when the list is applied).
        cidrs
            .check_capacity(self.max_cidrs)
            .map_err(|error| ConfigError::Cidr {
                path: self.cidr_file.clone(),
                error,
            })?;
        Ok(HostCheck {
            interfaces,
            links,
            cidrs,
            warnings,
        })
    }

    /// Reads and validates the CIDR file. With `[cloud]`, a missing file is an empty list: the
    /// cloud gives the VPC's ranges and the file only adds what the cloud cannot know.
    pub fn read_cidr_file(&self) -> Result<(CidrList, Vec<Normalised>), ConfigError> {
        match read_cidr_file_with(&self.cidr_file, self.cloud.is_some()) {
            Err(ConfigError::MissingCidrFile { .. }) if self.cloud.is_some() => {
                Ok((CidrList::default(), Vec::new()))
            }
            other => other,
        }
    }
}

/// Reads and validates a CIDR file (one CIDR per line, `#` comments).
pub fn read_cidr_file(path: &Path) -> Result<(CidrList, Vec<Normalised>), ConfigError> {
    read_cidr_file_with(path, false)
}

/// [`read_cidr_file`]; with `may_be_empty` (`[cloud]`) a file without a CIDR is an empty list.
fn read_cidr_file_with(
    path: &Path,
    may_be_empty: bool,
) -> Result<(CidrList, Vec<Normalised>), ConfigError> {
    let text = read_limited(path, crate::cidr::MAX_FILE_BYTES).map_err(|e| match e {
        LimitedReadError::Io(error) if error.kind() == std::io::ErrorKind::NotFound => {
            ConfigError::MissingCidrFile {
                path: path.to_owned(),
            }
        }
        LimitedReadError::Io(error) => ConfigError::ReadCidrFile {
            path: path.to_owned(),
            error,
        },
        LimitedReadError::TooLarge => ConfigError::CidrFileTooLarge {
            path: path.to_owned(),
            max: crate::cidr::MAX_FILE_BYTES,
        },
    })?;
    let parsed = if may_be_empty {
        CidrList::from_file_text_maybe_empty(&text)
    } else {
        CidrList::from_file_text(&text)
    };
    parsed.map_err(|error| ConfigError::Cidr {
        path: path.to_owned(),
        error,
    })
}

/// The interface's index in the calling thread's network namespace, if it exists there.
/// (`/sys/class/net` may show another namespace's view, so ask the kernel directly.)
#[allow(unsafe_code, reason = "if_nametoindex(3)")]
pub fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `max_cidrs`: a multiple of [`MIN_CIDRS_PER_FAMILY`] from it up to [`MAX_CIDRS_PER_FAMILY`].
fn validate_max_cidrs(value: Option<i64>) -> Result<u32, ConfigError> {
    use serve_guard_common::trie::{
        DEFAULT_CIDRS_PER_FAMILY, MAX_CIDRS_PER_FAMILY, MIN_CIDRS_PER_FAMILY,
    };
    let Some(value) = value else {
        return Ok(DEFAULT_CIDRS_PER_FAMILY);
    };
    u32::try_from(value)
        .ok()
        .filter(|v| {
            (MIN_CIDRS_PER_FAMILY..=MAX_CIDRS_PER_FAMILY).contains(v)
                && v % MIN_CIDRS_PER_FAMILY == 0
        })
        .ok_or(ConfigError::MaxCidrs(value))
}

fn validate_interfaces(names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::NoInterfaces);
    }
    let mut seen = BTreeSet::new();
    for name in &names {
        let bad = |reason| ConfigError::InterfaceName {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_INTERFACE_NAME_LEN {
            return Err(bad("longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(bad("not a device name"));
        }
        if name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
        {
            return Err(bad("contains '/', ':', NUL or whitespace"));
        }
        if !seen.insert(name.as_str()) {
            return Err(ConfigError::DuplicateInterface(name.clone()));
        }
    }
    Ok(names)
}

/// The port policy from the config's lists: every entry valid, no port both public and
/// protected, the proxy's listeners reachable. The proxy's ports (public mode) are open.
fn port_policy(
    guard: Guard,
    serve: &[PortSpec],
    public: Option<Vec<PortSpec>>,
    guarded: Option<Vec<PortSpec>>,
    proxy: Option<&PublicConfig>,
) -> Result<PortPolicy, ConfigError> {
    const SERVE: &str = "serve_ports";
    const PUBLIC: &str = "public_ports";
    const GUARDED: &str = "guarded_ports";
    let serve = PortList::parse(SERVE, serve)?;
    if serve.is_empty() {
        return Err(PortError::Empty { key: SERVE }.into());
    }
    let public = match (guard, public) {
        (Guard::Ports, Some(_)) => {
            return Err(PortError::NeedsGuard {
                key: PUBLIC,
                needs: Guard::Node,
            }
            .into());
        }
        (_, Some(specs)) => PortList::parse(PUBLIC, &specs)?,
        (Guard::Node, None) => PortList::parse(PUBLIC, &defaults::public_ports())?,
        (Guard::Ports, None) => PortList::default(),
    };
    let guarded = match (guard, guarded) {
        (Guard::Node, Some(_)) => {
            return Err(PortError::NeedsGuard {
                key: GUARDED,
                needs: Guard::Ports,
            }
            .into());
        }
        (_, Some(specs)) => PortList::parse(GUARDED, &specs)?,
        (_, None) => PortList::default(),
    };
    public.check_disjoint(PUBLIC, &serve, SERVE)?;
    guarded.check_disjoint(GUARDED, &serve, SERVE)?;
    let mut proxy_ports = Vec::new();
    if let Some(proxy) = proxy {
        for (key, addr) in proxy.listeners() {
            if let Some(entry) = guarded.entry_for(addr.port()) {
                return Err(ConfigError::ListenOnGuardedPort {
                    key,
                    addr,
                    entry: entry.to_owned(),
                });
            }
            // Port 0 lets the OS pick (tests); it is no destination a packet can have.
            if addr.port() != 0 {
                proxy_ports.push(addr.port());
            }
        }
    }
    Ok(PortPolicy {
        guard,
        serve,
        public,
        guarded,
        proxy: proxy_ports,
    })
}

enum LimitedReadError {
    Io(std::io::Error),
    TooLarge,
}

/// Reads a whole text file of at most `max` bytes.
fn read_limited(path: &Path, max: u64) -> Result<String, LimitedReadError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(LimitedReadError::Io)?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(LimitedReadError::Io)?;
    if text.len() as u64 > max {
        return Err(LimitedReadError::TooLarge);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortClass;

    const MINIMAL: &str = "mode = \"private\"\ninterfaces = [\"lo\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), &Overrides::default())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn max_cidrs_is_a_multiple_of_16_up_to_2_to_the_20() {
        assert_eq!(parse(MINIMAL).unwrap().max_cidrs, 65_536);
        for ok in [16, 1_000_000, 1 << 20] {
            let c = parse(&format!("{MINIMAL}max_cidrs = {ok}\n")).unwrap();
            assert_eq!(c.max_cidrs, ok);
        }
        for bad in [0_i64, 8, 17, (1 << 20) + 16, -16, 1 << 40] {
            let e = err(&format!("{MINIMAL}max_cidrs = {bad}\n"));
            assert!(
                e.contains(&format!("`max_cidrs = {bad}`")) && e.contains("1048576"),
                "{e}"
            );
        }
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.mode, Mode::Private);
        assert_eq!(c.interfaces, ["lo"]);
        assert_eq!(c.serve_ports, [8000, 9000]);
        assert_eq!(c.cidr_file, Path::new("/etc/serve-guard/vpc-cidrs"));
        assert_eq!(c.xdp_mode, XdpModeSetting::Auto);
        assert!(!c.audit);
        assert!(!c.program_log);
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/serve-guard"));
        assert_eq!(c.state_dir, Path::new("/var/lib/serve-guard"));
        assert_eq!(c.control_socket, Path::new("/run/serve-guard/control.sock"));
        assert_eq!(c.on_stop, OnStop::Keep);
        assert_eq!(c.metrics.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(!c.allow_everyone);
        assert!(c.public.is_none());
        let c = parse(&format!(
            "{MINIMAL}log_format = \"json\"\nallow_everyone = true\n"
        ))
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.allow_everyone);
        assert!(parse(&format!("{MINIMAL}log_format = \"xml\"\n")).is_err());
    }

    #[test]
    fn public_listeners_may_not_use_a_serve_port() {
        // The default listener (8443) collides once 8443 is a protected port: the proxy would be
        // unreachable from the internet, so refuse instead of starting a useless proxy.
        let err = parse("mode = \"public\"\ninterfaces = [\"lo\"]\nserve_ports = [8000, 8443]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("8443"), "{err}");
        let c = parse("mode = \"public\"\ninterfaces = [\"lo\"]\n").unwrap();
        assert!(
            c.public.is_some(),
            "public mode runs the proxy with the defaults"
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"
            mode = "public"
            interfaces = ["eth0", "eth1"]
            serve_ports = [9000, 8000, 8001]
            cidr_file = "/tmp/cidrs"
            xdp_mode = "skb"
            audit = true
            program_log = true
            pin_dir = "/sys/fs/bpf/sg-test"
            state_dir = "/tmp/sg-state"
            control_socket = "/tmp/sg.sock"
            on_stop = "detach"
            [metrics]
            listen = "[::1]:9999"
            [public]
            "#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Public);
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.serve_ports, [8000, 8001, 9000]);
        assert_eq!(c.cidr_file, Path::new("/tmp/cidrs"));
        assert_eq!(c.xdp_mode, XdpModeSetting::Skb);
        assert!(c.audit && c.program_log);
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/sg-test"));
        assert_eq!(c.state_dir, Path::new("/tmp/sg-state"));
        assert_eq!(c.control_socket, Path::new("/tmp/sg.sock"));
        assert_eq!(c.on_stop, OnStop::Detach);
        assert_eq!(c.metrics.listen, "[::1]:9999".parse().unwrap());
        assert!(c.public.is_some());
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = Overrides {
            mode: Some(Mode::Public),
            interfaces: vec!["veth1".into()],
            serve_ports: vec![8080],
            cidr_file: Some("/x/cidrs".into()),
            xdp_mode: Some(XdpModeSetting::Driver),
            audit: Some(true),
            program_log: Some(true),
            pin_dir: Some("/sys/fs/bpf/o".into()),
            state_dir: Some("/x/state".into()),
            control_socket: Some("/x/sock".into()),
            on_stop: Some(OnStop::Detach),
            metrics_listen: Some("127.0.0.1:1".parse().unwrap()),
            log_format: Some(LogFormat::Json),
        };
        let c = Config::from_toml(MINIMAL, Path::new("t"), &o).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.mode, Mode::Public);
        assert_eq!(c.interfaces, ["veth1"]);
        assert_eq!(c.serve_ports, [8080]);
        assert_eq!(c.cidr_file, Path::new("/x/cidrs"));
        assert_eq!(c.xdp_mode, XdpModeSetting::Driver);
        assert!(c.audit && c.program_log);
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/o"));
        assert_eq!(c.state_dir, Path::new("/x/state"));
        assert_eq!(c.control_socket, Path::new("/x/sock"));
        assert_eq!(c.on_stop, OnStop::Detach);
        assert_eq!(c.metrics.listen, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn overrides_can_supply_the_required_keys() {
        let o = Overrides {
            mode: Some(Mode::Private),
            interfaces: vec!["lo".into()],
            ..Overrides::default()
        };
        let c = Config::from_toml("", Path::new("t"), &o).unwrap();
        assert_eq!(c.interfaces, ["lo"]);
    }

    #[test]
    fn unknown_key_is_named_with_its_location() {
        let e = err("mode = \"private\"\ninterfaces = [\"lo\"]\nserve_port = [8000]\n");
        assert!(e.contains("test.toml"), "{e}");
        assert!(e.contains("unknown field `serve_port`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_key_in_a_table_is_named() {
        let e = err(&format!(
            "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:1\"\nport = 2\n"
        ));
        assert!(e.contains("unknown field `port`"), "{e}");
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err("mode = \"secret\"\ninterfaces = [\"lo\"]\n");
        assert!(
            e.contains("unknown variant `secret`") && e.contains("line 1"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}xdp_mode = \"hw\"\n"));
        assert!(e.contains("unknown variant `hw`"), "{e}");
        let e = err(&format!("{MINIMAL}on_stop = \"explode\"\n"));
        assert!(e.contains("unknown variant `explode`"), "{e}");
        let e = err(&format!("{MINIMAL}audit = \"yes\"\n"));
        assert!(e.contains("line 3"), "{e}");
        let e = err(&format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"));
        assert!(e.contains("line 4"), "{e}");
        let e = err("mode = \"private\"\ninterfaces = [\"lo\"\n");
        assert!(e.contains("test.toml") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn mode_is_required() {
        assert!(matches!(
            parse("interfaces = [\"lo\"]\n"),
            Err(ConfigError::MissingMode)
        ));
    }

    #[test]
    fn interfaces_are_required_and_not_empty() {
        assert!(matches!(
            parse("mode = \"private\"\n"),
            Err(ConfigError::NoInterfaces)
        ));
        assert!(matches!(
            parse("mode = \"private\"\ninterfaces = []\n"),
            Err(ConfigError::NoInterfaces)
        ));
    }

    #[test]
    fn bad_interface_names_are_refused() {
        let e = err("mode = \"private\"\ninterfaces = [\"a-very-long-name0\"]\n");
        assert!(e.contains("a-very-long-name0") && e.contains("15"), "{e}");
        let e = err("mode = \"private\"\ninterfaces = [\"\"]\n");
        assert!(e.contains("empty"), "{e}");
        let e = err("mode = \"private\"\ninterfaces = [\"eth 0\"]\n");
        assert!(e.contains("`eth 0`"), "{e}");
        let e = err("mode = \"private\"\ninterfaces = [\"eth0\", \"eth0\"]\n");
        assert_eq!(e, "interface eth0 is listed twice");
    }

    #[test]
    fn ports_must_be_1_to_65535() {
        for bad in ["0", "65536", "-1", "100000"] {
            let e = err(&format!("{MINIMAL}serve_ports = [8000, {bad}]\n"));
            assert_eq!(e, format!("`serve_ports`: {bad} is not a port (1-65535)"));
        }
        let c = parse(&format!("{MINIMAL}serve_ports = [1, 65535]\n")).unwrap();
        assert_eq!(c.serve_ports, [1, 65535]);
        assert_eq!(
            err(&format!("{MINIMAL}serve_ports = []\n")),
            "`serve_ports` is empty: give at least one Ray Serve port to protect"
        );
        // A port listed twice (or inside a range too) is the same port.
        let c = parse(&format!(
            "{MINIMAL}serve_ports = [8000, \"7999-8001\", 8000]\n"
        ))
        .unwrap();
        assert_eq!(c.serve_ports, [7999, 8000, 8001]);
    }

    #[test]
    fn the_default_guards_the_node_but_ssh() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.ports.guard, Guard::Node);
        assert_eq!(c.ports.class(22), PortClass::Open);
        assert_eq!(c.ports.class(8000), PortClass::Strict);
        assert_eq!(c.ports.class(9000), PortClass::Strict);
        for guarded in [1, 21, 23, 6379, 8265, 10001, 30000, 45000, 65535] {
            assert_eq!(c.ports.class(guarded), PortClass::Guarded, "{guarded}");
        }
        assert_eq!(c.ports.class(68), PortClass::Open, "DHCP client");
        assert_eq!(c.ports.class(546), PortClass::Open, "DHCPv6 client");
        let c = parse(&format!("{MINIMAL}public_ports = []\n")).unwrap();
        assert_eq!(c.ports.class(22), PortClass::Guarded);
        assert_eq!(c.ports.class(68), PortClass::Guarded);
        let c = parse(&format!("{MINIMAL}guard = \"ports\"\n")).unwrap();
        assert_eq!(c.ports.class(22), PortClass::Open);
        assert_eq!(c.ports.class(6379), PortClass::Open);
        let c = parse(&format!(
            "{MINIMAL}guard = \"ports\"\nguarded_ports = [\"ray\"]\n"
        ))
        .unwrap();
        assert_eq!(c.ports.class(6379), PortClass::Guarded);
        assert_eq!(c.ports.class(30500), PortClass::Guarded);
        assert_eq!(c.ports.class(8000), PortClass::Strict);
        assert_eq!(c.ports.class(22), PortClass::Open);
    }

    #[test]
    fn port_rules_are_refused_with_their_entry() {
        for (extra, want) in [
            (
                "public_ports = [\"9000-8000\"]",
                "`public_ports`: range \"9000-8000\" is out of order: write the lower port first",
            ),
            (
                "public_ports = [\"22\", \"rey\"]",
                "`public_ports`: \"rey\" is neither a port, a \"LO-HI\" range nor a preset (presets: ssh, dhcp, serve, ray)",
            ),
            (
                "public_ports = [\"7000-8000\"]",
                "port 8000 is both in `public_ports` (\"7000-8000\") and in `serve_ports` (8000): a port is either public or protected; remove it from one list",
            ),
            (
                "public_ports = [70000]",
                "`public_ports`: 70000 is not a port (1-65535)",
            ),
            (
                "guarded_ports = [\"ray\"]",
                "`guarded_ports` only applies with guard = \"ports\"; remove it or set guard = \"ports\"",
            ),
            (
                "guard = \"ports\"\npublic_ports = [22]",
                "`public_ports` only applies with guard = \"node\"; remove it or set guard = \"node\"",
            ),
            (
                "guard = \"ports\"\nguarded_ports = [\"8000-8001\"]",
                "port 8000 is both in `guarded_ports` (\"8000-8001\") and in `serve_ports` (8000): a port is either public or protected; remove it from one list",
            ),
        ] {
            assert_eq!(err(&format!("{MINIMAL}{extra}\n")), want, "{extra}");
        }
        assert!(err(&format!("{MINIMAL}guard = \"all\"\n")).contains("unknown variant `all`"));
    }

    #[test]
    fn the_proxy_listeners_are_open_and_never_guarded() {
        let public = "mode = \"public\"\ninterfaces = [\"lo\"]\n";
        let c = parse(&format!(
            "{public}[public]\nlisten = \"0.0.0.0:8443\"\ngrpc_listen = \"0.0.0.0:9443\"\n"
        ))
        .unwrap();
        assert_eq!(c.ports.class(8443), PortClass::Open);
        assert_eq!(c.ports.class(9443), PortClass::Open);
        assert_eq!(c.ports.class(8444), PortClass::Guarded);
        let e = err(&format!(
            "{public}guard = \"ports\"\nguarded_ports = [\"8400-8500\"]\n[public]\nlisten = \"0.0.0.0:8443\"\n"
        ));
        assert_eq!(
            e,
            "[public] listen = 0.0.0.0:8443: its port is in `guarded_ports` (\"8400-8500\"), so clients outside the VPC could never reach the proxy; remove it from guarded_ports"
        );
        // A [public] table in private mode runs no proxy: its port stays guarded.
        let c = parse(&format!("{MINIMAL}[public]\nlisten = \"0.0.0.0:8443\"\n")).unwrap();
        assert_eq!(c.ports.class(8443), PortClass::Guarded);
    }

    #[test]
    fn command_line_port_out_of_range_is_refused() {
        let o = Overrides {
            serve_ports: vec![70000],
            ..Overrides::default()
        };
        let e = Config::from_toml(MINIMAL, Path::new("t"), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`serve_ports`: 70000 is not a port (1-65535)"
        );
    }

    #[test]
    fn empty_paths_are_refused() {
        let e = err(&format!("{MINIMAL}pin_dir = \"\"\n"));
        assert_eq!(e, "`pin_dir` must not be empty");
    }

    #[test]
    fn missing_config_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/sg.toml"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/sg.toml"), "{e}");
    }

    #[test]
    fn debug_hides_the_public_table() {
        let c = parse(&format!("{MINIMAL}[public]\n")).unwrap();
        assert!(format!("{c:?}").contains("public: Some(\"<set>\")"));
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sg-config-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config_with_cidrs(dir: &TempDir, cidrs: Option<&str>, interface: &str) -> Config {
        let cidr_file = dir.0.join("vpc-cidrs");
        if let Some(text) = cidrs {
            std::fs::write(&cidr_file, text).unwrap();
        }
        let path = dir.0.join("serve-guard.toml");
        std::fs::write(
            &path,
            format!(
                "mode = \"private\"\ninterfaces = [\"{interface}\"]\ncidr_file = \"{}\"\n",
                cidr_file.display()
            ),
        )
        .unwrap();
        Config::load(&path, &Overrides::default()).unwrap()
    }

    #[test]
    fn host_check_reads_interfaces_and_cidrs() {
        let dir = TempDir::new("ok");
        let c = config_with_cidrs(&dir, Some("10.0.0.0/8\n10.1.2.3/16\nfd00::/8\n"), "lo");
        let host = c.check_host().unwrap();
        assert_eq!(host.interfaces, [("lo".to_owned(), 1)]);
        assert_eq!(host.cidrs.v4().len(), 2);
        assert_eq!(host.cidrs.v6().len(), 1);
        assert_eq!(host.warnings.len(), 1);
        assert_eq!(
            host.warnings[0].to_string(),
            "line 2: `10.1.2.3/16` has host bits set; using 10.1.0.0/16"
        );
    }

    #[test]
    fn host_check_names_a_missing_interface() {
        let dir = TempDir::new("noif");
        let c = config_with_cidrs(&dir, Some("10.0.0.0/8\n"), "sgnosuch0");
        let e = c.check_host().unwrap_err().to_string();
        assert!(
            e.starts_with("interface sgnosuch0 does not exist in this network namespace"),
            "{e}"
        );
    }

    #[test]
    fn host_check_names_a_bad_cidr_with_its_line() {
        let dir = TempDir::new("badcidr");
        let c = config_with_cidrs(&dir, Some("10.0.0.0/8\n# x\n10.0.0.0/40\n"), "lo");
        let e = c.check_host().unwrap_err().to_string();
        assert!(e.contains("vpc-cidrs: line 3: `10.0.0.0/40`"), "{e}");
    }

    #[test]
    fn host_check_names_a_missing_cidr_file() {
        let dir = TempDir::new("nocidr");
        let c = config_with_cidrs(&dir, None, "lo");
        let e = c.check_host().unwrap_err();
        assert!(matches!(e, ConfigError::MissingCidrFile { .. }), "{e}");
        assert!(e.to_string().contains("vpc-cidrs does not exist"), "{e}");
    }

    #[test]
    fn cloud_table_parses_with_defaults_and_bounds() {
        let c = parse(&format!(
            "{MINIMAL}\n[cloud]\nprovider = \"gcp\"\nrefresh_interval = \"30s\"\n"
        ))
        .unwrap();
        let cloud = c.cloud.unwrap();
        assert_eq!(cloud.provider, cloud::ProviderSetting::Gcp);
        assert_eq!(cloud.refresh_interval, std::time::Duration::from_secs(30));
        assert_eq!(
            cloud.gcp_compute_endpoint,
            cloud::DEFAULT_GCP_COMPUTE_ENDPOINT
        );
        assert!(parse(MINIMAL).unwrap().cloud.is_none());
        for bad in [
            "[cloud]\nrefresh_interval = \"10ms\"",
            "[cloud]\nprovider = \"oracle\"",
            "[cloud]\nazure_resource_manager_endpoint = \"http://management.azure.com\"",
            "[cloud]\nregion = \"x\"",
        ] {
            assert!(parse(&format!("{MINIMAL}\n{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn with_the_cloud_the_cidr_file_may_be_missing_or_empty() {
        let dir = TempDir::new("cloudcidr");
        let mut c = config_with_cidrs(&dir, Some("# the cloud gives the VPC\n"), "lo");
        c.cloud = Some(cloud::CloudConfig::default());
        assert!(c.check_host().unwrap().cidrs.is_empty());
        std::fs::remove_file(&c.cidr_file).unwrap();
        assert!(c.check_host().unwrap().cidrs.is_empty());
    }

    #[test]
    fn host_check_refuses_an_empty_cidr_file() {
        let dir = TempDir::new("emptycidr");
        let c = config_with_cidrs(&dir, Some("# nothing yet\n"), "lo");
        let e = c.check_host().unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Cidr {
                    error: CidrError::Empty,
                    ..
                }
            ),
            "{e}"
        );
    }
}
