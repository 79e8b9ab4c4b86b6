//! The metadata side of segment export: segments, destinations, segment mappings (one Amazon Data
//! Provider audience each), audience fees and the data export labels / controls check.
//!
//! Routes (API key checked by the router before any of these run):
//!
//! - `PUT /segments/{segmentId}`, `GET /segments/{segmentId}`
//! - `POST /destinations`, `GET /destinations`, `GET /destinations/{id}`, `PATCH /destinations/{id}`
//! - `POST /destinations/{id}/mappings`, `DELETE /destinations/{id}/mappings/{segmentId}`
//! - `PUT /destinations/{id}/mappings/{segmentId}/fees`
//!
//! Audience creation is paced (Amazon takes one metadata call per second per LwA client): a new
//! mapping is stored `pending` and queued; once its audience exists the mapping turns `active`
//! and its historical backfill is queued (`members::start_backfill`). Two callers do that work:
//!
//! - the creating request itself (`POST /destinations`, `POST …/mappings`), within a bounded slice
//!   of its own time ([`super::InlineWork`], `ADSYNC_INLINE_WORK_MS`, never past the Lambda
//!   deadline minus the backfill safety margin): it creates *its own* queued audiences, then runs
//!   the backfill jobs of its mappings that are active ([`members::run_backfill_for`]);
//! - the scheduled `{"task":"backfill"}` invocation ([`create_pending_audiences`], then
//!   `members::run_backfill`), which takes whatever is still queued or checkpointed.
//!
//! Both go through [`create_one`]: a claim (conditional write) so one audience is created per
//! mapping whoever races, and a metadata slot reserved in DynamoDB so every process together stays
//! at one call per second. The request only takes a slot that falls within its slice, and its
//! Amazon calls make a single attempt, so its answer time stays bounded. The answer (202) shows
//! each mapping as it stands when the request answers: `pending` while its audience waits,
//! `active` with `audienceId` and backfill progress once created.

use super::ExportCtx;
use super::members;
use crate::amazon::{AmazonError, AudienceFee, AudienceUpdate, NewAudience};
use crate::domain::audience_names::{audience_name, external_audience_id};
use crate::domain::export_controls::{ExportControl, ExportLabel, conflicts, describe_conflicts};
use crate::domain::segment::check_segment_id;
use crate::http::accounts::require_active;
use crate::http::{HttpRequest, HttpResponse, parse_json_body};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::destinations::{
    Destination, DestinationStore, MappingStatus, PendingAudience, Segment, SegmentMapping,
    now_rfc3339,
};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The 202's note, by whether the request did inline work.
const NOTE_QUEUED: &str = "audiences are created at Amazon's pace of one per second by the scheduled \
     backfill task; GET /destinations/{id} shows each mapping turn active with its audience id";
const NOTE_INLINE: &str = "this request created the audiences its time allowed (Amazon takes one per \
     second) and started their backfills; the scheduled backfill task creates the rest and \
     finishes every backfill from its checkpoint; GET /destinations/{id} shows the progress";

/// Largest request body the metadata routes accept.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Amazon's audience `ttl` ceiling, seconds (~397 days).
pub const MAX_TTL_SECONDS: u64 = 34_300_800;
/// The audience `ttl` when a destination does not say (30 days, Amazon's guide example).
pub const DEFAULT_TTL_SECONDS: u64 = 2_592_000;
/// Amazon's audience description limit.
const MAX_AUDIENCE_DESCRIPTION: usize = 1000;
const MAX_NAME_CHARS: usize = 255;
/// Amazon's documented pace of metadata calls (create, read, update) is 1 request/s per client.
/// Slots are 1.1 s apart: the margin absorbs the jitter between reserving a slot and the request
/// reaching Amazon (a token refresh before one call, network latency), so two calls never
/// *arrive* less than a second apart.
const METADATA_SPACING_MS: i64 = 1100;
/// The least time between the end of one metadata call and the start of the next.
const METADATA_MIN_GAP_MS: i64 = 1000;
/// How long one invocation holds a mapping while it creates the audience.
const CREATION_LEASE_MS: i64 = 120_000;
/// When to try again after a retryable creation failure.
const CREATION_RETRY_MS: i64 = 60_000;
/// Audience creations one task invocation looks at, at most.
const CREATION_BATCH: i32 = 200;

// ------------------------------------------------------------------ helpers

pub(super) fn invalid(field: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::field_error(400, "invalid_request", field, message)
}

pub(super) fn store_failure(e: StoreError) -> HttpResponse {
    tracing::error!(error = %e, "destination store failure");
    HttpResponse::error(
        503,
        "store_unavailable",
        "adsync could not read or write its tables; try again",
    )
}

pub(super) fn destination_not_found(id: &str) -> HttpResponse {
    HttpResponse::error(
        404,
        "destination_not_found",
        format!("destination {id} does not exist"),
    )
}

pub(super) fn segment_not_found(id: &str, field: Option<&str>) -> HttpResponse {
    let msg = format!("segment {id} does not exist; register it first with PUT /segments/{id}");
    match field {
        Some(f) => HttpResponse::field_error(404, "segment_not_found", f, msg),
        None => HttpResponse::error(404, "segment_not_found", msg),
    }
}

pub(super) fn mapping_not_found(destination_id: &str, segment_id: &str) -> HttpResponse {
    HttpResponse::error(
        404,
        "mapping_not_found",
        format!("segment {segment_id} is not mapped to destination {destination_id}"),
    )
}

