//! An in-memory data plane for tests (see `crate::testing`): it keeps links
//! like the kernel would, records every call made to it, and can be told to
//! fail an operation or to make it slow.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;

use super::{
    BridgeOutcome, BridgeSpec, DataPlane, DataPlaneError, FLOOD_MAC, FdbEntry, Link, LinkKind, NeighEntry, Result,
    VethSpec, VxlanEntries, VxlanSpec,
};
use crate::firewall::{FwPort, Proto};

#[derive(Debug, Clone, PartialEq)]
pub struct FakeLink {
    pub kind: LinkKind,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub controller: Option<String>,
    pub up: bool,
    /// The other end of a veth pair: deleting either end deletes both. A peer
    /// named here but absent from the map is in another namespace (a container's).
    pub peer: Option<String>,
    /// The instance ID of the owner mark.
    pub owner: Option<String>,
    pub route_localnet: bool,
    /// A VXLAN device's VNI and port.
    pub vxlan: Option<(u32, u16)>,
    /// A VXLAN device's forwarding entries and neighbours (gone with the device).
    pub entries: VxlanEntries,
}

impl FakeLink {
    pub fn bridge() -> FakeLink {
        FakeLink {
            kind: LinkKind::Bridge,
            mtu: 1500,
            addresses: vec![],
            controller: None,
            up: false,
            peer: None,
            owner: None,
            route_localnet: false,
            vxlan: None,
            entries: VxlanEntries::default(),
        }
    }
}

#[derive(Default)]
pub struct FakeDataPlane {
    pub links: Mutex<BTreeMap<String, FakeLink>>,
    pub host_prefixes: Mutex<Vec<IpNet>>,
    /// Name of an operation ("create_veth", "ensure_bridge") that fails once.
    pub fail_next: Mutex<Option<&'static str>>,
    pub ipv6_forwarding: Mutex<bool>,
    /// The host's ephemeral port range; the kernel's default when None.
    pub ephemeral_ports: Mutex<Option<RangeInclusive<u16>>>,
    /// Host ports a "host service" listens on: (protocol, port).
    pub busy_ports: Mutex<BTreeSet<(Proto, u16)>>,
    /// What `underlay_mtu` answers (1500 when None).
    pub underlay_mtu: Mutex<Option<u32>>,
    /// The state of the deterministic random generator (MAC addresses).
    pub random_state: Mutex<u64>,
    /// Every call, in order, as "operation name" (see [`FakeDataPlane::calls`]).
    calls: Mutex<Vec<String>>,
    /// Operations that take this long (each call) before doing their work.
    delays: Mutex<BTreeMap<&'static str, Duration>>,
    /// Link indexes given out so far, by name; a link made again gets a new one.
    indexes: Mutex<BTreeMap<String, u32>>,
    last_index: Mutex<u32>,
}

impl FakeDataPlane {
    /// Records the call, waits for an injected delay, then fails it if told to.
    async fn enter(&self, op: &'static str, name: &str) -> Result<()> {
        self.calls.lock().unwrap().push(format!("{op} {name}"));
        let delay = self.delays.lock().unwrap().get(op).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut fail = self.fail_next.lock().unwrap();
        if *fail == Some(op) {
            *fail = None;
            return Err(DataPlaneError::new(op, name, "injected failure"));
        }
        Ok(())
    }

    /// The next call of `op` fails (once).
    pub fn fail_once(&self, op: &'static str) {
        *self.fail_next.lock().unwrap() = Some(op);
    }

    /// Every later call of `op` takes `delay` first (Duration::ZERO: no delay).
    pub fn delay(&self, op: &'static str, delay: Duration) {
        self.delays.lock().unwrap().insert(op, delay);
    }

    /// The calls made so far, as "operation name" ("create_veth rbh-…").
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn link(&self, name: &str) -> Option<FakeLink> {
        self.links.lock().unwrap().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.links.lock().unwrap().keys().cloned().collect()
    }

