//! Conversions between addresses and `u128` values, and checks on networks shared by
//! the allocator and the pool logic. IPv4 addresses map to `0..2^32`, IPv6 to the whole `u128`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::IpamError;
use crate::family::Family;

pub(crate) fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// `value` must fit the family (below 2^32 for IPv4).
pub(crate) fn u128_to_addr(value: u128, family: Family) -> IpAddr {
    match family {
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).expect("IPv4 value above 2^32"))),
    }
}

pub(crate) fn first_value(net: &IpNet) -> u128 {
    addr_to_u128(net.network())
}

pub(crate) fn last_value(net: &IpNet) -> u128 {
    addr_to_u128(net.broadcast())
}

pub(crate) fn require_network(field: &'static str, net: IpNet) -> Result<(), IpamError> {
    crate::family::require_network(net).map_err(|reason| IpamError::invalid(field, net, reason))
}

pub(crate) fn require_family(field: &'static str, net: IpNet, family: Family) -> Result<(), IpamError> {
    if family.matches(&net) {
        return Ok(());
    }
    Err(IpamError::FamilyMismatch { field, net, v6: family.is_v6() })
}

pub(crate) fn require_sub_pool_inside(sub_pool: IpNet, pool: IpNet) -> Result<(), IpamError> {
    require_network("SubPool", sub_pool)?;
    if pool.contains(&sub_pool) {
        return Ok(());
    }
    Err(IpamError::invalid("SubPool", sub_pool, format!("not inside Pool {pool}")))
}

/// `#[serde(with = ...)]` helper writing a network as its text form ("10.0.0.0/24")
/// (default pools in configuration).
pub(crate) mod ipnet_text {
    use ipnet::IpNet;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(net: &IpNet, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(net)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}
