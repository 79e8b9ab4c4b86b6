//! `POST /destinations/{id}/mappings` and `DELETE /destinations/{id}/mappings/{segmentId}`:
//! new, adopted and revived mappings.

use super::fees::apply_fees;
use super::inline::work_inline;
use super::mapping_requests::{AddMappingsBody, MappingRequest};
use super::requests::body;
use super::routes::find_destination;
use super::views::{current_views, mapping_view};
use crate::amazon::{Audience, AudienceFee};
use crate::domain::audience_names::{audience_name, external_audience_id};
use crate::domain::export_controls::{ExportLabel, conflicts, describe_conflicts};
use crate::export::ExportCtx;
use crate::export::errors::{
    active_account, invalid, mapping_not_found, segment_not_found, store_failure,
};
use crate::export::members;
use crate::http::error::respond;
use crate::http::{ApiError, ApiResult, HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::destinations::{
    Destination, MappingStatus, Segment, SegmentMapping, now_rfc3339,
};
use futures::StreamExt;
use serde_json::json;

pub(super) fn new_mapping(
    destination_id: &str,
    seg: &Segment,
    fees: Vec<AudienceFee>,
    now: &str,
) -> SegmentMapping {
    SegmentMapping {
        destination_id: destination_id.to_string(),
        segment_id: seg.segment_id.clone(),
        status: MappingStatus::Pending,
        audience_id: None,
        external_audience_id: external_audience_id(destination_id, &seg.segment_id),
        audience_name: audience_name(&seg.name, &seg.segment_id),
        audience_fees: fees,
        last_error: None,
        blocked_reason: None,
        created_at: now.to_string(),
        updated_at: now.to_string(),
    }
}

/// 409 `export_control_conflict` when the destination's labels and the segment's controls
/// conflict: names the label and the control.
pub(super) fn check_conflict(
    labels: &[ExportLabel],
    r: &MappingRequest,
    seg: &Segment,
) -> ApiResult<()> {
    let found = conflicts(labels, &seg.data_export_controls);
    if found.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(
        "export_control_conflict",
        format!(
            "segment {} cannot be mapped to this destination: {}",
            seg.segment_id,
            describe_conflicts(&found)
        ),
    )
    .at(r.segment_field()))
}

/// [`check_conflict`] for every mapping, in order.
pub(super) fn check_conflicts(
    labels: &[ExportLabel],
    reqs: &[MappingRequest],
    segments: &[Segment],
) -> ApiResult<()> {
    for (r, seg) in reqs.iter().zip(segments) {
        check_conflict(labels, r, seg)?;
    }
    Ok(())
}

/// The account `account_id`, which must be usable.
pub(super) async fn load_account(
    ctx: &ExportCtx,
    account_id: &str,
) -> ApiResult<IntegratedAccount> {
    let found = ctx
        .accounts
        .get_account(account_id)
        .await
        .map_err(store_failure)?;
    active_account(account_id, found)
}

/// The segments of the requests, in their order (404 naming the first one missing).
pub(super) async fn load_segments(
    ctx: &ExportCtx,
    reqs: &[MappingRequest],
) -> ApiResult<Vec<Segment>> {
    let found: Vec<Result<Option<Segment>, StoreError>> = futures::stream::iter(
        reqs.iter()
            .map(|r| r.segment_id.clone())
            .collect::<Vec<_>>(),
    )
    .map(|id| async move { ctx.destinations.get_segment(&id).await })
    .buffered(8)
    .collect()
    .await;
    let mut out = Vec::with_capacity(reqs.len());
    for (r, f) in reqs.iter().zip(found) {
        match f.map_err(store_failure)? {
            Some(s) => out.push(s),
            None => return Err(segment_not_found(&r.segment_id, Some(&r.segment_field()))),
        }
    }
    Ok(out)
}

