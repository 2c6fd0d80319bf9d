//! Network options: what `docker network create -o …` and dockerd's own keys
//! mean to rustbridge, parsed and validated before anything is created.

use std::net::IpAddr;

use serde_json::Value;

use crate::api::{self, Options};
use crate::family::Family;

pub const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const MTU: &str = "com.docker.network.driver.mtu";
pub const IFACE_PREFIX: &str = "com.docker.network.container_iface_prefix";
pub const ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const ENABLE_IP_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const HOST_BINDING_IPV4: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const HOST_IPV4: &str = "com.docker.network.host_ipv4";
pub const HOST_IPV6: &str = "com.docker.network.host_ipv6";
pub const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";
pub const GATEWAY_MODE_IPV4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
pub const GATEWAY_MODE_IPV6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
pub const TRUSTED_HOST_INTERFACES: &str = "com.docker.network.bridge.trusted_host_interfaces";
/// A swarm network's VXLAN network identifier: answered by AllocateNetwork
/// at the manager (or given by the user there), carried to every node.
pub const VXLAN_VNI: &str = "com.rustbridge.vxlan.vni";

/// Short spellings accepted for the most used options (`-o bridge=br0 -o mtu=1400`).
const ALIASES: &[(&str, &str)] = &[("bridge", BRIDGE_NAME), ("mtu", MTU)];

pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_IFACE_PREFIX: &str = "eth";
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;
/// IFNAMSIZ - 1: the kernel refuses longer interface names.
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GatewayMode {
    #[default]
    Nat,
    Routed,
    Isolated,
}

/// Everything a network's behaviour depends on, decided at CreateNetwork.
/// In memory only: the store keeps its own record of it (`state::schema`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkOptions {
    /// A user-chosen bridge name; None means `rb-<12 hex of the network id>`.
    pub bridge_name: Option<String>,
    pub mtu: u32,
    /// The MTU came from the user (and so also applies to an adopted bridge).
    pub mtu_explicit: bool,
    pub iface_prefix: String,
    pub enable_icc: bool,
    pub enable_ip_masquerade: bool,
    pub host_binding_ipv4: Option<IpAddr>,
    pub host_ipv4: Option<IpAddr>,
    pub host_ipv6: Option<IpAddr>,
    pub inhibit_ipv4: bool,
    pub gateway_mode_ipv4: GatewayMode,
    pub gateway_mode_ipv6: GatewayMode,
    /// Host interfaces allowed to reach containers at their own addresses.
    pub trusted_host_interfaces: Vec<String>,
    pub internal: bool,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    /// A swarm network: its VXLAN VNI (None: a network of this host only).
    pub vni: Option<u32>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            bridge_name: None,
            mtu: DEFAULT_MTU,
            mtu_explicit: false,
            iface_prefix: DEFAULT_IFACE_PREFIX.to_string(),
            enable_icc: true,
            enable_ip_masquerade: true,
            host_binding_ipv4: None,
            host_ipv4: None,
            host_ipv6: None,
            inhibit_ipv4: false,
            gateway_mode_ipv4: GatewayMode::Nat,
            gateway_mode_ipv6: GatewayMode::Nat,
            trusted_host_interfaces: vec![],
            internal: false,
            enable_ipv4: true,
            enable_ipv6: false,
            vni: None,
        }
    }
}