/// The answer for an Amazon failure on a user-triggered call, worded by `user_message()`.
pub(super) fn amazon_failure(e: &AmazonError) -> HttpResponse {
    let (status, code) = match e {
        AmazonError::ReauthorizationRequired => (409, "reauthorization_required"),
        AmazonError::AccountNotFound { .. } => (404, "account_not_found"),
        AmazonError::Rejected { .. } | AmazonError::PayloadTooLarge { .. } => {
            (400, "amazon_rejected")
        }
        _ => (502, "amazon_unavailable"),
    };
    HttpResponse::error(status, code, e.user_message())
}

fn body_object(req: &HttpRequest) -> Result<Map<String, Value>, HttpResponse> {
    match parse_json_body::<Value>(req, MAX_BODY_BYTES)? {
        Value::Object(m) => Ok(m),
        _ => Err(HttpResponse::error(
            400,
            "invalid_json",
            "the body must be a JSON object",
        )),
    }
}

/// Segment ids follow one rule everywhere ([`crate::domain::segment::check_segment_id`]).
pub fn valid_segment_id(id: &str) -> bool {
    check_segment_id(id).is_ok()
}

fn req_string(obj: &Map<String, Value>, field: &str, max: usize) -> Result<String, HttpResponse> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(invalid(field, format!("{field} is required"))),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                Err(invalid(field, format!("{field} must not be empty")))
            } else if t.chars().count() > max {
                Err(invalid(
                    field,
                    format!("{field} is longer than {max} characters"),
                ))
            } else {
                Ok(t.to_string())
            }
        }
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, HttpResponse> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => Err(invalid(
            field,
            format!("{field} is longer than {max} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, HttpResponse> {
    v.as_array()
        .ok_or_else(|| invalid(field, format!("{field} must be an array")))
}

fn parse_enum_list<T: Copy + PartialEq>(
    v: Option<&Value>,
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &[&str],
) -> Result<Vec<T>, HttpResponse> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, item) in array(v, field)?.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let parsed = item
            .as_str()
            .and_then(&parse)
            .ok_or_else(|| invalid(&f, format!("{f} must be one of {}", allowed.join(", "))))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

fn parse_labels(v: Option<&Value>) -> Result<Vec<ExportLabel>, HttpResponse> {
    let allowed: Vec<&str> = ExportLabel::ALL.iter().map(|l| l.as_str()).collect();
    parse_enum_list(v, "dataExportLabels", ExportLabel::parse, &allowed)
}

fn parse_controls(v: Option<&Value>) -> Result<Vec<ExportControl>, HttpResponse> {
    let allowed: Vec<&str> = ExportControl::ALL.iter().map(|c| c.as_str()).collect();
    parse_enum_list(v, "dataExportControls", ExportControl::parse, &allowed)
}

/// `audienceFees`: `[{"cpmCents": <non-negative integer>, "currency": <the advertiser's>}]`,
/// at most one fee (one currency is allowed, so a second entry could only contradict the first).
pub fn parse_fees(
    v: &Value,
    field: &str,
    advertiser_currency: &str,
) -> Result<Vec<AudienceFee>, HttpResponse> {
    let items = array(v, field)?;
    if items.len() > 1 {
        return Err(invalid(
            &format!("{field}[1]"),
            format!(
                "{field} holds at most one fee (in the advertiser's currency, {advertiser_currency})"
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| invalid(&f, format!("{f} must be an object {{cpmCents, currency}}")))?;
        let cf = format!("{f}.cpmCents");
        let cpm = obj
            .get("cpmCents")
            .ok_or_else(|| invalid(&cf, format!("{cf} is required")))?;
        let cpm_cents = cpm
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| {
                invalid(
                    &cf,
                    format!("{cf} must be a non-negative integer (cents per thousand)"),
                )
            })?;
        let kf = format!("{f}.currency");
        let currency = obj.get("currency").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                &kf,
                format!("{kf} is required (a string such as {advertiser_currency})"),
            )
        })?;
        if !currency.eq_ignore_ascii_case(advertiser_currency) {
            return Err(invalid(
                &kf,
                format!(
                    "{kf} must be the advertiser's currency {advertiser_currency} (got {currency}); Amazon \
                     only accepts audience fees in the DSP account's currency"
                ),
            ));
        }
        out.push(AudienceFee {
            cpm_cents,
            currency: advertiser_currency.to_ascii_uppercase(),
        });
    }
    Ok(out)
}

pub(super) fn parse_countries(v: &Value) -> Result<Vec<String>, HttpResponse> {
    let field = "dataSourceCountry";
    let items = array(v, field)?;
    if items.is_empty() {
        return Err(invalid(
            field,
            "dataSourceCountry must list at least one country",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let c = item
            .as_str()
            .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
            .ok_or_else(|| {
                invalid(
                    &f,
                    format!("{f} must be an ISO 3166 alpha-2 country code such as \"US\""),
                )
            })?
            .to_ascii_uppercase();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_ttl(v: Option<&Value>) -> Result<u64, HttpResponse> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_TTL_SECONDS),
        Some(v) => v.as_u64().filter(|t| *t <= MAX_TTL_SECONDS).ok_or_else(|| {
            invalid(
                "ttlSeconds",
                format!(
                    "ttlSeconds must be an integer from 0 to {MAX_TTL_SECONDS} (about 397 days)"
                ),
            )
        }),
    }
}

/// The account id as users give it: a decimal string or a JSON integer.
fn parse_account_id(v: Option<&Value>) -> Result<String, HttpResponse> {
    let field = "accountId";
    let s = match v {
        None | Some(Value::Null) => return Err(invalid(field, "accountId is required")),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => {
            return Err(invalid(
                field,
                "accountId must be the advertiser id as a string of digits",
            ));
        }
    };
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            field,
            "accountId must be the advertiser id as a string of digits",
        ));
    }
    Ok(s)
}

