//! Address allocation inside one pool.
//!
//! Addresses are handled as offsets from the pool's network address. The allocator keeps
//! the *free* addresses as disjoint, non-adjacent intervals in a `BTreeMap<start, end>`
//! (both inclusive), so every operation costs O(log intervals) whatever the pool size:
//! an IPv6 /64 starts as a single interval.
//!
//! Reserved addresses (never in the free map, so never handed out):
//! - IPv4 with prefix < 31: the network and the broadcast address.
//! - IPv6 with prefix < 127: the first address (subnet-router anycast); IPv6 has no broadcast.
//! - IPv4 /31 and /32, IPv6 /127 and /128: nothing; every address is usable (RFC 3021, RFC 6164).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::IpamError;
use super::net::{addr_to_u128, first_value, last_value, require_network, require_sub_pool_inside, u128_to_addr};
use crate::family::Family;

#[derive(Clone, Debug)]
pub struct AddressAllocator {
    pool: IpNet,
    /// The sub-pool (`--ip-range`) automatic addresses come from, or the pool itself.
    range: IpNet,
    base: u128,
    range_first: u128,
    range_last: u128,
    free: BTreeMap<u128, u128>,
    allocated: u128,
    /// Offset of the last address `allocate_next` handed out; the next search starts after it.
    last_handed_out: Option<u128>,
}

impl AddressAllocator {
    /// `pool`: the network (v4 or v6), host bits must be zero. `range`: optional sub-pool
    /// (`--ip-range`), must be a network inside `pool` (hence of the same family).
    pub fn new(pool: IpNet, range: Option<IpNet>) -> Result<Self, IpamError> {
        require_network("Pool", pool)?;
        if let Some(range) = range {
            require_sub_pool_inside(range, pool)?;
        }
        let range = range.unwrap_or(pool);
        let base = first_value(&pool);
        let mut allocator = AddressAllocator {
            pool,
            range,
            base,
            range_first: first_value(&range) - base,
            range_last: last_value(&range) - base,
            free: BTreeMap::new(),
            allocated: 0,
            last_handed_out: None,
        };
        let (first, last) = allocator.usable_offsets();
        allocator.free.insert(first, last);
        Ok(allocator)
    }

    pub fn pool(&self) -> IpNet {
        self.pool
    }

    pub fn range(&self) -> IpNet {
        self.range
    }

    /// Allocates a given address (`--ip`, gateway, aux address): any address inside the
    /// pool, even outside the range, except the reserved ones.
    pub fn allocate_specific(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        let offset = self.usable_offset_of(addr)?;
        if !self.is_free(offset) {
            return Err(IpamError::AlreadyAllocated { addr, pool: self.pool });
        }
        self.take(offset);
        Ok(())
    }

    /// Allocates an address from the range, next-fit: continues after the last address
    /// handed out and wraps around once, skipping taken and reserved addresses.
    pub fn allocate_next(&mut self) -> Result<IpAddr, IpamError> {
        let start = self.next_fit_start();
        let offset = self
            .first_free_between(start, self.range_last)
            .or_else(|| self.first_free_between(self.range_first, self.range_last))
            .ok_or(IpamError::Exhausted { range: self.range })?;
        self.take(offset);
        self.last_handed_out = Some(offset);
        Ok(self.addr_at(offset))
    }

    /// Re-allocates an address read back from persistence, like `allocate_specific`.
    /// The next-fit cursor is not moved: it is persisted and restored on its own
    /// (`restore_cursor`), so the state loaded back equals the state before.
    pub fn restore(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        self.allocate_specific(addr)
    }

    /// The last address `allocate_next` handed out: persisted, so that after a restart
    /// automatic allocation continues after it even if that address was released since.
    pub fn cursor(&self) -> Option<IpAddr> {
        self.last_handed_out.map(|offset| self.addr_at(offset))
    }

    /// Puts back a persisted cursor (after the addresses were restored).
    pub fn restore_cursor(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        let offset = self.offset_of(addr)?;
        if (self.range_first..=self.range_last).contains(&offset) {
            self.last_handed_out = Some(offset);
        }
        Ok(())
    }

    /// Releasing an address that is not allocated (free or reserved) is `NotAllocated`.
    pub fn release(&mut self, addr: IpAddr) -> Result<(), IpamError> {
        let offset = self.offset_of(addr)?;
        if !self.is_usable(offset) || self.is_free(offset) {
            return Err(IpamError::NotAllocated { addr, pool: self.pool });
        }
        self.give_back(offset);
        Ok(())
    }

