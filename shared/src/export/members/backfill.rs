//! Backfill jobs: options, queueing, and the scheduled run (slot, shards, drain).

use super::drain::drain_and_finish;
use super::shard::work_shard;
use super::targets::Lookups;
use crate::amazon::AmazonError;
use crate::amazon::ratelimit::Spacer;
use crate::export::ExportCtx;
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::destinations::{MappingStatus, SegmentMapping};
use crate::store::jobs::{BackfillJob, JobState};
use crate::store::ledger::LEDGER_SHARDS;
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use crate::settings::options::{BackfillOptions, CHECKPOINT_ALLOWANCE, default_lease};

/// Called once a mapping's audience exists (status Active): queue the historical backfill.
/// Idempotent: a running job for the same audience is left alone, a failed one is re-armed
/// (keeping its checkpoints), a finished one restarts (sending removals too).
pub async fn start_backfill(ctx: &ExportCtx, mapping: &SegmentMapping) -> Result<(), StoreError> {
    queue_backfill(ctx, mapping, false).await
}

/// Like [`start_backfill`], but a job that is still running is started over (new generation,
/// removals included). For a mapping that was not delivered to for a while (unblocked, revived):
/// rows the running scan already passed may have changed meanwhile without being marked dirty.
pub async fn restart_backfill(ctx: &ExportCtx, mapping: &SegmentMapping) -> Result<(), StoreError> {
    queue_backfill(ctx, mapping, true).await
}

pub(super) async fn queue_backfill(
    ctx: &ExportCtx,
    mapping: &SegmentMapping,
    restart_running: bool,
) -> Result<(), StoreError> {
    let Some(audience_id) = mapping.audience_id else {
        return Ok(());
    };
    if mapping.status != MappingStatus::Active {
        return Ok(());
    }
    let Some(dest) = ctx
        .destinations
        .get_destination(&mapping.destination_id)
        .await?
    else {
        return Err(StoreError::Corrupt(format!(
            "destination {} of the mapping does not exist",
            mapping.destination_id
        )));
    };
    crate::export::refresh::register(ctx, mapping, &dest, None).await?;
    let outcome = ctx
        .jobs
        .ensure_job(
            &mapping.destination_id,
            &mapping.segment_id,
            &dest.account_id,
            audience_id,
            LEDGER_SHARDS,
            restart_running,
        )
        .await?;
    tracing::info!(
        destination_id = %mapping.destination_id,
        segment_id = %mapping.segment_id,
        outcome = ?outcome,
        "backfill queued"
    );
    Ok(())
}

/// How a shard's work ended in this invocation.
#[derive(Debug)]
pub(super) enum ShardEnd {
    Finished,
    /// Deadline close: stopped after a checkpoint.
    Deadline,
    /// Someone else holds it (or the lease was lost).
    NotOurs,
    /// Amazon failed in a way that needs a later run (checkpoint kept).
    Paused(String),
    /// Needs a person: the job is failed.
    Fatal(String),
    Store(String),
}

#[derive(Default)]
pub(super) struct RunStats {
    pub(super) devices: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) batches: AtomicU64,
}

pub(super) struct JobRun {
    pub(super) job: BackfillJob,
    pub(super) account: IntegratedAccount,
    pub(super) stop: AtomicBool,
    pub(super) pacer: Arc<Spacer>,
}

/// Scheduled `{"task":"backfill"}`: continue backfill jobs until the deadline margin. Returns a
/// JSON summary.
pub async fn run_backfill(ctx: &ExportCtx, inv: &Invocation) -> Result<Value, String> {
    run_backfill_with(ctx, inv, &ctx.inline.backfill).await
}

/// [`run_backfill`] with explicit options (tests, the benchmark).
pub async fn run_backfill_with(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
) -> Result<Value, String> {
    run_jobs(ctx, inv, opts, None).await
}

/// The creating request's part (`export::destinations`): continues only the backfill jobs of
/// `mappings` (`(destinationId, segmentId)`), through exactly the scheduled run's path (a backfill
/// slot, shard leases, a checkpoint after each acknowledged batch, the drain), until `inv`'s
/// deadline minus `opts.safety_margin`; the caller shortens `inv` to its slice. Jobs are read
/// by key (consistent), not from the eventually consistent index of active jobs, since they were
/// queued a moment ago. What is left is resumed by the scheduled run from the checkpoints.
pub async fn run_backfill_for(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    mappings: &[(String, String)],
) -> Result<Value, String> {
    run_jobs(ctx, inv, opts, Some(mappings)).await
}

