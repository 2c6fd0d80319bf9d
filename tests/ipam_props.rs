//! Property tests of the IPAM (proptest): whatever the sequence of requests
//! and releases, no address is handed out twice while held, released
//! addresses come back (next-fit reaches them once the rest is taken), and
//! the state loaded back from the store equals the state in memory.

use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::{Value, json};

use rustbridge::ipam::{Ipam, default_pools};
use rustbridge::server;
use rustbridge::testing::FakePlugin;

#[derive(Clone, Debug)]
enum Op {
    /// RequestAddress without an address (next-fit).
    Next,
    /// RequestAddress of a given host number in the pool (`--ip`).
    Specific(u8),
    /// ReleaseAddress of the n-th held address (modulo how many are held).
    Release(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => Just(Op::Next),
        1 => any::<u8>().prop_map(Op::Specific),
        3 => any::<usize>().prop_map(Op::Release),
    ];
    proptest::collection::vec(op, 1..300)
}

fn host(pool_base: [u8; 3], n: u8) -> IpAddr {
    IpAddr::from([pool_base[0], pool_base[1], pool_base[2], n])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Never a duplicate: every address handed out is not held already, and
    /// the allocator's count matches what is held.
    #[test]
    fn never_a_duplicate_address(ops in ops()) {
        let mut ipam = Ipam::new(default_pools());
        let pool = ipam.request_pool("", Some("10.9.8.0/27".parse().unwrap()), None, false, &[]).unwrap();
        let mut held: Vec<IpAddr> = Vec::new();
        for op in ops {
            match op {
                Op::Next | Op::Specific(_) => {
                    let wanted = match op { Op::Specific(n) => Some(host([10, 9, 8], n)), _ => None };
                    match ipam.request_address(&pool.id, wanted, false) {
                        Ok((addr, 27)) => {
                            prop_assert!(!held.contains(&addr), "{addr} handed out twice");
                            held.push(addr);
                        }
                        Ok((_, len)) => prop_assert!(false, "prefix length {len}"),
                        Err(_) => {
                            // Refused: taken, reserved, outside, or the pool is full.
                            let full = held.len() == 30;
                            prop_assert!(wanted.is_some() || full, "next-fit refused with {} of 30 held", held.len());
                        }
                    }
                }
                Op::Release(i) if !held.is_empty() => {
                    let addr = held.remove(i % held.len());
                    prop_assert!(ipam.release_address(&pool.id, addr).is_ok());
                }
                Op::Release(_) => {}
            }
            prop_assert_eq!(ipam.addresses(&pool.id).unwrap().allocated_count(), held.len() as u128);
        }
    }

    /// Released addresses come back: with the rest of the pool taken,
    /// next-fit hands out exactly the released ones, then reports it is full.
    #[test]
    fn released_addresses_come_back(released in proptest::collection::btree_set(1u8..=14, 0..14), rounds in 0usize..3) {
        let mut ipam = Ipam::new(default_pools());
        let pool = ipam.request_pool("", Some("10.9.9.0/28".parse().unwrap()), None, false, &[]).unwrap();
        for _ in 0..14 {
            ipam.request_address(&pool.id, None, false).unwrap();
        }
        prop_assert!(ipam.request_address(&pool.id, None, false).is_err(), "a /28 holds 14 addresses");
        for _ in 0..=rounds {
            let freed: BTreeSet<IpAddr> = released.iter().map(|&n| host([10, 9, 9], n)).collect();
            for &addr in &freed {
                ipam.release_address(&pool.id, addr).unwrap();
            }
            let mut back = BTreeSet::new();
            for _ in 0..freed.len() {
                back.insert(ipam.request_address(&pool.id, None, false).unwrap().0);
            }
            prop_assert_eq!(&back, &freed);
            prop_assert!(ipam.request_address(&pool.id, None, false).is_err());
        }
    }
}

// ---------------------------------------------------------------- reload equals memory