impl NetworkOptions {
    pub fn gateway_mode(&self, family: Family) -> GatewayMode {
        match family {
            Family::V4 => self.gateway_mode_ipv4,
            Family::V6 => self.gateway_mode_ipv6,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("option {key}: {reason}")]
pub struct OptionError {
    pub key: String,
    pub reason: String,
}

fn invalid(key: &str, reason: impl Into<String>) -> OptionError {
    OptionError { key: key.to_string(), reason: reason.into() }
}

/// Parses CreateNetwork's `Options`: dockerd's own top-level keys and the
/// user's `-o` keys inside `com.docker.network.generic`. Unknown top-level keys
/// are dockerd's (newer engines add some) and are tolerated; unknown user keys
/// are refused, so that no option is ever silently ignored.
pub fn parse_network_options(options: Option<&Options>) -> Result<NetworkOptions, OptionError> {
    let mut parsed = NetworkOptions::default();
    let Some(options) = options else { return Ok(parsed) };
    if let Some(v) = options.get(api::OPT_INTERNAL) {
        parsed.internal = parse_bool(api::OPT_INTERNAL, v)?;
    }
    if let Some(v) = options.get(api::OPT_ENABLE_IPV6) {
        parsed.enable_ipv6 = parse_bool(api::OPT_ENABLE_IPV6, v)?;
    }
    if let Some(v) = options.get(api::OPT_ENABLE_IPV4) {
        parsed.enable_ipv4 = parse_bool(api::OPT_ENABLE_IPV4, v)?;
    }
    match options.get(api::OPT_GENERIC) {
        None | Some(Value::Null) => {}
        Some(Value::Object(generic)) => {
            for (key, value) in generic {
                apply_user_option(&mut parsed, canonical_key(key), value)?;
            }
        }
        Some(other) => return Err(invalid(api::OPT_GENERIC, format!("expected an object, got {other}"))),
    }
    Ok(parsed)
}

fn canonical_key(key: &str) -> &str {
    ALIASES.iter().find(|(alias, _)| *alias == key).map(|(_, full)| *full).unwrap_or(key)
}

fn apply_user_option(opts: &mut NetworkOptions, key: &str, value: &Value) -> Result<(), OptionError> {
    match key {
        BRIDGE_NAME => opts.bridge_name = Some(parse_ifname(key, &as_string(key, value)?)?),
        MTU => {
            opts.mtu = parse_mtu(key, value)?;
            opts.mtu_explicit = true;
        }
        IFACE_PREFIX => opts.iface_prefix = parse_iface_prefix(key, &as_string(key, value)?)?,
        ENABLE_ICC => opts.enable_icc = parse_bool(key, value)?,
        ENABLE_IP_MASQUERADE => opts.enable_ip_masquerade = parse_bool(key, value)?,
        HOST_BINDING_IPV4 => opts.host_binding_ipv4 = Some(parse_ip(key, value, Family::V4)?),
        HOST_IPV4 => opts.host_ipv4 = Some(parse_ip(key, value, Family::V4)?),
        HOST_IPV6 => opts.host_ipv6 = Some(parse_ip(key, value, Family::V6)?),
        INHIBIT_IPV4 => opts.inhibit_ipv4 = parse_bool(key, value)?,
        GATEWAY_MODE_IPV4 => opts.gateway_mode_ipv4 = parse_gateway_mode(key, value)?,
        GATEWAY_MODE_IPV6 => opts.gateway_mode_ipv6 = parse_gateway_mode(key, value)?,
        TRUSTED_HOST_INTERFACES => opts.trusted_host_interfaces = parse_interface_list(key, &as_string(key, value)?)?,
        VXLAN_VNI => opts.vni = Some(parse_vni(key, &as_string(key, value)?)?),
        _ => {
            return Err(invalid(
                key,
                "unknown option (rustbridge refuses options it does not honour; see README \"Options\")",
            ));
        }
    }
    Ok(())
}

fn as_string(key: &str, value: &Value) -> Result<String, OptionError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(invalid(key, format!("expected a string, got {other}"))),
    }
}

pub fn parse_bool(key: &str, value: &Value) -> Result<bool, OptionError> {
    match as_string(key, value)?.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(invalid(key, format!("{other:?} is not a boolean (use true or false)"))),
    }
}

