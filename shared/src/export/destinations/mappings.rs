//! `POST /destinations/{id}/mappings` and `DELETE /destinations/{id}/mappings/{segmentId}`: new, adopted and revived mappings.

use super::fees::apply_fees;
use super::inline::work_inline;
use super::requests::MappingRequest;
use super::requests::body_object;
use super::requests::parse_mapping_object;
use super::requests::parse_mapping_requests;
use super::views::current_views;
use super::views::mapping_view;
use crate::amazon::AudienceFee;
use crate::domain::audience_names::{audience_name, external_audience_id};
use crate::domain::export_controls::{ExportControl, ExportLabel, conflicts, describe_conflicts};
use crate::export::ExportCtx;
use crate::export::errors::destination_not_found;
use crate::export::errors::invalid;
use crate::export::errors::mapping_not_found;
use crate::export::errors::segment_not_found;
use crate::export::errors::store_failure;
use crate::export::members;
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::accounts::{IntegratedAccount, require_active};
use crate::store::destinations::{
    Destination, MappingStatus, Segment, SegmentMapping, now_rfc3339,
};
use futures::StreamExt;
use serde_json::{Map, Value, json};

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

/// 409 for the first conflicting mapping: names the label and the control.
pub(super) fn conflict_response(
    field: &str,
    segment_id: &str,
    found: &[(ExportLabel, ExportControl)],
) -> HttpResponse {
    HttpResponse::field_error(
        409,
        "export_control_conflict",
        field,
        format!(
            "segment {segment_id} cannot be mapped to this destination: {}",
            describe_conflicts(found)
        ),
    )
}

pub(in crate::export) async fn load_account(
    ctx: &ExportCtx,
    account_id: &str,
) -> Result<IntegratedAccount, HttpResponse> {
    let found = ctx
        .accounts
        .get_account(account_id)
        .await
        .map_err(store_failure)?;
    require_active(account_id, found)
}

pub(super) async fn load_segments(
    ctx: &ExportCtx,
    reqs: &[MappingRequest],
) -> Result<Vec<Segment>, HttpResponse> {
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
            None => {
                let field = if r.field.is_empty() {
                    "segmentId".to_string()
                } else {
                    format!("{}.segmentId", r.field)
                };
                return Err(segment_not_found(&r.segment_id, Some(&field)));
            }
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
    let obj = match body_object(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    match add_mappings_inner(ctx, id, &obj, inv).await {
        Ok(r) | Err(r) => r,
    }
}

pub(super) async fn add_mappings_inner(
    ctx: &ExportCtx,
    id: &str,
    obj: &Map<String, Value>,
    inv: &Invocation,
) -> Result<HttpResponse, HttpResponse> {
    let d = match ctx
        .destinations
        .get_destination(id)
        .await
        .map_err(store_failure)?
    {
        Some(d) => d,
        None => return Err(destination_not_found(id)),
    };
    let account = load_account(ctx, &d.account_id).await?;
    let reqs = if let Some(list) = obj.get("mappings") {
        if let Some(k) = obj.keys().find(|k| k.as_str() != "mappings") {
            return Err(invalid(
                k,
                format!("unknown field {k} (give either mappings or one segmentId)"),
            ));
        }
        parse_mapping_requests(list, "mappings", &account.currency)?
    } else {
        vec![parse_mapping_object(obj, "", &account.currency)?]
    };
    if reqs.is_empty() {
        return Err(invalid(
            "mappings",
            "mappings must list at least one segment",
        ));
    }
    let segments = load_segments(ctx, &reqs).await?;
    let mut existing = Vec::with_capacity(reqs.len());
    for (r, seg) in reqs.iter().zip(&segments) {
        let sf = if r.field.is_empty() {
            "segmentId".to_string()
        } else {
            format!("{}.segmentId", r.field)
        };
        let found = conflicts(&d.data_export_labels, &seg.data_export_controls);
        if !found.is_empty() {
            return Err(conflict_response(&sf, &seg.segment_id, &found));
        }
        let current = ctx
            .destinations
            .get_mapping(id, &seg.segment_id)
            .await
            .map_err(store_failure)?;
        if let Some(m) = &current
            && (r.audience_id.is_some()
                || !matches!(m.status, MappingStatus::Removed | MappingStatus::Failed))
        {
            return Err(HttpResponse::field_error(
                409,
                "already_mapped",
                &sf,
                format!(
                    "segment {} is already mapped to destination {id} (status {})",
                    seg.segment_id,
                    m.status.as_str()
                ),
            ));
        }
        existing.push(current);
    }
    let now = now_rfc3339();
    let adopting = std::time::Instant::now();
    let adopted = adopt_all(ctx, &account, id, &reqs).await?;
    let spent = adopting.elapsed();
    let mut out = Vec::new();
    for (((r, seg), current), a) in reqs.iter().zip(&segments).zip(existing).zip(&adopted) {
        let m = match current {
            None => {
                let m = new_mapping(id, seg, r.fees.clone().unwrap_or_default(), &now);
                let m = a
                    .as_ref()
                    .map_or(m.clone(), |a| crate::export::adopt::adopted(m, a));
                if !ctx
                    .destinations
                    .add_mapping(&m)
                    .await
                    .map_err(store_failure)?
                {
                    return Err(HttpResponse::error(
                        409,
                        "already_mapped",
                        format!("segment {} was mapped concurrently", seg.segment_id),
                    ));
                }
                if let Some(a) = a {
                    crate::export::adopt::start(ctx, &d, &m, a)
                        .await
                        .map_err(store_failure)?;
                }
                m
            }
            Some(old) => revive_mapping(ctx, &d, &account, &old, r.fees.clone()).await?,
        };
        out.push(m);
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

/// The audiences the requests adopt, in their order (`None` for audiences to create), each read
/// at Amazon and claimed for its mapping (`crate::export::adopt`).
pub(super) async fn adopt_all(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    destination_id: &str,
    reqs: &[MappingRequest],
) -> Result<Vec<Option<crate::amazon::Audience>>, HttpResponse> {
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
                let dot = if r.field.is_empty() {
                    String::new()
                } else {
                    format!("{}.", r.field)
                };
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
) -> Result<SegmentMapping, HttpResponse> {
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
            HttpResponse::error(
                409,
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
    let from = [
        MappingStatus::Pending,
        MappingStatus::Active,
        MappingStatus::Blocked,
        MappingStatus::Failed,
    ];
    match ctx.destinations.get_destination(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return destination_not_found(id),
        Err(e) => return store_failure(e),
    }
    match ctx
        .destinations
        .set_mapping_status(id, segment_id, &from, MappingStatus::Removed, None, false)
        .await
    {
        Ok(Some(m)) => {
            tracing::info!(destination = %id, segment = %segment_id, "mapping removed");
            HttpResponse::json(200, &mapping_view(&m, None))
        }
        Ok(None) => match ctx.destinations.get_mapping(id, segment_id).await {
            Ok(Some(m)) => HttpResponse::json(200, &mapping_view(&m, None)),
            Ok(None) => mapping_not_found(id, segment_id),
            Err(e) => store_failure(e),
        },
        Err(e) => store_failure(e),
    }
}
