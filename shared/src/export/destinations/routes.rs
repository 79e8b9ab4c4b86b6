//! `POST /destinations`, `GET /destinations`, `GET /destinations/{id}`, `PATCH /destinations/{id}`.

use super::inline::work_inline;
use super::mapping_requests::{MappingRequest, parse_mapping_requests};
use super::mappings::{adopt_all, check_conflicts, load_account, load_segments, new_mapping};
use super::requests::{NewDestinationBody, PatchBody, body, body_object, from_object};
use super::segments::reevaluate_destination;
use super::views::{destination_json, destination_status, destination_view, mapping_view};
use crate::amazon::Audience;
use crate::export::ExportCtx;
use crate::export::errors::{destination_not_found, invalid, store_failure};
use crate::http::error::respond;
use crate::http::{ApiResult, HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::destinations::{Destination, Segment, SegmentMapping, now_rfc3339};
use futures::StreamExt;
use serde_json::{Value, json};

/// The 202's note, by whether the request did inline work.
const NOTE_QUEUED: &str = "audiences are created at Amazon's pace of one per second by the scheduled \
     backfill task; GET /destinations/{id} shows each mapping turn active with its audience id";

const NOTE_INLINE: &str = "this request created the audiences its time allowed (Amazon takes one per \
     second) and started their backfills; the scheduled backfill task creates the rest and \
     finishes every backfill from its checkpoint; GET /destinations/{id} shows the progress";

/// `POST /destinations`: stores the destination and its mappings (`pending`, queued), then spends
/// the request's slice on them (see the module doc) and answers 202 with their state by then.
pub async fn create_destination(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    respond(create(ctx, req, inv).await)
}

async fn create(ctx: &ExportCtx, req: &HttpRequest, inv: &Invocation) -> ApiResult<HttpResponse> {
    let body = body::<NewDestinationBody>(req)?.check()?;
    // The account decides the fee currency, so it is looked up before the mappings are checked.
    let account = load_account(ctx, &body.account_id).await?;
    let reqs = parse_mapping_requests(&body.mappings, "mappings", &account.currency)?;
    let segments = load_segments(ctx, &reqs).await?;
    check_conflicts(&body.labels, &reqs, &segments)?;
    let now = now_rfc3339();
    let destination = Destination {
        destination_id: uuid::Uuid::new_v4().simple().to_string(),
        name: body.name,
        description: body.description,
        account_id: account.account_id.clone(),
        data_export_labels: body.labels,
        data_source_country: body
            .countries
            .unwrap_or_else(|| vec![account.country.to_ascii_uppercase()]),
        ttl_seconds: body.ttl_seconds,
        created_at: now.clone(),
    };
    let adopting = std::time::Instant::now();
    let adopted = adopt_all(ctx, &account, &destination.destination_id, &reqs).await?;
    let spent = adopting.elapsed();
    let new = NewMappings {
        reqs: &reqs,
        segments: &segments,
        adopted: &adopted,
    };
    let mappings = store_destination(ctx, &destination, &new, &now).await?;
    tracing::info!(destination = %destination.destination_id, mappings = mappings.len(), "destination created");
    // The destination exists from here on: whatever the inline work meets, the answer is 202
    // (its failures are on the mappings, and the schedule takes over what is left).
    let inline = work_inline(
        &crate::export::adopt::after_adoption(ctx, spent),
        inv,
        &mappings,
    )
    .await;
    let mut view = created_view(ctx, &destination, &mappings).await;
    view["note"] = json!(if inline.is_some() {
        NOTE_INLINE
    } else {
        NOTE_QUEUED
    });
    Ok(HttpResponse::json(202, &view).with_header(
        "location",
        &format!("/destinations/{}", destination.destination_id),
    ))
}

/// The checked mappings of a new destination, with their segments and adopted audiences.
struct NewMappings<'a> {
    reqs: &'a [MappingRequest],
    segments: &'a [Segment],
    adopted: &'a [Option<Audience>],
}

/// Stores the destination with its mappings (`pending`, or `active` on an adopted audience,
/// whose upkeep and backfill then start).
async fn store_destination(
    ctx: &ExportCtx,
    destination: &Destination,
    new: &NewMappings<'_>,
    now: &str,
) -> ApiResult<Vec<SegmentMapping>> {
    let mappings: Vec<SegmentMapping> = new
        .reqs
        .iter()
        .zip(new.segments)
        .zip(new.adopted)
        .map(|((r, seg), a)| {
            let m = new_mapping(
                &destination.destination_id,
                seg,
                r.fees.clone().unwrap_or_default(),
                now,
            );
            a.as_ref()
                .map_or(m.clone(), |a| crate::export::adopt::adopted(m, a))
        })
        .collect();
    ctx.destinations
        .create_destination(destination, &mappings)
        .await
        .map_err(store_failure)?;
    for (m, a) in mappings.iter().zip(new.adopted) {
        if let Some(a) = a {
            crate::export::adopt::start(ctx, destination, m, a)
                .await
                .map_err(store_failure)?;
        }
    }
    Ok(mappings)
}

