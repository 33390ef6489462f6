//! Azure: IMDS (`Metadata: true`, an `api-version` on every request) gives the instance and its
//! interfaces' IPv4 subnets. The virtual network's address space comes from Azure Resource
//! Manager (VM -> network interfaces -> subnets -> virtual networks), called with the managed
//! identity's token from IMDS. That needs read access to the VM, its interfaces and its
//! virtual networks (the built-in Reader role on the resource group, or
//! `Microsoft.Compute/virtualMachines/read`, `Microsoft.Network/networkInterfaces/read` and
//! `Microsoft.Network/virtualNetworks/read`). Without an identity or the role, the subnets stay
//! in force, with a warning; any other failure fails the refresh.

use super::http::Client;
use super::{Api, CloudError, Discovery, METADATA_HOST, Ranges, Refused, get_json, path_safe};
use crate::config::cloud::{CloudConfig, Provider};
use serde::Deserialize;

const P: Provider = Provider::Azure;
const METADATA: (&str, &str) = ("Metadata", "true");
/// IMDS versions with the fields read here (documented, generally available).
const IMDS_API: &str = "2021-02-01";
const IMDS_TOKEN_API: &str = "2018-02-01";
const COMPUTE_API: &str = "2024-07-01";
const NETWORK_API: &str = "2024-05-01";