/// A mapping request as given in `mappings[i]` (or the body of `POST …/mappings`).
struct MappingRequest {
    segment_id: String,
    fees: Option<Vec<AudienceFee>>,
    /// An existing audience to adopt (`super::adopt`).
    audience_id: Option<i64>,
    /// `mappings[i]` (or "" for a single-object body), for error fields.
    field: String,
}

fn parse_mapping_requests(
    v: &Value,
    field: &str,
    currency: &str,
) -> Result<Vec<MappingRequest>, HttpResponse> {
    let items = array(v, field)?;
    let mut out: Vec<MappingRequest> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let obj = item.as_object().ok_or_else(|| {
            invalid(
                &f,
                format!("{f} must be an object {{segmentId, audienceFees?}}"),
            )
        })?;
        out.push(parse_mapping_object(obj, &f, currency)?);
        if out[..i].iter().any(|m| m.segment_id == out[i].segment_id) {
            return Err(invalid(
                &format!("{f}.segmentId"),
                format!("segment {} is listed twice", out[i].segment_id),
            ));
        }
    }
    Ok(out)
}

fn parse_mapping_object(
    obj: &Map<String, Value>,
    prefix: &str,
    currency: &str,
) -> Result<MappingRequest, HttpResponse> {
    let dot = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    };
    let sf = format!("{dot}segmentId");
    let segment_id = obj
        .get("segmentId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&sf, format!("{sf} is required (a string)")))?;
    if let Err(why) = check_segment_id(segment_id) {
        return Err(invalid(&sf, format!("{sf} {why}")));
    }
    let fees = match obj.get("audienceFees") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_fees(v, &format!("{dot}audienceFees"), currency)?),
    };
    let audience_id =
        super::adopt::parse_audience_id(obj.get("audienceId"), &format!("{dot}audienceId"))?;
    if audience_id.is_some() && fees.is_some() {
        return Err(invalid(
            &format!("{dot}audienceFees"),
            "an adopted audience keeps its own fees: give audienceFees later with PUT …/fees",
        ));
    }
    for k in obj.keys() {
        if k != "segmentId" && k != "audienceFees" && k != "audienceId" {
            return Err(invalid(
                &format!("{dot}{k}"),
                format!("unknown field {dot}{k}"),
            ));
        }
    }
    Ok(MappingRequest {
        segment_id: segment_id.to_string(),
        fees,
        audience_id,
        field: prefix.to_string(),
    })
}

/// The audience description: the segment's, or a generated one (Amazon requires the field).
pub(super) fn audience_description(seg: &Segment) -> String {
    let d = seg.description.trim();
    if d.is_empty() {
        format!("adsync segment {}", seg.segment_id)
    } else {
        d.chars().take(MAX_AUDIENCE_DESCRIPTION).collect()
    }
}

