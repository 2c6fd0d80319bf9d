use std::net::IpAddr;

use ipnet::IpNet;

use crate::family::Family;

/// Errors of the IPAM. The messages reach the user through `docker network create`
/// and `docker run`, so each names the request field or the address and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("address {addr} is already allocated in pool {pool}")]
    AlreadyAllocated { addr: IpAddr, pool: IpNet },

    #[error("address {addr} is outside pool {pool}")]
    OutsidePool { addr: IpAddr, pool: IpNet },

    #[error("address {addr} is the {reason} of pool {pool} and cannot be allocated")]
    ReservedAddress { addr: IpAddr, pool: IpNet, reason: &'static str },

    #[error("address {addr} is not allocated in pool {pool}")]
    NotAllocated { addr: IpAddr, pool: IpNet },

    #[error("no free address left in {range}")]
    Exhausted { range: IpNet },

    #[error("invalid {field} {value:?}: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },

    #[error("V6 is {v6} but {field} {net} is an {} network", Family::of_net(.net))]
    FamilyMismatch { field: &'static str, net: IpNet, v6: bool },

    #[error("pool {requested} overlaps held pool {held}")]
    PoolOverlap { requested: IpNet, held: IpNet },

    #[error("unknown pool id {0:?}")]
    UnknownPool(String),

    #[error("pool id {0:?} is already held")]
    DuplicatePool(String),

    #[error("no default {family} pool configured")]
    NoDefaultPoolConfigured { family: Family },

    #[error("no free default pool: all of {candidates} are in use or overlap host routes")]
    NoFreeDefaultPool { candidates: String },
}

impl IpamError {
    pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        IpamError::Invalid { field, value: value.to_string(), reason: reason.into() }
    }
}
