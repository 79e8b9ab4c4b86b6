//! `ErasureStore`: erasure tombstones (in `LEDGER_TABLE`) and erasure jobs (in
//! `DESTINATIONS_TABLE`, beside the backfill jobs of `store::jobs`).
//!
//! | item | table | pk | sk | attributes |
//! |---|---|---|---|---|
//! | tombstone | ledger | `ERASED#<deviceHash>` | `ERASED` | `ts` (N, epoch ms of the erasure request), `deletionId` |
//! | job | destinations | `ERASURE#<deletionId>` | `JOB` | `doc` (progress JSON, no raw ids), `devices` (raw `[[type,id],…]`, removed when the job completes), `state`, `leaseOwner`, `leaseUntil` (N); while unfinished `gsi1pk = ERASURES#active`, `gsi1sk = <createdAt>#<id>` |
//! | found row | destinations | `ERASURE#<deletionId>` | `FOUND#<segmentId>#<deviceHash>` | `seg`, `hash`: a ledger row the job removed, kept until the audience patches are sent |
//!
//! `deviceHash` = lowercase hex SHA-256 of the device key `<idType>-<deviceId>` ([`device_hash`]):
//! a later qualification finds the tombstone without anyone storing the id. A tombstone only
//! moves forward in time (conditional on `ts`).

use super::dynamo::key;
use super::item::Item;
use super::ledger::{LEDGER_SHARDS, partition_key, shard_of};
use crate::domain::audience::{IdType, parse_device_key};
use aws_sdk_dynamodb::Client;
use sha2::{Digest, Sha256};

mod jobs;
mod tombstones;

/// The `gsi1pk` of unfinished erasure jobs.
pub const ACTIVE_ERASURES: &str = "ERASURES#active";
pub const TOMBSTONE_PREFIX: &str = "ERASED#";

/// SHA-256 (lowercase hex) of a device key `<TYPE>-<id>`: what logs, audit records and
/// tombstones carry instead of the id.
pub fn device_hash(device_key: &str) -> String {
    hex::encode(Sha256::digest(device_key.as_bytes()))
}

/// The tombstones an erasure of `device_key` writes: its own hash, and for a MAID in mixed or
/// upper case also its lower-case key's. Conversions name a MAID as their sender wrote it; the
/// conversions' redrive (`ingest::erased`) looks up the value, its upper and its lower case, so
/// any spelling of the same IDFA or GAID meets one of these.
pub fn tombstone_hashes(device_key: &str) -> Vec<String> {
    let mut out = vec![device_hash(device_key)];
    if let Some((IdType::Maid, id)) = parse_device_key(device_key) {
        let lower = id.to_lowercase();
        if lower != id {
            out.push(device_hash(&crate::domain::audience::device_key(
                IdType::Maid,
                &lower,
            )));
        }
    }
    out
}

/// One ledger row seen by the erasure scan (key and version only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRow {
    pub segment_id: String,
    pub device: String,
    pub ts_ms: i64,
}

/// A stored job: its progress document, its raw devices while unfinished, its lease.
#[derive(Clone, Debug)]
pub struct StoredErasure {
    pub doc: String,
    pub devices: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until_ms: i64,
}

#[derive(Clone, Debug)]
pub struct ErasureStore {
    client: Client,
    ledger_table: String,
    jobs_table: String,
}

fn job_key(id: &str) -> Item {
    key(format!("ERASURE#{id}"), "JOB")
}

fn found_key(id: &str, seg: &str, hash: &str) -> Item {
    key(format!("ERASURE#{id}"), format!("FOUND#{seg}#{hash}"))
}

fn ledger_key(segment_id: &str, device: &str) -> Item {
    key(
        partition_key(segment_id, shard_of(device, LEDGER_SHARDS)),
        device,
    )
}

impl ErasureStore {
    pub fn new(client: Client, ledger_table: String, jobs_table: String) -> Self {
        Self {
            client,
            ledger_table,
            jobs_table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maid_in_any_case_is_also_tombstoned_in_lower_case() {
        assert_eq!(
            tombstone_hashes("MAID-Ea75-1"),
            vec![device_hash("MAID-Ea75-1"), device_hash("MAID-ea75-1")]
        );
        assert_eq!(
            tombstone_hashes("MAID-ea75-1"),
            vec![device_hash("MAID-ea75-1")]
        );
        assert_eq!(
            tombstone_hashes("COOKIE-Ab"),
            vec![device_hash("COOKIE-Ab")]
        );
    }

    #[test]
    fn device_hash_is_sha256_of_the_device_key() {
        assert_eq!(
            device_hash("MAID-abc"),
            hex::encode(Sha256::digest(b"MAID-abc"))
        );
        assert_eq!(device_hash("MAID-abc").len(), 64);
        assert_ne!(device_hash("MAID-abc"), device_hash("COOKIE-abc"));
    }
}