/// `POST /destinations/{id}/mappings`: `{"segmentId","audienceFees"?}` or
/// `{"mappings":[{"segmentId","audienceFees"?}…]}`. New mappings are queued like those of a new
/// destination, and the request's slice works them the same way (202 with each mapping's state
/// by then). A `removed` or `failed` mapping is revived: with its audience it turns `active` again
/// and its backfill re-sends the segment; without, it is queued again.
pub async fn add_mappings(
    ctx: &ExportCtx,
    id: &str,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    respond(add(ctx, id, req, inv).await)
}

async fn add(
    ctx: &ExportCtx,
    id: &str,
    req: &HttpRequest,
    inv: &Invocation,
) -> ApiResult<HttpResponse> {
    let body: AddMappingsBody = body(req)?;
    let d = find_destination(ctx, id).await?;
    let account = load_account(ctx, &d.account_id).await?;
    let reqs = body.check(&account.currency)?;
    let segments = load_segments(ctx, &reqs).await?;
    let existing = current_mappings(ctx, &d, &reqs, &segments).await?;
    let now = now_rfc3339();
    let adopting = std::time::Instant::now();
    let adopted = adopt_all(ctx, &account, id, &reqs).await?;
    let spent = adopting.elapsed();
    let mut out = Vec::new();
    for (((r, seg), current), a) in reqs.iter().zip(&segments).zip(existing).zip(&adopted) {
        out.push(match current {
            None => add_one(ctx, &d, r, seg, a.as_ref(), &now).await?,
            Some(old) => revive_mapping(ctx, &d, &account, &old, r.fees.clone()).await?,
        });
    }
    work_inline(&crate::export::adopt::after_adoption(ctx, spent), inv, &out).await;
    let views = match current_views(ctx, &out).await {
        Ok(v) => v,
        Err(e) => {
            // The mappings are stored: a 503 would only invite a retry answered 409.
            tracing::warn!(error = %e, "mappings added; answering with them as stored");
            out.iter().map(|m| mapping_view(m, None)).collect()
        }
    };
    Ok(HttpResponse::json(
        202,
        &json!({"destinationId": id, "mappings": views}),
    ))
}

/// Each request's current mapping (`None` for a new one), checked in order: no export-control
/// conflict, and not mapped already (a `removed` or `failed` mapping may be revived, unless the
/// request adopts an audience).
async fn current_mappings(
    ctx: &ExportCtx,
    d: &Destination,
    reqs: &[MappingRequest],
    segments: &[Segment],
) -> ApiResult<Vec<Option<SegmentMapping>>> {
    let id = d.destination_id.as_str();
    let mut existing = Vec::with_capacity(reqs.len());
    for (r, seg) in reqs.iter().zip(segments) {
        check_conflict(&d.data_export_labels, r, seg)?;
        let current = ctx
            .destinations
            .get_mapping(id, &seg.segment_id)
            .await
            .map_err(store_failure)?;
        if let Some(m) = &current
            && (r.audience_id.is_some()
                || !matches!(m.status, MappingStatus::Removed | MappingStatus::Failed))
        {
            return Err(ApiError::conflict(
                "already_mapped",
                format!(
                    "segment {} is already mapped to destination {id} (status {})",
                    seg.segment_id,
                    m.status.as_str()
                ),
            )
            .at(r.segment_field()));
        }
        existing.push(current);
    }
    Ok(existing)
}

/// Stores a new mapping (`pending`, or `active` on an adopted audience, whose upkeep and backfill
/// then start).
async fn add_one(
    ctx: &ExportCtx,
    d: &Destination,
    r: &MappingRequest,
    seg: &Segment,
    adopted: Option<&Audience>,
    now: &str,
) -> ApiResult<SegmentMapping> {
    let m = new_mapping(
        &d.destination_id,
        seg,
        r.fees.clone().unwrap_or_default(),
        now,
    );
    let m = adopted.map_or(m.clone(), |a| crate::export::adopt::adopted(m, a));
    if !ctx
        .destinations
        .add_mapping(&m)
        .await
        .map_err(store_failure)?
    {
        return Err(ApiError::conflict(
            "already_mapped",
            format!("segment {} was mapped concurrently", seg.segment_id),
        ));
    }
    if let Some(a) = adopted {
        crate::export::adopt::start(ctx, d, &m, a)
            .await
            .map_err(store_failure)?;
    }
    Ok(m)
}

