//! The firewall: rustbridge's own nftables table written over netlink, one
//! transaction per change holding only what the change adds or removes
//! ([`nft`]), and one static accept rule in dockerd's iptables filter
//! FORWARD ([`rules`], [`iptables`]).
//!
//! dockerd leaves the FORWARD policy at DROP with br_netfilter on, and an
//! accept in another table cannot override a drop: so the nftables table
//! drops what must not pass and marks what may, and the iptables rule (in
//! the flavour dockerd uses) accepts marked packets.

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod iptables;
pub mod nft;
pub mod rules;
pub mod swarm;

#[cfg(any(test, feature = "test-support"))]
pub use fake::FakeFirewall;

use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;

/// What the firewall needs to know about one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNetwork {
    pub bridge: String,
    pub subnets: Vec<IpNet>,
    pub internal: bool,
    pub icc: bool,
    pub masquerade: bool,
    /// gateway_mode routed, per family: no NAT, and the subnet is reachable from outside.
    pub routed_v4: bool,
    pub routed_v6: bool,
    /// Host interfaces from which containers may be reached directly at their
    /// own addresses (`com.docker.network.bridge.trusted_host_interfaces`).
    pub trusted_interfaces: Vec<String>,
    /// Published ports of all the network's endpoints.
    pub ports: Vec<FwPort>,
    /// SNAT source instead of MASQUERADE (`com.docker.network.host_ipv4` / `host_ipv6`).
    pub snat_ipv4: Option<IpAddr>,
    pub snat_ipv6: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// IANA protocol numbers, as dockerd sends them.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

/// One published port: host address (None = every address) and port, DNATed
/// to the container's address and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FwPort {
    pub proto: Proto,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("firewall ({tool}): {message}")]
pub struct FirewallError {
    pub tool: String,
    pub message: String,
}

/// What a call changes, and only that: neither the change nor the work it
/// takes depends on the other networks or on the ports already published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwChange {
    /// A network's own settings as the call leaves them, or None when it (or
    /// its bridge) is gone, with every port it still had. The settings'
    /// `ports` are not looked at: ports change only by [`FwChange::Ports`].
    Network { bridge: String, after: Option<FwNetwork> },
    /// Ports published on (`added`) and withdrawn from (`removed`) a
    /// network's bridge; the network's other ports stay as they are.
    Ports { bridge: String, added: Vec<FwPort>, removed: Vec<FwPort> },
}

impl FwChange {
    pub fn bridge(&self) -> &str {
        match self {
            FwChange::Network { bridge, .. } | FwChange::Ports { bridge, .. } => bridge,
        }
    }
}

impl FwNetwork {
    /// The same network without its ports (what [`FwChange::Network`] carries).
    pub fn settings(&self) -> FwNetwork {
        let FwNetwork {
            bridge,
            subnets,
            internal,
            icc,
            masquerade,
            routed_v4,
            routed_v6,
            trusted_interfaces,
            ports: _,
            snat_ipv4,
            snat_ipv6,
        } = self;
        FwNetwork {
            bridge: bridge.clone(),
            subnets: subnets.clone(),
            internal: *internal,
            icc: *icc,
            masquerade: *masquerade,
            routed_v4: *routed_v4,
            routed_v6: *routed_v6,
            trusted_interfaces: trusted_interfaces.clone(),
            ports: vec![],
            snat_ipv4: *snat_ipv4,
            snat_ipv6: *snat_ipv6,
        }
    }

    /// Whether two views of a network differ at most in their ports.
    pub fn same_settings(&self, other: &FwNetwork) -> bool {
        self.settings() == other.settings()
    }
}

/// The ports only in `before` and only in `after`, counted as multisets:
/// (removed, added). Sorts copies of the references, so O(n log n) in the
/// two lists (those of one endpoint, or of the whole state for a full sync).
pub fn port_difference<'a>(before: &'a [FwPort], after: &'a [FwPort]) -> (Vec<&'a FwPort>, Vec<&'a FwPort>) {
    let sorted = |ports: &'a [FwPort]| {
        let mut v: Vec<&FwPort> = ports.iter().collect();
        v.sort();
        v
    };
    let (b, a) = (sorted(before), sorted(after));
    let (mut gone, mut new) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (b.get(i), a.get(j)) {
            (Some(x), Some(y)) if x == y => (i, j) = (i + 1, j + 1),
            (Some(x), Some(y)) if x < y => {
                gone.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                gone.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                new.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (gone, new)
}

#[async_trait]
pub trait Firewall: Send + Sync {
    /// Makes the kernel hold exactly the rules for `networks` (removing
    /// everything when there are none), in one transaction. Idempotent.
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError>;
    /// Makes only the changes a call made (in order), in one transaction
    /// whose size and work do not depend on the other networks or ports.
    /// Ok(false): the firewall
    /// does not know what the kernel holds (first write, or a failed one);
    /// nothing was written and the caller must `sync` every network.
    async fn apply(&self, changes: &[FwChange]) -> Result<bool, FirewallError>;
    /// True when the rules in the kernel still match what `sync` last wrote
    /// (someone may have flushed them, or dockerd restarted and reordered FORWARD).
    async fn is_intact(&self, networks: &[FwNetwork]) -> Result<bool, FirewallError>;
    /// Swarm networks' rule group ([`swarm`]): the VXLAN and directory port
    /// admit only `members` (`Some`), or the group is removed (`None`). Idempotent.
    async fn sync_swarm_members(&self, port: u16, members: Option<&[IpAddr]>) -> Result<(), FirewallError>;
}
