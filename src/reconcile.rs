//! Makes the kernel match the state: at start-up and then periodically, so
//! that a missing bridge comes back, leftovers the plugin owns go away, and
//! firewall rules flushed by someone (or reordered by a dockerd restart) are
//! put back.
//!
//! Both passes work from one dump of the links (with their addresses) and
//! change only what differs from the state, so their cost follows what
//! changed, not how much the state holds. The start-up pass takes the state
//! lock before the socket is bound and keeps it until it is done: dockerd's
//! handshake is answered at once, and a call that needs the state waits for
//! the repair (never the other way round), so no call sees a kernel the pass
//! is still changing, and leftovers are judged under the lock, against a
//! state no call is changing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use slog::{Logger, info, warn};
use tokio::sync::OwnedMutexGuard;

use crate::dataplane::{BridgeSpec, Link, LinkKind};
use crate::driver::{Plugin, Result, State};
use crate::metrics;
use crate::names::{
    HOST_VETH_PREFIX, PEER_VETH_PREFIX, is_owned_bridge_name, is_owned_veth_name, is_owned_vxlan_name, short_id,
};
use crate::state::{Change, EndpointRecord, NetworkRecord};

/// Start-up: note endpoints whose container may be gone, recreate missing
/// bridges (and repair drifted ones), put detached endpoints back on their
/// bridge, remove leftovers that are provably this state's and unused,
/// rewrite the rules. One failing item does not stop the others; the errors
/// are logged and returned together (the periodic pass retries).
pub async fn at_start(plugin: &Plugin, log: &Logger) -> Result<()> {
    StartUp::hold(plugin).await.run(plugin, log).await
}

/// The start-up pass with the state lock it holds from before serving.
pub struct StartUp {
    state: OwnedMutexGuard<State>,
}

/// What a start-up pass changed.
#[derive(Debug, Default)]
struct Repairs {
    bridges: usize,
    endpoints: usize,
    /// How long the links took (dump and repairs), and the rules.
    links_time: std::time::Duration,
    rules_time: std::time::Duration,
}

impl StartUp {
    /// Takes the state lock (at once: nothing else holds it before serving).
    pub async fn hold(plugin: &Plugin) -> StartUp {
        StartUp { state: plugin.lock_state_owned().await }
    }

    /// Repairs, then releases the state lock.
    pub async fn run(mut self, plugin: &Plugin, log: &Logger) -> Result<()> {
        let started = Instant::now();
        let mut repairs = Repairs::default();
        let result = start_pass(plugin, &mut self.state, &mut repairs, log).await;
        drop(self.state);
        let ms = |d: std::time::Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        info!(log, "start-up reconcile done"; "ms" => ms(started.elapsed()), "links_ms" => ms(repairs.links_time),
            "rules_ms" => ms(repairs.rules_time), "bridges_repaired" => repairs.bridges,
            "endpoints_reattached" => repairs.endpoints, "ok" => result.is_ok());
        metrics::global().record_check(result.clone().map_err(|e| e.to_string()));
        crate::memory::give_back();
        result
    }
}

