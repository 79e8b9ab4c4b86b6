//! Scheduled `{"task":"redrive"}` of parked audience patches.
//!
//! Each message's devices are re-read from the ledger and sent in their *current* state to the
//! mappings still active on the message's account (send, then verify), so a late redrive never
//! undoes a newer change. What cannot be delivered now (Amazon 5xx/429/timeouts, the account not
//! active, a store read failing) is sent back to the queue as a new message with a growing delay
//! (`store::parked_retry`), or to the dead-letter queue once older than the age limit, and the
//! received message is deleted: redrives never burn SQS receives, so an outage of hours does not
//! end in the dead-letter queue. A run never takes up the copies it re-enqueued itself.

use super::delivery::deliver;
use super::dirty_marks::mark_dirty;
use super::parking::{PARKED_KIND, ParkedPatch};
use super::targets::{Lookups, Target, route};
use crate::export::ExportCtx;
use crate::runtime::{Invocation, now_ms};
use crate::store::destinations::{MappingStatus, SegmentMapping};
use crate::store::ledger::LedgerRow;
use crate::store::parked::Parked;
use crate::store::parked_counts::{Counter, ParkedCounts};
use crate::store::parked_retry::{Next, ParkedRetry, RetryState};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Counters of one run.
#[derive(Default)]
struct Run {
    messages: u64,
    acked: u64,
    devices: u64,
    patches: u64,
    kept: u64,
    requeued: u64,
    dead_lettered: u64,
    errors: Vec<String>,
}

/// `{"task":"redrive"}` with the policy from the environment (`PARKED_RETRY_*`).
pub async fn run_redrive(ctx: &ExportCtx, inv: &Invocation) -> Result<Value, String> {
    let policy = ctx.options.parked_retry;
    run_redrive_with(ctx, inv, &policy).await
}

/// `{"task":"redrive"}` with an explicit retry policy (tests shrink its time scale).
pub async fn run_redrive_with(
    ctx: &ExportCtx,
    inv: &Invocation,
    policy: &ParkedRetry,
) -> Result<Value, String> {
    let margin = ctx
        .inline
        .backfill
        .safety_margin
        .min(Duration::from_secs(10));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut run = Run::default();
    while inv.remaining() > margin {
        let batch = ctx
            .parked
            .receive::<ParkedPatch>(10)
            .await
            .map_err(|e| e.to_string())?;
        let mut fresh = 0;
        for p in batch {
            if p.item.retry.last_run.as_deref() == Some(run_id.as_str()) {
                let _ = ctx.parked.release(&p.receipt_handle, Duration::ZERO).await;
                continue;
            }
            fresh += 1;
            run.messages += 1;
            if p.item.kind != PARKED_KIND && !p.item.is_unrouted() {
                run.errors.push(format!(
                    "message {} is not a parked patch; left for the DLQ",
                    p.message_id
                ));
                run.kept += 1;
                continue;
            }
            redrive_one(ctx, &p, policy, &run_id, &mut run).await?;
        }
        if fresh == 0 {
            break;
        }
    }
    Ok(json!({
        "messages": run.messages,
        "redriven": run.acked,
        "kept": run.kept,
        "requeued": run.requeued,
        "deadLettered": run.dead_lettered,
        "devices": run.devices,
        "patches": run.patches,
        "errors": run.errors,
    }))
}

async fn redrive_one(
    ctx: &ExportCtx,
    p: &Parked<ParkedPatch>,
    policy: &ParkedRetry,
    run_id: &str,
    run: &mut Run,
) -> Result<(), String> {
    let now = now_ms();
    let item = &p.item;
    if let Some(wait) = item.retry.wait(now) {
        // Received before its time (SQS delays at most 15 minutes): the rest of the wait.
        let mut copy = item.clone();
        copy.retry.last_run = Some(run_id.to_string());
        if ctx.parked.park_delayed(&copy, wait).await.is_ok() {
            ctx.parked
                .ack(&p.receipt_handle)
                .await
                .map_err(|e| e.to_string())?;
        }
        run.kept += 1;
        return Ok(());
    }
    let failed = match targets_and_rows(ctx, item).await {
        Err(e) => {
            run.errors.push(e.clone());
            vec![ParkedPatch {
                reason: e,
                ..item.clone()
            }]
        }
        Ok(mut routed) => {
            run.devices += routed.rows.len() as u64;
            let (targets, rows) = (&routed.targets, routed.rows);
            let mut report = deliver(ctx, &mut routed.lookups, targets, rows).await;
            run.patches += report.patches;
            run.errors.append(&mut report.errors);
            let mut failed = std::mem::take(&mut report.failed);
            if let Some(unknown) = routed.unknown {
                run.errors.push(unknown.reason.clone());
                failed.push(unknown);
            }
            failed
        }
    };
    let total = item.devices.len() as i64;
    let routed = routed_devices(item, &failed);
    let (later, dead) = requeue(ctx, item, failed, policy, now, run_id, run).await?;
    ctx.parked
        .ack(&p.receipt_handle)
        .await
        .map_err(|e| e.to_string())?;
    if later == 0 && dead == 0 {
        run.acked += 1;
    } else {
        run.kept += 1;
    }
    // The message's account (none for an unrouted message); devices it routed and parked again
    // now belong to an account: counted there.
    let counts = ParkedCounts::new(&ctx.accounts);
    let deltas = [
        (Counter::Patches, later - total),
        (Counter::PatchesDeadLettered, dead),
    ];
    counts.add_logged(&item.account_id, &deltas).await;
    let counter = if dead > 0 {
        Counter::PatchesDeadLettered
    } else {
        Counter::Patches
    };
    for (account_id, n) in routed {
        counts.add_logged(&account_id, &[(counter, n)]).await;
    }
    Ok(())
}

