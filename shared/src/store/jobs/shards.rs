//! Shards: their leases, checkpoints (fenced by the lease) and completion.

use super::codec::{shard_from, shard_key};
use super::{JobStore, ShardState};
use crate::store::StoreError;
use crate::store::dynamo::{conditional, fenced, n, now_rfc3339, s};
use crate::store::lease::{Lease, guarded};
use aws_sdk_dynamodb::types::ReturnValue;

impl JobStore {
    /// Takes (or renews) the lease of a shard of the given generation that is not done. `None`
    /// when another invocation holds it, it is done, or the job moved to another generation.
    #[allow(clippy::too_many_arguments)]
    pub async fn lease_shard(
        &self,
        destination_id: &str,
        segment_id: &str,
        shard: u16,
        generation: u64,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Option<ShardState>, StoreError> {
        let lease = Lease {
            client: &self.client,
            table: &self.table,
            key: shard_key(destination_id, segment_id, shard),
        };
        let res = lease
            .take(
                owner,
                now_ms,
                now_ms + lease_ms,
                &guarded("gen = :gen AND #st <> :done"),
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":gen", n(generation))
            .expression_attribute_values(":done", s("done"))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match conditional(res, "jobs lease shard")? {
            Some(r) => r.attributes().map(shard_from).transpose(),
            None => Ok(None),
        }
    }

    /// Saves a checkpoint after an acknowledged batch and renews the lease. `Conflict` when the
    /// lease was lost (stop working the shard).
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        destination_id: &str,
        segment_id: &str,
        shard: u16,
        owner: &str,
        last_key: &str,
        sent: u64,
        batches: u64,
        lease_until_ms: u64,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(shard_key(destination_id, segment_id, shard)))
            .update_expression(
                "SET lastKey = :k, sent = sent + :s, batches = batches + :b, leaseUntil = :until, updatedAt = :now REMOVE lastError",
            )
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":k", s(last_key))
            .expression_attribute_values(":s", n(sent))
            .expression_attribute_values(":b", n(batches))
            .expression_attribute_values(":until", n(lease_until_ms))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        fenced(res, "jobs checkpoint", || {
            StoreError::Conflict(format!("lease of shard {shard} was lost"))
        })
        .map(|_| ())
    }

    /// Marks a shard done (fenced by the lease) and releases it.
    pub async fn finish_shard(
        &self,
        destination_id: &str,
        segment_id: &str,
        shard: u16,
        owner: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(shard_key(destination_id, segment_id, shard)))
            .update_expression(
                "SET #st = :done, leaseUntil = :zero, updatedAt = :now REMOVE lastError",
            )
            .condition_expression("leaseOwner = :me")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        fenced(res, "jobs finish shard", || {
            StoreError::Conflict(format!("lease of shard {shard} was lost"))
        })
        .map(|_| ())
    }

    /// Gives a shard's lease back (stopping before the deadline), optionally recording an error.
    /// Quietly does nothing if the lease is no longer ours.
    pub async fn release_shard(
        &self,
        destination_id: &str,
        segment_id: &str,
        shard: u16,
        owner: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut u = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(shard_key(destination_id, segment_id, shard)))
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", s(now_rfc3339()));
        u = match error {
            Some(msg) => u
                .update_expression("SET leaseUntil = :zero, updatedAt = :now, lastError = :err")
                .expression_attribute_values(":err", s(msg)),
            None => u.update_expression("SET leaseUntil = :zero, updatedAt = :now"),
        };
        conditional(u.send().await, "jobs release shard").map(|_| ())
    }
}
