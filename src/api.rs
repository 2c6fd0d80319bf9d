//! Wire types of Docker's remote NetworkDriver and IpamDriver protocols.
//!
//! Decoding is tolerant: dockerd adds keys between engine versions (see
//! `docs/protocol-notes.md`), so unknown keys are ignored and absent
//! ones take their default. Encoding omits what dockerd must not see set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Options = BTreeMap<String, Value>;

// ---------------------------------------------------------------- plugin

#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

// ---------------------------------------------------------------- network driver

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
}
