//! Ledger rows of erased devices, dropped before a backfill or refresh adds them to an audience.
//!
//! A backfill/refresh page may be read from the ledger before an erasure deleted its rows and
//! sent after the erasure's `remove`: sending it as read would put the erased device back. So,
//! just before a page's adds are packed, its devices' tombstones (`ERASED#<sha256(device)>`,
//! `store::erasures`) are read in one consistent BatchGetItem per 100 devices, and a row with a
//! tombstone at or after the row's time is dropped (a newer qualification re-adds as usual).

use super::StoreError;
use super::dynamo::{aws_error, key};
use super::erasures::{TOMBSTONE_PREFIX, device_hash};
use super::item::{Item, ItemExt};
use super::ledger::LedgerRow;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

fn tombstone_key(hash: &str) -> Item {
    key(format!("{TOMBSTONE_PREFIX}{hash}"), "ERASED")
}

/// The erasure time of each of `hashes` that has a tombstone in `table` (consistent reads).
pub async fn tombstones(
    client: &Client,
    table: &str,
    hashes: &BTreeSet<String>,
) -> Result<HashMap<String, i64>, StoreError> {
    let mut out = HashMap::new();
    let all: Vec<&String> = hashes.iter().collect();
    for chunk in all.chunks(100) {
        let mut pending = KeysAndAttributes::builder()
            .set_keys(Some(chunk.iter().map(|h| tombstone_key(h)).collect()))
            .consistent_read(true)
            .build()
            .map_err(|e| StoreError::Aws(e.to_string()))?;
        for attempt in 0..10u32 {
            let res = client
                .batch_get_item()
                .request_items(table, pending.clone())
                .send()
                .await
                .map_err(|e| aws_error("tombstone batch get", e))?;
            for it in res
                .responses()
                .and_then(|r| r.get(table))
                .into_iter()
                .flatten()
            {
                let Some(pk) = it.opt_str("pk") else {
                    continue;
                };
                if let Some(ts) = it.opt_num("ts") {
                    out.insert(pk.trim_start_matches(TOMBSTONE_PREFIX).to_string(), ts);
                }
            }
            match res.unprocessed_keys().and_then(|u| u.get(table)) {
                Some(k) if !k.keys().is_empty() => {
                    if attempt == 9 {
                        return Err(StoreError::Aws(
                            "tombstone batch get: keys left unprocessed".into(),
                        ));
                    }
                    pending = k.clone();
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

/// `rows` without the adds of erased devices: a qualified row whose device has a tombstone at or
/// after the row's time. Unqualified rows (removes) are kept. Returns the rows kept and how many
/// were dropped.
pub async fn drop_erased(
    client: &Client,
    ledger_table: &str,
    rows: Vec<LedgerRow>,
) -> Result<(Vec<LedgerRow>, usize), StoreError> {
    let hashes: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.qualified)
        .map(|r| device_hash(&r.device))
        .collect();
    if hashes.is_empty() {
        return Ok((rows, 0));
    }
    let erased = tombstones(client, ledger_table, &hashes).await?;
    if erased.is_empty() {
        return Ok((rows, 0));
    }
    let before = rows.len();
    let kept: Vec<LedgerRow> = rows
        .into_iter()
        .filter(|r| {
            !r.qualified
                || erased
                    .get(&device_hash(&r.device))
                    .is_none_or(|t| *t < r.ts_ms)
        })
        .collect();
    let dropped = before - kept.len();
    Ok((kept, dropped))
}

/// The erasure tombstones of `LEDGER_TABLE`, read by the conversions' redrive (which owns no
/// other part of the ledger).
#[derive(Clone, Debug)]
pub struct TombstoneReader {
    client: Client,
    ledger_table: String,
}

impl TombstoneReader {
    pub fn new(client: Client, ledger_table: String) -> Self {
        Self {
            client,
            ledger_table,
        }
    }

    /// The erasure time (ms) of each of `hashes` that has a tombstone (consistent reads).
    pub async fn erased_at(
        &self,
        hashes: &BTreeSet<String>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        tombstones(&self.client, &self.ledger_table, hashes).await
    }
}
