//! IpamDriver calls: the allocator decides, the store makes it durable.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::txn::{Txn, Undo};
use super::{Plugin, PluginError, Result};
use crate::api::*;
use crate::ipam::{GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE};
use crate::request::{check_ipam_options, parse_address, parse_optional_net};
use crate::state::Change;

impl Plugin {
    pub fn ipam_capabilities() -> IpamCapabilitiesResponse {
        // State is durable, so dockerd need not replay pools after a restart.
        IpamCapabilitiesResponse { requires_mac_address: false, requires_request_replay: false }
    }

    pub fn default_address_spaces() -> AddressSpacesResponse {
        AddressSpacesResponse { local: LOCAL_ADDRESS_SPACE, global: GLOBAL_ADDRESS_SPACE }
    }

    pub async fn request_pool(&self, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
        check_ipam_options(req.options.as_ref())?;
        let pool = parse_optional_net("Pool", &req.pool)?;
        let sub_pool = parse_optional_net("SubPool", &req.sub_pool)?;
        // Only an automatic pick needs the host's routes; reading them is not free.
        let host_prefixes = match pool {
            None => self.dataplane.host_prefixes().await?,
            Some(_) => vec![],
        };
        let mut txn = self.begin().await?;
        self.arm_local_replay_if_due(txn.state_mut());
        if let Some(held) = txn.state_mut().ipam.replayed_pool(&req.address_space, pool, sub_pool, req.v6) {
            let answer = RequestPoolResponse { pool_id: held.id, pool: held.pool.to_string(), data: BTreeMap::new() };
            return txn.finish(Ok(answer)).await;
        }
        let outcome = txn.state_mut().ipam.request_pool(&req.address_space, pool, sub_pool, req.v6, &host_prefixes);
        let outcome = outcome.map_err(PluginError::from).map(|record| {
            txn.on_undo(Undo::ReleasePool(record.id.clone()));
            txn.record(Change::PutPool(record.clone()));
            RequestPoolResponse { pool_id: record.id, pool: record.pool.to_string(), data: BTreeMap::new() }
        });
        txn.finish(outcome).await
    }

    pub async fn release_pool(&self, req: ReleasePoolRequest) -> Result<()> {
        let mut txn = self.begin().await?;
        if txn.state().ipam.pool(&req.pool_id).is_some() {
            txn.record(Change::DeletePool(req.pool_id.clone()));
            txn.record(Change::DeletePoolAddresses(req.pool_id.clone()));
        }
        txn.finish(Ok(())).await
    }

    pub async fn request_address(&self, req: RequestAddressRequest) -> Result<RequestAddressResponse> {
        let wanted = match req.address.as_str() {
            "" => None,
            text => Some(parse_address("Address", text)?),
        };
        let gateway =
            req.options.as_ref().and_then(|o| o.get(REQUEST_ADDRESS_TYPE)).is_some_and(|t| t == GATEWAY_ADDRESS_TYPE);
        let mut txn = self.begin().await?;
        self.arm_local_replay_if_due(txn.state_mut());
        let outcome = request_address_in(&mut txn, &req.pool_id, wanted, gateway);
        txn.finish(outcome).await
    }

    pub async fn release_address(&self, req: ReleaseAddressRequest) -> Result<()> {
        let addr = parse_address("Address", &req.address)?;
        let mut txn = self.begin().await?;
        // Unknown pool or an address not allocated: already released.
        let held = txn.state().ipam.addresses(&req.pool_id).is_some_and(|a| a.is_allocated(addr));
        if held {
            txn.record(Change::DeleteAddress(req.pool_id.clone(), addr));
        }
        txn.finish(Ok(())).await
    }
}

/// Takes the address in memory at once (with an undo), so the store records exactly what was decided.
fn request_address_in(
    txn: &mut Txn<'_>,
    pool_id: &str,
    wanted: Option<IpAddr>,
    gateway: bool,
) -> Result<RequestAddressResponse> {
    if let (Some(prefix_len), Some(addr)) = (txn.state_mut().ipam.replayed_address(pool_id, wanted), wanted) {
        return Ok(RequestAddressResponse { address: format!("{addr}/{prefix_len}"), data: BTreeMap::new() });
    }
    let ipam = &mut txn.state_mut().ipam;
    let cursor_before = ipam.cursor(pool_id);
    let (addr, prefix_len) = ipam.request_address(pool_id, wanted, gateway)?;
    let cursor = ipam.cursor(pool_id).filter(|c| Some(*c) != cursor_before);
    txn.on_undo(Undo::ReleaseAddress { pool: pool_id.to_string(), addr, cursor_before });
    txn.record(Change::PutAddress(pool_id.to_string(), addr));
    if let Some(cursor) = cursor {
        txn.record(Change::PutCursor(pool_id.to_string(), cursor));
    }
    Ok(RequestAddressResponse { address: format!("{addr}/{prefix_len}"), data: BTreeMap::new() })
}
