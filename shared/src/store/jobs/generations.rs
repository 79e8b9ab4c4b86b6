//! Jobs and their generations.

use super::*;

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
        let pk = job_pk(destination_id, segment_id);
        let existing = self.get_job(destination_id, segment_id).await?;
        let now = now_rfc3339();
        let (generation, include_removals, outcome) = match &existing {
            Some(j)
                if j.audience_id == audience_id
                    && j.state == JobState::Running
                    && !restart_running =>
            {
                return Ok(Ensure::AlreadyRunning);
            }
            Some(j) if j.audience_id == audience_id && j.state == JobState::Failed => {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(Self::key(&pk, "JOB")))
                    .update_expression(
                        "SET #st = :run, updatedAt = :now, gsi1pk = :active, gsi1sk = :gsk REMOVE lastError",
                    )
                    .condition_expression("#st = :failed AND gen = :gen")
                    .expression_attribute_names("#st", "state")
                    .expression_attribute_values(":run", s("running"))
                    .expression_attribute_values(":failed", s("failed"))
                    .expression_attribute_values(":gen", n(j.generation))
                    .expression_attribute_values(":now", s(&now))
                    .expression_attribute_values(":active", s(ACTIVE_JOBS))
                    .expression_attribute_values(
                        ":gsk",
                        s(format!("{}#{destination_id}#{segment_id}", j.created_at)),
                    )
                    .send()
                    .await
                    .map_err(|e| aws("rearm", e))?;
                // Shards that failed keep their checkpoint; only their error goes.
                for sh in 0..j.shards {
                    let res = self
                        .client
                        .update_item()
                        .table_name(&self.table)
                        .set_key(Some(Self::key(&pk, &shard_sk(sh))))
                        .update_expression("REMOVE lastError")
                        .condition_expression("attribute_exists(pk)")
                        .send()
                        .await;
                    if let Err(e) = res
                        && !is_condition_failed(&e)
                    {
                        return Err(aws("rearm shard", e));
                    }
                }
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

    /// Starts generation `generation` of a mapping's job (fresh shards, then the job item,
    /// conditional on `existing`'s generation so two starters never both win). `false` when
    /// another writer got there first.
    pub async fn put_generation(
        &self,
        g: &Generation<'_>,
        existing: Option<&BackfillJob>,
        generation: u64,
    ) -> Result<bool, StoreError> {
        let (destination_id, segment_id) = (g.destination_id, g.segment_id);
        let pk = job_pk(destination_id, segment_id);
        let now = now_rfc3339();
        // Shards first, the job item last: a listed job always has its shards.
        for sh in 0..g.shards {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(Self::fresh_shard(&pk, sh, generation, &now)))
                .send()
                .await
                .map_err(|e| aws("put shard", e))?;
        }
        let mut job = Self::key(&pk, "JOB");
        job.insert("destinationId".into(), s(destination_id));
        job.insert("segmentId".into(), s(segment_id));
        job.insert("accountId".into(), s(g.account_id));
        job.insert("audienceId".into(), n(g.audience_id));
        job.insert("gen".into(), n(generation));
        job.insert("state".into(), s("running"));
        job.insert("shards".into(), n(g.shards));
        job.insert(
            "includeRemovals".into(),
            AttributeValue::Bool(g.include_removals),
        );
        job.insert("purpose".into(), s(g.purpose.as_str()));
        job.insert("createdAt".into(), s(&now));
        job.insert("updatedAt".into(), s(&now));
        job.insert("drained".into(), n(0));
        job.insert("draining".into(), AttributeValue::Bool(false));
        job.insert("leaseUntil".into(), n(0));
        job.insert("gsi1pk".into(), s(ACTIVE_JOBS));
        job.insert(
            "gsi1sk".into(),
            s(format!("{now}#{destination_id}#{segment_id}")),
        );
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job));
        put = match existing {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(j) => put
                .condition_expression("gen = :gen")
                .expression_attribute_values(":gen", n(j.generation)),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(aws("put job", e)),
        }
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws("get job", e))?;
        res.item().map(Self::job_from).transpose()
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
                .map_err(|e| aws("query shards", e))?;
            for it in res.items() {
                out.push(Self::shard_from(it)?);
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
                .map_err(|e| aws("list jobs", e))?;
            for it in res.items() {
                out.push(Self::job_from(it)?);
            }
            match res.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }
}
