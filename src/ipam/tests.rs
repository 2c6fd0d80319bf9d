use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn defaults(list: &[&str]) -> Vec<DefaultPool> {
    list.iter().map(|s| DefaultPool::parse(s).unwrap()).collect()
}

fn explicit(ipam: &mut Ipam, pool: &str, sub_pool: Option<&str>) -> Result<PoolRecord, IpamError> {
    ipam.request_pool(LOCAL_ADDRESS_SPACE, Some(net(pool)), sub_pool.map(net), pool.contains(':'), &[])
}

fn auto_v4(ipam: &mut Ipam, host: &[IpNet]) -> Result<IpNet, IpamError> {
    ipam.request_pool(LOCAL_ADDRESS_SPACE, None, None, false, host).map(|r| r.pool)
}

fn next_addr(ipam: &mut Ipam, pool_id: &str) -> IpAddr {
    ipam.request_address(pool_id, None, false).unwrap().0
}

#[test]
fn explicit_pool_gateway_then_automatic_addresses() {
    let mut ipam = Ipam::new(default_pools());
    let record = explicit(&mut ipam, "10.0.0.0/24", None).unwrap();
    assert_eq!(record.id, "rustbridge-local/10.0.0.0/24");
    assert_eq!(record.address_space, LOCAL_ADDRESS_SPACE);
    assert!(!record.auto && !record.v6 && record.sub_pool.is_none());
    assert_eq!(ipam.request_address(&record.id, None, true).unwrap(), (ip("10.0.0.1"), 24));
    assert_eq!(ipam.request_address(&record.id, None, false).unwrap(), (ip("10.0.0.2"), 24));
    assert_eq!(ipam.request_address(&record.id, Some(ip("10.0.0.5")), false).unwrap(), (ip("10.0.0.5"), 24));
    let err = ipam.request_address(&record.id, Some(ip("10.0.0.5")), false).unwrap_err();
    assert_eq!(err.to_string(), "address 10.0.0.5 is already allocated in pool 10.0.0.0/24");
    let err = ipam.request_address(&record.id, None, true).unwrap_err();
    assert_eq!(err.to_string(), "address 10.0.0.1 is already allocated in pool 10.0.0.0/24");
    let err = ipam.request_address(&record.id, Some(ip("10.1.0.9")), false).unwrap_err();
    assert_eq!(err.to_string(), "address 10.1.0.9 is outside pool 10.0.0.0/24");
}

#[test]
fn explicit_gateway_address_is_accepted() {
    let mut ipam = Ipam::new(default_pools());
    let id = explicit(&mut ipam, "10.0.0.0/24", None).unwrap().id;
    assert_eq!(ipam.request_address(&id, Some(ip("10.0.0.254")), true).unwrap(), (ip("10.0.0.254"), 24));
    assert_eq!(next_addr(&mut ipam, &id), ip("10.0.0.1"));
}

#[test]
fn explicit_pool_with_sub_pool() {
    let mut ipam = Ipam::new(default_pools());
    let record = explicit(&mut ipam, "10.1.0.0/16", Some("10.1.2.0/24")).unwrap();
    assert_eq!(record.id, "rustbridge-local/10.1.0.0/16/10.1.2.0/24");
    assert_eq!(record.sub_pool, Some(net("10.1.2.0/24")));
    assert_eq!(ipam.request_address(&record.id, Some(ip("10.1.0.1")), true).unwrap(), (ip("10.1.0.1"), 16));
    assert_eq!(ipam.request_address(&record.id, None, false).unwrap(), (ip("10.1.2.0"), 16));
    assert_eq!(next_addr(&mut ipam, &record.id), ip("10.1.2.1"));
}

#[test]
fn exhausted_sub_pool_reports_the_range() {
    let mut ipam = Ipam::new(default_pools());
    let id = explicit(&mut ipam, "10.1.0.0/16", Some("10.1.2.0/31")).unwrap().id;
    next_addr(&mut ipam, &id);
    next_addr(&mut ipam, &id);
    let err = ipam.request_address(&id, None, false).unwrap_err();
    assert_eq!(err.to_string(), "no free address left in 10.1.2.0/31");
}

