//! AWS: instance metadata, IMDSv2 only (a session token from `PUT /latest/api/token`, then the
//! token on every request). `network/interfaces/macs/<mac>/vpc-ipv4-cidr-blocks` and
//! `vpc-ipv6-cidr-blocks` are the whole VPC's ranges (primary and secondary), per interface.
//! No credentials, no API call. IMDSv1 is never used: it is what SSRF attacks read.

use super::http::Client;
use super::{CloudError, Discovery, METADATA_HOST, Ranges, get_ok};
use crate::config::cloud::Provider;
use http::Method;

const P: Provider = Provider::Aws;
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// A token lives as long as one discovery needs; a new one is asked at every refresh.
const TOKEN_TTL_SECS: &str = "60";

fn url(path: &str) -> String {
    format!("http://{METADATA_HOST}/latest/{path}")
}

/// An IMDSv2 session token.
async fn token(client: &Client) -> Result<String, CloudError> {
    let url = url("api/token");
    let answer = client
        .send(Method::PUT, &url, &[(TTL_HEADER, TOKEN_TTL_SECS)])
        .await
        .map_err(|source| CloudError::ImdsToken {
            url: url.clone(),
            source,
        })?;
    let answer = super::check_status(P, &url, answer)?;
    let token = answer.text().trim().to_owned();
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CloudError::Garbage {
            provider: P,
            url,
            expected: "an IMDSv2 token",
            reason: "empty, too long or not printable".into(),
        });
    }
    Ok(token)
}

/// Detection: an IMDSv2 token is AWS's alone.
pub async fn probe(client: &Client) -> Result<(), CloudError> {
    token(client).await.map(drop)
}

pub async fn discover(client: &Client) -> Result<Discovery, CloudError> {
    let token = token(client).await?;
    let headers = [(TOKEN_HEADER, token.as_str())];
    let macs_url = url("meta-data/network/interfaces/macs/");
    let macs = get_ok(P, client, &macs_url, &headers).await?.text();
    let macs: Vec<&str> = macs
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .filter(|l| !l.is_empty())
        .collect();
    if macs.is_empty() {
        return Err(CloudError::NoInterfaces { provider: P });
    }
    let mut ranges = Ranges::new(P);
    for mac in macs {
        if !is_mac(mac) {
            return Err(CloudError::Garbage {
                provider: P,
                url: macs_url,
                expected: "a list of MAC addresses",
                reason: format!("`{}`", super::excerpt(mac)),
            });
        }
        for (key, required) in [
            ("vpc-ipv4-cidr-blocks", true),
            ("vpc-ipv6-cidr-blocks", false),
        ] {
            let url = url(&format!("meta-data/network/interfaces/macs/{mac}/{key}"));
            let answer = client
                .get(&url, &headers)
                .await
                .map_err(|source| CloudError::Http {
                    provider: P,
                    source,
                })?;
            // A VPC without IPv6 has no such category: 404, documented.
            if !required && answer.status == http::StatusCode::NOT_FOUND {
                continue;
            }
            let text = super::check_status(P, &url, answer)?.text();
            for entry in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                ranges.add(entry, format_args!("{key} of {mac}"))?;
            }
        }
    }
    Ok(ranges.finish(Vec::new()))
}

fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
