//! Cross-process pacing of Amazon's metadata calls: one `RATE#<LwA client id>` item whose
//! `nextAt` (epoch ms) is the earliest start of the next call, moved forward by conditional
//! writes only.

use super::{DestinationStore, StoreError, get_num, key, n};
use crate::clock::now_epoch_ms;
use crate::store::dynamo::conditional;

impl DestinationStore {
    /// Reserves the next slot for an Amazon metadata call of LwA client `client_id`, shared by
    /// every process, so concurrent invocations together stay at one call per `spacing_ms`.
    /// Returns the slot (epoch milliseconds): the caller starts its call no earlier. Callers also
    /// report the end of each call ([`Self::metadata_call_done`]) so a slow call pushes the next
    /// slot back: spacing then holds at Amazon's end, not only at ours.
    pub async fn reserve_metadata_slot(
        &self,
        client_id: &str,
        spacing_ms: i64,
    ) -> Result<i64, StoreError> {
        self.reserve_metadata_slot_by(client_id, spacing_ms, None)
            .await?
            .ok_or_else(|| StoreError::Conflict("no metadata slot".into()))
    }

    /// Like [`Self::reserve_metadata_slot`], but only a slot no later than `not_after` (epoch
    /// ms): `None`, and nothing reserved, when the next free slot is later (a request working
    /// within its time slice leaves the call to the scheduled run instead of waiting).
    pub async fn reserve_metadata_slot_by(
        &self,
        client_id: &str,
        spacing_ms: i64,
        not_after: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let k = key(format!("RATE#{client_id}"), "METADATA");
        for _ in 0..20 {
            let now = now_epoch_ms();
            let current: i64 = match self
                .get_item(format!("RATE#{client_id}"), "METADATA")
                .await?
            {
                Some(item) => get_num(&item, "nextAt")?.unwrap_or(0),
                None => 0,
            };
            let slot = current.max(now);
            if not_after.is_some_and(|t| slot > t) {
                return Ok(None);
            }
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k.clone()))
                .update_expression("SET nextAt = :next")
                .expression_attribute_values(":next", n(slot + spacing_ms));
            req = if current == 0 {
                req.condition_expression("attribute_not_exists(nextAt)")
            } else {
                req.condition_expression("nextAt = :cur")
                    .expression_attribute_values(":cur", n(current))
            };
            if conditional(req.send().await, "reserve metadata slot")?.is_some() {
                return Ok(Some(slot));
            }
            // Another process took this slot: read again and take the next one.
        }
        Err(StoreError::Conflict(
            "could not reserve an Amazon metadata slot".into(),
        ))
    }

    /// Records that a metadata call of `client_id` just ended: no call starts before
    /// `now + spacing_ms`. Every call reaches Amazon before it ends, so calls arrive at least
    /// `spacing_ms` apart whatever their latency.
    pub async fn metadata_call_done(
        &self,
        client_id: &str,
        spacing_ms: i64,
    ) -> Result<(), StoreError> {
        let next = now_epoch_ms() + spacing_ms;
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RATE#{client_id}"), "METADATA")))
            .condition_expression("attribute_not_exists(nextAt) OR nextAt < :next")
            .update_expression("SET nextAt = :next")
            .expression_attribute_values(":next", n(next))
            .send()
            .await;
        // A failed condition: a later slot is already reserved.
        conditional(r, "record metadata call").map(|_| ())
    }
}
