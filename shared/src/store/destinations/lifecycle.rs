//! Lifecycle writes of the metadata side: listing and deleting segments, changing a
//! destination's audience settings, retiring and deleting a destination.
//!
//! Segments are listed from `gsi1` (`gsi1pk = SEGMENTS`, `gsi1sk = <segmentId>`), written by
//! `put_segment`. A destination being deleted leaves the `DESTINATIONS` index at once (it is no
//! longer listed) and carries `deleting = true` until its purges are done; then every item of its
//! partition (`DST#<id>`: the destination and its mappings) is deleted.

use super::{
    DestinationStore, GSI1, Item, StoreError, dst_pk, is_conditional_failure, key, n, now_rfc3339,
    s, sdk_err, seg_pk, segment_from, str_list,
};
use crate::store::destinations::Segment;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};

pub(super) const SEGMENTS_GSI_PK: &str = "SEGMENTS";

/// One page of segments.
#[derive(Clone, Debug)]
pub struct SegmentPage {
    pub segments: Vec<Segment>,
    /// Opaque; pass back to get the next page.
    pub next_token: Option<String>,
}

impl DestinationStore {
    /// Segments by id, `limit` per page (1–100).
    pub async fn list_segments(
        &self,
        limit: i32,
        next_token: Option<&str>,
    ) -> Result<SegmentPage, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(SEGMENTS_GSI_PK))
            .limit(limit.clamp(1, 100));
        if let Some(t) = next_token {
            // The token is the last segment id.
            let mut start = key(seg_pk(t), "SEGMENT");
            start.insert("gsi1pk".into(), s(SEGMENTS_GSI_PK));
            start.insert("gsi1sk".into(), s(t));
            q = q.set_exclusive_start_key(Some(start));
        }
        let out = q.send().await.map_err(|e| sdk_err("list segments", e))?;
        let segments = out
            .items()
            .iter()
            .map(segment_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_token = out
            .last_evaluated_key()
            .and_then(|k| k.get("gsi1sk"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok(SegmentPage {
            segments,
            next_token,
        })
    }

    /// Deletes a segment's item; `false` when it did not exist.
    pub async fn delete_segment(&self, id: &str) -> Result<bool, StoreError> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(seg_pk(id), "SEGMENT")))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(sdk_err("delete segment", e)),
        }
    }

    /// Changes the audience settings of a destination (`ttlSeconds`, `dataSourceCountry`).
    pub async fn update_destination_settings(
        &self,
        id: &str,
        ttl_seconds: u64,
        countries: &[String],
    ) -> Result<bool, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(id), "DESTINATION")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET ttlSeconds = :t, dataSourceCountry = :c, updatedAt = :u")
            .expression_attribute_values(":t", n(ttl_seconds))
            .expression_attribute_values(":c", str_list(countries))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(sdk_err("update destination settings", e)),
        }
    }

    /// Takes a destination out of the list and marks it `deleting`; `false` when it is gone.
    pub async fn mark_destination_deleting(&self, id: &str) -> Result<bool, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(id), "DESTINATION")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET deleting = :t, updatedAt = :u REMOVE gsi1pk, gsi1sk")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(sdk_err("mark destination deleting", e)),
        }
    }

    /// True while a destination is being deleted (its purges run).
    pub async fn is_deleting(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .get_item(dst_pk(id), "DESTINATION")
            .await?
            .is_some_and(|i| matches!(i.get("deleting"), Some(AttributeValue::Bool(true)))))
    }

    /// Deletes every item of a destination's partition (the destination and its mappings).
    pub async fn delete_destination_items(&self, id: &str) -> Result<(), StoreError> {
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(dst_pk(id)))
                .projection_expression("pk, sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("list destination items", e))?;
            for chunk in page.items().chunks(25) {
                self.delete_keys(chunk).await?;
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(())
    }

    /// `BatchWriteItem` deletes of ≤ 25 keys, resending what DynamoDB leaves unprocessed.
    async fn delete_keys(&self, keys: &[Item]) -> Result<(), StoreError> {
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
                .map_err(|e| sdk_err("delete items", e))?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if !requests.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
        }
        Err(StoreError::Aws(
            "DynamoDB left deletes unprocessed after 8 attempts".into(),
        ))
    }
}
