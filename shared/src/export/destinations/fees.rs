//! `PUT /destinations/{id}/mappings/{segmentId}/fees`: audience fees, sent to Amazon at once for
//! a mapping with an audience.

use super::mappings::load_account;
use super::pacing::{pace_by, paced_call_done};
use super::requests::{FeesBody, body};
use super::routes::find_destination;
use super::views::mapping_view;
use crate::amazon::{AmazonError, AudienceFee, AudienceUpdate};
use crate::export::ExportCtx;
use crate::export::errors::{
    amazon_failure, mapping_not_found, metadata_busy, segment_not_found, store_failure,
};
use crate::http::error::respond;
use crate::http::{ApiError, ApiResult, HttpRequest, HttpResponse};
use crate::store::accounts::IntegratedAccount;
use crate::store::destinations::{Destination, MappingStatus, SegmentMapping};
use std::time::Duration;

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
    respond(put(ctx, id, segment_id, req).await)
}

async fn put(
    ctx: &ExportCtx,
    id: &str,
    segment_id: &str,
    req: &HttpRequest,
) -> ApiResult<HttpResponse> {
    let body: FeesBody = body(req)?;
    body.check_fields()?;
    let d = find_destination(ctx, id).await?;
    let m = ctx
        .destinations
        .get_mapping(id, segment_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| mapping_not_found(id, segment_id))?;
    if m.status == MappingStatus::Removed {
        return Err(ApiError::conflict(
            "mapping_removed",
            format!("segment {segment_id} was removed from destination {id}; map it again first"),
        ));
    }
    let account = load_account(ctx, &d.account_id).await?;
    let fees = body.fees(&account.currency)?;
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
pub(super) async fn apply_fees(
    ctx: &ExportCtx,
    d: &Destination,
    account: &IntegratedAccount,
    m: &SegmentMapping,
    fees: &[AudienceFee],
) -> ApiResult<SegmentMapping> {
    let Some(audience_id) = m.audience_id else {
        return Err(mapping_not_found(&d.destination_id, &m.segment_id));
    };
    ctx.destinations
        .get_segment(&m.segment_id)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| segment_not_found(&m.segment_id, None))?;
    let description =
        crate::export::audience_meta::description_for(ctx, &d.destination_id, &m.segment_id)
            .await
            .map_err(store_failure)?;
    let update = AudienceUpdate {
        description,
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
pub(super) const FEES_CALL_ALLOWANCE: Duration = Duration::from_secs(3);

/// Stores an Amazon failure as the mapping's last error; a revoked login marks every account on
/// it `reauthorization_required`.
pub(super) async fn record_amazon_error(
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