/// A VXLAN network identifier: 1 to 2^24 - 1.
pub fn parse_vni(key: &str, text: &str) -> Result<u32, OptionError> {
    let vni: u32 = text.trim().parse().map_err(|_| invalid(key, format!("{text:?} is not a number")))?;
    if !(1..=crate::driver::swarm::MAX_VNI).contains(&vni) {
        return Err(invalid(key, format!("{vni} is outside 1..={}", crate::driver::swarm::MAX_VNI)));
    }
    Ok(vni)
}

fn parse_mtu(key: &str, value: &Value) -> Result<u32, OptionError> {
    let text = as_string(key, value)?;
    let mtu: u32 = text.trim().parse().map_err(|_| invalid(key, format!("{text:?} is not a number")))?;
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(invalid(key, format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}")));
    }
    Ok(mtu)
}

/// A valid Linux interface name: 1..=15 bytes, no '/', ':', whitespace, not "." or "..".
pub fn parse_ifname(key: &str, name: &str) -> Result<String, OptionError> {
    if name.is_empty() {
        return Err(invalid(key, "empty interface name"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid(
            key,
            format!("{name:?} is {} bytes, the kernel allows at most {MAX_IFNAME_LEN}", name.len()),
        ));
    }
    if name == "." || name == ".." || name.starts_with('-') {
        return Err(invalid(key, format!("{name:?} is not a valid interface name")));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(invalid(key, format!("{name:?} contains {bad:?}; use letters, digits, '-', '_' or '.'")));
    }
    Ok(name.to_string())
}

/// Docker's form: interface names separated by ':' (',' accepted too).
fn parse_interface_list(key: &str, text: &str) -> Result<Vec<String>, OptionError> {
    text.split([':', ',']).map(str::trim).filter(|name| !name.is_empty()).map(|name| parse_ifname(key, name)).collect()
}

fn parse_iface_prefix(key: &str, prefix: &str) -> Result<String, OptionError> {
    // dockerd appends a number to the prefix, so leave room for it.
    if prefix.len() > MAX_IFNAME_LEN - 3 {
        return Err(invalid(key, format!("{prefix:?} is longer than {} bytes", MAX_IFNAME_LEN - 3)));
    }
    if prefix.chars().any(|c| c.is_ascii_digit()) {
        return Err(invalid(key, format!("{prefix:?} must not contain digits (dockerd appends the index)")));
    }
    parse_ifname(key, prefix)
}

fn parse_ip(key: &str, value: &Value, family: Family) -> Result<IpAddr, OptionError> {
    let text = as_string(key, value)?;
    let ip: IpAddr = text.trim().parse().map_err(|_| invalid(key, format!("{text:?} is not an IP address")))?;
    if Family::of(&ip) != family {
        return Err(invalid(key, format!("{ip} is not an {family} address")));
    }
    Ok(ip)
}

fn parse_gateway_mode(key: &str, value: &Value) -> Result<GatewayMode, OptionError> {
    match as_string(key, value)?.as_str() {
        "nat" => Ok(GatewayMode::Nat),
        "routed" => Ok(GatewayMode::Routed),
        "isolated" => Ok(GatewayMode::Isolated),
        "nat-unprotected" => Err(invalid(
            key,
            "nat-unprotected is not supported: rustbridge always blocks direct routing to containers (see trusted_host_interfaces)",
        )),
        other => Err(invalid(key, format!("{other:?} is not one of nat, routed, isolated"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Options {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_when_absent() {
        assert_eq!(parse_network_options(None).unwrap(), NetworkOptions::default());
        let o = opts(json!({"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}}));
        assert_eq!(parse_network_options(Some(&o)).unwrap(), NetworkOptions::default());
    }

    #[test]
    fn reads_every_known_option() {
        let o = opts(json!({
            "com.docker.network.internal": true,
            "com.docker.network.enable_ipv6": true,
            "com.docker.network.enable_ipv4": false,
            "com.docker.network.generic": {
                "com.docker.network.bridge.name": "br-test0",
                "com.docker.network.driver.mtu": "1400",
                "com.docker.network.container_iface_prefix": "rb",
                "com.docker.network.bridge.enable_icc": "false",
                "com.docker.network.bridge.enable_ip_masquerade": "false",
                "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
                "com.docker.network.host_ipv4": "192.0.2.1",
                "com.docker.network.host_ipv6": "2001:db8::1",
                "com.docker.network.bridge.inhibit_ipv4": "true",
                "com.docker.network.bridge.gateway_mode_ipv4": "routed",
                "com.docker.network.bridge.gateway_mode_ipv6": "isolated",
                "com.docker.network.bridge.trusted_host_interfaces": "eth0:eth1"
            }
        }));
        let p = parse_network_options(Some(&o)).unwrap();
        assert_eq!(p.bridge_name.as_deref(), Some("br-test0"));
        assert_eq!(p.mtu, 1400);
        assert_eq!(p.iface_prefix, "rb");
        assert!(!p.enable_icc && !p.enable_ip_masquerade && p.inhibit_ipv4);
        assert!(p.internal && p.enable_ipv6 && !p.enable_ipv4);
        assert_eq!(p.host_binding_ipv4, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.host_ipv4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(p.host_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(p.gateway_mode_ipv4, GatewayMode::Routed);
        assert_eq!(p.gateway_mode_ipv6, GatewayMode::Isolated);
        assert_eq!(p.trusted_host_interfaces, ["eth0", "eth1"]);
    }

    #[test]
    fn short_aliases() {
        let o = opts(json!({"com.docker.network.generic": {"bridge": "br9", "mtu": "9000"}}));
        let p = parse_network_options(Some(&o)).unwrap();
        assert_eq!(p.bridge_name.as_deref(), Some("br9"));
        assert_eq!(p.mtu, 9000);
    }

    fn error_for(generic: Value) -> OptionError {
        let o = opts(json!({ "com.docker.network.generic": generic }));
        parse_network_options(Some(&o)).unwrap_err()
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = error_for(json!({"com.docker.network.driver.mtu": "abc"}));
        assert_eq!(e.key, MTU);
        assert!(e.to_string().contains("not a number"), "{e}");
        assert_eq!(error_for(json!({"mtu": "20"})).key, MTU);
        assert_eq!(error_for(json!({"mtu": "70000"})).key, MTU);
        let e = error_for(json!({"com.docker.network.bridge.name": "a-very-long-bridge-name"}));
        assert!(e.to_string().contains("at most 15"), "{e}");
        let e = error_for(json!({"com.docker.network.bridge.name": "br;rm -rf"}));
        assert!(e.to_string().contains("contains"), "{e}");
        assert_eq!(error_for(json!({"com.docker.network.bridge.enable_icc": "maybe"})).key, ENABLE_ICC);
        assert_eq!(error_for(json!({"com.docker.network.host_ipv4": "::1"})).key, HOST_IPV4);
        assert_eq!(error_for(json!({"com.docker.network.bridge.gateway_mode_ipv4": "bridged"})).key, GATEWAY_MODE_IPV4);
        assert_eq!(error_for(json!({"com.docker.network.container_iface_prefix": "eth0"})).key, IFACE_PREFIX);
        assert_eq!(
            error_for(json!({"com.docker.network.bridge.trusted_host_interfaces": "eth0:bad name"})).key,
            TRUSTED_HOST_INTERFACES
        );
    }

    #[test]
    fn unknown_user_option_is_refused_but_unknown_dockerd_key_is_not() {
        let e = error_for(json!({"com.example.unknown": "1"}));
        assert_eq!(e.key, "com.example.unknown");
        assert!(e.to_string().contains("unknown option"));
        let o = opts(json!({"com.docker.network.some_future_key": 1, "com.docker.network.generic": {}}));
        assert!(parse_network_options(Some(&o)).is_ok());
    }
}
