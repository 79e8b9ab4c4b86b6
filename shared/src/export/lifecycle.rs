//! Lifecycle routes: listing and deleting segments, deleting destinations, and purging an
//! audience's members at Amazon (`?purge=true`).
//!
//! - `GET /segments?limit=&nextToken=`, `DELETE /segments/{id}` (409 naming the destinations
//!   while it is mapped; `?purgeLedger=true` also deletes its ledger rows, within the request's
//!   time, continued by the same DELETE again).
//! - `DELETE /destinations/{id}`: every mapping turns `removed` (no deltas, refreshes, size reads
//!   or settings), their running jobs are retired (a run that already holds one finishes its
//!   current shards; no later run lists it), the destination leaves the list and is deleted.
//! - `?purge=true` (on `DELETE /destinations/{id}` and `DELETE …/mappings/{segmentId}`): 202;
//!   a purge is queued per mapping with an audience and run by the schedule ([`super::purge`]).
//!   A destination being purged shows `deleting` with each mapping's `purge` progress, and is
//!   deleted once every purge is done (then 404); meanwhile changes to it answer 409.

use super::ExportCtx;
use super::destinations::{find_destination, mapping_view, remove};
use super::errors::{
    destination_deleting, invalid, mapping_not_found, segment_not_found, store_failure,
};
use super::purge::{purge_view, queue_purge};
use crate::http::error::respond;
use crate::http::{ApiError, ApiResult, HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::destinations::{Destination, MappingStatus};
use crate::store::jobs::{JobPurpose, JobState};
use serde_json::{Value, json};

/// The longest a `DELETE /segments/{id}?purgeLedger=true` spends deleting rows.
const LEDGER_PURGE_SLICE_MS: i64 = 15_000;

fn wants_purge(req: &HttpRequest, name: &str) -> ApiResult<bool> {
    match req.query().get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(name, format!("{name} must be true or false"))),
    }
}

/// `GET /segments?limit=&nextToken=`.
pub async fn list_segments(ctx: &ExportCtx, req: &HttpRequest) -> HttpResponse {
    respond(segments_page(ctx, req).await)
}

async fn segments_page(ctx: &ExportCtx, req: &HttpRequest) -> ApiResult<HttpResponse> {
    let q = req.query();
    let limit = match q.get("limit").map(|l| l.parse::<i32>()) {
        None => 50,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            return Err(invalid("limit", "limit must be an integer from 1 to 100"));
        }
    };
    let p = ctx
        .destinations
        .list_segments(limit, q.get("nextToken").map(String::as_str))
        .await
        .map_err(store_failure)?;
    Ok(HttpResponse::json(
        200,
        &json!({"segments": p.segments, "nextToken": p.next_token}),
    ))
}

/// `DELETE /segments/{id}[?purgeLedger=true]`.
pub async fn delete_segment(
    ctx: &ExportCtx,
    id: &str,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    respond(segment_delete(ctx, id, req, inv).await)
}

async fn segment_delete(
    ctx: &ExportCtx,
    id: &str,
    req: &HttpRequest,
    inv: &Invocation,
) -> ApiResult<HttpResponse> {
    let purge = wants_purge(req, "purgeLedger")?;
    let dests = mapped_to(ctx, id).await.map_err(store_failure)?;
    if !dests.is_empty() {
        return Err(ApiError::conflict(
            "segment_mapped",
            format!(
                "segment {id} is mapped to destination(s) {}; remove those mappings first \
                 (DELETE /destinations/{{id}}/mappings/{id})",
                dests.join(", ")
            ),
        ));
    }
    let existed = ctx
        .destinations
        .delete_segment(id)
        .await
        .map_err(store_failure)?;
    if !existed && !purge {
        return Err(segment_not_found(id, None));
    }
    if !purge {
        return Ok(HttpResponse::json(
            200,
            &json!({"segmentId": id, "deleted": true}),
        ));
    }
    // The ledger rows, within a slice of the request's time (sending the DELETE again
    // continues: it is accepted for a segment already deleted when purgeLedger=true).
    let deadline = (chrono::Utc::now().timestamp_millis() + LEDGER_PURGE_SLICE_MS)
        .min(inv.deadline_ms as i64 - 5_000);
    let p = ctx
        .ledger
        .purge_segment(id, deadline)
        .await
        .map_err(store_failure)?;
    Ok(HttpResponse::json(
        if p.complete { 200 } else { 202 },
        &json!({"segmentId": id, "deleted": true,
                "ledger": {"rowsDeleted": p.deleted, "complete": p.complete,
                           "note": if p.complete { Value::Null } else {
                               json!("more rows are left: send the same DELETE again to continue") }}}),
    ))
}

