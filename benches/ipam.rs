//! Plain timing of the address allocator (harness = false): `cargo bench --bench ipam`.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rustbridge::ipam::AddressAllocator;

const FILL_COUNT: u32 = 65_000;
const CYCLES: u32 = 100_000;

fn main() {
    report(
        "fill 10.0.0.0/16 with 65,000 addresses",
        FILL_COUNT,
        fill_timed("10.0.0.0/16"),
    );
    report(
        "fill fd00:1::/64 with 65,000 addresses",
        FILL_COUNT,
        fill_timed("fd00:1::/64"),
    );
    report(
        "alloc+release cycle in a fragmented /16",
        CYCLES,
        fragmented_cycles_timed(),
    );
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
