//! Who carries a swarm network, and which endpoint lives behind which host,
//! learned without a hand-written peer list.
//!
//! - **Hosts**: dockerd's own gossip (libnetwork's NetworkDB, over Swarm's
//!   data-path addresses) knows the nodes that have joined each swarm network
//!   of a global driver: `Peers` of `GET /networks/<id>?verbose=true` on the
//!   node's own dockerd, on managers and workers alike. dockerd's view also
//!   lists the network's named endpoints, but for a remote driver without
//!   their host ("Info": null, measured on 20.10), so it cannot place them.
//! - **Endpoints**: every plugin serves its own endpoints of swarm networks
//!   (address and MAC, per network) on TCP at the VXLAN port number, to the
//!   swarm members only (the firewall); the others read it from each live peer.
//!
//! A background task does both every `RUSTBRIDGE_MEMBERSHIP_SECONDS`, each
//! request bounded, never from a protocol call, and writes the difference to
//! each network's VXLAN device: one flooding entry (00:00:00:00:00:00) per
//! other live peer, and per remote endpoint a forwarding entry to its host
//! and a permanent neighbour (the device answers ARP/ND itself: nothing is
//! learned from the wire). A host that is no longer a live peer, or whose
//! directory cannot be read [`MISSED_READS`] times in a row, loses its
//! entries: a dead host's endpoints go within a bounded time (README).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use slog::{Logger, debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::Scope;
use crate::dataplane::{FLOOD_MAC, FdbEntry, NeighEntry, VxlanEntries};
use crate::driver::Plugin;
use crate::driver::network::mac_from_ip;
use crate::names::short_id;

/// One request to dockerd (connect, send, read the whole answer) gets this long.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers larger than this are refused (a network with thousands of endpoints is a few hundred KiB).
const MAX_ANSWER: u64 = 16 << 20;

/// A host whose directory cannot be read this many passes in a row is taken
/// as gone (all its entries are removed, even while dockerd still lists it:
/// NetworkDB keeps a failed node for long). One miss (a plugin restarting)
/// changes nothing.
pub const MISSED_READS: u32 = 3;

/// What dockerd says about one network: its live peers' addresses and its
/// endpoints (address, host) where dockerd knows the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkView {
    pub peers: BTreeSet<IpAddr>,
    pub endpoints: Vec<(IpAddr, IpAddr)>,
}

/// A node's endpoints of swarm networks: network ID → (address, MAC).
pub type Directory = BTreeMap<String, Vec<(IpAddr, String)>>;

/// What is known of a peer's directory in this pass.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerDirectory {
    Read(Directory),
    /// Not readable now, but not for long enough to give the host up: its entries stay.
    Missed,
    /// Not readable for [`MISSED_READS`] passes: the host is taken as dead
    /// and all its entries go, flooding included, until it answers again.
    Gone,
}

/// Parses `GET /networks/<id>?verbose=true`. Peers whose address dockerd
/// does not know ("unknown": a failed node) are not live.
pub fn parse_network_view(body: &Value) -> NetworkView {
    let peers = body
        .get("Peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("IP").and_then(Value::as_str)?.parse().ok())
        .collect();
    let mut endpoints = Vec::new();
    if let Some(services) = body.get("Services").and_then(Value::as_object) {
        for service in services.values() {
            for task in service.get("Tasks").and_then(Value::as_array).into_iter().flatten() {
                let ip = task.get("EndpointIP").and_then(Value::as_str).and_then(|s| s.parse::<IpAddr>().ok());
                let host = task
                    .get("Info")
                    .and_then(|i| i.get("Host IP"))
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<IpAddr>().ok());
                if let (Some(ip), Some(host)) = (ip, host) {
                    endpoints.push((ip, host));
                }
            }
        }
    }
    endpoints.sort();
    endpoints.dedup();
    NetworkView { peers, endpoints }
}

