//! The `[public]` table: public mode's token proxy. The agent's config parses the file and
//! embeds this section; the proxy process gets it over the socketpair.
//!
//! Parsing (serde) checks types and syntax; [`PublicConfig::validate`] checks what relates
//! fields to each other. Durations are either whole seconds (`604800`) or a humane string
//! (`"7d"`, `"12h 30m"`, `"500ms"`).

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defaults, as documented in docs/public-mode.md.
pub mod defaults {
    use std::time::Duration;

    pub const LISTEN: &str = "0.0.0.0:8443";
    pub const UPSTREAM: &str = "http://127.0.0.1:8000";
    pub const GRPC_UPSTREAM: &str = "http://127.0.0.1:9000";
    pub const TOKEN_FILE: &str = "/etc/serve-guard/token";
    /// The account the internet-facing proxy process runs as: no files, no capabilities.
    pub const PROXY_USER: &str = "nobody";
    pub const UNAUTHENTICATED_PATHS: [&str; 1] = ["/-/healthz"];
    /// The docs-link cookie lives a week, like a typical "remember me".
    pub const COOKIE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Slowloris: a client gets this long to send a request's headers (also the idle keep-alive
    /// limit and the TLS handshake limit).
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Request line plus headers. Ray Serve requests carry few headers; browsers' cookies fit.
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    pub const MAX_CONNECTIONS: usize = 1024;
    /// One client address (an IPv6 /64) gets at most this share of `max_connections`, so a
    /// single source cannot take every slot.
    pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
    /// One IPv4 /24 or IPv6 aggregate prefix (one rented block, one organisation's NAT pool):
    /// four sources' worth, and a quarter of `max_connections`, so an attacker who holds one
    /// block leaves three quarters of the pool to everyone else.
    pub const MAX_CONNECTIONS_PER_PREFIX: usize = 256;
    /// The IPv6 block one party gets: a /48 is the usual site assignment (RFC 6177), so a
    /// flood spread over its 65,536 /64s still counts as one prefix.
    pub const IPV6_AGGREGATE_PREFIX: u8 = 48;
    /// A connection with no request in flight is closed after this long (HTTP/2 especially:
    /// an idle HTTP/1.1 keep-alive is already bounded by the header read timeout).
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Until the upstream's response headers; streaming bodies are not cut. Model inference
    /// can take a while before the first byte.
    pub const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
}

/// hyper's read buffer cannot be smaller than this, so neither can the header limit.
pub const MIN_HEADER_BYTES: usize = 8192;
/// What `ipv6_aggregate_prefix` may be: from a whole ISP allocation (/32) down to one /64.
pub const IPV6_AGGREGATE_RANGE: std::ops::RangeInclusive<u8> = 32..=64;
/// Upper bound on the header limit: beyond this it no longer protects memory.
pub const MAX_HEADER_BYTES_LIMIT: usize = 1 << 20;
/// Longest a docs-link cookie may live (a year); longer is a config mistake.
pub const MAX_COOKIE_MAX_AGE: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most paths in `unauthenticated_paths`.
pub const MAX_UNAUTHENTICATED_PATHS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PublicConfigError {
    #[error("[public] tls_cert and tls_key must be set together (only `{0}` is set)")]
    HalfTls(&'static str),
    #[error("[public] unauthenticated_paths: `{path}` {reason}")]
    UnauthenticatedPath { path: String, reason: String },
    #[error("[public] unauthenticated_paths has more than {MAX_UNAUTHENTICATED_PATHS} entries")]
    TooManyPaths,
    #[error("[public] grpc_listen {0} is the same address as listen")]
    GrpcListenClash(SocketAddr),
    #[error("[public] grpc_upstream is set but grpc_listen is not: set grpc_listen to enable gRPC")]
    GrpcUpstreamWithoutListen,
    #[error("[public.limits] {key}: {reason}")]
    Limit { key: &'static str, reason: String },
    #[error("[public] cookie_max_age must be between 1 second and 366 days")]
    CookieMaxAge,
    #[error(
        "[public] {key} {addr} uses a Serve port, which the XDP filter closes to clients outside the VPC: pick another port (the default is 8443)"
    )]
    ListenOnServePort { key: &'static str, addr: SocketAddr },
}

/// An `http://host:port` upstream (Ray Serve listens in plain HTTP on the node).
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    uri: Uri,
    /// `host:port` as a Host header, made once: every forwarded request carries it.
    host: http::HeaderValue,
}

