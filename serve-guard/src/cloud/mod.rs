//! What the cloud says the VPC's address ranges are.
//!
//! One module per provider, each following its provider's documentation:
//! - [`aws`]: instance metadata (IMDSv2), every interface's VPC ranges, IPv4 and IPv6. Exact.
//! - [`gcp`]: the metadata server gives the instance's own subnet; the Compute API
//!   (`subnetworks.aggregatedList`, with the service account's token) the VPC's other subnets
//!   and their secondary and IPv6 ranges. Without the permission: the subnet, with a warning.
//! - [`azure`]: IMDS gives the interface's subnets; Azure Resource Manager (with the managed
//!   identity's token) the virtual network's address space. Without an identity or the role:
//!   the subnets, with a warning.
//!
//! Discovery changes nothing: the agent's refresh ([`crate::agent`]) hands a [`Discovery`] to
//! the store, which checks it whole and applies it without a gap; `cidr discover` prints it.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod http;

use crate::cidr::CidrList;
use crate::config::cloud::{CloudConfig, Provider};
use ipnet::IpNet;
use std::fmt;

/// The link-local address every one of the three clouds serves its metadata on.
pub const METADATA_HOST: &str = "169.254.169.254";
/// Most pages of one API listing read in one discovery: a VPC with more is refused, not cut.
pub const MAX_PAGES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{provider}: {source}")]
    Http {
        provider: Provider,
        source: http::HttpError,
    },
    #[error("{provider}: {url} answered {status}: {detail}")]
    Status {
        provider: Provider,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{provider}: {url} is throttling (429); the next refresh retries")]
    Throttled { provider: Provider, url: String },
    #[error("{provider}: {url} answered something that is not {expected}: {reason}")]
    Garbage {
        provider: Provider,
        url: String,
        expected: &'static str,
        reason: String,
    },
    #[error(
        "{provider}: `{entry}` ({origin}) is not a network range: {reason}; the whole answer is refused"
    )]
    InvalidEntry {
        provider: Provider,
        origin: String,
        entry: String,
        reason: String,
    },
    #[error("{provider}: the metadata lists no network interface")]
    NoInterfaces { provider: Provider },
    #[error(
        "aws: the IMDSv2 token request (PUT {url}) got no answer: {source}. In a container, the answer needs one more hop than the instance's default hop limit of 1: run with the host's network (hostNetwork: true) or raise it (aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)"
    )]
    ImdsToken {
        url: String,
        source: http::HttpError,
    },
    #[error(
        "no cloud metadata service answered as AWS, GCP or Azure documents it ({0}); set [cloud] provider to the cloud this node runs in, or remove [cloud]"
    )]
    NotDetected(String),
    #[error(
        "more than one cloud's metadata service answered ({0}); set [cloud] provider to the one this node runs in"
    )]
    Ambiguous(String),
}

/// One range and where the cloud gave it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub net: IpNet,
    /// E.g. `vpc-ipv4-cidr-blocks of 0e:49:61:0f:c3:11`, `subnetwork default (us-central1)`.
    pub origin: String,
}

/// What a cloud says, checked: every entry parsed as a network range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Discovery {
    pub provider: Provider,
    pub ranges: Vec<Range>,
    /// A fallback taken (GCP without the Compute permission, Azure without an identity).
    pub warnings: Vec<String>,
}

impl Discovery {
    /// The ranges as a list (duplicates fold).
    pub fn list(&self) -> CidrList {
        let mut list = CidrList::default();
        for range in &self.ranges {
            list.insert(range.net);
        }
        list
    }
}

/// Collects ranges; every entry is checked as it comes, the first bad one fails the answer.
struct Ranges {
    provider: Provider,
    ranges: Vec<Range>,
}

impl Ranges {
    fn new(provider: Provider) -> Self {
        Ranges {
            provider,
            ranges: Vec::new(),
        }
    }

