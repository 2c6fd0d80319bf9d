//! The data plane: the few kernel operations the driver needs, behind a narrow
//! trait so driver logic can be tested against a fake and the netlink layer
//! can be tested alone in a throwaway network namespace.

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod host;
pub mod netlink;

use std::net::IpAddr;
use std::ops::RangeInclusive;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::firewall::FwPort;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: u32,
    /// The user asked for this MTU: set it even on a bridge the plugin does not own.
    pub mtu_explicit: bool,
    /// The plugin owns the bridge (made it, or it bears the plugin's naming):
    /// MTU, route_localnet and the owner mark are the plugin's to set. An
    /// adopted bridge only gets the gateway addresses (and an explicit MTU).
    pub owned: bool,
    /// route_localnet on an owned bridge (set either way): only where the
    /// firewall drops 127.0.0.0/8 arriving from the bridge, i.e. with IPv4.
    pub route_localnet: bool,
    /// The instance ID of the state database: an owned bridge is marked with it.
    pub instance: String,
    /// Gateway addresses with the subnet's prefix length.
    pub addresses: Vec<IpNet>,
}

/// What `ensure_bridge` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeOutcome {
    /// The bridge did not exist and was made.
    pub created: bool,
    /// Addresses that were not on the bridge and were added (the others were there already).
    pub added: Vec<IpNet>,
}

/// Kernel objects the plugin makes carry "rustbridge:<instance ID>" as their
/// alias (IFLA_IFALIAS), so that only the state database that made them ever
/// deletes them.
pub const OWNER_MARK_PREFIX: &str = "rustbridge:";

pub fn owner_mark(instance: &str) -> String {
    format!("{OWNER_MARK_PREFIX}{instance}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub host_name: String,
    pub peer_name: String,
    pub bridge: String,
    pub mtu: u32,
    /// The instance ID of the state database: the host end is marked with it.
    pub instance: String,
}

/// A network's VXLAN device (swarm networks): a port of the network's
/// bridge, learning off, ARP/ND answered from the static neighbours the
/// membership task writes (proxy), so nothing is learned from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (the plugin setting `RUSTBRIDGE_VXLAN_PORT`).
    pub port: u16,
    pub mtu: u32,
    pub bridge: String,
    /// The instance ID of the state database: the device is marked with it.
    pub instance: String,
}

/// The MAC of the flooding entries: broadcast, multicast and unknown unicast
/// go to every peer listed under it (head-end replication).
pub const FLOOD_MAC: &str = "00:00:00:00:00:00";

/// A forwarding entry of a VXLAN device: frames for `mac` go to the host `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: String,
    pub dst: IpAddr,
}

/// A static neighbour on a VXLAN device: `ip` lives behind `mac` (answered locally).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    pub ip: IpAddr,
    pub mac: String,
}

/// What a VXLAN device holds that the plugin wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanEntries {
    pub fdb: Vec<FdbEntry>,
    pub neigh: Vec<NeighEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Vxlan,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    /// The instance ID in the link's owner mark, if it has one.
    pub owner: Option<String>,
    /// The bridge the link is a port of.
    pub controller: Option<String>,
    /// A veth whose other end is in another network namespace (a container's).
    pub peer_elsewhere: bool,
    /// Administratively up.
    pub up: bool,
    pub mtu: u32,
    /// IPv4 route_localnet, when the kernel reports the link's IPv4 settings.
    pub route_localnet: Option<bool>,
    /// The addresses on the link, with their prefix lengths.
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{action} {name}: {message}")]
pub struct DataPlaneError {
    pub action: &'static str,
    pub name: String,
    pub message: String,
    /// The kernel's errno, when the kernel refused the request.
    pub errno: Option<i32>,
}

/// errno values the driver reacts to (from <asm-generic/errno-base.h>, stable kernel ABI).
pub const EEXIST: i32 = 17;

impl DataPlaneError {
    pub fn new(action: &'static str, name: &str, message: impl ToString) -> Self {
        DataPlaneError { action, name: name.to_string(), message: message.to_string(), errno: None }
    }

    pub fn with_errno(mut self, errno: Option<i32>) -> Self {
        self.errno = errno;
        self
    }