    pub fn is_allocated(&self, addr: IpAddr) -> bool {
        match self.offset_of(addr) {
            Ok(offset) => self.is_usable(offset) && !self.is_free(offset),
            Err(_) => false,
        }
    }

    pub fn allocated_count(&self) -> u128 {
        self.allocated
    }

    /// Free addresses of the range automatic allocation draws from (`--ip-range`, or the
    /// whole pool), reserved ones not counted. O(free intervals).
    pub fn free_in_range(&self) -> u128 {
        self.free
            .range(..=self.range_last)
            .map(|(&start, &end)| {
                let (start, end) = (start.max(self.range_first), end.min(self.range_last));
                if start <= end { end - start + 1 } else { 0 }
            })
            .sum()
    }

    /// The first non-reserved address of the range (the default gateway: 10.0.0.1 for
    /// 10.0.0.0/24), whether free or not; `None` if the range holds only reserved addresses.
    pub fn first_usable_in_range(&self) -> Option<IpAddr> {
        let (first, last) = self.usable_offsets();
        let offset = self.range_first.max(first);
        (offset <= self.range_last.min(last)).then(|| self.addr_at(offset))
    }

    /// Inclusive offsets of the first and last usable address of the pool.
    fn usable_offsets(&self) -> (u128, u128) {
        let size_minus_one = last_value(&self.pool) - self.base;
        let host_bits = self.pool.max_prefix_len() - self.pool.prefix_len();
        if host_bits <= 1 {
            return (0, size_minus_one);
        }
        let has_broadcast = Family::of_net(&self.pool) == Family::V4;
        (1, size_minus_one - u128::from(has_broadcast))
    }

    fn is_usable(&self, offset: u128) -> bool {
        let (first, last) = self.usable_offsets();
        (first..=last).contains(&offset)
    }

    fn offset_of(&self, addr: IpAddr) -> Result<u128, IpamError> {
        if !self.pool.contains(&addr) {
            return Err(IpamError::OutsidePool { addr, pool: self.pool });
        }
        Ok(addr_to_u128(addr) - self.base)
    }

    fn usable_offset_of(&self, addr: IpAddr) -> Result<u128, IpamError> {
        let offset = self.offset_of(addr)?;
        if self.is_usable(offset) {
            return Ok(offset);
        }
        let reason = if offset == 0 { "network address" } else { "broadcast address" };
        Err(IpamError::ReservedAddress { addr, pool: self.pool, reason })
    }

    fn addr_at(&self, offset: u128) -> IpAddr {
        u128_to_addr(self.base + offset, Family::of_net(&self.pool))
    }

    fn next_fit_start(&self) -> u128 {
        match self.last_handed_out {
            Some(last) if last < self.range_last => last + 1,
            _ => self.range_first,
        }
    }

    /// The free interval containing `offset`, if any.
    fn free_interval_containing(&self, offset: u128) -> Option<(u128, u128)> {
        let (&start, &end) = self.free.range(..=offset).next_back()?;
        (end >= offset).then_some((start, end))
    }

    fn is_free(&self, offset: u128) -> bool {
        self.free_interval_containing(offset).is_some()
    }

    fn first_free_between(&self, from: u128, to: u128) -> Option<u128> {
        if from > to {
            return None;
        }
        if self.is_free(from) {
            return Some(from);
        }
        self.free.range(from..=to).next().map(|(&start, _)| start)
    }

    /// Removes a free `offset` from its interval, splitting it if needed.
    fn take(&mut self, offset: u128) {
        let (start, end) = self.free_interval_containing(offset).expect("take() of a non-free offset");
        self.free.remove(&start);
        if start < offset {
            self.free.insert(start, offset - 1);
        }
        if offset < end {
            self.free.insert(offset + 1, end);
        }
        self.allocated += 1;
    }

    /// Adds an allocated `offset` back, merging with the free neighbours on both sides.
    fn give_back(&mut self, offset: u128) {
        let mut start = offset;
        let mut end = offset;
        if let Some(before) = offset.checked_sub(1)
            && let Some((left_start, _)) = self.free_interval_containing(before)
        {
            self.free.remove(&left_start);
            start = left_start;
        }
        if let Some(after) = offset.checked_add(1)
            && let Some(right_end) = self.free.remove(&after)
        {
            end = right_end;
        }
        self.free.insert(start, end);
        self.allocated -= 1;
    }

    #[cfg(test)]
    pub(crate) fn free_interval_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::IpAddr;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn alloc(pool: &str) -> AddressAllocator {
        AddressAllocator::new(net(pool), None).unwrap()
    }

