//! Bringing an older schema up to [`SCHEMA_VERSION`], in the same write
//! transaction that records the new version: a crash during a migration
//! leaves the old database as it was, and the next start migrates again.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::schema::{self, ENDPOINTS, NETWORKS, POOLS, SCHEMA_VERSION};
use super::v0;

/// What went wrong, naming the record (the caller adds the file).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Db(String),
    #[error("record {table}/{key} (schema {from}): {message}")]
    Record { table: &'static str, key: String, from: u64, message: String },
}

fn db(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Db(e.to_string())
}

/// Rewrites every record from schema `from` to the current one. Does not commit.
pub fn migrate(txn: &WriteTransaction, from: u64) -> Result<(), MigrateError> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        match version {
            0 => v0_to_v1(txn)?,
            other => unreachable!("no migration from schema {other} below {SCHEMA_VERSION}"),
        }
        version += 1;
    }
    Ok(())
}

/// Schema 0 stored the wire and firewall types; schema 1 its own records.
/// Keys, the address table and the cursors are the same in both.
fn v0_to_v1(txn: &WriteTransaction) -> Result<(), MigrateError> {
    rewrite::<v0::Network, schema::Network>(txn, NETWORKS, "networks", 0)?;
    rewrite::<v0::Endpoint, schema::Endpoint>(txn, ENDPOINTS, "endpoints", 0)?;
    rewrite::<v0::Pool, schema::Pool>(txn, POOLS, "ipam_pools", 0)
}

fn rewrite<Old, New>(
    txn: &WriteTransaction,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
    from: u64,
) -> Result<(), MigrateError>
where
    Old: DeserializeOwned,
    New: From<Old> + Serialize,
{
    let mut table = txn.open_table(def).map_err(db)?;
    let mut converted = Vec::new();
    for entry in table.iter().map_err(db)? {
        let (key, value) = entry.map_err(db)?;
        let old: Old = serde_json::from_slice(value.value()).map_err(|e| MigrateError::Record {
            table: name,
            key: key.value().to_string(),
            from,
            message: e.to_string(),
        })?;
        converted.push((key.value().to_string(), schema::encode(&New::from(old))));
    }
    for (key, value) in converted {
        table.insert(key.as_str(), value.as_slice()).map_err(db)?;
    }
    Ok(())
}