    /// The calls made so far of one operation (its names).
    pub fn calls_of(&self, op: &str) -> Vec<String> {
        self.calls().iter().filter_map(|c| c.strip_prefix(op)?.strip_prefix(' ').map(str::to_string)).collect()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// A link gone or made anew: its next index is a new one.
    fn forget_index(&self, name: &str) {
        self.indexes.lock().unwrap().remove(name);
    }

    fn index_of(&self, name: &str) -> u32 {
        let mut indexes = self.indexes.lock().unwrap();
        *indexes.entry(name.to_string()).or_insert_with(|| {
            let mut last = self.last_index.lock().unwrap();
            *last += 1;
            *last
        })
    }

    fn remove_link(&self, name: &str) {
        let mut links = self.links.lock().unwrap();
        if let Some(FakeLink { peer: Some(peer), .. }) = links.remove(name) {
            links.remove(&peer);
            self.forget_index(&peer);
        }
        self.forget_index(name);
    }
}

#[async_trait]
impl DataPlane for FakeDataPlane {
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<BridgeOutcome> {
        self.enter("ensure_bridge", &spec.name).await?;
        let mut links = self.links.lock().unwrap();
        let created = !links.contains_key(&spec.name);
        let link = links.entry(spec.name.clone()).or_insert_with(FakeLink::bridge);
        if link.kind != LinkKind::Bridge {
            return Err(DataPlaneError::new("create bridge", &spec.name, "a non-bridge link has that name"));
        }
        if created || spec.owned || spec.mtu_explicit {
            link.mtu = spec.mtu;
        }
        if created {
            self.forget_index(&spec.name);
        }
        if created || spec.owned {
            link.route_localnet = spec.route_localnet;
            link.owner = Some(spec.instance.clone());
        }
        let mut added = Vec::new();
        for addr in &spec.addresses {
            if !link.addresses.contains(addr) {
                link.addresses.push(*addr);
                added.push(*addr);
            }
        }
        link.up = true;
        Ok(BridgeOutcome { created, added })
    }