    /// The kernel said a link of that name exists already.
    pub fn is_exists(&self) -> bool {
        self.errno == Some(EEXIST)
    }
}

pub type Result<T> = std::result::Result<T, DataPlaneError>;

#[async_trait]
pub trait DataPlane: Send + Sync {
    /// Creates the bridge if missing, then makes MTU, addresses and state match.
    /// Says whether it had to create the bridge and which addresses it added.
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<BridgeOutcome>;
    /// Removes addresses from a bridge the plugin adopted but does not own.
    async fn remove_bridge_addresses(&self, name: &str, addresses: &[IpNet]) -> Result<()>;
    /// Creates a veth pair in the host namespace, host end on the bridge, up,
    /// marked and in hairpin mode. Fails with [`DataPlaneError::is_exists`]
    /// when either name is taken (and then changes nothing).
    async fn create_veth(&self, spec: &VethSpec) -> Result<()>;
    /// Puts an existing link (a veth's host end) on a bridge and brings it up;
    /// a link that is gone is success (its container went away).
    async fn attach_to_bridge(&self, link: &str, bridge: &str) -> Result<()>;
    /// Deletes a link; a link that is already gone is success.
    async fn delete_link(&self, name: &str) -> Result<()>;
    /// The link's index (never given to another link while it exists, nor
    /// soon after), None when there is no link of that name.
    async fn link_index(&self, name: &str) -> Result<Option<u32>>;
    /// Deletes the link with this index, whatever its name is by then; a
    /// link that is gone is success. `name` is for messages. Used where the
    /// deletion runs after the state lock is released: a new link of the
    /// same name made meanwhile is not touched.
    async fn delete_link_index(&self, index: u32, name: &str) -> Result<()>;
    async fn link_exists(&self, name: &str) -> Result<bool>;
    /// One link, as `list_links` describes it but without its addresses; None
    /// when there is none of that name.
    async fn link(&self, name: &str) -> Result<Option<Link>>;
    /// Every link with its addresses (one dump of each).
    async fn list_links(&self) -> Result<Vec<Link>>;
    /// Switches IPv6 forwarding on (as the built-in bridge does for IPv6
    /// networks); false when the knob is read-only and the host decides.
    async fn ensure_ipv6_forwarding(&self) -> Result<bool>;
    /// Prefixes already used on the host (routes and interface addresses), so
    /// IPAM never hands out a pool that would collide with them.
    async fn host_prefixes(&self) -> Result<Vec<IpNet>>;
    /// The kernel's ephemeral port range (`ip_local_port_range`), where a
    /// published port without a host port is picked.
    fn ephemeral_ports(&self) -> RangeInclusive<u16>;
    /// Fails when a host service listens on the port the mapping would take.
    fn host_port_free(&self, port: &FwPort) -> std::io::Result<()>;
    /// Random bytes (MAC addresses).
    fn random_bytes(&self, buf: &mut [u8]) -> Result<()>;

    /// Creates the VXLAN device if missing (learning off, proxy on, the port
    /// given), marks it, sets its MTU and puts it up on its bridge.
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<()>;
    /// The MTU of the interface holding `local` (the node's data-path
    /// address); without it, of the interface of the default route; 1500 when neither is known.
    async fn underlay_mtu(&self, local: Option<IpAddr>) -> Result<u32>;
    /// The forwarding entries with a remote and the permanent neighbours of a
    /// VXLAN device (empty when it is gone).
    async fn vxlan_entries(&self, device: &str) -> Result<VxlanEntries>;
    /// Adds a forwarding entry (appended for [`FLOOD_MAC`], replacing any other).
    async fn add_fdb(&self, device: &str, entry: &FdbEntry) -> Result<()>;
    /// Removes a forwarding entry; one that is gone (or a device that is gone) is success.
    async fn del_fdb(&self, device: &str, entry: &FdbEntry) -> Result<()>;
    /// Adds or replaces a permanent neighbour.
    async fn add_neigh(&self, device: &str, entry: &NeighEntry) -> Result<()>;
    /// Removes a neighbour; one that is gone (or a device that is gone) is success.
    async fn del_neigh(&self, device: &str, entry: &NeighEntry) -> Result<()>;
}
