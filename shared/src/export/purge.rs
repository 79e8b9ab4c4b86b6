//! Purges (`?purge=true` on `DELETE /destinations/{id}` and `DELETE …/mappings/{segmentId}`):
//! the queue entry a request writes ([`queue_purge`]), the scheduled planning that starts and
//! finishes them ([`plan_purges`]), and the mapping view's `purge` ([`purge_view`]).
//!
//! A purge waits until `PURGE_SETTLE_SECS` (default 30 s) have passed and the mapping's earlier
//! job holds no shard lease, so no add already on its way lands after the removes; it then runs
//! as one more generation of the mapping's job with purpose `purge` (every ledger row of the
//! segment sent as a `remove`, paced and checkpointed like a backfill). A destination deleted
//! with `?purge=true` is deleted once every purge of it is done.

use super::ExportCtx;
use crate::store::StoreError;
use crate::store::destinations::purges::{PurgeEntry, PurgeState};
use crate::store::destinations::{MappingStatus, SegmentMapping};
use crate::store::jobs::{BackfillJob, Generation, JobPurpose, JobState};
use crate::store::ledger::LEDGER_SHARDS;
use serde_json::{Value, json};
use std::time::Duration;

pub use crate::settings::options::DEFAULT_PURGE_SETTLE;

/// Whether a job may run for this mapping: a purge needs its mapping removed, every other pass
/// needs it active; both with the job's audience.
pub fn job_is_live(job: &BackfillJob, mapping: Option<&SegmentMapping>) -> bool {
    let wanted = match job.purpose {
        JobPurpose::Purge => MappingStatus::Removed,
        _ => MappingStatus::Active,
    };
    mapping.is_some_and(|m| m.status == wanted && m.audience_id == Some(job.audience_id))
}

/// Queues the purge of a removed mapping's audience (nothing to do without an audience).
pub(super) async fn queue_purge(
    ctx: &ExportCtx,
    m: &SegmentMapping,
    account_id: &str,
    delete_destination: bool,
) -> Result<bool, StoreError> {
    let Some(audience_id) = m.audience_id else {
        return Ok(false);
    };
    ctx.destinations
        .delete_audience_state(&m.destination_id, &m.segment_id)
        .await?;
    ctx.destinations
        .put_purge(&PurgeEntry {
            destination_id: m.destination_id.clone(),
            segment_id: m.segment_id.clone(),
            account_id: account_id.to_string(),
            audience_id,
            requested_ms: chrono::Utc::now().timestamp_millis(),
            state: PurgeState::Waiting,
            generation: None,
            delete_destination,
        })
        .await?;
    Ok(true)
}

/// The mapping's `purge`: `{"state","requestedAt","removesSent","shards","shardsDone",
/// "lastError"}` while one is queued or runs, or the last one's end; `null` without any.
/// `progress` is the job's (`members::backfill_progress`) when the caller has it.
pub async fn purge_view(ctx: &ExportCtx, dst: &str, seg: &str, progress: Option<&Value>) -> Value {
    let entry = ctx.destinations.purge_of(dst, seg).await.ok().flatten();
    let progress = match progress {
        Some(p) => Some(p.clone()),
        None => super::members::backfill_progress(ctx, dst, seg).await.ok(),
    }
    .filter(|p| p["purpose"] == "purge");
    let state = match (&entry, &progress) {
        (Some(e), _) if e.state == PurgeState::Waiting => "waiting",
        (_, Some(p)) if p["state"] == "done" => "done",
        (_, Some(p)) if p["state"] == "failed" => "failed",
        (_, Some(_)) => "running",
        (Some(e), None) => e.state.as_str(),
        (None, None) => return Value::Null,
    };
    let p = progress.unwrap_or(Value::Null);
    json!({
        "state": state,
        "requestedAt": entry.and_then(|e| chrono::DateTime::from_timestamp_millis(e.requested_ms))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "removesSent": p["devicesSent"],
        "shards": p["shards"],
        "shardsDone": p["shardsDone"],
        "finishedAt": p["finishedAt"],
        "lastError": p["lastError"],
    })
}

/// What one purge planning pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgePlan {
    pub started: u32,
    pub finished: u32,
    pub destinations_deleted: u32,
}

