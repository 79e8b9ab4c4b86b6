//! Membership refresh: Amazon drops a member `ttl` seconds after the last `add` that named it
//! (`shared/amazon-contract.md`), so every member that stays qualified is added again before then.
//!
//! A refresh is one more generation of the mapping's job (`store::jobs`, purpose `refresh`): the
//! same shards, leases, checkpoints, backfill slots and PATCH pacing as a backfill, so refreshes,
//! backfills and purges together stay within the 100 PATCH/s budget, and a refresh stopped by the
//! deadline resumes from its checkpoints. It reads qualified rows only (adds), and deltas that
//! arrive meanwhile are marked dirty and re-sent by its drain exactly as during a backfill.
//!
//! When: every pass (backfill or refresh) re-adds every qualified member after its start, so a
//! member was last sent no earlier than the start of the last completed pass. The scheduled run
//! starts a refresh once half of the audience's TTL has passed since that start
//! ([`plan_refreshes`]); the pass then has the other half to finish before anyone lapses.
//! The TTL is the audience's own ([`crate::store::destinations::audiences::AudienceState`]): the
//! destination's at creation, an adopted audience's as Amazon reported it, and a PATCHed one
//! once Amazon has taken it.

use super::ExportCtx;
use crate::store::StoreError;
use crate::store::destinations::audiences::AudienceState;
use crate::store::destinations::{Destination, MappingStatus, SegmentMapping};
use crate::store::jobs::{Generation, JobPurpose, JobState};
use crate::store::ledger::LEDGER_SHARDS;
use serde_json::{Value, json};

/// What one planning pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshPlan {
    /// Audiences looked at.
    pub audiences: u32,
    /// Refreshes started (their jobs run in the same invocation's backfill phase).
    pub started: u32,
    /// Audience states dropped because their mapping is gone.
    pub dropped: u32,
}

/// Records a mapping's audience for upkeep (refresh, size reads, settings). Called whenever a
/// mapping's backfill is queued; `adopted_ttl` is an adopted audience's own TTL.
pub async fn register(
    ctx: &ExportCtx,
    mapping: &SegmentMapping,
    dest: &Destination,
    adopted_ttl: Option<u64>,
) -> Result<(), StoreError> {
    let Some(audience_id) = mapping.audience_id else {
        return Ok(());
    };
    ctx.destinations
        .register_audience(
            &mapping.destination_id,
            &mapping.segment_id,
            &dest.account_id,
            audience_id,
            adopted_ttl.unwrap_or(dest.ttl_seconds),
            adopted_ttl.is_some(),
        )
        .await
}

