//! Retiring a job whose destination was deleted.

use super::JobStore;
use super::codec::job_key;
use crate::store::StoreError;
use crate::store::dynamo::{conditional, now_rfc3339, s};

impl JobStore {
    /// Stops a mapping's job for good: `failed` with `message` and out of the index of
    /// unfinished jobs, so no later run lists it (a failed job otherwise stays listed until
    /// `start_backfill` re-arms it). A run that already holds one of its shards finishes that
    /// run's shards; its checkpoints then fail nobody. Missing jobs are fine.
    pub async fn retire_job(
        &self,
        destination_id: &str,
        segment_id: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .condition_expression("attribute_exists(pk)")
            .update_expression(
                "SET #st = :failed, lastError = :m, updatedAt = :now REMOVE gsi1pk, gsi1sk",
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":failed", s("failed"))
            .expression_attribute_values(":m", s(message))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        conditional(res, "jobs retire job").map(|_| ())
    }
}