    fn alloc_in_range(pool: &str, range: &str) -> AddressAllocator {
        AddressAllocator::new(net(pool), Some(net(range))).unwrap()
    }

    fn next_n(a: &mut AddressAllocator, n: usize) -> Vec<IpAddr> {
        (0..n).map(|_| a.allocate_next().unwrap()).collect()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn skips_network_and_broadcast() {
        let mut a = alloc("10.0.0.0/29");
        let got = next_n(&mut a, 6);
        assert_eq!(got, ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]));
        assert_eq!(a.allocate_next(), Err(IpamError::Exhausted { range: net("10.0.0.0/29") }));
        assert!(!a.is_allocated(ip("10.0.0.0")));
        assert!(!a.is_allocated(ip("10.0.0.7")));
    }

    #[test]
    fn network_and_broadcast_cannot_be_allocated_explicitly() {
        let mut a = alloc("10.0.0.0/24");
        let err = a.allocate_specific(ip("10.0.0.0")).unwrap_err();
        assert!(matches!(err, IpamError::ReservedAddress { reason: "network address", .. }));
        let err = a.allocate_specific(ip("10.0.0.255")).unwrap_err();
        assert!(matches!(err, IpamError::ReservedAddress { reason: "broadcast address", .. }));
        assert_eq!(a.allocated_count(), 0);
    }

    #[test]
    fn first_address_is_gateway_candidate_and_first_automatic() {
        let mut a = alloc("10.0.0.0/24");
        assert_eq!(a.first_usable_in_range(), Some(ip("10.0.0.1")));
        assert_eq!(a.allocate_next().unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn automatic_after_gateway_continues_with_next() {
        let mut a = alloc("10.0.0.0/24");
        a.allocate_specific(ip("10.0.0.1")).unwrap();
        assert_eq!(next_n(&mut a, 2), ips(&["10.0.0.2", "10.0.0.3"]));
    }

    #[test]
    fn next_fit_does_not_reuse_released_until_wrap() {
        let mut a = alloc("10.0.0.0/29");
        assert_eq!(next_n(&mut a, 3), ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
        a.release(ip("10.0.0.2")).unwrap();
        assert_eq!(next_n(&mut a, 3), ips(&["10.0.0.4", "10.0.0.5", "10.0.0.6"]));
        // wrapped: the only free address is the released one
        assert_eq!(a.allocate_next().unwrap(), ip("10.0.0.2"));
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn release_then_reuse_after_wrap_in_order() {
        let mut a = alloc("10.0.0.0/29");
        next_n(&mut a, 6);
        for addr in ["10.0.0.5", "10.0.0.2", "10.0.0.3"] {
            a.release(ip(addr)).unwrap();
        }
        assert_eq!(next_n(&mut a, 3), ips(&["10.0.0.2", "10.0.0.3", "10.0.0.5"]));
        assert_eq!(a.allocated_count(), 6);
    }

    #[test]
    fn next_fit_skips_explicitly_taken() {
        let mut a = alloc("10.0.0.0/29");
        a.allocate_specific(ip("10.0.0.2")).unwrap();
        a.allocate_specific(ip("10.0.0.3")).unwrap();
        assert_eq!(next_n(&mut a, 2), ips(&["10.0.0.1", "10.0.0.4"]));
    }

    #[test]
    fn explicit_outside_range_but_inside_pool_is_allowed() {
        let mut a = alloc_in_range("10.1.0.0/16", "10.1.2.0/24");
        a.allocate_specific(ip("10.1.0.1")).unwrap();
        a.allocate_specific(ip("10.1.200.7")).unwrap();
        assert!(a.is_allocated(ip("10.1.200.7")));
        assert_eq!(a.allocate_next().unwrap(), ip("10.1.2.0"));
    }

    #[test]
    fn outside_pool_is_an_error() {
        let mut a = alloc("10.0.0.0/24");
        let err = a.allocate_specific(ip("10.1.0.9")).unwrap_err();
        assert_eq!(err.to_string(), "address 10.1.0.9 is outside pool 10.0.0.0/24");
        assert!(a.allocate_specific(ip("fd00::1")).is_err());
        assert!(a.release(ip("10.1.0.9")).is_err());
        assert!(!a.is_allocated(ip("10.1.0.9")));
    }

    #[test]
    fn duplicate_is_an_error() {
        let mut a = alloc("10.0.0.0/24");
        a.allocate_specific(ip("10.0.0.5")).unwrap();
        let err = a.allocate_specific(ip("10.0.0.5")).unwrap_err();
        assert_eq!(err.to_string(), "address 10.0.0.5 is already allocated in pool 10.0.0.0/24");
        assert_eq!(a.allocated_count(), 1);
    }

    #[test]
    fn release_of_unallocated_is_not_allocated() {
        let mut a = alloc("10.0.0.0/24");
        assert!(matches!(a.release(ip("10.0.0.5")), Err(IpamError::NotAllocated { .. })));
        assert!(matches!(a.release(ip("10.0.0.0")), Err(IpamError::NotAllocated { .. })));
        a.allocate_specific(ip("10.0.0.5")).unwrap();
        a.release(ip("10.0.0.5")).unwrap();
        assert!(matches!(a.release(ip("10.0.0.5")), Err(IpamError::NotAllocated { .. })));
        assert_eq!(a.allocated_count(), 0);
    }

    #[test]
    fn exhaustion_on_slash_30() {
        let mut a = alloc("10.0.0.0/30");
        assert_eq!(next_n(&mut a, 2), ips(&["10.0.0.1", "10.0.0.2"]));
        let err = a.allocate_next().unwrap_err();
        assert_eq!(err.to_string(), "no free address left in 10.0.0.0/30");
    }

    #[test]
    fn exhaustion_on_sub_pool_leaves_rest_of_pool_free() {
        let mut a = alloc_in_range("10.0.0.0/24", "10.0.0.8/30");
        assert_eq!(next_n(&mut a, 4), ips(&["10.0.0.8", "10.0.0.9", "10.0.0.10", "10.0.0.11"]));
        assert_eq!(a.allocate_next(), Err(IpamError::Exhausted { range: net("10.0.0.8/30") }));
        a.allocate_specific(ip("10.0.0.12")).unwrap();
        assert_eq!(a.allocated_count(), 5);
    }

    #[test]
    fn sub_pool_at_pool_start_skips_network_address() {
        let mut a = alloc_in_range("10.0.0.0/24", "10.0.0.0/30");
        assert_eq!(a.first_usable_in_range(), Some(ip("10.0.0.1")));
        assert_eq!(next_n(&mut a, 3), ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn sub_pool_of_only_the_broadcast_address_has_no_usable_address() {
        let mut a = alloc_in_range("10.0.0.0/24", "10.0.0.255/32");
        assert_eq!(a.first_usable_in_range(), None);
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn slash_31_uses_both_addresses() {
        let mut a = alloc("10.0.0.0/31");
        assert_eq!(next_n(&mut a, 2), ips(&["10.0.0.0", "10.0.0.1"]));
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn slash_32_uses_its_single_address() {
        let mut a = alloc("10.0.0.7/32");
        assert_eq!(a.first_usable_in_range(), Some(ip("10.0.0.7")));
        assert_eq!(a.allocate_next().unwrap(), ip("10.0.0.7"));
        assert!(a.allocate_next().is_err());
        a.release(ip("10.0.0.7")).unwrap();
        a.allocate_specific(ip("10.0.0.7")).unwrap();
    }

    #[test]
    fn ipv6_127_and_128_use_every_address() {
        let mut a = alloc("fd00::/127");
        assert_eq!(next_n(&mut a, 2), ips(&["fd00::", "fd00::1"]));
        assert!(a.allocate_next().is_err());
        let mut b = alloc("fd00::5/128");
        assert_eq!(b.allocate_next().unwrap(), ip("fd00::5"));
    }

    #[test]
    fn ipv6_120_reserves_only_first_address() {
        let mut a = alloc("fd00::/120");
        assert!(a.allocate_specific(ip("fd00::")).is_err());
        let got = next_n(&mut a, 255);
        assert_eq!(got[0], ip("fd00::1"));
        assert_eq!(got[254], ip("fd00::ff"));
        assert_eq!(a.allocated_count(), 255);
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn ipv6_64_allocates_at_both_ends() {
        let mut a = alloc("fd00:1:2:3::/64");
        assert_eq!(a.allocate_next().unwrap(), ip("fd00:1:2:3::1"));
        a.allocate_specific(ip("fd00:1:2:3:ffff:ffff:ffff:ffff")).unwrap();
        assert!(a.is_allocated(ip("fd00:1:2:3:ffff:ffff:ffff:ffff")));
        assert_eq!(a.allocated_count(), 2);
        assert!(a.allocate_specific(ip("fd00:1:2:4::1")).is_err());
    }

    #[test]
    fn ipv6_whole_space_does_not_overflow() {
        let mut a = alloc("::/0");
        a.allocate_specific(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(a.allocate_next().unwrap(), ip("::1"));
        a.release(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(a.free_interval_count(), 1);
        assert_eq!(a.allocate_next().unwrap(), ip("::2"));
    }

    #[test]
    fn release_merges_intervals_in_any_order() {
        let mut a = alloc("10.0.0.0/28");
        next_n(&mut a, 14);
        assert_eq!(a.free_interval_count(), 0);
        for last in [5, 3, 4, 9, 7, 8, 6] {
            a.release(ip(&format!("10.0.0.{last}"))).unwrap();
        }
        assert_eq!(a.free_interval_count(), 1);
        assert_eq!(a.allocated_count(), 7);
        a.release(ip("10.0.0.1")).unwrap();
        a.release(ip("10.0.0.14")).unwrap();
        assert_eq!(a.free_interval_count(), 3);
        a.release(ip("10.0.0.2")).unwrap();
        assert_eq!(a.free_interval_count(), 2);
        assert_eq!(a.allocated_count(), 4);
        for addr in 1..=9 {
            a.allocate_specific(ip(&format!("10.0.0.{addr}"))).unwrap();
        }
        a.allocate_specific(ip("10.0.0.14")).unwrap();
        assert_eq!(a.allocated_count(), 14);
        assert_eq!(a.free_interval_count(), 0);
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn new_rejects_bad_pool_and_range() {
        let err = AddressAllocator::new(net("10.0.0.1/24"), None).unwrap_err();
        assert_eq!(err.to_string(), "invalid Pool \"10.0.0.1/24\": host bits set (did you mean 10.0.0.0/24?)");
        let err = AddressAllocator::new(net("10.0.0.0/24"), Some(net("10.0.1.0/28"))).unwrap_err();
        assert_eq!(err.to_string(), "invalid SubPool \"10.0.1.0/28\": not inside Pool 10.0.0.0/24");
        assert!(AddressAllocator::new(net("10.0.0.0/24"), Some(net("fd00::/120"))).is_err());
        assert!(AddressAllocator::new(net("10.0.0.0/24"), Some(net("10.0.0.0/16"))).is_err());
    }

    #[test]
    fn restored_cursor_skips_an_address_released_before_the_restart() {
        let mut a = alloc("10.0.0.0/24");
        next_n(&mut a, 4);
        a.release(ip("10.0.0.4")).unwrap();
        let cursor = a.cursor().unwrap();
        let mut restarted = alloc("10.0.0.0/24");
        for addr in ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]) {
            restarted.restore(addr).unwrap();
        }
        restarted.restore_cursor(cursor).unwrap();
        assert_eq!(restarted.allocate_next().unwrap(), ip("10.0.0.5"));
    }

    /// A restored address (a gateway, an `--ip`) does not move the cursor: it
    /// once did, so after a restart next-fit skipped past specific addresses
    /// where the plugin before the restart would not have (found by the
    /// reload-equals-memory property in tests/ipam_props.rs).
    #[test]
    fn restore_leaves_the_cursor_where_it_was() {
        let mut before = alloc("10.0.0.0/24");
        before.allocate_specific(ip("10.0.0.7")).unwrap();
        let mut a = alloc("10.0.0.0/24");
        a.restore(ip("10.0.0.7")).unwrap();
        assert_eq!(a.cursor(), before.cursor());
        assert_eq!(a.allocate_next().unwrap(), before.allocate_next().unwrap());
        assert_eq!(a.allocate_next().unwrap(), ip("10.0.0.2"));
    }

    #[test]
    fn fills_slash_16_with_65000_unique_addresses() {
        let mut a = alloc("10.0.0.0/16");
        let got: HashSet<IpAddr> = (0..65_000).map(|_| a.allocate_next().unwrap()).collect();
        assert_eq!(got.len(), 65_000);
        assert_eq!(a.allocated_count(), 65_000);
        assert!(!got.contains(&ip("10.0.0.0")));
        assert_eq!(a.free_interval_count(), 1);
        let rest: HashSet<IpAddr> = (0..534).map(|_| a.allocate_next().unwrap()).collect();
        assert!(rest.is_disjoint(&got));
        assert!(a.allocate_next().is_err());
        assert!(!a.is_allocated(ip("10.0.255.255")));
    }

    #[test]
    fn fills_ipv6_64_with_65000_unique_addresses() {
        let mut a = alloc("fd00:aa::/64");
        let got: HashSet<IpAddr> = (0..65_000).map(|_| a.allocate_next().unwrap()).collect();
        assert_eq!(got.len(), 65_000);
        assert_eq!(a.allocated_count(), 65_000);
        assert!(got.iter().all(|addr| a.is_allocated(*addr)));
        assert_eq!(a.free_interval_count(), 1);
    }
}
