//! Wire types of Docker's remote NetworkDriver and IpamDriver protocols.
//!
//! Decoding is tolerant: dockerd adds keys between engine versions (see
//! `docs/protocol-notes.md`), so unknown keys are ignored and absent
//! ones take their default. Encoding omits what dockerd must not see set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Options = BTreeMap<String, Value>;

/// Longest pool ID accepted (rustbridge's own are "<space>/<pool>/<sub pool>", under 100 bytes).
pub const MAX_POOL_ID_BYTES: usize = 256;
/// dockerd's network and endpoint IDs are 64 hex characters.
pub const MAX_DOCKER_ID_CHARS: usize = 64;

/// A request whose fields the call cannot do without. dockerd re-sends a call
/// with an empty body when the first attempt failed at the transport
/// (moby/moby#39331): for these calls that is refused, never read as "no
/// arguments" (an empty DeleteEndpoint answered "ok" would leak the endpoint).
pub trait Arguments {
    /// The fields named in the error for an empty body.
    const REQUIRED: &'static [&'static str];
    /// Checks the IDs the request carries: present, and of the expected shape.
    fn check(&self) -> Result<(), String>;
}

/// A network or endpoint ID as dockerd sends it: 12 to 64 hex characters, or
/// for a network a swarm network's ID ([`is_swarm_id`]); names such as
/// `rb-<12 characters>` are derived from its first bytes.
pub fn check_docker_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is missing"));
    }
    if field == "NetworkID" && is_swarm_id(id) {
        return Ok(());
    }
    let hex = id.chars().all(|c| c.is_ascii_hexdigit());
    if !hex || id.len() < 12 || id.len() > MAX_DOCKER_ID_CHARS {
        let shown: String = id.chars().take(80).collect();
        let cut = if shown.len() < id.len() { "…" } else { "" };
        return Err(format!(
            "{field} {shown:?}{cut} is not a Docker ID (12 to {MAX_DOCKER_ID_CHARS} hex characters; a network's may be a swarm ID, 25 letters and digits)"
        ));
    }
    Ok(())
}

/// swarmkit's object IDs (a swarm network's): 25 lowercase letters and digits.
pub fn is_swarm_id(id: &str) -> bool {
    id.len() == 25 && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A pool ID as answered by RequestPool: printable ASCII, bounded.
pub fn check_pool_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is missing"));
    }
    if id.len() > MAX_POOL_ID_BYTES || !id.chars().all(|c| c.is_ascii_graphic()) {
        let shown: String = id.chars().take(80).collect();
        let cut = if shown.len() < id.len() { "…" } else { "" };
        return Err(format!(
            "{field} {shown:?}{cut} is not a pool ID (printable ASCII, at most {MAX_POOL_ID_BYTES} bytes)"
        ));
    }
    Ok(())
}

/// Endpoint calls need the endpoint; the network ID is checked when sent.
fn check_endpoint_ids(network_id: &str, endpoint_id: &str) -> Result<(), String> {
    check_docker_id("EndpointID", endpoint_id)?;
    if !network_id.is_empty() {
        check_docker_id("NetworkID", network_id)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- plugin

#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

// ---------------------------------------------------------------- network driver

/// What GetCapabilities answers on a socket: the legacy socket's driver is
/// always `local` (a legacy plugin cannot carry a swarm network anyway); the
/// managed socket's is the setting `RUSTBRIDGE_MANAGED_SCOPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Local,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "local" => Ok(Scope::Local),
            "global" => Ok(Scope::Global),
            other => Err(format!("scope {other:?}: expected local or global")),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct CapabilitiesResponse {
    #[serde(rename = "Scope")]
    pub scope: &'static str,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: &'static str,
    /// Docker 28 then asks `/NetworkDriver.GwAllocCheck` before a network
    /// create; older engines ignore the key.
    #[serde(rename = "GwAllocChecker")]
    pub gw_alloc_checker: bool,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct IpamData {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses")]
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options")]
    pub options: Option<Options>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndpointInterface {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface")]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options")]
    pub options: Option<Options>,
}

/// Only the fields dockerd sent empty may be filled ("driver modified interface").
#[derive(Debug, Default, Serialize)]
pub struct EndpointInterfaceResponse {
    #[serde(rename = "Address", skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Debug, Default, Serialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterfaceResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options")]
    pub options: Option<Options>,
}

#[derive(Debug, Default, Serialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options")]
    pub options: Option<Options>,
}

#[derive(Debug, Default, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Debug, Default, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DiscoveryRequest {
    #[serde(rename = "DiscoveryType")]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData")]
    pub discovery_data: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AllocateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Default, Serialize)]
