//! `JobStore`: backfill jobs of segment mappings, their shards (checkpoints and leases) and their
//! dirty sets, kept in `DESTINATIONS_TABLE` under the `JOB#` prefix (the destination, segment and
//! mapping items in that table belong to `store::destinations`).
//!
//! Item layouts (table keys `pk`, `sk`; `gsi1` on `gsi1pk`/`gsi1sk`):
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | job | `JOB#<destinationId>#<segmentId>` | `JOB` | `destinationId, segmentId, accountId, audienceId (N), generation (N), state` (`running`/`done`/`failed`), `purpose` (`backfill`/`refresh`/`purge`, absent = backfill), `shards (N), includeRemovals (BOOL), draining (BOOL), createdAt, updatedAt, finishedAt?, lastError?, leaseOwner?, leaseUntil (N)?, drained (N)`; while unfinished also `gsi1pk = JOBS#active`, `gsi1sk = <createdAt>#<destinationId>#<segmentId>` |
//! | shard | same pk | `SHARD#<nn>` | `generation (N), state` (`pending`/`done`), `lastKey?` (ledger sort key of the last acknowledged row), `sent (N), batches (N), leaseOwner?, leaseUntil (N), lastError?, updatedAt` |
//! | dirty device | same pk | `DIRTY#<deviceKey>` | `segmentId, device, nonce` |
//! | backfill slot | `JOBS#slots` | `SLOT#<n>` | `leaseOwner, leaseUntil (N)`: at most `n` invocations run backfill at once |
//!
//! - A shard is worked by whoever holds its lease: [`JobStore::lease_shard`] is a conditional
//!   write that succeeds only when the lease is free, expired, or already ours, so two
//!   invocations never work the same shard and a dead invocation's shard is taken over once its
//!   lease expires. Every checkpoint is conditional on still holding the lease (a fence): an
//!   invocation that lost its lease cannot move the checkpoint.
//! - The checkpoint is saved after each batch Amazon acknowledged, so a resumed shard re-sends at
//!   most the one batch that was in flight when an invocation died.
//! - The job's own item carries the lease of its final phase (draining the dirty set). The job
//!   leaves `gsi1` (sparse index) when done, so listing unfinished work is one small query.
//! - Dirty devices are deltas that arrived while the job was unfinished; the job re-sends them
//!   from the ledger's current state after its scan. The `nonce` lets the drain delete an entry
//!   only if no newer delta re-marked it meanwhile.

use super::StoreError;
use super::dynamo::{is_conditional_failure as is_condition_failed, n, now_rfc3339, s};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

mod retire;

/// The `gsi1pk` of unfinished jobs.
pub const ACTIVE_JOBS: &str = "JOBS#active";

/// The state of a backfill job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    /// Stopped on an error that needs a person (rejected input, account not found); re-armed by
    /// `start_backfill`.
    Failed,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(JobState::Running),
            "done" => Some(JobState::Done),
            "failed" => Some(JobState::Failed),
            _ => None,
        }
    }
}

/// What a job's pass over the ledger is for. All three share the job's shards, leases,
/// checkpoints, backfill slots and PATCH pacing (`export::members`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPurpose {
    /// The mapping's historical backfill (or its restart).
    Backfill,
    /// Members re-added before Amazon's TTL drops them (`export::refresh`): qualified rows only.
    Refresh,
    /// Every row of the segment removed from the audience (`export::lifecycle`, `?purge=true`).
    Purge,
}

impl JobPurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobPurpose::Backfill => "backfill",
            JobPurpose::Refresh => "refresh",
            JobPurpose::Purge => "purge",
        }
    }
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("refresh") => JobPurpose::Refresh,
            Some("purge") => JobPurpose::Purge,
            _ => JobPurpose::Backfill,
        }
    }
}

/// A backfill job: one per mapping (destination × segment).
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillJob {
    pub destination_id: String,
    pub segment_id: String,
    pub account_id: String,
    pub audience_id: i64,
    /// Bumped each time the job restarts from scratch.
    pub generation: u64,
    pub state: JobState,
    pub shards: u16,
    /// Also send removals (a restart on an audience that may hold members).
    pub include_removals: bool,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
    /// Dirty devices re-sent so far.
    pub drained: u64,
    /// Every shard is done and the dirty-set drain has begun: deltas no longer need to mark
    /// devices dirty (their sends come after every scan batch).
    pub draining: bool,
    /// What this generation's pass is for.
    pub purpose: JobPurpose,
}

/// One shard of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardState {
    pub shard: u16,
    pub generation: u64,
    pub done: bool,
    pub last_key: Option<String>,
    pub sent: u64,
    pub batches: u64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: u64,
    pub last_error: Option<String>,
}