#[test]
fn empty_address_space_is_local_and_unknown_is_refused() {
    let mut ipam = Ipam::new(default_pools());
    let record = ipam.request_pool("", Some(net("10.0.0.0/24")), None, false, &[]).unwrap();
    assert_eq!(record.address_space, LOCAL_ADDRESS_SPACE);
    let err = ipam.request_pool("other", Some(net("10.9.0.0/24")), None, false, &[]).unwrap_err();
    assert!(err.to_string().starts_with("invalid AddressSpace \"other\""), "{err}");
}

#[test]
fn overlapping_explicit_pools_are_refused_within_an_address_space() {
    let mut ipam = Ipam::new(default_pools());
    explicit(&mut ipam, "10.0.1.0/24", None).unwrap();
    let err = explicit(&mut ipam, "10.0.0.0/16", None).unwrap_err();
    assert_eq!(err.to_string(), "pool 10.0.0.0/16 overlaps held pool 10.0.1.0/24");
    let err = explicit(&mut ipam, "10.0.1.128/25", None).unwrap_err();
    assert_eq!(err, IpamError::PoolOverlap { requested: net("10.0.1.128/25"), held: net("10.0.1.0/24") });
    let err = explicit(&mut ipam, "10.0.1.0/24", Some("10.0.1.0/28")).unwrap_err();
    assert!(matches!(err, IpamError::PoolOverlap { .. }));
    explicit(&mut ipam, "10.0.2.0/24", None).unwrap();
    let global = ipam.request_pool(GLOBAL_ADDRESS_SPACE, Some(net("10.0.0.0/16")), None, false, &[]).unwrap();
    assert_eq!(global.id, "rustbridge-global/10.0.0.0/16");
    assert_eq!(ipam.pools().count(), 3);
}

#[test]
fn invalid_explicit_pools_are_refused() {
    let mut ipam = Ipam::new(default_pools());
    let err = explicit(&mut ipam, "10.0.0.1/24", None).unwrap_err();
    assert_eq!(err.to_string(), "invalid Pool \"10.0.0.1/24\": host bits set (did you mean 10.0.0.0/24?)");
    let err = explicit(&mut ipam, "10.0.0.0/24", Some("10.0.1.0/28")).unwrap_err();
    assert_eq!(err.to_string(), "invalid SubPool \"10.0.1.0/28\": not inside Pool 10.0.0.0/24");
    let err = explicit(&mut ipam, "10.0.0.0/24", Some("10.0.0.1/28")).unwrap_err();
    assert!(err.to_string().starts_with("invalid SubPool \"10.0.0.1/28\": host bits set"), "{err}");
    let err = ipam.request_pool("", Some(net("10.0.0.0/24")), None, true, &[]).unwrap_err();
    assert_eq!(err.to_string(), "V6 is true but Pool 10.0.0.0/24 is an IPv4 network");
    let err = ipam.request_pool("", Some(net("fd00::/64")), None, false, &[]).unwrap_err();
    assert_eq!(err.to_string(), "V6 is false but Pool fd00::/64 is an IPv6 network");
    let err = ipam.request_pool("", None, Some(net("10.0.0.0/24")), false, &[]).unwrap_err();
    assert!(err.to_string().starts_with("invalid SubPool"), "{err}");
    assert_eq!(ipam.pools().count(), 0);
}

#[test]
fn default_pools_are_handed_out_in_order() {
    let mut ipam = Ipam::new(default_pools());
    let record = ipam.request_pool(LOCAL_ADDRESS_SPACE, None, None, false, &[]).unwrap();
    assert_eq!(record.pool, net("10.210.0.0/24"));
    assert_eq!(record.id, "rustbridge-local/10.210.0.0/24");
    assert!(record.auto);
    assert_eq!(auto_v4(&mut ipam, &[]).unwrap(), net("10.210.1.0/24"));
    let v6 = ipam.request_pool(LOCAL_ADDRESS_SPACE, None, None, true, &[]).unwrap();
    assert_eq!(v6.pool, net("fdb7:7b00::/64"));
    assert!(v6.v6 && v6.auto);
    assert_eq!(ipam.request_address(&v6.id, None, true).unwrap(), (ip("fdb7:7b00::1"), 64));
}

