//! rustbridge: a Docker network and IPAM driver plugin backed by real Linux
//! bridges, veth pairs and firewall rules. See docs/ARCHITECTURE.md.

pub mod api;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod deadline;
pub mod driver;
pub mod family;
pub mod firewall;
pub mod gc;
pub mod ipam;
pub mod listener;
pub mod log;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod options;
pub mod reconcile;
pub mod request;
pub mod server;
pub mod state;
pub mod status;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod version;
