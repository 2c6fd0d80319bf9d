//! Plain timing of IPAM (harness = false): `cargo bench --bench ipam`.
//! The allocator alone, then whole `RequestAddress` calls through the plugin,
//! each committed durably to the store, on a /16 and on an IPv6 /64: the cost
//! per call must not depend on the pool's size.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rustbridge::ipam::AddressAllocator;

const FILL_COUNT: u32 = 65_000;
const CYCLES: u32 = 100_000;
/// Durable calls (one fsync'd transaction each) are timed on fewer addresses.
const DURABLE_COUNT: u32 = 2_000;

fn main() {
    report("fill 10.0.0.0/16 with 65,000 addresses", FILL_COUNT, fill_timed("10.0.0.0/16"));
    report("fill fd00:1::/64 with 65,000 addresses", FILL_COUNT, fill_timed("fd00:1::/64"));
    report("alloc+release cycle in a fragmented /16", CYCLES, fragmented_cycles_timed());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for pool in ["10.0.0.0/16", "fd00:1::/64"] {
        report(
            &format!("RequestAddress (durable) in {pool}"),
            DURABLE_COUNT,
            runtime.block_on(durable_requests_timed(pool)),
        );
    }
}

/// Whole IpamDriver calls: allocation plus one durable store commit each.
async fn durable_requests_timed(pool: &str) -> Duration {
    use rustbridge::api::{RequestAddressRequest, RequestPoolRequest};
    use rustbridge::dataplane::fake::FakeDataPlane;
    use rustbridge::driver::Plugin;
    use rustbridge::firewall::FakeFirewall;
    use rustbridge::state::Store;
    use std::sync::Arc;

    let dir = std::env::temp_dir().join(format!("rustbridge-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("store");
    let plugin = Plugin::load(store, Arc::new(FakeDataPlane::default()), Arc::new(FakeFirewall::default()), vec![])
        .expect("plugin");
    let requested = RequestPoolRequest { pool: pool.to_string(), v6: pool.contains(':'), ..Default::default() };
    let pool_id = plugin.request_pool(requested).await.expect("pool").pool_id;
    let start = Instant::now();
    for _ in 0..DURABLE_COUNT {
        let req = RequestAddressRequest { pool_id: pool_id.clone(), ..Default::default() };
        black_box(plugin.request_address(req).await.expect("address"));
    }
    let elapsed = start.elapsed();
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
    elapsed
}

fn allocator(pool: &str) -> AddressAllocator {
    let pool: IpNet = pool.parse().expect("valid pool");
    AddressAllocator::new(pool, None).expect("valid allocator")
}

fn fill_timed(pool: &str) -> Duration {
    let mut addresses = allocator(pool);
    let start = Instant::now();
    for _ in 0..FILL_COUNT {
        black_box(addresses.allocate_next().expect("pool has room"));
    }
    let elapsed = start.elapsed();
    assert_eq!(addresses.allocated_count(), u128::from(FILL_COUNT));
    elapsed
}

/// Fills a /16, frees every other address (about 32,000 free intervals), then times
/// allocating the next free address and releasing it again.
fn fragmented_cycles_timed() -> Duration {
    let mut addresses = allocator("10.0.0.0/16");
    let all: Vec<IpAddr> = std::iter::from_fn(|| addresses.allocate_next().ok()).collect();
    for addr in all.iter().step_by(2) {
        addresses.release(*addr).expect("allocated");
    }
    let start = Instant::now();
    for _ in 0..CYCLES {
        let addr = addresses.allocate_next().expect("free address left");
        addresses.release(black_box(addr)).expect("just allocated");
    }
    start.elapsed()
}

fn report(name: &str, ops: u32, elapsed: Duration) {
    let ns_per_op = elapsed.as_nanos() / u128::from(ops);
    println!("{name:<45} {ops:>7} ops  {ns_per_op:>6} ns/op  ({elapsed:?} total)");
}