/// Starts the purges whose wait is over, notes the finished ones, and deletes destinations
/// whose purges are all done.
pub async fn plan_purges(
    ctx: &ExportCtx,
    now_ms: i64,
    settle: Duration,
) -> Result<PurgePlan, StoreError> {
    let mut plan = PurgePlan::default();
    let entries = ctx.destinations.purges().await?;
    for p in &entries {
        let (dst, seg) = (p.destination_id.as_str(), p.segment_id.as_str());
        let job = ctx.jobs.get_job(dst, seg).await?;
        match p.state {
            PurgeState::Waiting => {
                if start_purge(ctx, p, job.as_ref(), now_ms, settle).await? {
                    plan.started += 1;
                }
            }
            PurgeState::Running => match &job {
                Some(j) if Some(j.generation) == p.generation && j.state == JobState::Done => {
                    let mut done = p.clone();
                    done.state = PurgeState::Done;
                    ctx.destinations.put_purge(&done).await?;
                    plan.finished += 1;
                }
                Some(j) if Some(j.generation) == p.generation => {}
                // Replaced (mapped again): nothing left to purge.
                _ => ctx.destinations.delete_purge(dst, seg).await?,
            },
            PurgeState::Done if !p.delete_destination => {
                ctx.destinations.delete_purge(dst, seg).await?;
            }
            PurgeState::Done => {}
        }
    }
    // Destinations whose purges are all done (read again: states moved above).
    let entries = ctx.destinations.purges().await?;
    let mut deleting: Vec<&str> = entries
        .iter()
        .filter(|p| p.delete_destination)
        .map(|p| p.destination_id.as_str())
        .collect();
    deleting.dedup();
    for dst in deleting {
        let mine: Vec<&PurgeEntry> = entries.iter().filter(|p| p.destination_id == dst).collect();
        if mine.iter().all(|p| p.state == PurgeState::Done) {
            ctx.destinations.delete_destination_items(dst).await?;
            for p in mine {
                ctx.destinations.delete_purge(dst, &p.segment_id).await?;
            }
            plan.destinations_deleted += 1;
            tracing::info!(destination = %dst, "destination deleted after its purges");
        }
    }
    Ok(plan)
}

/// Starts a waiting purge whose wait is over (a purge generation of the job); `true` when
/// started. A mapping used again meanwhile drops the purge.
async fn start_purge(
    ctx: &ExportCtx,
    p: &PurgeEntry,
    job: Option<&BackfillJob>,
    now_ms: i64,
    settle: Duration,
) -> Result<bool, StoreError> {
    let (dst, seg) = (p.destination_id.as_str(), p.segment_id.as_str());
    if now_ms < p.requested_ms + settle.as_millis() as i64 {
        return Ok(false);
    }
    let mapping = ctx.destinations.get_mapping(dst, seg).await?;
    if mapping.is_none_or(|m| m.status != MappingStatus::Removed) {
        // Mapped again meanwhile: its backfill owns the audience now.
        ctx.destinations.delete_purge(dst, seg).await?;
        return Ok(false);
    }
    if let Some(j) = job
        && held(ctx, j).await?
    {
        return Ok(false);
    }
    let generation = job.map_or(1, |j| j.generation + 1);
    let g = Generation {
        destination_id: dst,
        segment_id: seg,
        account_id: &p.account_id,
        audience_id: p.audience_id,
        shards: LEDGER_SHARDS,
        include_removals: true,
        purpose: JobPurpose::Purge,
    };
    if ctx.jobs.put_generation(&g, job, generation).await? {
        let mut running = p.clone();
        running.state = PurgeState::Running;
        running.generation = Some(generation);
        ctx.destinations.put_purge(&running).await?;
        return Ok(true);
    }
    Ok(false)
}

/// True while a shard of the job's current generation is leased (a send may be in flight).
async fn held(ctx: &ExportCtx, j: &BackfillJob) -> Result<bool, StoreError> {
    if j.state == JobState::Done {
        return Ok(false);
    }
    // Real time, whatever clock the planner was given: leases are wall-clock.
    let now_ms = crate::runtime::now_ms() as i64;
    let shards = ctx.jobs.shards(&j.destination_id, &j.segment_id).await?;
    Ok(shards
        .iter()
        .any(|s| s.generation == j.generation && s.lease_until_ms as i64 > now_ms))
}
