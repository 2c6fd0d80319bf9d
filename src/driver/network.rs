//! NetworkDriver calls.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::txn::{Txn, Undo};
use super::{Plugin, PluginError, Result, State, ports};
use crate::api::{self, *};
use crate::dataplane::{BridgeSpec, DataPlane, VethSpec};
use crate::family::Family;
use crate::firewall::nft::ruleset::drops_localnet;
use crate::names::{
    ID_CHARS_IN_VETH, bridge_name, is_docker_bridge_name, is_owned_bridge_name, short_id as short, veth_names,
};
use crate::options::{GatewayMode, NetworkOptions, parse_network_options};
use crate::request::{
    endpoint_driver_options, exposed_ports, parse_endpoint_address, parse_ipam_data, parse_mac, port_bindings,
    validate_id,
};
use crate::state::{Change, EndpointRecord, NetworkRecord, SubnetRecord};

/// A host end's name and index (None: no link of that name), as looked up
/// before the state lock; None when the lookup could not be made.
type HostEnd = Option<(String, Option<u32>)>;

impl Plugin {
    /// The legacy socket's driver is local; the managed socket's may be global (swarm).
    pub fn capabilities(scope: Scope) -> CapabilitiesResponse {
        CapabilitiesResponse { scope: scope.as_str(), connectivity_scope: scope.as_str(), gw_alloc_checker: true }
    }

    pub async fn create_network(&self, req: CreateNetworkRequest) -> Result<()> {
        validate_id("NetworkID", &req.network_id)?;
        let mut options = parse_network_options(req.options.as_ref())?;
        let ipv4 = parse_ipam_data("IPv4Data", req.ipv4_data.as_deref(), Family::V4, &options)?;
        let ipv6 = parse_ipam_data("IPv6Data", req.ipv6_data.as_deref(), Family::V6, &options)?;
        if options.vni.is_some() {
            // A swarm network: the MTU leaves room for the encapsulation.
            options.mtu = self.swarm_mtu(options.mtu_explicit.then_some(options.mtu)).await?;
            self.note_network_call(&req.network_id);
        }
        let mut txn = self.begin().await?;
        let outcome = self.create_network_in(&mut txn, &req.network_id, options, ipv4, ipv6).await;
        txn.finish(outcome).await
    }

    async fn create_network_in(
        &self,
        txn: &mut Txn<'_>,
        network_id: &str,
        options: NetworkOptions,
        ipv4: Vec<SubnetRecord>,
        ipv6: Vec<SubnetRecord>,
    ) -> Result<()> {
        if let Some(existing) = txn.state().networks.get(network_id) {
            // A swarm network's derived MTU may differ between two calls (the underlay was learned meanwhile).
            let derived_mtu = existing.options.vni.is_some() && !options.mtu_explicit;
            let same_options = existing.options == NetworkOptions { mtu: existing.options.mtu, ..options.clone() }
                && (derived_mtu || existing.options.mtu == options.mtu);
            if !same_options || existing.ipv4 != ipv4 || existing.ipv6 != ipv6 {
                return Err(PluginError::new(format!(
                    "network {} already exists with other settings",
                    short(network_id)
                )));
            }
            // dockerd retried after losing our answer: make sure the bridge is there.
            let spec = self.bridge_spec(existing);
            txn.kernel("checking the bridge", self.dataplane.ensure_bridge(&spec)).await?;
            if let Some(vxlan) = self.vxlan_spec(existing) {
                txn.kernel("checking the VXLAN device", self.dataplane.ensure_vxlan(&vxlan)).await?;
            }
            return Ok(());
        }
        let bridge = options.bridge_name.clone().unwrap_or_else(|| bridge_name(network_id));
        if options.bridge_name.is_some() && (is_docker_bridge_name(&bridge) || is_owned_bridge_name(&bridge)) {
            return Err(PluginError::new(format!(
                "option {}: {bridge} is reserved (Docker's own bridges are docker0 and br-<id>, rustbridge's are rb-<id>)",
                crate::options::BRIDGE_NAME
            )));
        }
        check_conflicts(txn.state(), network_id, &bridge, ipv4.iter().chain(&ipv6))?;
        let mut record = NetworkRecord {
            id: network_id.to_string(),
            // Until ensure_bridge says it made the bridge, only the plugin's own naming counts as owned.
            bridge_created: is_owned_bridge_name(&bridge),
            bridge,
            options,
            ipv4,
            ipv6,
            added_addresses: vec![],
        };
        if !record.ipv6.is_empty() && !record.options.internal {
            // Like the built-in bridge; where the knob is read-only, the host decides.
            txn.kernel("enabling IPv6 forwarding", self.dataplane.ensure_ipv6_forwarding()).await?;
        }
        let spec = self.bridge_spec(&record);
        let outcome = txn.kernel("creating the bridge", self.dataplane.ensure_bridge(&spec)).await?;
        // A bridge with the plugin's own naming is its own, even when a crash left it behind.
        record.bridge_created = outcome.created || is_owned_bridge_name(&record.bridge);
        // On an adopted bridge, only these go when the network goes.
        record.added_addresses = outcome.added;
        txn.on_undo(undo_bridge(&record));
        if let Some(vxlan) = self.vxlan_spec(&record) {
            txn.kernel("creating the VXLAN device", self.dataplane.ensure_vxlan(&vxlan)).await?;
            txn.on_undo(Undo::DeleteLink(vxlan.name));
        }
        txn.record(Change::PutNetwork(record));
        txn.sync_firewall().await
    }