/// Why a URL cannot be an upstream (`upstream`, `grpc_upstream`).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("`{text}` is not a URL: {source}")]
    NotUrl {
        text: String,
        source: http::uri::InvalidUri,
    },
    #[error(
        "`{0}`: the upstream must be an http:// URL (Ray Serve on this node speaks plain HTTP)"
    )]
    NotHttp(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}`: credentials in the upstream URL are not supported")]
    Credentials(String),
    #[error("`{0}`: give only scheme, host and port (no path or query)")]
    PathOrQuery(String),
    #[error("`{0}`: the host cannot be a Host header")]
    NotHostHeader(String),
}

impl Upstream {
    pub fn parse(text: &str) -> Result<Upstream, UpstreamError> {
        let uri: Uri = text.parse().map_err(|source| UpstreamError::NotUrl {
            text: text.to_owned(),
            source,
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(UpstreamError::NotHttp(text.to_owned()));
        }
        let Some(authority) = uri.authority() else {
            return Err(UpstreamError::NoHost(text.to_owned()));
        };
        if authority.as_str().contains('@') {
            return Err(UpstreamError::Credentials(text.to_owned()));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(UpstreamError::PathOrQuery(text.to_owned()));
        }
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamError::NotHostHeader(text.to_owned()))?;
        Ok(Upstream { uri, host })
    }

    /// `host:port` of the upstream.
    pub fn authority(&self) -> &http::uri::Authority {
        self.uri.authority().expect("checked in parse")
    }

    /// The Host header for the upstream (`host:port`).
    pub fn host(&self) -> &http::HeaderValue {
        &self.host
    }

    /// The upstream URL for a request's path and query: parts already parsed, put together
    /// without parsing them again.
    pub fn join(&self, path_and_query: http::uri::PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority().clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI")
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

impl Serialize for Upstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Upstream::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The URL users are given (`external_url`): http(s)://host[:port][/prefix], no query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalUrl(String);

/// Why a URL cannot be the `external_url`.
#[derive(Debug, thiserror::Error)]
pub enum ExternalUrlError {
    #[error("`{text}` is not a URL: {source}")]
    NotUrl {
        text: String,
        source: http::uri::InvalidUri,
    },
    #[error("`{0}` must start with http:// or https://")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` must not contain credentials")]
    Credentials(String),
    #[error("`{0}` must not have a query or fragment")]
    QueryOrFragment(String),
}