#[test]
fn default_picking_skips_held_pools_of_any_address_space() {
    let mut ipam = Ipam::new(default_pools());
    explicit(&mut ipam, "10.210.0.0/24", None).unwrap();
    ipam.request_pool(GLOBAL_ADDRESS_SPACE, Some(net("10.210.1.0/25")), None, false, &[]).unwrap();
    assert_eq!(auto_v4(&mut ipam, &[]).unwrap(), net("10.210.2.0/24"));
}

#[test]
fn default_picking_skips_host_prefixes_but_not_default_routes() {
    let mut ipam = Ipam::new(default_pools());
    let host = [net("0.0.0.0/0"), net("10.210.0.0/22"), net("10.210.5.17/24"), net("fdb7:7b00::/48")];
    assert_eq!(auto_v4(&mut ipam, &host).unwrap(), net("10.210.4.0/24"));
    assert_eq!(auto_v4(&mut ipam, &host).unwrap(), net("10.210.6.0/24"));
    let v6 = ipam.request_pool("", None, None, true, &host).unwrap();
    assert_eq!(v6.pool, net("fdb7:7b00:1::/64"));
}

#[test]
fn repeated_identical_requests_get_different_pools() {
    let mut ipam = Ipam::new(default_pools());
    let first = ipam.request_pool("", None, None, false, &[]).unwrap();
    let second = ipam.request_pool("", None, None, false, &[]).unwrap();
    assert_ne!(first.pool, second.pool);
    ipam.release_pool(&second.id).unwrap();
    let third = ipam.request_pool("", None, None, false, &[]).unwrap();
    assert_ne!(third.pool, second.pool);
    assert_ne!(third.pool, first.pool);
    ipam.release_pool(&third.id).unwrap();
    ipam.release_pool(&first.id).unwrap();
    let fourth = ipam.request_pool("", None, None, false, &[]).unwrap();
    assert_ne!(fourth.pool, third.pool);
    assert_eq!(fourth.pool, net("10.210.3.0/24"), "next-fit continues after the last answer");
}

#[test]
fn single_candidate_is_not_answered_twice_in_a_row() {
    let mut ipam = Ipam::new(defaults(&["10.0.0.0/24:24"]));
    let first = ipam.request_pool("", None, None, false, &[]).unwrap();
    ipam.release_pool(&first.id).unwrap();
    let err = ipam.request_pool("", None, None, false, &[]).unwrap_err();
    assert_eq!(err.to_string(), "no free default pool: all of 10.0.0.0/24:24 are in use or overlap host routes");
    assert_eq!(auto_v4(&mut ipam, &[]).unwrap(), net("10.0.0.0/24"), "a failed request clears the memory");
}

#[test]
fn default_pools_exhaust_and_wrap_across_several_bases() {
    let mut ipam = Ipam::new(defaults(&["10.0.0.0/23:24", "fd00::/64:64", "10.1.0.0/24:24"]));
    let got: Vec<IpNet> = (0..3).map(|_| auto_v4(&mut ipam, &[]).unwrap()).collect();
    assert_eq!(got, vec![net("10.0.0.0/24"), net("10.0.1.0/24"), net("10.1.0.0/24")]);
    let err = auto_v4(&mut ipam, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free default pool: all of 10.0.0.0/23:24, 10.1.0.0/24:24 are in use or overlap host routes"
    );
    ipam.release_pool("rustbridge-local/10.0.1.0/24").unwrap();
    assert_eq!(auto_v4(&mut ipam, &[]).unwrap(), net("10.0.1.0/24"));
    ipam.release_pool("rustbridge-local/10.0.0.0/24").unwrap();
    ipam.release_pool("rustbridge-local/10.1.0.0/24").unwrap();
    assert_eq!(auto_v4(&mut ipam, &[]).unwrap(), net("10.1.0.0/24"));
    assert_eq!(auto_v4(&mut ipam, &[]).unwrap(), net("10.0.0.0/24"), "wraps to the first base");
}