    /// Deletes a bridge the plugin owns; from an adopted one, removes only the
    /// addresses the plugin added (one that was there before is the host's).
    async fn remove_bridge(&self, record: &NetworkRecord) -> Result<()> {
        if record.bridge_created {
            self.dataplane.delete_link(&record.bridge).await?;
        } else {
            self.dataplane.remove_bridge_addresses(&record.bridge, &record.added_addresses).await?;
        }
        Ok(())
    }

    pub fn bridge_spec(&self, record: &NetworkRecord) -> BridgeSpec {
        BridgeSpec {
            name: record.bridge.clone(),
            mtu: record.options.mtu,
            mtu_explicit: record.options.mtu_explicit,
            owned: record.bridge_created,
            route_localnet: drops_localnet(&record.ipv4.iter().map(|s| s.pool).collect::<Vec<_>>()),
            instance: self.store.instance_id().to_string(),
            addresses: bridge_addresses(record),
        }
    }

    pub async fn delete_network(&self, req: NetworkRequest) -> Result<()> {
        let mut txn = self.begin().await?;
        let outcome = self.delete_network_in(&mut txn, &req.network_id).await;
        txn.finish(outcome).await
    }

    pub(super) async fn delete_network_in(&self, txn: &mut Txn<'_>, network_id: &str) -> Result<()> {
        let Some(record) = txn.state().networks.get(network_id).cloned() else { return Ok(()) };
        let endpoints: Vec<EndpointRecord> =
            txn.state().endpoints.values().filter(|e| e.network_id == record.id).cloned().collect();
        for endpoint in &endpoints {
            txn.kernel("deleting an endpoint's veth", self.dataplane.delete_link(&endpoint.host_veth)).await?;
        }
        txn.record(Change::DeleteNetwork(record.id.clone()));
        for endpoint in &endpoints {
            txn.record(Change::DeleteEndpoint(endpoint.id.clone()));
        }
        txn.sync_firewall().await?;
        // Its forwarding entries and neighbours go with the device.
        if let Some(vxlan) = self.vxlan_spec(&record) {
            txn.kernel("removing the VXLAN device", self.dataplane.delete_link(&vxlan.name)).await?;
            txn.on_undo(Undo::EnsureVxlan(vxlan));
        }
        txn.kernel("removing the bridge", self.remove_bridge(&record)).await?;
        txn.on_undo(Undo::EnsureBridge(self.bridge_spec(&record)));
        Ok(())
    }

