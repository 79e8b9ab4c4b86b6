//! Lifecycle routes: listing and deleting segments, deleting destinations, and purging an
//! audience's members at Amazon (`?purge=true`).
//!
//! - `GET /segments?limit=&nextToken=`, `DELETE /segments/{id}` (409 naming the destinations
//!   while it is mapped; `?purgeLedger=true` also deletes its ledger rows, within the request's
//!   time, continued by the same DELETE again).
//! - `DELETE /destinations/{id}`: every mapping turns `removed` (no deltas, refreshes, size reads
//!   or settings), their running jobs are retired (a run that already holds one finishes its
//!   current shards; no later run lists it), the destination leaves the list and is deleted.
//! - `?purge=true` (on `DELETE /destinations/{id}` and `DELETE …/mappings/{segmentId}`): 202; a
//!   purge is queued per mapping with an audience and run by the schedule as one more
//!   generation of the mapping's job (purpose `purge`: every ledger row of the segment sent as
//!   a `remove`, paced and checkpointed like a backfill). It waits until the mapping's earlier job
//!   holds no shard lease and `PURGE_SETTLE_SECS` (default 30 s) have passed, so no add that was
//!   already on its way lands after the removes. A destination being purged shows `deleting`
//!   with each mapping's `purge` progress, and is deleted once every purge is done (then 404).

use super::ExportCtx;
use super::destinations::{
    destination_not_found, invalid, mapping_not_found, mapping_view, segment_not_found,
    store_failure,
};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::destinations::audiences::{PurgeEntry, PurgeState};
use crate::store::destinations::{MappingStatus, SegmentMapping};
use crate::store::jobs::{BackfillJob, Generation, JobPurpose, JobState};
use crate::store::ledger::LEDGER_SHARDS;
use serde_json::{Value, json};
use std::time::Duration;

/// Default wait between a purge request and its first remove patch.
pub const DEFAULT_PURGE_SETTLE: Duration = Duration::from_secs(30);
/// The longest a `DELETE /segments/{id}?purgeLedger=true` spends deleting rows.
const LEDGER_PURGE_SLICE_MS: i64 = 15_000;

/// Whether a job may run for this mapping: a purge needs its mapping removed, every other pass
/// needs it active; both with the job's audience.
pub fn job_is_live(job: &BackfillJob, mapping: Option<&SegmentMapping>) -> bool {
    let wanted = match job.purpose {
        JobPurpose::Purge => MappingStatus::Removed,
        _ => MappingStatus::Active,
    };
    mapping.is_some_and(|m| m.status == wanted && m.audience_id == Some(job.audience_id))
}

fn wants_purge(req: &HttpRequest, name: &str) -> Result<bool, HttpResponse> {
    match req.query().get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(name, format!("{name} must be true or false"))),
    }
}

/// `GET /segments?limit=&nextToken=`.
pub async fn list_segments(ctx: &ExportCtx, req: &HttpRequest) -> HttpResponse {
    let q = req.query();
    let limit = match q.get("limit").map(|l| l.parse::<i32>()) {
        None => 50,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return invalid("limit", "limit must be an integer from 1 to 100"),
    };
    match ctx
        .destinations
        .list_segments(limit, q.get("nextToken").map(String::as_str))
        .await
    {
        Ok(p) => HttpResponse::json(
            200,
            &json!({"segments": p.segments, "nextToken": p.next_token}),
        ),
        Err(e) => store_failure(e),
    }
}

/// `DELETE /segments/{id}[?purgeLedger=true]`.
pub async fn delete_segment(
    ctx: &ExportCtx,
    id: &str,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    let purge = match wants_purge(req, "purgeLedger") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mapped = match ctx.destinations.mappings_for_segment(id).await {
        Ok(ms) => ms,
        Err(e) => return store_failure(e),
    };
    let mut dests: Vec<String> = Vec::new();
    for m in mapped.iter().filter(|m| m.status != MappingStatus::Removed) {
        // The index lags: confirm with a consistent read.
        match ctx.destinations.get_mapping(&m.destination_id, id).await {
            Ok(Some(cur)) if cur.status != MappingStatus::Removed => dests.push(cur.destination_id),
            Ok(_) => {}
            Err(e) => return store_failure(e),
        }
    }
    if !dests.is_empty() {
        return HttpResponse::error(
            409,
            "segment_mapped",
            format!(
                "segment {id} is mapped to destination(s) {}; remove those mappings first \
                 (DELETE /destinations/{{id}}/mappings/{id})",
                dests.join(", ")
            ),
        );
    }
    let existed = match ctx.destinations.delete_segment(id).await {
        Ok(e) => e,
        Err(e) => return store_failure(e),
    };
    if !existed && !purge {
        return segment_not_found(id, None);
    }
    if !purge {
        return HttpResponse::json(200, &json!({"segmentId": id, "deleted": true}));
    }
    // The ledger rows, within a slice of the request's time (sending the DELETE again
    // continues: it is accepted for a segment already deleted when purgeLedger=true).
    let deadline = (chrono::Utc::now().timestamp_millis() + LEDGER_PURGE_SLICE_MS)
        .min(inv.deadline_ms as i64 - 5_000);
    match ctx.ledger.purge_segment(id, deadline).await {
        Ok(p) => HttpResponse::json(
            if p.complete { 200 } else { 202 },
            &json!({"segmentId": id, "deleted": true,
                    "ledger": {"rowsDeleted": p.deleted, "complete": p.complete,
                               "note": if p.complete { Value::Null } else {
                                   json!("more rows are left: send the same DELETE again to continue") }}}),
        ),
        Err(e) => store_failure(e),
    }
}