impl ExternalUrl {
    pub fn parse(text: &str) -> Result<ExternalUrl, ExternalUrlError> {
        let uri: Uri = text.parse().map_err(|source| ExternalUrlError::NotUrl {
            text: text.to_owned(),
            source,
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(ExternalUrlError::Scheme(text.to_owned()));
        }
        let Some(authority) = uri.authority() else {
            return Err(ExternalUrlError::NoHost(text.to_owned()));
        };
        if authority.as_str().contains('@') {
            return Err(ExternalUrlError::Credentials(text.to_owned()));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(ExternalUrlError::QueryOrFragment(text.to_owned()));
        }
        Ok(ExternalUrl(text.trim_end_matches('/').to_owned()))
    }

    /// Without a trailing slash, so `{url}{route}` is well-formed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// The origin browsers send in `Origin` for pages under this URL: `scheme://host[:port]`,
    /// lower case, without the scheme's default port.
    pub fn origin(&self) -> String {
        let uri: Uri = self.0.parse().expect("checked in parse");
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let authority = uri.authority().expect("checked in parse");
        let host = authority.host().to_ascii_lowercase();
        let default_port = if scheme == "https" { 443 } else { 80 };
        match authority.port_u16() {
            Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        }
    }
}

impl Serialize for ExternalUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ExternalUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ExternalUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// As a humane string that [`de_duration`] reads back exactly (`"1s 500ms"`).
fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Whole seconds or a humane duration string.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a duration: whole seconds (3600) or a string (\"7d\", \"1h 30m\")",
        )
    })? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{t}` is not a duration ({e}): use whole seconds or e.g. \"7d\", \"12h\", \"30s\""
            ))
        }),
    }
}

fn ser_display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn de_opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_socket_addr(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_socket_addr(&text).map_err(serde::de::Error::custom)
}

/// A listen address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an address:port (e.g. \"0.0.0.0:8443\" or \"[::]:8443\")")]
struct SocketAddrError(String);

fn parse_socket_addr(text: &str) -> Result<SocketAddr, SocketAddrError> {
    text.parse().map_err(|_| SocketAddrError(text.to_owned()))
}

fn de_opt_upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Upstream>, D::Error> {
    Upstream::deserialize(d).map(Some)
}

/// Limits that keep one client from exhausting the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_connections_per_prefix: usize,
    /// The IPv6 prefix `max_connections_per_prefix` counts by (IPv4: the /24).
    pub ipv6_aggregate_prefix: u8,
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub upstream_connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub upstream_response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_source: defaults::MAX_CONNECTIONS_PER_SOURCE,
            max_connections_per_prefix: defaults::MAX_CONNECTIONS_PER_PREFIX,
            ipv6_aggregate_prefix: defaults::IPV6_AGGREGATE_PREFIX,
            idle_timeout: defaults::IDLE_TIMEOUT,
            upstream_connect_timeout: defaults::UPSTREAM_CONNECT_TIMEOUT,
            upstream_response_timeout: defaults::UPSTREAM_RESPONSE_TIMEOUT,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), PublicConfigError> {
        let positive = |key, d: Duration| {
            if d.is_zero() {
                Err(PublicConfigError::Limit {
                    key,
                    reason: "must be more than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("header_read_timeout", self.header_read_timeout)?;
        positive("idle_timeout", self.idle_timeout)?;
        positive("upstream_connect_timeout", self.upstream_connect_timeout)?;
        positive("upstream_response_timeout", self.upstream_response_timeout)?;
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES_LIMIT).contains(&self.max_header_bytes) {
            return Err(PublicConfigError::Limit {
                key: "max_header_bytes",
                reason: format!(
                    "{} is out of range: {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES_LIMIT}",
                    self.max_header_bytes
                ),
            });
        }
        if self.max_connections == 0 {
            return Err(PublicConfigError::Limit {
                key: "max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_connections_per_source == 0 {
            return Err(PublicConfigError::Limit {
                key: "max_connections_per_source",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_connections_per_prefix == 0 {
            return Err(PublicConfigError::Limit {
                key: "max_connections_per_prefix",
                reason: "must be at least 1".into(),
            });
        }
        let v6 = IPV6_AGGREGATE_RANGE;
        if !v6.contains(&self.ipv6_aggregate_prefix) {
            return Err(PublicConfigError::Limit {
                key: "ipv6_aggregate_prefix",
                reason: format!(
                    "/{} is out of range: {} to {}",
                    self.ipv6_aggregate_prefix,
                    v6.start(),
                    v6.end()
                ),
            });
        }
        Ok(())
    }
}

/// The `[public]` table. Every field has a default, so an absent table is a valid config.
/// Serialize (JSON) is how the agent hands the table to the proxy process, which reads no files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicConfig {
    /// Where the token proxy listens.
    #[serde(serialize_with = "ser_display", deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// Ray Serve's HTTP endpoint.
    pub upstream: Upstream,
    pub token_file: PathBuf,
    /// PEM certificate chain and private key; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The URL users are given; derived from `listen` when absent (see [`Self::external_url`]).
    pub external_url: Option<ExternalUrl>,
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub cookie_max_age: Duration,
    /// Exact paths served without a token, compared after normalisation.
    pub unauthenticated_paths: Vec<String>,
    /// gRPC listener; gRPC is off when absent.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_socket_addr"
    )]
    pub grpc_listen: Option<SocketAddr>,
    /// Ray Serve's gRPC endpoint (h2c); `http://127.0.0.1:9000` when absent.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_upstream"
    )]
    pub grpc_upstream: Option<Upstream>,
    /// One log line per forwarded request (refused requests are always logged).
    pub access_log: bool,
    /// The unprivileged account the proxy process runs as (its primary group too).
    pub proxy_user: String,
    pub limits: Limits,
}

impl Default for PublicConfig {
    fn default() -> Self {
        PublicConfig {
            listen: defaults::LISTEN.parse().expect("valid default"),
            upstream: Upstream::parse(defaults::UPSTREAM).expect("valid default"),
            token_file: PathBuf::from(defaults::TOKEN_FILE),
            tls_cert: None,
            tls_key: None,
            external_url: None,
            cookie_max_age: defaults::COOKIE_MAX_AGE,
            unauthenticated_paths: defaults::UNAUTHENTICATED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            grpc_listen: None,
            grpc_upstream: None,
            access_log: false,
            proxy_user: defaults::PROXY_USER.to_owned(),
            limits: Limits::default(),
        }
    }
}