fn new_mapping(
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
fn conflict_response(
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

pub(super) async fn load_account(
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

async fn load_segments(
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

// -------------------------------------------------------------------- views

fn segment_view(s: &Segment) -> Value {
    json!({
        "segmentId": s.segment_id,
        "name": s.name,
        "description": s.description,
        "dataExportControls": s.data_export_controls,
        "updatedAt": s.updated_at,
    })
}

/// A mapping as users see it. `audienceId` is serialized from the `i64` (a JSON integer, exact).
pub(super) fn mapping_view(m: &SegmentMapping, backfill: Option<Value>) -> Value {
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
fn destination_status(
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

async fn account_problem(ctx: &ExportCtx, account_id: &str) -> Result<Option<String>, StoreError> {
    let found = ctx.accounts.get_account(account_id).await?;
    Ok(require_active(account_id, found).err().map(|r| {
        r.json_body()["error"]["message"]
            .as_str()
            .unwrap_or("the account is not active")
            .to_string()
    }))
}

async fn destination_view(
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
async fn mapping_views(ctx: &ExportCtx, mappings: &[SegmentMapping]) -> Vec<Value> {
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
                    let extra = super::audience_view::extras(ctx, &dst, &seg, &v).await;
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

fn destination_json(
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

// ------------------------------------------------------------------- routes

/// `PUT /segments/{segmentId}`: registers or replaces a segment. Changed controls are checked
/// against every destination the segment is mapped to at once: a new conflict blocks the mapping
/// (deliveries stop), a resolved one unblocks it (and re-sends its members through a backfill).
pub async fn put_segment(ctx: &ExportCtx, segment_id: &str, req: &HttpRequest) -> HttpResponse {
    if let Err(why) = check_segment_id(segment_id) {
        return invalid("segmentId", format!("segmentId (in the path) {why}"));
    }
    let obj = match body_object(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "name" | "description" | "dataExportControls" | "segmentId"
        ) {
            return invalid(k, format!("unknown field {k}"));
        }
    }
    if let Some(id) = obj.get("segmentId")
        && id.as_str() != Some(segment_id)
    {
        return invalid(
            "segmentId",
            "segmentId in the body differs from the one in the path",
        );
    }
    let name = match req_string(&obj, "name", MAX_NAME_CHARS) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let description = match opt_string(&obj, "description", MAX_AUDIENCE_DESCRIPTION) {
        Ok(d) => d.unwrap_or_default(),
        Err(r) => return r,
    };
    let controls = match parse_controls(obj.get("dataExportControls")) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let seg = Segment {
        segment_id: segment_id.to_string(),
        name,
        description,
        data_export_controls: controls,
        updated_at: now_rfc3339(),
    };
    let previous = match ctx.destinations.put_segment(&seg).await {
        Ok(p) => p,
        Err(e) => return store_failure(e),
    };
    let mut changed = Vec::new();
    let controls_changed = previous
        .as_ref()
        .is_some_and(|p| p.data_export_controls != seg.data_export_controls);
    if controls_changed {
        match reevaluate_segment(ctx, &seg).await {
            Ok(c) => changed = c,
            Err(e) => return store_failure(e),
        }
    }
    let mut view = segment_view(&seg);
    view["changedMappings"] = Value::Array(
        changed
            .iter()
            .map(|m| json!({"destinationId": m.destination_id, "status": m.status, "blockedReason": m.blocked_reason}))
            .collect(),
    );
    HttpResponse::json(if previous.is_some() { 200 } else { 201 }, &view)
}

/// `GET /segments/{segmentId}`.
pub async fn get_segment(ctx: &ExportCtx, segment_id: &str) -> HttpResponse {
    match ctx.destinations.get_segment(segment_id).await {
        Ok(Some(s)) => HttpResponse::json(200, &segment_view(&s)),
        Ok(None) => segment_not_found(segment_id, None),
        Err(e) => store_failure(e),
    }
}

/// Applies a segment's (new) controls to each of its mappings.
async fn reevaluate_segment(
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
async fn reevaluate_mapping(
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

async fn create_destination_inner(
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
                .map_or(m.clone(), |a| super::adopt::adopted(m, a))
        })
        .collect();
    ctx.destinations
        .create_destination(&destination, &mappings)
        .await
        .map_err(store_failure)?;
    for (m, a) in mappings.iter().zip(&adopted) {
        if let Some(a) = a {
            super::adopt::start(ctx, &destination, m, a)
                .await
                .map_err(store_failure)?;
        }
    }
    tracing::info!(destination = %destination.destination_id, mappings = mappings.len(), "destination created");
    // The destination exists from here on: whatever the inline work meets, the answer is 202
    // (its failures are on the mappings, and the schedule takes over what is left).
    let inline = work_inline(&super::adopt::after_adoption(ctx, spent), inv, &mappings).await;
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
    if let Some(deleting) = super::lifecycle::deleting_answer(ctx, id).await {
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
    let settings = match super::audience_meta::parse_settings(&obj, &d) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some((ttl, countries)) = &settings
        && let Err(e) = super::audience_meta::apply_settings(ctx, &d, *ttl, countries).await
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

async fn reevaluate_destination(ctx: &ExportCtx, d: &Destination) -> Result<(), StoreError> {
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

async fn add_mappings_inner(
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
                    .map_or(m.clone(), |a| super::adopt::adopted(m, a));
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
                    super::adopt::start(ctx, &d, &m, a)
                        .await
                        .map_err(store_failure)?;
                }
                m
            }
            Some(old) => revive_mapping(ctx, &d, &account, &old, r.fees.clone()).await?,
        };
        out.push(m);
    }
    work_inline(&super::adopt::after_adoption(ctx, spent), inv, &out).await;
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
/// at Amazon and claimed for its mapping (`super::adopt`).
async fn adopt_all(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    destination_id: &str,
    reqs: &[MappingRequest],
) -> Result<Vec<Option<crate::amazon::Audience>>, HttpResponse> {
    let wanted = reqs.iter().filter(|r| r.audience_id.is_some()).count();
    if wanted > super::adopt::MAX_ADOPTIONS_PER_REQUEST {
        return Err(invalid(
            "mappings",
            format!(
                "at most {} mappings with audienceId per request (Amazon reads one audience per second)",
                super::adopt::MAX_ADOPTIONS_PER_REQUEST
            ),
        ));
    }
    let mut out = Vec::with_capacity(reqs.len());
    let until = chrono::Utc::now().timestamp_millis() + super::adopt::ADOPTION_BUDGET_MS;
    for r in reqs {
        out.push(match r.audience_id {
            Some(aid) => {
                let dot = if r.field.is_empty() {
                    String::new()
                } else {
                    format!("{}.", r.field)
                };
                Some(
                    super::adopt::check(
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

/// `mappings` (all of one destination) as stored now, in their order, with backfill progress
/// once they have an audience: one consistent query for the lot.
async fn current_views(
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

/// Brings a removed or failed mapping back.
async fn revive_mapping(
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

/// `PUT /destinations/{id}/mappings/{segmentId}/fees` `{"audienceFees":[{"cpmCents","currency"}]}`.
/// The currency must be the advertiser's (400 before Amazon is called). With an audience, the
/// full metadata goes to Amazon at once (`PUT /v2/dp/audiencemetadata/{id}`, never `name`); a
/// pending mapping keeps the fees for its creation.
pub async fn put_fees(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
    req: &HttpRequest,
) -> HttpResponse {
    let obj = match body_object(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    match put_fees_inner(ctx, id, segment_id, &obj).await {
        Ok(r) | Err(r) => r,
    }
}

async fn put_fees_inner(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
    obj: &Map<String, Value>,
) -> Result<HttpResponse, HttpResponse> {
    if let Some(k) = obj.keys().find(|k| k.as_str() != "audienceFees") {
        return Err(invalid(k, format!("unknown field {k}")));
    }
    let d = ctx
        .destinations
        .get_destination(id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| destination_not_found(id))?;
    let m = ctx
        .destinations
        .get_mapping(id, segment_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| mapping_not_found(id, segment_id))?;
    if m.status == MappingStatus::Removed {
        return Err(HttpResponse::error(
            409,
            "mapping_removed",
            format!("segment {segment_id} was removed from destination {id}; map it again first"),
        ));
    }
    let account = load_account(ctx, &d.account_id).await?;
    let fees_v = obj.get("audienceFees").ok_or_else(|| {
        invalid(
            "audienceFees",
            "audienceFees is required (an empty array removes the fee)",
        )
    })?;
    let fees = parse_fees(fees_v, "audienceFees", &account.currency)?;
    let m = if m.audience_id.is_some() {
        apply_fees(ctx, &d, &account, &m, &fees).await?
    } else {
        ctx.destinations
            .set_mapping_fees(id, segment_id, &fees)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| mapping_not_found(id, segment_id))?
    };
    Ok(HttpResponse::json(200, &mapping_view(&m, None)))
}

/// Sends the full metadata with `fees` to Amazon, then stores the fees. Amazon's failures are
/// recorded as the mapping's last error and answered in the contract's wording.
async fn apply_fees(
    ctx: &ExportCtx,
    d: &Destination,
    account: &IntegratedAccount,
    m: &SegmentMapping,
    fees: &[AudienceFee],
) -> Result<SegmentMapping, HttpResponse> {
    let Some(audience_id) = m.audience_id else {
        return Err(mapping_not_found(&d.destination_id, &m.segment_id));
    };
    let seg = ctx
        .destinations
        .get_segment(&m.segment_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| segment_not_found(&m.segment_id, None))?;
    let update = AudienceUpdate {
        description: audience_description(&seg),
        ttl: d.ttl_seconds,
        data_source_country: d.data_source_country.clone(),
        audience_fees: Some(fees.to_vec()),
    };
    // Inside a request, only a slot that leaves the call its time before the budget's Amazon
    // deadline (`crate::budget`); none free → 503, nothing changed.
    let not_after = crate::budget::latest_start_ms(FEES_CALL_ALLOWANCE);
    if !pace_by(ctx, account, not_after)
        .await
        .map_err(store_failure)?
    {
        return Err(metadata_busy());
    }
    let result = ctx
        .amazon
        .update_audience(&account.login(), account.scope(), audience_id, &update)
        .await;
    paced_call_done(ctx).await;
    if let Err(e) = result {
        record_amazon_error(ctx, account, m, &e).await;
        return Err(amazon_failure(&e));
    }
    let _ = ctx
        .destinations
        .clear_mapping_error(&d.destination_id, &m.segment_id)
        .await;
    ctx.destinations
        .set_mapping_fees(&d.destination_id, &m.segment_id, fees)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| mapping_not_found(&d.destination_id, &m.segment_id))
}

/// Time a fee update keeps for its Amazon call after its metadata slot.
const FEES_CALL_ALLOWANCE: Duration = Duration::from_secs(3);

/// A fee update that found no metadata slot within its request budget.
fn metadata_busy() -> HttpResponse {
    HttpResponse::error(
        503,
        "metadata_busy",
        "Amazon allows one audience metadata call per second for this LwA client, and every slot \
         until this request's time budget runs out is taken (audience creations, other fee \
         updates). Nothing was changed; send the request again in a few seconds.",
    )
    .with_header("retry-after", "5")
}

/// Waits for this process's turn at Amazon's metadata endpoints (1 request/s per LwA client,
/// shared by every concurrent invocation through the table), for a slot no later than `not_after` (epoch ms): `false`, with nothing reserved and
/// no wait, when the next free slot is later.
pub(super) async fn pace_by(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    not_after: Option<i64>,
) -> Result<bool, StoreError> {
    // The access token first: a refresh between the slot and the call would delay this call
    // while the next slot holder keeps its time, and two calls could then reach Amazon less than
    // a second apart (seen with concurrent creators). A failure here is met again, and handled,
    // by the call itself.
    if let Err(e) = ctx.amazon.access_token(&account.login()).await {
        tracing::debug!(error = %e, "access token not ready before a metadata call");
    }
    let Some(slot) = ctx
        .destinations
        .reserve_metadata_slot_by(ctx.amazon.client_id(), METADATA_SPACING_MS, not_after)
        .await?
    else {
        return Ok(false);
    };
    let wait = slot - chrono::Utc::now().timestamp_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    Ok(true)
}

/// After a metadata call (answered or not): the next one starts a full second after this one
/// ended, so a slow call never lets the next arrive at Amazon less than a second later.
pub(super) async fn paced_call_done(ctx: &ExportCtx) {
    if let Err(e) = ctx
        .destinations
        .metadata_call_done(ctx.amazon.client_id(), METADATA_MIN_GAP_MS)
        .await
    {
        tracing::warn!(error = %e, "could not record the end of a metadata call");
    }
}

/// Stores an Amazon failure as the mapping's last error; a revoked login marks every account on
/// it `reauthorization_required`.
async fn record_amazon_error(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    m: &SegmentMapping,
    e: &AmazonError,
) {
    tracing::warn!(
        destination = %m.destination_id,
        segment = %m.segment_id,
        error = %e,
        "Amazon refused an audience metadata call"
    );
    if matches!(e, AmazonError::ReauthorizationRequired)
        && let Err(se) = ctx
            .accounts
            .mark_reauthorization_required(&account.token_secret)
            .await
    {
        tracing::error!(error = %se, "could not mark the account reauthorization_required");
    }
    if let Err(se) = ctx
        .destinations
        .set_mapping_error(&m.destination_id, &m.segment_id, &e.user_message())
        .await
    {
        tracing::error!(error = %se, "could not record the mapping's last error");
    }
}

// ------------------------------------------------------ audience creation

/// What one pass of [`create_pending_audiences`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationSummary {
    pub created: u32,
    pub failed: u32,
    pub retry_later: u32,
    pub skipped: u32,
    pub left_for_next_run: bool,
}

/// Creates queued audiences, one Amazon call per second, until the queue is empty or `budget`
/// is spent; each created audience turns its mapping `active` and queues the mapping's backfill.
/// Failures are recorded on the mapping: Amazon refusing (account not found, rejected input) moves
/// it to `failed`; a revoked login marks the account and leaves the mapping queued; throttling,
/// 5xx and network errors leave it queued for a later run.
pub async fn create_pending_audiences(
    ctx: &ExportCtx,
    inv: &Invocation,
    budget: Duration,
) -> CreationSummary {
    let started = std::time::Instant::now();
    let mut summary = CreationSummary::default();
    let pending = match ctx.destinations.pending_audiences(CREATION_BATCH).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "could not read the audience creation queue");
            summary.left_for_next_run = true;
            return summary;
        }
    };
    // A call takes about a second with the pacing; stop while a whole one still fits.
    let per_call = Duration::from_millis(METADATA_SPACING_MS as u64 + 1500);
    for p in &pending {
        if started.elapsed() + per_call > budget
            || inv.remaining() < per_call + Duration::from_secs(2)
        {
            summary.left_for_next_run = true;
            break;
        }
        match create_one(ctx, p, None).await {
            Ok(Outcome::Created) => summary.created += 1,
            Ok(Outcome::Failed) => summary.failed += 1,
            Ok(Outcome::RetryLater) => summary.retry_later += 1,
            Ok(Outcome::Skipped | Outcome::NoSlot) => summary.skipped += 1,
            Err(e) => {
                tracing::error!(error = %e, "audience creation step failed");
                summary.retry_later += 1;
            }
        }
    }
    summary
}

enum Outcome {
    Created,
    Failed,
    RetryLater,
    Skipped,
    /// No metadata slot before `slot_by`: the claim was given back, the entry stays queued.
    NoSlot,
}

/// Creates one queued audience: claim, paced call, record, backfill queued, entry dropped.
/// `slot_by` (epoch ms): only with a metadata slot no later than that (a request's slice).
async fn create_one(
    ctx: &ExportCtx,
    p: &PendingAudience,
    slot_by: Option<i64>,
) -> Result<Outcome, StoreError> {
    let store = &ctx.destinations;
    let (dst, seg_id) = (p.destination_id.as_str(), p.segment_id.as_str());
    let Some(current) = store.get_mapping(dst, seg_id).await? else {
        store.dequeue_audience(p).await?;
        return Ok(Outcome::Skipped);
    };
    match current.status {
        MappingStatus::Pending if current.audience_id.is_none() => {}
        MappingStatus::Pending | MappingStatus::Active if current.audience_id.is_some() => {
            // A previous run created the audience but stopped before queueing the backfill.
            // Only then: a stale entry met after another caller (a creating request) created the
            // audience and already ran its backfill must not start that backfill over.
            if current.status == MappingStatus::Active
                && ctx
                    .jobs
                    .get_job(dst, seg_id)
                    .await?
                    .is_none_or(|j| Some(j.audience_id) != current.audience_id)
            {
                members::start_backfill(ctx, &current).await?;
            }
            store.dequeue_audience(p).await?;
            return Ok(Outcome::Skipped);
        }
        _ => {
            // Blocked, failed or removed since it was queued: nothing to create now (unblocking
            // or mapping again queues it anew).
            store.dequeue_audience(p).await?;
            return Ok(Outcome::Skipped);
        }
    }
    let Some(d) = store.get_destination(dst).await? else {
        store.dequeue_audience(p).await?;
        return Ok(Outcome::Skipped);
    };
    // No call for an account that cannot be used: say why on the mapping and keep it queued
    // (relinking the account lets the next run create the audience).
    let found = ctx.accounts.get_account(&d.account_id).await?;
    let account = match require_active(&d.account_id, found) {
        Ok(a) => a,
        Err(r) => {
            let msg = r.json_body()["error"]["message"]
                .as_str()
                .unwrap_or("the account is not active")
                .to_string();
            store
                .fail_creation(dst, seg_id, &msg, false, CREATION_RETRY_MS * 5)
                .await?;
            return Ok(Outcome::RetryLater);
        }
    };
    let Some(m) = store.claim_creation(dst, seg_id, CREATION_LEASE_MS).await? else {
        // Another invocation holds it, or it waits for its retry time.
        return Ok(Outcome::Skipped);
    };
    let seg = store.get_segment(seg_id).await?;
    let description = match &seg {
        Some(s) => audience_description(s),
        None => format!("adsync segment {seg_id}"),
    };
    let new = NewAudience {
        name: m.audience_name.clone(),
        description,
        advertiser_id: account.advertiser_id,
        external_audience_id: m.external_audience_id.clone(),
        ttl: d.ttl_seconds,
        data_source_country: d.data_source_country.clone(),
        audience_fees: if m.audience_fees.is_empty() {
            None
        } else {
            Some(m.audience_fees.clone())
        },
    };
    if !pace_by(ctx, &account, slot_by).await? {
        store.release_creation(dst, seg_id).await?;
        return Ok(Outcome::NoSlot);
    }
    let created = ctx
        .amazon
        .create_audience(&account.login(), account.scope(), &new)
        .await;
    paced_call_done(ctx).await;
    match created {
        Ok(audience) => {
            let done = store.complete_creation(dst, seg_id, audience.id).await?;
            tracing::info!(destination = %dst, segment = %seg_id, audience_id = audience.id, "audience created");
            if done.status == MappingStatus::Active {
                members::start_backfill(ctx, &done).await?;
            }
            store.dequeue_audience(p).await?;
            Ok(Outcome::Created)
        }
        Err(e) => {
            let message = e.user_message();
            tracing::warn!(destination = %dst, segment = %seg_id, error = %e, "audience creation failed");
            match &e {
                AmazonError::ReauthorizationRequired => {
                    ctx.accounts
                        .mark_reauthorization_required(&account.token_secret)
                        .await?;
                    store
                        .fail_creation(dst, seg_id, &message, false, CREATION_RETRY_MS * 5)
                        .await?;
                    Ok(Outcome::RetryLater)
                }
                AmazonError::AccountNotFound { .. }
                | AmazonError::Rejected { .. }
                | AmazonError::PayloadTooLarge { .. } => {
                    store.fail_creation(dst, seg_id, &message, true, 0).await?;
                    store.dequeue_audience(p).await?;
                    Ok(Outcome::Failed)
                }
                AmazonError::Throttled { retry_after, .. } => {
                    let wait = retry_after
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(CREATION_RETRY_MS);
                    store
                        .fail_creation(dst, seg_id, &message, false, wait)
                        .await?;
                    Ok(Outcome::RetryLater)
                }
                _ => {
                    store
                        .fail_creation(dst, seg_id, &message, false, CREATION_RETRY_MS)
                        .await?;
                    Ok(Outcome::RetryLater)
                }
            }
        }
    }
}

// ------------------------------------------------------------- inline work

/// What a creating request did within its slice (logged and counted in metrics; the answer shows
/// the mappings themselves).
#[derive(Debug, Default)]
struct InlineSummary {
    created: u32,
    failed: u32,
    retry_later: u32,
    /// Left queued for the scheduled run: no metadata slot within the slice, the slice's
    /// creation share was spent, or another invocation held the claim.
    left_queued: u32,
    /// `members::run_backfill_for`'s summary (`null` when no job ran).
    backfill: Value,
    ms: u64,
}

/// The creating request's slice of work on the mappings it just stored (see the module doc):
/// `None` when inline work is off (`ADSYNC_INLINE_WORK_MS=0`) or no time is left. Never fails the
/// request: errors are logged, stored on the mappings, and left to the scheduled run.
async fn work_inline(
    ctx: &ExportCtx,
    inv: &Invocation,
    mappings: &[SegmentMapping],
) -> Option<InlineSummary> {
    let cfg = &ctx.inline;
    if !cfg.enabled() || mappings.is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    let now = crate::runtime::now_ms();
    let margin = cfg.backfill.safety_margin.as_millis() as u64;
    // The slice ends at the budget or at the deadline minus the safety margin, whichever is first.
    let stop_at = (now + cfg.budget.as_millis() as u64).min(inv.deadline_ms.saturating_sub(margin));
    if stop_at <= now {
        return None;
    }
    let mut ictx = ctx.clone();
    ictx.amazon = ctx.amazon.clone().with_retry_policy(cfg.retry.clone());
    let ctx = &ictx;
    let mut summary = InlineSummary::default();

    // 1. Its queued audiences, in the request's order, within the creation share of the slice
    //    (as the scheduled task splits its time): a call starts only on a slot inside it.
    let creation_stop = now + ((stop_at - now) as f64 * super::AUDIENCE_CREATION_SHARE) as u64;
    for m in mappings
        .iter()
        .filter(|m| m.status == MappingStatus::Pending && m.audience_id.is_none())
    {
        if crate::runtime::now_ms() >= creation_stop {
            summary.left_queued += 1;
            continue;
        }
        match create_one(ctx, &PendingAudience::of(m), Some(creation_stop as i64)).await {
            Ok(Outcome::Created) => summary.created += 1,
            Ok(Outcome::Failed) => summary.failed += 1,
            Ok(Outcome::RetryLater) => summary.retry_later += 1,
            Ok(Outcome::Skipped | Outcome::NoSlot) => summary.left_queued += 1,
            Err(e) => {
                tracing::warn!(error = %e, destination = %m.destination_id, segment = %m.segment_id, "inline audience creation left to the schedule");
                summary.left_queued += 1;
            }
        }
    }

    // 2. The backfill jobs of its mappings that are active now (created above, or revived with
    //    their audience), on the scheduled run's path, until the slice ends.
    let mut targets = Vec::new();
    for m in mappings {
        match ctx
            .destinations
            .get_mapping(&m.destination_id, &m.segment_id)
            .await
        {
            Ok(Some(cur)) if cur.status == MappingStatus::Active && cur.audience_id.is_some() => {
                targets.push((cur.destination_id, cur.segment_id));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "inline backfill: mapping unreadable; left to the schedule")
            }
        }
    }
    if !targets.is_empty() && crate::runtime::now_ms() < stop_at {
        // The backfill stops at `deadline - margin`: a deadline of `stop_at + margin` makes that
        // the slice's end (and it is never later than the real one).
        let slice = Invocation {
            request_id: inv.request_id.clone(),
            deadline_ms: stop_at + margin,
        };
        match members::run_backfill_for(ctx, &slice, &cfg.backfill, &targets).await {
            Ok(v) => summary.backfill = v,
            Err(e) => tracing::warn!(error = %e, "inline backfill left to the schedule"),
        }
    }
    summary.ms = started.elapsed().as_millis() as u64;
    let mut metrics = crate::telemetry::Metrics::new(ctx.metrics_fn);
    metrics
        .count("AudiencesCreated", summary.created as u64)
        .count("AudienceCreationFailures", summary.failed as u64);
    metrics.emit();
    tracing::info!(
        created = summary.created,
        failed = summary.failed,
        retry_later = summary.retry_later,
        left_queued = summary.left_queued,
        backfill = %summary.backfill,
        ms = summary.ms,
        "inline work of a creating request done"
    );
    Some(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ids_use_a_safe_alphabet() {
        assert!(valid_segment_id("seg-1_a.b:c"));
        assert!(!valid_segment_id(""));
        assert!(!valid_segment_id("a#b"));
        assert!(!valid_segment_id("a b"));
        assert!(!valid_segment_id(&"x".repeat(129)));
    }

    #[test]
    fn fees_must_be_in_the_advertisers_currency() {
        let ok = parse_fees(
            &json!([{"cpmCents": 150, "currency": "usd"}]),
            "audienceFees",
            "USD",
        )
        .unwrap();
        assert_eq!(
            ok,
            vec![AudienceFee {
                cpm_cents: 150,
                currency: "USD".into()
            }]
        );
        assert!(
            parse_fees(&json!([]), "audienceFees", "USD")
                .unwrap()
                .is_empty()
        );
        let r = parse_fees(
            &json!([{"cpmCents": 150, "currency": "EUR"}]),
            "mappings[2].audienceFees",
            "USD",
        )
        .unwrap_err();
        assert_eq!(r.status, 400);
        let b = r.json_body();
        assert_eq!(b["error"]["field"], "mappings[2].audienceFees[0].currency");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("USD"),
            "{b}"
        );
        for bad in [json!(-1), json!(1.5), json!("150"), json!(5_000_000_000u64)] {
            let r = parse_fees(
                &json!([{"cpmCents": bad, "currency": "USD"}]),
                "audienceFees",
                "USD",
            )
            .unwrap_err();
            assert_eq!(r.json_body()["error"]["field"], "audienceFees[0].cpmCents");
        }
        let r = parse_fees(
            &json!([{"cpmCents": 1, "currency": "USD"}, {"cpmCents": 2, "currency": "USD"}]),
            "audienceFees",
            "USD",
        )
        .unwrap_err();
        assert_eq!(r.json_body()["error"]["field"], "audienceFees[1]");
    }

    #[test]
    fn labels_and_controls_errors_name_the_index() {
        let r = parse_labels(Some(&json!(["PII_COMBINATION", "nope"]))).unwrap_err();
        assert_eq!(r.json_body()["error"]["field"], "dataExportLabels[1]");
        let r = parse_controls(Some(&json!("NO_PII_COMBINATION"))).unwrap_err();
        assert_eq!(r.json_body()["error"]["field"], "dataExportControls");
        assert_eq!(
            parse_controls(Some(&json!(["NO_PII_COMBINATION", "NO_PII_COMBINATION"]))).unwrap(),
            vec![ExportControl::NoPiiCombination]
        );
    }

    #[test]
    fn countries_ttl_and_account_ids_are_checked() {
        assert_eq!(
            parse_countries(&json!(["us", "CA"])).unwrap(),
            vec!["US", "CA"]
        );
        assert_eq!(
            parse_countries(&json!(["US", "USA"]))
                .unwrap_err()
                .json_body()["error"]["field"],
            "dataSourceCountry[1]"
        );
        assert_eq!(parse_countries(&json!([])).unwrap_err().status, 400);
        assert_eq!(parse_ttl(None).unwrap(), DEFAULT_TTL_SECONDS);
        assert_eq!(
            parse_ttl(Some(&json!(MAX_TTL_SECONDS))).unwrap(),
            MAX_TTL_SECONDS
        );
        assert!(parse_ttl(Some(&json!(MAX_TTL_SECONDS + 1))).is_err());
        assert_eq!(parse_account_id(Some(&json!("123"))).unwrap(), "123");
        assert_eq!(
            parse_account_id(Some(&json!(4728736040201u64))).unwrap(),
            "4728736040201"
        );
        assert!(parse_account_id(Some(&json!("12a"))).is_err());
    }

    #[test]
    fn duplicate_segments_in_one_request_are_refused() {
        let r = parse_mapping_requests(
            &json!([{"segmentId": "a"}, {"segmentId": "b"}, {"segmentId": "a"}]),
            "mappings",
            "USD",
        )
        .err()
        .unwrap();
        assert_eq!(r.json_body()["error"]["field"], "mappings[2].segmentId");
        let r = parse_mapping_requests(&json!([{"segmentId": "a", "fees": []}]), "mappings", "USD")
            .err()
            .unwrap();
        assert_eq!(r.json_body()["error"]["field"], "mappings[0].fees");
    }

    fn mapping(status: MappingStatus, err: Option<&str>) -> SegmentMapping {
        SegmentMapping {
            destination_id: "d".into(),
            segment_id: format!("s-{}", status.as_str()),
            status,
            audience_id: Some(72_057_594_038_053_890),
            external_audience_id: "x".into(),
            audience_name: "name of it".into(),
            audience_fees: vec![],
            last_error: err.map(String::from),
            blocked_reason: (status == MappingStatus::Blocked).then(|| "why".to_string()),
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    #[test]
    fn destination_status_surfaces_errors() {
        let (s, e) = destination_status(None, &[mapping(MappingStatus::Active, None)]);
        assert_eq!((s.as_str(), e.len()), ("active", 0));
        let (s, _) = destination_status(None, &[mapping(MappingStatus::Pending, None)]);
        assert_eq!(s, "pending");
        let (s, e) = destination_status(
            None,
            &[
                mapping(
                    MappingStatus::Failed,
                    Some("Amazon Error: Account 1 was not found."),
                ),
                mapping(MappingStatus::Removed, Some("old")),
            ],
        );
        assert_eq!(s, "attention");
        assert_eq!(
            e,
            vec![
                json!({"segmentId": "s-failed", "message": "Amazon Error: Account 1 was not found."})
            ]
        );
        let (s, e) = destination_status(Some("relink".into()), &[]);
        assert_eq!((s.as_str(), e.len()), ("attention", 1));
    }

    #[test]
    fn audience_ids_above_2_pow_53_stay_exact_in_views() {
        let v = mapping_view(&mapping(MappingStatus::Active, None), None);
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains("\"audienceId\":72057594038053890"), "{text}");
    }
}
