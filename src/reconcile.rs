//! Makes the kernel match the state: at start-up (before serving) and then
//! periodically, so that a missing bridge comes back, leftovers the plugin
//! owns go away, and firewall rules flushed by someone (or reordered by a
//! dockerd restart) are put back.

use std::collections::BTreeSet;
use std::time::Duration;

use slog::{Logger, info, warn};

use crate::dataplane::LinkKind;
use crate::driver::network::bridge_spec;
use crate::driver::{Plugin, Result, State};
use crate::metrics;
use crate::names::{is_owned_bridge_name, is_owned_veth_name, short_id};
use crate::state::NetworkRecord;

/// Start-up: recreate missing bridges, remove owned links no state knows,
/// rewrite the rules. One failing item does not stop the others; the errors
/// are logged and returned together (the periodic pass retries).
pub async fn at_start(plugin: &Plugin, log: &Logger) -> Result<()> {
    let result = at_start_pass(plugin, log).await;
    metrics::global().record_check(result.clone().map_err(|e| e.to_string()));
    result
}

async fn at_start_pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    let state = plugin.state.lock().await;
    let mut errors: Vec<String> = Vec::new();
    for network in state.networks.values() {
        match plugin.dataplane.ensure_bridge(&bridge_spec(network)).await {
            Ok(true) => {
                repaired("bridge_recreated", format!("bridge {} missing", network.bridge));
                info!(log, "recreated missing bridge"; "bridge" => &network.bridge, "network" => short_id(&network.id))
            }
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
        if let Err(e) = reattach_endpoints(plugin, &state, network).await {
            errors.push(e.to_string());
        }
    }
    let known_bridges: BTreeSet<&str> = state.networks.values().map(|n| n.bridge.as_str()).collect();
    let known_veths: BTreeSet<&str> = state
        .endpoints
        .values()
        .filter(|e| e.joined)
        .flat_map(|e| [e.host_veth.as_str(), e.container_veth.as_str()])
        .collect();
    match plugin.dataplane.list_links().await {
        Ok(links) => {
            for link in links {
                let stale_bridge = link.kind == LinkKind::Bridge
                    && is_owned_bridge_name(&link.name)
                    && !known_bridges.contains(link.name.as_str());
                let stale_veth = link.kind == LinkKind::Veth
                    && is_owned_veth_name(&link.name)
                    && !known_veths.contains(link.name.as_str());
                if stale_bridge || stale_veth {
                    match plugin.dataplane.delete_link(&link.name).await {
                        Ok(()) => {
                            repaired("leftover_link_removed", format!("leftover link {}", link.name));
                            info!(log, "removed leftover link"; "link" => &link.name)
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    if let Err(e) = plugin.firewall.sync(&state.firewall_networks()).await {
        errors.push(e.to_string());
    }
    if errors.is_empty() { Ok(()) } else { Err(crate::driver::PluginError::new(errors.join("; "))) }
}

/// Deleting a bridge detaches its ports; a recreated bridge takes back the
/// host ends of its joined endpoints (those whose container still exists).
async fn reattach_endpoints(plugin: &Plugin, state: &State, network: &NetworkRecord) -> Result<()> {
    for endpoint in state.endpoints.values().filter(|e| e.joined && e.network_id == network.id) {
        plugin.dataplane.attach_to_bridge(&endpoint.host_veth, &network.bridge).await?;
    }
    Ok(())
}

/// One periodic pass. The checks run on a snapshot without holding the state
/// lock (dockerd's calls go on meanwhile); only a repair takes it.
pub async fn pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    let (bridges, networks) = {
        let state = plugin.state.lock().await;
        let bridges: Vec<String> = state.networks.values().map(|n| n.bridge.clone()).collect();
        (bridges, state.firewall_networks())
    };
    let mut bridge_missing = false;
    for bridge in &bridges {
        bridge_missing |= !plugin.dataplane.link_exists(bridge).await?;
    }
    let rules_intact = plugin.firewall.is_intact(&networks).await?;
    if !bridge_missing && rules_intact {
        return Ok(());
    }
    let state = plugin.state.lock().await;
    for network in state.networks.values() {
        if !plugin.dataplane.link_exists(&network.bridge).await? {
            plugin.dataplane.ensure_bridge(&bridge_spec(network)).await?;
            reattach_endpoints(plugin, &state, network).await?;
            repaired("bridge_recreated", format!("bridge {} missing", network.bridge));
            warn!(log, "bridge was missing; recreated it and put its endpoints back"; "bridge" => &network.bridge);
        }
    }
    let networks = state.firewall_networks();
    if !plugin.firewall.is_intact(&networks).await? {
        plugin.firewall.sync(&networks).await?;
        repaired("rules_restored", "firewall rules drifted (flushed, reordered or changed)");
        warn!(log, "firewall rules had drifted (flushed, or dockerd restarted); restored");
    }
    Ok(())
}

pub async fn run_periodically(plugin: std::sync::Arc<Plugin>, log: Logger, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let result = pass(&plugin, &log).await;
        if let Err(e) = &result {
            warn!(log, "reconcile pass failed"; "error" => %e);
        }
        metrics::global().record_check(result.map_err(|e| e.to_string()));
    }
}

/// One repair, counted by kind and noted as the current check's drift.
fn repaired(kind: &str, drift: impl Into<String>) {
    metrics::global().record_repair(kind);
    metrics::global().record_drift(drift);
}

#[cfg(test)]
mod tests;