async fn start_pass(plugin: &Plugin, state: &mut State, repairs: &mut Repairs, log: &Logger) -> Result<()> {
    let started = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    // Without the dump every bridge and endpoint is repaired, as if all had drifted.
    let links = match plugin.dataplane().list_links().await {
        Ok(links) => Some(links),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    if let Some(links) = &links
        && let Err(e) = recover_joins(plugin, state, links, log)
    {
        errors.push(e.to_string());
    }
    let state: &State = state;
    let named = links.as_deref().map(by_name);
    if let Some(links) = &links {
        // Only noted: the periodic pass forgets them once they stay unclaimed.
        plugin.unclaimed().observe(unclaimed_among(&joined_endpoints(state), links), Instant::now());
    }
    for network in state.networks.values() {
        let spec = plugin.bridge_spec(network);
        let found = named.as_ref().and_then(|n| n.get(network.bridge.as_str()).copied());
        if !found.is_some_and(|link| bridge_intact(&spec, link)) {
            match plugin.dataplane().ensure_bridge(&spec).await {
                Ok(outcome) => {
                    repairs.bridges += 1;
                    if outcome.created {
                        repaired("bridge_recreated", format!("bridge {} missing", network.bridge));
                        info!(log, "recreated missing bridge"; "bridge" => &network.bridge, "network" => short_id(&network.id))
                    }
                }
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            }
        }
        if let Some(vxlan) = plugin.vxlan_spec(network)
            && let Err(e) = plugin.dataplane().ensure_vxlan(&vxlan).await
        {
            errors.push(e.to_string());
        }
        match reattach_endpoints(plugin, state, network, named.as_ref()).await {
            Ok(count) => repairs.endpoints += count,
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(links) = &links
        && let Err(e) = remove_leftovers(plugin, state, links, log).await
    {
        errors.push(e.to_string());
    }
    repairs.links_time = started.elapsed();
    if let Err(e) = plugin.firewall().sync(&state.firewall_networks()).await {
        errors.push(e.to_string());
    }
    repairs.rules_time = started.elapsed() - repairs.links_time;
    if errors.is_empty() { Ok(()) } else { Err(crate::driver::PluginError::new(errors.join("; "))) }
}

/// Join commits without waiting for the disk (one fsync less per
/// container), so a crash can lose its record while its veth pair exists.
/// The pair says what the record would have: an endpoint not joined whose
/// host end is in the kernel with this state's owner mark was joined (no
/// other call leaves such a pair behind; a Leave whose deletion a crash cut
/// off is taken for joined too, and then goes with DeleteEndpoint or, when
/// no container claims the pair, after the unclaimed grace). Recorded again,
/// durably, before anything else looks at the joined endpoints.
fn recover_joins(plugin: &Plugin, state: &mut State, links: &[Link], log: &Logger) -> Result<()> {
    let instance = plugin.instance_id();
    let named = by_name(links);
    let ours =
        |veth: &str| named.get(veth).is_some_and(|l| l.kind == LinkKind::Veth && l.owner.as_deref() == Some(instance));
    let recovered: Vec<EndpointRecord> = state
        .endpoints
        .values()
        .filter(|e| !e.joined && ours(&e.host_veth))
        .map(|e| EndpointRecord { joined: true, ..e.clone() })
        .collect();
    if recovered.is_empty() {
        return Ok(());
    }
    plugin.commit(recovered.iter().cloned().map(Change::PutEndpoint).collect())?;
    for endpoint in recovered {
        info!(log, "recorded a Join again (its veth pair is there; a crash lost the record)";
            "endpoint" => short_id(&endpoint.id), "veth" => &endpoint.host_veth);
        state.put_endpoint(endpoint);
    }
    Ok(())
}

/// A dump's links by name: one lookup per bridge or endpoint, where a scan
/// of the dump per endpoint made a start with 1,000 endpoints quadratic.
type ByName<'a> = HashMap<&'a str, &'a Link>;

fn by_name(links: &[Link]) -> ByName<'_> {
    links.iter().map(|l| (l.name.as_str(), l)).collect()
}

/// Whether the bridge, as the dump shows it, is what `ensure_bridge` would
/// make of it: a bridge, up, with the gateway addresses; on a bridge the
/// plugin owns also its MTU, owner mark and route_localnet (an explicit MTU
/// on any). Its pinned MAC address cannot be seen in a dump: it is pinned
/// when the plugin makes or repairs the bridge and stays so.
fn bridge_intact(spec: &BridgeSpec, link: &Link) -> bool {
    let mtu_right = !(spec.owned || spec.mtu_explicit) || link.mtu == spec.mtu;
    let owned_right = !spec.owned
        || (link.owner.as_deref() == Some(spec.instance.as_str()) && link.route_localnet == Some(spec.route_localnet));
    link.kind == LinkKind::Bridge
        && link.up
        && mtu_right
        && owned_right
        && spec.addresses.iter().all(|a| link.addresses.contains(a))
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

/// A joined endpoint as the passes look at it.
struct Joined {
    id: String,
    host_veth: String,
    /// On a swarm network (see [`unclaimed_among`]).
    swarm: bool,
}

/// Joined endpoints with no container: their veth pair is whole in the host
/// namespace (the host end is there and its peer is in this namespace too,
/// under whatever name dockerd gave it back), or, on a swarm network, the
/// pair is gone. The pair goes with its container's namespace: a dockerd
/// killed (not stopped) kills its containers at its next start, and on a
/// swarm network it then knows neither the network nor the endpoint, so it
/// never sends Leave or DeleteEndpoint; the record would hold its address,
/// its published ports (a new task of the same service on this node was
/// refused its host port) and its entry in this node's directory for ever.
/// On a local network dockerd sends them itself at that start, and a pair
/// deleted under a running container is dockerd's endpoint still (its
/// ReleaseAddress would come later): that record stays.
fn unclaimed_among(joined: &[Joined], links: &[Link]) -> BTreeSet<String> {
    let named = by_name(links);
    let unclaimed = |j: &Joined| match named.get(j.host_veth.as_str()) {
        Some(link) => link.kind == LinkKind::Veth && !link.peer_elsewhere,
        None => j.swarm,
    };
    joined.iter().filter(|j| unclaimed(j)).map(|j| j.id.clone()).collect()
}

fn joined_endpoints(state: &State) -> Vec<Joined> {
    let swarm = |network_id: &str| state.networks.get(network_id).is_some_and(|n| n.options.vni.is_some());
    state
        .endpoints
        .values()
        .filter(|e| e.joined)
        .map(|e| Joined { id: e.id.clone(), host_veth: e.host_veth.clone(), swarm: swarm(&e.network_id) })
        .collect()
}

/// Endpoints dockerd forgot: a container removed while the plugin was away
/// (dockerd moves the veth back to the host and drops the endpoint although
/// Leave and DeleteEndpoint failed), or a swarm network's container gone with
/// its dockerd ([`unclaimed_among`]). A joined endpoint unclaimed for the
/// grace period has no container any more: its record, veth, address and
/// rules go. Called under the state lock with links listed under it.
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
        state.remove_endpoint(&endpoint.id);
        plugin.unclaimed().forget(&endpoint.id);
        for (pool, addr) in &released {
            let _ = state.ipam.release_address(pool, *addr);
        }
        plugin.dataplane().delete_link(&endpoint.host_veth).await?;
        repaired("forgotten_endpoint_removed", format!("endpoint {} without container", short_id(&endpoint.id)));
        let why = if links.iter().any(|l| l.name == endpoint.host_veth) {
            "its interface stayed back in the host"
        } else {
            "its veth pair went with the container's namespace; dockerd no longer knows it"
        };
        warn!(log, "removed an endpoint whose container is gone"; "why" => why,
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

/// Removes `rb-` bridges, `rbx-` VXLAN devices (swarm networks') and `rbh-`
/// veths no record knows, but only those this state database made (their
/// owner mark says so) and nothing uses: a
/// veth whose peer is in a container, or a bridge with other ports, stays. So
/// a missing, replaced or empty database (or a second `rustbridge serve` with
/// another state directory) never takes away live containers' networking.
async fn remove_leftovers(plugin: &Plugin, state: &State, links: &[Link], log: &Logger) -> Result<()> {
    let instance = plugin.instance_id();
    let known_bridges: BTreeSet<&str> = state.networks.values().map(|n| n.bridge.as_str()).collect();
    // Every endpoint's names, joined or not: a pair a record names is never a leftover.
    let known_veths: BTreeSet<&str> =
        state.endpoints.values().flat_map(|e| [e.host_veth.as_str(), e.container_veth.as_str()]).collect();
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
    let known_vxlans = Known::of(plugin, state).vxlans;
    for link in links.iter().filter(|l| l.kind == LinkKind::Vxlan && is_owned_vxlan_name(&l.name)) {
        if known_vxlans.contains(&link.name) {
            continue;
        }
        if link.owner.as_deref() == Some(instance) {
            // Its forwarding and neighbour entries go with it.
            plugin.dataplane().delete_link(&link.name).await?;
            repaired("leftover_link_removed", format!("leftover link {}", link.name));
            info!(log, "removed leftover VXLAN device"; "link" => &link.name);
            deleted.insert(link.name.clone());
        } else {
            info!(log, "left alone a VXLAN device no record knows (another state's)"; "link" => &link.name);
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
/// With a dump, only the host ends it shows off their bridge or down are
/// touched (one request each); without one, all of them. Returns how many.
async fn reattach_endpoints(
    plugin: &Plugin,
    state: &State,
    network: &NetworkRecord,
    named: Option<&ByName<'_>>,
) -> Result<usize> {
    let detached = |veth: &str| match named {
        None => true,
        Some(named) => {
            named.get(veth).is_some_and(|l| l.controller.as_deref() != Some(network.bridge.as_str()) || !l.up)
        }
    };
    let mut count = 0;
    for endpoint in state.endpoints.values().filter(|e| e.joined && e.network_id == network.id) {
        if detached(&endpoint.host_veth) {
            plugin.dataplane().attach_to_bridge(&endpoint.host_veth, &network.bridge).await?;
            count += 1;
        }
    }
    Ok(count)
}

/// One periodic pass. The checks run on a snapshot without holding the state
/// lock (dockerd's calls go on meanwhile); only a repair takes it, and looks
/// again under it.
pub async fn pass(plugin: &Plugin, log: &Logger) -> Result<()> {
    pass_at(plugin, log, Instant::now()).await
}

/// [`pass`] as if it ran at `now` (tests step over the grace period).
pub async fn pass_at(plugin: &Plugin, log: &Logger, now: Instant) -> Result<()> {
    // Joins committed since the last pass go to disk (a crash in between is
    // recovered at start-up from the kernel, see `recover_joins`).
    plugin.flush()?;
    let (bridges, networks, joined, known) = {
        let state = plugin.lock_state().await;
        // A swarm network's VXLAN device is checked with its bridge.
        let bridges: Vec<String> = state
            .networks
            .values()
            .flat_map(|n| std::iter::once(n.bridge.clone()).chain(plugin.vxlan_spec(n).map(|v| v.name)))
            .collect();
        (bridges, state.firewall_networks(), joined_endpoints(&state), Known::of(plugin, &state))
    };
    let links = plugin.dataplane().list_links().await?;
    let forget_due = !plugin.unclaimed().observe(unclaimed_among(&joined, &links), now).is_empty();
    let named = by_name(&links);
    let bridge_missing = bridges.iter().any(|b| !named.contains_key(b.as_str()));
    let leftovers = known.leftovers(plugin.instance_id(), &links);
    let rules_intact = plugin.firewall().is_intact(&networks).await?;
    if !bridge_missing && rules_intact && !forget_due && !leftovers {
        return Ok(());
    }
    let mut state = plugin.lock_state().await;
    let mut links = plugin.dataplane().list_links().await?;
    if forget_due {
        forget_gone_containers(plugin, &mut state, &links, now, log).await?;
        links = plugin.dataplane().list_links().await?;
    }
    let named = by_name(&links);
    for network in state.networks.values() {
        if !named.contains_key(network.bridge.as_str()) {
            plugin.dataplane().ensure_bridge(&plugin.bridge_spec(network)).await?;
            reattach_endpoints(plugin, &state, network, Some(&named)).await?;
            repaired("bridge_recreated", format!("bridge {} missing", network.bridge));
            warn!(log, "bridge was missing; recreated it and put its endpoints back"; "bridge" => &network.bridge);
        }
        if let Some(vxlan) = plugin.vxlan_spec(network)
            && !named.contains_key(vxlan.name.as_str())
        {
            plugin.dataplane().ensure_vxlan(&vxlan).await?;
            repaired("vxlan_recreated", format!("VXLAN device {} missing", vxlan.name));
            warn!(log, "VXLAN device was missing; recreated it (the membership task refills its entries)"; "device" => &vxlan.name);
        }
    }
    if Known::of(plugin, &state).leftovers(plugin.instance_id(), &links) {
        remove_leftovers(plugin, &state, &links, log).await?;
    }
    let networks = state.firewall_networks();
    if !plugin.firewall().is_intact(&networks).await? {
        plugin.firewall().sync(&networks).await?;
        repaired("rules_restored", "firewall rules drifted (flushed, reordered or changed)");
        warn!(log, "firewall rules had drifted (flushed, or dockerd restarted); restored");
    }
    Ok(())
}

/// The link names the state accounts for: its bridges, its swarm networks'
/// VXLAN devices and its endpoints' veth pairs (joined or not, as in
/// `remove_leftovers`).
struct Known {
    bridges: BTreeSet<String>,
    vxlans: BTreeSet<String>,
    veths: BTreeSet<String>,
}

impl Known {
    fn of(plugin: &Plugin, state: &State) -> Known {
        Known {
            bridges: state.networks.values().map(|n| n.bridge.clone()).collect(),
            vxlans: state.networks.values().filter_map(|n| plugin.vxlan_spec(n).map(|v| v.name)).collect(),
            veths: state.endpoints.values().flat_map(|e| [e.host_veth.clone(), e.container_veth.clone()]).collect(),
        }
    }

    fn vxlan_is_leftover(&self, instance: &str, link: &Link) -> bool {
        link.kind == LinkKind::Vxlan
            && is_owned_vxlan_name(&link.name)
            && !self.vxlans.contains(&link.name)
            && link.owner.as_deref() == Some(instance)
    }

    fn veth_is_leftover(&self, instance: &str, link: &Link) -> bool {
        link.kind == LinkKind::Veth
            && is_owned_veth_name(&link.name)
            && !self.veths.contains(&link.name)
            && link.owner.as_deref() == Some(instance)
            && !link.peer_elsewhere
    }

    /// Whether the dump shows a link `remove_leftovers` would remove (a
    /// bridge whose ports are all leftovers too counts).
    fn leftovers(&self, instance: &str, links: &[Link]) -> bool {
        let port_is_leftover = |p: &Link| self.veth_is_leftover(instance, p) || self.vxlan_is_leftover(instance, p);
        links.iter().any(|l| {
            port_is_leftover(l)
                || (l.kind == LinkKind::Bridge
                    && is_owned_bridge_name(&l.name)
                    && !self.bridges.contains(&l.name)
                    && l.owner.as_deref() == Some(instance)
                    && !links.iter().any(|p| p.controller.as_deref() == Some(l.name.as_str()) && !port_is_leftover(p)))
        })
    }
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
        crate::memory::give_back();
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