#[derive(Clone, Debug)]
enum Call {
    RequestPool(u8),
    ReleasePool(usize),
    RequestAddress(usize, bool),
    ReleaseAddress(usize),
}

fn calls() -> impl Strategy<Value = Vec<Call>> {
    let call = prop_oneof![
        1 => (0u8..4).prop_map(Call::RequestPool),
        1 => any::<usize>().prop_map(Call::ReleasePool),
        6 => (any::<usize>(), any::<bool>()).prop_map(|(p, gw)| Call::RequestAddress(p, gw)),
        3 => any::<usize>().prop_map(Call::ReleaseAddress),
    ];
    proptest::collection::vec(call, 1..60)
}

/// Everything the IPAM state holds, as text, for the addresses a model knows of.
fn describe(plugin: &FakePlugin, runtime: &tokio::runtime::Runtime, addresses: &[(String, String)]) -> String {
    let state = runtime.block_on(plugin.plugin().lock_state());
    let mut out = String::new();
    for pool in state.ipam.pools() {
        let allocator = state.ipam.addresses(&pool.id).unwrap();
        out += &format!("{pool:?} count={} cursor={:?}\n", allocator.allocated_count(), state.ipam.cursor(&pool.id));
    }
    for (pool, addr) in addresses {
        let allocated = state.ipam.addresses(pool).map(|a| a.is_allocated(addr.parse().unwrap()));
        out += &format!("{pool} {addr} {allocated:?}\n");
    }
    out
}

fn call(runtime: &tokio::runtime::Runtime, plugin: &FakePlugin, path: &str, body: Value) -> Option<Value> {
    runtime.block_on(server::answer(plugin.plugin(), path, body.to_string().as_bytes())).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// After any sequence of IPAM calls, closing the store and loading it back
    /// gives the same pools, allocated addresses and next-fit cursors (so
    /// allocation goes on from the same point).
    #[test]
    fn state_reloaded_from_the_store_equals_memory(calls in calls()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut plugin = FakePlugin::new("ipam-props");
        let mut pools: Vec<String> = Vec::new();
        let mut addresses: Vec<(String, String)> = Vec::new();
        for c in calls {
            match c {
                Call::RequestPool(n) => {
                    let body = json!({"AddressSpace": "", "Pool": format!("10.66.{n}.0/28"), "V6": false});
                    if let Some(answer) = call(&runtime, &plugin, "/IpamDriver.RequestPool", body) {
                        pools.push(answer["PoolID"].as_str().unwrap().to_string());
                    }
                }
                Call::ReleasePool(i) if !pools.is_empty() => {
                    let id = pools.remove(i % pools.len());
                    call(&runtime, &plugin, "/IpamDriver.ReleasePool", json!({"PoolID": id}));
                    addresses.retain(|(p, _)| *p != id);
                }
                Call::RequestAddress(i, gateway) if !pools.is_empty() => {
                    let id = pools[i % pools.len()].clone();
                    let options = if gateway { json!({"RequestAddressType": "com.docker.network.gateway"}) } else { json!({}) };
                    let body = json!({"PoolID": id, "Address": "", "Options": options});
                    if let Some(answer) = call(&runtime, &plugin, "/IpamDriver.RequestAddress", body) {
                        let addr = answer["Address"].as_str().unwrap().split('/').next().unwrap().to_string();
                        addresses.push((id, addr));
                    }
                }
                Call::ReleaseAddress(j) if !addresses.is_empty() => {
                    let (id, addr) = addresses.remove(j % addresses.len());
                    call(&runtime, &plugin, "/IpamDriver.ReleaseAddress", json!({"PoolID": id, "Address": addr}));
                }
                _ => {}
            }
        }
        let before = describe(&plugin, &runtime, &addresses);
        plugin.reload();
        let after = describe(&plugin, &runtime, &addresses);
        prop_assert_eq!(&before, &after);
    }
}
