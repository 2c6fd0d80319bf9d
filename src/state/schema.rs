//! The on-disk format, schema version 1: the store's own record types, one
//! JSON value per key. They are written and read only here, so a rename in the
//! wire types (`api`), the firewall or the options cannot change what is on
//! disk: every field is spelled out below and converted to and from the domain
//! types field by field. Changing a record's shape means a new schema version
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub id: String,
    pub bridge: String,
    pub bridge_created: bool,
    pub options: Options,
    pub ipv4: Vec<Subnet>,
    pub ipv6: Vec<Subnet>,
    /// Addresses the plugin added to an adopted bridge.
    pub added_addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub pool: IpNet,
    pub gateway: Option<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    pub bridge_name: Option<String>,
    pub mtu: u32,
    pub mtu_explicit: bool,
    pub iface_prefix: String,
    pub enable_icc: bool,
    pub enable_ip_masquerade: bool,
    pub host_binding_ipv4: Option<IpAddr>,
    pub host_ipv4: Option<IpAddr>,
    pub host_ipv6: Option<IpAddr>,
    pub inhibit_ipv4: bool,
    pub gateway_mode_ipv4: Gateway,
    pub gateway_mode_ipv6: Gateway,
    pub trusted_host_interfaces: Vec<String>,
    pub internal: bool,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    Nat,
    Routed,
    Isolated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub id: String,
    pub network_id: String,
    pub address: Option<IpNet>,
    pub address_v6: Option<IpNet>,
    pub mac: String,
    pub host_veth: String,
    pub container_veth: String,
    pub joined: bool,
    /// The `-p` mappings as dockerd asked for them.
    pub port_bindings: Vec<Binding>,
    pub exposed_ports: Vec<Exposed>,
    /// The mappings as resolved (host port chosen), while programmed.
    pub published: Vec<Published>,
    /// Endpoint driver options, kept verbatim (JSON values as dockerd sent them).
    pub driver_options: BTreeMap<String, serde_json::Value>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: String,
    pub address_space: String,
    pub pool: IpNet,
    pub sub_pool: Option<IpNet>,
    pub v6: bool,
    pub auto: bool,
}

// ---------------------------------------------------------------- domain → record
// Every conversion destructures the domain type completely: a field added there
// does not compile until it has a place here (and, if it changes the shape, a
// new schema version).

impl From<&NetworkRecord> for Network {
    fn from(n: &NetworkRecord) -> Self {
        let NetworkRecord { id, bridge, bridge_created, options, ipv4, ipv6, added_addresses } = n;
        Network {
            id: id.clone(),
            bridge: bridge.clone(),
            bridge_created: *bridge_created,
            options: options.into(),
            ipv4: ipv4.iter().map(Subnet::from).collect(),
            ipv6: ipv6.iter().map(Subnet::from).collect(),
            added_addresses: added_addresses.clone(),
        }
    }
}

impl From<&SubnetRecord> for Subnet {
    fn from(s: &SubnetRecord) -> Self {
        let SubnetRecord { pool, gateway } = s;
        Subnet { pool: *pool, gateway: *gateway }
    }
}

impl From<&NetworkOptions> for Options {
    fn from(o: &NetworkOptions) -> Self {
        let NetworkOptions {
            bridge_name,
            mtu,
            mtu_explicit,
            iface_prefix,
            enable_icc,
            enable_ip_masquerade,
            host_binding_ipv4,
            host_ipv4,
            host_ipv6,
            inhibit_ipv4,
            gateway_mode_ipv4,
            gateway_mode_ipv6,
            trusted_host_interfaces,
            internal,
            enable_ipv4,
            enable_ipv6,
        } = o;
        Options {
            bridge_name: bridge_name.clone(),
            mtu: *mtu,
            mtu_explicit: *mtu_explicit,
            iface_prefix: iface_prefix.clone(),
            enable_icc: *enable_icc,
            enable_ip_masquerade: *enable_ip_masquerade,
            host_binding_ipv4: *host_binding_ipv4,
            host_ipv4: *host_ipv4,
            host_ipv6: *host_ipv6,
            inhibit_ipv4: *inhibit_ipv4,
            gateway_mode_ipv4: (*gateway_mode_ipv4).into(),
            gateway_mode_ipv6: (*gateway_mode_ipv6).into(),
            trusted_host_interfaces: trusted_host_interfaces.clone(),
            internal: *internal,
            enable_ipv4: *enable_ipv4,
            enable_ipv6: *enable_ipv6,
        }
    }
}

impl From<GatewayMode> for Gateway {
    fn from(m: GatewayMode) -> Self {
        match m {
            GatewayMode::Nat => Gateway::Nat,
            GatewayMode::Routed => Gateway::Routed,
            GatewayMode::Isolated => Gateway::Isolated,
        }
    }
}

