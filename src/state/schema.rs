//! The on-disk format, schema version 1: the store's own record types, one
//! JSON value per key. They are written and read only here, so a rename in the
//! wire types (`api`), the firewall or the options cannot change what is on
//! disk: every field is spelled out below and converted to and from the domain
//! types field by field (`record!`, `fields.rs`, writes both conversions from
//! the one field list; the renamed records are converted by hand). Changing a record's shape means a new schema version
//! and a migration (`migrate.rs`).
//!
//! Tables (all keys text):
//! - `meta`: `schema_version` → the version number as text; `instance_id` → see
//!   [`Store::instance_id`](super::Store::instance_id)
//! - `networks`: network id → [`Network`]
//! - `endpoints`: endpoint id → [`Endpoint`]
//! - `ipam_pools`: pool id → [`Pool`]
//! - `ipam_addresses`: `"<pool id>\n<address>"` → empty (the address is allocated)
//! - `ipam_cursors`: pool id → the last address handed out automatically

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::{EndpointRecord, NetworkRecord, SubnetRecord};
use crate::api::{PortBinding, TransportPort};
use crate::firewall::{FwPort, Proto};
use crate::ipam::PoolRecord;
use crate::options::{GatewayMode, NetworkOptions};

/// The schema this build writes. Older ones are migrated on open; newer ones refused.
pub const SCHEMA_VERSION: u64 = 1;

pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
pub const INSTANCE_ID_KEY: &str = "instance_id";
pub const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
pub const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
pub const POOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam_pools");
pub const ADDRESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam_addresses");
pub const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("ipam_cursors");

/// Names of the record tables (every schema so far has these).
pub const RECORD_TABLES: [&str; 5] = ["networks", "endpoints", "ipam_pools", "ipam_addresses", "ipam_cursors"];

record! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Network <=> NetworkRecord {
        id: String,
        bridge: String,
        bridge_created: bool,
        options: Options as into,
        ipv4: Vec<Subnet> as each,
        ipv6: Vec<Subnet> as each,
        /// Addresses the plugin added to an adopted bridge.
        added_addresses: Vec<IpNet>,
    }
}

record! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Subnet <=> SubnetRecord {
        pool: IpNet,
        gateway: Option<IpNet>,
    }
}

record! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Options <=> NetworkOptions {
        bridge_name: Option<String>,
        mtu: u32,
        mtu_explicit: bool,
        iface_prefix: String,
        enable_icc: bool,
        enable_ip_masquerade: bool,
        host_binding_ipv4: Option<IpAddr>,
        host_ipv4: Option<IpAddr>,
        host_ipv6: Option<IpAddr>,
        inhibit_ipv4: bool,
        gateway_mode_ipv4: Gateway as into,
        gateway_mode_ipv6: Gateway as into,
        trusted_host_interfaces: Vec<String>,
        internal: bool,
        enable_ipv4: bool,
        enable_ipv6: bool,
        /// Absent in records of networks of one host (and of releases before swarm networks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    Nat,
    Routed,
    Isolated,
}

record! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Endpoint <=> EndpointRecord {
        id: String,
        network_id: String,
        address: Option<IpNet>,
        address_v6: Option<IpNet>,
        mac: String,
        host_veth: String,
        container_veth: String,
        joined: bool,
        /// The `-p` mappings as dockerd asked for them.
        port_bindings: Vec<Binding> as each,
        exposed_ports: Vec<Exposed> as each,
        /// The mappings as resolved (host port chosen), while programmed.
        published: Vec<Published> as each,
        /// Endpoint driver options, kept verbatim (JSON values as dockerd sent them).
        driver_options: BTreeMap<String, serde_json::Value>,
    }
}

/// A requested mapping; protocol as its IANA number, addresses as dockerd wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub protocol: u8,
    pub container_ip: String,
    pub container_port: u16,
    pub host_ip: String,
    pub host_port: u16,
    pub host_port_end: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exposed {
    pub protocol: u8,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

record! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pool <=> PoolRecord {
        id: String,
        address_space: String,
        pool: IpNet,
        sub_pool: Option<IpNet>,
        v6: bool,
        auto: bool,
    }
}

// ---------------------------------------------------------------- the renamed and the enums
// Records whose stored names differ from the domain's are converted by hand,
// destructuring completely both ways.

impl From<GatewayMode> for Gateway {
    fn from(m: GatewayMode) -> Self {
        match m {
            GatewayMode::Nat => Gateway::Nat,
            GatewayMode::Routed => Gateway::Routed,
            GatewayMode::Isolated => Gateway::Isolated,
        }
    }
}

impl From<Gateway> for GatewayMode {
    fn from(g: Gateway) -> Self {
        match g {
            Gateway::Nat => GatewayMode::Nat,
            Gateway::Routed => GatewayMode::Routed,
            Gateway::Isolated => GatewayMode::Isolated,
        }
    }
}

impl From<PortBinding> for Binding {
    fn from(b: PortBinding) -> Self {
        let PortBinding { proto, ip, port, host_ip, host_port, host_port_end } = b;
        Binding { protocol: proto, container_ip: ip, container_port: port, host_ip, host_port, host_port_end }
    }
}

