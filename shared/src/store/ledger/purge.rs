//! Deleting a segment's ledger rows (`DELETE /segments/{id}?purgeLedger=true`).

use super::{LEDGER_SHARDS, LedgerStore, aws, partition_key};
use crate::store::StoreError;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use std::collections::HashMap;

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
                if chrono::Utc::now().timestamp_millis() >= deadline_ms {
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
                    .map_err(|e| aws("purge query", e))?;
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

    async fn delete_keys(
        &self,
        keys: &[HashMap<String, AttributeValue>],
    ) -> Result<(), StoreError> {
        let mut requests: Vec<WriteRequest> = keys
            .iter()
            .map(|k| {
                let del = DeleteRequest::builder()
                    .set_key(Some(k.clone()))
                    .build()
                    .map_err(|e| StoreError::Aws(e.to_string()))?;
                Ok(WriteRequest::builder().delete_request(del).build())
            })
            .collect::<Result<_, StoreError>>()?;
        for attempt in 0..8u32 {
            if requests.is_empty() {
                return Ok(());
            }
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| aws("purge delete", e))?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if !requests.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
        }
        Err(StoreError::Aws(
            "DynamoDB left ledger deletes unprocessed after 8 attempts".into(),
        ))
    }
}