/// `DELETE /destinations/{id}/mappings/{segmentId}[?purge=true]`.
pub async fn remove_mapping(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
    req: &HttpRequest,
) -> HttpResponse {
    let purge = match wants_purge(req, "purge") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let resp = super::destinations::remove_mapping(ctx, id, segment_id).await;
    if !purge || resp.status != 200 {
        return resp;
    }
    let m = match ctx.destinations.get_mapping(id, segment_id).await {
        Ok(Some(m)) => m,
        Ok(None) => return mapping_not_found(id, segment_id),
        Err(e) => return store_failure(e),
    };
    let d = match ctx.destinations.get_destination(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return destination_not_found(id),
        Err(e) => return store_failure(e),
    };
    if let Err(e) = queue_purge(ctx, &m, &d.account_id, false).await {
        return store_failure(e);
    }
    let mut view = mapping_view(&m, None);
    view["purge"] = purge_view(ctx, &m.destination_id, &m.segment_id, None).await;
    HttpResponse::json(202, &view)
}

/// Queues the purge of a removed mapping's audience (nothing to do without an audience).
async fn queue_purge(
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

/// `DELETE /destinations/{id}[?purge=true]`.
pub async fn delete_destination(ctx: &ExportCtx, id: &str, req: &HttpRequest) -> HttpResponse {
    let purge = match wants_purge(req, "purge") {
        Ok(p) => p,
        Err(r) => return r,
    };
    match delete_destination_inner(ctx, id, purge).await {
        Ok(r) => r,
        Err(e) => store_failure(e),
    }
}

async fn delete_destination_inner(
    ctx: &ExportCtx,
    id: &str,
    purge: bool,
) -> Result<HttpResponse, StoreError> {
    let Some(d) = ctx.destinations.get_destination(id).await? else {
        return Ok(destination_not_found(id));
    };
    if ctx.destinations.is_deleting(id).await? {
        return Ok(HttpResponse::json(202, &deleting_view(ctx, id).await?));
    }
    let live = [
        MappingStatus::Pending,
        MappingStatus::Active,
        MappingStatus::Blocked,
        MappingStatus::Failed,
    ];
    let mut purges = 0;
    for m in ctx.destinations.list_mappings(id).await? {
        let m = ctx
            .destinations
            .set_mapping_status(
                id,
                &m.segment_id,
                &live,
                MappingStatus::Removed,
                None,
                false,
            )
            .await?
            .unwrap_or(m);
        ctx.destinations
            .delete_audience_state(id, &m.segment_id)
            .await?;
        stop_job(ctx, id, &m.segment_id).await?;
        if purge && queue_purge(ctx, &m, &d.account_id, true).await? {
            purges += 1;
        }
    }
    if purges > 0 {
        ctx.destinations.mark_destination_deleting(id).await?;
        tracing::info!(destination = %id, purges, "destination deleting after its purges");
        return Ok(HttpResponse::json(202, &deleting_view(ctx, id).await?));
    }
    ctx.destinations.delete_destination_items(id).await?;
    tracing::info!(destination = %id, "destination deleted");
    Ok(HttpResponse::json(
        200,
        &json!({"destinationId": id, "deleted": true}),
    ))
}

/// Retires a mapping's unfinished non-purge job, so no later run lists or takes it.
async fn stop_job(ctx: &ExportCtx, dst: &str, seg: &str) -> Result<(), StoreError> {
    if let Some(j) = ctx.jobs.get_job(dst, seg).await?
        && j.state != JobState::Done
        && j.purpose != JobPurpose::Purge
    {
        ctx.jobs
            .retire_job(dst, seg, "the destination was deleted")
            .await?;
    }
    Ok(())
}

/// A destination being deleted: `{"destinationId","status":"deleting","mappings":[{segmentId,
/// purge}]}`.
async fn deleting_view(ctx: &ExportCtx, id: &str) -> Result<Value, StoreError> {
    let mut mappings = Vec::new();
    for m in ctx.destinations.list_mappings(id).await? {
        let purge = purge_view(ctx, &m.destination_id, &m.segment_id, None).await;
        let mut v = mapping_view(&m, None);
        v["purge"] = purge;
        mappings.push(v);
    }
    Ok(json!({"destinationId": id, "status": "deleting", "mappings": mappings}))
}

/// 409 for a change to a destination that is being deleted (its purges run).
pub async fn refuse_if_deleting(ctx: &ExportCtx, id: &str) -> Option<HttpResponse> {
    match ctx.destinations.is_deleting(id).await {
        Ok(true) => Some(HttpResponse::error(
            409,
            "destination_deleting",
            format!("destination {id} is being deleted; GET /destinations/{id} shows the progress"),
        )),
        Ok(false) => None,
        Err(e) => Some(store_failure(e)),
    }
}

/// `GET /destinations/{id}` of a destination being deleted answers the deletion's progress.
pub async fn deleting_answer(ctx: &ExportCtx, id: &str) -> Option<HttpResponse> {
    match ctx.destinations.is_deleting(id).await {
        Ok(true) => Some(match deleting_view(ctx, id).await {
            Ok(v) => HttpResponse::json(200, &v),
            Err(e) => store_failure(e),
        }),
        Ok(false) => None,
        Err(e) => Some(store_failure(e)),
    }
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
                if now_ms < p.requested_ms + settle.as_millis() as i64 {
                    continue;
                }
                let mapping = ctx.destinations.get_mapping(dst, seg).await?;
                if mapping.is_none_or(|m| m.status != MappingStatus::Removed) {
                    // Mapped again meanwhile: its backfill owns the audience now.
                    ctx.destinations.delete_purge(dst, seg).await?;
                    continue;
                }
                if let Some(j) = &job
                    && held(ctx, j).await?
                {
                    continue;
                }
                let generation = job.as_ref().map_or(1, |j| j.generation + 1);
                let g = Generation {
                    destination_id: dst,
                    segment_id: seg,
                    account_id: &p.account_id,
                    audience_id: p.audience_id,
                    shards: LEDGER_SHARDS,
                    include_removals: true,
                    purpose: JobPurpose::Purge,
                };
                if ctx
                    .jobs
                    .put_generation(&g, job.as_ref(), generation)
                    .await?
                {
                    let mut running = p.clone();
                    running.state = PurgeState::Running;
                    running.generation = Some(generation);
                    ctx.destinations.put_purge(&running).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::JobState;

    fn job(purpose: JobPurpose) -> BackfillJob {
        BackfillJob {
            destination_id: "d".into(),
            segment_id: "s".into(),
            account_id: "1".into(),
            audience_id: 72057594038053891,
            generation: 2,
            state: JobState::Running,
            shards: 16,
            include_removals: purpose == JobPurpose::Purge,
            created_at: String::new(),
            updated_at: String::new(),
            finished_at: None,
            last_error: None,
            drained: 0,
            draining: false,
            purpose,
        }
    }

    fn mapping(status: MappingStatus, audience_id: Option<i64>) -> SegmentMapping {
        SegmentMapping {
            destination_id: "d".into(),
            segment_id: "s".into(),
            status,
            audience_id,
            external_audience_id: "adsync-d-s".into(),
            audience_name: "Segment s audience".into(),
            audience_fees: Vec::new(),
            last_error: None,
            blocked_reason: None,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn a_purge_runs_only_for_a_removed_mapping_and_the_other_passes_only_for_an_active_one() {
        let aud = Some(72057594038053891);
        let cases = [
            (JobPurpose::Purge, MappingStatus::Removed, aud, true),
            (JobPurpose::Purge, MappingStatus::Active, aud, false),
            (JobPurpose::Purge, MappingStatus::Removed, Some(1), false),
            (JobPurpose::Backfill, MappingStatus::Active, aud, true),
            (JobPurpose::Refresh, MappingStatus::Active, aud, true),
            (JobPurpose::Refresh, MappingStatus::Removed, aud, false),
            (JobPurpose::Backfill, MappingStatus::Blocked, aud, false),
        ];
        for (purpose, status, audience, live) in cases {
            let m = mapping(status, audience);
            assert_eq!(
                job_is_live(&job(purpose), Some(&m)),
                live,
                "{purpose:?} job, {status:?} mapping"
            );
        }
        assert!(!job_is_live(&job(JobPurpose::Purge), None));
    }

    #[test]
    fn purge_flags_are_true_or_false_and_nothing_else() {
        let r = |q: &str| HttpRequest::new("DELETE", "/destinations/d").with_query(q);
        assert_eq!(wants_purge(&r(""), "purge").ok(), Some(false));
        assert_eq!(wants_purge(&r("purge=true"), "purge").ok(), Some(true));
        assert_eq!(wants_purge(&r("purge=false"), "purge").ok(), Some(false));
        let bad = wants_purge(&r("purge=yes"), "purge").unwrap_err();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json_body()["error"]["field"], "purge");
    }
}