pub(super) async fn run_jobs(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    only: Option<&[(String, String)]>,
) -> Result<Value, String> {
    let started = std::time::Instant::now();
    let owner = format!("bf-{}", uuid::Uuid::new_v4().simple());
    // A slot until our deadline: a crashed invocation's slot frees itself when it would have
    // been killed anyway.
    let slot = ctx
        .jobs
        .lease_slot(opts.max_invocations, &owner, now_ms(), inv.deadline_ms)
        .await
        .map_err(|e| e.to_string())?;
    let Some(slot) = slot else {
        return Ok(
            json!({"jobs": 0, "skipped": "every backfill slot is held by a running invocation"}),
        );
    };
    let out = backfill_in_slot(ctx, inv, opts, &owner, started, only).await;
    if let Err(e) = ctx.jobs.release_slot(slot, &owner).await {
        tracing::warn!(error = %e, "could not release the backfill slot");
    }
    out
}

pub(super) async fn backfill_in_slot(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    owner: &str,
    started: std::time::Instant,
    only: Option<&[(String, String)]>,
) -> Result<Value, String> {
    let owner = owner.to_string();
    let pacer = Arc::new(Spacer::per_second(
        opts.patch_rps / f64::from(opts.max_invocations.max(1)),
    ));
    let jobs = load_jobs(ctx, only).await?;
    let stats = Arc::new(RunStats::default());
    let mut skipped: Vec<Value> = Vec::new();
    let mut runs: Vec<Arc<JobRun>> = Vec::new();
    let mut lookups = Lookups::default();
    for job in jobs.into_iter().filter(|j| j.state == JobState::Running) {
        match prepare_run(ctx, &mut lookups, job).await? {
            Ok((account, job)) => runs.push(Arc::new(JobRun {
                job,
                account,
                stop: AtomicBool::new(false),
                pacer: pacer.clone(),
            })),
            Err(skip) => skipped.push(skip),
        }
    }

    let tasks = shard_tasks(ctx, &runs).await?;
    let ends: Vec<(Arc<JobRun>, u16, ShardEnd)> = futures::stream::iter(tasks)
        .map(|(run, shard)| {
            let stats = stats.clone();
            let owner = owner.as_str();
            async move {
                let end = work_shard(ctx, inv, opts, &run, shard, owner, &stats).await;
                (run, shard, end)
            }
        })
        .buffer_unordered(opts.parallel_shards.max(1))
        .collect()
        .await;

    let mut deadline_hit = false;
    let mut errors: Vec<String> = Vec::new();
    for (_, shard, end) in &ends {
        match end {
            ShardEnd::Deadline => deadline_hit = true,
            ShardEnd::Paused(m) | ShardEnd::Fatal(m) | ShardEnd::Store(m) => {
                errors.push(format!("shard {shard}: {m}"));
            }
            _ => {}
        }
    }

    // Jobs whose shards are all done: drain the dirty set, then finish.
    let mut finished = 0;
    for run in &runs {
        match finish_job(ctx, inv, opts, run, &owner, &stats).await? {
            Some(Ok(true)) => finished += 1,
            Some(Ok(false)) => deadline_hit |= inv.remaining() < opts.safety_margin,
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }

    let outcome = RunOutcome {
        jobs: runs.len(),
        finished,
        deadline_hit,
        skipped,
        errors,
    };
    Ok(summary(ctx, started, &stats, &ends, outcome))
}

/// What a run did, for its summary.
struct RunOutcome {
    jobs: usize,
    finished: usize,
    deadline_hit: bool,
    skipped: Vec<Value>,
    errors: Vec<String>,
}

/// The run's JSON summary, and its metrics.
fn summary(
    ctx: &ExportCtx,
    started: std::time::Instant,
    stats: &RunStats,
    ends: &[(Arc<JobRun>, u16, ShardEnd)],
    o: RunOutcome,
) -> Value {
    let mut m = crate::telemetry::Metrics::new(ctx.metrics_fn);
    m.count("BackfillDevicesSent", stats.devices.load(Ordering::Relaxed))
        .count("BackfillRequests", stats.requests.load(Ordering::Relaxed))
        .millis("BackfillRunMs", started.elapsed().as_millis() as f64);
    m.emit();
    json!({
        "jobs": o.jobs,
        "shardsWorked": ends.iter().filter(|e| !matches!(e.2, ShardEnd::NotOurs)).count(),
        "shardsFinished": ends.iter().filter(|e| matches!(e.2, ShardEnd::Finished)).count(),
        "jobsFinished": o.finished,
        "devicesSent": stats.devices.load(Ordering::Relaxed),
        "batches": stats.batches.load(Ordering::Relaxed),
        "requests": stats.requests.load(Ordering::Relaxed),
        "stoppedForDeadline": o.deadline_hit,
        "skipped": o.skipped,
        "errors": o.errors,
        "ms": started.elapsed().as_millis() as u64,
    })
}

/// The active jobs, or only those of `only` (read by key).
async fn load_jobs(
    ctx: &ExportCtx,
    only: Option<&[(String, String)]>,
) -> Result<Vec<BackfillJob>, String> {
    Ok(match only {
        None => ctx.jobs.active_jobs().await.map_err(|e| e.to_string())?,
        Some(keys) => {
            let mut jobs = Vec::with_capacity(keys.len());
            for (dest, seg) in keys {
                if let Some(j) = ctx
                    .jobs
                    .get_job(dest, seg)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    jobs.push(j);
                }
            }
            jobs
        }
    })
}

