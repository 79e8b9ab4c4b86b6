//! Batched ledger work for `POST /qualifications`: conditional upserts of up to 100 rows per
//! `TransactWriteItems` call, and batched consistent reads of any items of the table (rows and
//! the erasure tombstones that share it).
//!
//! # Why transactions
//!
//! The ledger's rule (newest timestamp wins) needs a condition on every write, and
//! `BatchWriteItem` takes none. A transaction of conditional puts keeps the rule in one call per
//! 100 rows (instead of one per row) at two write units per row. When a condition fails the
//! whole call is cancelled, but its per-item `CancellationReasons` say which rows lost
//! (`ConditionalCheckFailed`: answered [`Upsert::Stale`]) and which would have passed (`None`:
//! sent again at once, without the stale ones); rows cancelled by a concurrent transaction
//! (`TransactionConflict`) or throttling are sent again after a backoff. A lone row left over is
//! written with a conditional `PutItem` (one write unit). Each call carries a fresh
//! `ClientRequestToken`, so the SDK's own retry of a call that did commit answers success instead
//! of a false `stale`.

use super::{LedgerRow, LedgerStore, Upsert};
use crate::store::StoreError;
use crate::store::dynamo::{Transacted, aws_error, build_error, key, transact};
use crate::store::erasures::TOMBSTONE_PREFIX;
use crate::store::item::{Item, ItemExt};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem};
use std::collections::HashMap;
use std::time::Duration;

/// Most rows per `TransactWriteItems` call (DynamoDB's limit).
pub const MAX_TRANSACT_ROWS: usize = 100;
/// Calls per batch before the rows still pending are answered with an error.
const MAX_ATTEMPTS: u32 = 8;
const CONDITION: &str = "attribute_not_exists(pk) OR ts < :ts";
/// The sort key of every erasure tombstone.
const TOMBSTONE_SK: &str = "ERASED";

/// What one call did to the rows it carried (by position).
enum Verdict {
    /// Retry these at once (cancelled only because a sibling failed its condition).
    Again,
    /// Retry after a backoff (a concurrent transaction or throttling).
    Later,
    Done(Result<Upsert, StoreError>),
}

