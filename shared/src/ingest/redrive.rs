//! The scheduled `{"task":"redrive"}` of parked conversions.
//!
//! Each received message is settled as a whole, and then deleted: its events are taken from the
//! dedupe store (`PARKED` → `IN_PROGRESS`; `COMPLETED` → only acknowledged, so a message redriven
//! twice is delivered once; taken only while the stored fingerprint is the parked copy's, so a
//! copy a correction replaced meanwhile is acknowledged unsent, `superseded`) and sent. What
//! became of each event:
//!
//! - its MAID erased at or after the event's time → claim completed, never sent
//!   (`super::erased`);
//! - accepted → claim completed;
//! - refused by Amazon for good (4xx on the event itself) → claim released and the event put on
//!   the dead-letter queue with Amazon's errors, where `redrive-dlq` can move it back;
//! - not deliverable now (5xx, 429, timeout, the account not active, the token being refreshed,
//!   the claim busy) → sent back to the queue as a new message with a growing delay
//!   (`store::parked_retry`), or to the dead-letter queue once older than the age limit.
//!
//! A message is deleted only after its remainder was written to a queue; if that fails it stays
//! and SQS hands it back (the dedupe claims make the second handling harmless). A run never takes
//! up the copies it re-enqueued itself (`retry.lastRun`), so a zero delay (tests) still means one
//! attempt per run.

use super::IngestCtx;
use super::park::{ParkedBatch, ParkedEvent};
use super::report::mean;
use super::send::{Delivery, SendStats};
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::dedupe::{Claim, TakeOutcome};
use crate::store::parked::Parked;
use crate::store::parked_counts::{Counter, ParkedCounts};
use crate::store::parked_retry::{Next, RetryState};
use crate::telemetry::Metrics;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// What a redrive run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveSummary {
    pub messages: usize,
    pub acked: usize,
    pub delivered: usize,
    /// Already delivered by an earlier redrive or a retry: acknowledged only.
    pub already_delivered: usize,
    /// Replaced by a later correction (same id, other content): acknowledged, never sent.
    #[serde(default)]
    pub superseded: usize,
    pub rejected: usize,
    pub still_parked: usize,
    /// Events sent back to the queue with a delay (`store::parked_retry`).
    #[serde(default)]
    pub requeued: usize,
    /// Events put on the dead-letter queue (refused by Amazon for good, or too old).
    #[serde(default)]
    pub dead_lettered: usize,
    /// Events whose MAID was erased at or after the event's time: settled, never sent
    /// (`super::erased`).
    #[serde(default)]
    pub erased: usize,
}

/// What one message's events came to.
#[derive(Default)]
struct Outcome {
    /// Delivered now.
    delivered: usize,
    /// Left the queue unsent: already delivered (a second copy), superseded by a correction, or
    /// erased (`super::erased`).
    gone: usize,
    /// Indexes to try again later, with the first reason.
    later: Vec<usize>,
    later_reason: Option<String>,
    /// Indexes refused for good, with Amazon's errors.
    refused: Vec<(usize, String)>,
}

