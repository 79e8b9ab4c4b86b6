//! Delivery to Amazon: batches of ≤ 500 events (and ≤ 1 MB) with bounded concurrency, the 207
//! answer mapped back to each input index. `AmazonClient` already refreshed on 401 and retried
//! 429/5xx/timeouts; here 413 → split in halves; a whole-batch 400 → bisect to find the bad
//! events; an index missing from the answer → resent once, then parked; a retryable error →
//! parked; `ReauthorizationRequired` → the account is marked and the events parked.

use super::IngestCtx;
use super::pipeline::Work;
use super::report::err;
use crate::amazon::{AmazonError, EventError, EventsOutcome};
use crate::domain::conversion::{Arena, FieldError, Prepared, Reason, batch_body};
use crate::runtime::Invocation;
use crate::store::accounts::IntegratedAccount;
use futures::StreamExt;
use std::time::Instant;

/// What became of one event sent to Amazon.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Delivery {
    Accepted,
    Rejected(Vec<FieldError>),
    Park(String),
}

/// Per-invocation delivery bookkeeping.
#[derive(Debug, Default)]
pub(super) struct SendStats {
    pub(super) latencies_ms: Vec<f64>,
    pub(super) reauthorization_required: bool,
}

/// Amazon's per-event errors as ours: `events[3].matchKeys[0]` → `matchKeys[0]`.
pub(super) fn amazon_errors(errors: &[EventError]) -> Vec<FieldError> {
    let mut out: Vec<FieldError> = errors
        .iter()
        .map(|e| {
            let field = e.field_location.as_deref().unwrap_or("");
            let field = match field
                .strip_prefix("events[")
                .and_then(|r| r.split_once(']'))
            {
                Some((_, rest)) => rest.trim_start_matches('.'),
                None => field,
            };
            err(
                field,
                Reason::Amazon,
                format!("Amazon: {} {}", e.code, e.message)
                    .trim()
                    .to_string(),
            )
        })
        .collect();
    if out.is_empty() {
        out.push(err("", Reason::Amazon, "Amazon rejected the event"));
    }
    out
}

impl IngestCtx {
    /// Sends prepared events (by input index) and returns what became of each.
    pub(super) async fn send(
        &self,
        account: &IntegratedAccount,
        mut work: Vec<Work>,
        arena: &Arena,
        prepared: &[Option<Prepared>],
        inv: &Invocation,
        stats: &mut SendStats,
    ) -> Vec<(Work, Delivery)> {
        if work.is_empty() {
            return Vec::new();
        }
        // Input order: Amazon's indexes then follow the request, and logs read naturally.
        work.sort_by_key(|w| w.index);
        let bodies: Vec<&[u8]> = work
            .iter()
            .map(|w| {
                prepared[w.index]
                    .as_ref()
                    .map(|p| arena.event(p))
                    .unwrap_or(b"{}")
            })
            .collect();
        let deliveries = self.deliver(account, &bodies, inv, stats).await;
        work.into_iter().zip(deliveries).collect()
    }