    pub async fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        validate_id("NetworkID", &req.network_id)?;
        validate_id("EndpointID", &req.endpoint_id)?;
        self.note_network_call(&req.network_id);
        let mut txn = self.begin().await?;
        let outcome = create_endpoint_in(&mut txn, &*self.dataplane, req);
        txn.finish(outcome).await
    }

    /// The endpoint's veth names must be free, or taken by this endpoint's own
    /// pair (made by this state database: a repeated Join replaces it): a link
    /// of that name that is someone else's is never deleted.
    async fn check_veth_names_free(&self, endpoint: &EndpointRecord) -> Result<()> {
        let instance = Some(self.store.instance_id());
        let host_end = self.dataplane.link(&endpoint.host_veth).await?;
        let ours = host_end.as_ref().is_some_and(|h| h.owner.as_deref() == instance);
        for name in [&endpoint.host_veth, &endpoint.container_veth] {
            // The peer end carries no mark: it is ours when its host end is.
            let taken = if name == &endpoint.host_veth {
                host_end.is_some()
            } else {
                self.dataplane.link(name).await?.is_some()
            };
            if taken && !ours {
                return Err(PluginError::new(format!(
                    "endpoint {}: a link named {name} already exists and is not this endpoint's (another rustbridge state's, or the host's); rustbridge will not touch it",
                    short(&endpoint.id)
                )));
            }
        }
        Ok(())
    }

    pub async fn delete_endpoint(&self, req: EndpointRequest) -> Result<()> {
        let early = self.host_end_early(&req.endpoint_id).await;
        let mut txn = self.begin().await?;
        let outcome = self.delete_endpoint_in(&mut txn, &req.endpoint_id, early).await;
        txn.finish(outcome).await
    }

    async fn delete_endpoint_in(&self, txn: &mut Txn<'_>, endpoint_id: &str, early: HostEnd) -> Result<()> {
        let Some(endpoint) = txn.state().endpoints.get(endpoint_id).cloned() else { return Ok(()) };
        txn.record(Change::DeleteEndpoint(endpoint.id.clone()));
        if !endpoint.published.is_empty() {
            txn.sync_firewall().await?;
        }
        self.release_veth(txn, &endpoint, early).await
    }

    /// The endpoint's host end (name and index), looked up before the state
    /// lock is taken: the lookup waits for the kernel's rtnl lock, which
    /// concurrent veth deletions hold (a bulk `docker rm -f`), and under the
    /// state lock every other call would wait with it. An index is never
    /// another link's, so an early answer can only be stale by naming a pair
    /// that is gone or none (a Join of the same endpoint meanwhile, which
    /// dockerd does not send during its Leave or DeleteEndpoint): then a pair
    /// stays, which DeleteEndpoint or the reconciler removes.
    async fn host_end_early(&self, endpoint_id: &str) -> HostEnd {
        validate_id("EndpointID", endpoint_id).ok()?;
        let (name, _) = veth_names(endpoint_id);
        let index = self.dataplane.link_index(&name).await.ok()?;
        Some((name, index))
    }

    /// The endpoint's veth pair goes once the call committed, outside the
    /// state lock (see `txn.rs`), by the index looked up before the lock (or
    /// under it, when the record names another link).
    async fn release_veth(&self, txn: &mut Txn<'_>, endpoint: &EndpointRecord, early: HostEnd) -> Result<()> {
        let index = match early {
            Some((name, index)) if name == endpoint.host_veth => index,
            _ => txn.kernel("looking up the veth", self.dataplane.link_index(&endpoint.host_veth)).await?,
        };
        if let Some(index) = index {
            txn.delete_after_commit(index, endpoint.host_veth.clone());
        }
        Ok(())
    }

    pub async fn endpoint_oper_info(&self, req: EndpointRequest) -> Result<EndpointOperInfoResponse> {
        let state = self.state.lock().await;
        let mut value = BTreeMap::new();
        if let Some(e) = state.endpoints.get(&req.endpoint_id) {
            value.insert("MacAddress".to_string(), Value::String(e.mac.clone()));
            value.insert("HostVeth".to_string(), Value::String(e.host_veth.clone()));
            if !e.driver_options.is_empty() {
                value
                    .insert("DriverOptions".to_string(), Value::Object(e.driver_options.clone().into_iter().collect()));
            }
            if let Some(n) = state.networks.get(&e.network_id) {
                value.insert("Bridge".to_string(), Value::String(n.bridge.clone()));
            }
        }
        Ok(EndpointOperInfoResponse { value })
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        self.note_network_call(&req.network_id);
        let mut txn = self.begin().await?;
        let outcome = self.join_in(&mut txn, &req.endpoint_id).await;
        txn.finish(outcome).await
    }

    async fn join_in(&self, txn: &mut Txn<'_>, endpoint_id: &str) -> Result<JoinResponse> {
        let endpoint = txn
            .state()
            .endpoints
            .get(endpoint_id)
            .cloned()
            .ok_or_else(|| PluginError::new(format!("endpoint {} not found", short(endpoint_id))))?;
        let network = txn
            .state()
            .networks
            .get(&endpoint.network_id)
            .cloned()
            .ok_or_else(|| PluginError::new(format!("network {} not found", short(&endpoint.network_id))))?;
        let spec = VethSpec {
            host_name: endpoint.host_veth.clone(),
            peer_name: endpoint.container_veth.clone(),
            bridge: network.bridge.clone(),
            mtu: network.options.mtu,
            instance: self.store.instance_id().to_string(),
        };
        // The first Join of an endpoint makes its pair at once; the kernel
        // refuses a name that is taken, and only then are the names looked at.
        let made = !endpoint.joined
            && match txn
                .kernel("creating the veth pair", async {
                    Ok::<_, PluginError>(self.dataplane.create_veth(&spec).await)
                })
                .await?
            {
                Ok(()) => true,
                Err(e) if e.is_exists() => false,
                Err(e) => return Err(e.into()),
            };
        if made {
            // The pair in the kernel says the endpoint is joined: if a crash
            // loses this record, the start-up pass finds the pair (this
            // state's mark, the endpoint's name) and records it again, so the
            // commit need not wait for the disk (one fsync less per container).
            txn.relax_durability();
        } else {
            // A repeated Join (dockerd retrying), or a pair a crash left: start
            // from a clean pair, but never by deleting a link the plugin did not make.
            txn.kernel("checking the veth names", self.check_veth_names_free(&endpoint)).await?;
            txn.kernel("deleting a previous veth pair", self.dataplane.delete_link(&endpoint.host_veth)).await?;
            if endpoint.joined {
                // The old pair is gone for good: if this Join fails, the record must not claim otherwise.
                txn.on_undo(Undo::Record(Box::new(Change::PutEndpoint(EndpointRecord {
                    joined: false,
                    ..endpoint.clone()
                }))));
            }
            txn.kernel("creating the veth pair", self.dataplane.create_veth(&spec)).await?;
        }
        txn.on_undo(Undo::DeleteLink(spec.host_name));
        let joined = EndpointRecord { joined: true, ..endpoint };
        let response = join_response(&network, &joined);
        txn.record(Change::PutEndpoint(joined));
        Ok(response)
    }

    pub async fn leave(&self, req: EndpointRequest) -> Result<()> {
        let early = self.host_end_early(&req.endpoint_id).await;
        let mut txn = self.begin().await?;
        let outcome = self.leave_in(&mut txn, &req.endpoint_id, early).await;
        txn.finish(outcome).await
    }

    async fn leave_in(&self, txn: &mut Txn<'_>, endpoint_id: &str, early: HostEnd) -> Result<()> {
        let Some(endpoint) = txn.state().endpoints.get(endpoint_id).cloned() else { return Ok(()) };
        let left = EndpointRecord { joined: false, published: vec![], port_bindings: vec![], ..endpoint.clone() };
        if left != endpoint {
            txn.record(Change::PutEndpoint(left));
        }
        if !endpoint.published.is_empty() {
            txn.sync_firewall().await?;
        }
        self.release_veth(txn, &endpoint, early).await
    }

    /// Port publishing is the driver's job: dockerd adds no rule and starts no
    /// proxy for remote drivers. All of the endpoint's ports go in one batch.
    pub async fn program_external_connectivity(&self, req: EndpointRequest) -> Result<()> {
        let mut txn = self.begin().await?;
        let outcome = program_in(&mut txn, &*self.dataplane, req).await;
        txn.finish(outcome).await
    }

    pub async fn revoke_external_connectivity(&self, req: EndpointRequest) -> Result<()> {
        let mut txn = self.begin().await?;
        let outcome = revoke_in(&mut txn, &req.endpoint_id).await;
        txn.finish(outcome).await
    }
    /// Docker 28: which gateway addresses dockerd should not allocate.
    pub fn gw_alloc_check(&self, req: GwAllocCheckRequest) -> Result<GwAllocCheckResponse> {
        let options = parse_network_options(req.options.as_ref())?;
        Ok(GwAllocCheckResponse {
            skip_ipv4: options.gateway_mode_ipv4 == GatewayMode::Isolated,
            skip_ipv6: options.gateway_mode_ipv6 == GatewayMode::Isolated,
        })
    }
}

