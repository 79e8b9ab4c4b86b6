//! The qualification ledger (`LEDGER_TABLE`): for every segment and device, whether the device is
//! currently qualified and the timestamp of the update that said so.
//!
//! Item layout (one item per segment × device):
//!
//! | attribute | value |
//! |---|---|
//! | `pk` (S) | `<segmentId>#<shard>`; shard = FNV-1a(device key) mod [`LEDGER_SHARDS`], two digits |
//! | `sk` (S) | the device key `<TYPE>-<id>` (e.g. `COOKIE-abc`) |
//! | `st` (S) | `q` qualified, `u` unqualified |
//! | `ts` (N) | the update's timestamp, epoch milliseconds: the row's version |
//! | `cs` (S) | optional consent JSON, passed through to Amazon |
//!
//! Sharding spreads a large segment over 16 partitions, so a backfill reads 16 independent
//! streams (one per shard) in parallel, and a hot segment does not sit on one partition.
//! Writes are conditional on the timestamp (`ts < :ts`), so an older update never overwrites a
//! newer one; an update with the same timestamp as the stored one is stale too (the first write
//! wins), which makes retries of the same update idempotent.
//!
//! `batch` writes up to 100 rows per `TransactWriteItems` call under the same condition, and reads
//! items 100 per `BatchGetItem` call.
//!
//! Erasure tombstones (`ERASED#<sha256>` / `ERASED`) share this table; `store::erasures` owns them.

use super::StoreError;
use super::dynamo::{aws_error, is_conditional_failure};
use super::item::{Item, ItemExt};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use std::collections::HashMap;
use std::time::Duration;

/// Shards per segment. Stored data depends on it: never change it for an existing table.
pub const LEDGER_SHARDS: u16 = 16;

pub mod batch;
pub mod purge;

/// One ledger row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    pub segment_id: String,
    /// `<TYPE>-<id>`
    pub device: String,
    pub qualified: bool,
    /// Epoch milliseconds of the update: the row's version.
    pub ts_ms: i64,
    /// Compact consent JSON.
    pub consent: Option<String>,
}

/// What a conditional upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    Applied,
    /// The ledger already holds an update at the same or a later time.
    Stale,
}

/// One page of a shard, in sort-key order.
#[derive(Debug, Default)]
pub struct LedgerPage {
    pub rows: Vec<LedgerRow>,
    /// The sort key to continue after; `None` when the shard is exhausted.
    pub last_key: Option<String>,
}

/// The ledger adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    client: Client,
    table: String,
}

/// FNV-1a 64: a hash that never changes between Rust versions (the shard of a device is stored
/// data, so `DefaultHasher` would not do).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The ledger shard of a device key, in `0..shards`.
pub fn shard_of(device_key: &str, shards: u16) -> u16 {
    (stable_hash(device_key) % u64::from(shards.max(1))) as u16
}

/// The partition key of a segment's shard.
pub fn partition_key(segment_id: &str, shard: u16) -> String {
    format!("{segment_id}#{shard:02}")
}