/// The entries a network's VXLAN device should hold on the node whose
/// data-path address is `self_address`: flooding to every other live peer;
/// each remote endpoint behind its host, as its host's directory says (or
/// as dockerd says, where it knows the host); a host whose directory was
/// missed keeps what `current` has for it.
pub fn plan(
    network_id: &str,
    view: &NetworkView,
    self_address: Option<IpAddr>,
    directories: &BTreeMap<IpAddr, PeerDirectory>,
    current: &VxlanEntries,
) -> VxlanEntries {
    // A peer whose directory has been unreadable for long is taken as dead, whatever dockerd still lists.
    let remote: BTreeSet<IpAddr> = view
        .peers
        .iter()
        .copied()
        .filter(|p| Some(*p) != self_address && directories.get(p) != Some(&PeerDirectory::Gone))
        .collect();
    let mut fdb: Vec<FdbEntry> = remote.iter().map(|&dst| FdbEntry { mac: FLOOD_MAC.to_string(), dst }).collect();
    let mut neigh = Vec::new();
    let mut placed = BTreeSet::new();
    for &host in &remote {
        match directories.get(&host) {
            Some(PeerDirectory::Read(directory)) => {
                for (ip, mac) in directory.get(network_id).into_iter().flatten() {
                    fdb.push(FdbEntry { mac: mac.clone(), dst: host });
                    neigh.push(NeighEntry { ip: *ip, mac: mac.clone() });
                    placed.insert(*ip);
                }
            }
            Some(PeerDirectory::Missed) => {
                let kept: Vec<FdbEntry> =
                    current.fdb.iter().filter(|e| e.dst == host && e.mac != FLOOD_MAC).cloned().collect();
                for entry in kept {
                    for n in current.neigh.iter().filter(|n| n.mac == entry.mac) {
                        neigh.push(n.clone());
                        placed.insert(n.ip);
                    }
                    fdb.push(entry);
                }
            }
            Some(PeerDirectory::Gone) | None => {}
        }
    }
    // dockerd's own knowledge, where it has the host (Docker's overlay fills it; kept for any driver that does).
    for &(ip, host) in &view.endpoints {
        if remote.contains(&host) && !placed.contains(&ip) {
            let mac = mac_from_ip(ip);
            fdb.push(FdbEntry { mac: mac.clone(), dst: host });
            neigh.push(NeighEntry { ip, mac });
        }
    }
    fdb.sort();
    fdb.dedup();
    neigh.sort();
    neigh.dedup_by(|a, b| a.ip == b.ip);
    VxlanEntries { fdb, neigh }
}

/// What to remove and what to add to go from `current` to `desired`.
/// A MAC moving to another host is a removal plus an addition.
pub fn diff(current: &VxlanEntries, desired: &VxlanEntries) -> (VxlanEntries, VxlanEntries) {
    let remove = VxlanEntries {
        fdb: current.fdb.iter().filter(|e| !desired.fdb.contains(e)).cloned().collect(),
        neigh: current.neigh.iter().filter(|e| !desired.neigh.contains(e)).cloned().collect(),
    };
    let add = VxlanEntries {
        fdb: desired.fdb.iter().filter(|e| !current.fdb.contains(e)).cloned().collect(),
        neigh: desired.neigh.iter().filter(|e| !current.neigh.contains(e)).cloned().collect(),
    };
    (remove, add)
}

/// Swarm networks' background tasks, only for the global scope (which needs
/// dockerd's API socket, `config::resolve_scope`): [`run`] and [`serve_directory`].
/// Without it nothing runs, nothing listens and dockerd is never asked.
pub fn start(plugin: &Arc<Plugin>, scope: Scope, log: &Logger) -> Vec<tokio::task::JoinHandle<()>> {
    if scope != Scope::Global {
        info!(log, "swarm membership: off (scope local; no dockerd API socket is read)");
        return Vec::new();
    }
    let settings = plugin.swarm_settings();
    info!(log, "swarm membership: on"; "docker_socket" => %settings.docker_socket.display(),
        "every_seconds" => settings.poll.as_secs(), "port" => settings.vxlan_port);
    vec![tokio::spawn(run(plugin.clone(), log.clone())), tokio::spawn(serve_directory(plugin.clone(), log.clone()))]
}

