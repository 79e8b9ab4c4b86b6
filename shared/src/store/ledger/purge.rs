//! Deleting a segment's ledger rows (`DELETE /segments/{id}?purgeLedger=true`).

use super::{LEDGER_SHARDS, LedgerStore, partition_key};
use crate::clock::now_epoch_ms;
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, batch_delete};
use crate::store::item::Item;
use aws_sdk_dynamodb::types::AttributeValue;

/// What one purge call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerPurge {
    pub deleted: u64,
    /// Every row of the segment is gone.
    pub complete: bool,
}

impl LedgerStore {
    /// Deletes a segment's rows, shard by shard, until none are left or `deadline_ms` (epoch
    /// ms) passes; calling it again continues where it stopped (it always reads from the start
    /// of each shard, and deleted rows are gone).
    pub async fn purge_segment(
        &self,
        segment_id: &str,
        deadline_ms: i64,
    ) -> Result<LedgerPurge, StoreError> {
        let mut out = LedgerPurge::default();
        for shard in 0..LEDGER_SHARDS {
            let pk = partition_key(segment_id, shard);
            loop {
                if now_epoch_ms() >= deadline_ms {
                    return Ok(out);
                }
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                    .projection_expression("pk, sk")
                    .consistent_read(true)
                    .limit(500)
                    .send()
                    .await
                    .map_err(|e| aws_error("ledger purge query", e))?;
                if page.items().is_empty() {
                    break;
                }
                for chunk in page.items().chunks(25) {
                    self.delete_keys(chunk).await?;
                    out.deleted += chunk.len() as u64;
                }
            }
        }
        out.complete = true;
        Ok(out)
    }

    async fn delete_keys(&self, keys: &[Item]) -> Result<(), StoreError> {
        batch_delete(
            &self.client,
            &self.table,
            keys,
            "ledger purge delete",
            "DynamoDB left ledger deletes unprocessed after 8 attempts",
        )
        .await
    }
}
