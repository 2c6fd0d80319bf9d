//! IpamDriver calls: the allocator decides, the store makes it durable.

use std::collections::BTreeMap;

use super::{Plugin, Result};
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
        let mut state = self.state.lock().await;
        let record = state.ipam.request_pool(&req.address_space, pool, sub_pool, req.v6, &host_prefixes)?;
        if let Err(e) = self.store.commit(vec![Change::PutPool(record.clone())]) {
            let _ = state.ipam.release_pool(&record.id);
            return Err(e.into());
        }
        Ok(RequestPoolResponse { pool_id: record.id.clone(), pool: record.pool.to_string(), data: BTreeMap::new() })
    }

    pub async fn release_pool(&self, req: ReleasePoolRequest) -> Result<()> {
        let mut state = self.state.lock().await;
        if state.ipam.pool(&req.pool_id).is_none() {
            return Ok(());
        }
        self.store
            .commit(vec![Change::DeletePool(req.pool_id.clone()), Change::DeletePoolAddresses(req.pool_id.clone())])?;
        state.ipam.release_pool(&req.pool_id)?;
        Ok(())
    }

    pub async fn request_address(&self, req: RequestAddressRequest) -> Result<RequestAddressResponse> {
        let wanted = match req.address.as_str() {
            "" => None,
            text => Some(parse_address("Address", text)?),
        };
        let gateway =
            req.options.as_ref().and_then(|o| o.get(REQUEST_ADDRESS_TYPE)).is_some_and(|t| t == GATEWAY_ADDRESS_TYPE);
        let mut state = self.state.lock().await;
        let cursor_before = state.ipam.cursor(&req.pool_id);
        let (addr, prefix_len) = state.ipam.request_address(&req.pool_id, wanted, gateway)?;
        let mut changes = vec![Change::PutAddress(req.pool_id.clone(), addr)];
        if let Some(cursor) = state.ipam.cursor(&req.pool_id).filter(|c| Some(*c) != cursor_before) {
            changes.push(Change::PutCursor(req.pool_id.clone(), cursor));
        }
        if let Err(e) = self.store.commit(changes) {
            let _ = state.ipam.release_address(&req.pool_id, addr);
            return Err(e.into());
        }
        Ok(RequestAddressResponse { address: format!("{addr}/{prefix_len}"), data: BTreeMap::new() })
    }

    pub async fn release_address(&self, req: ReleaseAddressRequest) -> Result<()> {
        let addr = parse_address("Address", &req.address)?;
        let mut state = self.state.lock().await;
        let held = state.ipam.pool(&req.pool_id).is_some();
        if !held || state.ipam.release_address(&req.pool_id, addr).is_err() {
            // Unknown pool or an address not allocated: already released.
            return Ok(());
        }
        if let Err(e) = self.store.commit(vec![Change::DeleteAddress(req.pool_id.clone(), addr)]) {
            let _ = state.ipam.restore_address(&req.pool_id, addr);
            return Err(e.into());
        }
        Ok(())
    }
}
