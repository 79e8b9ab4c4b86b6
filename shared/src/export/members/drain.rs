//! The dirty-set drain that finishes a backfill job.

use super::LEDGER_WRITE_CONCURRENCY;
use super::backfill::{BackfillOptions, JobRun, RunStats};
use super::delivery::deliver;
use super::targets::{Lookups, Target, TargetRef};
use crate::export::ExportCtx;
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::erased_rows::drop_erased;
use crate::store::jobs::{DirtyDevice, JobPurpose};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Re-sends the job's dirty devices from the ledger's current state, then finishes the job.
/// `Ok(false)` when it could not finish now (lease held elsewhere, deadline, send failure).
pub(super) async fn drain_and_finish(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    run: &JobRun,
    owner: &str,
    stats: &RunStats,
) -> Result<bool, String> {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    let lease_ms = opts.lease.as_millis() as u64;
    if !ctx
        .jobs
        .lease_job(dest, seg, job.generation, owner, now_ms(), lease_ms)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(false);
    }
    let (targets, mut lookups) = job_target(run);
    // From here on, deltas stop marking devices dirty: every scan batch was acknowledged, so
    // their own sends come later and win. One pass over the dirty set (a cursor, never back to
    // the start) therefore covers every mark that matters, and a steady stream of deltas cannot
    // keep the job from finishing.
    if !job.draining {
        match ctx.jobs.set_draining(dest, seg, owner).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut cursor: Option<String> = None;
    loop {
        // A purge re-sends nothing: its mapping is removed, and a dirty entry left by an
        // earlier pass would send an add.
        if job.purpose == JobPurpose::Purge {
            break;
        }
        if inv.remaining() < opts.safety_margin {
            let _ = ctx.jobs.release_job(dest, seg, owner).await;
            return Ok(false);
        }
        let (dirty, next) = ctx
            .jobs
            .dirty_page(dest, seg, cursor.as_deref(), 500)
            .await
            .map_err(|e| e.to_string())?;
        if dirty.is_empty() && next.is_none() {
            break;
        }
        cursor = next.or_else(|| dirty.last().map(|d| d.device.clone()));
        if dirty.is_empty() {
            continue;
        }
        // Renew the job lease for this round.
        if !ctx
            .jobs
            .lease_job(dest, seg, job.generation, owner, now_ms(), lease_ms)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        resend_dirty(ctx, run, &mut lookups, &targets, owner, stats, dirty).await?;
    }
    match ctx.jobs.finish_job(dest, seg, job.generation, owner).await {
        Ok(()) => {
            tracing::info!(destination_id = %dest, segment_id = %seg, "backfill finished");
            Ok(true)
        }
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The job's one target, and lookups that already know its account.
fn job_target(run: &JobRun) -> (BTreeMap<String, Vec<Target>>, Lookups) {
    let job = &run.job;
    let target = Target {
        r: TargetRef {
            destination_id: job.destination_id.clone(),
            segment_id: job.segment_id.clone(),
        },
        audience_id: job.audience_id,
        account_id: job.account_id.clone(),
    };
    let targets: BTreeMap<String, Vec<Target>> =
        BTreeMap::from([(job.segment_id.clone(), vec![target])]);
    let mut lookups = Lookups::default();
    lookups
        .accounts
        .insert(job.account_id.clone(), Some(run.account.clone()));
    (targets, lookups)
}

/// Re-sends one page of dirty devices from the ledger's current state, then deletes their
/// entries. A failed send keeps the entries (a later run drains them again) and fails the drain.
async fn resend_dirty(
    ctx: &ExportCtx,
    run: &JobRun,
    lookups: &mut Lookups,
    targets: &BTreeMap<String, Vec<Target>>,
    owner: &str,
    stats: &RunStats,
    dirty: Vec<DirtyDevice>,
) -> Result<(), String> {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    let keys: Vec<(String, String)> = dirty
        .iter()
        .map(|d| (d.segment_id.clone(), d.device.clone()))
        .collect();
    let rows = ctx
        .ledger
        .get_many(&keys)
        .await
        .map_err(|e| e.to_string())?;
    let (rows, _) = drop_erased(ctx.ledger.client(), ctx.ledger.table(), rows)
        .await
        .map_err(|e| e.to_string())?;
    let report = deliver(ctx, lookups, targets, rows).await;
    stats.devices.fetch_add(report.patches, Ordering::Relaxed);
    stats.requests.fetch_add(report.requests, Ordering::Relaxed);
    if !report.failed.is_empty() || !report.errors.is_empty() {
        // Keep the dirty entries; a later run drains them again.
        let msg = report
            .errors
            .first()
            .cloned()
            .unwrap_or_else(|| "dirty devices could not be sent".into());
        let _ = ctx
            .jobs
            .set_job_error(dest, seg, job.generation, &msg, false)
            .await;
        let _ = ctx.jobs.release_job(dest, seg, owner).await;
        return Err(format!("drain of {dest}/{seg}: {msg}"));
    }
    // Owned items: a closure over borrowed ones trips the Send check of the task's future.
    let cleared: Vec<Result<(), StoreError>> = futures::stream::iter(dirty.clone())
        .map(|d| async move { ctx.jobs.clear_dirty(dest, seg, &d).await })
        .buffer_unordered(LEDGER_WRITE_CONCURRENCY)
        .collect()
        .await;
    cleared
        .into_iter()
        .collect::<Result<(), _>>()
        .map_err(|e| e.to_string())?;
    ctx.jobs
        .add_drained(dest, seg, owner, dirty.len() as u64)
        .await
        .map_err(|e| e.to_string())
}