impl From<&EndpointRecord> for Endpoint {
    fn from(e: &EndpointRecord) -> Self {
        let EndpointRecord {
            id,
            network_id,
            address,
            address_v6,
            mac,
            host_veth,
            container_veth,
            joined,
            port_bindings,
            exposed_ports,
            published,
            driver_options,
        } = e;
        Endpoint {
            id: id.clone(),
            network_id: network_id.clone(),
            address: *address,
            address_v6: *address_v6,
            mac: mac.clone(),
            host_veth: host_veth.clone(),
            container_veth: container_veth.clone(),
            joined: *joined,
            port_bindings: port_bindings.iter().map(Binding::from).collect(),
            exposed_ports: exposed_ports.iter().map(Exposed::from).collect(),
            published: published.iter().map(Published::from).collect(),
            driver_options: driver_options.clone(),
        }
    }
}

impl From<&PortBinding> for Binding {
    fn from(b: &PortBinding) -> Self {
        let PortBinding { proto, ip, port, host_ip, host_port, host_port_end } = b;
        Binding {
            protocol: *proto,
            container_ip: ip.clone(),
            container_port: *port,
            host_ip: host_ip.clone(),
            host_port: *host_port,
            host_port_end: *host_port_end,
        }
    }
}

impl From<&TransportPort> for Exposed {
    fn from(t: &TransportPort) -> Self {
        let TransportPort { proto, port } = t;
        Exposed { protocol: *proto, port: *port }
    }
}

impl From<&FwPort> for Published {
    fn from(p: &FwPort) -> Self {
        let FwPort { proto, host_ip, host_port, container_ip, container_port } = p;
        Published {
            protocol: (*proto).into(),
            host_ip: *host_ip,
            host_port: *host_port,
            container_ip: *container_ip,
            container_port: *container_port,
        }
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

impl From<&PoolRecord> for Pool {
    fn from(p: &PoolRecord) -> Self {
        let PoolRecord { id, address_space, pool, sub_pool, v6, auto } = p;
        Pool {
            id: id.clone(),
            address_space: address_space.clone(),
            pool: *pool,
            sub_pool: *sub_pool,
            v6: *v6,
            auto: *auto,
        }
    }
}

// ---------------------------------------------------------------- record → domain

impl From<Network> for NetworkRecord {
    fn from(n: Network) -> Self {
        let Network { id, bridge, bridge_created, options, ipv4, ipv6, added_addresses } = n;
        NetworkRecord {
            id,
            bridge,
            bridge_created,
            options: options.into(),
            ipv4: ipv4.into_iter().map(SubnetRecord::from).collect(),
            ipv6: ipv6.into_iter().map(SubnetRecord::from).collect(),
            added_addresses,
        }
    }
}

impl From<Subnet> for SubnetRecord {
    fn from(s: Subnet) -> Self {
        SubnetRecord { pool: s.pool, gateway: s.gateway }
    }
}

impl From<Options> for NetworkOptions {
    fn from(o: Options) -> Self {
        let Options {
            bridge_name,
            mtu,
            mtu_explicit,
            iface_prefix,
            enable_icc,
            enable_ip_masquerade,
            host_binding_ipv4,
            host_ipv4,
            host_ipv6,
            inhibit_ipv4,
            gateway_mode_ipv4,
            gateway_mode_ipv6,
            trusted_host_interfaces,
            internal,
            enable_ipv4,
            enable_ipv6,
        } = o;
        NetworkOptions {
            bridge_name,
            mtu,
            mtu_explicit,
            iface_prefix,
            enable_icc,
            enable_ip_masquerade,
            host_binding_ipv4,
            host_ipv4,
            host_ipv6,
            inhibit_ipv4,
            gateway_mode_ipv4: gateway_mode_ipv4.into(),
            gateway_mode_ipv6: gateway_mode_ipv6.into(),
            trusted_host_interfaces,
            internal,
            enable_ipv4,
            enable_ipv6,
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

impl From<Endpoint> for EndpointRecord {
    fn from(e: Endpoint) -> Self {
        let Endpoint {
            id,
            network_id,
            address,
            address_v6,
            mac,
            host_veth,
            container_veth,
            joined,
            port_bindings,
            exposed_ports,
            published,
            driver_options,
        } = e;
        EndpointRecord {
            id,
            network_id,
            address,
            address_v6,
            mac,
            host_veth,
            container_veth,
            joined,
            port_bindings: port_bindings.into_iter().map(PortBinding::from).collect(),
            exposed_ports: exposed_ports.into_iter().map(TransportPort::from).collect(),
            published: published.into_iter().map(FwPort::from).collect(),
            driver_options,
        }
    }
}

impl From<Binding> for PortBinding {
    fn from(b: Binding) -> Self {
        PortBinding {
            proto: b.protocol,
            ip: b.container_ip,
            port: b.container_port,
            host_ip: b.host_ip,
            host_port: b.host_port,
            host_port_end: b.host_port_end,
        }
    }
}

impl From<Exposed> for TransportPort {
    fn from(e: Exposed) -> Self {
        TransportPort { proto: e.protocol, port: e.port }
    }
}

impl From<Published> for FwPort {
    fn from(p: Published) -> Self {
        FwPort {
            proto: p.protocol.into(),
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_ip: p.container_ip,
            container_port: p.container_port,
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

impl From<Pool> for PoolRecord {
    fn from(p: Pool) -> Self {
        let Pool { id, address_space, pool, sub_pool, v6, auto } = p;
        PoolRecord { id, address_space, pool, sub_pool, v6, auto }
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
