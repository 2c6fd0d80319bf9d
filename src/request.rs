//! Request fields: every value dockerd sends, parsed and validated before
//! anything changes, with errors that name the field and the reason. One home
//! for it; the network options (`-o`, one field's map of keys) are parsed in
//! `options.rs` on the same terms, and the driver only decides.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::api::{self, IpamData, Options, PortBinding, TransportPort};
use crate::driver::{PluginError, Result};
use crate::family::Family;
use crate::firewall::Proto;
use crate::options::{GatewayMode, NetworkOptions};
use crate::state::SubnetRecord;

/// dockerd's IDs are 64 hex characters; names are derived from their start.
pub fn validate_id(field: &str, id: &str) -> Result<()> {
    crate::api::check_docker_id(field, id).map_err(PluginError)
}

pub fn parse_ipam_data(
    field: &str,
    data: Option<&[IpamData]>,
    family: Family,
    options: &NetworkOptions,
) -> Result<Vec<SubnetRecord>> {
    let mut out = Vec::new();
    for (i, d) in data.unwrap_or_default().iter().enumerate() {
        let pool: IpNet = d
            .pool
            .parse()
            .map_err(|_| PluginError::new(format!("{field}[{i}].Pool {:?} is not a subnet in CIDR form", d.pool)))?;
        crate::family::require_network(pool)
            .map_err(|reason| PluginError::new(format!("{field}[{i}].Pool {pool}: {reason}")))?;
        if !family.matches(&pool) {
            return Err(PluginError::new(format!("{field}[{i}].Pool {pool} is not an {family} subnet")));
        }
        let gateway = match d.gateway.as_str() {
            "" => None,
            text => Some(parse_gateway(&format!("{field}[{i}].Gateway"), text, pool)?),
        };
        let isolated = options.gateway_mode(family) == GatewayMode::Isolated;
        out.push(SubnetRecord { pool, gateway: if isolated { None } else { gateway } });
    }
    Ok(out)
}

/// Gateways arrive as "10.0.0.1/24"; a bare address takes the pool's prefix length.
pub fn parse_gateway(field: &str, text: &str, pool: IpNet) -> Result<IpNet> {
    let addr: IpAddr = match text.parse::<IpNet>() {
        Ok(net) => net.addr(),
        Err(_) => text.parse().map_err(|_| PluginError::new(format!("{field} {text:?} is not an IP address")))?,
    };
    if !pool.contains(&addr) {
        return Err(PluginError::new(format!("{field} {addr} is outside the subnet {pool}")));
    }
    Ok(IpNet::new(addr, pool.prefix_len()).expect("prefix length taken from the pool"))
}

pub fn parse_endpoint_address(field: &str, text: &str, subnets: &[SubnetRecord]) -> Result<Option<IpNet>> {
    if text.is_empty() {
        return Ok(None);
    }
    let addr: IpNet =
        text.parse().map_err(|_| PluginError::new(format!("{field} {text:?} is not an address in CIDR form")))?;
    if !subnets.iter().any(|s| s.pool.contains(&addr.addr())) {
        let known: Vec<String> = subnets.iter().map(|s| s.pool.to_string()).collect();
        return Err(PluginError::new(format!(
            "{field} {addr} is not inside the network's subnets [{}]",
            known.join(", ")
        )));
    }
    Ok(Some(addr))
}

pub fn parse_mac(field: &str, text: &str) -> Result<String> {
    let bytes: Vec<Option<u8>> =
        text.split(':').map(|b| if b.len() == 2 { u8::from_str_radix(b, 16).ok() } else { None }).collect();
    if bytes.len() != 6 || bytes.iter().any(Option::is_none) {
        return Err(PluginError::new(format!("{field} {text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")));
    }
    Ok(text.to_ascii_lowercase())
}

/// The user's `--driver-opt` keys: everything but the keys dockerd itself
/// sends (`com.docker.network.endpoint.*`, port maps), which live elsewhere.
pub fn endpoint_driver_options(options: &Options) -> BTreeMap<String, Value> {
    options
        .iter()
        .filter(|(k, _)| !k.starts_with("com.docker.network.endpoint.") && k.as_str() != api::OPT_PORTMAP)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn port_bindings(options: &Options) -> Result<Vec<PortBinding>> {
    decode_list(options, api::OPT_PORTMAP)
}

pub fn exposed_ports(options: &Options) -> Result<Vec<TransportPort>> {
    decode_list(options, api::OPT_EXPOSED_PORTS)
}

/// Port lists arrive in varying order; they are sets.
pub fn decode_list<T: serde::de::DeserializeOwned + Ord>(options: &Options, key: &str) -> Result<Vec<T>> {
    let Some(value) = options.get(key) else { return Ok(vec![]) };
    if value.is_null() {
        return Ok(vec![]);
    }
    let mut list: Vec<T> =
        serde_json::from_value(value.clone()).map_err(|e| PluginError::new(format!("option {key}: {e}")))?;
    list.sort();
    list.dedup();
    Ok(list)
}

/// One of ProgramExternalConnectivity's port bindings: its protocol, and its
/// host address (None: every address).
pub fn parse_port_binding(binding: &PortBinding) -> Result<(Proto, Option<IpAddr>)> {
    let proto = Proto::from_number(binding.proto).ok_or_else(|| {
        PluginError::new(format!(
            "port {}: unsupported protocol number {} (tcp, udp and sctp are)",
            binding.port, binding.proto
        ))
    })?;
    if binding.port == 0 {
        return Err(PluginError::new("port binding without a container port"));
    }
    let host_ip = match binding.host_ip.as_str() {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            PluginError::new(format!("port {}/{proto}: host address {text:?} is not an IP address", binding.port))
        })?),
    };
    Ok((proto, host_ip))
}

