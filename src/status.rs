//! The running plugin's view for operators (`rustbridge status`), served on its
//! own socket as `/Rustbridge.Status`: read from the in-memory state under the
//! state lock, never from the database file.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::driver::{Plugin, State};
use crate::firewall::FwPort;
use crate::metrics::{CheckReport, Metrics, StateGauges};
use crate::options::NetworkOptions;
use crate::options::{self as opt, GatewayMode};
use crate::state::{EndpointRecord, NetworkRecord};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: String,
    pub commit: String,
    pub firewall: FirewallStatus,
    pub networks: Vec<NetworkStatus>,
    pub pools: Vec<PoolStatus>,
    /// Repairs the reconciler made since the plugin started, per kind.
    pub repairs: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FirewallStatus {
    /// The firewall engine: the nftables table, and the iptables flavour of the accept rule.
    pub backend: String,
    /// The last kernel check (bridges and rules against the state).
    pub last_check: CheckReport,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkStatus {
    pub id: String,
    /// dockerd does not tell a remote driver the network's name; the CLI fills it
    /// in from dockerd's API when it can reach it.
    #[serde(default)]
    pub name: Option<String>,
    pub bridge: String,
    /// False for a bridge that existed before (`-o bridge=`) and was adopted.
    pub bridge_created: bool,
    pub subnets: Vec<SubnetStatus>,
    /// Options whose value differs from the default, by their `-o` key (`internal`, `ipv4` and
    /// `ipv6` for dockerd's own flags).
    pub options: BTreeMap<String, Value>,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubnetStatus {
    pub subnet: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointStatus {
    pub id: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub mac: String,
    pub host_veth: String,
    /// Joined to a container (its veth exists).
    pub joined: bool,
    pub published: Vec<PortStatus>,
}

/// One published port as programmed (host side resolved).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortStatus {
    pub proto: String,
    /// None: every host address.
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_ip: String,
    pub container_port: u16,
}

impl From<&FwPort> for PortStatus {
    fn from(p: &FwPort) -> Self {
        PortStatus {
            proto: p.proto.to_string(),
            host_ip: p.host_ip.map(|ip| ip.to_string()),
            host_port: p.host_port,
            container_ip: p.container_ip.to_string(),
            container_port: p.container_port,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub id: String,
    pub pool: String,
    /// `--ip-range`, when automatic allocation draws from a part of the pool.
    pub range: Option<String>,
    pub in_use: u128,
    /// Free addresses of the range automatic allocation draws from.
    pub free: u128,
}

/// The whole view, taken under the state lock.
pub async fn collect(plugin: &Plugin, metrics: &Metrics) -> Status {
    let state = plugin.lock_state().await;
    of_state(&state, metrics)
}

pub fn of_state(state: &State, metrics: &Metrics) -> Status {
    Status {
        version: crate::version::VERSION.to_string(),
        commit: crate::version::COMMIT.to_string(),
        firewall: FirewallStatus { backend: metrics.firewall(), last_check: metrics.check() },
        networks: state.networks.values().map(|n| network_status(n, state.endpoints.values())).collect(),
        pools: pools(state),
        repairs: metrics.repairs(),
    }
}

/// The gauges `/metrics` reads from the state.
pub fn gauges(state: &State) -> StateGauges {
    StateGauges {
        networks: state.networks.len(),
        endpoints: state.endpoints.len(),
        published_ports: state.endpoints.values().map(|e| e.published.len()).sum(),
        pools: pools(state).into_iter().map(|p| (p.id, p.in_use, p.free)).collect(),
    }
}

fn pools(state: &State) -> Vec<PoolStatus> {
    state
        .ipam
        .pools()
        .filter_map(|record| {
            let addresses = state.ipam.addresses(&record.id)?;
            Some(PoolStatus {
                id: record.id.clone(),
                pool: record.pool.to_string(),
                range: record.sub_pool.map(|r| r.to_string()),
                in_use: addresses.allocated_count(),
                free: addresses.free_in_range(),
            })
        })
        .collect()
}

fn network_status<'a>(n: &NetworkRecord, endpoints: impl Iterator<Item = &'a EndpointRecord>) -> NetworkStatus {
    NetworkStatus {
        id: n.id.clone(),
        name: None,
        bridge: n.bridge.clone(),
        bridge_created: n.bridge_created,
        subnets: n
            .ipv4
            .iter()
            .chain(&n.ipv6)
            .map(|s| SubnetStatus { subnet: s.pool.to_string(), gateway: s.gateway.map(|g| g.addr().to_string()) })
            .collect(),
        options: options_differing(&n.options),
        endpoints: endpoints
            .filter(|e| e.network_id == n.id)
            .map(|e| EndpointStatus {
                id: e.id.clone(),
                ipv4: e.address.map(|a| a.to_string()),
                ipv6: e.address_v6.map(|a| a.to_string()),
                mac: e.mac.clone(),
                host_veth: e.host_veth.clone(),
                joined: e.joined,
                published: e.published.iter().map(PortStatus::from).collect(),
            })
            .collect(),
    }
}

/// The options whose value is not the default one (`NetworkOptions::default`), by `-o` key.
pub fn options_differing(options: &NetworkOptions) -> BTreeMap<String, Value> {
    let defaults = option_values(&NetworkOptions::default());
    option_values(options)
        .into_iter()
        .zip(defaults)
        .filter(|((_, value), (_, default))| value != default)
        .map(|((key, value), _)| (key.to_string(), value))
        .collect()
}

/// Every user-visible option with its value, in a fixed order.
fn option_values(o: &NetworkOptions) -> Vec<(&'static str, Value)> {
    let ip = |a: Option<std::net::IpAddr>| a.map(|a| Value::String(a.to_string())).unwrap_or(Value::Null);
    let mode = |m: GatewayMode| {
        Value::String(match m {
            GatewayMode::Nat => "nat".into(),
            GatewayMode::Routed => "routed".into(),
            GatewayMode::Isolated => "isolated".into(),
        })
    };
    vec![
        (opt::BRIDGE_NAME, o.bridge_name.clone().map(Value::String).unwrap_or(Value::Null)),
        (opt::MTU, Value::from(o.mtu)),
        (opt::IFACE_PREFIX, Value::String(o.iface_prefix.clone())),
        (opt::ENABLE_ICC, Value::Bool(o.enable_icc)),
        (opt::ENABLE_IP_MASQUERADE, Value::Bool(o.enable_ip_masquerade)),
        (opt::HOST_BINDING_IPV4, ip(o.host_binding_ipv4)),
        (opt::HOST_IPV4, ip(o.host_ipv4)),
        (opt::HOST_IPV6, ip(o.host_ipv6)),
        (opt::INHIBIT_IPV4, Value::Bool(o.inhibit_ipv4)),
        (opt::GATEWAY_MODE_IPV4, mode(o.gateway_mode_ipv4)),
        (opt::GATEWAY_MODE_IPV6, mode(o.gateway_mode_ipv6)),
        (opt::TRUSTED_HOST_INTERFACES, Value::String(o.trusted_host_interfaces.join(":"))),
        ("internal", Value::Bool(o.internal)),
        ("ipv4", Value::Bool(o.enable_ipv4)),
        ("ipv6", Value::Bool(o.enable_ipv6)),
    ]
}

/// The text `rustbridge status` prints.
pub fn render_text(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rustbridge {} (commit {})", status.version, status.commit);
    let check = &status.firewall.last_check;
    let _ =
        writeln!(out, "firewall: {}", if status.firewall.backend.is_empty() { "?" } else { &status.firewall.backend });
    let when = |t: Option<f64>| t.map(|t| format!("{} (unix)", t as u64)).unwrap_or_else(|| "never".into());
    let _ =
        writeln!(out, "last check: {}, last successful: {}", when(check.last_run_unix), when(check.last_success_unix));
    match (&check.last_error, check.drift.is_empty()) {
        (Some(e), _) => {
            let _ = writeln!(out, "kernel matches state: unknown, the last check failed: {e}");
        }
        (None, true) => {
            let _ = writeln!(out, "kernel matches state: yes");
        }
        (None, false) => {
            let _ = writeln!(out, "kernel matches state: no at the last check, repaired: {}", check.drift.join("; "));
        }
    }
    if !status.repairs.is_empty() {
        let list: Vec<String> = status.repairs.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "repairs since start: {}", list.join(" "));
    }
    let _ = writeln!(out, "\nnetworks: {}", status.networks.len());
    for n in &status.networks {
        let name = n.name.as_deref().unwrap_or("(name unknown)");
        let adopted = if n.bridge_created { "" } else { " (adopted)" };
        let _ = writeln!(out, "  {name}  id {}  bridge {}{adopted}", crate::names::short_id(&n.id), n.bridge);
        for s in &n.subnets {
            let _ = writeln!(out, "    subnet {}  gateway {}", s.subnet, s.gateway.as_deref().unwrap_or("none"));
        }
        if !n.options.is_empty() {
            let list: Vec<String> = n.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "    options {}", list.join(" "));
        }
        for e in &n.endpoints {
            let addrs: Vec<&str> = e.ipv4.iter().chain(&e.ipv6).map(String::as_str).collect();
            let veth = if e.joined { e.host_veth.as_str() } else { "(not joined)" };
            let _ = writeln!(
                out,
                "    endpoint {}  {}  mac {}  veth {veth}",
                crate::names::short_id(&e.id),
                if addrs.is_empty() { "-".to_string() } else { addrs.join(" ") },
                e.mac
            );
            for p in &e.published {
                let host = p.host_ip.as_deref().unwrap_or("*");
                let _ = writeln!(
                    out,
                    "      publish {host}:{}/{} -> {}:{}",
                    p.host_port, p.proto, p.container_ip, p.container_port
                );
            }
        }
    }
    let _ = writeln!(out, "\nIPAM pools: {}", status.pools.len());
    for p in &status.pools {
        let range = p.range.as_deref().map(|r| format!(" range {r}")).unwrap_or_default();
        let _ = writeln!(out, "  {}{range}  in use {}  free {}", p.pool, p.in_use, p.free);
    }
    out
}

#[cfg(test)]
mod tests;
