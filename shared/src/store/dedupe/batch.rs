//! Claims and completions of many keys in few calls, with the guarantees of the one-key calls.
//!
//! - **claim_many**: up to 100 claims per `TransactWriteItems` (each a conditional put, exactly
//!   the one [`DedupeStore::claim`] makes, with `ReturnValuesOnConditionCheckFailure = ALL_OLD`
//!   and a `ClientRequestToken`, so an SDK retry of a transaction that went through is answered
//!   by DynamoDB as done instead of as lost). One failed condition cancels the whole transaction;
//!   its `CancellationReasons` say, per put, which condition failed and what the item holds: those
//!   keys are answered from it (`Completed`, `Parked`, `Held`), and the rest go again in a new
//!   transaction. Puts cancelled by a concurrent transaction (`TransactionConflict`) go again
//!   after a short jittered pause. What is left after a few rounds, or after any other error, is
//!   claimed one key at a time ([`DedupeStore::claim`]).
//! - **complete_many**: see `complete.rs`.

use super::claims::ClaimWrite;
use super::codec::{outcome_of, record};
use super::{ClaimOutcome, DedupeKey, DedupeStore, StoreError};
use crate::clock::now_ms;
use crate::store::dynamo::{Transacted, build_error, transact};
use crate::store::item::Item;
use aws_sdk_dynamodb::types::{
    CancellationReason, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use futures::StreamExt;
use std::time::Duration;

/// Puts per `TransactWriteItems` (DynamoDB's limit): claims per call of [`DedupeStore::claim_many`].
pub const CLAIMS_PER_CALL: usize = 100;
/// Transactions tried for one group before the rest go one at a time.
pub(super) const ROUNDS: usize = 4;

/// One key to claim, with its content's fingerprint.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest<'a> {
    pub key: &'a DedupeKey,
    pub fingerprint: &'a str,
}

/// A claim answer per request, in order.
type Answers = Vec<Option<Result<ClaimOutcome, StoreError>>>;

impl DedupeStore {
    /// [`DedupeStore::claim`] for many keys (distinct), `concurrency` transactions at a time;
    /// one answer per request, in order.
    pub async fn claim_many(
        &self,
        reqs: &[ClaimRequest<'_>],
        holder_deadline_ms: u64,
        request_id: &str,
        concurrency: usize,
    ) -> Vec<Result<ClaimOutcome, StoreError>> {
        let mut groups = Vec::new();
        for group in reqs.chunks(CLAIMS_PER_CALL) {
            groups.push(self.claim_group(group, holder_deadline_ms, request_id));
        }
        let answered: Vec<Answers> = futures::stream::iter(groups)
            .buffered(concurrency.max(1))
            .collect()
            .await;
        answered
            .into_iter()
            .flatten()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::Conflict("claim not answered".into()))))
            .collect()
    }

    /// One transaction's worth of claims: transactions, then one at a time for what is left.
    async fn claim_group(
        &self,
        group: &[ClaimRequest<'_>],
        holder_deadline_ms: u64,
        request_id: &str,
    ) -> Answers {
        let mut answers: Answers = (0..group.len()).map(|_| None).collect();
        let left = self
            .transact_claims(group, holder_deadline_ms, request_id, &mut answers)
            .await;
        self.claim_each(group, &left, holder_deadline_ms, request_id, &mut answers)
            .await;
        answers
    }

    /// Transactions over `group` until every put is answered or the rounds run out; returns the
    /// positions still unanswered.
    async fn transact_claims(
        &self,
        group: &[ClaimRequest<'_>],
        holder_deadline_ms: u64,
        request_id: &str,
        answers: &mut Answers,
    ) -> Vec<usize> {
        let mut pending: Vec<usize> = (0..group.len()).collect();
        for round in 0..ROUNDS {
            if pending.is_empty() {
                break;
            }
            let writes: Vec<_> = pending
                .iter()
                .map(|&i| {
                    let r = group[i];
                    let at = now_ms();
                    self.claim_write(
                        r.key,
                        r.fingerprint,
                        holder_deadline_ms,
                        request_id,
                        true,
                        at,
                    )
                })
                .collect();
            let items: Result<Vec<_>, _> = writes
                .iter()
                .map(|w| transact_put(&self.table, w))
                .collect();
            let Ok(items) = items else { return pending };
            let reasons = match transact(&self.client, items, "DynamoDB claim transaction").await {
                Transacted::Done => {
                    for (i, w) in pending.drain(..).zip(writes) {
                        answers[i] = Some(Ok(ClaimOutcome::Claimed(w.claim)));
                    }
                    break;
                }
                Transacted::Cancelled(reasons) if reasons.len() == pending.len() => reasons,
                Transacted::Failed(e) => {
                    tracing::warn!(error = %e, "claiming one by one");
                    return pending;
                }
                Transacted::Cancelled(_) => return pending,
            };
            let conflicted;
            (pending, conflicted) = after_cancel(&pending, reasons, |i, item| match item {
                Some(item) => {
                    answers[i] = Some(record(&item).map(outcome_of));
                    true
                }
                None => false,
            });
            if conflicted {
                tokio::time::sleep(jitter(round)).await;
            }
        }
        pending
    }

    /// The one-key claim for the positions `left` of `group`.
    async fn claim_each(
        &self,
        group: &[ClaimRequest<'_>],
        left: &[usize],
        holder_deadline_ms: u64,
        request_id: &str,
        answers: &mut Answers,
    ) {
        let mut futs = Vec::with_capacity(left.len());
        for &i in left {
            let r = group[i];
            futs.push(async move {
                let a = self
                    .claim(r.key, r.fingerprint, holder_deadline_ms, request_id)
                    .await;
                (i, a)
            });
        }
        let claimed: Vec<_> = futures::stream::iter(futs)
            .buffer_unordered(8)
            .collect()
            .await;
        for (i, a) in claimed {
            answers[i] = Some(a);
        }
    }
}

/// Sorts a cancelled transaction's reasons: a failed condition goes to `failed(position, old
/// item)`, which says whether it answered it; every other item is to try again. Returns those
/// positions and whether another transaction conflicted.
pub(super) fn after_cancel(
    pending: &[usize],
    reasons: Vec<CancellationReason>,
    mut failed: impl FnMut(usize, Option<Item>) -> bool,
) -> (Vec<usize>, bool) {
    let mut conflicted = false;
    let mut next = Vec::new();
    for (&i, r) in pending.iter().zip(reasons) {
        let code = r.code.clone();
        match code.as_deref() {
            Some("ConditionalCheckFailed") if failed(i, r.item) => {}
            code => {
                conflicted |= code == Some("TransactionConflict");
                next.push(i);
            }
        }
    }
    (next, conflicted)
}

/// One claim's put inside a transaction.
fn transact_put(table: &str, w: &ClaimWrite) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(w.item.clone()))
        .condition_expression(w.condition)
        .expression_attribute_names("#s", "status")
        .set_expression_attribute_values(Some(w.values.clone()))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(|e| build_error("DynamoDB claim transaction", e))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A pause of 20–60 ms, doubled per round.
pub(super) fn jitter(round: usize) -> Duration {
    let ms = 20 + rand::random::<u64>() % 40;
    Duration::from_millis(ms << round.min(4))
}
