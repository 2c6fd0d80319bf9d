//! IP address management: pools, address spaces and address allocation with Docker's
//! IpamDriver semantics. Pure logic: the caller persists the `PoolRecord`s and the
//! allocated addresses, and replays them with `restore_pool` / `restore_address` at start.

mod allocator;
mod error;
mod net;
mod pools;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

pub use allocator::AddressAllocator;
pub use error::IpamError;
pub use pools::{DefaultPool, default_pools};

use net::{require_family, require_network, require_sub_pool_inside};

use crate::family::Family;
use pools::{BlockedRanges, DefaultPoolPicker};

pub const LOCAL_ADDRESS_SPACE: &str = "rustbridge-local";
pub const GLOBAL_ADDRESS_SPACE: &str = "rustbridge-global";

/// In memory only: the store keeps its own record of it (`state::schema`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRecord {
    /// "<address space>/<pool>" or "<address space>/<pool>/<sub pool>",
    /// e.g. "rustbridge-local/10.1.0.0/16/10.1.2.0/24".
    pub id: String,
    pub address_space: String,
    pub pool: IpNet,
    pub sub_pool: Option<IpNet>,
    pub v6: bool,
    /// Picked from the default pools rather than requested explicitly.
    pub auto: bool,
}

#[derive(Debug)]
struct HeldPool {
    record: PoolRecord,
    addresses: AddressAllocator,
    /// Global space only: restored from the store at start and not yet asked
    /// for again, so dockerd's replay may be answered once with what it has
    /// (the pool itself: `None`; an address: `Some`).
    replayable: BTreeSet<Option<IpAddr>>,
    /// Local space, a swarm network's pool: armed by [`Ipam::arm_local_replay`].
    local_replay: Option<LocalReplay>,
}

/// A node re-creating a swarm network after its dockerd started again asks
/// for the pool and its addresses explicitly in the local space; after an
/// unclean stop (dockerd killed, or stopped with live-restore) it never
/// released them. Since the arming, the pool is answered once and each
/// address held once; `answered` notes every address handed out since
/// (replayed or new), so none is ever given twice.
#[derive(Debug, Default)]
struct LocalReplay {
    pool_answered: bool,
    answered: BTreeSet<IpAddr>,
}

#[derive(Debug)]
pub struct Ipam {
    defaults: Vec<DefaultPool>,
    pools: BTreeMap<String, HeldPool>,
    picker: DefaultPoolPicker,
}

impl Ipam {
    /// Entries that `DefaultPool::parse` would reject (possible when built by hand or
    /// deserialized) are left out; validate user input with `DefaultPool::parse`.
    pub fn new(defaults: Vec<DefaultPool>) -> Self {
        let defaults = defaults.into_iter().filter(|d| d.validate().is_ok()).collect();
        Ipam { defaults, pools: BTreeMap::new(), picker: DefaultPoolPicker::default() }
    }

    pub fn default_pools(&self) -> &[DefaultPool] {
        &self.defaults
    }

    /// Restores a persisted pool (before its addresses). Overlaps are not re-checked:
    /// the record was accepted when it was created.
    pub fn restore_pool(&mut self, mut record: PoolRecord) -> Result<(), IpamError> {
        if self.pools.contains_key(&record.id) {
            return Err(IpamError::DuplicatePool(record.id));
        }
        record.address_space = normalize_address_space(&record.address_space)?.to_string();
        require_family("Pool", record.pool, Family::from_v6(record.v6))?;
        let addresses = AddressAllocator::new(record.pool, record.sub_pool)?;
        let replayable =
            if record.address_space == GLOBAL_ADDRESS_SPACE { BTreeSet::from([None]) } else { BTreeSet::new() };
        self.pools.insert(record.id.clone(), HeldPool { record, addresses, replayable, local_replay: None });
        Ok(())
    }

    /// Restores a persisted address of a restored pool. The next-fit cursor is restored
    /// separately (`restore_cursor`), so a restart does not hand out an address released
    /// just before it (nor, of course, one still allocated).
    pub fn restore_address(&mut self, pool_id: &str, addr: IpAddr) -> Result<(), IpamError> {
        let held = self.held_mut(pool_id)?;
        held.addresses.restore(addr)?;
        if held.record.address_space == GLOBAL_ADDRESS_SPACE {
            held.replayable.insert(Some(addr));
        }
        Ok(())
    }

    /// The pool's next-fit cursor, to persist with each automatic allocation.
    pub fn cursor(&self, pool_id: &str) -> Option<IpAddr> {
        self.addresses(pool_id).and_then(|a| a.cursor())
    }

