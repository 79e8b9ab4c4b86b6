//! `PUT /segments/{segmentId}`, `GET /segments/{segmentId}`, and the export-control
//! re-evaluation of mappings when labels or controls change.

use super::requests::{SegmentBody, body};
use super::views::segment_view;
use crate::domain::export_controls::{ExportControl, ExportLabel, conflicts, describe_conflicts};
use crate::domain::segment::check_segment_id;
use crate::export::ExportCtx;
use crate::export::errors::{invalid, segment_not_found, store_failure};
use crate::export::members;
use crate::http::error::respond;
use crate::http::{ApiResult, HttpRequest, HttpResponse};
use crate::store::StoreError;
use crate::store::destinations::{
    Destination, MappingStatus, Segment, SegmentMapping, now_rfc3339,
};
use serde_json::{Value, json};

/// `PUT /segments/{segmentId}`: registers or replaces a segment. Changed controls are checked
/// against every destination the segment is mapped to at once: a new conflict blocks the mapping
/// (deliveries stop), a resolved one unblocks it (and re-sends its members through a backfill).
pub async fn put_segment(ctx: &ExportCtx, segment_id: &str, req: &HttpRequest) -> HttpResponse {
    respond(put(ctx, segment_id, req).await)
}

async fn put(ctx: &ExportCtx, segment_id: &str, req: &HttpRequest) -> ApiResult<HttpResponse> {
    if let Err(why) = check_segment_id(segment_id) {
        return Err(invalid(
            "segmentId",
            format!("segmentId (in the path) {why}"),
        ));
    }
    let fields = body::<SegmentBody>(req)?.check(segment_id)?;
    let seg = Segment {
        segment_id: segment_id.to_string(),
        name: fields.name,
        description: fields.description,
        data_export_controls: fields.controls,
        updated_at: now_rfc3339(),
    };
    let previous = ctx
        .destinations
        .put_segment(&seg)
        .await
        .map_err(store_failure)?;
    let mut changed = Vec::new();
    let controls_changed = previous
        .as_ref()
        .is_some_and(|p| p.data_export_controls != seg.data_export_controls);
    if controls_changed {
        changed = reevaluate_segment(ctx, &seg).await.map_err(store_failure)?;
    }
    let mut view = segment_view(&seg);
    view["changedMappings"] = Value::Array(
        changed
            .iter()
            .map(|m| json!({"destinationId": m.destination_id, "status": m.status, "blockedReason": m.blocked_reason}))
            .collect(),
    );
    Ok(HttpResponse::json(
        if previous.is_some() { 200 } else { 201 },
        &view,
    ))
}

/// `GET /segments/{segmentId}`.
pub async fn get_segment(ctx: &ExportCtx, segment_id: &str) -> HttpResponse {
    respond(match ctx.destinations.get_segment(segment_id).await {
        Ok(Some(s)) => Ok(HttpResponse::json(200, &segment_view(&s))),
        Ok(None) => Err(segment_not_found(segment_id, None)),
        Err(e) => Err(store_failure(e)),
    })
}

/// Applies a segment's (new) controls to each of its mappings.
pub(super) async fn reevaluate_segment(
    ctx: &ExportCtx,
    seg: &Segment,
) -> Result<Vec<SegmentMapping>, StoreError> {
    let mut changed = Vec::new();
    for m in ctx
        .destinations
        .mappings_for_segment(&seg.segment_id)
        .await?
    {
        let Some(d) = ctx.destinations.get_destination(&m.destination_id).await? else {
            continue;
        };
        if let Some(new) =
            reevaluate_mapping(ctx, &d.data_export_labels, &seg.data_export_controls, &m).await?
        {
            changed.push(new);
        }
    }
    Ok(changed)
}

/// Blocks a mapping whose labels and controls now conflict, or unblocks one that no longer
/// conflicts (back to `active` with a fresh backfill when its audience exists, else `pending`).
/// Returns the mapping when its status changed.
pub(super) async fn reevaluate_mapping(
    ctx: &ExportCtx,
    labels: &[ExportLabel],
    controls: &[ExportControl],
    m: &SegmentMapping,
) -> Result<Option<SegmentMapping>, StoreError> {
    if m.status == MappingStatus::Removed {
        return Ok(None);
    }
    let found = conflicts(labels, controls);
    let store = &ctx.destinations;
    if !found.is_empty() {
        let reason = describe_conflicts(&found);
        if m.status == MappingStatus::Blocked
            && m.blocked_reason.as_deref() == Some(reason.as_str())
        {
            return Ok(None);
        }
        let from = [
            MappingStatus::Pending,
            MappingStatus::Active,
            MappingStatus::Failed,
            MappingStatus::Blocked,
        ];
        let new = store
            .set_mapping_status(
                &m.destination_id,
                &m.segment_id,
                &from,
                MappingStatus::Blocked,
                Some(&reason),
                false,
            )
            .await?;
        if new.is_some() {
            tracing::info!(destination = %m.destination_id, segment = %m.segment_id, "mapping blocked by export controls");
        }
        return Ok(new);
    }
    if m.status != MappingStatus::Blocked {
        return Ok(None);
    }
    let target = if m.audience_id.is_some() {
        MappingStatus::Active
    } else {
        MappingStatus::Pending
    };
    let new = store
        .set_mapping_status(
            &m.destination_id,
            &m.segment_id,
            &[MappingStatus::Blocked],
            target,
            None,
            false,
        )
        .await?;
    if let Some(n) = &new
        && n.status == MappingStatus::Active
    {
        // Deltas were not delivered while blocked: send the segment again from the ledger,
        // starting over a scan that is still running (it may have passed changed rows).
        members::restart_backfill(ctx, n).await?;
    }
    Ok(new)
}

pub(super) async fn reevaluate_destination(
    ctx: &ExportCtx,
    d: &Destination,
) -> Result<(), StoreError> {
    for m in ctx.destinations.list_mappings(&d.destination_id).await? {
        if m.status == MappingStatus::Removed {
            continue;
        }
        let controls = match ctx.destinations.get_segment(&m.segment_id).await? {
            Some(s) => s.data_export_controls,
            None => Vec::new(),
        };
        reevaluate_mapping(ctx, &d.data_export_labels, &controls, &m).await?;
    }
    Ok(())
}