impl PublicConfig {
    /// Checks what serde cannot: fields that depend on each other, path syntax, limits.
    pub fn validate(&self) -> Result<(), PublicConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(PublicConfigError::HalfTls("tls_cert")),
            (None, Some(_)) => return Err(PublicConfigError::HalfTls("tls_key")),
            _ => {}
        }
        if self.unauthenticated_paths.len() > MAX_UNAUTHENTICATED_PATHS {
            return Err(PublicConfigError::TooManyPaths);
        }
        for path in &self.unauthenticated_paths {
            let bad = |reason: &str| PublicConfigError::UnauthenticatedPath {
                path: path.clone(),
                reason: reason.to_owned(),
            };
            if !path.starts_with('/') {
                return Err(bad("must start with /"));
            }
            if path.contains(['?', '#']) {
                return Err(bad("must be a path only (no query or fragment)"));
            }
            match crate::path::normalize(path) {
                Some(n) if n == *path => {}
                Some(n) => {
                    return Err(bad(&format!(
                        "is not in normal form: write `{n}` (no //, ., .., %-escapes or trailing /)"
                    )));
                }
                None => return Err(bad("is not a valid path")),
            }
        }
        if let Some(grpc) = self.grpc_listen
            && grpc == self.listen
            // Port 0 lets the OS pick distinct ports (tests).
            && grpc.port() != 0
        {
            return Err(PublicConfigError::GrpcListenClash(grpc));
        }
        if self.grpc_upstream.is_some() && self.grpc_listen.is_none() {
            return Err(PublicConfigError::GrpcUpstreamWithoutListen);
        }
        if self.cookie_max_age < Duration::from_secs(1) || self.cookie_max_age > MAX_COOKIE_MAX_AGE
        {
            return Err(PublicConfigError::CookieMaxAge);
        }
        self.limits.validate()
    }

    /// [`Self::validate`], plus: neither listener may use a port the XDP filter protects
    /// (`serve_ports`), or clients outside the VPC could never reach it.
    pub fn validate_for(&self, serve_ports: &[u16]) -> Result<(), PublicConfigError> {
        self.validate()?;
        for (key, addr) in self.listeners() {
            if serve_ports.contains(&addr.port()) {
                return Err(PublicConfigError::ListenOnServePort { key, addr });
            }
        }
        Ok(())
    }

    /// The proxy's listeners by config key: `listen`, and `grpc_listen` when set.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = vec![("listen", self.listen)];
        if let Some(grpc) = self.grpc_listen {
            out.push(("grpc_listen", grpc));
        }
        out
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The gRPC upstream, defaulted.
    pub fn grpc_upstream(&self) -> Upstream {
        self.grpc_upstream
            .clone()
            .unwrap_or_else(|| Upstream::parse(defaults::GRPC_UPSTREAM).expect("valid default"))
    }

    /// `external_url`, or one derived from the listener: its scheme by TLS, its address (the
    /// host name when it listens on all addresses), its port unless the scheme's default.
    pub fn external_url(&self) -> ExternalUrl {
        if let Some(url) = &self.external_url {
            return url.clone();
        }
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        let ip = self.listen.ip();
        let host = if ip.is_unspecified() {
            hostname().unwrap_or_else(|| "localhost".to_owned())
        } else {
            match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            }
        };
        let port = self.listen.port();
        let default_port = if self.tls_enabled() { 443 } else { 80 };
        if port == default_port {
            ExternalUrl(format!("{scheme}://{host}"))
        } else {
            ExternalUrl(format!("{scheme}://{host}:{port}"))
        }
    }
}

