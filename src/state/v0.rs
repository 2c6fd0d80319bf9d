//! Schema 0: the records written before the store had a schema version (up to
//! and including commit d978c98), when the stored values were the wire, option
//! and firewall types themselves (`added_addresses` appeared in d978c98, with a
//! default: records without it mean "nothing added"). Frozen here, field for field with their serde
//! spellings at that time, so that migration keeps reading them whatever
//! happens to those types later. `tests/fixtures/state-v0.redb` is such a
//! database.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::schema;

#[derive(Deserialize)]
pub struct Network {
    id: String,
    bridge: String,
    bridge_created: bool,
    options: Options,
    ipv4: Vec<Subnet>,
    ipv6: Vec<Subnet>,
    #[serde(default)]
    added_addresses: Vec<IpNet>,
}

#[derive(Deserialize)]
struct Subnet {
    pool: IpNet,
    gateway: Option<IpNet>,
}

#[derive(Deserialize)]
struct Options {
    bridge_name: Option<String>,
    mtu: u32,
    #[serde(default)]
    mtu_explicit: bool,
    iface_prefix: String,
    enable_icc: bool,
    enable_ip_masquerade: bool,
    host_binding_ipv4: Option<IpAddr>,
    host_ipv4: Option<IpAddr>,
    host_ipv6: Option<IpAddr>,
    inhibit_ipv4: bool,
    gateway_mode_ipv4: schema::Gateway,
    gateway_mode_ipv6: schema::Gateway,
    #[serde(default)]
    trusted_host_interfaces: Vec<String>,
    internal: bool,
    enable_ipv4: bool,
    enable_ipv6: bool,
}

#[derive(Deserialize)]
pub struct Endpoint {
    id: String,
    network_id: String,
    address: Option<IpNet>,
    address_v6: Option<IpNet>,
    mac: String,
    host_veth: String,
    container_veth: String,
    #[serde(default)]
    joined: bool,
    #[serde(default)]
    port_bindings: Vec<PortBinding>,
    #[serde(default)]
    exposed_ports: Vec<TransportPort>,
    #[serde(default)]
    published: Vec<FwPort>,
    #[serde(default)]
    driver_options: BTreeMap<String, serde_json::Value>,
}

/// dockerd's `com.docker.network.portmap` entry, with dockerd's spellings.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PortBinding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "IP")]
    ip: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP")]
    host_ip: String,
    #[serde(rename = "HostPort")]
    host_port: u16,
    #[serde(rename = "HostPortEnd")]
    host_port_end: u16,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TransportPort {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
}

#[derive(Deserialize)]
struct FwPort {
    proto: schema::Protocol,
    host_ip: Option<IpAddr>,
    host_port: u16,
    container_ip: IpAddr,
    container_port: u16,
}

#[derive(Deserialize)]
pub struct Pool {
    id: String,
    address_space: String,
    pool: IpNet,
    #[serde(default)]
    sub_pool: Option<IpNet>,
    v6: bool,
    auto: bool,
}

convert_fields!(Network => schema::Network {
    id, bridge, bridge_created, options as into, ipv4 as each, ipv6 as each, added_addresses,
});

convert_fields!(Subnet => schema::Subnet { pool, gateway });

// Written out: schema 0 had no swarm networks (no VNI).
impl From<Options> for schema::Options {
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
        schema::Options {
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
            vni: None,
        }
    }
}

convert_fields!(Endpoint => schema::Endpoint {
    id, network_id, address, address_v6, mac, host_veth, container_veth, joined,
    port_bindings as each, exposed_ports as each, published as each, driver_options,
});

convert_fields!(Pool => schema::Pool { id, address_space, pool, sub_pool, v6, auto });

// dockerd's and the firewall's spellings then, the record's names now.

impl From<PortBinding> for schema::Binding {
    fn from(b: PortBinding) -> Self {
        let PortBinding { proto, ip, port, host_ip, host_port, host_port_end } = b;
        schema::Binding { protocol: proto, container_ip: ip, container_port: port, host_ip, host_port, host_port_end }
    }
}

impl From<TransportPort> for schema::Exposed {
    fn from(t: TransportPort) -> Self {
        let TransportPort { proto, port } = t;
        schema::Exposed { protocol: proto, port }
    }
}

impl From<FwPort> for schema::Published {
    fn from(p: FwPort) -> Self {
        let FwPort { proto, host_ip, host_port, container_ip, container_port } = p;
        schema::Published { protocol: proto, host_ip, host_port, container_ip, container_port }
    }
}
