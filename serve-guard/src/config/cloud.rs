//! `[cloud]`: the VPC's ranges from the cloud's metadata (and APIs), unioned with the CIDR file.

use serde::Deserialize;
use serve_guard_proxy::config::de_duration;
use std::fmt;
use std::time::Duration;

/// Shortest refresh interval: the metadata services throttle (AWS: about 1,000 requests per
/// second per instance, GCP and Azure similar), and ranges change in minutes, not seconds.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
/// Per request: the metadata service answers in milliseconds; an API call in well under one
/// second. A slow answer must not hold the refresh (the last good list stays meanwhile).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_GCP_COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com";
pub const DEFAULT_AZURE_ARM_ENDPOINT: &str = "https://management.azure.com";

/// Which cloud to ask. `auto` asks every known metadata service once and takes the one that
/// answers as its provider documents; none or more than one is an error that names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderSetting {
    #[default]
    Auto,
    Aws,
    Gcp,
    Azure,
}

impl ProviderSetting {
    /// The provider the config pins, `None` for `auto`.
    pub fn pinned(self) -> Option<Provider> {
        match self {
            ProviderSetting::Auto => None,
            ProviderSetting::Aws => Some(Provider::Aws),
            ProviderSetting::Gcp => Some(Provider::Gcp),
            ProviderSetting::Azure => Some(Provider::Azure),
        }
    }
}

impl fmt::Display for ProviderSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pinned() {
            None => f.write_str("auto"),
            Some(p) => p.fmt(f),
        }
    }
}

/// A cloud serve-guard knows how to ask.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Aws, Provider::Gcp, Provider::Azure];

    pub const fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cloud provider (aws, gcp, azure)")]
pub struct UnknownProvider(pub String);

impl std::str::FromStr for Provider {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, UnknownProvider> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

/// The `[cloud]` table. Its presence is the switch: the allow-list becomes the union of what
/// the cloud says and the CIDR file (which may then be missing or empty).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    #[serde(default)]
    pub provider: ProviderSetting,
    #[serde(default = "default_refresh", deserialize_with = "de_duration")]
    pub refresh_interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// The Compute API's base URL (a Private Service Connect endpoint, for instance).
    #[serde(default = "default_gcp_endpoint")]
    pub gcp_compute_endpoint: String,
    /// Azure Resource Manager's base URL: `https://management.usgovcloudapi.net` and the other
    /// sovereign clouds' endpoints work; the managed identity token is asked for this resource.
    #[serde(default = "default_azure_endpoint")]
    pub azure_resource_manager_endpoint: String,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            provider: ProviderSetting::Auto,
            refresh_interval: DEFAULT_REFRESH,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            gcp_compute_endpoint: default_gcp_endpoint(),
            azure_resource_manager_endpoint: default_azure_endpoint(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudConfigError {
    #[error(
        "[cloud] refresh_interval = {0:?}: must be at least {MIN_REFRESH:?} (the metadata services throttle)"
    )]
    RefreshTooShort(Duration),
    #[error(
        "[cloud] request_timeout = {0:?}: must be more than 0 and at most {MAX_REQUEST_TIMEOUT:?}"
    )]
    Timeout(Duration),
    #[error("[cloud] {key} = `{value}`: {reason}")]
    Endpoint {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl CloudConfig {
    pub fn validate(&self) -> Result<(), CloudConfigError> {
        if self.refresh_interval < MIN_REFRESH {
            return Err(CloudConfigError::RefreshTooShort(self.refresh_interval));
        }
        if self.request_timeout.is_zero() || self.request_timeout > MAX_REQUEST_TIMEOUT {
            return Err(CloudConfigError::Timeout(self.request_timeout));
        }
        for (key, value) in [
            ("gcp_compute_endpoint", &self.gcp_compute_endpoint),
            (
                "azure_resource_manager_endpoint",
                &self.azure_resource_manager_endpoint,
            ),
        ] {
            check_endpoint(value).map_err(|reason| CloudConfigError::Endpoint {
                key,
                value: value.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// An API endpoint carries a bearer token: HTTPS only, no path, query or credentials.
fn check_endpoint(value: &str) -> Result<(), &'static str> {
    let uri: http::Uri = value
        .parse()
        .map_err(|_| "not a URL (e.g. https://compute.googleapis.com)")?;
    if uri.scheme_str() != Some("https") {
        return Err("must be https://: the request carries an access token");
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host");
    };
    if authority.as_str().contains('@') {
        return Err("must not carry credentials");
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("must be a bare origin (no path or query)");
    }
    Ok(())
}

fn default_refresh() -> Duration {
    DEFAULT_REFRESH
}
fn default_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_gcp_endpoint() -> String {
    DEFAULT_GCP_COMPUTE_ENDPOINT.into()
}
fn default_azure_endpoint() -> String {
    DEFAULT_AZURE_ARM_ENDPOINT.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_bare_https_origins() {
        assert!(check_endpoint("https://compute.googleapis.com").is_ok());
        assert!(check_endpoint("https://198.18.255.10:8443").is_ok());
        assert!(check_endpoint("http://compute.googleapis.com").is_err());
        assert!(check_endpoint("https://user:pw@compute.googleapis.com").is_err());
        assert!(check_endpoint("https://compute.googleapis.com/x").is_err());
        assert!(check_endpoint("compute.googleapis.com").is_err());
    }

    #[test]
    fn intervals_are_bounded() {
        let mut c = CloudConfig {
            refresh_interval: Duration::from_millis(10),
            ..CloudConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(CloudConfigError::RefreshTooShort(_))
        ));
        c.refresh_interval = DEFAULT_REFRESH;
        c.request_timeout = Duration::ZERO;
        assert!(matches!(c.validate(), Err(CloudConfigError::Timeout(_))));
    }
}
