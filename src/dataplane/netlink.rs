//! The data plane over rtnetlink: no `ip` binary, one netlink socket.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_core::{DefaultNla, NLA_F_NESTED};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use super::{
    BridgeOutcome, BridgeSpec, DataPlane, DataPlaneError, FLOOD_MAC, FdbEntry, Link, LinkKind, NeighEntry,
    OWNER_MARK_PREFIX, Result, VethSpec, VxlanEntries, VxlanSpec, owner_mark,
};

use super::EEXIST;
/// errno values we react to (from <asm-generic/errno-base.h>, stable kernel ABI).
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;
const ENOENT: i32 = 2;

/// Every netlink request (a dump included) gets this long. The kernel
/// answers in microseconds; a request stuck behind a busy rtnl lock must not
/// hold the plugin (and so dockerd) beyond the call's deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The kernel runs a netlink request in the context of the socket that sent
/// it, so a veth deletion (~20 ms, most of it waiting for RCU) holds its
/// socket that long, and every request behind it waits. Deletions released
/// after a commit (`delete_link_index`) go through sockets of their own, this
/// many, round robin: they overlap in the kernel (30 deletions: 0.6 s one
/// after the other, 0.06 s side by side) and never hold up the calls'
/// requests on the main socket.
const DELETE_SOCKETS: usize = 8;

pub struct NetlinkDataPlane {
    handle: Handle,
    deleters: Vec<Handle>,
    next_deleter: std::sync::atomic::AtomicUsize,
    /// Requests sent (a dump counts as one), for tests and measurements.
    requests: AtomicU64,
    /// Bridges' indexes as last looked up, so that Join needs no look-up
    /// (see `bridge_index`).
    bridge_indexes: std::sync::Mutex<HashMap<String, u32>>,
}

