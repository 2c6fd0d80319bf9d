//! Address families, and the one check every network in a request gets
//! (no host bits set), shared by request parsing, IPAM, ports and the firewall.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of(&net.addr())
    }

    /// dockerd's `V6` flag (RequestPool) and the store's pool records.
    pub fn from_v6(v6: bool) -> Family {
        if v6 { Family::V6 } else { Family::V4 }
    }

    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    pub fn matches(self, net: &IpNet) -> bool {
        Family::of_net(net) == self
    }

    /// The prefix length of a single address.
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A subnet given as a network must have no host bits set; the reason names the network meant.
pub fn require_network(net: IpNet) -> Result<(), String> {
    if net.addr() == net.network() {
        return Ok(());
    }
    Err(format!("host bits set (did you mean {}?)", net.trunc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_addresses_and_networks() {
        let v4: IpNet = "10.0.0.0/24".parse().unwrap();
        let v6: IpNet = "fd00::/64".parse().unwrap();
        assert_eq!((Family::of_net(&v4), Family::of_net(&v6)), (Family::V4, Family::V6));
        assert!(Family::V4.matches(&v4) && !Family::V4.matches(&v6));
        assert_eq!((Family::from_v6(false), Family::from_v6(true)), (Family::V4, Family::V6));
        assert_eq!((Family::V4.host_prefix(), Family::V6.host_prefix()), (32, 128));
        assert_eq!(format!("{} {}", Family::V4, Family::V6), "IPv4 IPv6");
    }

    #[test]
    fn host_bits_are_refused_with_the_network_meant() {
        assert!(require_network("10.0.0.0/24".parse().unwrap()).is_ok());
        assert_eq!(
            require_network("10.0.0.1/24".parse().unwrap()).unwrap_err(),
            "host bits set (did you mean 10.0.0.0/24?)"
        );
        assert!(require_network("fd00::1/64".parse().unwrap()).unwrap_err().contains("fd00::/64"));
    }
}