/// The node's host name (uname's nodename, what gethostname(2) returns), for a default
/// `external_url`. uname rather than a file: the proxy process reads no files.
fn hostname() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_str().ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PublicConfig, String> {
        let cfg: PublicConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(cfg.upstream.to_string(), "http://127.0.0.1:8000");
        assert_eq!(cfg.grpc_upstream().to_string(), "http://127.0.0.1:9000");
        assert_eq!(cfg.cookie_max_age, Duration::from_secs(604_800));
        assert_eq!(cfg.unauthenticated_paths, vec!["/-/healthz".to_string()]);
        assert!(cfg.external_url().as_str().starts_with("http://"));
        assert!(cfg.external_url().as_str().ends_with(":8443"));
    }

    #[test]
    fn durations_in_seconds_or_humane() {
        assert_eq!(
            parse("cookie_max_age = 3600").unwrap().cookie_max_age,
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse("cookie_max_age = \"2d\"").unwrap().cookie_max_age,
            Duration::from_secs(172_800)
        );
        let cfg = parse("[limits]\nheader_read_timeout = \"1500ms\"").unwrap();
        assert_eq!(cfg.limits.header_read_timeout, Duration::from_millis(1500));
        let err = parse("cookie_max_age = \"soon\"").unwrap_err();
        assert!(err.contains("soon"), "{err}");
        assert!(
            parse("cookie_max_age = 0")
                .unwrap_err()
                .contains("cookie_max_age")
        );
    }

    #[test]
    fn listeners_must_not_use_serve_ports() {
        let ports = [8000, 9000];
        let cfg = parse("listen = \"0.0.0.0:8000\"").unwrap();
        let err = cfg.validate_for(&ports).unwrap_err().to_string();
        assert!(err.contains("listen 0.0.0.0:8000"), "{err}");
        let cfg = parse("grpc_listen = \"0.0.0.0:9000\"").unwrap();
        let err = cfg.validate_for(&ports).unwrap_err().to_string();
        assert!(err.contains("grpc_listen"), "{err}");
        let cfg = parse("grpc_listen = \"0.0.0.0:9443\"").unwrap();
        cfg.validate_for(&ports).unwrap();
    }

    #[test]
    fn serializes_to_what_it_parses() {
        let text = "listen = \"127.0.0.1:8443\"\ngrpc_listen = \"[::1]:9443\"\ncookie_max_age = \"1d 2h\"\nexternal_url = \"https://h\"\nproxy_user = \"sg-proxy\"\n[limits]\nheader_read_timeout = \"1500ms\"\nmax_connections_per_source = 3";
        let cfg = parse(text).unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        let back: PublicConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{cfg:?}"), format!("{back:?}"));
        let defaults = PublicConfig::default();
        let back: PublicConfig =
            serde_json::from_str(&serde_json::to_string(&defaults).unwrap()).unwrap();
        assert_eq!(format!("{defaults:?}"), format!("{back:?}"));
    }

    #[test]
    fn external_url_derived_and_explicit() {
        let cfg = parse("listen = \"127.0.0.1:443\"\ntls_cert = \"/c\"\ntls_key = \"/k\"").unwrap();
        assert_eq!(cfg.external_url().as_str(), "https://127.0.0.1");
        let cfg = parse("listen = \"[::1]:8443\"").unwrap();
        assert_eq!(cfg.external_url().as_str(), "http://[::1]:8443");
        let cfg = parse("external_url = \"https://serve.example.com/\"").unwrap();
        assert_eq!(cfg.external_url().as_str(), "https://serve.example.com");
        assert!(cfg.external_url().is_https());
        let origin = |url: &str| ExternalUrl::parse(url).unwrap().origin();
        assert_eq!(
            origin("https://Serve.Example.com:443/app"),
            "https://serve.example.com"
        );
        assert_eq!(origin("http://h:80"), "http://h");
        assert_eq!(origin("http://[::1]:8443/"), "http://[::1]:8443");
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let cases: &[(&str, &str)] = &[
            ("listen = \"nope\"", "nope"),
            ("listen = \"1.2.3.4\"", "address:port"),
            ("upstream = \"https://127.0.0.1:8000\"", "http://"),
            ("upstream = \"http://127.0.0.1:8000/x\"", "no path"),
            ("upstream = \"http://u:p@127.0.0.1:8000\"", "credentials"),
            ("external_url = \"ftp://x\"", "https://"),
            ("external_url = \"https://x/?a=b\"", "query"),
            ("tls_cert = \"/c\"", "tls_cert and tls_key"),
            ("tls_key = \"/k\"", "only `tls_key`"),
            ("unauthenticated_paths = [\"healthz\"]", "start with /"),
            (
                "unauthenticated_paths = [\"/-/healthz/../x\"]",
                "write `/-/x`",
            ),
            ("unauthenticated_paths = [\"/a//b\"]", "write `/a/b`"),
            (
                "unauthenticated_paths = [\"/-/%68ealthz\"]",
                "write `/-/healthz`",
            ),
            ("grpc_listen = \"0.0.0.0:8443\"", "same address"),
            ("grpc_upstream = \"http://127.0.0.1:9000\"", "grpc_listen"),
            ("[limits]\nmax_header_bytes = 100", "max_header_bytes"),
            ("[limits]\nmax_connections = 0", "max_connections"),
            (
                "[limits]\nmax_connections_per_source = 0",
                "max_connections_per_source",
            ),
            ("[limits]\nidle_timeout = 0", "idle_timeout"),
            (
                "[limits]\nmax_connections_per_prefix = 0",
                "max_connections_per_prefix",
            ),
            (
                "[limits]\nipv6_aggregate_prefix = 31",
                "ipv6_aggregate_prefix",
            ),
            (
                "[limits]\nipv6_aggregate_prefix = 65",
                "ipv6_aggregate_prefix",
            ),
            (
                "[limits]\nupstream_connect_timeout = 0",
                "upstream_connect_timeout",
            ),
            ("[limits]\nbogus = 1", "bogus"),
            ("bogus = 1", "bogus"),
        ];
        for (text, needle) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: `{err}` lacks `{needle}`");
        }
    }
}