impl NetlinkDataPlane {
    /// Opens a netlink socket in the current network namespace.
    pub fn connect() -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(1 + DELETE_SOCKETS);
        for _ in 0..=DELETE_SOCKETS {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            handles.push(handle);
        }
        let handle = handles.remove(0);
        Ok(NetlinkDataPlane {
            handle,
            deleters: handles,
            next_deleter: Default::default(),
            requests: AtomicU64::new(0),
            bridge_indexes: Default::default(),
        })
    }

    /// How many requests (dumps included) this data plane has sent to the kernel.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Runs one netlink request (or dump) under [`REQUEST_TIMEOUT`].
    async fn bounded<T>(
        &self,
        action: &'static str,
        name: &str,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(REQUEST_TIMEOUT, request).await.map_err(|_| {
            DataPlaneError::new(
                action,
                name,
                format!("no answer from the kernel within {}s", REQUEST_TIMEOUT.as_secs()),
            )
        })?
    }

    async fn find_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        self.bounded("look up link", name, async {
            let mut links = self.handle.link().get().match_name(name).execute();
            match links.try_next().await {
                Ok(link) => Ok(link),
                Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
                Err(e) => Err(DataPlaneError::new("look up link", name, describe(&e))),
            }
        })
        .await
    }

    /// A bridge's index for a new port: remembered from the last look-up
    /// (`true`) or looked up now. The kernel never gives an index to another
    /// link while its netns lives (it allocates them cyclically), so a
    /// remembered index is either the bridge's or names no link at all (the
    /// bridge was deleted, perhaps made again): the kernel then refuses the
    /// port and the caller looks it up again (`forget_bridge_index`).
    async fn bridge_index(&self, action: &'static str, bridge: &str) -> Result<(u32, bool)> {
        if let Some(&index) = self.bridge_indexes.lock().expect("bridge index cache").get(bridge) {
            return Ok((index, true));
        }
        let index = self.require_index(action, bridge).await?;
        self.bridge_indexes.lock().expect("bridge index cache").insert(bridge.to_string(), index);
        Ok((index, false))
    }

    fn forget_bridge_index(&self, bridge: &str) {
        self.bridge_indexes.lock().expect("bridge index cache").remove(bridge);
    }

    /// RTM_NEWLINK of the pair: MTU, the host end on its bridge and up.
    async fn add_veth(&self, spec: &VethSpec, bridge_index: u32) -> Result<()> {
        let peer = LinkUnspec::new_with_name(&spec.peer_name).mtu(spec.mtu).build();
        let message = LinkVeth::new(&spec.host_name, &spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .controller(bridge_index)
            .up()
            .build();
        let request = self.handle.link().add(message).execute();
        self.bounded("create veth", &spec.host_name, async {
            request
                .await
                .map_err(|e| DataPlaneError::new("create veth", &spec.host_name, describe(&e)).with_errno(errno(&e)))
        })
        .await
    }

    async fn require_index(&self, action: &'static str, name: &str) -> Result<u32> {
        match self.find_link(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(DataPlaneError::new(action, name, "No such device (os error 19)")),
        }
    }

    async fn addresses_of(&self, index: u32) -> Result<Vec<(IpNet, AddressMessage)>> {
        self.bounded("list addresses of link", &index.to_string(), self.addresses_of_unbounded(index)).await
    }

    async fn addresses_of_unbounded(&self, index: u32) -> Result<Vec<(IpNet, AddressMessage)>> {
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| DataPlaneError::new("list addresses of link", &index.to_string(), describe(&e)))?
        {
            if msg.header.index != index {
                continue;
            }
            if let Some(ip) = address_of(&msg)
                && let Ok(net) = IpNet::new(ip, msg.header.prefix_len)
            {
                out.push((net, msg));
            }
        }
        Ok(out)
    }

    async fn set_link(&self, action: &'static str, name: &str, message: LinkMessage) -> Result<()> {
        let request = self.handle.link().set(message).execute();
        self.bounded(action, name, async { request.await.map_err(|e| DataPlaneError::new(action, name, describe(&e))) })
            .await
    }

    async fn route_prefixes(&self, builder: RouteMessage, out: &mut Vec<IpNet>) -> Result<()> {
        self.bounded("list routes", "main", self.route_prefixes_unbounded(builder, out)).await
    }

    async fn route_prefixes_unbounded(&self, builder: RouteMessage, out: &mut Vec<IpNet>) -> Result<()> {
        let mut routes = self.handle.route().get(builder).execute();
        while let Some(route) =
            routes.try_next().await.map_err(|e| DataPlaneError::new("list routes", "main", describe(&e)))?
        {
            if route.header.table != RouteHeader::RT_TABLE_MAIN || route.header.destination_prefix_length == 0 {
                continue;
            }
            if let Some(dst) = route_destination(&route)
                && let Ok(net) = IpNet::new(dst, route.header.destination_prefix_length)
            {
                out.push(net.trunc());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl DataPlane for NetlinkDataPlane {
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<BridgeOutcome> {
        let name = spec.name.as_str();
        let (index, created) = match self.find_link(name).await? {
            Some(link) => {
                if link_kind(&link) != LinkKind::Bridge {
                    return Err(DataPlaneError::new(
                        "use bridge",
                        name,
                        "a link of that name exists and is not a bridge",
                    ));
                }
                (link.header.index, false)
            }
            None => {
                let request = self.handle.link().add(LinkBridge::new(name).mtu(spec.mtu).build()).execute();
                self.bounded("create bridge", name, async {
                    request.await.map_err(|e| DataPlaneError::new("create bridge", name, describe(&e)))
                })
                .await?;
                (self.require_index("create bridge", name).await?, true)
            }
        };
        let mut added = Vec::new();
        let result = self.configure_bridge(index, spec, created || spec.owned, &mut added).await;
        if result.is_err() {
            if created {
                let _ = self.delete_link(name).await;
            } else {
                let _ = self.remove_bridge_addresses(name, &added).await;
            }
        }
        result.map(|_| BridgeOutcome { created, added })
    }

    async fn remove_bridge_addresses(&self, name: &str, addresses: &[IpNet]) -> Result<()> {
        let Some(link) = self.find_link(name).await? else { return Ok(()) };
        for (net, msg) in self.addresses_of(link.header.index).await? {
            if addresses.contains(&net) {
                let request = self.handle.address().del(msg).execute();
                let answer = self.bounded("remove address from bridge", name, async { Ok(request.await) }).await?;
                match answer {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                    Err(e) => {
                        return Err(DataPlaneError::new(
                            "remove address from bridge",
                            name,
                            format!("{net}: {}", describe(&e)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Three requests: the bridge's index; the pair made with its MTU, its
    /// host end on the bridge and up (one RTM_NEWLINK; the kernel takes the
    /// peer's settings from the nested message and undoes the whole pair if
    /// the bridge refuses the port); then the owner mark and hairpin mode in
    /// one change of the host end (the kernel ignores an alias at creation,
    /// and bridge port settings need the port on its bridge first).
    async fn create_veth(&self, spec: &VethSpec) -> Result<()> {
        let action = "attach veth to bridge";
        let (index, remembered) = self.bridge_index(action, &spec.bridge).await?;
        match self.add_veth(spec, index).await {
            // A taken name is refused before the bridge is looked at.
            Err(e) if remembered && !e.is_exists() => {
                // The kernel undid the pair; the bridge may have another index now.
                self.forget_bridge_index(&spec.bridge);
                let (index, _) = self.bridge_index(action, &spec.bridge).await?;
                self.add_veth(spec, index).await?
            }
            other => other?,
        }
        let result = self.mark_port(spec).await;
        if result.is_err() {
            let _ = self.delete_link(&spec.host_name).await;
        }
        result
    }

    async fn attach_to_bridge(&self, link: &str, bridge: &str) -> Result<()> {
        let Some(found) = self.find_link(link).await? else { return Ok(()) };
        let bridge_index = self.require_index("attach to bridge", bridge).await?;
        let message = LinkUnspec::new_with_index(found.header.index).controller(bridge_index).up().build();
        self.set_link("attach to bridge", link, message).await
    }

    /// One request: RTM_DELLINK by name.
    async fn delete_link(&self, name: &str) -> Result<()> {
        self.forget_bridge_index(name);
        let request = self.handle.link().del_with_message(LinkUnspec::new_with_name(name).build()).execute();
        self.delete(request, name).await
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.find_link(name).await?.map(|l| l.header.index))
    }

    async fn delete_link_index(&self, index: u32, name: &str) -> Result<()> {
        let turn = self.next_deleter.fetch_add(1, Ordering::Relaxed) % self.deleters.len();
        let request = self.deleters[turn].link().del(index).execute();
        self.delete(request, name).await
    }

    async fn link_exists(&self, name: &str) -> Result<bool> {
        Ok(self.find_link(name).await?.is_some())
    }

    async fn list_links(&self) -> Result<Vec<Link>> {
        let messages = self
            .bounded("list links", "all", async {
                // Counters are a third of each message and never read: the kernel skips them (~25% faster for 2,000 links).
                let request =
                    self.handle.link().get().set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]);
                let mut stream = request.execute();
                let mut messages = Vec::new();
                while let Some(link) =
                    stream.try_next().await.map_err(|e| DataPlaneError::new("list links", "all", describe(&e)))?
                {
                    messages.push(link);
                }
                Ok(messages)
            })
            .await?;
        let mut addresses = self.all_addresses().await?;
        let names: BTreeMap<u32, String> =
            messages.iter().filter_map(|m| link_name(m).map(|n| (m.header.index, n))).collect();
        Ok(messages
            .iter()
            .filter_map(|m| {
                let mut link = to_link(m, controller_index(m).and_then(|i| names.get(&i).cloned()))?;
                link.addresses = addresses.remove(&m.header.index).unwrap_or_default();
                Some(link)
            })
            .collect())
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        let Some(message) = self.find_link(name).await? else { return Ok(None) };
        let controller = match controller_index(&message) {
            Some(index) => {
                self.bounded("look up bridge of link", name, async {
                    let mut links = self.handle.link().get().match_index(index).execute();
                    match links.try_next().await {
                        Ok(found) => Ok(found.as_ref().and_then(link_name)),
                        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
                        Err(e) => Err(DataPlaneError::new("look up bridge of link", name, describe(&e))),
                    }
                })
                .await?
            }
            None => None,
        };
        Ok(to_link(&message, controller))
    }

    async fn ensure_ipv6_forwarding(&self) -> Result<bool> {
        super::host::ensure_ipv6_forwarding()
            .map_err(|e| DataPlaneError::new("enable IPv6 forwarding", "net.ipv6.conf.all.forwarding", e))
    }

    fn ephemeral_ports(&self) -> std::ops::RangeInclusive<u16> {
        super::host::ephemeral_ports()
    }

    fn host_port_free(&self, port: &crate::firewall::FwPort) -> std::io::Result<()> {
        super::host::host_port_free(port)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<()> {
        super::host::random_bytes(buf).map_err(|e| DataPlaneError::new("read random bytes", "/dev/urandom", e))
    }

    async fn host_prefixes(&self) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        self.route_prefixes(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(), &mut out).await?;
        self.route_prefixes(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(), &mut out).await?;
        out.extend(self.all_addresses().await?.into_values().flatten().map(|net| net.trunc()));
        out.sort();
        out.dedup();
        Ok(out)
    }
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let name = spec.name.as_str();
        let bridge_index = self.require_index("attach VXLAN device to bridge", &spec.bridge).await?;
        let index = match self.find_link(name).await? {
            Some(link) if link_kind(&link) == LinkKind::Vxlan => link.header.index,
            Some(_) => {
                return Err(DataPlaneError::new(
                    "create VXLAN device",
                    name,
                    "a link of that name exists and is not VXLAN",
                ));
            }
            None => {
                let message = LinkVxlan::new(name, spec.vni).port(spec.port).learning(false).proxy(true).build();
                let request = self.handle.link().add(message).execute();
                self.bounded("create VXLAN device", name, async {
                    request.await.map_err(|e| DataPlaneError::new("create VXLAN device", name, describe(&e)))
                })
                .await?;
                self.require_index("create VXLAN device", name).await?
            }
        };
        self.mark(index, name, &spec.instance).await?;
        let message = LinkUnspec::new_with_index(index).mtu(spec.mtu).controller(bridge_index).up().build();
        self.set_link("put VXLAN device on its bridge", name, message).await
    }

    async fn underlay_mtu(&self, local: Option<IpAddr>) -> Result<u32> {
        let index = match local {
            Some(ip) => {
                let mut found = None;
                self.bounded("list addresses", "all", async {
                    let mut stream = self.handle.address().get().execute();
                    while let Some(msg) = stream
                        .try_next()
                        .await
                        .map_err(|e| DataPlaneError::new("list addresses", "all", describe(&e)))?
                    {
                        if address_of(&msg) == Some(ip) {
                            found = Some(msg.header.index);
                        }
                    }
                    Ok(())
                })
                .await?;
                found
            }
            None => self.default_route_index().await?,
        };
        let Some(index) = index else { return Ok(crate::options::DEFAULT_MTU) };
        let mtu = self
            .bounded("look up underlay MTU", &index.to_string(), async {
                let mut links = self.handle.link().get().match_index(index).execute();
                let link = links
                    .try_next()
                    .await
                    .map_err(|e| DataPlaneError::new("look up link", &index.to_string(), describe(&e)))?;
                Ok(link.and_then(|l| {
                    l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Mtu(mtu) => Some(*mtu),
                        _ => None,
                    })
                }))
            })
            .await?;
        Ok(mtu.unwrap_or(crate::options::DEFAULT_MTU))
    }

    async fn vxlan_entries(&self, device: &str) -> Result<VxlanEntries> {
        let Some(link) = self.find_link(device).await? else { return Ok(VxlanEntries::default()) };
        let index = link.header.index;
        let mut entries = VxlanEntries::default();
        for family in [AddressFamily::Bridge, AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = self.handle.neighbours().get();
            request.message_mut().header.family = family;
            let mut stream = request.execute();
            let dump = async {
                while let Some(msg) =
                    stream.try_next().await.map_err(|e| DataPlaneError::new("list neighbours", device, describe(&e)))?
                {
                    if msg.header.ifindex != index {
                        continue;
                    }
                    let lladdr = msg.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(mac) => Some(format_mac(mac)),
                        _ => None,
                    });
                    let dst = msg.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(address) => ip_of(address),
                        _ => None,
                    });
                    match (family, lladdr, dst) {
                        (AddressFamily::Bridge, Some(mac), Some(dst))
                            if msg.header.flags.contains(NeighbourFlags::Own) =>
                        {
                            entries.fdb.push(FdbEntry { mac, dst })
                        }
                        (AddressFamily::Inet | AddressFamily::Inet6, Some(mac), Some(ip))
                            if msg.header.state == NeighbourState::Permanent =>
                        {
                            entries.neigh.push(NeighEntry { ip, mac })
                        }
                        _ => {}
                    }
                }
                Ok::<(), DataPlaneError>(())
            };
            self.bounded("list neighbours", device, dump).await?;
        }
        entries.fdb.sort();
        entries.neigh.sort();
        Ok(entries)
    }

    async fn add_fdb(&self, device: &str, entry: &FdbEntry) -> Result<()> {
        let index = self.require_index("add forwarding entry", device).await?;
        let message = fdb_message(index, entry)?;
        let append = entry.mac == FLOOD_MAC;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(message));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | if append { NLM_F_APPEND } else { NLM_F_REPLACE };
        match self.send("add forwarding entry", device, req).await {
            Err(e) if append && e.message.contains("os error 17") => Ok(()),
            other => other,
        }
    }

    async fn del_fdb(&self, device: &str, entry: &FdbEntry) -> Result<()> {
        let Some(link) = self.find_link(device).await? else { return Ok(()) };
        let message = fdb_message(link.header.index, entry)?;
        let request = self.handle.neighbours().del(message).execute();
        match self.bounded("remove forwarding entry", device, async { Ok(request.await) }).await? {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENOENT | ENODEV)) => Ok(()),
            Err(e) => Err(DataPlaneError::new(
                "remove forwarding entry",
                device,
                format!("{} -> {}: {}", entry.mac, entry.dst, describe(&e)),
            )),
        }
    }

    async fn add_neigh(&self, device: &str, entry: &NeighEntry) -> Result<()> {
        let index = self.require_index("add neighbour", device).await?;
        let mac = parse_mac(device, &entry.mac)?;
        let request = self.handle.neighbours().add(index, entry.ip).link_layer_address(&mac).replace().execute();
        self.bounded("add neighbour", device, async {
            request.await.map_err(|e| {
                DataPlaneError::new("add neighbour", device, format!("{} {}: {}", entry.ip, entry.mac, describe(&e)))
            })
        })
        .await
    }

    async fn del_neigh(&self, device: &str, entry: &NeighEntry) -> Result<()> {
        let Some(link) = self.find_link(device).await? else { return Ok(()) };
        let mut message = NeighbourMessage::default();
        message.header.family = match entry.ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.ifindex = link.header.index;
        message.attributes.push(NeighbourAttribute::Destination(match entry.ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        let request = self.handle.neighbours().del(message).execute();
        match self.bounded("remove neighbour", device, async { Ok(request.await) }).await? {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENOENT | ENODEV)) => Ok(()),
            Err(e) => Err(DataPlaneError::new("remove neighbour", device, format!("{}: {}", entry.ip, describe(&e)))),
        }
    }
}