fn create_endpoint_in(
    txn: &mut Txn<'_>,
    host: &dyn DataPlane,
    req: CreateEndpointRequest,
) -> Result<CreateEndpointResponse> {
    let state = txn.state();
    let network = state
        .networks
        .get(&req.network_id)
        .ok_or_else(|| PluginError::new(format!("network {} not found", short(&req.network_id))))?;
    let interface = req.interface.unwrap_or_default();
    let address = parse_endpoint_address("Interface.Address", &interface.address, &network.ipv4)?;
    let address_v6 = parse_endpoint_address("Interface.AddressIPv6", &interface.address_ipv6, &network.ipv6)?;
    if let Some(existing) = state.endpoints.get(&req.endpoint_id) {
        if existing.network_id != req.network_id {
            return Err(PluginError::new(format!(
                "endpoint {} already exists on network {}",
                short(&req.endpoint_id),
                short(&existing.network_id)
            )));
        }
        return Ok(endpoint_response(existing, &interface.mac_address));
    }
    let mac = match interface.mac_address.as_str() {
        _ if network.options.vni.is_some() => swarm_endpoint_mac(&interface.mac_address, address, address_v6)?,
        "" => endpoint_mac(host, state, address, address_v6)?,
        given => parse_mac("Interface.MacAddress", given)?,
    };
    let (host_veth, container_veth) = veth_names(&req.endpoint_id);
    if let Some(other) = state.endpoints.values().find(|e| e.host_veth == host_veth) {
        return Err(PluginError::new(format!(
            "EndpointID {}: its interface name {host_veth} is already used by endpoint {} (the first {ID_CHARS_IN_VETH} characters of both IDs are the same); remove and recreate the container",
            short(&req.endpoint_id),
            short(&other.id)
        )));
    }
    let options = req.options.unwrap_or_default();
    if options.contains_key(api::OPT_ENDPOINT_IFNAME) {
        return Err(PluginError::new(format!(
            "endpoint option {}: rustbridge cannot honour it (dockerd ignores interface names chosen by remote drivers); use com.docker.network.container_iface_prefix on the network",
            api::OPT_ENDPOINT_IFNAME
        )));
    }
    let record = EndpointRecord {
        id: req.endpoint_id.clone(),
        network_id: req.network_id.clone(),
        address,
        address_v6,
        mac,
        host_veth,
        container_veth,
        joined: false,
        port_bindings: port_bindings(&options)?,
        exposed_ports: exposed_ports(&options)?,
        published: vec![],
        driver_options: endpoint_driver_options(&options),
    };
    let response = endpoint_response(&record, &interface.mac_address);
    txn.record(Change::PutEndpoint(record));
    Ok(response)
}