    /// Delivers events (outbound JSON each) to Amazon: batches, bounded concurrency, 413 splits,
    /// bisection of whole-batch 400s, one resend of missing indexes. Returns one delivery per event.
    pub(super) async fn deliver(
        &self,
        account: &IntegratedAccount,
        events: &[&[u8]],
        inv: &Invocation,
        stats: &mut SendStats,
    ) -> Vec<Delivery> {
        let mut out = vec![Delivery::Park("not sent".into()); events.len()];
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut cur = Vec::new();
        let mut cur_bytes = 0;
        for (i, e) in events.iter().enumerate() {
            if !cur.is_empty()
                && (cur.len() == self.settings.batch_size
                    || cur_bytes + e.len() + 1 > self.settings.batch_max_bytes)
            {
                batches.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
            cur_bytes += e.len() + 1;
            cur.push(i);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        let results: Vec<(Vec<(usize, Delivery)>, SendStats)> = futures::stream::iter(
            batches
                .into_iter()
                .map(|b| self.send_batch(account, events, b, inv)),
        )
        .buffer_unordered(self.settings.send_concurrency.max(1))
        .collect()
        .await;
        for (deliveries, s) in results {
            for (i, d) in deliveries {
                out[i] = d;
            }
            stats.latencies_ms.extend(s.latencies_ms);
            stats.reauthorization_required |= s.reauthorization_required;
        }
        out
    }

    /// One batch, with the splits and resends it may need.
    pub(super) async fn send_batch(
        &self,
        account: &IntegratedAccount,
        events: &[&[u8]],
        batch: Vec<usize>,
        inv: &Invocation,
    ) -> (Vec<(usize, Delivery)>, SendStats) {
        let mut stats = SendStats::default();
        let mut out = Vec::with_capacity(batch.len());
        // (events, missing indexes already resent once, split because of a whole-batch 400)
        let mut queue: Vec<(Vec<usize>, bool)> = vec![(batch, false)];
        let login = account.login();
        while let Some((b, resent)) = queue.pop() {
            let left = inv
                .remaining()
                .saturating_sub(self.settings.deadline_margin);
            if left.is_zero() {
                park_all(
                    &mut out,
                    b,
                    "the invocation ran out of time before sending".into(),
                );
                continue;
            }
            let body = batch_body(
                b.iter().map(|&i| events[i]),
                b.iter().map(|&i| events[i].len() + 1).sum(),
            );
            let t0 = Instant::now();
            let res = tokio::time::timeout(
                left,
                self.amazon
                    .create_events(&login, account.advertiser_id, body, b.len()),
            )
            .await;
            stats.latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            match res {
                Err(_) => park_all(
                    &mut out,
                    b,
                    "Amazon did not answer before the deadline".into(),
                ),
                Ok(Ok(outcome)) => apply_outcome(outcome, b, resent, &mut out, &mut queue),
                Ok(Err(e)) => {
                    apply_failure(account, e, b, resent, &mut out, &mut queue, &mut stats)
                }
            }
        }
        (out, stats)
    }
}

/// Every event of `b` to be parked with `reason`.
fn park_all(out: &mut Vec<(usize, Delivery)>, b: Vec<usize>, reason: String) {
    out.extend(b.into_iter().map(|i| (i, Delivery::Park(reason.clone()))));
}

/// `b` in two halves, back on the queue (the first half is sent first).
fn split(queue: &mut Vec<(Vec<usize>, bool)>, mut b: Vec<usize>, resent: bool) {
    let second = b.split_off(b.len() / 2);
    queue.push((second, resent));
    queue.push((b, resent));
}

/// Amazon's 207 for the batch `b`: accepted and rejected events settle; missing ones are resent
/// once, then parked.
fn apply_outcome(
    outcome: EventsOutcome,
    b: Vec<usize>,
    resent: bool,
    out: &mut Vec<(usize, Delivery)>,
    queue: &mut Vec<(Vec<usize>, bool)>,
) {
    let EventsOutcome {
        accepted,
        rejected,
        missing,
    } = outcome;
    for pos in accepted {
        if let Some(&i) = b.get(pos) {
            out.push((i, Delivery::Accepted));
        }
    }
    for (pos, errors) in rejected {
        if let Some(&i) = b.get(pos) {
            out.push((i, Delivery::Rejected(amazon_errors(&errors))));
        }
    }
    let missing: Vec<usize> = missing
        .into_iter()
        .filter_map(|pos| b.get(pos).copied())
        .collect();
    if !missing.is_empty() {
        if resent {
            park_all(
                out,
                missing,
                "Amazon's answer did not mention this event twice".into(),
            );
        } else {
            queue.push((missing, true));
        }
    }
}

/// Amazon failed the whole batch `b`: 413 splits (one event: rejected), a 400/422 bisects to find
/// the bad event, another refusal rejects, a revoked login or anything else parks.
fn apply_failure(
    account: &IntegratedAccount,
    e: AmazonError,
    b: Vec<usize>,
    resent: bool,
    out: &mut Vec<(usize, Delivery)>,
    queue: &mut Vec<(Vec<usize>, bool)>,
    stats: &mut SendStats,
) {
    match e {
        AmazonError::PayloadTooLarge { .. } if b.len() > 1 => split(queue, b, resent),
        AmazonError::PayloadTooLarge { message, .. } => {
            out.push((
                b[0],
                Delivery::Rejected(vec![err(
                    "",
                    Reason::Amazon,
                    format!("Amazon: the event is too large ({message})"),
                )]),
            ));
        }
        // One bad event fails the whole request: bisect to find it.
        AmazonError::Rejected {
            status: 400 | 422, ..
        } if b.len() > 1 => split(queue, b, resent),
        e @ AmazonError::Rejected { .. } => {
            let msg = e.user_message();
            out.extend(b.into_iter().map(|i| {
                (
                    i,
                    Delivery::Rejected(vec![err("", Reason::Amazon, msg.clone())]),
                )
            }));
        }
        AmazonError::ReauthorizationRequired => {
            stats.reauthorization_required = true;
            park_all(out, b, AmazonError::ReauthorizationRequired.user_message());
        }
        e => {
            tracing::warn!(account_id = %account.account_id, error = %e, events = b.len(), "Amazon batch failed; parking");
            park_all(out, b, e.user_message());
        }
    }
}