    /// A range as the cloud wrote it (`10.0.0.0/16`): a network, host bits clear.
    fn add(&mut self, entry: &str, origin: impl fmt::Display) -> Result<(), CloudError> {
        let invalid = |reason: String| CloudError::InvalidEntry {
            provider: self.provider,
            origin: origin.to_string(),
            entry: entry.to_owned(),
            reason,
        };
        let net: IpNet = entry
            .trim()
            .parse()
            .map_err(|e: ipnet::AddrParseError| invalid(e.to_string()))?;
        if net.trunc() != net {
            return Err(invalid(format!(
                "host bits are set (the network is {})",
                net.trunc()
            )));
        }
        self.push(net, origin);
        Ok(())
    }

    fn push(&mut self, net: IpNet, origin: impl fmt::Display) {
        if !self.ranges.iter().any(|r| r.net == net) {
            self.ranges.push(Range {
                net,
                origin: origin.to_string(),
            });
        }
    }

    fn finish(self, warnings: Vec<String>) -> Discovery {
        Discovery {
            provider: self.provider,
            ranges: self.ranges,
            warnings,
        }
    }
}

/// The https client of the cloud APIs (GCP's Compute API, Azure Resource Manager): the CA
/// bundle is read at the first call that needs it and kept, so a refresh a minute does not read
/// and parse it again. A failed read is not kept: the next refresh tries again.
pub struct ApiClient {
    timeout: std::time::Duration,
    built: std::sync::Mutex<Option<http::Client>>,
}

impl ApiClient {
    pub fn new(timeout: std::time::Duration) -> Self {
        ApiClient {
            timeout,
            built: std::sync::Mutex::new(None),
        }
    }

    fn get(&self, provider: Provider) -> Result<http::Client, CloudError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = built.as_ref() {
            return Ok(client.clone());
        }
        let client = http::Client::new(self.timeout)
            .with_tls()
            .map_err(|source| CloudError::Http { provider, source })?;
        *built = Some(client.clone());
        Ok(client)
    }
}

/// Asks the cloud: the pinned one, or the one that [`detect`] finds. `api` is kept by the
/// caller across refreshes.
pub async fn discover(
    config: &CloudConfig,
    provider: Option<Provider>,
    api: &ApiClient,
) -> Result<Discovery, CloudError> {
    let provider = match provider.or_else(|| config.provider.pinned()) {
        Some(p) => p,
        None => detect(config).await?,
    };
    let client = http::Client::new(config.request_timeout);
    match provider {
        Provider::Aws => aws::discover(&client).await,
        Provider::Gcp => gcp::discover(&client, config, api).await,
        Provider::Azure => azure::discover(&client, config, api).await,
    }
}

/// Asks every provider's metadata service at once, the way each documents it (AWS: an IMDSv2
/// token; GCP: an answer carrying `Metadata-Flavor: Google`; Azure: the instance document for
/// `Metadata: true`). Exactly one must answer.
pub async fn detect(config: &CloudConfig) -> Result<Provider, CloudError> {
    let client = http::Client::new(config.request_timeout);
    let (a, g, z) = tokio::join!(
        aws::probe(&client),
        gcp::probe(&client),
        azure::probe(&client)
    );
    let found: Vec<Provider> = [
        (Provider::Aws, &a),
        (Provider::Gcp, &g),
        (Provider::Azure, &z),
    ]
    .into_iter()
    .filter(|(_, r)| r.is_ok())
    .map(|(p, _)| p)
    .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CloudError::NotDetected(
            [(Provider::Aws, a), (Provider::Gcp, g), (Provider::Azure, z)]
                .into_iter()
                .filter_map(|(p, r)| r.err().map(|e| format!("{p}: {e}")))
                .collect::<Vec<_>>()
                .join("; "),
        )),
        many => Err(CloudError::Ambiguous(
            many.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
        )),
    }
}

/// A cloud API (GCP's Compute API, Azure Resource Manager), called with the instance's token.
struct Api {
    provider: Provider,
    client: http::Client,
    authorization: String,
}