pub struct AllocateNetworkResponse {
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
}

/// Docker 28: `/NetworkDriver.GwAllocCheck`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GwAllocCheckRequest {
    #[serde(rename = "Options")]
    pub options: Option<Options>,
}

#[derive(Debug, Default, Serialize)]
pub struct GwAllocCheckResponse {
    #[serde(rename = "SkipIPv4")]
    pub skip_ipv4: bool,
    #[serde(rename = "SkipIPv6")]
    pub skip_ipv6: bool,
}

// ---------------------------------------------------------------- IPAM driver

#[derive(Debug, Default, Serialize)]
pub struct IpamCapabilitiesResponse {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "SubPool")]
    pub sub_pool: String,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct RequestAddressResponse {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

impl Arguments for CreateNetworkRequest {
    const REQUIRED: &'static [&'static str] = &["NetworkID"];
    fn check(&self) -> Result<(), String> {
        check_docker_id("NetworkID", &self.network_id)
    }
}

impl Arguments for NetworkRequest {
    const REQUIRED: &'static [&'static str] = &["NetworkID"];
    fn check(&self) -> Result<(), String> {
        check_docker_id("NetworkID", &self.network_id)
    }
}

impl Arguments for CreateEndpointRequest {
    const REQUIRED: &'static [&'static str] = &["NetworkID", "EndpointID"];
    fn check(&self) -> Result<(), String> {
        check_docker_id("NetworkID", &self.network_id)?;
        check_docker_id("EndpointID", &self.endpoint_id)
    }
}

impl Arguments for EndpointRequest {
    const REQUIRED: &'static [&'static str] = &["EndpointID"];
    fn check(&self) -> Result<(), String> {
        check_endpoint_ids(&self.network_id, &self.endpoint_id)
    }
}

impl Arguments for JoinRequest {
    const REQUIRED: &'static [&'static str] = &["EndpointID"];
    fn check(&self) -> Result<(), String> {
        check_endpoint_ids(&self.network_id, &self.endpoint_id)
    }
}

impl Arguments for RequestPoolRequest {
    const REQUIRED: &'static [&'static str] = &["AddressSpace"];
    fn check(&self) -> Result<(), String> {
        Ok(()) // every field is checked where it is read (IPAM), an empty space meaning the local one
    }
}

impl Arguments for ReleasePoolRequest {
    const REQUIRED: &'static [&'static str] = &["PoolID"];
    fn check(&self) -> Result<(), String> {
        check_pool_id("PoolID", &self.pool_id)
    }
}

impl Arguments for RequestAddressRequest {
    const REQUIRED: &'static [&'static str] = &["PoolID"];
    fn check(&self) -> Result<(), String> {
        check_pool_id("PoolID", &self.pool_id)
    }
}

impl Arguments for ReleaseAddressRequest {
    const REQUIRED: &'static [&'static str] = &["PoolID", "Address"];
    fn check(&self) -> Result<(), String> {
        check_pool_id("PoolID", &self.pool_id)?;
        if self.address.is_empty() {
            return Err("Address is missing".to_string());
        }
        Ok(())
    }
}

pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";

// ---------------------------------------------------------------- option keys sent by dockerd

pub const OPT_GENERIC: &str = "com.docker.network.generic";
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
pub const OPT_ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
pub const OPT_INTERNAL: &str = "com.docker.network.internal";
pub const OPT_PORTMAP: &str = "com.docker.network.portmap";
pub const OPT_EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
/// Docker 28 `--driver-opt com.docker.network.endpoint.ifname=…`: dockerd ignores
/// `DstName` from remote drivers, so it cannot be honoured.
pub const OPT_ENDPOINT_IFNAME: &str = "com.docker.network.endpoint.ifname";