/// Devices per account among the patches an unrouted message left to park again (none for a
/// routed message: its counts move as a whole).
fn routed_devices(item: &ParkedPatch, failed: &[ParkedPatch]) -> BTreeMap<String, i64> {
    let mut per_account = BTreeMap::new();
    if item.is_unrouted() {
        for f in failed.iter().filter(|f| !f.is_unrouted()) {
            *per_account.entry(f.account_id.clone()).or_default() += f.devices.len() as i64;
        }
    }
    per_account
}

/// Sends what still failed back to the queue with its next delay, or to the dead-letter queue
/// once too old; returns the devices requeued and dead-lettered.
async fn requeue(
    ctx: &ExportCtx,
    item: &ParkedPatch,
    failed: Vec<ParkedPatch>,
    policy: &ParkedRetry,
    now: u64,
    run_id: &str,
    run: &mut Run,
) -> Result<(i64, i64), String> {
    let (mut later, mut dead) = (0i64, 0i64);
    for mut f in failed {
        let n = f.devices.len() as i64;
        match policy.after_failure(&item.retry, now, run_id) {
            Next::Later { delay, state } => {
                f.retry = state;
                ctx.parked
                    .park_delayed(&f, delay)
                    .await
                    .map_err(|e| format!("could not re-enqueue a parked patch: {e}"))?;
                later += n;
                run.requeued += 1;
            }
            Next::DeadLetter(why) => {
                let why = format!("{why}; last error: {}", f.reason);
                f.retry = RetryState::dead_lettered(&item.retry, now, &why);
                ctx.parked
                    .dead_letter_item(&f)
                    .await
                    .map_err(|e| format!("could not dead-letter a parked patch: {e}"))?;
                dead += n;
                run.dead_lettered += 1;
            }
        }
    }
    Ok((later, dead))
}

type Targets = BTreeMap<String, Vec<Target>>;

/// What a message resolves to: its targets, its devices' current ledger rows for them, and (an
/// unrouted message) the devices of segments some of whose targets are still unknown, to park
/// again as they were.
struct Routed {
    lookups: Lookups,
    targets: Targets,
    rows: Vec<LedgerRow>,
    unknown: Option<ParkedPatch>,
}

/// The message's targets (for an unrouted message, its segments' active targets) and its
/// devices' current ledger rows.
async fn targets_and_rows(ctx: &ExportCtx, item: &ParkedPatch) -> Result<Routed, String> {
    if !item.is_unrouted() {
        let (lookups, targets) = message_targets(ctx, item).await?;
        let rows = current_rows(ctx, item, &targets).await?;
        return Ok(Routed {
            lookups,
            targets,
            rows,
            unknown: None,
        });
    }
    let mut lookups = Lookups::default();
    let found = route(ctx, &mut lookups, item.devices.iter().map(|(seg, _)| seg)).await;
    let rows = current_rows(ctx, item, &found.targets).await?;
    // Never routed before, an unrouted device has no dirty mark yet: marked before its send, as
    // a delta's (rule 2 in `export::members`); a failed mark keeps the whole message parked.
    if !mark_dirty(ctx, &found.dirty_jobs, &rows).await.is_empty() {
        return Err("dirty mark failed".into());
    }
    let unknown = found.errors.last().map(|reason| ParkedPatch {
        devices: (item.devices.iter())
            .filter(|(seg, _)| found.unrouted.contains(seg))
            .cloned()
            .collect(),
        reason: reason.clone(),
        ..item.clone()
    });
    Ok(Routed {
        lookups,
        targets: found.targets,
        rows,
        unknown,
    })
}

/// The message's devices' current ledger rows, for the segments that have targets.
async fn current_rows(
    ctx: &ExportCtx,
    item: &ParkedPatch,
    targets: &Targets,
) -> Result<Vec<LedgerRow>, String> {
    let rows = ctx
        .ledger
        .get_many(&item.devices)
        .await
        .map_err(|e| format!("ledger read failed: {e}"))?;
    Ok(rows
        .into_iter()
        .filter(|r| targets.contains_key(&r.segment_id))
        .collect())
}

/// The message's targets still active on its account.
async fn message_targets(
    ctx: &ExportCtx,
    item: &ParkedPatch,
) -> Result<(Lookups, Targets), String> {
    let mut lookups = Lookups::default();
    let mut targets: Targets = BTreeMap::new();
    for t in &item.targets {
        let m = SegmentMapping {
            destination_id: t.destination_id.clone(),
            segment_id: t.segment_id.clone(),
            status: MappingStatus::Active,
            audience_id: None,
            external_audience_id: String::new(),
            audience_name: String::new(),
            audience_fees: Vec::new(),
            last_error: None,
            blocked_reason: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        match lookups.target(ctx, &m).await {
            // Only towards the account the message was parked for.
            Ok(Some(tg)) if tg.account_id == item.account_id => {
                targets.entry(tg.r.segment_id.clone()).or_default().push(tg)
            }
            Ok(_) => {}
            Err(e) => return Err(format!("mapping lookup failed: {e}")),
        }
    }
    Ok((lookups, targets))
}
