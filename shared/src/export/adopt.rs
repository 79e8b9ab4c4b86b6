//! Adopting an existing Data Provider audience: a mapping given `audienceId` (in
//! `POST /destinations` or `POST /destinations/{id}/mappings`) backs the segment with that
//! audience instead of creating one.
//!
//! Before anything is stored, the request reads the audience (`GET /v2/dp/audiencemetadata/{id}`,
//! one metadata slot, single attempt): unknown, or not readable by this LwA client → 404
//! `audience_not_found`; another advertiser's (Amazon's "no matching advertiser", or a different
//! `advertiserId`) → 409 `audience_of_another_advertiser`; already backing a mapping → 409
//! `audience_already_mapped` (claims `AUDIENCE#<id>`, `store::destinations::audiences`). The
//! mapping is then stored `active` with the audience's id, name, `externalAudienceId` and fees;
//! its TTL is the audience's own (until the destination's settings are PATCHed onto it); and its
//! backfill starts as for a created audience. At most [`MAX_ADOPTIONS_PER_REQUEST`] per request,
//! so the answer stays within API Gateway's time at one metadata call per second.

use super::ExportCtx;
use super::destinations::{pace_by, paced_call_done};
use super::errors::{
    amazon_busy, amazon_failure, audience_not_found, invalid, other_advertiser, store_failure,
};
use crate::amazon::{AmazonError, Audience};
use crate::http::{ApiError, ApiResult};
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::destinations::{Destination, MappingStatus, SegmentMapping};
use serde_json::Value;

/// Adoptions one request may ask for (each needs a metadata call, one per second).
pub const MAX_ADOPTIONS_PER_REQUEST: usize = 5;
/// The part of a request's time its adoptions may take (their metadata slots must fall within
/// it); the creating request's inline slice is shortened by what they took
/// ([`after_adoption`]), so the answer keeps the bound of `super::InlineWork`.
pub const ADOPTION_BUDGET_MS: i64 = 6_000;

/// `audienceId` as given: a JSON integer (exact above 2^53) or a string of digits.
pub fn parse_audience_id(v: Option<&Value>, field: &str) -> ApiResult<Option<i64>> {
    let id = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        Some(_) => None,
    };
    match id {
        Some(id) if id > 0 => Ok(Some(id)),
        _ => Err(invalid(
            field,
            format!("{field} must be an Amazon audience id (a positive integer)"),
        )),
    }
}

/// Reads audience `id` and checks that it may back mapping (`destination_id`, `segment_id`),
/// claiming it for that mapping. The call starts on a metadata slot no later than `not_after`
/// (epoch ms), else 503.
pub async fn check(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    id: i64,
    field: &str,
    (destination_id, segment_id): (&str, &str),
    not_after: i64,
) -> ApiResult<Audience> {
    if !pace_by(ctx, account, Some(not_after))
        .await
        .map_err(store_failure)?
    {
        return Err(amazon_busy());
    }
    let amazon = ctx
        .amazon
        .clone()
        .with_retry_policy(ctx.inline.retry.clone());
    let read = amazon
        .get_audience(&account.login(), account.scope(), id)
        .await;
    paced_call_done(ctx).await;
    let a = match read {
        Ok(a) => a,
        // 404: no such audience; 403: another LwA client's (not readable by ours).
        Err(AmazonError::Rejected { status, .. } | AmazonError::AccountNotFound { status, .. })
            if status == 403 || status == 404 =>
        {
            return Err(audience_not_found(field, id));
        }
        // 401 "No matching advertiser found for scope": the audience's advertiser is not ours.
        Err(AmazonError::AccountNotFound { .. }) => {
            return Err(other_advertiser(field, id, account));
        }
        Err(e) => return Err(amazon_failure(&e)),
    };
    if a.advertiser_id != account.advertiser_id {
        return Err(other_advertiser(field, id, account));
    }
    let owner = ctx
        .destinations
        .claim_audience(id, destination_id, segment_id)
        .await
        .map_err(store_failure)?;
    let owner = match owner {
        Some(o) => Some(o),
        None => created_by_adsync_for_another(ctx, &a, destination_id, segment_id)
            .await
            .map_err(store_failure)?,
    };
    if let Some((d, s)) = owner {
        return Err(ApiError::conflict(
            "audience_already_mapped",
            format!("audience {id} already backs segment {s} of destination {d}"),
        )
        .at(field));
    }
    Ok(a)
}

/// An audience adsync created (`adsync-<destinationId>-<segmentId>`) whose mapping still uses it.
async fn created_by_adsync_for_another(
    ctx: &ExportCtx,
    a: &Audience,
    destination_id: &str,
    segment_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let Some((d, s)) = a
        .external_audience_id
        .strip_prefix("adsync-")
        .and_then(|rest| rest.split_once('-'))
    else {
        return Ok(None);
    };
    if d == destination_id && s == segment_id {
        return Ok(None);
    }
    let used = ctx
        .destinations
        .get_mapping(d, s)
        .await?
        .is_some_and(|m| m.status != MappingStatus::Removed && m.audience_id == Some(a.id));
    Ok(used.then(|| (d.to_string(), s.to_string())))
}

/// The context for the request's inline slice after adoptions took `spent`: the slice is
/// shortened by it.
pub fn after_adoption(ctx: &ExportCtx, spent: std::time::Duration) -> ExportCtx {
    let mut c = ctx.clone();
    c.inline.budget = c.inline.budget.saturating_sub(spent);
    c
}

/// The mapping backed by an adopted audience: `active` with its id, name, external id and fees.
pub fn adopted(mut m: SegmentMapping, a: &Audience) -> SegmentMapping {
    m.status = MappingStatus::Active;
    m.audience_id = Some(a.id);
    if !a.external_audience_id.is_empty() {
        m.external_audience_id = a.external_audience_id.clone();
    }
    if !a.name.is_empty() {
        m.audience_name = a.name.clone();
    }
    m.audience_fees = a.audience_fees.clone();
    m
}

/// After the mapping is stored: its upkeep follows the audience's own TTL, and its backfill
/// starts.
pub async fn start(
    ctx: &ExportCtx,
    d: &Destination,
    m: &SegmentMapping,
    a: &Audience,
) -> Result<(), StoreError> {
    super::refresh::register(ctx, m, d, Some(a.ttl.unwrap_or(d.ttl_seconds))).await?;
    super::members::start_backfill(ctx, m).await
}
