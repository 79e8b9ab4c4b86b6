//! Shards: leases and checkpoints.

use super::*;

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
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                &job_pk(destination_id, segment_id),
                &shard_sk(shard),
            )))
            .update_expression("SET leaseOwner = :me, leaseUntil = :until")
            .condition_expression(
                "gen = :gen AND #st <> :done AND (leaseUntil < :now OR leaseOwner = :me)",
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(now_ms + lease_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":gen", n(generation))
            .expression_attribute_values(":done", s("done"))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(r) => r.attributes().map(Self::shard_from).transpose(),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(aws("lease shard", e)),
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), &shard_sk(shard))))
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
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StoreError::Conflict(format!(
                "lease of shard {shard} was lost"
            ))),
            Err(e) => Err(aws("checkpoint", e)),
        }
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
            .set_key(Some(Self::key(
                &job_pk(destination_id, segment_id),
                &shard_sk(shard),
            )))
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
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StoreError::Conflict(format!(
                "lease of shard {shard} was lost"
            ))),
            Err(e) => Err(aws("finish shard", e)),
        }
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
            .set_key(Some(Self::key(
                &job_pk(destination_id, segment_id),
                &shard_sk(shard),
            )))
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
        match u.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("release shard", e)),
        }
    }
}
