//! Backfill progress of one mapping.

use crate::export::ExportCtx;
use crate::store::StoreError;
use crate::store::jobs::JobState;
use serde_json::{Value, json};

/// Backfill progress of one mapping, for `GET /destinations/{id}`:
/// `{"state","devicesSent","batches","shards","shardsDone","dirtyResent","lastError",…}`;
/// `{"state":"none"}` when no job exists.
pub async fn backfill_progress(
    ctx: &ExportCtx,
    destination_id: &str,
    segment_id: &str,
) -> Result<Value, StoreError> {
    let Some(job) = ctx.jobs.get_job(destination_id, segment_id).await? else {
        return Ok(json!({"state": "none"}));
    };
    let shards = ctx.jobs.shards(destination_id, segment_id).await?;
    let shards: Vec<_> = shards
        .into_iter()
        .filter(|s| s.generation == job.generation)
        .collect();
    let sent: u64 = shards.iter().map(|s| s.sent).sum();
    let batches: u64 = shards.iter().map(|s| s.batches).sum();
    let done = shards.iter().filter(|s| s.done).count();
    let shard_error = shards.iter().find_map(|s| s.last_error.clone());
    let phase = match job.state {
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Running if job.draining => "draining",
        JobState::Running if done == shards.len() => "finishing",
        JobState::Running => "scanning",
    };
    Ok(json!({
        "state": job.state.as_str(),
        "purpose": job.purpose,
        "phase": phase,
        "audienceId": job.audience_id,
        "devicesSent": sent,
        "batches": batches,
        "shards": job.shards,
        "shardsDone": done,
        "dirtyResent": job.drained,
        "includeRemovals": job.include_removals,
        "lastError": job.last_error.or(shard_error),
        "startedAt": job.created_at,
        "updatedAt": job.updated_at,
        "finishedAt": job.finished_at,
    }))
}