#[test]
fn host_routes_can_exhaust_default_pools() {
    let mut ipam = Ipam::new(defaults(&["10.0.0.0/23:24"]));
    assert!(matches!(auto_v4(&mut ipam, &[net("10.0.0.0/8")]), Err(IpamError::NoFreeDefaultPool { .. })));
}

#[test]
fn missing_default_family_is_reported() {
    let mut ipam = Ipam::new(defaults(&["10.0.0.0/23:24"]));
    let err = ipam.request_pool("", None, None, true, &[]).unwrap_err();
    assert_eq!(err.to_string(), "no default IPv6 pool configured");
}

#[test]
fn invalid_hand_built_defaults_are_ignored() {
    let bad = DefaultPool { base: net("10.0.0.1/16"), size: 24 };
    let too_short = DefaultPool { base: net("10.0.0.0/16"), size: 8 };
    let ipam = Ipam::new(vec![bad, too_short, DefaultPool::parse("10.5.0.0/16:24").unwrap()]);
    assert_eq!(ipam.default_pools().len(), 1);
}

#[test]
fn release_pool_frees_its_addresses() {
    let mut ipam = Ipam::new(default_pools());
    let id = explicit(&mut ipam, "10.0.0.0/24", None).unwrap().id;
    ipam.request_address(&id, None, true).unwrap();
    next_addr(&mut ipam, &id);
    let released = ipam.release_pool(&id).unwrap();
    assert_eq!(released.pool, net("10.0.0.0/24"));
    assert!(ipam.pool(&id).is_none());
    assert_eq!(ipam.request_address(&id, None, false), Err(IpamError::UnknownPool(id.clone())));
    assert_eq!(ipam.release_pool(&id).unwrap_err().to_string(), format!("unknown pool id {id:?}"));
    let again = explicit(&mut ipam, "10.0.0.0/24", None).unwrap();
    assert_eq!(ipam.addresses(&again.id).unwrap().allocated_count(), 0);
    assert_eq!(ipam.request_address(&again.id, None, true).unwrap().0, ip("10.0.0.1"));
}

#[test]
fn release_address_reports_unknown_and_unallocated() {
    let mut ipam = Ipam::new(default_pools());
    let id = explicit(&mut ipam, "10.0.0.0/24", None).unwrap().id;
    let addr = next_addr(&mut ipam, &id);
    ipam.release_address(&id, addr).unwrap();
    assert!(matches!(ipam.release_address(&id, addr), Err(IpamError::NotAllocated { .. })));
    assert!(matches!(ipam.release_address("nope", addr), Err(IpamError::UnknownPool(_))));
    assert!(!ipam.addresses(&id).unwrap().is_allocated(addr));
}

#[test]
fn restore_round_trip_continues_without_duplicates() {
    let mut before = Ipam::new(default_pools());
    let v4 = before.request_pool("", Some(net("10.1.0.0/16")), Some(net("10.1.2.0/24")), false, &[]).unwrap();
    let v6 = before.request_pool("", None, None, true, &[]).unwrap();
    let mut persisted: Vec<(String, IpAddr)> = Vec::new();
    for (id, gateway) in
        [(&v4.id, true), (&v4.id, false), (&v4.id, false), (&v4.id, false), (&v6.id, true), (&v6.id, false)]
    {
        persisted.push((id.clone(), before.request_address(id, None, gateway).unwrap().0));
    }
    let released = persisted.remove(2);
    before.release_address(&released.0, released.1).unwrap();

    let mut after = Ipam::new(default_pools());
    for record in before.pools() {
        after.restore_pool(record.clone()).unwrap();
    }
    for (id, addr) in persisted.iter().rev() {
        after.restore_address(id, *addr).unwrap();
    }
    for id in [&v4.id, &v6.id] {
        if let Some(cursor) = before.cursor(id) {
            after.restore_cursor(id, cursor).unwrap();
        }
    }
    assert_eq!(after.pools().collect::<Vec<_>>(), before.pools().collect::<Vec<_>>());
    for id in [&v4.id, &v6.id] {
        for _ in 0..3 {
            assert_eq!(next_addr(&mut after, id), next_addr(&mut before, id));
        }
        let count = before.addresses(id).unwrap().allocated_count();
        assert_eq!(after.addresses(id).unwrap().allocated_count(), count);
    }
    let err = after.restore_address(&v4.id, persisted[0].1).unwrap_err();
    assert!(matches!(err, IpamError::AlreadyAllocated { .. }));
    assert!(matches!(after.restore_address("nope", persisted[0].1), Err(IpamError::UnknownPool(_))));
    assert_eq!(after.restore_pool(v4.clone()), Err(IpamError::DuplicatePool(v4.id.clone())));
    let new_pool = after.request_pool("", None, None, true, &[]).unwrap();
    assert_ne!(new_pool.pool, v6.pool);
}