impl NetlinkDataPlane {
    /// Sends one request and reads its acknowledgement.
    async fn send(&self, action: &'static str, name: &str, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<()> {
        let mut handle = self.handle.clone();
        self.bounded(action, name, async {
            let mut response = handle.request(req).map_err(|e| DataPlaneError::new(action, name, describe(&e)))?;
            while let Some(message) = response.next().await {
                if let NetlinkPayload::Error(err) = message.payload {
                    return Err(DataPlaneError::new(action, name, describe(&rtnetlink::Error::NetlinkError(err))));
                }
            }
            Ok(())
        })
        .await
    }

    /// The interface of the main table's IPv4 default route, if any.
    async fn default_route_index(&self) -> Result<Option<u32>> {
        self.bounded("list routes", "main", async {
            let mut routes =
                self.handle.route().get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()).execute();
            while let Some(route) =
                routes.try_next().await.map_err(|e| DataPlaneError::new("list routes", "main", describe(&e)))?
            {
                if route.header.table == RouteHeader::RT_TABLE_MAIN && route.header.destination_prefix_length == 0 {
                    let oif = route.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    });
                    if oif.is_some() {
                        return Ok(oif);
                    }
                }
            }
            Ok(None)
        })
        .await
    }

    /// Every address on every link, by link index (one dump).
    async fn all_addresses(&self) -> Result<BTreeMap<u32, Vec<IpNet>>> {
        self.bounded("list addresses", "all", async {
            let mut stream = self.handle.address().get().execute();
            let mut out: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
            while let Some(msg) =
                stream.try_next().await.map_err(|e| DataPlaneError::new("list addresses", "all", describe(&e)))?
            {
                if let Some(ip) = address_of(&msg)
                    && let Ok(net) = IpNet::new(ip, msg.header.prefix_len)
                {
                    out.entry(msg.header.index).or_default().push(net);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Sends a delete; a link that is gone already is success.
    async fn delete(
        &self,
        request: impl Future<Output = std::result::Result<(), rtnetlink::Error>>,
        name: &str,
    ) -> Result<()> {
        match self.bounded("delete link", name, async { Ok(request.await) }).await? {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(DataPlaneError::new("delete link", name, describe(&e)).with_errno(errno(&e))),
        }
    }

    /// Addresses this call added go into `added`, so a failure can take them back.
    async fn configure_bridge(&self, index: u32, spec: &BridgeSpec, owned: bool, added: &mut Vec<IpNet>) -> Result<()> {
        let name = spec.name.as_str();
        let present: Vec<IpNet> = self.addresses_of(index).await?.into_iter().map(|(n, _)| n).collect();
        for addr in spec.addresses.iter().filter(|a| !present.contains(a)) {
            let request = self.handle.address().add(index, addr.addr(), addr.prefix_len()).execute();
            match self.bounded("add address to bridge", name, async { Ok(request.await) }).await? {
                Ok(()) => added.push(*addr),
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => {
                    return Err(DataPlaneError::new(
                        "add address to bridge",
                        name,
                        format!("{addr}: {}", describe(&e)),
                    ));
                }
            }
        }
        let mut message = LinkUnspec::new_with_index(index).up();
        if owned || spec.mtu_explicit {
            message = message.mtu(spec.mtu);
        }
        self.set_link("set bridge mtu and up", name, message.build()).await?;
        if !owned {
            return Ok(());
        }
        self.mark(index, name, &spec.instance).await?;
        self.pin_mac(index, name).await?;
        // Lets the host's 127.0.0.1 reach published ports (DNAT to the bridge);
        // the firewall drops 127.0.0.0/8 arriving from the bridge in return,
        // which it does for IPv4 networks only: off everywhere else.
        // Set through netlink: /proc/sys is read-only inside a managed plugin.
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![route_localnet(
                spec.route_localnet,
            )])]))
            .build();
        self.set_link("set route_localnet on bridge", name, message).await
    }

    /// A bridge whose MAC address was never set takes the lowest of its ports'
    /// and changes it when that port goes: every container's ARP entry for the
    /// gateway is then stale, and traffic through the gateway stops for
    /// seconds whenever a container leaves. Setting the address (to the one it
    /// has) pins it, as dockerd does for its bridges.
    async fn pin_mac(&self, index: u32, name: &str) -> Result<()> {
        let Some(link) = self.find_link(name).await? else {
            return Err(DataPlaneError::new("pin bridge MAC address", name, "No such device (os error 19)"));
        };
        let Some(mac) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        }) else {
            return Ok(());
        };
        let message = LinkUnspec::new_with_index(index).address(mac).build();
        self.set_link("pin bridge MAC address", name, message).await
    }

    /// Writes the owner mark (the alias) on a link the plugin made.
    async fn mark(&self, index: u32, name: &str, instance: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(owner_mark(instance)))
            .build();
        self.set_link("mark link as rustbridge's", name, message).await
    }

    /// The owner mark and hairpin mode on a new veth's host end, in one
    /// RTM_NEWLINK changing the existing link (found by name): the alias goes
    /// through the generic link settings, hairpin through the bridge port's
    /// (IFLA_INFO_SLAVE_DATA). Hairpin: a container reaching its own published
    /// port through a host address gets the reply back through the port it
    /// came in on.
    async fn mark_port(&self, spec: &VethSpec) -> Result<()> {
        let message = LinkUnspec::new_with_name(&spec.host_name)
            .alias(owner_mark(&spec.instance))
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)]))
            .build();
        let request = self.handle.link().change(message).execute();
        self.bounded("mark veth and set hairpin mode", &spec.host_name, async {
            request
                .await
                .map_err(|e| DataPlaneError::new("mark veth and set hairpin mode", &spec.host_name, describe(&e)))
        })
        .await
    }
}