/// `--ipam-opt`: rustbridge's allocation is always sequential (next-fit), so
/// Docker's `com.docker.network.ipam.serial` is accepted; anything else is
/// refused rather than ignored.
pub fn check_ipam_options(options: Option<&BTreeMap<String, String>>) -> Result<()> {
    const SERIAL: &str = "com.docker.network.ipam.serial";
    for key in options.into_iter().flat_map(|o| o.keys()) {
        if key != SERIAL {
            return Err(PluginError::new(format!(
                "IPAM option {key:?} is not supported by rustbridge (supported: {SERIAL})"
            )));
        }
    }
    Ok(())
}

pub fn parse_optional_net(field: &str, text: &str) -> Result<Option<IpNet>> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| PluginError::new(format!("{field} {text:?} is not a subnet in CIDR form")))
}

/// Addresses arrive bare ("10.0.0.5"); tolerate a prefix too.
pub fn parse_address(field: &str, text: &str) -> Result<IpAddr> {
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<IpNet>().map(|n| n.addr()))
        .map_err(|_| PluginError::new(format!("{field} {text:?} is not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_docker_ids() {
        assert!(validate_id("NetworkID", &"a".repeat(64)).is_ok());
        assert_eq!(validate_id("NetworkID", "").unwrap_err().0, "NetworkID is missing");
        for bad in ["abc", "zzzzzzzzzzzzzzzz", "0123456789a-"] {
            assert!(validate_id("EndpointID", bad).unwrap_err().0.starts_with("EndpointID \""), "{bad}");
        }
    }

    #[test]
    fn subnets_name_the_field_and_index() {
        let data = |pool: &str, gateway: &str| {
            vec![IpamData { pool: pool.into(), gateway: gateway.into(), ..Default::default() }]
        };
        let opts = NetworkOptions::default();
        let ok = parse_ipam_data("IPv4Data", Some(&data("10.0.0.0/24", "10.0.0.1")), Family::V4, &opts).unwrap();
        assert_eq!(ok[0].gateway, Some("10.0.0.1/24".parse().unwrap()), "a bare gateway takes the pool's prefix");
        let err = |pool, gw, family| parse_ipam_data("IPv4Data", Some(&data(pool, gw)), family, &opts).unwrap_err().0;
        assert!(err("10.0.0.5/24", "", Family::V4).starts_with("IPv4Data[0].Pool 10.0.0.5/24: host bits set"));
        assert!(err("fd00::/64", "", Family::V4).contains("is not an IPv4 subnet"));
        assert!(err("10.0.0.0/24", "10.0.1.1", Family::V4).contains("IPv4Data[0].Gateway 10.0.1.1 is outside"));
        assert!(err("nonsense", "", Family::V4).contains("not a subnet in CIDR form"));
        let isolated = NetworkOptions { gateway_mode_ipv4: GatewayMode::Isolated, ..Default::default() };
        let none = parse_ipam_data("IPv4Data", Some(&data("10.0.0.0/24", "10.0.0.1")), Family::V4, &isolated);
        assert_eq!(none.unwrap()[0].gateway, None, "an isolated network has no gateway");
    }

    #[test]
    fn addresses_macs_and_ipam_options() {
        let subnets = [SubnetRecord { pool: "10.0.0.0/24".parse().unwrap(), gateway: None }];
        assert!(parse_endpoint_address("Interface.Address", "", &subnets).unwrap().is_none());
        assert!(
            parse_endpoint_address("Interface.Address", "10.0.1.2/24", &subnets).unwrap_err().0.contains("not inside")
        );
        assert_eq!(parse_mac("Interface.MacAddress", "AA:bb:cc:dd:ee:ff").unwrap(), "aa:bb:cc:dd:ee:ff");
        assert!(parse_mac("Interface.MacAddress", "aa:bb:cc").is_err());
        assert_eq!(parse_address("Address", "10.0.0.5/24").unwrap(), "10.0.0.5".parse::<IpAddr>().unwrap());
        assert!(parse_optional_net("Pool", "").unwrap().is_none());
        let serial = BTreeMap::from([("com.docker.network.ipam.serial".to_string(), "true".to_string())]);
        assert!(check_ipam_options(Some(&serial)).is_ok());
        let other = BTreeMap::from([("x".to_string(), "1".to_string())]);
        assert!(check_ipam_options(Some(&other)).unwrap_err().0.contains("\"x\" is not supported"));
    }

    #[test]
    fn port_bindings_name_the_port() {
        let binding = |proto, host_ip: &str| PortBinding {
            proto,
            ip: String::new(),
            port: 80,
            host_ip: host_ip.into(),
            host_port: 8080,
            host_port_end: 8080,
        };
        assert_eq!(parse_port_binding(&binding(6, "")).unwrap(), (Proto::Tcp, None));
        assert!(
            parse_port_binding(&binding(99, "")).unwrap_err().0.contains("port 80: unsupported protocol number 99")
        );
        assert!(parse_port_binding(&binding(17, "x")).unwrap_err().0.contains("port 80/udp: host address \"x\""));
        let options: Options = serde_json::from_value(serde_json::json!({api::OPT_PORTMAP: "nope"})).unwrap();
        assert!(port_bindings(&options).unwrap_err().0.starts_with(&format!("option {}", api::OPT_PORTMAP)));
    }
}
