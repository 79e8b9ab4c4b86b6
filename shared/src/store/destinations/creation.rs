//! The queue and claims of audience creation.

use super::*;

impl DestinationStore {
    // ------------------------------------------------------- audience creation

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
                    destination_id: get_s(i, "destinationId")?,
                    segment_id: get_s(i, "segmentId")?,
                    sk: get_s(i, "sk")?,
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
        let now = now_ms();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
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
        match r {
            Ok(out) => out.attributes.map(|a| mapping_from(&a)).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(sdk_err("claim audience creation", e)),
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
        let k = key(dst_pk(destination_id), &map_sk(segment_id));
        let now = now_rfc3339();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k.clone()))
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
        let attrs = match r {
            Ok(out) => out.attributes,
            Err(e) if is_conditional_failure(&e) => {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .condition_expression("attribute_exists(pk)")
                    .update_expression("SET audienceId = :id, updatedAt = :u REMOVE leaseUntil")
                    .expression_attribute_values(":id", n(audience_id))
                    .expression_attribute_values(":u", s(&now))
                    .return_values(ReturnValue::AllNew)
                    .send()
                    .await
                    .map_err(|e| sdk_err("record audience id", e))?
                    .attributes
            }
            Err(e) => return Err(sdk_err("complete audience creation", e)),
        };
        let attrs =
            attrs.ok_or_else(|| StoreError::Corrupt("update returned no attributes".into()))?;
        mapping_from(&attrs)
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
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression("#status = :pending AND attribute_not_exists(audienceId)")
            .update_expression("REMOVE leaseUntil")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("release audience creation", e)),
        }
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
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
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
            .expression_attribute_values(":until", n(now_ms() + retry_after_ms.max(0)))
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("fail audience creation", e)),
        }
    }
}
