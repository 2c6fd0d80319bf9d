//! Makes the kernel match the state: at start-up (before serving) and then
//! periodically, so that a missing bridge comes back, leftovers the plugin
//! owns go away, and firewall rules flushed by someone (or reordered by a
//! dockerd restart) are put back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use slog::{Logger, info, warn};

use crate::dataplane::{Link, LinkKind};
use crate::driver::{Plugin, Result, State};
use crate::metrics;
use crate::names::{HOST_VETH_PREFIX, PEER_VETH_PREFIX, is_owned_bridge_name, is_owned_veth_name, short_id};
use crate::state::{Change, EndpointRecord, NetworkRecord};

/// Start-up: note endpoints whose container may be gone, recreate missing
/// bridges, remove leftovers that are provably this state's and unused,
/// rewrite the rules. One failing item does not stop the others; the errors
/// are logged and returned together (the periodic pass retries).
pub async fn at_start(plugin: &Plugin, log: &Logger) -> Result<()> {
    let result = at_start_pass(plugin, log).await;
    metrics::global().record_check(result.clone().map_err(|e| e.to_string()));
    result
}

async fn at_start_pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    let state = plugin.lock_state().await;
    let mut errors: Vec<String> = Vec::new();
    match plugin.dataplane().list_links().await {
        // Only noted: the periodic pass forgets them once they stay unclaimed.
        Ok(links) => {
            plugin.unclaimed().observe(unclaimed_among(&joined_endpoints(&state), &links), Instant::now());
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

/// How long a joined endpoint's veth pair must stay whole in the host before
/// the endpoint is taken for one whose container is gone. Between dockerd's
/// Join answer and its move of the peer into the container the pair is in the
/// host too; a plugin killed and restarted in that moment (dockerd restarts it
/// within milliseconds) must not take the pair away from the container
/// dockerd is starting.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(30);

/// Joined endpoints seen with their veth pair whole in the host namespace,
/// and since when. A sighting ends as soon as the peer is elsewhere (dockerd
/// moved it into the container) or the endpoint left.
#[derive(Debug)]
pub struct Unclaimed {
    grace: Duration,
    since: std::sync::Mutex<BTreeMap<String, Instant>>,
}

impl Unclaimed {
    pub fn new(grace: Duration) -> Unclaimed {
        Unclaimed { grace, since: std::sync::Mutex::new(BTreeMap::new()) }
    }

    /// Records which endpoints are unclaimed at `now` (forgetting the others)
    /// and returns those unclaimed for at least the grace period.
    pub fn observe(&self, unclaimed: BTreeSet<String>, now: Instant) -> Vec<String> {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.retain(|id, _| unclaimed.contains(id));
        for id in unclaimed {
            since.entry(id).or_insert(now);
        }
        since
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) >= self.grace)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn forget(&self, id: &str) {
        self.since.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Joined endpoints (ID, host veth) whose veth pair is whole in the host
/// namespace: the host end is there and its peer is in this namespace too
/// (under whatever name dockerd gave it back).
fn unclaimed_among(joined: &[(String, String)], links: &[Link]) -> BTreeSet<String> {
    let at_home = |name: &str| links.iter().any(|l| l.name == name && l.kind == LinkKind::Veth && !l.peer_elsewhere);
    joined.iter().filter(|(_, veth)| at_home(veth)).map(|(id, _)| id.clone()).collect()
}

fn joined_endpoints(state: &State) -> Vec<(String, String)> {
    state.endpoints.values().filter(|e| e.joined).map(|e| (e.id.clone(), e.host_veth.clone())).collect()
}

/// Endpoints dockerd forgot: a container removed while the plugin was away
/// (dockerd moves the veth back to the host and drops the endpoint although
/// Leave and DeleteEndpoint failed). A joined endpoint whose pair has stayed
/// whole in the host for the grace period has no container any more: its
/// record, veth, address and rules go. Called under the state lock with
/// links listed under it.
async fn forget_gone_containers(
    plugin: &Plugin,
    state: &mut State,
    links: &[Link],
    now: Instant,
    log: &Logger,
) -> Result<()> {
    let due = plugin.unclaimed().observe(unclaimed_among(&joined_endpoints(state), links), now);
    for id in due {
        let Some(endpoint) = state.endpoints.get(&id).cloned() else { continue };
        let released = held_addresses(state, &endpoint);
        let mut changes = vec![Change::DeleteEndpoint(endpoint.id.clone())];
        changes.extend(released.iter().map(|(pool, addr)| Change::DeleteAddress(pool.clone(), *addr)));
        plugin.commit(changes)?;
        state.endpoints.remove(&endpoint.id);
        plugin.unclaimed().forget(&endpoint.id);
        for (pool, addr) in &released {
            let _ = state.ipam.release_address(pool, *addr);
        }
        plugin.dataplane().delete_link(&endpoint.host_veth).await?;
        repaired("forgotten_endpoint_removed", format!("endpoint {} without container", short_id(&endpoint.id)));
        warn!(log, "removed an endpoint whose container is gone (its interface stayed back in the host)";
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
    pass_at(plugin, log, Instant::now()).await
}

/// [`pass`] as if it ran at `now` (tests step over the grace period).
pub async fn pass_at(plugin: &Plugin, log: &Logger, now: Instant) -> Result<()> {
    let (bridges, networks, joined) = {
        let state = plugin.lock_state().await;
        let bridges: Vec<String> = state.networks.values().map(|n| n.bridge.clone()).collect();
        (bridges, state.firewall_networks(), joined_endpoints(&state))
    };
    let links = plugin.dataplane().list_links().await?;
    let forget_due = !plugin.unclaimed().observe(unclaimed_among(&joined, &links), now).is_empty();
    let mut bridge_missing = false;
    for bridge in &bridges {
        bridge_missing |= !plugin.dataplane().link_exists(bridge).await?;
    }
    let rules_intact = plugin.firewall().is_intact(&networks).await?;
    if !bridge_missing && rules_intact && !forget_due {
        return Ok(());
    }
    let mut state = plugin.lock_state().await;
    if forget_due {
        let links = plugin.dataplane().list_links().await?;
        forget_gone_containers(plugin, &mut state, &links, now, log).await?;
    }
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
