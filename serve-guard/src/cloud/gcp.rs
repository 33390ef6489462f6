//! GCP: the metadata server (`Metadata-Flavor: Google` on the request, and on the answer: a
//! server that does not send it back is not Google's) gives each interface's address, subnet
//! mask, network and alias ranges: the instance's own subnet. The VPC's other subnets, their
//! secondary ranges and their IPv6 prefixes come from the Compute API
//! (`subnetworks.aggregatedList`, filtered by the network, every page), called with the
//! default service account's token from the metadata server. That needs
//! `compute.subnetworks.list` on the network's project (`roles/compute.networkViewer`); without
//! it (or without a service account) the instance's subnets stay in force, with a warning. Any
//! other API failure fails the refresh: falling back on a passing outage would shrink the list.

use super::http::Client;
use super::{
    Api, CloudError, Discovery, MAX_PAGES, METADATA_HOST, Ranges, encode_component, path_safe,
};
use crate::config::cloud::{CloudConfig, Provider};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

const P: Provider = Provider::Gcp;
const FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");

fn url(path: &str) -> String {
    format!("http://{METADATA_HOST}/computeMetadata/v1/{path}")
}

/// Detection: the answer must carry `Metadata-Flavor: Google`.
pub async fn probe(client: &Client) -> Result<(), CloudError> {
    let url = url("instance/id");
    metadata(client, &url).await.map(drop)
}

async fn metadata(client: &Client, url: &str) -> Result<super::http::Response, CloudError> {
    let answer = super::get_ok(P, client, url, &[FLAVOR]).await?;
    if answer.headers.get(FLAVOR.0).and_then(|v| v.to_str().ok()) != Some(FLAVOR.1) {
        return Err(CloudError::Garbage {
            provider: P,
            url: url.to_owned(),
            expected: "GCP's metadata server",
            reason: "the answer lacks `Metadata-Flavor: Google`".into(),
        });
    }
    Ok(answer)
}

