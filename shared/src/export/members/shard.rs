//! One backfill shard: lease, stream pages, send, checkpoint.

use super::backfill::{BackfillOptions, CHECKPOINT_ALLOWANCE, JobRun, RunStats, ShardEnd};
use super::delivery::{record_amazon_error, send_body};
use super::targets::TargetRef;
use crate::amazon::AmazonError;
use crate::domain::audience::{Batch, Batcher, MAX_BODY_BYTES, Patch, PatchOp};
use crate::export::ExportCtx;
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::erased_rows::drop_erased;
use crate::store::jobs::JobPurpose;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A page read running in the background; aborted if the shard stops before needing it.
pub(super) struct Prefetch(
    tokio::task::JoinHandle<Result<crate::store::ledger::LedgerPage, StoreError>>,
);

impl Prefetch {
    pub(super) async fn join(mut self) -> Result<crate::store::ledger::LedgerPage, StoreError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Aws(format!("ledger page task: {e}"))),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a shard's work ended in this invocation.
/// Works one shard: lease, stream pages, batch, send, checkpoint; until done, the deadline, or
/// an error.
pub(super) async fn work_shard(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    run: &JobRun,
    shard: u16,
    owner: &str,
    stats: &RunStats,
) -> ShardEnd {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
        return ShardEnd::Deadline;
    }
    let lease_ms = opts.lease.as_millis() as u64;
    let st = match ctx
        .jobs
        .lease_shard(dest, seg, shard, job.generation, owner, now_ms(), lease_ms)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => return ShardEnd::NotOurs,
        Err(e) => return ShardEnd::Store(e.to_string()),
    };
    let mut lease_until = now_ms() + lease_ms;
    // Pages of at most one body's worth of rows: memory stays the same whatever the segment's
    // size (DynamoDB's own 1 MB pages would hold ~16 000 rows).
    let page_limit = Some(opts.max_patches.max(100) as i32);
    let only_qualified = !job.include_removals;
    let fetch = |after: Option<String>| {
        let ledger = ctx.ledger.clone();
        let seg = seg.to_string();
        Prefetch(tokio::spawn(async move {
            ledger
                .page(&seg, shard, after.as_deref(), only_qualified, page_limit)
                .await
        }))
    };
    let mut next = Some(fetch(st.last_key.clone()));
    let mut batcher: Batcher<String> = Batcher::new(opts.max_patches, MAX_BODY_BYTES);
    let mut had_error = st.last_error.is_some();

    // Sends one batch and saves the checkpoint; Err = how the shard ends.
    macro_rules! flush {
        ($batch:expr) => {{
            let batch: Batch<String> = $batch;
            let n = batch.len() as u64;
            let last = batch.tags.last().cloned().unwrap_or_default();
            run.pacer.wait().await;
            // Never past the lease (a 413 split, a token refresh and retries included).
            let left = Duration::from_millis(lease_until.saturating_sub(now_ms()));
            let cap = left.saturating_sub(CHECKPOINT_ALLOWANCE).max(left / 2);
            let sent = tokio::time::timeout(cap, send_body(ctx, &run.account, batch.body))
                .await
                .unwrap_or(Err(AmazonError::Timeout));
            match sent {
                Ok(reqs) => {
                    stats.devices.fetch_add(n, Ordering::Relaxed);
                    stats.requests.fetch_add(reqs, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    lease_until = now_ms() + lease_ms;
                    if let Err(e) = ctx
                        .jobs
                        .checkpoint(dest, seg, shard, owner, &last, n, 1, lease_until)
                        .await
                    {
                        return match e {
                            StoreError::Conflict(_) => ShardEnd::NotOurs,
                            other => ShardEnd::Store(other.to_string()),
                        };
                    }
                    if had_error {
                        had_error = false;
                        let _ = ctx.jobs.clear_job_error(dest, seg, job.generation).await;
                        let _ = ctx.destinations.clear_mapping_error(dest, seg).await;
                    }
                }
                Err(e) => return shard_failed(ctx, run, shard, owner, e).await,
            }
        }};
    }

    loop {
        if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
            let _ = ctx.jobs.release_shard(dest, seg, shard, owner, None).await;
            return ShardEnd::Deadline;
        }
        // Renew the lease well before it runs out (long stretches of filtered rows).
        if now_ms() + lease_ms / 2 > lease_until {
            match ctx
                .jobs
                .lease_shard(dest, seg, shard, job.generation, owner, now_ms(), lease_ms)
                .await
            {
                Ok(Some(_)) => lease_until = now_ms() + lease_ms,
                Ok(None) => return ShardEnd::NotOurs,
                Err(e) => return ShardEnd::Store(e.to_string()),
            }
        }
        // The next page is read while this one is packed and sent.
        let Some(pending) = next.take() else {
            break;
        };
        let page = match pending.join().await {
            Ok(p) => p,
            Err(e) => {
                let _ = ctx
                    .jobs
                    .release_shard(dest, seg, shard, owner, Some(&e.to_string()))
                    .await;
                return ShardEnd::Store(e.to_string());
            }
        };
        next = page.last_key.clone().map(|k| fetch(Some(k)));
        // The page may predate an erasure's ledger step: no add of an erased device.
        let rows = match job.purpose {
            JobPurpose::Purge => page.rows,
            _ => match drop_erased(ctx.ledger.client(), ctx.ledger.table(), page.rows).await {
                Ok((rows, _)) => rows,
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ctx
                        .jobs
                        .release_shard(dest, seg, shard, owner, Some(&msg))
                        .await;
                    return ShardEnd::Store(msg);
                }
            },
        };
        for row in rows {
            let patch = Patch {
                // A purge removes every member the ledger knows of, whatever their state.
                op: PatchOp::for_status(row.qualified && job.purpose != JobPurpose::Purge),
                audience_ids: vec![job.audience_id],
                consent: row.consent,
                device: row.device,
            };
            let device = patch.device.clone();
            match batcher.push(&patch, device) {
                Ok(Some(full)) => {
                    flush!(full);
                    if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
                        // Rows after the checkpoint (in the batcher) are read again on resume.
                        let _ = ctx.jobs.release_shard(dest, seg, shard, owner, None).await;
                        return ShardEnd::Deadline;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // Cannot happen with validated ids; never let one row stall the shard.
                    tracing::error!(error = %e, "a ledger row does not fit in a patch body; skipped");
                }
            }
        }
    }
    if let Some(rest) = batcher.take() {
        flush!(rest);
    }
    let _ = had_error;
    match ctx.jobs.finish_shard(dest, seg, shard, owner).await {
        Ok(()) => ShardEnd::Finished,
        Err(StoreError::Conflict(_)) => ShardEnd::NotOurs,
        Err(e) => ShardEnd::Store(e.to_string()),
    }
}