/// The audiences the requests adopt, in their order (`None` for audiences to create), each read
/// at Amazon and claimed for its mapping (`crate::export::adopt`).
pub(super) async fn adopt_all(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    destination_id: &str,
    reqs: &[MappingRequest],
) -> ApiResult<Vec<Option<Audience>>> {
    let wanted = reqs.iter().filter(|r| r.audience_id.is_some()).count();
    if wanted > crate::export::adopt::MAX_ADOPTIONS_PER_REQUEST {
        return Err(invalid(
            "mappings",
            format!(
                "at most {} mappings with audienceId per request (Amazon reads one audience per second)",
                crate::export::adopt::MAX_ADOPTIONS_PER_REQUEST
            ),
        ));
    }
    let mut out = Vec::with_capacity(reqs.len());
    let until = chrono::Utc::now().timestamp_millis() + crate::export::adopt::ADOPTION_BUDGET_MS;
    for r in reqs {
        out.push(match r.audience_id {
            Some(aid) => {
                let dot = r.dot();
                Some(
                    crate::export::adopt::check(
                        ctx,
                        account,
                        aid,
                        &format!("{dot}audienceId"),
                        (destination_id, &r.segment_id),
                        until,
                    )
                    .await?,
                )
            }
            None => None,
        });
    }
    Ok(out)
}

/// Brings a removed or failed mapping back.
pub(super) async fn revive_mapping(
    ctx: &ExportCtx,
    d: &Destination,
    account: &IntegratedAccount,
    old: &SegmentMapping,
    fees: Option<Vec<AudienceFee>>,
) -> ApiResult<SegmentMapping> {
    let from = [MappingStatus::Removed, MappingStatus::Failed];
    if let Some(f) = &fees
        && *f != old.audience_fees
    {
        if old.audience_id.is_some() {
            apply_fees(ctx, d, account, old, f).await?;
        } else {
            ctx.destinations
                .set_mapping_fees(&d.destination_id, &old.segment_id, f)
                .await
                .map_err(store_failure)?;
        }
    }
    let target = if old.audience_id.is_some() {
        MappingStatus::Active
    } else {
        MappingStatus::Pending
    };
    let m = ctx
        .destinations
        .set_mapping_status(
            &d.destination_id,
            &old.segment_id,
            &from,
            target,
            None,
            true,
        )
        .await
        .map_err(store_failure)?
        .ok_or_else(|| {
            ApiError::conflict(
                "already_mapped",
                format!("segment {} changed concurrently; try again", old.segment_id),
            )
        })?;
    if m.status == MappingStatus::Active {
        members::restart_backfill(ctx, &m)
            .await
            .map_err(store_failure)?;
    }
    Ok(m)
}

/// `DELETE /destinations/{id}/mappings/{segmentId}`: the mapping turns `removed` at once, which
/// stops its deliveries (deltas and backfill only serve `active` mappings). The audience stays at
/// Amazon (the Data Provider API cannot delete audiences); its members age out with its `ttl`.
pub async fn remove_mapping(ctx: &ExportCtx, id: &str, segment_id: &str) -> HttpResponse {
    respond(
        remove(ctx, id, segment_id)
            .await
            .map(|m| HttpResponse::json(200, &mapping_view(&m, None))),
    )
}

/// [`remove_mapping`]: the mapping as it stands once removed.
pub(in crate::export) async fn remove(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
) -> ApiResult<SegmentMapping> {
    let from = [
        MappingStatus::Pending,
        MappingStatus::Active,
        MappingStatus::Blocked,
        MappingStatus::Failed,
    ];
    find_destination(ctx, id).await?;
    let store = &ctx.destinations;
    let removed = store
        .set_mapping_status(id, segment_id, &from, MappingStatus::Removed, None, false)
        .await
        .map_err(store_failure)?;
    if let Some(m) = removed {
        tracing::info!(destination = %id, segment = %segment_id, "mapping removed");
        return Ok(m);
    }
    store
        .get_mapping(id, segment_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| mapping_not_found(id, segment_id))
}