/// A dirty device of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct DirtyDevice {
    pub segment_id: String,
    pub device: String,
    pub nonce: String,
}

/// What a [`JobStore::ensure_job`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensure {
    Created,
    /// Already running for this audience: nothing to do.
    AlreadyRunning,
    /// A failed job was re-armed; its checkpoints are kept.
    Rearmed,
    /// Restarted from scratch (new audience, or a finished job asked again).
    Restarted,
}

/// A new generation of a mapping's job ([`JobStore::put_generation`]).
#[derive(Clone, Debug)]
pub struct Generation<'a> {
    pub destination_id: &'a str,
    pub segment_id: &'a str,
    pub account_id: &'a str,
    pub audience_id: i64,
    pub shards: u16,
    /// Also read unqualified rows (a backfill restart sends their removals; a purge removes all).
    pub include_removals: bool,
    pub purpose: JobPurpose,
}

/// The job adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JobStore {
    client: Client,
    table: String,
}

fn aws<E: std::error::Error + Send + Sync + 'static>(
    op: &str,
    e: aws_sdk_dynamodb::error::SdkError<E>,
) -> StoreError {
    StoreError::Aws(format!(
        "jobs {op}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
    ))
}

fn get_s(item: &Item, k: &str) -> Option<String> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}
fn get_n<T: std::str::FromStr>(item: &Item, k: &str) -> Option<T> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}
fn req_s(item: &Item, k: &str) -> Result<String, StoreError> {
    get_s(item, k).ok_or_else(|| StoreError::Corrupt(format!("job item without {k}")))
}

/// The partition key of a mapping's job.
pub fn job_pk(destination_id: &str, segment_id: &str) -> String {
    format!("JOB#{destination_id}#{segment_id}")
}

fn shard_sk(shard: u16) -> String {
    format!("SHARD#{shard:02}")
}