impl LedgerStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The DynamoDB client (`store::erasures` keeps its tombstones in this table).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(segment_id: &str, device: &str) -> Item {
        HashMap::from([
            (
                "pk".to_string(),
                AttributeValue::S(partition_key(segment_id, shard_of(device, LEDGER_SHARDS))),
            ),
            ("sk".to_string(), AttributeValue::S(device.to_string())),
        ])
    }

    fn to_item(row: &LedgerRow) -> Item {
        let mut item = Self::key(&row.segment_id, &row.device);
        item.insert(
            "st".into(),
            AttributeValue::S(if row.qualified { "q" } else { "u" }.into()),
        );
        item.insert("ts".into(), AttributeValue::N(row.ts_ms.to_string()));
        if let Some(c) = &row.consent {
            item.insert("cs".into(), AttributeValue::S(c.clone()));
        }
        item
    }

    fn from_item(item: &Item) -> Result<LedgerRow, StoreError> {
        let s = |k: &str| item.req_str(k);
        let pk = s("pk")?;
        let segment_id = pk
            .rsplit_once('#')
            .map(|(seg, _)| seg.to_string())
            .ok_or_else(|| StoreError::Corrupt("ledger pk without shard".into()))?;
        let ts_ms = match item.get("ts") {
            Some(AttributeValue::N(n)) => n
                .parse()
                .map_err(|_| StoreError::Corrupt("ledger ts is not an integer".into()))?,
            _ => return Err(StoreError::Corrupt("ledger item without ts".into())),
        };
        Ok(LedgerRow {
            segment_id,
            device: s("sk")?.to_string(),
            qualified: s("st")? == "q",
            ts_ms,
            consent: s("cs").ok().map(str::to_string),
        })
    }

    /// Writes the row unless the ledger already holds an update at the same or a later time.
    pub async fn upsert(&self, row: &LedgerRow) -> Result<Upsert, StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::to_item(row)))
            .condition_expression("attribute_not_exists(pk) OR ts < :ts")
            .expression_attribute_values(":ts", AttributeValue::N(row.ts_ms.to_string()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Upsert::Applied),
            Err(e) if is_conditional_failure(&e) => Ok(Upsert::Stale),
            Err(e) => Err(aws_error("ledger put", e)),
        }
    }

    /// Reads rows (strongly consistent), 100 keys per BatchGetItem, retrying unprocessed keys.
    /// Missing rows are absent from the answer.
    pub async fn get_many(&self, keys: &[(String, String)]) -> Result<Vec<LedgerRow>, StoreError> {
        let mut uniq: Vec<&(String, String)> = keys.iter().collect();
        uniq.sort();
        uniq.dedup();
        let keys = uniq.into_iter().map(|(s, d)| Self::key(s, d)).collect();
        self.get_items(keys)
            .await?
            .iter()
            .map(Self::from_item)
            .collect()
    }

    /// One page of a segment's shard after `start_after` (exclusive), in sort-key order.
    /// `only_qualified` filters out unqualified rows (they still count towards DynamoDB's 1 MB
    /// page). `limit` bounds the rows *read* per page.
    pub async fn page(
        &self,
        segment_id: &str,
        shard: u16,
        start_after: Option<&str>,
        only_qualified: bool,
        limit: Option<i32>,
    ) -> Result<LedgerPage, StoreError> {
        let pk = partition_key(segment_id, shard);
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
            .consistent_read(true)
            .set_limit(limit);
        if only_qualified {
            q = q
                .filter_expression("st = :q")
                .expression_attribute_values(":q", AttributeValue::S("q".into()));
        }
        if let Some(sk) = start_after {
            q = q.set_exclusive_start_key(Some(HashMap::from([
                ("pk".to_string(), AttributeValue::S(pk.clone())),
                ("sk".to_string(), AttributeValue::S(sk.to_string())),
            ])));
        }
        let res = q.send().await.map_err(|e| aws_error("ledger query", e))?;
        let rows = res
            .items()
            .iter()
            .map(Self::from_item)
            .collect::<Result<Vec<_>, _>>()?;
        let last_key = match res.last_evaluated_key().and_then(|k| k.get("sk")) {
            Some(AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(LedgerPage { rows, last_key })
    }

    /// Every qualified device of a segment (all shards). For tests and small segments only: it
    /// holds the whole answer in memory.
    pub async fn qualified_devices(&self, segment_id: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for shard in 0..LEDGER_SHARDS {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .page(segment_id, shard, after.as_deref(), true, None)
                    .await?;
                out.extend(page.rows.into_iter().map(|r| r.device));
                match page.last_key {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Unconditional bulk write (BatchWriteItem, 25 per call, unprocessed items retried). For
    /// seeding tests and the benchmark: it ignores the timestamp rule.
    pub async fn seed(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|r| {
                    PutRequest::builder()
                        .set_item(Some(Self::to_item(r)))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                        .map_err(|e| StoreError::Aws(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            let mut attempt = 0u32;
            while !pending.is_empty() {
                let res = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| aws_error("ledger batch write", e))?;
                pending = res
                    .unprocessed_items()
                    .and_then(|u| u.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
                if !pending.is_empty() {
                    attempt += 1;
                    if attempt > 10 {
                        return Err(StoreError::Aws(
                            "ledger batch write: items left unprocessed".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed value: changing the hash would orphan every stored ledger row.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("COOKIE-abc", 16), shard_of("COOKIE-abc", 16));
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(&format!("COOKIE-d{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }
}
