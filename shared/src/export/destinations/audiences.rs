//! Audience creation: the queue of pending audiences, created one paced call at a time.

use super::fields::MAX_AUDIENCE_DESCRIPTION;
use super::pacing::{METADATA_SPACING_MS, pace_by, paced_call_done};
use crate::amazon::{AmazonError, NewAudience};
use crate::export::ExportCtx;
use crate::export::errors::active_account;
use crate::export::members;
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::destinations::{
    Destination, MappingStatus, PendingAudience, Segment, SegmentMapping,
};
use std::time::Duration;

/// How long one invocation holds a mapping while it creates the audience.
pub(super) const CREATION_LEASE_MS: i64 = 120_000;

/// When to try again after a retryable creation failure.
pub(super) const CREATION_RETRY_MS: i64 = 60_000;

/// Audience creations one task invocation looks at, at most.
pub(super) const CREATION_BATCH: i32 = 200;

/// The audience description: the segment's, or a generated one (Amazon requires the field).
pub(in crate::export) fn audience_description(seg: &Segment) -> String {
    let d = seg.description.trim();
    if d.is_empty() {
        format!("adsync segment {}", seg.segment_id)
    } else {
        d.chars().take(MAX_AUDIENCE_DESCRIPTION).collect()
    }
}

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

pub(super) enum Outcome {
    Created,
    Failed,
    RetryLater,
    Skipped,
    /// No metadata slot before `slot_by`: the claim was given back, the entry stays queued.
    NoSlot,
}

/// Creates one queued audience: claim, paced call, record, backfill queued, entry dropped.
/// `slot_by` (epoch ms): only with a metadata slot no later than that (a request's slice).
pub(super) async fn create_one(
    ctx: &ExportCtx,
    p: &PendingAudience,
    slot_by: Option<i64>,
) -> Result<Outcome, StoreError> {
    let store = &ctx.destinations;
    let (dst, seg_id) = (p.destination_id.as_str(), p.segment_id.as_str());
    if !still_to_create(ctx, p).await? {
        return Ok(Outcome::Skipped);
    }
    let Some(d) = store.get_destination(dst).await? else {
        store.dequeue_audience(p).await?;
        return Ok(Outcome::Skipped);
    };
    // No call for an account that cannot be used: say why on the mapping and keep it queued
    // (relinking the account lets the next run create the audience).
    let found = ctx.accounts.get_account(&d.account_id).await?;
    let account = match active_account(&d.account_id, found) {
        Ok(a) => a,
        Err(e) => {
            store
                .fail_creation(dst, seg_id, &e.message, false, CREATION_RETRY_MS * 5)
                .await?;
            return Ok(Outcome::RetryLater);
        }
    };
    let Some(m) = store.claim_creation(dst, seg_id, CREATION_LEASE_MS).await? else {
        // Another invocation holds it, or it waits for its retry time.
        return Ok(Outcome::Skipped);
    };
    let new = new_audience(ctx, &d, &account, &m).await?;
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
        Err(e) => creation_failed(ctx, p, &account, &e).await,
    }
}

/// Whether the queued entry still needs an audience; when not, the entry is dropped (and a
/// backfill a previous run missed is queued).
async fn still_to_create(ctx: &ExportCtx, p: &PendingAudience) -> Result<bool, StoreError> {
    let store = &ctx.destinations;
    let (dst, seg_id) = (p.destination_id.as_str(), p.segment_id.as_str());
    let Some(current) = store.get_mapping(dst, seg_id).await? else {
        store.dequeue_audience(p).await?;
        return Ok(false);
    };
    if current.status == MappingStatus::Pending && current.audience_id.is_none() {
        return Ok(true);
    }
    // Pending or active with an audience: a previous run created it but may have stopped before
    // queueing the backfill. Only then: a stale entry met after another caller (a creating
    // request) created the audience and already ran its backfill must not start that backfill
    // over. Blocked, failed or removed since it was queued: nothing to create now (unblocking or
    // mapping again queues it anew).
    if current.status == MappingStatus::Active
        && current.audience_id.is_some()
        && ctx
            .jobs
            .get_job(dst, seg_id)
            .await?
            .is_none_or(|j| Some(j.audience_id) != current.audience_id)
    {
        members::start_backfill(ctx, &current).await?;
    }
    store.dequeue_audience(p).await?;
    Ok(false)
}

/// The audience to create for the claimed mapping `m` of destination `d`.
async fn new_audience(
    ctx: &ExportCtx,
    d: &Destination,
    account: &IntegratedAccount,
    m: &SegmentMapping,
) -> Result<NewAudience, StoreError> {
    let description =
        crate::export::audience_meta::description_for(ctx, &d.destination_id, &m.segment_id)
            .await?;
    Ok(NewAudience {
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
    })
}

/// Records a failed creation on the mapping: Amazon refusing moves it to `failed` (entry
/// dropped); a revoked login marks the account; the rest waits for a later try.
async fn creation_failed(
    ctx: &ExportCtx,
    p: &PendingAudience,
    account: &IntegratedAccount,
    e: &AmazonError,
) -> Result<Outcome, StoreError> {
    let store = &ctx.destinations;
    let (dst, seg_id) = (p.destination_id.as_str(), p.segment_id.as_str());
    let message = e.user_message();
    tracing::warn!(destination = %dst, segment = %seg_id, error = %e, "audience creation failed");
    let wait = match e {
        AmazonError::ReauthorizationRequired => {
            ctx.accounts
                .mark_reauthorization_required(&account.token_secret)
                .await?;
            CREATION_RETRY_MS * 5
        }
        AmazonError::AccountNotFound { .. }
        | AmazonError::Rejected { .. }
        | AmazonError::PayloadTooLarge { .. } => {
            store.fail_creation(dst, seg_id, &message, true, 0).await?;
            store.dequeue_audience(p).await?;
            return Ok(Outcome::Failed);
        }
        AmazonError::Throttled { retry_after, .. } => retry_after
            .map(|d| d.as_millis() as i64)
            .unwrap_or(CREATION_RETRY_MS),
        _ => CREATION_RETRY_MS,
    };
    store
        .fail_creation(dst, seg_id, &message, false, wait)
        .await?;
    Ok(Outcome::RetryLater)
}