/// The API refused the instance's identity (401, 403): the caller falls back to what the
/// metadata gave, with a warning that says so.
struct Refused {
    status: u16,
    detail: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl Api {
    fn new(provider: Provider, api: &ApiClient, token: &str) -> Result<Self, CloudError> {
        let client = api.get(provider)?;
        Ok(Api {
            provider,
            client,
            authorization: format!("Bearer {token}"),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        expected: &'static str,
    ) -> Result<Result<T, Refused>, CloudError> {
        let auth = [("Authorization", self.authorization.as_str())];
        match get_json(self.provider, &self.client, url, &auth, expected).await {
            Ok(value) => Ok(Ok(value)),
            Err(CloudError::Status {
                status: status @ (401 | 403),
                detail,
                ..
            }) => Ok(Err(Refused { status, detail })),
            Err(e) => Err(e),
        }
    }
}

/// `GET url` as JSON, mapping the statuses every provider shares.
async fn get_json<T: serde::de::DeserializeOwned>(
    provider: Provider,
    client: &http::Client,
    url: &str,
    headers: &[(&str, &str)],
    expected: &'static str,
) -> Result<T, CloudError> {
    let answer = get_ok(provider, client, url, headers).await?;
    serde_json::from_slice(&answer.body).map_err(|e| CloudError::Garbage {
        provider,
        url: url.to_owned(),
        expected,
        reason: e.to_string(),
    })
}

/// `GET url`, any status but 200 an error.
async fn get_ok(
    provider: Provider,
    client: &http::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<http::Response, CloudError> {
    let answer = client
        .get(url, headers)
        .await
        .map_err(|source| CloudError::Http { provider, source })?;
    check_status(provider, url, answer)
}

fn check_status(
    provider: Provider,
    url: &str,
    answer: http::Response,
) -> Result<http::Response, CloudError> {
    match answer.status.as_u16() {
        200 => Ok(answer),
        429 => Err(CloudError::Throttled {
            provider,
            url: url.to_owned(),
        }),
        status => Err(CloudError::Status {
            provider,
            url: url.to_owned(),
            status,
            detail: excerpt(&answer.text()),
        }),
    }
}

/// The start of an error body, on one line, for a message.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None if line.is_empty() => "(no body)".into(),
        None => line,
    }
}

/// Percent-encodes a URL query or path component: unreserved characters stay.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A name the cloud gave that goes into a URL path: only what the cloud's naming rules allow,
/// so a hostile answer cannot steer the request (and its token) elsewhere.
fn path_safe(
    provider: Provider,
    url: &str,
    what: &'static str,
    name: &str,
) -> Result<(), CloudError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'(' | b')'));
    if ok {
        Ok(())
    } else {
        Err(CloudError::Garbage {
            provider,
            url: url.to_owned(),
            expected: what,
            reason: format!("`{}` has characters a name cannot have", excerpt(name)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_garbage_and_host_bits_naming_the_entry() {
        let mut r = Ranges::new(Provider::Aws);
        r.add("10.0.0.0/16", "x").unwrap();
        r.add("10.0.0.0/16", "y").unwrap();
        assert_eq!(r.ranges.len(), 1);
        let e = r
            .add("10.0.0.1/16", "vpc-ipv4-cidr-blocks")
            .unwrap_err()
            .to_string();
        assert!(e.contains("10.0.0.1/16") && e.contains("host bits"), "{e}");
        let e = r
            .add("<html>", "vpc-ipv4-cidr-blocks")
            .unwrap_err()
            .to_string();
        assert!(e.contains("<html>") && e.contains("whole answer"), "{e}");
    }

    #[test]
    fn components_are_encoded_and_names_checked() {
        assert_eq!(
            encode_component("network eq \".*/n\""),
            "network%20eq%20%22.%2A%2Fn%22"
        );
        assert_eq!(encode_component("test-project"), "test-project");
        assert!(path_safe(Provider::Gcp, "u", "a name", "my-vpc").is_ok());
        for bad in ["", "a/b", "..", "a?b", "a b", "a%2f"] {
            assert!(
                path_safe(Provider::Gcp, "u", "a name", bad).is_err(),
                "{bad}"
            );
        }
    }
}