fn epoch_ms(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// When the next refresh of an audience is due (epoch ms): half its TTL after the start of the
/// last completed pass. `None` for a TTL of 0 (no expiry) or no completed pass.
pub fn next_due_ms(ttl_seconds: u64, last_pass_started_ms: Option<i64>) -> Option<i64> {
    if ttl_seconds == 0 {
        return None;
    }
    last_pass_started_ms.map(|s| s + (ttl_seconds as i64) * 500)
}

/// Starts the refreshes that are due at `now_ms` (the scheduled run passes the clock; tests
/// pass a later one). A refresh starts only after a completed pass on the same audience: a
/// running backfill or refresh re-adds everyone anyway, a failed one needs a person.
pub async fn plan_refreshes(ctx: &ExportCtx, now_ms: i64) -> Result<RefreshPlan, StoreError> {
    let mut plan = RefreshPlan::default();
    for st in ctx.destinations.audience_states().await? {
        plan.audiences += 1;
        match refresh_one(ctx, &st, now_ms).await {
            Ok(Some(true)) => plan.started += 1,
            Ok(Some(false)) => {}
            Ok(None) => {
                ctx.destinations
                    .delete_audience_state(&st.destination_id, &st.segment_id)
                    .await?;
                plan.dropped += 1;
            }
            Err(e) => tracing::warn!(
                destination_id = %st.destination_id, segment_id = %st.segment_id, error = %e,
                "refresh not planned"
            ),
        }
    }
    Ok(plan)
}

/// `Some(started)`, or `None` when the mapping is gone (its state can go).
async fn refresh_one(
    ctx: &ExportCtx,
    st: &AudienceState,
    now_ms: i64,
) -> Result<Option<bool>, StoreError> {
    let (dst, seg) = (st.destination_id.as_str(), st.segment_id.as_str());
    if now_ms < st.refresh_due_ms {
        return Ok(Some(false));
    }
    let Some(job) = ctx.jobs.get_job(dst, seg).await? else {
        return Ok(Some(false));
    };
    if job.audience_id != st.audience_id || job.state != JobState::Done {
        return Ok(Some(false));
    }
    match next_due_ms(st.ttl_seconds, epoch_ms(&job.created_at)) {
        Some(due) if due <= now_ms => {}
        Some(due) => {
            if due != st.refresh_due_ms {
                ctx.destinations.set_refresh_due(dst, seg, due).await?;
            }
            return Ok(Some(false));
        }
        None => return Ok(Some(false)),
    }
    let mapping = ctx.destinations.get_mapping(dst, seg).await?;
    match &mapping {
        None => return Ok(None),
        Some(m) if m.status == MappingStatus::Removed || m.audience_id != Some(st.audience_id) => {
            return Ok(None);
        }
        // Blocked or otherwise not delivered to: unblocking restarts a full backfill.
        Some(m) if m.status != MappingStatus::Active => return Ok(Some(false)),
        Some(_) => {}
    }
    let generation = job.generation + 1;
    let g = Generation {
        destination_id: dst,
        segment_id: seg,
        account_id: &job.account_id,
        audience_id: job.audience_id,
        shards: LEDGER_SHARDS,
        include_removals: false,
        purpose: JobPurpose::Refresh,
    };
    if !ctx.jobs.put_generation(&g, Some(&job), generation).await? {
        return Ok(Some(false));
    }
    ctx.destinations
        .set_refresh_started(dst, seg, generation, job.finished_at.as_deref())
        .await?;
    tracing::info!(destination_id = %dst, segment_id = %seg, generation, "membership refresh started");
    Ok(Some(true))
}

/// The mapping view's `refresh`: `{"lastCompletedAt","nextDueAt","progress","ttlSeconds"}`,
/// from the job's progress (`members::backfill_progress`) and the audience's state.
pub fn refresh_view(progress: Option<&Value>, st: Option<&AudienceState>) -> Value {
    let Some(st) = st else {
        return Value::Null;
    };
    let p = progress.cloned().unwrap_or(Value::Null);
    let state = p["state"].as_str().unwrap_or("none");
    let refreshing = state != "done" && p["purpose"] == "refresh";
    let last_completed = match state {
        "done" => p["finishedAt"].as_str().map(str::to_string),
        _ => st.last_completed_at.clone(),
    };
    let next_due = match state {
        "done" => next_due_ms(st.ttl_seconds, p["startedAt"].as_str().and_then(epoch_ms))
            .and_then(rfc3339),
        _ => None,
    };
    let progress = if refreshing {
        json!({
            "state": p["state"], "phase": p["phase"], "devicesSent": p["devicesSent"],
            "shards": p["shards"], "shardsDone": p["shardsDone"], "startedAt": p["startedAt"],
            "lastError": p["lastError"],
        })
    } else {
        Value::Null
    };
    json!({
        "ttlSeconds": st.ttl_seconds,
        "lastCompletedAt": last_completed,
        "nextDueAt": next_due,
        "progress": progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ttl: u64) -> AudienceState {
        AudienceState {
            destination_id: "d".into(),
            segment_id: "s".into(),
            account_id: "1".into(),
            audience_id: 72057594038053891,
            ttl_seconds: ttl,
            refresh_generation: None,
            last_completed_at: Some("2026-12-01T00:00:00.000Z".into()),
            refresh_due_ms: 0,
            size: None,
            size_due_ms: 0,
            settings_version: 0,
            applied_version: 0,
            failed_version: None,
            settings_error: None,
            applied_at: None,
            applied_countries: Vec::new(),
            applied_description: None,
        }
    }

    #[test]
    fn refresh_is_due_half_a_ttl_after_the_last_pass_started() {
        assert_eq!(next_due_ms(120, Some(1_000)), Some(61_000));
        assert_eq!(next_due_ms(2_592_000, Some(0)), Some(1_296_000_000));
        assert_eq!(next_due_ms(0, Some(1_000)), None, "ttl 0: nothing expires");
        assert_eq!(next_due_ms(120, None), None);
    }

    #[test]
    fn the_view_shows_a_running_refresh_and_the_next_due_time_of_a_finished_pass() {
        let done = json!({"state": "done", "purpose": "refresh", "startedAt": "2026-12-05T10:00:00.000Z",
            "finishedAt": "2026-12-05T10:00:05.000Z"});
        let v = refresh_view(Some(&done), Some(&state(120)));
        assert_eq!(v["lastCompletedAt"], "2026-12-05T10:00:05.000Z");
        assert_eq!(v["nextDueAt"], "2026-12-05T10:01:00.000Z");
        assert!(v["progress"].is_null());
        let running = json!({"state": "running", "purpose": "refresh", "phase": "scanning",
            "devicesSent": 10, "shards": 16, "shardsDone": 3, "startedAt": "2026-12-05T10:01:00.000Z"});
        let v = refresh_view(Some(&running), Some(&state(120)));
        assert_eq!(v["lastCompletedAt"], "2026-12-01T00:00:00.000Z");
        assert!(v["nextDueAt"].is_null());
        assert_eq!(v["progress"]["devicesSent"], 10);
        // A running backfill is not a refresh.
        let backfill = json!({"state": "running", "purpose": "backfill"});
        assert!(refresh_view(Some(&backfill), Some(&state(120)))["progress"].is_null());
        assert!(refresh_view(None, None).is_null());
    }
}