impl LedgerStore {
    /// Writes each row unless the ledger already holds an update of its key at the same or a
    /// later time (the rule of [`LedgerStore::upsert`]). `rows` must have distinct keys and be at
    /// most [`MAX_TRANSACT_ROWS`]; the answer is one outcome per row, in order.
    pub async fn upsert_batch(&self, rows: &[LedgerRow]) -> Vec<Result<Upsert, StoreError>> {
        let mut out: Vec<Option<Result<Upsert, StoreError>>> = rows.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..rows.len()).collect();
        let mut attempt = 0u32;
        while !pending.is_empty() && attempt < MAX_ATTEMPTS {
            attempt += 1;
            let verdicts = match pending.as_slice() {
                [one] => vec![self.put_one(&rows[*one]).await],
                many => self.transact(rows, many).await,
            };
            let (mut again, mut later) = (Vec::new(), false);
            for (i, v) in pending.iter().zip(verdicts) {
                match v {
                    Verdict::Again => again.push(*i),
                    Verdict::Later => {
                        again.push(*i);
                        later = true;
                    }
                    Verdict::Done(r) => out[*i] = Some(r),
                }
            }
            pending = again;
            if later {
                let jitter = u64::from(rand_jitter());
                tokio::time::sleep(Duration::from_millis((20 << attempt.min(6)) + jitter)).await;
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(StoreError::Conflict(
                        "ledger write kept conflicting with concurrent writes".into(),
                    ))
                })
            })
            .collect()
    }

    /// One conditional `PutItem` (the lone row left of a batch).
    async fn put_one(&self, row: &LedgerRow) -> Verdict {
        Verdict::Done(self.upsert(row).await)
    }

    /// One `TransactWriteItems` of the rows at `idx`: a verdict per row, in order.
    async fn transact(&self, rows: &[LedgerRow], idx: &[usize]) -> Vec<Verdict> {
        let items: Result<Vec<TransactWriteItem>, StoreError> = idx
            .iter()
            .map(|&i| {
                let row = &rows[i];
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(Self::to_item(row)))
                    .condition_expression(CONDITION)
                    .expression_attribute_values(":ts", AttributeValue::N(row.ts_ms.to_string()))
                    .build()
                    .map(|p| TransactWriteItem::builder().put(p).build())
                    .map_err(|e| build_error("ledger transact", e))
            })
            .collect();
        let items = match items {
            Ok(items) => items,
            Err(e) => return idx.iter().map(|_| Verdict::Done(Err(e.again()))).collect(),
        };
        let reasons = match transact(&self.client, items, "ledger transact").await {
            Transacted::Done => {
                return idx
                    .iter()
                    .map(|_| Verdict::Done(Ok(Upsert::Applied)))
                    .collect();
            }
            Transacted::Cancelled(reasons) if reasons.len() == idx.len() => reasons
                .iter()
                .map(|r| r.code().unwrap_or("None").to_string())
                .collect::<Vec<_>>(),
            // Cancelled without one reason per row: each row is written on its own.
            Transacted::Cancelled(_) => {
                let each = idx.iter().map(|&i| self.upsert(&rows[i]));
                return futures::future::join_all(each)
                    .await
                    .into_iter()
                    .map(Verdict::Done)
                    .collect();
            }
            Transacted::Failed(err) => {
                return idx
                    .iter()
                    .map(|_| Verdict::Done(Err(err.again())))
                    .collect();
            }
        };
        reasons.iter().map(|code| verdict_of(code)).collect()
    }

    /// Reads items by key (strongly consistent), 100 keys per `BatchGetItem`, resending
    /// unprocessed keys. Missing items are absent from the answer.
    pub async fn get_items(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = KeysAndAttributes::builder()
                .set_keys(Some(chunk.to_vec()))
                .consistent_read(true)
                .build()
                .map_err(|e| build_error("ledger batch get", e))?;
            for attempt in 0..10u32 {
                let res = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, pending.clone())
                    .send()
                    .await
                    .map_err(|e| aws_error("ledger batch get", e))?;
                if let Some(items) = res.responses().and_then(|r| r.get(&self.table)) {
                    out.extend(items.iter().cloned());
                }
                match res.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                    Some(k) if !k.keys().is_empty() => {
                        if attempt == 9 {
                            return Err(StoreError::Aws(
                                "ledger batch get: keys left unprocessed".into(),
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
}

impl LedgerStore {
    /// The erasure tombstones (`store::erasures` owns their layout; they share this table) of
    /// device hashes, read consistently 100 per call: hash → (erasure time, deletion id).
    pub async fn tombstones(
        &self,
        hashes: &[String],
    ) -> Result<HashMap<String, (i64, String)>, StoreError> {
        let mut uniq: Vec<&String> = hashes.iter().collect();
        uniq.sort();
        uniq.dedup();
        let keys = uniq
            .into_iter()
            .map(|h| key(format!("{TOMBSTONE_PREFIX}{h}"), TOMBSTONE_SK))
            .collect();
        let mut out = HashMap::new();
        for it in self.get_items(keys).await? {
            let hash = it
                .opt_str("pk")
                .and_then(|pk| pk.strip_prefix(TOMBSTONE_PREFIX));
            if let (Some(hash), Some(ts)) = (hash, it.opt_num("ts")) {
                let id = it.opt_str("deletionId").unwrap_or_default().to_string();
                out.insert(hash.to_string(), (ts, id));
            }
        }
        Ok(out)
    }
}

/// A row's verdict from its cancellation reason.
fn verdict_of(code: &str) -> Verdict {
    match code {
        "None" | "" => Verdict::Again,
        "ConditionalCheckFailed" => Verdict::Done(Ok(Upsert::Stale)),
        "TransactionConflict"
        | "ThrottlingError"
        | "ProvisionedThroughputExceeded"
        | "RequestLimitExceeded" => Verdict::Later,
        other => Verdict::Done(Err(StoreError::Aws(format!(
            "ledger transact: row cancelled ({other})"
        )))),
    }
}

/// 0–15 ms of jitter, so racing requests do not retry in step.
fn rand_jitter() -> u8 {
    rand::random::<u8>() & 0x0f
}

impl StoreError {
    /// The same error again, for another row that shares it.
    pub(crate) fn again(&self) -> StoreError {
        match self {
            StoreError::Aws(m) => StoreError::Aws(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_reasons_map_to_verdicts() {
        assert!(matches!(verdict_of("None"), Verdict::Again));
        assert!(matches!(
            verdict_of("ConditionalCheckFailed"),
            Verdict::Done(Ok(Upsert::Stale))
        ));
        assert!(matches!(verdict_of("TransactionConflict"), Verdict::Later));
        assert!(matches!(verdict_of("ThrottlingError"), Verdict::Later));
        assert!(matches!(
            verdict_of("ValidationError"),
            Verdict::Done(Err(StoreError::Aws(_)))
        ));
    }
}