async fn program_in(txn: &mut Txn<'_>, host: &dyn DataPlane, req: EndpointRequest) -> Result<()> {
    let state = txn.state();
    let Some(endpoint) = state.endpoints.get(&req.endpoint_id).cloned() else {
        return Err(PluginError::new(format!("endpoint {} not found", short(&req.endpoint_id))));
    };
    let network = state
        .networks
        .get(&endpoint.network_id)
        .cloned()
        .ok_or_else(|| PluginError::new(format!("network {} not found", short(&endpoint.network_id))))?;
    let options = req.options.unwrap_or_default();
    let bindings = port_bindings(&options)?;
    if bindings == endpoint.port_bindings && (bindings.is_empty() || !endpoint.published.is_empty()) {
        return Ok(()); // nothing to publish, or dockerd repeating itself
    }
    let published = if network.options.internal {
        vec![] // nothing enters an internal network, like Docker's bridge
    } else {
        ports::resolve(&bindings, &endpoint, &network, &state.published, host)?
    };
    let updated =
        EndpointRecord { port_bindings: bindings, exposed_ports: exposed_ports(&options)?, published, ..endpoint };
    txn.record(Change::PutEndpoint(updated));
    txn.sync_firewall().await
}

/// Removes exactly this endpoint's published ports and records it (a no-op when it has none).
async fn revoke_in(txn: &mut Txn<'_>, endpoint_id: &str) -> Result<()> {
    let Some(endpoint) = txn.state().endpoints.get(endpoint_id) else { return Ok(()) };
    if endpoint.published.is_empty() {
        return Ok(());
    }
    let updated = EndpointRecord { published: vec![], port_bindings: vec![], ..endpoint.clone() };
    txn.record(Change::PutEndpoint(updated));
    txn.sync_firewall().await
}