impl IngestCtx {
    /// The scheduled `{"task":"redrive"}`: delivers parked conversions until the queue is empty
    /// or the deadline is near.
    pub async fn redrive(&self, inv: &Invocation) -> RedriveSummary {
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let mut summary = RedriveSummary::default();
        let mut accounts: HashMap<String, Option<IntegratedAccount>> = HashMap::new();
        let mut stats = SendStats::default();
        'run: while inv.remaining() > self.settings.deadline_margin * 3 {
            let msgs = match self.parked.receive::<ParkedBatch>(10).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "could not read the parked queue");
                    break;
                }
            };
            let mut fresh = 0;
            for msg in msgs {
                if msg.item.retry.last_run.as_deref() == Some(run_id.as_str()) {
                    // Our own re-enqueued copy: for the next run.
                    if let Err(e) = self
                        .parked
                        .release(&msg.receipt_handle, Duration::ZERO)
                        .await
                    {
                        tracing::warn!(error = %e, "could not release a re-enqueued message");
                    }
                    continue;
                }
                fresh += 1;
                summary.messages += 1;
                self.redrive_message(&msg, &run_id, &mut accounts, inv, &mut stats, &mut summary)
                    .await;
                if inv.remaining() <= self.settings.deadline_margin * 3 {
                    break 'run;
                }
            }
            if fresh == 0 {
                break;
            }
        }
        if stats.reauthorization_required {
            for a in accounts.values().flatten() {
                self.mark_reauthorization(a).await;
            }
        }
        let mut m = Metrics::new(self.settings.metrics_fn);
        m.count("RedriveMessages", summary.messages as u64)
            .count("RedriveDelivered", summary.delivered as u64)
            .count("RedriveAlreadyDelivered", summary.already_delivered as u64)
            .count("RedriveSuperseded", summary.superseded as u64)
            .count("RedriveRejected", summary.rejected as u64)
            .count("RedriveStillParked", summary.still_parked as u64)
            .count("RedriveRequeued", summary.requeued as u64)
            .count("RedriveDeadLettered", summary.dead_lettered as u64)
            .count("RedriveErased", summary.erased as u64);
        if !stats.latencies_ms.is_empty() {
            m.millis("AmazonLatency", mean(&stats.latencies_ms));
        }
        m.emit();
        tracing::info!(?summary, "redrive finished");
        summary
    }

    async fn account_for(
        &self,
        accounts: &mut HashMap<String, Option<IntegratedAccount>>,
        account_id: &str,
    ) -> Option<IntegratedAccount> {
        if !accounts.contains_key(account_id) {
            let a = self.accounts.get_account(account_id).await.ok().flatten();
            accounts.insert(account_id.to_string(), a);
        }
        accounts.get(account_id).cloned().flatten()
    }

    async fn redrive_message(
        &self,
        msg: &Parked<ParkedBatch>,
        run_id: &str,
        accounts: &mut HashMap<String, Option<IntegratedAccount>>,
        inv: &Invocation,
        stats: &mut SendStats,
        summary: &mut RedriveSummary,
    ) {
        let batch = &msg.item;
        let now = now_ms();
        if let Some(wait) = batch.retry.wait(now) {
            // Received before its time (SQS delays at most 15 minutes): the rest of the wait.
            let state = RetryState {
                last_run: Some(run_id.to_string()),
                ..batch.retry.clone()
            };
            let copy = copy_of(batch, (0..batch.events.len()).collect(), state);
            if self.parked.park_delayed(&copy, wait).await.is_ok() {
                self.ack(msg).await;
            }
            summary.still_parked += batch.events.len();
            return;
        }
        let out = match self.account_for(accounts, &batch.account_id).await {
            Some(a) if a.status == AccountStatus::Active => {
                self.deliver_parked(batch, &a, inv, stats, summary).await
            }
            other => {
                let state = other.map(|a| a.status.as_str()).unwrap_or("not linked");
                tracing::warn!(account_id = %batch.account_id, message_id = %msg.message_id, state, "parked conversions wait for an active account");
                Outcome {
                    later: (0..batch.events.len()).collect(),
                    later_reason: Some(format!("the account is {state}; relink it")),
                    ..Outcome::default()
                }
            }
        };
        let counts = ParkedCounts::new(&self.accounts);
        let mut written = true;
        let mut dead = 0usize;
        if !out.refused.is_empty() {
            let idx: Vec<usize> = out.refused.iter().map(|(i, _)| *i).collect();
            let reason = out.refused[0].1.clone();
            let copy = copy_of(batch, idx, batch.retry.dead_lettered(now, &reason));
            written &= self.to_dead_letter(&copy, summary).await;
            dead += copy.events.len();
        }
        let mut later_n = 0usize;
        if !out.later.is_empty() {
            let reason = out.later_reason.unwrap_or_default();
            let (ok, requeued, dead_lettered) = self
                .retry_later(batch, out.later, &reason, now, run_id, summary)
                .await;
            written &= ok;
            later_n = requeued;
            dead += dead_lettered;
        }
        if written {
            self.ack(msg).await;
            if later_n == 0 {
                summary.acked += 1;
            }
            counts
                .add_logged(
                    &batch.account_id,
                    &[
                        (
                            Counter::Conversions,
                            -((out.delivered + out.gone + dead) as i64),
                        ),
                        (Counter::ConversionsDeadLettered, dead as i64),
                    ],
                )
                .await;
        }
    }

    /// Events to try again later: back on the queue with a growing delay, or on the dead-letter
    /// queue once the retry policy gives up. Returns (written, requeued, dead-lettered).
    async fn retry_later(
        &self,
        batch: &ParkedBatch,
        later: Vec<usize>,
        reason: &str,
        now: u64,
        run_id: &str,
        summary: &mut RedriveSummary,
    ) -> (bool, usize, usize) {
        match self.settings.retry.after_failure(&batch.retry, now, run_id) {
            Next::Later { delay, state } => {
                let copy = copy_of(batch, later, state);
                let later_n = copy.events.len();
                let mut written = true;
                match self.parked.park_delayed(&copy, delay).await {
                    Ok(()) => summary.requeued += later_n,
                    Err(e) => {
                        tracing::error!(error = %e, "could not re-enqueue parked conversions");
                        written = false;
                    }
                }
                summary.still_parked += later_n;
                (written, later_n, 0)
            }
            Next::DeadLetter(why) => {
                let why = format!("{why}; last error: {reason}");
                let copy = copy_of(batch, later, batch.retry.dead_lettered(now, &why));
                let written = self.to_dead_letter(&copy, summary).await;
                (written, 0, copy.events.len())
            }
        }
    }

    async fn ack(&self, msg: &Parked<ParkedBatch>) {
        if let Err(e) = self.parked.ack(&msg.receipt_handle).await {
            tracing::error!(error = %e, "could not acknowledge a redriven message");
        }
    }

    async fn to_dead_letter(&self, copy: &ParkedBatch, summary: &mut RedriveSummary) -> bool {
        match self.parked.dead_letter_item(copy).await {
            Ok(()) => {
                summary.dead_lettered += copy.events.len();
                tracing::warn!(account_id = %copy.account_id, events = copy.events.len(), reason = copy.retry.dead_letter_reason.as_deref().unwrap_or(""), "parked conversions moved to the dead-letter queue");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not dead-letter parked conversions");
                false
            }
        }
    }

    /// Takes the claims of one message's events for sending. Erased events (`super::erased`) are
    /// settled here, never returned; the rest that cannot be taken now go to `out`.
    async fn take_parked(
        &self,
        batch: &ParkedBatch,
        inv: &Invocation,
        summary: &mut RedriveSummary,
        out: &mut Outcome,
    ) -> Vec<(usize, Claim)> {
        let check = self.erasure_check(batch).await;
        if !check.unchecked.is_empty() {
            out.later_reason = Some("the erasure check could not be made".into());
        }
        let mut futs = Vec::with_capacity(batch.events.len());
        for (i, pe) in batch.events.iter().enumerate() {
            if check.unchecked.contains(&i) {
                out.later.push(i);
            } else {
                futs.push(self.take_one(i, pe, inv));
            }
        }
        let takes: Vec<(usize, Result<TakeOutcome, StoreError>)> = futures::stream::iter(futs)
            .buffer_unordered(self.settings.claim_concurrency)
            .collect()
            .await;
        let mut taken: Vec<(usize, Claim)> = Vec::new();
        for (i, t) in takes {
            match t {
                Ok(TakeOutcome::Taken(c)) => taken.push((i, c)),
                Ok(TakeOutcome::Completed) => {
                    summary.already_delivered += 1;
                    out.gone += 1;
                }
                Ok(TakeOutcome::Superseded) => {
                    summary.superseded += 1;
                    out.gone += 1;
                    tracing::info!(account_id = %batch.account_id, park_id = %batch.events[i].park_id, "a correction replaced this parked conversion; not sent");
                }
                Ok(TakeOutcome::Busy { .. }) | Err(_) => {
                    out.later.push(i);
                    out.later_reason
                        .get_or_insert_with(|| "another request was sending it".into());
                }
            }
        }
        taken.sort_by_key(|(i, _)| *i);
        let (erased, taken): (Vec<_>, Vec<_>) = taken
            .into_iter()
            .partition(|(i, _)| check.erased.contains(i));
        for (i, claim) in &erased {
            // Completed, so a webhook retry of the same event is a duplicate, not a send. If that
            // fails the copy stays parked (the next run settles it), never acknowledged unsettled.
            let pe = &batch.events[*i];
            match self.dedupe.complete(claim).await {
                Ok(true) => {
                    summary.erased += 1;
                    out.gone += 1;
                    tracing::info!(account_id = %batch.account_id, park_id = %pe.park_id, "the event's MAID was erased at or after its time; not sent");
                }
                other => {
                    self.finish(other, "complete an erased event");
                    self.finish(
                        self.dedupe.mark_parked(claim, &pe.park_id).await,
                        "mark parked",
                    );
                    out.later.push(*i);
                    out.later_reason
                        .get_or_insert_with(|| "an erased event could not be settled".into());
                }
            }
        }
        taken
    }

    /// Takes, sends and settles the events of one message for an active account.
    async fn deliver_parked(
        &self,
        batch: &ParkedBatch,
        account: &IntegratedAccount,
        inv: &Invocation,
        stats: &mut SendStats,
        summary: &mut RedriveSummary,
    ) -> Outcome {
        let mut out = Outcome::default();
        let taken = self.take_parked(batch, inv, summary, &mut out).await;
        let bodies: Vec<&[u8]> = taken
            .iter()
            .map(|(i, _)| batch.events[*i].event.get().as_bytes())
            .collect();
        let deliveries = if bodies.is_empty() {
            Vec::new()
        } else {
            self.deliver(account, &bodies, inv, stats).await
        };
        for ((i, claim), d) in taken.iter().zip(deliveries) {
            let pe: &ParkedEvent = &batch.events[*i];
            match d {
                Delivery::Accepted => {
                    summary.delivered += 1;
                    out.delivered += 1;
                    self.finish(self.dedupe.complete(claim).await, "complete");
                }
                Delivery::Rejected(errors) => {
                    summary.rejected += 1;
                    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                    tracing::warn!(account_id = %batch.account_id, park_id = %pe.park_id, ?fields, "Amazon rejected a redriven conversion");
                    self.finish(self.dedupe.release(claim).await, "release");
                    let msg = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    out.refused.push((*i, msg));
                }
                Delivery::Park(reason) => {
                    tracing::warn!(account_id = %batch.account_id, park_id = %pe.park_id, reason = %reason, "redrive failed; retried later");
                    self.finish(
                        self.dedupe.mark_parked(claim, &pe.park_id).await,
                        "mark parked",
                    );
                    out.later.push(*i);
                    out.later_reason.get_or_insert(reason);
                }
            }
        }
        out
    }
}

/// A copy of `batch` with only the events at `idx`, and `retry` as its state.
fn copy_of(batch: &ParkedBatch, idx: Vec<usize>, retry: RetryState) -> ParkedBatch {
    ParkedBatch {
        v: batch.v,
        account_id: batch.account_id.clone(),
        advertiser_id: batch.advertiser_id,
        events: idx
            .into_iter()
            .filter_map(|i| batch.events.get(i))
            .map(|e| ParkedEvent {
                key: e.key.clone(),
                park_id: e.park_id.clone(),
                fingerprint: e.fingerprint.clone(),
                reason: e.reason.clone(),
                parked_at_ms: e.parked_at_ms,
                event: e.event.clone(),
            })
            .collect(),
        retry,
    }
}