fn instance_url() -> String {
    format!("http://{METADATA_HOST}/metadata/instance?api-version={IMDS_API}")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    compute: Compute,
    network: Network,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Compute {
    subscription_id: String,
    resource_group_name: String,
    name: String,
}

#[derive(Deserialize)]
struct Network {
    #[serde(default)]
    interface: Vec<Interface>,
}

#[derive(Deserialize)]
struct Interface {
    ipv4: Option<Ipv4>,
}

#[derive(Deserialize)]
struct Ipv4 {
    #[serde(default)]
    subnet: Vec<Subnet>,
}

#[derive(Deserialize)]
struct Subnet {
    address: String,
    prefix: String,
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

#[derive(Deserialize)]
struct Resource<T> {
    properties: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmProperties {
    network_profile: NetworkProfile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkProfile {
    #[serde(default)]
    network_interfaces: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NicProperties {
    #[serde(default)]
    ip_configurations: Vec<Resource<IpConfiguration>>,
}

#[derive(Deserialize)]
struct IpConfiguration {
    subnet: Option<Reference>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VnetProperties {
    address_space: AddressSpace,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddressSpace {
    #[serde(default)]
    address_prefixes: Vec<String>,
}

/// Detection: the instance document, asked as Azure documents it.
pub async fn probe(client: &Client) -> Result<(), CloudError> {
    let url = instance_url();
    get_json::<Instance>(P, client, &url, &[METADATA], "Azure's instance metadata")
        .await
        .map(drop)
}

pub async fn discover(
    client: &Client,
    config: &CloudConfig,
    api: &super::ApiClient,
) -> Result<Discovery, CloudError> {
    let url = instance_url();
    let instance: Instance =
        get_json(P, client, &url, &[METADATA], "Azure's instance metadata").await?;
    if instance.network.interface.is_empty() {
        return Err(CloudError::NoInterfaces { provider: P });
    }
    let mut ranges = Ranges::new(P);
    for (i, nic) in instance.network.interface.iter().enumerate() {
        for subnet in nic.ipv4.iter().flat_map(|v4| &v4.subnet) {
            ranges.add(
                &format!("{}/{}", subnet.address.trim(), subnet.prefix.trim()),
                format_args!("the subnet of interface {i}"),
            )?;
        }
    }
    let arm = config.azure_resource_manager_endpoint.trim_end_matches('/');
    let token_url = format!(
        "http://{METADATA_HOST}/metadata/identity/oauth2/token?api-version={IMDS_TOKEN_API}&resource={}",
        super::encode_component(&format!("{arm}/"))
    );
    let token = match get_json::<Token>(P, client, &token_url, &[METADATA], "an access token").await
    {
        Ok(t) => t.access_token,
        // IMDS answers 400 "Identity not found" when the VM has no managed identity.
        Err(CloudError::Status {
            status: 400 | 404,
            detail,
            ..
        }) => {
            return Ok(ranges.finish(vec![format!(
                "azure: no managed identity token ({detail}), so Resource Manager cannot give the virtual network's address space; only the interfaces' subnets are in force: assign the VM a managed identity with the Reader role on its resource group, or list the other ranges in the CIDR file"
            )]));
        }
        Err(e) => return Err(e),
    };
    let api = Api::new(P, api, &token)?;
    let compute = &instance.compute;
    for (what, name) in [
        ("a subscription id", &compute.subscription_id),
        ("a resource group", &compute.resource_group_name),
        ("a VM name", &compute.name),
    ] {
        path_safe(P, &url, what, name)?;
    }
    let read = |id: &str, api_version: &str| -> Result<String, CloudError> {
        check_id(&url, id)?;
        Ok(format!("{arm}{id}?api-version={api_version}"))
    };
    let vm_id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
        compute.subscription_id, compute.resource_group_name, compute.name
    );
    let vm_url = read(&vm_id, COMPUTE_API)?;
    let vm: Resource<VmProperties> = match api.get(&vm_url, "a virtual machine").await? {
        Ok(v) => v,
        Err(why) => return Ok(refused(ranges, &why)),
    };
    let mut vnets: Vec<String> = Vec::new();
    for nic in &vm.properties.network_profile.network_interfaces {
        let nic_url = read(&nic.id, NETWORK_API)?;
        let nic: Resource<NicProperties> = match api.get(&nic_url, "a network interface").await? {
            Ok(v) => v,
            Err(why) => return Ok(refused(ranges, &why)),
        };
        for config in &nic.properties.ip_configurations {
            let Some(subnet) = &config.properties.subnet else {
                continue;
            };
            let vnet = subnet
                .id
                .split_once("/subnets/")
                .map(|(vnet, _)| vnet.to_owned())
                .ok_or_else(|| CloudError::Garbage {
                    provider: P,
                    url: nic_url.clone(),
                    expected: "a subnet id (.../virtualNetworks/<name>/subnets/<name>)",
                    reason: format!("`{}`", super::excerpt(&subnet.id)),
                })?;
            if !vnets.iter().any(|v| v.eq_ignore_ascii_case(&vnet)) {
                vnets.push(vnet);
            }
        }
    }
    for vnet in &vnets {
        let vnet_url = read(vnet, NETWORK_API)?;
        let got: Resource<VnetProperties> = match api.get(&vnet_url, "a virtual network").await? {
            Ok(v) => v,
            Err(why) => return Ok(refused(ranges, &why)),
        };
        let name = vnet.rsplit('/').next().unwrap_or(vnet);
        for prefix in &got.properties.address_space.address_prefixes {
            ranges.add(
                prefix,
                format_args!("address space of virtual network {name}"),
            )?;
        }
    }
    Ok(ranges.finish(Vec::new()))
}

/// The subnets, and why the address space is missing.
fn refused(ranges: Ranges, why: &Refused) -> Discovery {
    ranges.finish(vec![format!(
        "azure: Resource Manager refused to read the VM's network ({why}); only the interfaces' subnets are in force: give the VM's managed identity the Reader role on its resource group (Microsoft.Compute/virtualMachines/read, Microsoft.Network/networkInterfaces/read, Microsoft.Network/virtualNetworks/read), or list the other ranges in the CIDR file"
    )])
}

/// An ARM resource id from an answer, before it goes into a URL: `/subscriptions/...`, names
/// only, so a hostile answer cannot steer the token elsewhere.
fn check_id(url: &str, id: &str) -> Result<(), CloudError> {
    let Some(rest) = id.strip_prefix("/subscriptions/") else {
        return Err(CloudError::Garbage {
            provider: P,
            url: url.to_owned(),
            expected: "a resource id (/subscriptions/...)",
            reason: format!("`{}`", super::excerpt(id)),
        });
    };
    rest.split('/')
        .try_for_each(|segment| path_safe(P, url, "a resource id", segment))
}
