//! A firewall that records what it was asked to apply and can be told to fail
//! once; for tests (see `crate::testing`).

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, FwNetwork};

/// Records what it was asked to apply; for driver unit tests.
#[derive(Default)]
pub struct FakeFirewall {
    pub applied: Mutex<Vec<FwNetwork>>,
    pub syncs: Mutex<usize>,
    pub fail_next: Mutex<bool>,
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError> {
        let mut fail = self.fail_next.lock().unwrap();
        if *fail {
            *fail = false;
            return Err(FirewallError { tool: "fake".into(), message: "injected failure".into() });
        }
        *self.applied.lock().unwrap() = networks.to_vec();
        *self.syncs.lock().unwrap() += 1;
        Ok(())
    }

    async fn is_intact(&self, networks: &[FwNetwork]) -> Result<bool, FirewallError> {
        Ok(*self.applied.lock().unwrap() == networks)
    }
}