impl From<Binding> for PortBinding {
    fn from(b: Binding) -> Self {
        let Binding { protocol, container_ip, container_port, host_ip, host_port, host_port_end } = b;
        PortBinding { proto: protocol, ip: container_ip, port: container_port, host_ip, host_port, host_port_end }
    }
}

impl From<TransportPort> for Exposed {
    fn from(t: TransportPort) -> Self {
        let TransportPort { proto, port } = t;
        Exposed { protocol: proto, port }
    }
}

impl From<Exposed> for TransportPort {
    fn from(e: Exposed) -> Self {
        let Exposed { protocol, port } = e;
        TransportPort { proto: protocol, port }
    }
}

impl From<FwPort> for Published {
    fn from(p: FwPort) -> Self {
        let FwPort { proto, host_ip, host_port, container_ip, container_port } = p;
        Published { protocol: proto.into(), host_ip, host_port, container_ip, container_port }
    }
}

impl From<Published> for FwPort {
    fn from(p: Published) -> Self {
        let Published { protocol, host_ip, host_port, container_ip, container_port } = p;
        FwPort { proto: protocol.into(), host_ip, host_port, container_ip, container_port }
    }
}

impl From<Proto> for Protocol {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
            Proto::Sctp => Protocol::Sctp,
        }
    }
}

impl From<Protocol> for Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Sctp => Proto::Sctp,
        }
    }
}

// ---------------------------------------------------------------- keys and values

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

pub fn address_key(pool: &str, addr: IpAddr) -> String {
    format!("{pool}\n{addr}")
}

/// Splits an `ipam_addresses` key; None when it is not "<pool>\n<address>".
pub fn parse_address_key(key: &str) -> Option<(String, IpAddr)> {
    let (pool, addr) = key.rsplit_once('\n')?;
    Some((pool.to_string(), addr.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format is spelled out: a fixed record encodes to exactly this JSON, so
    /// any change to a record's shape shows up here (and needs a schema version).
    #[test]
    fn endpoint_encoding_is_fixed() {
        let endpoint = Endpoint {
            id: "e1".into(),
            network_id: "n1".into(),
            address: Some("10.0.0.2/24".parse().unwrap()),
            address_v6: None,
            mac: "02:42:0a:00:00:02".into(),
            host_veth: "rbh-e1".into(),
            container_veth: "rbc-e1".into(),
            joined: true,
            port_bindings: vec![Binding {
                protocol: 6,
                container_ip: String::new(),
                container_port: 80,
                host_ip: "127.0.0.1".into(),
                host_port: 8080,
                host_port_end: 8080,
            }],
            exposed_ports: vec![Exposed { protocol: 6, port: 80 }],
            published: vec![Published {
                protocol: Protocol::Tcp,
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 8080,
                container_ip: "10.0.0.2".parse().unwrap(),
                container_port: 80,
            }],
            driver_options: BTreeMap::from([("k".to_string(), serde_json::json!("v"))]),
        };
        let expected = r#"{"id":"e1","network_id":"n1","address":"10.0.0.2/24","address_v6":null,"mac":"02:42:0a:00:00:02","host_veth":"rbh-e1","container_veth":"rbc-e1","joined":true,"port_bindings":[{"protocol":6,"container_ip":"","container_port":80,"host_ip":"127.0.0.1","host_port":8080,"host_port_end":8080}],"exposed_ports":[{"protocol":6,"port":80}],"published":[{"protocol":"tcp","host_ip":"127.0.0.1","host_port":8080,"container_ip":"10.0.0.2","container_port":80}],"driver_options":{"k":"v"}}"#;
        assert_eq!(String::from_utf8(encode(&endpoint)).unwrap(), expected);
        let back: Endpoint = serde_json::from_str(expected).unwrap();
        assert_eq!(back, endpoint);
    }

    #[test]
    fn network_encoding_is_fixed() {
        let network = Network {
            id: "n1".into(),
            bridge: "rb-n1".into(),
            bridge_created: true,
            options: (&NetworkOptions::default()).into(),
            ipv4: vec![Subnet { pool: "10.0.0.0/24".parse().unwrap(), gateway: Some("10.0.0.1/24".parse().unwrap()) }],
            ipv6: vec![],
            added_addresses: vec!["10.0.0.254/24".parse().unwrap()],
        };
        let expected = r#"{"id":"n1","bridge":"rb-n1","bridge_created":true,"options":{"bridge_name":null,"mtu":1500,"mtu_explicit":false,"iface_prefix":"eth","enable_icc":true,"enable_ip_masquerade":true,"host_binding_ipv4":null,"host_ipv4":null,"host_ipv6":null,"inhibit_ipv4":false,"gateway_mode_ipv4":"nat","gateway_mode_ipv6":"nat","trusted_host_interfaces":[],"internal":false,"enable_ipv4":true,"enable_ipv6":false},"ipv4":[{"pool":"10.0.0.0/24","gateway":"10.0.0.1/24"}],"ipv6":[],"added_addresses":["10.0.0.254/24"]}"#;
        assert_eq!(String::from_utf8(encode(&network)).unwrap(), expected);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"protocol":6,"port":80,"extra":1}"#;
        let err = serde_json::from_str::<Exposed>(text).unwrap_err().to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }
}