/// IFLA_INET_CONF carrying route_localnet alone. The crate's DevConfRequest
/// leaves out every zero value, so it cannot switch a setting off: the nested
/// attribute is written here (IPV4_DEVCONF_ROUTE_LOCALNET, a u32 in host order).
fn route_localnet(on: bool) -> AfSpecInet {
    const IFLA_INET_CONF: u16 = 1;
    const IPV4_DEVCONF_ROUTE_LOCALNET: u16 = 26;
    let mut value = Vec::with_capacity(8);
    value.extend_from_slice(&8u16.to_ne_bytes());
    value.extend_from_slice(&IPV4_DEVCONF_ROUTE_LOCALNET.to_ne_bytes());
    value.extend_from_slice(&u32::from(on).to_ne_bytes());
    AfSpecInet::Other(DefaultNla::new(IFLA_INET_CONF | NLA_F_NESTED, value))
}

/// A bridge-family neighbour message for a VXLAN forwarding entry (NTF_SELF: the device's own table).
fn fdb_message(index: u32, entry: &FdbEntry) -> Result<NeighbourMessage> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.attributes.push(NeighbourAttribute::LinkLayerAddress(parse_mac(&index.to_string(), &entry.mac)?.to_vec()));
    message.attributes.push(NeighbourAttribute::Destination(match entry.dst {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }));
    Ok(message)
}

