//! A creating request's bounded slice of work on its own destination (see the module doc of
//! `super`).

use super::audiences::Outcome;
use super::audiences::create_one;
use crate::export::ExportCtx;
use crate::export::members;
use crate::runtime::Invocation;
use crate::store::destinations::{MappingStatus, PendingAudience, SegmentMapping};
use serde_json::Value;

/// What a creating request did within its slice (logged and counted in metrics; the answer shows
/// the mappings themselves).
#[derive(Debug, Default)]
pub(super) struct InlineSummary {
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
pub(super) async fn work_inline(
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
    let creation_stop =
        now + ((stop_at - now) as f64 * crate::export::AUDIENCE_CREATION_SHARE) as u64;
    create_own_audiences(ctx, mappings, creation_stop, &mut summary).await;
    // 2. The backfill jobs of its mappings that are active now (created above, or revived with
    //    their audience), on the scheduled run's path, until the slice ends.
    let targets = active_targets(ctx, mappings).await;
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
    report(ctx, &summary);
    Some(summary)
}

/// Creates the queued audiences of `mappings` until `creation_stop` (epoch ms).
async fn create_own_audiences(
    ctx: &ExportCtx,
    mappings: &[SegmentMapping],
    creation_stop: u64,
    summary: &mut InlineSummary,
) {
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
}

/// The mappings of `mappings` that are `active` with an audience now (read again).
async fn active_targets(ctx: &ExportCtx, mappings: &[SegmentMapping]) -> Vec<(String, String)> {
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
    targets
}

/// Metrics and the log line of a slice.
fn report(ctx: &ExportCtx, summary: &InlineSummary) {
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
}