/// How to take back a bridge set up for `record`: delete it if the plugin
/// owns it, otherwise take off the addresses the plugin added.
fn undo_bridge(record: &NetworkRecord) -> Undo {
    if record.bridge_created {
        Undo::DeleteLink(record.bridge.clone())
    } else {
        Undo::RemoveBridgeAddresses { bridge: record.bridge.clone(), addresses: record.added_addresses.clone() }
    }
}

fn check_conflicts<'a>(
    state: &State,
    network_id: &str,
    bridge: &str,
    subnets: impl Iterator<Item = &'a SubnetRecord>,
) -> Result<()> {
    if let Some(other) = state.networks.values().find(|n| n.bridge == bridge) {
        return Err(PluginError::new(format!(
            "bridge name {bridge} is already used by rustbridge network {}",
            short(&other.id)
        )));
    }
    for subnet in subnets {
        for other in state.networks.values().filter(|n| n.id != network_id) {
            if let Some(clash) = other.ipv4.iter().chain(&other.ipv6).find(|s| overlaps(s.pool, subnet.pool)) {
                return Err(PluginError::new(format!(
                    "subnet {} overlaps subnet {} of rustbridge network {}",
                    subnet.pool,
                    clash.pool,
                    short(&other.id)
                )));
            }
        }
    }
    Ok(())
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn bridge_addresses(record: &NetworkRecord) -> Vec<IpNet> {
    let v4 = record.ipv4.iter().filter(|_| !record.options.inhibit_ipv4);
    v4.chain(&record.ipv6).filter_map(|s| s.gateway).collect()
}

/// The MAC of an endpoint dockerd gave none: derived from its address, as
/// the built-in bridge does (02:42 and the IPv4 address, or the last four
/// bytes of the IPv6 address). dockerd hands a released address to the next
/// container at once; with the same MAC, neighbour entries still cached for
/// that address (the host's, for published ports; other containers') stay
/// right, where a new random MAC left the address unreachable until they
/// expired (up to a minute). Random if no address is known or another
/// endpoint has that MAC already.
fn endpoint_mac(
    host: &dyn DataPlane,
    state: &State,
    address: Option<IpNet>,
    address_v6: Option<IpNet>,
) -> Result<String> {
    match address.or(address_v6).map(|net| mac_from_ip(net.addr())) {
        Some(mac) if !state.endpoints.values().any(|e| e.mac == mac) => Ok(mac),
        _ => generate_mac(host, state),
    }
}

/// On a swarm network every endpoint's MAC follows its address: the other
/// hosts learn an endpoint's address from dockerd and derive the MAC the same
/// way (`membership.rs`), so a MAC chosen otherwise would be unreachable.
fn swarm_endpoint_mac(given: &str, address: Option<IpNet>, address_v6: Option<IpNet>) -> Result<String> {
    let Some(derived) = address.or(address_v6).map(|net| mac_from_ip(net.addr())) else {
        return Err(PluginError::new(
            "Interface.Address: an endpoint of a swarm network needs an address (its MAC is derived from it)",
        ));
    };
    if !given.is_empty() && parse_mac("Interface.MacAddress", given)? != derived {
        return Err(PluginError::new(format!(
            "Interface.MacAddress {given}: on a swarm network the MAC follows the address ({derived}); other hosts could not reach another one"
        )));
    }
    Ok(derived)
}

pub fn mac_from_ip(ip: IpAddr) -> String {
    let tail: [u8; 4] = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0x42, tail[0], tail[1], tail[2], tail[3]].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A locally administered unicast MAC no other endpoint has.
fn generate_mac(host: &dyn DataPlane, state: &State) -> Result<String> {
    for _ in 0..16 {
        let mut bytes = [0u8; 6];
        host.random_bytes(&mut bytes).map_err(|e| PluginError::new(format!("generate MAC address: {e}")))?;
        bytes[0] = (bytes[0] & 0xfc) | 0x02;
        let mac = bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        if !state.endpoints.values().any(|e| e.mac == mac) {
            return Ok(mac);
        }
    }
    Err(PluginError::new("generate MAC address: no unique address after 16 tries"))
}

/// Fills only what dockerd left empty: echoing a field it set makes it roll back.
fn endpoint_response(record: &EndpointRecord, requested_mac: &str) -> CreateEndpointResponse {
    if !requested_mac.is_empty() {
        return CreateEndpointResponse { interface: None };
    }
    CreateEndpointResponse {
        interface: Some(EndpointInterfaceResponse { mac_address: record.mac.clone(), ..Default::default() }),
    }
}

fn join_response(network: &NetworkRecord, endpoint: &EndpointRecord) -> JoinResponse {
    // A returned Gateway becomes the default route, even on --internal networks.
    let routed = !network.options.internal;
    let gateway_of = |subnets: &[SubnetRecord], has_address: bool| {
        subnets
            .iter()
            .filter(|_| routed && has_address)
            .find_map(|s| s.gateway)
            .map(|g| g.addr().to_string())
            .unwrap_or_default()
    };
    let gateway = gateway_of(&network.ipv4, endpoint.address.is_some());
    let gateway_ipv6 = gateway_of(&network.ipv6, endpoint.address_v6.is_some());
    // Without a gateway (internal, isolated) dockerd would otherwise attach the
    // container to docker_gwbridge as well.
    let disable_gateway_service = gateway.is_empty() && gateway_ipv6.is_empty();
    JoinResponse {
        interface_name: InterfaceName {
            src_name: endpoint.container_veth.clone(),
            dst_prefix: network.options.iface_prefix.clone(),
        },
        gateway,
        gateway_ipv6,
        disable_gateway_service,
    }
}