async fn metadata_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    url: &str,
    expected: &'static str,
) -> Result<T, CloudError> {
    let answer = metadata(client, url).await?;
    serde_json::from_slice(&answer.body).map_err(|e| CloudError::Garbage {
        provider: P,
        url: url.to_owned(),
        expected,
        reason: e.to_string(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Interface {
    ip: String,
    subnetmask: String,
    /// `projects/<number>/networks/<name>`.
    network: String,
    #[serde(default)]
    ip_aliases: Vec<String>,
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AggregatedPage {
    #[serde(default)]
    items: BTreeMap<String, Scoped>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Scoped {
    #[serde(default)]
    subnetworks: Vec<Subnetwork>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subnetwork {
    name: String,
    network: String,
    #[serde(default)]
    region: String,
    ip_cidr_range: Option<String>,
    #[serde(default)]
    secondary_ip_ranges: Vec<SecondaryRange>,
    internal_ipv6_prefix: Option<String>,
    external_ipv6_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecondaryRange {
    range_name: String,
    ip_cidr_range: String,
}

pub async fn discover(
    client: &Client,
    config: &CloudConfig,
    api: &super::ApiClient,
) -> Result<Discovery, CloudError> {
    let interfaces_url = url("instance/network-interfaces/?recursive=true");
    let interfaces: Vec<Interface> =
        metadata_json(client, &interfaces_url, "a list of network interfaces").await?;
    if interfaces.is_empty() {
        return Err(CloudError::NoInterfaces { provider: P });
    }
    let mut ranges = Ranges::new(P);
    let mut networks = Vec::new();
    for (i, nic) in interfaces.iter().enumerate() {
        let subnet =
            subnet_of(&nic.ip, &nic.subnetmask).ok_or_else(|| CloudError::InvalidEntry {
                provider: P,
                origin: format!("network-interfaces/{i} ip and subnetmask"),
                entry: format!("{} {}", nic.ip, nic.subnetmask),
                reason: "not an IPv4 address and a contiguous mask".into(),
            })?;
        ranges.add(
            &subnet,
            format_args!("the subnet of network-interfaces/{i}"),
        )?;
        for alias in &nic.ip_aliases {
            ranges.add(alias, format_args!("ip-aliases of network-interfaces/{i}"))?;
        }
        let network = parse_network(&nic.network).ok_or_else(|| CloudError::Garbage {
            provider: P,
            url: interfaces_url.clone(),
            expected: "a network as projects/<project>/networks/<name>",
            reason: format!("`{}`", super::excerpt(&nic.network)),
        })?;
        path_safe(P, &interfaces_url, "a project", &network.0)?;
        path_safe(P, &interfaces_url, "a network name", &network.1)?;
        if !networks.contains(&network) {
            networks.push(network);
        }
    }

    let token_url = url("instance/service-accounts/default/token");
    let token = match metadata_json::<Token>(client, &token_url, "an access token").await {
        Ok(t) => t.access_token,
        Err(CloudError::Status { status: 404, .. }) => {
            return Ok(ranges.finish(vec![
                "gcp: the instance has no service account, so the Compute API cannot list the VPC's other subnets; only the instance's own subnets are in force: attach a service account with roles/compute.networkViewer, or list the other ranges in the CIDR file".into(),
            ]));
        }
        Err(e) => return Err(e),
    };
    let api = Api::new(P, api, &token)?;
    for (project, name) in &networks {
        let filter = encode_component(&format!("network eq \".*/networks/{name}\""));
        let base = format!(
            "{}/compute/v1/projects/{project}/aggregated/subnetworks?filter={filter}",
            config.gcp_compute_endpoint.trim_end_matches('/')
        );
        let mut page_token: Option<String> = None;
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(CloudError::Garbage {
                    provider: P,
                    url: base,
                    expected: "a listing that ends",
                    reason: format!("more than {MAX_PAGES} pages"),
                });
            }
            let url = match &page_token {
                None => base.clone(),
                Some(t) => format!("{base}&pageToken={}", encode_component(t)),
            };
            let listed: AggregatedPage = match api
                .get(&url, "a subnetworks.aggregatedList page")
                .await?
            {
                Ok(page) => page,
                Err(refused) => {
                    return Ok(ranges.finish(vec![format!(
                            "gcp: the Compute API refused to list the subnetworks of project {project} ({refused}); only the instance's own subnets are in force: grant the instance's service account roles/compute.networkViewer (compute.subnetworks.list) on that project, or list the other ranges in the CIDR file"
                        )]));
                }
            };
            for (scope, scoped) in &listed.items {
                for subnet in &scoped.subnetworks {
                    // The filter is the API's; the check is ours.
                    if !subnet.network.ends_with(&format!("/networks/{name}")) {
                        continue;
                    }
                    let at = format!(
                        "subnetwork {} ({})",
                        subnet.name,
                        subnet.region.rsplit('/').next().unwrap_or(scope)
                    );
                    if let Some(r) = &subnet.ip_cidr_range {
                        ranges.add(r, &at)?;
                    }
                    for s in &subnet.secondary_ip_ranges {
                        ranges.add(
                            &s.ip_cidr_range,
                            format_args!("{at}, secondary range {}", s.range_name),
                        )?;
                    }
                    for (kind, prefix) in [
                        ("internal IPv6", &subnet.internal_ipv6_prefix),
                        ("external IPv6", &subnet.external_ipv6_prefix),
                    ] {
                        if let Some(p) = prefix {
                            ranges.add(p, format_args!("{at}, {kind}"))?;
                        }
                    }
                }
            }
            match listed.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => page_token = Some(t),
                None => break,
            }
        }
    }
    Ok(ranges.finish(Vec::new()))
}

/// `projects/<project>/networks/<name>` (the metadata's form) into its two names.
fn parse_network(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("projects/")?;
    let (project, name) = rest.split_once("/networks/")?;
    Some((project.to_owned(), name.to_owned()))
}

/// The subnet from an address and a dotted mask (`10.128.0.2`, `255.255.240.0`).
fn subnet_of(ip: &str, mask: &str) -> Option<String> {
    let ip: Ipv4Addr = ip.trim().parse().ok()?;
    let mask = u32::from(mask.trim().parse::<Ipv4Addr>().ok()?);
    let len = mask.leading_ones();
    if mask.checked_shl(len).unwrap_or(0) != 0 {
        return None;
    }
    let net = ipnet::Ipv4Net::new(ip, len as u8).ok()?.trunc();
    Some(net.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_from_address_and_mask() {
        assert_eq!(
            subnet_of("10.128.0.2", "255.255.240.0").as_deref(),
            Some("10.128.0.0/20")
        );
        assert_eq!(subnet_of("10.128.0.2", "255.0.255.0"), None);
        assert_eq!(subnet_of("x", "255.0.0.0"), None);
        assert_eq!(
            parse_network("projects/123/networks/vpc-a"),
            Some(("123".into(), "vpc-a".into()))
        );
        assert_eq!(parse_network("global/networks/x"), None);
    }
}
