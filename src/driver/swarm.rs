//! Swarm (global-scope) calls: AllocateNetwork/FreeNetwork at the manager,
//! DiscoverNew/DiscoverDelete on every node, and what a swarm network needs
//! on a node (its VXLAN device, its MTU, its endpoints' MACs).
//!
//! The VNI is decided at the manager by AllocateNetwork and reaches every
//! node inside CreateNetwork's `com.docker.network.generic` (dockerd passes
//! on exactly what AllocateNetwork answered). dockerd replays AllocateNetwork
//! at every manager start with its earlier answer merged into `Options`, so
//! the answer is the VNI found there; a new network's VNI is derived from its
//! ID (the same at any manager) and moved on past VNIs already allocated.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Plugin, PluginError, Result};
use crate::api::{self, AllocateNetworkRequest, AllocateNetworkResponse, DiscoveryRequest, NetworkRequest};
use crate::dataplane::VxlanSpec;
use crate::names::{short_id as short, vxlan_name};
use crate::options::{VXLAN_VNI, parse_network_options, parse_vni};
use crate::state::NetworkRecord;

/// Docker's overlay uses 4789 and Linux's own default is 8472 (flannel's too);
/// 4790 is VXLAN-GPE's. This one is none of them.
pub const DEFAULT_VXLAN_PORT: u16 = 4799;
/// VXLAN over IPv4 adds 50 bytes (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8).
pub const VXLAN_OVERHEAD: u32 = 50;
/// VNIs below this are left to other users (Docker's overlay starts at 4096 too).
pub const FIRST_AUTO_VNI: u32 = 4096;
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// How long dockerd must not know a swarm network this node holds before the
/// plugin removes it (a node that missed DeleteNetwork). Long enough for a
/// restarted dockerd to reach its manager and create the network again.
pub const FORGET_UNKNOWN_AFTER: Duration = Duration::from_secs(60);

/// The node-wide settings of swarm networks (plugin settings, `config.rs`).
#[derive(Debug, Clone)]
pub struct SwarmSettings {
    pub vxlan_port: u16,
    /// dockerd's API socket, read by the membership task (never by a call).
    pub docker_socket: std::path::PathBuf,
    /// How often the membership task reads dockerd's view of each network.
    pub poll: Duration,
    /// A swarm network dockerd has answered "not found" for this long, with
    /// no protocol call naming it meanwhile, is forgotten ([`Plugin::forget_swarm_network`]).
    pub forget_after: Duration,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        SwarmSettings {
            vxlan_port: DEFAULT_VXLAN_PORT,
            docker_socket: "/var/run/docker.sock".into(),
            poll: Duration::from_secs(2),
            forget_after: FORGET_UNKNOWN_AFTER,
        }
    }
}

/// What the plugin learns about the swarm, in memory only: the node's own
/// data-path address (DiscoverNew `Self`, or dockerd's `/info`), and the VNIs
/// this manager answered (rebuilt by dockerd's replay at every manager start).
#[derive(Debug, Default)]
pub struct SwarmView {
    pub self_address: Option<IpAddr>,
    pub allocations: BTreeMap<String, u32>,
    /// Peers whose endpoint directory could not be read, passes in a row.
    pub missed_reads: BTreeMap<IpAddr, u32>,
    /// The members last written to the firewall's swarm rule group (`Some(None)`: removed).
    pub firewall_members: Option<Option<Vec<IpAddr>>>,
    /// dockerd registered the IPAM driver (`/IpamDriver.GetCapabilities`, at
    /// every dockerd start) since the swarm networks' local pools were last
    /// armed for a replay ([`Plugin::arm_local_replay_if_due`]).
    pub ipam_registered: bool,
    /// Swarm networks in the state that dockerd answered "not found" for at
    /// the last pass, each since when (logged once when they become so; a
    /// protocol call naming one moves its time on, see [`Plugin::note_network_call`]).
    pub unknown_to_dockerd: BTreeMap<String, Instant>,
}

