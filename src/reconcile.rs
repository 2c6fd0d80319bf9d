//! Makes the kernel match the state: at start-up (before serving) and then
//! periodically, so that a missing bridge comes back, leftovers the plugin
//! owns go away, and firewall rules flushed by someone (or reordered by a
//! dockerd restart) are put back.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use slog::{Logger, info, warn};

use crate::dataplane::{Link, LinkKind};
use crate::driver::{Plugin, Result, State};
use crate::metrics;
use crate::names::{HOST_VETH_PREFIX, PEER_VETH_PREFIX, is_owned_bridge_name, is_owned_veth_name, short_id};
use crate::state::{Change, EndpointRecord, NetworkRecord};

/// Start-up: forget endpoints whose container is gone, recreate missing
/// bridges, remove leftovers that are provably this state's and unused,
/// rewrite the rules. One failing item does not stop the others; the errors
/// are logged and returned together (the periodic pass retries).
pub async fn at_start(plugin: &Plugin, log: &Logger) -> Result<()> {
    let result = at_start_pass(plugin, log).await;
    metrics::global().record_check(result.clone().map_err(|e| e.to_string()));
    result
}

async fn at_start_pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    let mut state = plugin.lock_state().await;
    let mut errors: Vec<String> = Vec::new();
    match plugin.dataplane().list_links().await {
        Ok(links) => {
            if let Err(e) = forget_gone_containers(plugin, &mut state, &links, log).await {
                errors.push(e.to_string());
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    for network in state.networks.values() {
        match plugin.dataplane().ensure_bridge(&plugin.bridge_spec(network)).await {
            Ok(outcome) if outcome.created => {
                repaired("bridge_recreated", format!("bridge {} missing", network.bridge));
                info!(log, "recreated missing bridge"; "bridge" => &network.bridge, "network" => short_id(&network.id))
            }
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
        if let Err(e) = reattach_endpoints(plugin, &state, network).await {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = remove_leftovers(plugin, &state, log).await {
        errors.push(e.to_string());
    }
    if let Err(e) = plugin.firewall().sync(&state.firewall_networks()).await {
        errors.push(e.to_string());
    }
    if errors.is_empty() { Ok(()) } else { Err(crate::driver::PluginError::new(errors.join("; "))) }
}

/// Endpoints dockerd forgot: a container removed while the plugin was away
/// (dockerd moves the veth back to the host and drops the endpoint although
/// Leave and DeleteEndpoint failed). A joined endpoint whose pair is whole in
/// the host namespace has no container any more: its record, veth, address and
/// rules go. Only at start, before serving: a Join in progress also has its
/// pair in the host for a moment.
async fn forget_gone_containers(plugin: &Plugin, state: &mut State, links: &[Link], log: &Logger) -> Result<()> {
    // The host end is there and its peer is in this namespace too (under
    // whatever name dockerd gave it back).
    let at_home = |name: &str| links.iter().any(|l| l.name == name && l.kind == LinkKind::Veth && !l.peer_elsewhere);
    let gone: Vec<EndpointRecord> =
        state.endpoints.values().filter(|e| e.joined && at_home(&e.host_veth)).cloned().collect();
    for endpoint in gone {
        let released = held_addresses(state, &endpoint);
        let mut changes = vec![Change::DeleteEndpoint(endpoint.id.clone())];
        changes.extend(released.iter().map(|(pool, addr)| Change::DeleteAddress(pool.clone(), *addr)));
        plugin.commit(changes)?;
        state.endpoints.remove(&endpoint.id);
        for (pool, addr) in &released {
            let _ = state.ipam.release_address(pool, *addr);
        }
        plugin.dataplane().delete_link(&endpoint.host_veth).await?;
        repaired("forgotten_endpoint_removed", format!("endpoint {} without container", short_id(&endpoint.id)));
        warn!(log, "removed an endpoint whose container is gone (its interface was back in the host)";
            "endpoint" => short_id(&endpoint.id), "veth" => &endpoint.host_veth,
            "addresses_released" => released.len(), "ports_withdrawn" => endpoint.published.len());
    }
    Ok(())
}

/// The endpoint's addresses as this plugin's IPAM holds them: in the one pool
/// of the network's subnet that has the address allocated (none when the
/// network uses another IPAM driver, or when it is ambiguous).
fn held_addresses(state: &State, endpoint: &EndpointRecord) -> Vec<(String, IpAddr)> {
    let Some(network) = state.networks.get(&endpoint.network_id) else { return vec![] };
    let subnets: Vec<IpNet> = network.ipv4.iter().chain(&network.ipv6).map(|s| s.pool).collect();
    let mut out = Vec::new();
    for addr in [endpoint.address, endpoint.address_v6].into_iter().flatten().map(|a| a.addr()) {
        let holders: Vec<&str> = state
            .ipam
            .pools()
            .filter(|p| subnets.contains(&p.pool))
            .filter(|p| state.ipam.addresses(&p.id).is_some_and(|a| a.is_allocated(addr)))
            .map(|p| p.id.as_str())
            .collect();
        if let [pool] = holders[..] {
            out.push((pool.to_string(), addr));
        }
    }
    out
}

/// Removes `rb-` bridges and `rbh-` veths no record knows, but only those
/// this state database made (their owner mark says so) and nothing uses: a
/// veth whose peer is in a container, or a bridge with other ports, stays. So
/// a missing, replaced or empty database (or a second `rustbridge serve` with
/// another state directory) never takes away live containers' networking.
async fn remove_leftovers(plugin: &Plugin, state: &State, log: &Logger) -> Result<()> {
    let instance = plugin.instance_id();
    let known_bridges: BTreeSet<&str> = state.networks.values().map(|n| n.bridge.as_str()).collect();
    let known_veths: BTreeSet<&str> = state
        .endpoints
        .values()
        .filter(|e| e.joined)
        .flat_map(|e| [e.host_veth.as_str(), e.container_veth.as_str()])
        .collect();
    let links = plugin.dataplane().list_links().await?;
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for link in links.iter().filter(|l| l.kind == LinkKind::Veth && l.name.starts_with(HOST_VETH_PREFIX)) {
        if !is_owned_veth_name(&link.name) || known_veths.contains(link.name.as_str()) {
            continue;
        }
        if link.owner.as_deref() == Some(instance) && !link.peer_elsewhere {
            plugin.dataplane().delete_link(&link.name).await?;
            repaired("leftover_link_removed", format!("leftover link {}", link.name));
            info!(log, "removed leftover veth"; "link" => &link.name);
            deleted.insert(link.name.clone());
            deleted.insert(link.name.replacen(HOST_VETH_PREFIX, PEER_VETH_PREFIX, 1));
        } else {
            info!(log, "left alone a veth no record knows (another state's, or in use)"; "link" => &link.name,
                "in_use" => link.peer_elsewhere);
        }
    }
    for link in links.iter().filter(|l| l.kind == LinkKind::Bridge && is_owned_bridge_name(&l.name)) {
        if known_bridges.contains(link.name.as_str()) {
            continue;
        }
        let ports = links
            .iter()
            .filter(|p| p.controller.as_deref() == Some(link.name.as_str()) && !deleted.contains(&p.name))
            .count();
        if link.owner.as_deref() == Some(instance) && ports == 0 {
            plugin.dataplane().delete_link(&link.name).await?;
            repaired("leftover_link_removed", format!("leftover link {}", link.name));
            info!(log, "removed leftover bridge"; "link" => &link.name);
        } else {
            info!(log, "left alone a bridge no record knows (another state's, or in use)"; "link" => &link.name,
                "ports" => ports);
        }
    }
    Ok(())
}

/// Deleting a bridge detaches its ports; a recreated bridge takes back the
/// host ends of its joined endpoints (those whose container still exists).
async fn reattach_endpoints(plugin: &Plugin, state: &State, network: &NetworkRecord) -> Result<()> {
    for endpoint in state.endpoints.values().filter(|e| e.joined && e.network_id == network.id) {
        plugin.dataplane().attach_to_bridge(&endpoint.host_veth, &network.bridge).await?;
    }
    Ok(())
}

/// One periodic pass. The checks run on a snapshot without holding the state
/// lock (dockerd's calls go on meanwhile); only a repair takes it.
pub async fn pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    let (bridges, networks) = {
        let state = plugin.lock_state().await;
        let bridges: Vec<String> = state.networks.values().map(|n| n.bridge.clone()).collect();
        (bridges, state.firewall_networks())
    };
    let mut bridge_missing = false;
    for bridge in &bridges {
        bridge_missing |= !plugin.dataplane().link_exists(bridge).await?;
    }
    let rules_intact = plugin.firewall().is_intact(&networks).await?;
    if !bridge_missing && rules_intact {
        return Ok(());
    }
    let state = plugin.lock_state().await;
    for network in state.networks.values() {
        if !plugin.dataplane().link_exists(&network.bridge).await? {
            plugin.dataplane().ensure_bridge(&plugin.bridge_spec(network)).await?;
            reattach_endpoints(plugin, &state, network).await?;
            repaired("bridge_recreated", format!("bridge {} missing", network.bridge));
            warn!(log, "bridge was missing; recreated it and put its endpoints back"; "bridge" => &network.bridge);
        }
    }
    let networks = state.firewall_networks();
    if !plugin.firewall().is_intact(&networks).await? {
        plugin.firewall().sync(&networks).await?;
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
