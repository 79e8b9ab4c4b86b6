//! Audience creation: the queue of pending mappings and the claim a creating invocation holds
//! on a mapping (`leaseUntil`, epoch ms) so that two invocations never create two audiences.

use super::codec::pending_item;
use super::{
    DestinationStore, MappingStatus, PENDING_PK, PendingAudience, SegmentMapping, StoreError, key,
    mapping_from, mapping_key, n, now_rfc3339, s, sdk_err,
};
use crate::clock::now_epoch_ms;
use crate::store::dynamo::conditional;
use crate::store::item::ItemExt;
use aws_sdk_dynamodb::types::ReturnValue;

impl DestinationStore {
    /// Queues the audience creation of a pending mapping (idempotent).
    pub async fn queue_audience(&self, m: &SegmentMapping) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(pending_item(m)))
            .send()
            .await
            .map_err(|e| sdk_err("queue audience", e))?;
        Ok(())
    }

    /// The oldest queued audience creations.
    pub async fn pending_audiences(&self, limit: i32) -> Result<Vec<PendingAudience>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", s(PENDING_PK))
            .limit(limit.clamp(1, 1000))
            .send()
            .await
            .map_err(|e| sdk_err("pending audiences", e))?;
        out.items()
            .iter()
            .map(|i| {
                Ok(PendingAudience {
                    destination_id: i.req_s("destinationId")?,
                    segment_id: i.req_s("segmentId")?,
                    sk: i.req_s("sk")?,
                })
            })
            .collect()
    }

    /// Drops a queue entry (its mapping got its audience, failed for good, or left `Pending`).
    pub async fn dequeue_audience(&self, p: &PendingAudience) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(PENDING_PK.to_string(), &p.sk)))
            .send()
            .await
            .map_err(|e| sdk_err("dequeue audience", e))?;
        Ok(())
    }

    /// Claims a pending mapping for audience creation for `lease_ms`, so two concurrent
    /// invocations never create two audiences for it. `None`: not pending, or claimed by another
    /// invocation whose lease has not run out.
    pub async fn claim_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
        lease_ms: i64,
    ) -> Result<Option<SegmentMapping>, StoreError> {
        let now = now_epoch_ms();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression(
                "#status = :pending AND attribute_not_exists(audienceId) \
                 AND (attribute_not_exists(leaseUntil) OR leaseUntil < :now)",
            )
            .update_expression("SET leaseUntil = :until")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":until", n(now + lease_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match conditional(r, "claim audience creation")? {
            Some(out) => out.attributes.map(|a| mapping_from(&a)).transpose(),
            None => Ok(None),
        }
    }

    /// Records the audience Amazon created: sets `audienceId` (always, whatever happened to the
    /// mapping meanwhile, so the audience is never orphaned), and moves a still-`Pending` mapping
    /// to `Active`. Returns the mapping as stored now.
    pub async fn complete_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
        audience_id: i64,
    ) -> Result<SegmentMapping, StoreError> {
        let now = now_rfc3339();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("#status = :pending")
            .update_expression(
                "SET audienceId = :id, #status = :active, updatedAt = :u \
                 REMOVE leaseUntil, lastError, lastErrorAt",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .expression_attribute_values(":active", s(MappingStatus::Active.as_str()))
            .expression_attribute_values(":id", n(audience_id))
            .expression_attribute_values(":u", s(&now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let attrs = match conditional(r, "complete audience creation")? {
            Some(out) => out.attributes,
            None => {
                self.record_audience_id(destination_id, segment_id, audience_id, &now)
                    .await?
            }
        };
        let attrs =
            attrs.ok_or_else(|| StoreError::Corrupt("update returned no attributes".into()))?;
        mapping_from(&attrs)
    }

    /// Sets `audienceId` on a mapping that left `Pending` meanwhile; its new attributes.
    async fn record_audience_id(
        &self,
        destination_id: &str,
        segment_id: &str,
        audience_id: i64,
        now: &str,
    ) -> Result<Option<super::Item>, StoreError> {
        Ok(self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET audienceId = :id, updatedAt = :u REMOVE leaseUntil")
            .expression_attribute_values(":id", n(audience_id))
            .expression_attribute_values(":u", s(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| sdk_err("record audience id", e))?
            .attributes)
    }

    /// Gives back a claim taken by [`Self::claim_creation`] without trying (no metadata slot
    /// in time), so the next run may claim it at once. Only the claimant calls this, while its
    /// lease runs: nobody else can hold the claim meanwhile.
    pub async fn release_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("#status = :pending AND attribute_not_exists(audienceId)")
            .update_expression("REMOVE leaseUntil")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .send()
            .await;
        conditional(r, "release audience creation").map(|_| ())
    }

    /// Ends a failed creation attempt: records `message` as the last error; a `permanent` failure
    /// moves the mapping to `Failed`, otherwise it stays `Pending` and may be claimed again after
    /// `retry_after_ms`.
    pub async fn fail_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
        message: &str,
        permanent: bool,
        retry_after_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .expression_attribute_values(":e", s(message))
            .expression_attribute_values(":u", s(&now));
        req = if permanent {
            req.update_expression(
                "SET #status = :failed, lastError = :e, lastErrorAt = :u, updatedAt = :u REMOVE leaseUntil",
            )
            .expression_attribute_values(":failed", s(MappingStatus::Failed.as_str()))
        } else {
            req.update_expression(
                "SET lastError = :e, lastErrorAt = :u, updatedAt = :u, leaseUntil = :until",
            )
            .expression_attribute_values(":until", n(now_epoch_ms() + retry_after_ms.max(0)))
        };
        conditional(req.send().await, "fail audience creation").map(|_| ())
    }
}