/// The background task: every period, each swarm network's entries brought
/// in line with dockerd's view. Runs until aborted.
pub async fn run(plugin: Arc<Plugin>, log: Logger) {
    let period = plugin.swarm_settings().poll;
    let mut failing = false;
    loop {
        match pass(&plugin, &log).await {
            Ok(()) => {
                if failing {
                    info!(log, "swarm membership: dockerd answers again");
                }
                failing = false;
            }
            // Entries are kept as they are while dockerd cannot be asked.
            Err(e) if !failing => {
                warn!(log, "swarm membership: entries kept as they are until dockerd answers"; "error" => %e);
                failing = true;
            }
            Err(e) => debug!(log, "swarm membership: still failing"; "error" => %e),
        }
        tokio::time::sleep(period).await;
    }
}

/// One pass over the swarm networks this node holds.
pub async fn pass(plugin: &Plugin, log: &Logger) -> Result<(), String> {
    let networks: Vec<(String, String)> = {
        let state = plugin.lock_state().await;
        state.networks.values().filter_map(|n| plugin.vxlan_spec(n).map(|v| (n.id.clone(), v.name))).collect()
    };
    if networks.is_empty() {
        return admit_members(plugin, None).await;
    }
    let socket = plugin.swarm_settings().docker_socket.clone();
    if plugin.swarm_view().self_address.is_none() {
        let info = docker_get(&socket, "/info").await?;
        if let Some(addr) = info.pointer("/Swarm/NodeAddr").and_then(Value::as_str).and_then(|a| a.parse().ok()) {
            plugin.swarm_view().self_address = Some(addr);
        }
    }
    let self_address = plugin.swarm_view().self_address;
    let mut errors = Vec::new();
    let mut views = Vec::new();
    let mut unknown = BTreeSet::new();
    for (id, device) in networks {
        match network_view(&socket, &id).await {
            Ok(Some(view)) => views.push((id, device, view)),
            Ok(None) => {
                unknown.insert(id.clone());
                views.push((id, device, NetworkView::default()));
            }
            Err(e) => errors.push(e),
        }
    }
    for (id, since) in note_unknown(plugin, &unknown, log) {
        match plugin.forget_swarm_network(&id, since).await {
            Ok(true) => warn!(log, "swarm membership: removed a network dockerd has not known here for {}s \
                (its endpoints, bridge, VXLAN device, rules and local pools)", since.elapsed().as_secs();
                "network" => short_id(&id)),
            Ok(false) => {}
            Err(e) => errors.push(format!("removing network {} that dockerd does not know: {e}", short_id(&id))),
        }
    }
    let peers: BTreeSet<IpAddr> =
        views.iter().flat_map(|(_, _, v)| v.peers.iter().copied()).filter(|p| Some(*p) != self_address).collect();
    // Only when dockerd answered for every network: a partial view would shut members out.
    if errors.is_empty()
        && let Err(e) = admit_members(plugin, Some(peers.iter().copied().collect())).await
    {
        errors.push(e);
    }
    let directories = read_directories(plugin, &peers).await;
    for (id, device, view) in views {
        if let Err(e) =
            apply(plugin, &device, log, &id, |current| plan(&id, &view, self_address, &directories, current)).await
        {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// Keeps, for each network dockerd answered "not found" for, since when
/// (logged once, when it starts); returns those unknown for the plugin's
/// `forget_after` (the membership pass then removes them).
fn note_unknown(plugin: &Plugin, unknown: &BTreeSet<String>, log: &Logger) -> Vec<(String, Instant)> {
    let forget_after = plugin.swarm_settings().forget_after;
    let mut view = plugin.swarm_view();
    view.unknown_to_dockerd.retain(|id, _| unknown.contains(id));
    for id in unknown {
        view.unknown_to_dockerd.entry(id.clone()).or_insert_with(|| {
            warn!(log, "swarm membership: dockerd does not know this network here (a missed DeleteNetwork?); \
                its device gets no peers, and it is removed if that lasts {}s", forget_after.as_secs();
                "network" => short_id(id));
            Instant::now()
        });
    }
    view.unknown_to_dockerd
        .iter()
        .filter(|(_, since)| since.elapsed() >= forget_after)
        .map(|(id, since)| (id.clone(), *since))
        .collect()
}

/// The firewall's swarm rule group, written when the members change.
async fn admit_members(plugin: &Plugin, members: Option<Vec<IpAddr>>) -> Result<(), String> {
    if plugin.swarm_view().firewall_members.as_ref() == Some(&members) {
        return Ok(());
    }
    let port = plugin.swarm_settings().vxlan_port;
    plugin.firewall().sync_swarm_members(port, members.as_deref()).await.map_err(|e| e.to_string())?;
    plugin.swarm_view().firewall_members = Some(members);
    Ok(())
}

/// Every peer's directory, read at once, each bounded; misses counted per peer.
async fn read_directories(plugin: &Plugin, peers: &BTreeSet<IpAddr>) -> BTreeMap<IpAddr, PeerDirectory> {
    let port = plugin.swarm_settings().vxlan_port;
    let reads =
        futures::future::join_all(peers.iter().map(|&peer| async move { (peer, read_directory(peer, port).await) }))
            .await;
    let mut view = plugin.swarm_view();
    view.missed_reads.retain(|peer, _| peers.contains(peer));
    reads
        .into_iter()
        .map(|(peer, read)| {
            let known = match read {
                Ok(directory) => {
                    view.missed_reads.remove(&peer);
                    PeerDirectory::Read(directory)
                }
                Err(_) => {
                    let missed = view.missed_reads.entry(peer).or_insert(0);
                    *missed += 1;
                    if *missed >= MISSED_READS { PeerDirectory::Gone } else { PeerDirectory::Missed }
                }
            };
            (peer, known)
        })
        .collect()
}

/// This node's endpoints of swarm networks (joined or not: dockerd gives the
/// address at CreateEndpoint and the container follows at once).
pub async fn local_directory(plugin: &Plugin) -> Directory {
    let state = plugin.lock_state().await;
    let mut directory = Directory::new();
    for endpoint in state.endpoints.values() {
        let Some(network) = state.networks.get(&endpoint.network_id) else { continue };
        if network.options.vni.is_none() {
            continue;
        }
        for addr in endpoint.address.iter().chain(&endpoint.address_v6) {
            directory.entry(network.id.clone()).or_default().push((addr.addr(), endpoint.mac.clone()));
        }
    }
    directory
}

/// Serves this node's directory on TCP at the VXLAN port number: each
/// connection gets the JSON and is closed (nothing is read from it). The
/// firewall admits swarm members only. Runs until aborted.
pub async fn serve_directory(plugin: Arc<Plugin>, log: Logger) {
    let port = plugin.swarm_settings().vxlan_port;
    let listener = loop {
        match tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).await {
            Ok(l) => break l,
            Err(_) => match tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await {
                Ok(l) => break l,
                Err(e) => {
                    warn!(log, "swarm membership: cannot serve this node's endpoints; retrying"; "port" => port, "error" => %e);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            },
        }
    };
    info!(log, "swarm membership: serving this node's endpoints"; "tcp_port" => port);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&local_directory(&plugin).await).unwrap_or_default();
            let _ = tokio::time::timeout(DOCKER_TIMEOUT, stream.write_all(&body)).await;
        });
    }
}

