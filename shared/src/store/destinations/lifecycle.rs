//! Lifecycle writes of the metadata side: listing and deleting segments, changing a
//! destination's audience settings, retiring and deleting a destination.
//!
//! Segments are listed from `gsi1` (`gsi1pk = SEGMENTS`, `gsi1sk = <segmentId>`), written by
//! `put_segment`. A destination being deleted leaves the `DESTINATIONS` index at once (it is no
//! longer listed) and carries `deleting = true` until its purges are done; then every item of its
//! partition (`DST#<id>`: the destination and its mappings) is deleted.

use super::{
    DestinationStore, GSI1, Item, Segment, StoreError, dst_pk, key, n, now_rfc3339, s, sdk_err,
    seg_pk, segment_from, str_list,
};
use crate::store::dynamo::{batch_delete, conditional};
use crate::store::item::ItemExt;
use aws_sdk_dynamodb::types::AttributeValue;

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
        Ok(conditional(r, "delete segment")?.is_some())
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
        Ok(conditional(r, "update destination settings")?.is_some())
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
        Ok(conditional(r, "mark destination deleting")?.is_some())
    }

    /// True while a destination is being deleted (its purges run).
    pub async fn is_deleting(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .get_item(dst_pk(id), "DESTINATION")
            .await?
            .is_some_and(|i| i.flag("deleting")))
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
        batch_delete(
            &self.client,
            &self.table,
            keys,
            "delete items",
            "DynamoDB left deletes unprocessed after 8 attempts",
        )
        .await
    }
}