impl JobStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    fn key(pk: &str, sk: &str) -> Item {
        HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
    }

    fn job_from(item: &Item) -> Result<BackfillJob, StoreError> {
        Ok(BackfillJob {
            destination_id: req_s(item, "destinationId")?,
            segment_id: req_s(item, "segmentId")?,
            account_id: req_s(item, "accountId")?,
            audience_id: get_n(item, "audienceId")
                .ok_or_else(|| StoreError::Corrupt("job item without audienceId".into()))?,
            generation: get_n(item, "gen").unwrap_or(0),
            state: JobState::parse(&req_s(item, "state")?)
                .ok_or_else(|| StoreError::Corrupt("job item with an unknown state".into()))?,
            shards: get_n(item, "shards").unwrap_or(0),
            include_removals: matches!(
                item.get("includeRemovals"),
                Some(AttributeValue::Bool(true))
            ),
            created_at: get_s(item, "createdAt").unwrap_or_default(),
            updated_at: get_s(item, "updatedAt").unwrap_or_default(),
            finished_at: get_s(item, "finishedAt"),
            last_error: get_s(item, "lastError"),
            drained: get_n(item, "drained").unwrap_or(0),
            draining: matches!(item.get("draining"), Some(AttributeValue::Bool(true))),
            purpose: JobPurpose::parse(get_s(item, "purpose").as_deref()),
        })
    }

    fn shard_from(item: &Item) -> Result<ShardState, StoreError> {
        let sk = req_s(item, "sk")?;
        let shard = sk
            .strip_prefix("SHARD#")
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| StoreError::Corrupt("shard item with a bad sort key".into()))?;
        Ok(ShardState {
            shard,
            generation: get_n(item, "gen").unwrap_or(0),
            done: get_s(item, "state").as_deref() == Some("done"),
            last_key: get_s(item, "lastKey"),
            sent: get_n(item, "sent").unwrap_or(0),
            batches: get_n(item, "batches").unwrap_or(0),
            lease_owner: get_s(item, "leaseOwner"),
            lease_until_ms: get_n(item, "leaseUntil").unwrap_or(0),
            last_error: get_s(item, "lastError"),
        })
    }

    fn fresh_shard(pk: &str, shard: u16, generation: u64, now: &str) -> Item {
        let mut it = Self::key(pk, &shard_sk(shard));
        it.insert("gen".into(), n(generation));
        it.insert("state".into(), s("pending"));
        it.insert("sent".into(), n(0));
        it.insert("batches".into(), n(0));
        it.insert("leaseUntil".into(), n(0));
        it.insert("updatedAt".into(), s(now));
        it
    }

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
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
            .update_expression("SET leaseOwner = :me, leaseUntil = :until")
            .condition_expression(
                "gen = :gen AND #st = :run AND (leaseUntil < :now OR leaseOwner = :me)",
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(now_ms + lease_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":gen", n(generation))
            .expression_attribute_values(":run", s("running"))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(aws("lease job", e)),
        }
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
            .update_expression("SET draining = :t, updatedAt = :now")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => {
                Err(StoreError::Conflict("job lease was lost".into()))
            }
            Err(e) => Err(aws("set draining", e)),
        }
    }

    /// Releases the job's lease (quietly, if it is no longer ours).
    pub async fn release_job(
        &self,
        destination_id: &str,
        segment_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
            .update_expression("SET leaseUntil = :zero")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("release job", e)),
        }
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
            .update_expression("SET drained = drained + :c, updatedAt = :now")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":c", n(count))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => {
                Err(StoreError::Conflict("job lease was lost".into()))
            }
            Err(e) => Err(aws("add drained", e)),
        }
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
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
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => {
                Err(StoreError::Conflict("job lease was lost".into()))
            }
            Err(e) => Err(aws("finish job", e)),
        }
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
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
        match u.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("job error", e)),
        }
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
            .set_key(Some(Self::key(&job_pk(destination_id, segment_id), "JOB")))
            .update_expression("REMOVE lastError")
            .condition_expression("gen = :gen AND attribute_exists(lastError)")
            .expression_attribute_values(":gen", n(generation))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("clear job error", e)),
        }
    }

    /// Takes one of `slots` backfill slots until `until_ms` (the invocation's deadline), so at
    /// most `slots` invocations run backfills at once across every process. `None` when all are
    /// held by live invocations.
    pub async fn lease_slot(
        &self,
        slots: u16,
        owner: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<u16>, StoreError> {
        for slot in 0..slots {
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key("JOBS#slots", &format!("SLOT#{slot}"))))
                .update_expression("SET leaseOwner = :me, leaseUntil = :until")
                .condition_expression(
                    "attribute_not_exists(pk) OR leaseUntil < :now OR leaseOwner = :me",
                )
                .expression_attribute_values(":me", s(owner))
                .expression_attribute_values(":until", n(until_ms))
                .expression_attribute_values(":now", n(now_ms))
                .send()
                .await;
            match res {
                Ok(_) => return Ok(Some(slot)),
                Err(e) if is_condition_failed(&e) => continue,
                Err(e) => return Err(aws("lease slot", e)),
            }
        }
        Ok(None)
    }

    /// Frees a backfill slot (quietly, if it is no longer ours).
    pub async fn release_slot(&self, slot: u16, owner: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("JOBS#slots", &format!("SLOT#{slot}"))))
            .update_expression("SET leaseUntil = :zero")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("release slot", e)),
        }
    }

    /// Records a device changed by a delta while the job is unfinished. Written before the
    /// delta's own send (see `export::members` for why that order matters).
    pub async fn mark_dirty(
        &self,
        destination_id: &str,
        segment_id: &str,
        device: &str,
    ) -> Result<(), StoreError> {
        let mut it = Self::key(
            &job_pk(destination_id, segment_id),
            &format!("DIRTY#{device}"),
        );
        it.insert("segmentId".into(), s(segment_id));
        it.insert("device".into(), s(device));
        it.insert("nonce".into(), s(uuid::Uuid::new_v4().simple().to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(it))
            .send()
            .await
            .map_err(|e| aws("mark dirty", e))?;
        Ok(())
    }

    /// One page of a job's dirty devices (consistent read), after `start_after` (a device key).
    pub async fn dirty_page(
        &self,
        destination_id: &str,
        segment_id: &str,
        start_after: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<DirtyDevice>, Option<String>), StoreError> {
        let pk = job_pk(destination_id, segment_id);
        let res = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":p", s("DIRTY#"))
            .consistent_read(true)
            .limit(limit)
            .set_exclusive_start_key(start_after.map(|d| Self::key(&pk, &format!("DIRTY#{d}"))))
            .send()
            .await
            .map_err(|e| aws("query dirty", e))?;
        let mut out = Vec::new();
        for it in res.items() {
            out.push(DirtyDevice {
                segment_id: req_s(it, "segmentId")?,
                device: req_s(it, "device")?,
                nonce: req_s(it, "nonce")?,
            });
        }
        let last = match res.last_evaluated_key().and_then(|k| k.get("sk")) {
            Some(AttributeValue::S(sk)) => sk.strip_prefix("DIRTY#").map(str::to_string),
            _ => None,
        };
        Ok((out, last))
    }

    /// Removes a dirty entry unless a newer delta re-marked it (different nonce).
    pub async fn clear_dirty(
        &self,
        destination_id: &str,
        segment_id: &str,
        d: &DirtyDevice,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                &job_pk(destination_id, segment_id),
                &format!("DIRTY#{}", d.device),
            )))
            .condition_expression("nonce = :n")
            .expression_attribute_values(":n", s(&d.nonce))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("clear dirty", e)),
        }
    }
}