/// A peer's directory, bounded by [`DOCKER_TIMEOUT`] as a whole.
async fn read_directory(peer: IpAddr, port: u16) -> Result<Directory, String> {
    let read = async {
        let stream = tokio::net::TcpStream::connect((peer, port)).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        serde_json::from_slice::<Directory>(&raw).map_err(|e| format!("malformed directory: {e}"))
    };
    tokio::time::timeout(DOCKER_TIMEOUT, read)
        .await
        .map_err(|_| format!("directory of {peer}: no answer within {}s", DOCKER_TIMEOUT.as_secs()))?
        .map_err(|e| format!("directory of {peer}: {e}"))
}

/// Writes the difference between the device's entries and `desired`.
/// A device that is gone (the network was deleted meanwhile) is left alone.
pub async fn apply(
    plugin: &Plugin,
    device: &str,
    log: &Logger,
    id: &str,
    desired: impl FnOnce(&VxlanEntries) -> VxlanEntries,
) -> Result<(), String> {
    let dp = plugin.dataplane();
    if !dp.link_exists(device).await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let current = dp.vxlan_entries(device).await.map_err(|e| e.to_string())?;
    let desired = desired(&current);
    let (remove, add) = diff(&current, &desired);
    if remove == VxlanEntries::default() && add == VxlanEntries::default() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for e in &remove.neigh {
        dp.del_neigh(device, e).await.unwrap_or_else(|e| errors.push(e.to_string()));
    }
    for e in &remove.fdb {
        dp.del_fdb(device, e).await.unwrap_or_else(|e| errors.push(e.to_string()));
    }
    for e in &add.fdb {
        dp.add_fdb(device, e).await.unwrap_or_else(|e| errors.push(e.to_string()));
    }
    for e in &add.neigh {
        dp.add_neigh(device, e).await.unwrap_or_else(|e| errors.push(e.to_string()));
    }
    info!(log, "swarm membership: entries updated"; "network" => short_id(id), "device" => device,
        "removed" => remove.fdb.len() + remove.neigh.len(), "added" => add.fdb.len() + add.neigh.len(),
        "peers" => desired.fdb.iter().filter(|e| e.mac == FLOOD_MAC).count());
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// dockerd's view of one swarm network; `None` when dockerd answers that it
/// does not know it (404). A node that missed DeleteNetwork keeps the
/// network's record and device: dockerd's "not found" is an answer, not a
/// failure, so the network contributes no peers and does not hold back the
/// member update of the others (which waits for an answer on every network).
async fn network_view(socket: &Path, id: &str) -> Result<Option<NetworkView>, String> {
    match docker_exchange(socket, &format!("/networks/{id}?verbose=true")).await? {
        (404, _, _) => Ok(None),
        answer => Ok(Some(parse_network_view(&json_body(answer)?))),
    }
}

/// `GET path` on dockerd's API socket, bounded by [`DOCKER_TIMEOUT`] as a whole.
pub async fn docker_get(socket: &Path, path: &str) -> Result<Value, String> {
    json_body(docker_exchange(socket, path).await?)
}

/// A 200 answer's JSON body; any other status is an error carrying it.
fn json_body((code, what, body): (u16, String, String)) -> Result<Value, String> {
    if code != 200 {
        return Err(format!("{what}: status {code}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("{what}: malformed JSON: {e}"))
}

/// One `GET path` exchange: status, what was asked (for errors), body.
async fn docker_exchange(socket: &Path, path: &str) -> Result<(u16, String, String), String> {
    let what = format!("GET {path} on {}", socket.display());
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| e.to_string())?;
        let head = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        crate::cli::parse_response(&raw)
    };
    let (code, body) = tokio::time::timeout(DOCKER_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{what}: no answer within {}s", DOCKER_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{what}: {e}"))?;
    Ok((code, what, body))
}

#[cfg(test)]
mod tests;