    async fn remove_bridge_addresses(&self, name: &str, addresses: &[IpNet]) -> Result<()> {
        self.enter("remove_bridge_addresses", name).await?;
        if let Some(link) = self.links.lock().unwrap().get_mut(name) {
            link.addresses.retain(|a| !addresses.contains(a));
        }
        Ok(())
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<()> {
        self.enter("create_veth", &spec.host_name).await?;
        let mut links = self.links.lock().unwrap();
        if !links.contains_key(&spec.bridge) {
            return Err(DataPlaneError::new(
                "attach veth",
                &spec.host_name,
                format!("bridge {} not found", spec.bridge),
            ));
        }
        for name in [&spec.host_name, &spec.peer_name] {
            if links.contains_key(name) {
                return Err(DataPlaneError::new("create veth", name, "File exists (os error 17)")
                    .with_errno(Some(super::EEXIST)));
            }
        }
        let veth = |controller: Option<String>, up, peer: &String, owner: Option<String>| FakeLink {
            kind: LinkKind::Veth,
            mtu: spec.mtu,
            addresses: vec![],
            controller,
            up,
            peer: Some(peer.clone()),
            owner,
            route_localnet: false,
            vxlan: None,
            entries: VxlanEntries::default(),
        };
        let host = veth(Some(spec.bridge.clone()), true, &spec.peer_name, Some(spec.instance.clone()));
        links.insert(spec.host_name.clone(), host);
        links.insert(spec.peer_name.clone(), veth(None, false, &spec.host_name, None));
        self.forget_index(&spec.host_name);
        self.forget_index(&spec.peer_name);
        Ok(())
    }

    async fn attach_to_bridge(&self, link: &str, bridge: &str) -> Result<()> {
        self.enter("attach_to_bridge", link).await?;
        let mut links = self.links.lock().unwrap();
        if !links.contains_key(bridge) {
            return Err(DataPlaneError::new("attach to bridge", link, format!("bridge {bridge} not found")));
        }
        if let Some(l) = links.get_mut(link) {
            l.controller = Some(bridge.to_string());
            l.up = true;
        }
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        self.enter("delete_link", name).await?;
        self.remove_link(name);
        Ok(())
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        self.enter("link_index", name).await?;
        let exists = self.links.lock().unwrap().contains_key(name);
        Ok(exists.then(|| self.index_of(name)))
    }

    async fn delete_link_index(&self, index: u32, name: &str) -> Result<()> {
        self.enter("delete_link_index", name).await?;
        let current = self.indexes.lock().unwrap().iter().find(|(_, i)| **i == index).map(|(n, _)| n.clone());
        if let Some(current) = current {
            self.remove_link(&current);
        }
        Ok(())
    }

    async fn link_exists(&self, name: &str) -> Result<bool> {
        self.enter("link_exists", name).await?;
        Ok(self.links.lock().unwrap().contains_key(name))
    }

    async fn list_links(&self) -> Result<Vec<Link>> {
        self.enter("list_links", "all").await?;
        let links = self.links.lock().unwrap();
        Ok(links.iter().map(|(name, l)| describe(&links, name, l)).collect())
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        self.enter("link", name).await?;
        let links = self.links.lock().unwrap();
        Ok(links.get(name).map(|l| describe(&links, name, l)))
    }

    async fn ensure_ipv6_forwarding(&self) -> Result<bool> {
        self.enter("ensure_ipv6_forwarding", "all").await?;
        *self.ipv6_forwarding.lock().unwrap() = true;
        Ok(true)
    }

    async fn host_prefixes(&self) -> Result<Vec<IpNet>> {
        self.enter("host_prefixes", "all").await?;
        Ok(self.host_prefixes.lock().unwrap().clone())
    }

    fn ephemeral_ports(&self) -> RangeInclusive<u16> {
        self.ephemeral_ports.lock().unwrap().clone().unwrap_or(super::host::DEFAULT_EPHEMERAL_PORTS)
    }

    fn host_port_free(&self, port: &FwPort) -> std::io::Result<()> {
        if self.busy_ports.lock().unwrap().contains(&(port.proto, port.host_port)) {
            return Err(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        }
        Ok(())
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        self.enter("ensure_vxlan", &spec.name).await?;
        let mut links = self.links.lock().unwrap();
        if !links.contains_key(&spec.bridge) {
            return Err(DataPlaneError::new(
                "attach VXLAN device",
                &spec.name,
                format!("bridge {} not found", spec.bridge),
            ));
        }
        let link = links.entry(spec.name.clone()).or_insert_with(|| FakeLink {
            kind: LinkKind::Vxlan,
            vxlan: Some((spec.vni, spec.port)),
            ..FakeLink::bridge()
        });
        if link.kind != LinkKind::Vxlan {
            return Err(DataPlaneError::new(
                "create VXLAN device",
                &spec.name,
                "a link of that name exists and is not VXLAN",
            ));
        }
        link.mtu = spec.mtu;
        link.controller = Some(spec.bridge.clone());
        link.owner = Some(spec.instance.clone());
        link.up = true;
        Ok(())
    }

    async fn underlay_mtu(&self, _local: Option<std::net::IpAddr>) -> Result<u32> {
        self.enter("underlay_mtu", "all").await?;
        Ok(self.underlay_mtu.lock().unwrap().unwrap_or(1500))
    }

    async fn vxlan_entries(&self, device: &str) -> Result<VxlanEntries> {
        self.enter("vxlan_entries", device).await?;
        Ok(self.links.lock().unwrap().get(device).map(|l| l.entries.clone()).unwrap_or_default())
    }

    async fn add_fdb(&self, device: &str, entry: &FdbEntry) -> Result<()> {
        self.enter("add_fdb", device).await?;
        let mut links = self.links.lock().unwrap();
        let link = links
            .get_mut(device)
            .ok_or_else(|| DataPlaneError::new("add forwarding entry", device, "No such device (os error 19)"))?;
        if entry.mac != FLOOD_MAC {
            link.entries.fdb.retain(|e| e.mac != entry.mac);
        }
        if !link.entries.fdb.contains(entry) {
            link.entries.fdb.push(entry.clone());
            link.entries.fdb.sort();
        }
        Ok(())
    }

    async fn del_fdb(&self, device: &str, entry: &FdbEntry) -> Result<()> {
        self.enter("del_fdb", device).await?;
        if let Some(link) = self.links.lock().unwrap().get_mut(device) {
            link.entries.fdb.retain(|e| e != entry);
        }
        Ok(())
    }

    async fn add_neigh(&self, device: &str, entry: &NeighEntry) -> Result<()> {
        self.enter("add_neigh", device).await?;
        let mut links = self.links.lock().unwrap();
        let link = links
            .get_mut(device)
            .ok_or_else(|| DataPlaneError::new("add neighbour", device, "No such device (os error 19)"))?;
        link.entries.neigh.retain(|e| e.ip != entry.ip);
        link.entries.neigh.push(entry.clone());
        link.entries.neigh.sort();
        Ok(())
    }

    async fn del_neigh(&self, device: &str, entry: &NeighEntry) -> Result<()> {
        self.enter("del_neigh", device).await?;
        if let Some(link) = self.links.lock().unwrap().get_mut(device) {
            link.entries.neigh.retain(|e| e.ip != entry.ip);
        }
        Ok(())
    }

    /// splitmix64: deterministic, and different bytes on every call.
    fn random_bytes(&self, buf: &mut [u8]) -> Result<()> {
        let mut state = self.random_state.lock().unwrap();
        for chunk in buf.chunks_mut(8) {
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

fn describe(links: &BTreeMap<String, FakeLink>, name: &str, l: &FakeLink) -> Link {
    Link {
        name: name.to_string(),
        kind: l.kind.clone(),
        owner: l.owner.clone(),
        controller: l.controller.clone(),
        peer_elsewhere: l.peer.as_ref().is_some_and(|p| !links.contains_key(p)),
        up: l.up,
        mtu: l.mtu,
        route_localnet: Some(l.route_localnet),
        addresses: l.addresses.clone(),
    }
}
