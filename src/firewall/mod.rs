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

/// One network as a call leaves it: its view after the call, or None when it
/// (or its bridge) is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwChange {
    pub bridge: String,
    pub after: Option<FwNetwork>,
}

#[async_trait]
pub trait Firewall: Send + Sync {
    /// Makes the kernel hold exactly the rules for `networks` (removing
    /// everything when there are none), in one transaction. Idempotent.
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError>;
    /// Changes only the networks a call changed, in one transaction whose
    /// size does not depend on the other networks. Ok(false): the firewall
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
