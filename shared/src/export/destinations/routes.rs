//! `POST /destinations`, `GET /destinations`, `GET /destinations/{id}`, `PATCH /destinations/{id}`.

use super::inline::work_inline;
use super::mappings::adopt_all;
use super::mappings::conflict_response;
use super::mappings::load_account;
use super::mappings::load_segments;
use super::mappings::new_mapping;
use super::requests::MAX_AUDIENCE_DESCRIPTION;
use super::requests::MAX_NAME_CHARS;
use super::requests::body_object;
use super::requests::opt_string;
use super::requests::parse_account_id;
use super::requests::parse_countries;
use super::requests::parse_labels;
use super::requests::parse_mapping_requests;
use super::requests::parse_ttl;
use super::requests::req_string;
use super::segments::reevaluate_destination;
use super::views::destination_json;
use super::views::destination_status;
use super::views::destination_view;
use super::views::mapping_view;
use crate::domain::export_controls::conflicts;
use crate::export::ExportCtx;
use crate::export::errors::destination_not_found;
use crate::export::errors::invalid;
use crate::export::errors::store_failure;
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::destinations::{Destination, DestinationStore, SegmentMapping, now_rfc3339};
use futures::StreamExt;
use serde_json::{Map, Value, json};

/// The 202's note, by whether the request did inline work.
pub(super) const NOTE_QUEUED: &str = "audiences are created at Amazon's pace of one per second by the scheduled \
     backfill task; GET /destinations/{id} shows each mapping turn active with its audience id";

pub(super) const NOTE_INLINE: &str = "this request created the audiences its time allowed (Amazon takes one per \
     second) and started their backfills; the scheduled backfill task creates the rest and \
     finishes every backfill from its checkpoint; GET /destinations/{id} shows the progress";

/// `POST /destinations`: stores the destination and its mappings (`pending`, queued), then spends
/// the request's slice on them (see the module doc) and answers 202 with their state by then.
pub async fn create_destination(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    let obj = match body_object(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    match create_destination_inner(ctx, &obj, inv).await {
        Ok(r) | Err(r) => r,
    }
}

pub(super) async fn create_destination_inner(
    ctx: &ExportCtx,
    obj: &Map<String, Value>,
    inv: &Invocation,
) -> Result<HttpResponse, HttpResponse> {
    const KNOWN: [&str; 7] = [
        "name",
        "description",
        "accountId",
        "dataExportLabels",
        "dataSourceCountry",
        "ttlSeconds",
        "mappings",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(k, format!("unknown field {k}")));
    }
    let name = req_string(obj, "name", MAX_NAME_CHARS)?;
    let description = opt_string(obj, "description", MAX_AUDIENCE_DESCRIPTION)?.unwrap_or_default();
    let account_id = parse_account_id(obj.get("accountId"))?;
    let labels = parse_labels(obj.get("dataExportLabels"))?;
    let ttl_seconds = parse_ttl(obj.get("ttlSeconds"))?;
    let countries = match obj.get("dataSourceCountry") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_countries(v)?),
    };
    let mappings_v = obj
        .get("mappings")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    if let Some(a) = mappings_v.as_array()
        && a.len() > DestinationStore::MAX_MAPPINGS_PER_CREATE
    {
        return Err(invalid(
            "mappings",
            format!(
                "at most {} mappings when creating a destination; add more with POST /destinations/{{id}}/mappings",
                DestinationStore::MAX_MAPPINGS_PER_CREATE
            ),
        ));
    }
    // The account decides the fee currency, so it is looked up before the mappings are checked.
    let account = load_account(ctx, &account_id).await?;
    let reqs = parse_mapping_requests(&mappings_v, "mappings", &account.currency)?;
    let segments = load_segments(ctx, &reqs).await?;
    for (r, seg) in reqs.iter().zip(&segments) {
        let found = conflicts(&labels, &seg.data_export_controls);
        if !found.is_empty() {
            return Err(conflict_response(
                &format!("{}.segmentId", r.field),
                &seg.segment_id,
                &found,
            ));
        }
    }
    let now = now_rfc3339();
    let destination = Destination {
        destination_id: uuid::Uuid::new_v4().simple().to_string(),
        name,
        description,
        account_id: account.account_id.clone(),
        data_export_labels: labels,
        data_source_country: countries
            .unwrap_or_else(|| vec![account.country.to_ascii_uppercase()]),
        ttl_seconds,
        created_at: now.clone(),
    };
    let adopting = std::time::Instant::now();
    let adopted = adopt_all(ctx, &account, &destination.destination_id, &reqs).await?;
    let spent = adopting.elapsed();
    let mappings: Vec<SegmentMapping> = reqs
        .iter()
        .zip(&segments)
        .zip(&adopted)
        .map(|((r, seg), a)| {
            let m = new_mapping(
                &destination.destination_id,
                seg,
                r.fees.clone().unwrap_or_default(),
                &now,
            );
            a.as_ref()
                .map_or(m.clone(), |a| crate::export::adopt::adopted(m, a))
        })
        .collect();
    ctx.destinations
        .create_destination(&destination, &mappings)
        .await
        .map_err(store_failure)?;
    for (m, a) in mappings.iter().zip(&adopted) {
        if let Some(a) = a {
            crate::export::adopt::start(ctx, &destination, m, a)
                .await
                .map_err(store_failure)?;
        }
    }
    tracing::info!(destination = %destination.destination_id, mappings = mappings.len(), "destination created");
    // The destination exists from here on: whatever the inline work meets, the answer is 202
    // (its failures are on the mappings, and the schedule takes over what is left).
    let inline = work_inline(
        &crate::export::adopt::after_adoption(ctx, spent),
        inv,
        &mappings,
    )
    .await;
    let mut view = match destination_view(ctx, &destination, true).await {
        Ok(v) => v,
        Err(e) => {
            // A 503 now would invite a retry that creates a second destination: answer with the
            // mappings as stored (the Location header leads to their current state).
            tracing::warn!(error = %e, "destination created; answering with the mappings as stored");
            let (status, errors) = destination_status(None, &mappings);
            let views = mappings.iter().map(|m| mapping_view(m, None)).collect();
            destination_json(&destination, status, errors, views)
        }
    };
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