/// The destinations segment `id` is mapped to (not `removed`).
async fn mapped_to(ctx: &ExportCtx, id: &str) -> Result<Vec<String>, StoreError> {
    let mapped = ctx.destinations.mappings_for_segment(id).await?;
    let mut dests: Vec<String> = Vec::new();
    for m in mapped.iter().filter(|m| m.status != MappingStatus::Removed) {
        // The index lags: confirm with a consistent read.
        if let Some(cur) = ctx.destinations.get_mapping(&m.destination_id, id).await?
            && cur.status != MappingStatus::Removed
        {
            dests.push(cur.destination_id);
        }
    }
    Ok(dests)
}

/// `DELETE /destinations/{id}/mappings/{segmentId}[?purge=true]`.
pub async fn remove_mapping(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
    req: &HttpRequest,
) -> HttpResponse {
    respond(mapping_remove(ctx, id, segment_id, req).await)
}

async fn mapping_remove(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
    req: &HttpRequest,
) -> ApiResult<HttpResponse> {
    let purge = wants_purge(req, "purge")?;
    let removed = remove(ctx, id, segment_id).await?;
    if !purge {
        return Ok(HttpResponse::json(200, &mapping_view(&removed, None)));
    }
    let m = ctx
        .destinations
        .get_mapping(id, segment_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| mapping_not_found(id, segment_id))?;
    let d = find_destination(ctx, id).await?;
    queue_purge(ctx, &m, &d.account_id, false)
        .await
        .map_err(store_failure)?;
    let mut view = mapping_view(&m, None);
    view["purge"] = purge_view(ctx, &m.destination_id, &m.segment_id, None).await;
    Ok(HttpResponse::json(202, &view))
}

/// `DELETE /destinations/{id}[?purge=true]`.
pub async fn delete_destination(ctx: &ExportCtx, id: &str, req: &HttpRequest) -> HttpResponse {
    respond(destination_delete(ctx, id, req).await)
}

async fn destination_delete(
    ctx: &ExportCtx,
    id: &str,
    req: &HttpRequest,
) -> ApiResult<HttpResponse> {
    let purge = wants_purge(req, "purge")?;
    let d = find_destination(ctx, id).await?;
    delete_found(ctx, &d, purge).await.map_err(store_failure)
}

async fn delete_found(
    ctx: &ExportCtx,
    d: &Destination,
    purge: bool,
) -> Result<HttpResponse, StoreError> {
    let id = d.destination_id.as_str();
    if ctx.destinations.is_deleting(id).await? {
        return Ok(HttpResponse::json(202, &deleting_view(ctx, id).await?));
    }
    let purges = retire_mappings(ctx, d, purge).await?;
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

/// Turns every mapping of `d` `removed`, drops its upkeep, retires its job and, with `purge`,
/// queues its purge: the number of purges queued.
async fn retire_mappings(ctx: &ExportCtx, d: &Destination, purge: bool) -> Result<u32, StoreError> {
    let id = d.destination_id.as_str();
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
    Ok(purges)
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
pub async fn refuse_if_deleting(ctx: &ExportCtx, id: &str) -> ApiResult<()> {
    match ctx.destinations.is_deleting(id).await {
        Ok(true) => Err(destination_deleting(id)),
        Ok(false) => Ok(()),
        Err(e) => Err(store_failure(e)),
    }
}

/// `GET /destinations/{id}` of a destination being deleted answers the deletion's progress.
pub async fn deleting_answer(ctx: &ExportCtx, id: &str) -> ApiResult<Option<HttpResponse>> {
    if !ctx
        .destinations
        .is_deleting(id)
        .await
        .map_err(store_failure)?
    {
        return Ok(None);
    }
    let v = deleting_view(ctx, id).await.map_err(store_failure)?;
    Ok(Some(HttpResponse::json(200, &v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::purge::job_is_live;
    use crate::store::destinations::SegmentMapping;
    use crate::store::jobs::BackfillJob;

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
        let bad: HttpResponse = wants_purge(&r("purge=yes"), "purge").unwrap_err().into();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json_body()["error"]["field"], "purge");
    }
}