    /// Restores a persisted cursor; call after the pool's addresses were restored.
    pub fn restore_cursor(&mut self, pool_id: &str, addr: IpAddr) -> Result<(), IpamError> {
        self.held_mut(pool_id)?.addresses.restore_cursor(addr)
    }

    /// A swarm manager's replay: at every manager start (which restarts the
    /// plugin too) dockerd asks the global space again, explicitly, for each
    /// network's pool. The pool held there since before this start is
    /// answered once; any other explicit request for a held pool stays refused,
    /// so nothing is ever given twice. In the local space, only a pool armed
    /// by [`Ipam::arm_local_replay`] is answered again (once).
    pub fn replayed_pool(
        &mut self,
        address_space: &str,
        pool: Option<IpNet>,
        sub_pool: Option<IpNet>,
        v6: bool,
    ) -> Option<PoolRecord> {
        let space = normalize_address_space(address_space).ok()?;
        let held = self.pools.get_mut(&pool_id(space, pool?, sub_pool))?;
        if held.record.v6 != v6 {
            return None;
        }
        let replayed = match held.local_replay.as_mut() {
            Some(local) => !std::mem::replace(&mut local.pool_answered, true),
            None => held.replayable.remove(&None),
        };
        replayed.then(|| held.record.clone())
    }

    /// The replay of an address the global space gave before this start
    /// (the manager's allocator asks for each again), or that an armed local
    /// pool holds: answered once, with its prefix length.
    pub fn replayed_address(&mut self, pool_id: &str, addr: Option<IpAddr>) -> Option<u8> {
        let held = self.pools.get_mut(pool_id)?;
        let addr = addr?;
        let replayed = match held.local_replay.as_mut() {
            Some(local) => held.addresses.is_allocated(addr) && local.answered.insert(addr),
            None => held.replayable.remove(&Some(addr)),
        };
        replayed.then(|| held.record.pool.prefix_len())
    }

    /// dockerd started again (it registers the IPAM driver at every start):
    /// the local-space pools among `swarm_pools` (the swarm networks this
    /// node holds) may each be asked for again once, with the addresses they
    /// hold now ([`LocalReplay`]). Other local pools (local networks, which
    /// dockerd keeps across its restarts and never asks for again) are not armed.
    pub fn arm_local_replay(&mut self, swarm_pools: &[IpNet]) {
        for held in self.pools.values_mut() {
            if held.record.address_space == LOCAL_ADDRESS_SPACE && swarm_pools.contains(&held.record.pool) {
                held.local_replay = Some(LocalReplay::default());
            }
        }
    }

    /// RequestPool. Without `pool`, picks the next free candidate of the default pools of
    /// the family: never a held pool (in any address space), never one overlapping
    /// `host_prefixes_in_use` (whose /0 entries, default routes, are ignored), and never
    /// the candidate answered just before. An explicit pool must not overlap a held pool
    /// of the same address space.
    pub fn request_pool(
        &mut self,
        address_space: &str,
        pool: Option<IpNet>,
        sub_pool: Option<IpNet>,
        v6: bool,
        host_prefixes_in_use: &[IpNet],
    ) -> Result<PoolRecord, IpamError> {
        let address_space = normalize_address_space(address_space)?;
        let (pool, auto) = match pool {
            Some(pool) => {
                self.check_explicit_pool(address_space, pool, sub_pool, Family::from_v6(v6))?;
                (pool, false)
            }
            None => {
                if let Some(sub_pool) = sub_pool {
                    return Err(IpamError::invalid("SubPool", sub_pool, "a SubPool requires a Pool"));
                }
                (self.pick_default_pool(Family::from_v6(v6), host_prefixes_in_use)?, true)
            }
        };
        let record = PoolRecord {
            id: pool_id(address_space, pool, sub_pool),
            address_space: address_space.to_string(),
            pool,
            sub_pool,
            v6,
            auto,
        };
        let addresses = AddressAllocator::new(pool, sub_pool)?;
        self.pools.insert(
            record.id.clone(),
            HeldPool { record: record.clone(), addresses, replayable: BTreeSet::new(), local_replay: None },
        );
        Ok(record)
    }

    /// ReleasePool: forgets the pool and all its addresses.
    pub fn release_pool(&mut self, pool_id: &str) -> Result<PoolRecord, IpamError> {
        let held = self.pools.remove(pool_id).ok_or_else(|| unknown_pool(pool_id))?;
        Ok(held.record)
    }