/// One `-p` mapping as dockerd sends it (`com.docker.network.portmap`).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(default)]
pub struct PortBinding {
    #[serde(rename = "Proto")]
    pub proto: u8,
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "HostPortEnd")]
    pub host_port_end: u16,
}

/// One exposed port (`com.docker.network.endpoint.exposedports`).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(default)]
pub struct TransportPort {
    #[serde(rename = "Proto")]
    pub proto: u8,
    #[serde(rename = "Port")]
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_decodes_to_defaults() {
        let r: CreateEndpointRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r.network_id, "");
        assert!(r.interface.is_none());
    }

    #[test]
    fn null_options_are_accepted() {
        let r: RequestAddressRequest = serde_json::from_str(r#"{"PoolID":"p","Address":"","Options":null}"#).unwrap();
        assert_eq!(r.pool_id, "p");
        assert!(r.options.is_none());
    }

    #[test]
    fn create_endpoint_answer_omits_fields_dockerd_set() {
        let resp = CreateEndpointResponse {
            interface: Some(EndpointInterfaceResponse {
                mac_address: "02:00:00:00:00:01".into(),
                ..Default::default()
            }),
        };
        assert_eq!(serde_json::to_string(&resp).unwrap(), r#"{"Interface":{"MacAddress":"02:00:00:00:00:01"}}"#);
    }

    #[test]
    fn join_answer_without_gateway_has_no_gateway_key() {
        let resp = JoinResponse {
            interface_name: InterfaceName { src_name: "x".into(), dst_prefix: "eth".into() },
            ..Default::default()
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert!(!text.contains("\"Gateway\""), "{text}");
    }

    #[test]
    fn docker_ids_are_checked_without_slicing_bytes() {
        assert_eq!(check_docker_id("EndpointID", ""), Err("EndpointID is missing".to_string()));
        assert!(check_docker_id("EndpointID", &"a".repeat(64)).is_ok());
        // Multi-byte characters around byte 11/12 once made `short()` panic.
        for bad in ["ééééééééééééé", "0123456789aé0123", "0123456789a\u{1F600}"] {
            let err = check_docker_id("EndpointID", bad).unwrap_err();
            assert!(err.starts_with("EndpointID ") && err.contains("not a Docker ID"), "{err}");
        }
        assert!(check_docker_id("NetworkID", &"a".repeat(65)).unwrap_err().contains("12 to 64"));
        assert!(check_docker_id("NetworkID", &"a".repeat(11)).is_err());
        let huge = check_docker_id("NetworkID", &"z".repeat(100_000)).unwrap_err();
        assert!(huge.len() < 200, "error text is bounded: {} bytes", huge.len());
    }

    #[test]
    fn pool_ids_are_bounded_printable_ascii() {
        assert!(check_pool_id("PoolID", "rustbridge-local/10.0.0.0/24").is_ok());
        assert_eq!(check_pool_id("PoolID", ""), Err("PoolID is missing".to_string()));
        assert!(check_pool_id("PoolID", "pool\u{e9}").unwrap_err().contains("not a pool ID"));
        assert!(check_pool_id("PoolID", "a b").is_err());
        assert!(check_pool_id("PoolID", &"p".repeat(MAX_POOL_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn endpoint_calls_need_the_endpoint_and_check_a_sent_network() {
        let id = "b".repeat(64);
        let req = EndpointRequest { endpoint_id: id.clone(), ..Default::default() };
        assert!(req.check().is_ok());
        let req = EndpointRequest { endpoint_id: String::new(), network_id: id.clone(), options: None };
        assert_eq!(req.check(), Err("EndpointID is missing".to_string()));
        let req = EndpointRequest { endpoint_id: id, network_id: "ü".repeat(20), options: None };
        assert!(req.check().unwrap_err().starts_with("NetworkID "));
        let release = ReleaseAddressRequest { pool_id: "p".into(), address: String::new() };
        assert_eq!(release.check(), Err("Address is missing".to_string()));
    }
}