/// A running job's account when its mapping is still active with the job's audience and the
/// account is active; otherwise the `skipped` entry (and the job's error recorded).
async fn prepare_run(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    job: BackfillJob,
) -> Result<Result<(IntegratedAccount, BackfillJob), Value>, String> {
    let skip = |job: &BackfillJob, reason: &str| json!({"destinationId": job.destination_id, "segmentId": job.segment_id, "reason": reason});
    // The mapping must still be active with the job's audience.
    let mapping = ctx
        .destinations
        .get_mapping(&job.destination_id, &job.segment_id)
        .await
        .map_err(|e| e.to_string())?;
    let live = crate::export::purge::job_is_live(&job, mapping.as_ref());
    if !live {
        let gone = mapping.as_ref().is_none_or(|m| {
            m.status == MappingStatus::Removed || m.audience_id != Some(job.audience_id)
        });
        if gone {
            ctx.jobs
                .set_job_error(
                    &job.destination_id,
                    &job.segment_id,
                    job.generation,
                    "the mapping was removed or changed audience",
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(Err(skip(&job, "mapping not active")));
    }
    let account = lookups
        .account(ctx, &job.account_id)
        .await
        .map_err(|e| e.to_string())?;
    match account {
        Some(a) if a.status == AccountStatus::Active => Ok(Ok((a, job))),
        Some(_) => {
            let msg = AmazonError::ReauthorizationRequired.user_message();
            let _ = ctx
                .jobs
                .set_job_error(
                    &job.destination_id,
                    &job.segment_id,
                    job.generation,
                    &msg,
                    false,
                )
                .await;
            Ok(Err(skip(&job, "account needs reauthorization")))
        }
        None => {
            let msg = format!("account {} is not linked", job.account_id);
            let _ = ctx
                .jobs
                .set_job_error(
                    &job.destination_id,
                    &job.segment_id,
                    job.generation,
                    &msg,
                    true,
                )
                .await;
            let _ = ctx
                .destinations
                .set_mapping_error(&job.destination_id, &job.segment_id, &msg)
                .await;
            Ok(Err(skip(&job, "account not linked")))
        }
    }
}

/// Shards to try, job by job (oldest job first), skipping ones visibly done or leased.
async fn shard_tasks(
    ctx: &ExportCtx,
    runs: &[Arc<JobRun>],
) -> Result<Vec<(Arc<JobRun>, u16)>, String> {
    let mut tasks: Vec<(Arc<JobRun>, u16)> = Vec::new();
    for run in runs {
        let shards = ctx
            .jobs
            .shards(&run.job.destination_id, &run.job.segment_id)
            .await
            .map_err(|e| e.to_string())?;
        let now = now_ms();
        for s in shards {
            if !s.done && s.generation == run.job.generation && s.lease_until_ms < now {
                tasks.push((run.clone(), s.shard));
            }
        }
    }
    Ok(tasks)
}

/// Drains and finishes a job whose shards are all done; `None` when it was not tried (stopped,
/// deadline close, shards left).
async fn finish_job(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    run: &JobRun,
    owner: &str,
    stats: &RunStats,
) -> Result<Option<Result<bool, String>>, String> {
    if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
        return Ok(None);
    }
    let shards = ctx
        .jobs
        .shards(&run.job.destination_id, &run.job.segment_id)
        .await
        .map_err(|e| e.to_string())?;
    if shards.iter().any(|s| !s.done) {
        return Ok(None);
    }
    Ok(Some(
        drain_and_finish(ctx, inv, opts, run, owner, stats).await,
    ))
}