    /// RequestAddress. `addr` given: that address (--ip, --gateway, aux address), anywhere in
    /// the pool. Otherwise with `gateway`: the first usable address of the range (10.0.0.1
    /// for 10.0.0.0/24), an error if taken. Otherwise the next free address of the range.
    /// Returns the address and the pool's prefix length.
    pub fn request_address(
        &mut self,
        pool_id: &str,
        addr: Option<IpAddr>,
        gateway: bool,
    ) -> Result<(IpAddr, u8), IpamError> {
        let held = self.held_mut(pool_id)?;
        let prefix_len = held.record.pool.prefix_len();
        let addresses = &mut held.addresses;
        let addr = match (addr, gateway) {
            (Some(addr), _) => addresses.allocate_specific(addr).map(|()| addr)?,
            (None, true) => allocate_default_gateway(addresses)?,
            (None, false) => addresses.allocate_next()?,
        };
        if let Some(local) = held.local_replay.as_mut() {
            local.answered.insert(addr);
        }
        Ok((addr, prefix_len))
    }

    pub fn release_address(&mut self, pool_id: &str, addr: IpAddr) -> Result<(), IpamError> {
        self.held_mut(pool_id)?.addresses.release(addr)
    }

    pub fn pool(&self, pool_id: &str) -> Option<&PoolRecord> {
        self.pools.get(pool_id).map(|held| &held.record)
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolRecord> {
        self.pools.values().map(|held| &held.record)
    }

    /// The allocator of a held pool, for inspection (`is_allocated`, `allocated_count`).
    pub fn addresses(&self, pool_id: &str) -> Option<&AddressAllocator> {
        self.pools.get(pool_id).map(|held| &held.addresses)
    }

    fn held_mut(&mut self, pool_id: &str) -> Result<&mut HeldPool, IpamError> {
        self.pools.get_mut(pool_id).ok_or_else(|| unknown_pool(pool_id))
    }

    fn check_explicit_pool(
        &self,
        address_space: &str,
        pool: IpNet,
        sub_pool: Option<IpNet>,
        family: Family,
    ) -> Result<(), IpamError> {
        require_network("Pool", pool)?;
        require_family("Pool", pool, family)?;
        if let Some(sub_pool) = sub_pool {
            require_sub_pool_inside(sub_pool, pool)?;
        }
        match self.overlapping_held_pool(address_space, pool) {
            Some(held) => Err(IpamError::PoolOverlap { requested: pool, held }),
            None => Ok(()),
        }
    }

    fn overlapping_held_pool(&self, address_space: &str, pool: IpNet) -> Option<IpNet> {
        self.pools()
            .filter(|record| record.address_space == address_space)
            .map(|record| record.pool)
            .find(|held| held.contains(&pool) || pool.contains(held))
    }

    fn pick_default_pool(&mut self, family: Family, host_prefixes_in_use: &[IpNet]) -> Result<IpNet, IpamError> {
        let held = self.pools.values().map(|held| held.record.pool);
        let host = host_prefixes_in_use.iter().copied().filter(|prefix| prefix.prefix_len() > 0);
        let blocked = BlockedRanges::new(held.chain(host).filter(|net| family.matches(net)));
        self.picker.pick(&self.defaults, family, &blocked)
    }
}

fn allocate_default_gateway(addresses: &mut AddressAllocator) -> Result<IpAddr, IpamError> {
    let gateway = addresses.first_usable_in_range().ok_or(IpamError::Exhausted { range: addresses.range() })?;
    addresses.allocate_specific(gateway)?;
    Ok(gateway)
}

fn normalize_address_space(address_space: &str) -> Result<&'static str, IpamError> {
    match address_space {
        "" | LOCAL_ADDRESS_SPACE => Ok(LOCAL_ADDRESS_SPACE),
        GLOBAL_ADDRESS_SPACE => Ok(GLOBAL_ADDRESS_SPACE),
        other => {
            let reason = format!("expected {LOCAL_ADDRESS_SPACE:?} or {GLOBAL_ADDRESS_SPACE:?}");
            Err(IpamError::invalid("AddressSpace", other, reason))
        }
    }
}

fn pool_id(address_space: &str, pool: IpNet, sub_pool: Option<IpNet>) -> String {
    match sub_pool {
        Some(sub_pool) => format!("{address_space}/{pool}/{sub_pool}"),
        None => format!("{address_space}/{pool}"),
    }
}

fn unknown_pool(pool_id: &str) -> IpamError {
    IpamError::UnknownPool(pool_id.to_string())
}
