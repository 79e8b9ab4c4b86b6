//! The JSON views of segments, destinations and mappings.

use crate::export::ExportCtx;
use crate::export::errors::active_account;
use crate::export::members;
use crate::store::StoreError;
use crate::store::destinations::{Destination, MappingStatus, Segment, SegmentMapping};
use futures::StreamExt;
use serde_json::{Map, Value, json};

pub(super) fn segment_view(s: &Segment) -> Value {
    json!({
        "segmentId": s.segment_id,
        "name": s.name,
        "description": s.description,
        "dataExportControls": s.data_export_controls,
        "updatedAt": s.updated_at,
    })
}

/// A mapping as users see it. `audienceId` is serialized from the `i64` (a JSON integer, exact).
pub(in crate::export) fn mapping_view(m: &SegmentMapping, backfill: Option<Value>) -> Value {
    json!({
        "segmentId": m.segment_id,
        "status": m.status,
        "audienceId": m.audience_id,
        "externalAudienceId": m.external_audience_id,
        "audienceName": m.audience_name,
        "audienceFees": m.audience_fees,
        "lastError": m.last_error,
        "blockedReason": m.blocked_reason,
        "backfill": backfill.unwrap_or(Value::Null),
        "createdAt": m.created_at,
        "updatedAt": m.updated_at,
    })
}

/// The destination's overall status and the errors the user must see: the account's state (when
/// it is not active) and each mapping's last error or blocking reason.
pub(super) fn destination_status(
    account_problem: Option<String>,
    mappings: &[SegmentMapping],
) -> (String, Vec<Value>) {
    let mut errors = Vec::new();
    if let Some(p) = account_problem {
        errors.push(json!({"segmentId": null, "message": p}));
    }
    let live: Vec<&SegmentMapping> = mappings
        .iter()
        .filter(|m| m.status != MappingStatus::Removed)
        .collect();
    for m in &live {
        if let Some(e) = &m.last_error {
            errors.push(json!({"segmentId": m.segment_id, "message": e}));
        }
        if let Some(r) = m
            .blocked_reason
            .as_ref()
            .filter(|_| m.status == MappingStatus::Blocked)
        {
            errors.push(json!({"segmentId": m.segment_id, "message": format!("blocked: {r}")}));
        }
    }
    let status = if !errors.is_empty()
        || live
            .iter()
            .any(|m| matches!(m.status, MappingStatus::Failed | MappingStatus::Blocked))
    {
        "attention"
    } else if live.iter().any(|m| m.status == MappingStatus::Pending) {
        "pending"
    } else {
        "active"
    };
    (status.to_string(), errors)
}

pub(super) async fn account_problem(
    ctx: &ExportCtx,
    account_id: &str,
) -> Result<Option<String>, StoreError> {
    let found = ctx.accounts.get_account(account_id).await?;
    Ok(active_account(account_id, found).err().map(|e| e.message))
}

pub(super) async fn destination_view(
    ctx: &ExportCtx,
    d: &Destination,
    with_progress: bool,
) -> Result<Value, StoreError> {
    let mappings = ctx.destinations.list_mappings(&d.destination_id).await?;
    let problem = account_problem(ctx, &d.account_id).await?;
    let views = if with_progress {
        mapping_views(ctx, &mappings).await
    } else {
        mappings.iter().map(|m| mapping_view(m, None)).collect()
    };
    let (status, errors) = destination_status(problem, &mappings);
    Ok(destination_json(d, status, errors, views))
}

/// The views of `mappings`, with backfill progress for those with an audience (read a few at a
/// time; a progress that cannot be read is left out, not an error).
pub(super) async fn mapping_views(ctx: &ExportCtx, mappings: &[SegmentMapping]) -> Vec<Value> {
    // Owned keys: a closure over borrowed items would make the handler's future not `Send`.
    let keys: Vec<Option<(String, String)>> = mappings
        .iter()
        .map(|m| {
            m.audience_id
                .map(|_| (m.destination_id.clone(), m.segment_id.clone()))
        })
        .collect();
    let progress: Vec<Option<(Value, Map<String, Value>)>> = futures::stream::iter(keys)
        .map(|k| async move {
            let (dst, seg) = k?;
            match members::backfill_progress(ctx, &dst, &seg).await {
                Ok(v) => {
                    let extra = crate::export::audience_view::extras(ctx, &dst, &seg, &v).await;
                    Some((v, extra))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backfill progress unavailable");
                    None
                }
            }
        })
        .buffered(8)
        .collect()
        .await;
    mappings
        .iter()
        .zip(progress)
        .map(|(m, p)| match p {
            Some((p, extra)) => {
                let mut v = mapping_view(m, Some(p));
                if let Value::Object(o) = &mut v {
                    o.extend(extra);
                }
                v
            }
            None => mapping_view(m, None),
        })
        .collect()
}

pub(super) fn destination_json(
    d: &Destination,
    status: String,
    errors: Vec<Value>,
    views: Vec<Value>,
) -> Value {
    json!({
        "destinationId": d.destination_id,
        "name": d.name,
        "description": d.description,
        "accountId": d.account_id,
        "dataExportLabels": d.data_export_labels,
        "dataSourceCountry": d.data_source_country,
        "ttlSeconds": d.ttl_seconds,
        "createdAt": d.created_at,
        "status": status,
        "errors": errors,
        "mappings": views,
    })
}

/// `mappings` (all of one destination) as stored now, in their order, with backfill progress
/// once they have an audience: one consistent query for the lot.
pub(super) async fn current_views(
    ctx: &ExportCtx,
    mappings: &[SegmentMapping],
) -> Result<Vec<Value>, StoreError> {
    let Some(first) = mappings.first() else {
        return Ok(Vec::new());
    };
    let stored = ctx
        .destinations
        .list_mappings(&first.destination_id)
        .await?;
    let now: Vec<SegmentMapping> = mappings
        .iter()
        .map(|m| {
            stored
                .iter()
                .find(|s| s.segment_id == m.segment_id)
                .unwrap_or(m)
                .clone()
        })
        .collect();
    Ok(mapping_views(ctx, &now).await)
}
