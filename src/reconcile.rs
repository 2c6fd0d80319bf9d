//! Makes the kernel match the state: at start-up (before serving) and then
//! periodically, so that a missing bridge comes back, leftovers the plugin
//! owns go away, and firewall rules flushed by someone (or reordered by a
//! dockerd restart) are put back.

use std::collections::BTreeSet;
use std::time::Duration;

use slog::{Logger, info, warn};

use crate::dataplane::LinkKind;
use crate::driver::network::{bridge_spec, is_owned_bridge_name, is_owned_veth_name};
use crate::driver::{Plugin, Result, State};
use crate::state::NetworkRecord;

/// Start-up: recreate missing bridges, remove owned links no state knows, rewrite the rules.
pub async fn at_start(plugin: &Plugin, log: &Logger) -> Result<()> {
    let state = plugin.state.lock().await;
    for network in state.networks.values() {
        if plugin.dataplane.ensure_bridge(&bridge_spec(network)).await? {
            info!(log, "recreated missing bridge"; "bridge" => &network.bridge, "network" => &network.id[..12]);
        }
        reattach_endpoints(plugin, &state, network).await?;
    }
    let known_bridges: BTreeSet<&str> = state.networks.values().map(|n| n.bridge.as_str()).collect();
    let known_veths: BTreeSet<&str> = state
        .endpoints
        .values()
        .filter(|e| e.joined)
        .flat_map(|e| [e.host_veth.as_str(), e.container_veth.as_str()])
        .collect();
    for link in plugin.dataplane.list_links().await? {
        let stale_bridge = link.kind == LinkKind::Bridge && is_owned_bridge_name(&link.name) && !known_bridges.contains(link.name.as_str());
        let stale_veth = link.kind == LinkKind::Veth && is_owned_veth_name(&link.name) && !known_veths.contains(link.name.as_str());
        if stale_bridge || stale_veth {
            plugin.dataplane.delete_link(&link.name).await?;
            info!(log, "removed leftover link"; "link" => &link.name);
        }
    }
    plugin.firewall.sync(&state.firewall_networks()).await?;
    Ok(())
}

/// Deleting a bridge detaches its ports; a recreated bridge takes back the
/// host ends of its joined endpoints (those whose container still exists).
async fn reattach_endpoints(plugin: &Plugin, state: &State, network: &NetworkRecord) -> Result<()> {
    for endpoint in state.endpoints.values().filter(|e| e.joined && e.network_id == network.id) {
        plugin.dataplane.attach_to_bridge(&endpoint.host_veth, &network.bridge).await?;
    }
    Ok(())
}

/// One periodic pass: cheap checks first, repairs only when something drifted.
pub async fn pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    let state = plugin.state.lock().await;
    for network in state.networks.values() {
        if !plugin.dataplane.link_exists(&network.bridge).await? {
            plugin.dataplane.ensure_bridge(&bridge_spec(network)).await?;
            reattach_endpoints(plugin, &state, network).await?;
            warn!(log, "bridge was missing; recreated it and put its endpoints back"; "bridge" => &network.bridge);
        }
    }
    let networks = state.firewall_networks();
    if !plugin.firewall.is_intact(&networks).await? {
        plugin.firewall.sync(&networks).await?;
        warn!(log, "firewall rules had drifted (flushed, or dockerd restarted); restored");
    }
    Ok(())
}

pub async fn run_periodically(plugin: std::sync::Arc<Plugin>, log: Logger, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(e) = pass(&plugin, &log).await {
            warn!(log, "reconcile pass failed"; "error" => %e);
        }
    }
}
