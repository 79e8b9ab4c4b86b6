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
use super::destinations::{
    destination_not_found, invalid, mapping_not_found, mapping_view, segment_not_found,
    store_failure,
};
use super::purge::{purge_view, queue_purge};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::destinations::MappingStatus;
use crate::store::jobs::{JobPurpose, JobState};
use serde_json::{Value, json};

/// The longest a `DELETE /segments/{id}?purgeLedger=true` spends deleting rows.
const LEDGER_PURGE_SLICE_MS: i64 = 15_000;

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
        let bad = wants_purge(&r("purge=yes"), "purge").unwrap_err();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json_body()["error"]["field"], "purge");
    }
}
