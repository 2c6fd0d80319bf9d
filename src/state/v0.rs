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

impl From<Network> for schema::Network {
    fn from(n: Network) -> Self {
        let Network { id, bridge, bridge_created, options, ipv4, ipv6, added_addresses } = n;
        schema::Network {
            id,
            bridge,
            bridge_created,
            options: options.into(),
            ipv4: ipv4.into_iter().map(Into::into).collect(),
            ipv6: ipv6.into_iter().map(Into::into).collect(),
            added_addresses,
        }
    }
}

impl From<Subnet> for schema::Subnet {
    fn from(s: Subnet) -> Self {
        schema::Subnet { pool: s.pool, gateway: s.gateway }
    }
}

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
        }
    }
}

impl From<Endpoint> for schema::Endpoint {
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
        schema::Endpoint {
            id,
            network_id,
            address,
            address_v6,
            mac,
            host_veth,
            container_veth,
            joined,
            port_bindings: port_bindings
                .into_iter()
                .map(|b| schema::Binding {
                    protocol: b.proto,
                    container_ip: b.ip,
                    container_port: b.port,
                    host_ip: b.host_ip,
                    host_port: b.host_port,
                    host_port_end: b.host_port_end,
                })
                .collect(),
            exposed_ports: exposed_ports
                .into_iter()
                .map(|t| schema::Exposed { protocol: t.proto, port: t.port })
                .collect(),
            published: published
                .into_iter()
                .map(|p| schema::Published {
                    protocol: p.proto,
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    container_ip: p.container_ip,
                    container_port: p.container_port,
                })
                .collect(),
            driver_options,
        }
    }
}

impl From<Pool> for schema::Pool {
    fn from(p: Pool) -> Self {
        let Pool { id, address_space, pool, sub_pool, v6, auto } = p;
        schema::Pool { id, address_space, pool, sub_pool, v6, auto }
    }
}
