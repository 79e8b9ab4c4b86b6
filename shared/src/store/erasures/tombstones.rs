//! What an erasure does to the ledger table: tombstones, and the rows and dirty marks it
//! deletes.

use super::{ErasureStore, ScannedRow, TOMBSTONE_PREFIX, ledger_key};
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, conditional, key, n, s};
use crate::store::item::ItemExt;

impl ErasureStore {
    // ---- tombstones ----

    /// Writes (or moves forward) the tombstone of a device hash.
    pub async fn put_tombstone(
        &self,
        hash: &str,
        ts_ms: i64,
        deletion_id: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.ledger_table)
            .item("pk", s(format!("{TOMBSTONE_PREFIX}{hash}")))
            .item("sk", s("ERASED"))
            .item("ts", n(ts_ms))
            .item("deletionId", s(deletion_id))
            .condition_expression("attribute_not_exists(pk) OR ts < :ts")
            .expression_attribute_values(":ts", n(ts_ms))
            .send()
            .await;
        conditional(res, "erasure tombstone put").map(|_| ())
    }

    /// The erasure time of a device hash, if it was ever erased (consistent read).
    pub async fn tombstone(&self, hash: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.tombstone_entry(hash).await?.map(|(ts, _)| ts))
    }

    /// The erasure time of a device hash and the erasure job that wrote it (consistent read).
    pub async fn tombstone_entry(&self, hash: &str) -> Result<Option<(i64, String)>, StoreError> {
        let res = self
            .client
            .get_item()
            .table_name(&self.ledger_table)
            .key("pk", s(format!("{TOMBSTONE_PREFIX}{hash}")))
            .key("sk", s("ERASED"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("erasure tombstone get", e))?;
        Ok(res.item().and_then(|i| {
            let id = i.opt_str("deletionId").unwrap_or_default().to_string();
            i.opt_num("ts").map(|ts| (ts, id))
        }))
    }

    // ---- the ledger, seen by an erasure ----

    /// Deletes a ledger row when its version is `cond` `ts` (`"ts <= :t"` or `"ts = :t"`).
    /// Returns whether it was deleted.
    pub async fn delete_ledger_row(
        &self,
        segment_id: &str,
        device: &str,
        cond: &str,
        ts_ms: i64,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.ledger_table)
            .set_key(Some(ledger_key(segment_id, device)))
            .condition_expression(cond)
            .expression_attribute_values(":t", n(ts_ms))
            .send()
            .await;
        Ok(conditional(res, "ledger delete")?.is_some())
    }

    /// Deletes a backfill job's dirty mark of a device (`store::jobs` layout), so no raw id
    /// outlives the erasure there.
    pub async fn delete_dirty_mark(
        &self,
        destination_id: &str,
        segment_id: &str,
        device: &str,
    ) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.jobs_table)
            .key(
                "pk",
                s(crate::store::jobs::job_pk(destination_id, segment_id)),
            )
            .key("sk", s(format!("DIRTY#{device}")))
            .send()
            .await
            .map_err(|e| aws_error("dirty mark delete", e))?;
        Ok(())
    }

    /// One page of a consistent scan of the ledger (keys and versions; tombstones skipped).
    /// `after` is the `(pk, sk)` to continue after; the second value is the next one.
    pub async fn scan_ledger(
        &self,
        after: Option<(String, String)>,
        limit: i32,
    ) -> Result<(Vec<ScannedRow>, Option<(String, String)>), StoreError> {
        let mut q = self
            .client
            .scan()
            .table_name(&self.ledger_table)
            .consistent_read(true)
            .projection_expression("pk, sk, ts")
            .limit(limit);
        if let Some((pk, sk)) = after {
            q = q.set_exclusive_start_key(Some(key(pk, sk)));
        }
        let res = q.send().await.map_err(|e| aws_error("ledger scan", e))?;
        let rows = res
            .items()
            .iter()
            .filter_map(|it| {
                let pk = it.opt_str("pk")?;
                if pk.starts_with(TOMBSTONE_PREFIX) {
                    return None;
                }
                let (seg, _) = pk.rsplit_once('#')?;
                Some(ScannedRow {
                    segment_id: seg.to_string(),
                    device: it.opt_str("sk")?.to_string(),
                    ts_ms: it.opt_num("ts")?,
                })
            })
            .collect();
        let next = res
            .last_evaluated_key()
            .and_then(|k| Some((k.opt_str("pk")?.to_string(), k.opt_str("sk")?.to_string())));
        Ok((rows, next))
    }
}
