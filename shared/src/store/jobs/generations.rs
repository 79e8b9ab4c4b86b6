//! Jobs and their generations: starting, re-arming, restarting, reading and listing them.

use super::codec::{fresh_shard, job_from, job_item, job_key, job_pk, shard_from, shard_key};
use super::{
    ACTIVE_JOBS, BackfillJob, Ensure, Generation, JobPurpose, JobState, JobStore, ShardState,
};
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, conditional, n, now_rfc3339, s};
use crate::store::item::Item;

impl JobStore {
    /// Makes sure a job for this mapping and audience runs (idempotent; see [`Ensure`]).
    pub async fn ensure_job(
        &self,
        destination_id: &str,
        segment_id: &str,
        account_id: &str,
        audience_id: i64,
        shards: u16,
        restart_running: bool,
    ) -> Result<Ensure, StoreError> {
        let existing = self.get_job(destination_id, segment_id).await?;
        let (generation, include_removals, outcome) = match &existing {
            Some(j)
                if j.audience_id == audience_id
                    && j.state == JobState::Running
                    && !restart_running =>
            {
                return Ok(Ensure::AlreadyRunning);
            }
            Some(j) if j.audience_id == audience_id && j.state == JobState::Failed => {
                self.rearm(destination_id, segment_id, j).await?;
                return Ok(Ensure::Rearmed);
            }
            // Same audience, finished: members may have changed while it was not delivered to
            // (e.g. it was blocked), so resend the full state, removals included.
            Some(j) if j.audience_id == audience_id => (j.generation + 1, true, Ensure::Restarted),
            Some(j) => (j.generation + 1, false, Ensure::Restarted),
            None => (1, false, Ensure::Created),
        };
        let g = Generation {
            destination_id,
            segment_id,
            account_id,
            audience_id,
            shards,
            include_removals,
            purpose: JobPurpose::Backfill,
        };
        match self
            .put_generation(&g, existing.as_ref(), generation)
            .await?
        {
            true => Ok(outcome),
            // Someone else started it at the same moment: theirs stands.
            false => Ok(Ensure::AlreadyRunning),
        }
    }

    /// Re-arms a failed job of the same audience: running again and listed, its error gone;
    /// shards that failed keep their checkpoint, only their error goes.
    async fn rearm(
        &self,
        destination_id: &str,
        segment_id: &str,
        j: &BackfillJob,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .update_expression(
                "SET #st = :run, updatedAt = :now, gsi1pk = :active, gsi1sk = :gsk REMOVE lastError",
            )
            .condition_expression("#st = :failed AND gen = :gen")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":run", s("running"))
            .expression_attribute_values(":failed", s("failed"))
            .expression_attribute_values(":gen", n(j.generation))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":active", s(ACTIVE_JOBS))
            .expression_attribute_values(
                ":gsk",
                s(format!("{}#{destination_id}#{segment_id}", j.created_at)),
            )
            .send()
            .await
            .map_err(|e| aws_error("jobs rearm", e))?;
        for sh in 0..j.shards {
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(shard_key(destination_id, segment_id, sh)))
                .update_expression("REMOVE lastError")
                .condition_expression("attribute_exists(pk)")
                .send()
                .await;
            conditional(res, "jobs rearm shard")?;
        }
        Ok(())
    }

    /// Starts generation `generation` of a mapping's job (fresh shards, then the job item,
    /// conditional on `existing`'s generation so two starters never both win). `false` when
    /// another writer got there first.
    pub async fn put_generation(
        &self,
        g: &Generation<'_>,
        existing: Option<&BackfillJob>,
        generation: u64,
    ) -> Result<bool, StoreError> {
        let pk = job_pk(g.destination_id, g.segment_id);
        let now = now_rfc3339();
        // Shards first, the job item last: a listed job always has its shards.
        for sh in 0..g.shards {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(fresh_shard(&pk, sh, generation, &now)))
                .send()
                .await
                .map_err(|e| aws_error("jobs put shard", e))?;
        }
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_item(g, generation, &now)));
        put = match existing {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(j) => put
                .condition_expression("gen = :gen")
                .expression_attribute_values(":gen", n(j.generation)),
        };
        Ok(conditional(put.send().await, "jobs put job")?.is_some())
    }

    pub async fn get_job(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Option<BackfillJob>, StoreError> {
        let res = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(job_key(destination_id, segment_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("jobs get job", e))?;
        res.item().map(job_from).transpose()
    }

    /// The shards of a job (consistent read).
    pub async fn shards(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Vec<ShardState>, StoreError> {
        let pk = job_pk(destination_id, segment_id);
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let res = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":p", s("SHARD#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("jobs query shards", e))?;
            for it in res.items() {
                out.push(shard_from(it)?);
            }
            match res.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Unfinished jobs (running or failed), oldest first.
    pub async fn active_jobs(&self) -> Result<Vec<BackfillJob>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let res = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression("gsi1pk = :p")
                .expression_attribute_values(":p", s(ACTIVE_JOBS))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("jobs list jobs", e))?;
            for it in res.items() {
                out.push(job_from(it)?);
            }
            match res.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }
}