/// The view of a destination just created: as it stands now, or as stored when it cannot be read.
async fn created_view(
    ctx: &ExportCtx,
    destination: &Destination,
    mappings: &[SegmentMapping],
) -> Value {
    match destination_view(ctx, destination, true).await {
        Ok(v) => v,
        Err(e) => {
            // A 503 now would invite a retry that creates a second destination: answer with the
            // mappings as stored (the Location header leads to their current state).
            tracing::warn!(error = %e, "destination created; answering with the mappings as stored");
            let (status, errors) = destination_status(None, mappings);
            let views = mappings.iter().map(|m| mapping_view(m, None)).collect();
            destination_json(destination, status, errors, views)
        }
    }
}

/// `GET /destinations?limit=&nextToken=`.
pub async fn list_destinations(ctx: &ExportCtx, req: &HttpRequest) -> HttpResponse {
    respond(list(ctx, req).await)
}

async fn list(ctx: &ExportCtx, req: &HttpRequest) -> ApiResult<HttpResponse> {
    let q = req.query();
    let limit = match q.get("limit").map(|l| l.parse::<i32>()) {
        None => 50,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            return Err(invalid("limit", "limit must be an integer from 1 to 100"));
        }
    };
    let page = ctx
        .destinations
        .list_destinations(limit, q.get("nextToken").map(String::as_str))
        .await
        .map_err(store_failure)?;
    let views: Vec<Result<Value, StoreError>> =
        futures::stream::iter(page.destinations.iter().cloned())
            .map(|d| async move { destination_view(ctx, &d, false).await })
            .buffered(8)
            .collect()
            .await;
    let views = views
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_failure)?;
    Ok(HttpResponse::json(
        200,
        &json!({"destinations": views, "nextToken": page.next_token}),
    ))
}

/// The destination `id`, or 404.
pub(in crate::export) async fn find_destination(
    ctx: &ExportCtx,
    id: &str,
) -> ApiResult<Destination> {
    ctx.destinations
        .get_destination(id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| destination_not_found(id))
}

/// `GET /destinations/{id}`: the destination, its mappings (audience ids, statuses, last errors,
/// blocking reasons) and each mapping's backfill progress.
pub async fn get_destination(ctx: &ExportCtx, id: &str) -> HttpResponse {
    respond(get(ctx, id).await)
}

async fn get(ctx: &ExportCtx, id: &str) -> ApiResult<HttpResponse> {
    let d = find_destination(ctx, id).await?;
    if let Some(deleting) = crate::export::lifecycle::deleting_answer(ctx, id).await? {
        return Ok(deleting);
    }
    let v = destination_view(ctx, &d, true)
        .await
        .map_err(store_failure)?;
    Ok(HttpResponse::json(200, &v))
}

/// `PATCH /destinations/{id}`: `description` and `dataExportLabels` may change. A different
/// `name` is refused (Audience Manager's rule, and Amazon cannot rename audiences); other fields
/// are fixed at creation. New labels are checked against every mapping at once.
pub async fn patch_destination(ctx: &ExportCtx, id: &str, req: &HttpRequest) -> HttpResponse {
    respond(patch(ctx, id, req).await)
}

async fn patch(ctx: &ExportCtx, id: &str, req: &HttpRequest) -> ApiResult<HttpResponse> {
    let obj = body_object(req)?;
    let d = find_destination(ctx, id).await?;
    let patch = from_object::<PatchBody>(Value::Object(obj.clone()))?.check(&d)?;
    let (description, labels) = (patch.description, patch.labels);
    let settings = crate::export::audience_meta::parse_settings(&obj, &d)?;
    if let Some(change) = &settings {
        crate::export::audience_meta::apply_settings(ctx, &d, change)
            .await
            .map_err(store_failure)?;
    }
    let updated = ctx
        .destinations
        .update_destination(id, &description, &labels)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| destination_not_found(id))?;
    if labels != d.data_export_labels {
        reevaluate_destination(ctx, &updated)
            .await
            .map_err(store_failure)?;
    }
    let v = destination_view(ctx, &updated, true)
        .await
        .map_err(store_failure)?;
    Ok(HttpResponse::json(200, &v))
}