/// `GET /destinations?limit=&nextToken=`.
pub async fn list_destinations(ctx: &ExportCtx, req: &HttpRequest) -> HttpResponse {
    let q = req.query();
    let limit = match q.get("limit").map(|l| l.parse::<i32>()) {
        None => 50,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return invalid("limit", "limit must be an integer from 1 to 100"),
    };
    let page = match ctx
        .destinations
        .list_destinations(limit, q.get("nextToken").map(String::as_str))
        .await
    {
        Ok(p) => p,
        Err(e) => return store_failure(e),
    };
    let views: Vec<Result<Value, StoreError>> =
        futures::stream::iter(page.destinations.iter().cloned())
            .map(|d| async move { destination_view(ctx, &d, false).await })
            .buffered(8)
            .collect()
            .await;
    let views = match views.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(v) => v,
        Err(e) => return store_failure(e),
    };
    HttpResponse::json(
        200,
        &json!({"destinations": views, "nextToken": page.next_token}),
    )
}

/// `GET /destinations/{id}`: the destination, its mappings (audience ids, statuses, last errors,
/// blocking reasons) and each mapping's backfill progress.
pub async fn get_destination(ctx: &ExportCtx, id: &str) -> HttpResponse {
    let d = match ctx.destinations.get_destination(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return destination_not_found(id),
        Err(e) => return store_failure(e),
    };
    if let Some(deleting) = crate::export::lifecycle::deleting_answer(ctx, id).await {
        return deleting;
    }
    match destination_view(ctx, &d, true).await {
        Ok(v) => HttpResponse::json(200, &v),
        Err(e) => store_failure(e),
    }
}

/// `PATCH /destinations/{id}`: `description` and `dataExportLabels` may change. A different
/// `name` is refused (Audience Manager's rule, and Amazon cannot rename audiences); other fields
/// are fixed at creation. New labels are checked against every mapping at once.
pub async fn patch_destination(ctx: &ExportCtx, id: &str, req: &HttpRequest) -> HttpResponse {
    let obj = match body_object(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let d = match ctx.destinations.get_destination(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return destination_not_found(id),
        Err(e) => return store_failure(e),
    };
    for (k, v) in &obj {
        match k.as_str() {
            "description" | "dataExportLabels" | "ttlSeconds" | "dataSourceCountry" => {}
            "name" => {
                if v.as_str().map(str::trim) != Some(d.name.as_str()) {
                    return invalid("name", "the name of a destination cannot be changed");
                }
            }
            "destinationId" if v.as_str() == Some(id) => {}
            "accountId" | "mappings" | "destinationId" => {
                let how = if k == "mappings" {
                    " (use POST /destinations/{id}/mappings and DELETE /destinations/{id}/mappings/{segmentId})"
                } else {
                    ""
                };
                return invalid(k, format!("{k} of a destination cannot be changed{how}"));
            }
            _ => return invalid(k, format!("unknown field {k}")),
        }
    }
    let description = match opt_string(&obj, "description", MAX_AUDIENCE_DESCRIPTION) {
        Ok(Some(desc)) => desc,
        Ok(None) => d.description.clone(),
        Err(r) => return r,
    };
    let labels = if obj.contains_key("dataExportLabels") {
        match parse_labels(obj.get("dataExportLabels")) {
            Ok(l) => l,
            Err(r) => return r,
        }
    } else {
        d.data_export_labels.clone()
    };
    let settings = match crate::export::audience_meta::parse_settings(&obj, &d) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some((ttl, countries)) = &settings
        && let Err(e) = crate::export::audience_meta::apply_settings(ctx, &d, *ttl, countries).await
    {
        return store_failure(e);
    }
    let updated = match ctx
        .destinations
        .update_destination(id, &description, &labels)
        .await
    {
        Ok(Some(u)) => u,
        Ok(None) => return destination_not_found(id),
        Err(e) => return store_failure(e),
    };
    if labels != d.data_export_labels
        && let Err(e) = reevaluate_destination(ctx, &updated).await
    {
        return store_failure(e);
    }
    match destination_view(ctx, &updated, true).await {
        Ok(v) => HttpResponse::json(200, &v),
        Err(e) => store_failure(e),
    }
}
