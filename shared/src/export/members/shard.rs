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
use crate::store::ledger::LedgerRow;
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

/// One shard's work in this invocation: its lease and what it needs to send.
struct ShardWork<'a> {
    ctx: &'a ExportCtx,
    inv: &'a Invocation,
    opts: &'a BackfillOptions,
    run: &'a JobRun,
    shard: u16,
    owner: &'a str,
    stats: &'a RunStats,
    lease_ms: u64,
    lease_until: u64,
    had_error: bool,
}

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
    let mut w = ShardWork {
        ctx,
        inv,
        opts,
        run,
        shard,
        owner,
        stats,
        lease_ms,
        lease_until: now_ms() + lease_ms,
        had_error: st.last_error.is_some(),
    };
    match w.stream(st.last_key.clone()).await {
        Ok(()) => w.finish().await,
        Err(end) => end,
    }
}

impl<'a> ShardWork<'a> {
    fn keys(&self) -> (&'a str, &'a str) {
        (&self.run.job.destination_id, &self.run.job.segment_id)
    }

    fn out_of_time(&self) -> bool {
        self.run.stop.load(Ordering::Relaxed) || self.inv.remaining() < self.opts.safety_margin
    }

    /// Gives the shard back (with the error, if any) and ends its work as `end`.
    async fn release(&self, error: Option<&str>, end: ShardEnd) -> ShardEnd {
        let (dest, seg) = self.keys();
        let _ = self
            .ctx
            .jobs
            .release_shard(dest, seg, self.shard, self.owner, error)
            .await;
        end
    }

    /// A page of the shard read in the background, after `after`.
    fn fetch(&self, after: Option<String>) -> Prefetch {
        // Pages of at most one body's worth of rows: memory stays the same whatever the
        // segment's size (DynamoDB's own 1 MB pages would hold ~16 000 rows).
        let page_limit = Some(self.opts.max_patches.max(100) as i32);
        let only_qualified = !self.run.job.include_removals;
        let ledger = self.ctx.ledger.clone();
        let seg = self.run.job.segment_id.clone();
        let shard = self.shard;
        Prefetch(tokio::spawn(async move {
            ledger
                .page(&seg, shard, after.as_deref(), only_qualified, page_limit)
                .await
        }))
    }

    /// Streams the shard from `after`, page by page, sending full bodies; `Err` = how the shard
    /// ends early.
    async fn stream(&mut self, after: Option<String>) -> Result<(), ShardEnd> {
        let mut next = Some(self.fetch(after));
        let mut batcher: Batcher<String> = Batcher::new(self.opts.max_patches, MAX_BODY_BYTES);
        loop {
            if self.out_of_time() {
                return Err(self.release(None, ShardEnd::Deadline).await);
            }
            self.renew_lease().await?;
            // The next page is read while this one is packed and sent.
            let Some(pending) = next.take() else {
                break;
            };
            let page = match pending.join().await {
                Ok(p) => p,
                Err(e) => {
                    let msg = e.to_string();
                    return Err(self.release(Some(&msg), ShardEnd::Store(msg.clone())).await);
                }
            };
            next = page.last_key.clone().map(|k| self.fetch(Some(k)));
            for row in self.sendable(page.rows).await? {
                self.pack(&mut batcher, row).await?;
            }
        }
        if let Some(rest) = batcher.take() {
            self.flush(rest).await?;
        }
        Ok(())
    }

    /// Renews the lease well before it runs out (long stretches of filtered rows).
    async fn renew_lease(&mut self) -> Result<(), ShardEnd> {
        if now_ms() + self.lease_ms / 2 <= self.lease_until {
            return Ok(());
        }
        let (dest, seg) = self.keys();
        let job = &self.run.job;
        match self
            .ctx
            .jobs
            .lease_shard(
                dest,
                seg,
                self.shard,
                job.generation,
                self.owner,
                now_ms(),
                self.lease_ms,
            )
            .await
        {
            Ok(Some(_)) => {
                self.lease_until = now_ms() + self.lease_ms;
                Ok(())
            }
            Ok(None) => Err(ShardEnd::NotOurs),
            Err(e) => Err(ShardEnd::Store(e.to_string())),
        }
    }

    /// The page's rows to send. The page may predate an erasure's ledger step: no add of an
    /// erased device.
    async fn sendable(&self, rows: Vec<LedgerRow>) -> Result<Vec<LedgerRow>, ShardEnd> {
        if self.run.job.purpose == JobPurpose::Purge {
            return Ok(rows);
        }
        let ledger = &self.ctx.ledger;
        match drop_erased(ledger.client(), ledger.table(), rows).await {
            Ok((rows, _)) => Ok(rows),
            Err(e) => {
                let msg = e.to_string();
                Err(self.release(Some(&msg), ShardEnd::Store(msg.clone())).await)
            }
        }
    }

    /// Adds a row's patch; sends the body it fills.
    async fn pack(
        &mut self,
        batcher: &mut Batcher<String>,
        row: LedgerRow,
    ) -> Result<(), ShardEnd> {
        let job = &self.run.job;
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
                self.flush(full).await?;
                if self.out_of_time() {
                    // Rows after the checkpoint (in the batcher) are read again on resume.
                    return Err(self.release(None, ShardEnd::Deadline).await);
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Cannot happen with validated ids; never let one row stall the shard.
                tracing::error!(error = %e, "a ledger row does not fit in a patch body; skipped");
            }
        }
        Ok(())
    }

    /// Sends one batch and saves the checkpoint; `Err` = how the shard ends.
    async fn flush(&mut self, batch: Batch<String>) -> Result<(), ShardEnd> {
        let n = batch.len() as u64;
        let last = batch.tags.last().cloned().unwrap_or_default();
        self.run.pacer.wait().await;
        // Never past the lease (a 413 split, a token refresh and retries included).
        let left = Duration::from_millis(self.lease_until.saturating_sub(now_ms()));
        let cap = left.saturating_sub(CHECKPOINT_ALLOWANCE).max(left / 2);
        let sent = tokio::time::timeout(cap, send_body(self.ctx, &self.run.account, batch.body))
            .await
            .unwrap_or(Err(AmazonError::Timeout));
        let reqs = match sent {
            Ok(reqs) => reqs,
            Err(e) => return Err(shard_failed(self.ctx, self.run, self.shard, self.owner, e).await),
        };
        self.stats.devices.fetch_add(n, Ordering::Relaxed);
        self.stats.requests.fetch_add(reqs, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.lease_until = now_ms() + self.lease_ms;
        let (dest, seg) = self.keys();
        let jobs = &self.ctx.jobs;
        if let Err(e) = jobs
            .checkpoint(
                dest,
                seg,
                self.shard,
                self.owner,
                &last,
                n,
                1,
                self.lease_until,
            )
            .await
        {
            return Err(match e {
                StoreError::Conflict(_) => ShardEnd::NotOurs,
                other => ShardEnd::Store(other.to_string()),
            });
        }
        if self.had_error {
            self.had_error = false;
            let _ = jobs
                .clear_job_error(dest, seg, self.run.job.generation)
                .await;
            let _ = self.ctx.destinations.clear_mapping_error(dest, seg).await;
        }
        Ok(())
    }

    /// Marks the shard done.
    async fn finish(&self) -> ShardEnd {
        let (dest, seg) = self.keys();
        match self
            .ctx
            .jobs
            .finish_shard(dest, seg, self.shard, self.owner)
            .await
        {
            Ok(()) => ShardEnd::Finished,
            Err(StoreError::Conflict(_)) => ShardEnd::NotOurs,
            Err(e) => ShardEnd::Store(e.to_string()),
        }
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