impl Plugin {
    pub fn swarm_settings(&self) -> &SwarmSettings {
        &self.swarm_settings
    }

    pub fn swarm_view(&self) -> std::sync::MutexGuard<'_, SwarmView> {
        self.swarm_view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Idempotent: a replay (its `Options` carry the earlier answer) gets the
    /// same VNI. User options are checked here, so that a bad one is refused
    /// at `docker network create` on the manager, and echoed back: only what
    /// this returns reaches the nodes.
    pub fn allocate_network(&self, req: AllocateNetworkRequest) -> Result<AllocateNetworkResponse> {
        crate::request::validate_id("NetworkID", &req.network_id)?;
        let mut options = req.options.unwrap_or_default();
        let generic: serde_json::Map<String, Value> =
            options.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let mut wrapped = api::Options::new();
        wrapped.insert(api::OPT_GENERIC.to_string(), Value::Object(generic));
        parse_network_options(Some(&wrapped))?;
        let mut view = self.swarm_view();
        let vni = match options.get(VXLAN_VNI) {
            Some(given) => {
                let vni = parse_vni(VXLAN_VNI, given)?;
                if let Some((other, _)) = view.allocations.iter().find(|(id, v)| **v == vni && **id != req.network_id) {
                    return Err(PluginError::new(format!(
                        "option {VXLAN_VNI}: VNI {vni} is already network {}'s",
                        short(other)
                    )));
                }
                vni
            }
            None => match view.allocations.get(&req.network_id) {
                Some(&known) => known,
                None => pick_vni(&req.network_id, |v| view.allocations.values().any(|&a| a == v)),
            },
        };
        view.allocations.insert(req.network_id.clone(), vni);
        options.insert(VXLAN_VNI.to_string(), vni.to_string());
        Ok(AllocateNetworkResponse { options })
    }

    pub fn free_network(&self, req: NetworkRequest) -> Result<()> {
        crate::request::validate_id("NetworkID", &req.network_id)?;
        self.swarm_view().allocations.remove(&req.network_id);
        Ok(())
    }

    /// Node discovery: only `Self` is used (the node's data-path address).
    /// Peers come from the membership task, since dockerd never reports the
    /// nodes that were already there when the plugin started.
    pub fn discover(&self, req: DiscoveryRequest, new: bool) -> Result<()> {
        const NODE_DISCOVERY: i64 = 1;
        if req.discovery_type != NODE_DISCOVERY {
            return Ok(());
        }
        let is_self = req.discovery_data.get("Self").and_then(Value::as_bool).unwrap_or(false);
        let address = req.discovery_data.get("Address").and_then(Value::as_str).and_then(|a| a.parse::<IpAddr>().ok());
        if is_self
            && new
            && let Some(address) = address
        {
            self.swarm_view().self_address = Some(address);
        }
        Ok(())
    }

    /// dockerd registers the IPAM driver: it (re)started. Noted without the
    /// state lock (the handshake is answered at once, even during the
    /// start-up repair); the next IPAM call arms the replay.
    pub fn note_ipam_registration(&self) {
        self.swarm_view().ipam_registered = true;
    }

    /// Once after each dockerd start, before the IPAM call that follows it:
    /// a node re-creating a swarm network asks for its pool and addresses
    /// again in the local space, and after an unclean stop (dockerd killed,
    /// or stopped with live-restore: measured, README) they are still held.
    /// Those of this node's swarm networks are answered again, once each.
    pub(super) fn arm_local_replay_if_due(&self, state: &mut super::State) {
        if !std::mem::take(&mut self.swarm_view().ipam_registered) {
            return;
        }
        let swarm_pools: Vec<ipnet::IpNet> = state
            .networks
            .values()
            .filter(|n| n.options.vni.is_some())
            .flat_map(|n| n.ipv4.iter().chain(&n.ipv6).map(|s| s.pool))
            .collect();
        state.ipam.arm_local_replay(&swarm_pools);
    }

