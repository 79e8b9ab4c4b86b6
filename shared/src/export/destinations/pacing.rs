//! Amazon's metadata pace (1 request/s per LwA client), shared by every process through DynamoDB
//! slots.

use crate::export::ExportCtx;
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use std::time::Duration;

/// Amazon's documented pace of metadata calls (create, read, update) is 1 request/s per client.
/// Slots are 1.1 s apart: the margin absorbs the jitter between reserving a slot and the request
/// reaching Amazon (a token refresh before one call, network latency), so two calls never
/// *arrive* less than a second apart.
pub(super) const METADATA_SPACING_MS: i64 = 1100;

/// The least time between the end of one metadata call and the start of the next.
pub(super) const METADATA_MIN_GAP_MS: i64 = 1000;

/// Waits for this process's turn at Amazon's metadata endpoints (1 request/s per LwA client,
/// shared by every concurrent invocation through the table), for a slot no later than `not_after` (epoch ms): `false`, with nothing reserved and
/// no wait, when the next free slot is later.
pub(in crate::export) async fn pace_by(
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
    // The slots are the LwA client's (read on first use): unreadable, no slot and no call.
    let client_id = ctx
        .amazon
        .client_id()
        .await
        .map_err(|e| StoreError::Aws(e.to_string()))?;
    let Some(slot) = ctx
        .destinations
        .reserve_metadata_slot_by(client_id, METADATA_SPACING_MS, not_after)
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
pub(in crate::export) async fn paced_call_done(ctx: &ExportCtx) {
    // No credentials: the call never reached Amazon.
    let Ok(client_id) = ctx.amazon.client_id().await else {
        return;
    };
    if let Err(e) = ctx
        .destinations
        .metadata_call_done(client_id, METADATA_MIN_GAP_MS)
        .await
    {
        tracing::warn!(error = %e, "could not record the end of a metadata call");
    }
}
