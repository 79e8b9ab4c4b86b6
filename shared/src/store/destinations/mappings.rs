//! Segment mappings: reading, listing, adding, and the field-level updates of their status,
//! fees and last error.

use super::codec::{fee_list, new_mapping_writes, status_values};
use super::{
    DestinationStore, GSI1, Item, MappingStatus, SegmentMapping, StoreError, dst_pk, map_sk,
    mapping_from, mapping_key, now_rfc3339, s, sdk_err,
};
use crate::domain::audience_fee::AudienceFee;
use crate::store::dynamo::{conditional, is_cancelled_by_condition};
use aws_sdk_dynamodb::types::ReturnValue;

impl DestinationStore {
    pub async fn get_mapping(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Option<SegmentMapping>, StoreError> {
        self.get_item(dst_pk(destination_id), &map_sk(segment_id))
            .await?
            .map(|i| mapping_from(&i))
            .transpose()
    }

    /// Every mapping of one destination (any status), by segment id.
    pub async fn list_mappings(
        &self,
        destination_id: &str,
    ) -> Result<Vec<SegmentMapping>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :p AND begins_with(sk, :m)")
                .expression_attribute_values(":p", s(dst_pk(destination_id)))
                .expression_attribute_values(":m", s("MAP#"))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("list mappings", e))?;
            for item in page.items() {
                out.push(mapping_from(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every mapping of a segment, across destinations and in any status (callers filter on
    /// `status == Active` before delivering). Read from `gsi1`, so eventually consistent: a
    /// mapping activated a moment ago may be missing, which the backfill it starts covers.
    pub async fn mappings_for_segment(
        &self,
        segment_id: &str,
    ) -> Result<Vec<SegmentMapping>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :p")
                .expression_attribute_values(":p", s(format!("SEGMAP#{segment_id}")))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("mappings for segment", e))?;
            for item in page.items() {
                out.push(mapping_from(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Adds a new mapping to an existing destination (conditional: the mapping must not exist),
    /// queueing its audience creation when it is `Pending`. `Ok(false)` if it already exists.
    pub async fn add_mapping(&self, m: &SegmentMapping) -> Result<bool, StoreError> {
        let items = new_mapping_writes(&self.table, m)?;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_cancelled_by_condition(&e) => Ok(false),
            Err(e) => Err(sdk_err("add mapping", e)),
        }
    }

    /// Moves a mapping to `status` if its current status is one of `from` (any status when `from`
    /// is empty). `blocked_reason` is set when given and removed otherwise; `last_error` is
    /// cleared when `clear_error`. Entering `Pending` queues the audience creation. Returns the
    /// new mapping, or `None` when the mapping is missing or not in one of `from`.
    pub async fn set_mapping_status(
        &self,
        destination_id: &str,
        segment_id: &str,
        from: &[MappingStatus],
        status: MappingStatus,
        blocked_reason: Option<&str>,
        clear_error: bool,
    ) -> Result<Option<SegmentMapping>, StoreError> {
        let mut set = vec!["#status = :new", "updatedAt = :u"];
        let mut remove = vec!["leaseUntil"];
        if blocked_reason.is_some() {
            set.push("blockedReason = :br");
        } else {
            remove.push("blockedReason");
        }
        if clear_error {
            remove.push("lastError");
            remove.push("lastErrorAt");
        }
        let mut condition = "attribute_exists(pk)".to_string();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":new", s(status.as_str()))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew);
        if let Some(r) = blocked_reason {
            req = req.expression_attribute_values(":br", s(r));
        }
        if !from.is_empty() {
            let (names, values) = status_values(from);
            condition.push_str(&format!(" AND #status IN ({names})"));
            for (k, v) in values {
                req = req.expression_attribute_values(k, v);
            }
        }
        let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        let r = req
            .update_expression(update)
            .condition_expression(condition)
            .send()
            .await;
        let Some(attrs) = conditional(r, "set mapping status")?.and_then(|o| o.attributes) else {
            return Ok(None);
        };
        let mapping = mapping_from(&attrs)?;
        if mapping.status == MappingStatus::Pending {
            self.queue_audience(&mapping).await?;
        }
        Ok(Some(mapping))
    }

    /// Replaces a mapping's audience fees (after Amazon accepted them).
    pub async fn set_mapping_fees(
        &self,
        destination_id: &str,
        segment_id: &str,
        fees: &[AudienceFee],
    ) -> Result<Option<SegmentMapping>, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET audienceFees = :f, updatedAt = :u")
            .expression_attribute_values(":f", fee_list(fees))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match conditional(r, "set mapping fees")? {
            Some(out) => out.attributes.map(|a| mapping_from(&a)).transpose(),
            None => Ok(None),
        }
    }

    /// Records the last error of a mapping (shown in `GET /destinations/{id}`); the message must
    /// already be user-facing (`AmazonError::user_message()`), never carry a token or personal data.
    pub async fn set_mapping_error(
        &self,
        destination_id: &str,
        segment_id: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET lastError = :e, lastErrorAt = :u, updatedAt = :u")
            .expression_attribute_values(":e", s(message))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .send()
            .await;
        // The mapping is gone: nothing to report the error on.
        conditional(r, "set mapping error").map(|_| ())
    }

    /// Clears a mapping's last error (after a later success).
    pub async fn clear_mapping_error(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(mapping_key(destination_id, segment_id)))
            .condition_expression("attribute_exists(lastError)")
            .update_expression("SET updatedAt = :u REMOVE lastError, lastErrorAt")
            .expression_attribute_values(":u", s(now_rfc3339()))
            .send()
            .await;
        conditional(r, "clear mapping error").map(|_| ())
    }
}