fn parse_mac(device: &str, text: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(DataPlaneError::new("parse MAC address", device, format!("{text:?} is not a MAC address")));
    }
    for (byte, part) in out.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| DataPlaneError::new("parse MAC address", device, format!("{text:?} is not a MAC address")))?;
    }
    Ok(out)
}

/// A neighbour's address; in a bridge-family (FDB) message the crate leaves
/// the remote's bytes raw.
fn ip_of(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// "File exists (os error 17)" rather than the crate's "Received a netlink error message …".
fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
        other => other.to_string(),
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

fn controller_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

fn to_link(message: &LinkMessage, controller: Option<String>) -> Option<Link> {
    let name = link_name(message)?;
    let owner = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => alias.strip_prefix(OWNER_MARK_PREFIX).map(str::to_string),
        _ => None,
    });
    // The kernel names the peer's namespace only when it is not this one.
    let peer_elsewhere = message.attributes.iter().any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
    let mtu = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    });
    let route_localnet = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
            AfSpecUnspec::Inet(inet) => inet.iter().find_map(|i| match i {
                AfSpecInet::DevConf(conf) => Some(conf.route_localnet != 0),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    });
    Some(Link {
        name,
        kind: link_kind(message),
        owner,
        controller,
        peer_elsewhere,
        up: message.header.flags.contains(LinkFlags::Up),
        mtu: mtu.unwrap_or(0),
        route_localnet,
        addresses: vec![],
    })
}

fn link_kind(link: &LinkMessage) -> LinkKind {
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    });
    match kind {
        Some(InfoKind::Bridge) => LinkKind::Bridge,
        Some(InfoKind::Veth) => LinkKind::Veth,
        Some(InfoKind::Vxlan) => LinkKind::Vxlan,
        _ => LinkKind::Other,
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    msg.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })
}

fn route_destination(route: &RouteMessage) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}
