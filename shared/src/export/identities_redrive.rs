//! Scheduled `{"task":"redrive"}` of parked identity records (`PARKED_IDENTITIES_QUEUE_URL`).
//!
//! Same policy as parked conversions and audience patches (`store::parked_retry`): a message is
//! deleted once delivered, or once Amazon refused it (logged, never retried blindly). What cannot
//! be delivered now (Amazon 5xx/429/timeouts, the account not active) is sent back as a new
//! message with a growing delay, or to the dead-letter queue once older than the age limit, and
//! the received message is deleted: a redrive never burns SQS receives, so an outage of hours
//! does not end in the dead-letter queue. A run never takes up the copies it re-enqueued itself.
//! `{"task":"redrive-dlq"}` moves dead-lettered identity messages back (`crate::parked_dlq`).

use super::ExportCtx;
use super::identities::{PARKED_KIND, ParkedIdentities, queue, upload};
use crate::amazon::AmazonError;
use crate::amazon::privacy::HashedRecord;
use crate::runtime::{Invocation, now_ms};
use crate::store::accounts::AccountStatus;
use crate::store::parked::{Parked, ParkedQueue};
use crate::store::parked_retry::{Next, ParkedRetry, RetryState};
use serde_json::{Value, json};
use std::time::Duration;

/// Counters of one run.
#[derive(Default)]
struct Run {
    messages: u64,
    delivered: u64,
    refused: u64,
    kept: u64,
    requeued: u64,
    dead_lettered: u64,
}

/// `{"task":"redrive"}` of parked identities, with the policy from the environment.
pub async fn run_redrive(ctx: &ExportCtx, inv: &Invocation) -> Result<Value, String> {
    let policy = ctx.options.parked_retry;
    run_redrive_with(ctx, inv, &queue(ctx)?, &policy).await
}

/// The redrive of the identities queue `q` with an explicit policy (tests shrink its time scale).
pub async fn run_redrive_with(
    ctx: &ExportCtx,
    inv: &Invocation,
    q: &ParkedQueue,
    policy: &ParkedRetry,
) -> Result<Value, String> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut run = Run::default();
    while inv.remaining() > Duration::from_secs(10) {
        let batch = q
            .receive::<ParkedIdentities>(10)
            .await
            .map_err(|e| e.to_string())?;
        let mut fresh = 0;
        for p in batch {
            if p.item.retry.last_run.as_deref() == Some(run_id.as_str()) {
                let _ = q.release(&p.receipt_handle, Duration::ZERO).await;
                continue;
            }
            fresh += 1;
            run.messages += 1;
            redrive_one(ctx, q, &p, policy, &run_id, &mut run).await?;
        }
        if fresh == 0 {
            break;
        }
    }
    Ok(json!({
        "messages": run.messages, "delivered": run.delivered, "refused": run.refused,
        "kept": run.kept, "requeued": run.requeued, "deadLettered": run.dead_lettered,
    }))
}

async fn redrive_one(
    ctx: &ExportCtx,
    q: &ParkedQueue,
    p: &Parked<ParkedIdentities>,
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
        if q.park_delayed(&copy, wait).await.is_ok() {
            q.ack(&p.receipt_handle).await.map_err(|e| e.to_string())?;
        }
        run.kept += 1;
        return Ok(());
    }
    let failed = match attempt(ctx, item).await {
        Ok(()) => {
            run.delivered += 1;
            None
        }
        Err(Failure::Refused(e)) => {
            tracing::error!(message_id = %p.message_id, error = %e, "parked identity records refused by Amazon; dropped");
            run.refused += 1;
            None
        }
        Err(Failure::Later(reason, records)) => Some((reason, records)),
    };
    if let Some((reason, records)) = failed {
        let mut f = ParkedIdentities {
            kind: PARKED_KIND.into(),
            account_id: item.account_id.clone(),
            records,
            reason,
            retry: RetryState::default(),
        };
        match policy.after_failure(&item.retry, now, run_id) {
            Next::Later { delay, state } => {
                f.retry = state;
                q.park_delayed(&f, delay)
                    .await
                    .map_err(|e| format!("could not re-enqueue parked identity records: {e}"))?;
                run.requeued += 1;
            }
            Next::DeadLetter(why) => {
                let why = format!("{why}; last error: {}", f.reason);
                f.retry = item.retry.dead_lettered(now, &why);
                q.dead_letter_item(&f)
                    .await
                    .map_err(|e| format!("could not dead-letter parked identity records: {e}"))?;
                run.dead_lettered += 1;
            }
        }
        run.kept += 1;
    }
    q.ack(&p.receipt_handle).await.map_err(|e| e.to_string())
}

enum Failure {
    /// Amazon refused the records themselves (4xx): not retried.
    Refused(AmazonError),
    /// Not deliverable now: the reason (no personal data) and the records still to send.
    Later(String, Vec<HashedRecord>),
}

async fn attempt(ctx: &ExportCtx, item: &ParkedIdentities) -> Result<(), Failure> {
    let account = match ctx.accounts.get_account(&item.account_id).await {
        Ok(Some(a)) if a.status == AccountStatus::Active => a,
        Ok(_) => {
            return Err(Failure::Later(
                "account not active".into(),
                item.records.clone(),
            ));
        }
        Err(e) => {
            return Err(Failure::Later(
                format!("account lookup failed: {e}"),
                item.records.clone(),
            ));
        }
    };
    match upload(&ctx.amazon, &account, item.records.clone()).await {
        Ok(_) => Ok(()),
        Err((e @ (AmazonError::Rejected { .. } | AmazonError::AccountNotFound { .. }), _)) => {
            Err(Failure::Refused(e))
        }
        Err((e, rest)) => Err(Failure::Later(e.to_string(), rest)),
    }
}