    /// A protocol call named `network_id` (CreateNetwork, CreateEndpoint,
    /// Join): dockerd uses it, so a "not found" seen before is no reason to
    /// forget it; its time starts again. Noted before the state lock is
    /// taken, so a forget that takes the lock later sees it.
    pub fn note_network_call(&self, network_id: &str) {
        if let Some(since) = self.swarm_view().unknown_to_dockerd.get_mut(network_id) {
            *since = Instant::now();
        }
    }

    /// Removes a swarm network dockerd has not known since `since` (checked
    /// again under the state lock: a call naming it meanwhile keeps it), as
    /// DeleteNetwork would: its endpoints, VXLAN device, bridge and rules,
    /// and this node's local-space pools of its subnets (rustbridge's IPAM;
    /// dockerd asks for them again if it ever creates the network here).
    /// Returns whether it was removed.
    pub async fn forget_swarm_network(&self, network_id: &str, since: Instant) -> Result<bool> {
        let mut txn = self.begin().await?;
        let still_unknown = self.swarm_view().unknown_to_dockerd.get(network_id) == Some(&since);
        let Some(record) = txn.state().networks.get(network_id).filter(|_| still_unknown).cloned() else {
            return txn.finish(Ok(false)).await;
        };
        let subnets: Vec<ipnet::IpNet> = record.ipv4.iter().chain(&record.ipv6).map(|s| s.pool).collect();
        let pools: Vec<String> = txn
            .state()
            .ipam
            .pools()
            .filter(|p| p.address_space == crate::ipam::LOCAL_ADDRESS_SPACE && subnets.contains(&p.pool))
            .map(|p| p.id.clone())
            .collect();
        for pool in pools {
            txn.record(crate::state::Change::DeletePool(pool.clone()));
            txn.record(crate::state::Change::DeletePoolAddresses(pool));
        }
        let outcome = self.delete_network_in(&mut txn, network_id).await.map(|()| true);
        let removed = txn.finish(outcome).await?;
        self.swarm_view().unknown_to_dockerd.remove(network_id);
        Ok(removed)
    }

    /// The VXLAN device of a swarm network (None for a local network).
    pub fn vxlan_spec(&self, record: &NetworkRecord) -> Option<VxlanSpec> {
        let vni = record.options.vni?;
        Some(VxlanSpec {
            name: vxlan_name(&record.id),
            vni,
            port: self.swarm_settings.vxlan_port,
            mtu: record.options.mtu,
            bridge: record.bridge.clone(),
            instance: self.store.instance_id().to_string(),
        })
    }

    /// A swarm network's MTU: the underlay's less the encapsulation, or the
    /// user's if it fits.
    pub(super) async fn swarm_mtu(&self, requested: Option<u32>) -> Result<u32> {
        let local = self.swarm_view().self_address;
        let underlay = self.dataplane.underlay_mtu(local).await?;
        let most = underlay.saturating_sub(VXLAN_OVERHEAD);
        match requested {
            Some(mtu) if mtu > most => Err(PluginError::new(format!(
                "option {}: {mtu} does not fit the underlay: its MTU is {underlay}, less {VXLAN_OVERHEAD} bytes of VXLAN encapsulation leaves at most {most}",
                crate::options::MTU
            ))),
            Some(mtu) => Ok(mtu),
            None => Ok(most),
        }
    }
}

/// The VNI a new network gets: derived from its ID (FNV-1a, so any manager
/// picks the same), moved on past any VNI `taken` says is used.
pub fn pick_vni(network_id: &str, taken: impl Fn(u32) -> bool) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in network_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let span = MAX_VNI - FIRST_AUTO_VNI + 1;
    let mut vni = FIRST_AUTO_VNI + hash % span;
    while taken(vni) {
        vni = if vni == MAX_VNI { FIRST_AUTO_VNI } else { vni + 1 };
    }
    vni
}

#[cfg(test)]
mod tests;
