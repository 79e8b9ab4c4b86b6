//! The job item's own lease (held for its final phase, the dirty-set drain), the writes fenced
//! by it, the job's errors and its end.

use super::JobStore;
use super::codec::job_key;
use crate::store::StoreError;
use crate::store::dynamo::{conditional, fenced, n, now_rfc3339, s};
use crate::store::lease::{Lease, guarded};
use aws_sdk_dynamodb::types::AttributeValue;

impl JobStore {
    fn job_lease(&self, destination_id: &str, segment_id: &str) -> Lease<'_> {
        Lease {
            client: &self.client,
            table: &self.table,
            key: job_key(destination_id, segment_id),
        }
    }

    /// Takes (or renews) the lease of the job's final phase (the dirty-set drain).
    pub async fn lease_job(
        &self,
        destination_id: &str,
        segment_id: &str,
        generation: u64,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let res = self
            .job_lease(destination_id, segment_id)
            .take(
                owner,
                now_ms,
                now_ms + lease_ms,
                &guarded("gen = :gen AND #st = :run"),
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":gen", n(generation))
            .expression_attribute_values(":run", s("running"))
            .send()
            .await;
        Ok(conditional(res, "jobs lease job")?.is_some())
    }

    /// Marks the job `draining` (fenced by the job lease): called once every shard is done,
    /// before the drain's pass over the dirty set begins.
    pub async fn set_draining(
        &self,
        destination_id: &str,
        segment_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .update_expression("SET draining = :t, updatedAt = :now")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        fenced(res, "jobs set draining", || {
            StoreError::Conflict("job lease was lost".into())
        })
        .map(|_| ())
    }

    /// Releases the job's lease (quietly, if it is no longer ours).
    pub async fn release_job(
        &self,
        destination_id: &str,
        segment_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.job_lease(destination_id, segment_id)
            .release(owner, "jobs release job")
            .await
    }

    /// Adds to the count of dirty devices re-sent (fenced by the job lease).
    pub async fn add_drained(
        &self,
        destination_id: &str,
        segment_id: &str,
        owner: &str,
        count: u64,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .update_expression("SET drained = drained + :c, updatedAt = :now")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":c", n(count))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        fenced(res, "jobs add drained", || {
            StoreError::Conflict("job lease was lost".into())
        })
        .map(|_| ())
    }

    /// Finishes the job: state `done`, out of the active index. Conditional on holding its lease
    /// and on the generation.
    pub async fn finish_job(
        &self,
        destination_id: &str,
        segment_id: &str,
        generation: u64,
        owner: &str,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .update_expression(
                "SET #st = :done, finishedAt = :now, updatedAt = :now, leaseUntil = :zero REMOVE gsi1pk, gsi1sk, lastError",
            )
            .condition_expression("leaseOwner = :me AND gen = :gen AND #st = :run")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":run", s("running"))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":gen", n(generation))
            .send()
            .await;
        fenced(res, "jobs finish job", || {
            StoreError::Conflict("job lease was lost".into())
        })
        .map(|_| ())
    }

    /// Records an error on the job; `fail` also moves it to `failed` (needs a person; it stays
    /// listed as unfinished, and `start_backfill` re-arms it).
    pub async fn set_job_error(
        &self,
        destination_id: &str,
        segment_id: &str,
        generation: u64,
        message: &str,
        fail: bool,
    ) -> Result<(), StoreError> {
        let mut u = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .condition_expression("gen = :gen AND #st <> :done")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":gen", n(generation))
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":err", s(message))
            .expression_attribute_values(":now", s(now_rfc3339()));
        u = if fail {
            u.update_expression("SET lastError = :err, updatedAt = :now, #st = :failed")
                .expression_attribute_values(":failed", s("failed"))
        } else {
            u.update_expression("SET lastError = :err, updatedAt = :now")
        };
        conditional(u.send().await, "jobs job error").map(|_| ())
    }

    /// Clears the job's last error (after progress).
    pub async fn clear_job_error(
        &self,
        destination_id: &str,
        segment_id: &str,
        generation: u64,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .update_expression("REMOVE lastError")
            .condition_expression("gen = :gen AND attribute_exists(lastError)")
            .expression_attribute_values(":gen", n(generation))
            .send()
            .await;
        conditional(res, "jobs clear job error").map(|_| ())
    }
}