/// Reacts to an Amazon error during a backfill batch (the checkpoint stays where it was).
pub(super) async fn shard_failed(
    ctx: &ExportCtx,
    run: &JobRun,
    shard: u16,
    owner: &str,
    e: AmazonError,
) -> ShardEnd {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    let msg = e.user_message();
    let target = TargetRef {
        destination_id: dest.to_string(),
        segment_id: seg.to_string(),
    };
    record_amazon_error(ctx, &run.account, std::slice::from_ref(&target), &e).await;
    let _ = ctx
        .jobs
        .release_shard(dest, seg, shard, owner, Some(&msg))
        .await;
    let fatal = matches!(
        e,
        AmazonError::Rejected { .. } | AmazonError::AccountNotFound { .. } | AmazonError::Lwa(_)
    );
    let stop_job = fatal || matches!(e, AmazonError::ReauthorizationRequired);
    if stop_job {
        run.stop.store(true, Ordering::Relaxed);
    }
    let _ = ctx
        .jobs
        .set_job_error(dest, seg, job.generation, &msg, fatal)
        .await;
    tracing::warn!(destination_id = %dest, segment_id = %seg, shard, error = %msg, "backfill batch failed");
    if fatal {
        ShardEnd::Fatal(msg)
    } else {
        ShardEnd::Paused(msg)
    }
}