#[test]
fn restore_pool_validates_the_record() {
    let mut ipam = Ipam::new(default_pools());
    let mut record = PoolRecord {
        id: "rustbridge-local/10.0.0.0/24".into(),
        address_space: String::new(),
        pool: net("10.0.0.0/24"),
        sub_pool: None,
        v6: true,
        auto: false,
    };
    assert!(matches!(ipam.restore_pool(record.clone()), Err(IpamError::FamilyMismatch { .. })));
    record.v6 = false;
    ipam.restore_pool(record.clone()).unwrap();
    assert_eq!(ipam.pool(&record.id).unwrap().address_space, LOCAL_ADDRESS_SPACE);
    let err = explicit(&mut ipam, "10.0.0.0/16", None).unwrap_err();
    assert!(matches!(err, IpamError::PoolOverlap { .. }));
}

#[test]
fn default_pools_serialize_as_text() {
    let pool = DefaultPool::parse("fd5c::/48:64").unwrap();
    let json = serde_json::to_string(&pool).unwrap();
    assert_eq!(json, "{\"base\":\"fd5c::/48\",\"size\":64}");
    assert_eq!(serde_json::from_str::<DefaultPool>(&json).unwrap(), pool);
}

#[test]
fn many_containers_in_auto_pools_get_unique_addresses() {
    let mut ipam = Ipam::new(defaults(&["10.20.0.0/16:16", "fd00:1::/64:64"]));
    for v6 in [false, true] {
        let id = ipam.request_pool("", None, None, v6, &[]).unwrap().id;
        let gateway = ipam.request_address(&id, None, true).unwrap().0;
        let got: HashSet<IpAddr> = (0..65_000).map(|_| next_addr(&mut ipam, &id)).collect();
        assert_eq!(got.len(), 65_000);
        assert!(!got.contains(&gateway));
        assert_eq!(ipam.addresses(&id).unwrap().allocated_count(), 65_001);
    }
}

#[test]
fn free_in_range_counts_usable_free_addresses_of_the_range_only() {
    let mut a = AddressAllocator::new(net("10.9.0.0/24"), None).unwrap();
    assert_eq!(a.free_in_range(), 254, "network and broadcast are reserved");
    a.allocate_specific(ip("10.9.0.1")).unwrap();
    a.allocate_specific(ip("10.9.0.200")).unwrap();
    assert_eq!(a.free_in_range(), 252);
    let mut r = AddressAllocator::new(net("10.9.0.0/24"), Some(net("10.9.0.128/25"))).unwrap();
    assert_eq!(r.free_in_range(), 127, "the range's upper end is the pool's broadcast");
    r.allocate_specific(ip("10.9.0.5")).unwrap();
    assert_eq!(r.free_in_range(), 127, "an address outside the range does not count");
    r.allocate_specific(ip("10.9.0.130")).unwrap();
    assert_eq!(r.free_in_range(), 126);
    let v6 = AddressAllocator::new(net("fd00::/64"), None).unwrap();
    assert_eq!(v6.free_in_range(), (1u128 << 64) - 1);
}
