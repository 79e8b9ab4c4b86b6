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
//! - **complete_many**: a completion is a write of the item the claim wrote, turned
//!   `COMPLETED`. While the claim's lease (`inProgressUntil`, its holder's Lambda deadline) is
//!   more than [`LEASE_GUARD`] away, nobody may change the item (every other claim and take
//!   waits for `inProgressUntil < now`; release and park need our token), so the completed item
//!   is written whole, unconditionally, 25 to a `BatchWriteItem`, each call bounded to half the
//!   guard. A claim nearer its end, an unknown claim (a redrive's take), unprocessed items and
//!   failed calls complete one at a time, conditionally on the token ([`DedupeStore::complete`]).

use super::claims::ClaimWrite;
use super::codec::{outcome_of, record};
use super::{Claim, ClaimOutcome, ClaimStatus, DedupeKey, DedupeStore, Held, StoreError};
use crate::clock::now_ms;
use crate::store::dynamo::{build_error, n, s};
use crate::store::item::Item;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    Put, PutRequest, ReturnValuesOnConditionCheckFailure, TransactWriteItem, WriteRequest,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// Puts per `TransactWriteItems` (DynamoDB's limit): claims per call of [`DedupeStore::claim_many`].
pub const CLAIMS_PER_CALL: usize = 100;
/// Puts per `BatchWriteItem` (DynamoDB's limit).
const BATCH_WRITE_MAX: usize = 25;
/// Transactions tried for one group of claims before the rest go one at a time.
const ROUNDS: usize = 4;
/// A completion is written unconditionally only while its lease has more than this left.
pub const LEASE_GUARD: Duration = Duration::from_secs(10);

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
            let items = match writes
                .iter()
                .map(|w| transact_put(&self.table, w))
                .collect()
            {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(error = %e, "dedupe claim transaction not built");
                    return pending;
                }
            };
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(uuid::Uuid::new_v4().simple().to_string())
                .send()
                .await;
            let reasons = match res {
                Ok(_) => {
                    for (i, w) in pending.drain(..).zip(writes) {
                        answers[i] = Some(Ok(ClaimOutcome::Claimed(w.claim)));
                    }
                    break;
                }
                Err(e) => match e.into_service_error() {
                    TransactWriteItemsError::TransactionCanceledException(c) => {
                        c.cancellation_reasons.unwrap_or_default()
                    }
                    other => {
                        tracing::warn!(error = %other, "dedupe claim transaction failed; claiming one by one");
                        return pending;
                    }
                },
            };
            if reasons.len() != pending.len() {
                return pending;
            }
            let mut conflicted = false;
            let mut next = Vec::new();
            for (i, r) in pending.iter().copied().zip(reasons) {
                let code = r.code.clone();
                match (code.as_deref(), r.item) {
                    (Some("ConditionalCheckFailed"), Some(item)) => {
                        answers[i] = Some(record(&item).map(outcome_of));
                    }
                    (code, _) => {
                        conflicted |= code == Some("TransactionConflict");
                        next.push(i);
                    }
                }
            }
            pending = next;
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

    /// [`DedupeStore::complete`] for many claims, `concurrency` calls at a time; one answer per
    /// claim, in order.
    pub async fn complete_many(
        &self,
        claims: &[&Claim],
        concurrency: usize,
    ) -> Vec<Result<bool, StoreError>> {
        let (whole, one_by_one): (Vec<usize>, Vec<usize>) =
            (0..claims.len()).partition(|&i| lease_is_long(claims[i]));
        let mut batches = Vec::new();
        for chunk in whole.chunks(BATCH_WRITE_MAX) {
            batches.push(self.put_completed(claims, chunk));
        }
        let mut out: Vec<Option<Result<bool, StoreError>>> =
            (0..claims.len()).map(|_| None).collect();
        let mut left = one_by_one;
        let done: Vec<_> = futures::stream::iter(batches)
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (written, rest) in done {
            for i in written {
                out[i] = Some(Ok(true));
            }
            left.extend(rest);
        }
        let mut futs = Vec::with_capacity(left.len());
        for i in left {
            let claim = claims[i];
            futs.push(async move { (i, self.complete(claim).await) });
        }
        let singles: Vec<_> = futures::stream::iter(futs)
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (i, r) in singles {
            out[i] = Some(r);
        }
        out.into_iter().map(|r| r.unwrap_or(Ok(false))).collect()
    }

    /// Writes the completed items of `chunk` (positions in `claims`) with `BatchWriteItem`,
    /// retrying unprocessed ones while their leases allow; returns (written, left).
    async fn put_completed(&self, claims: &[&Claim], chunk: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let mut pending: Vec<usize> = chunk.to_vec();
        let mut written = Vec::new();
        for round in 0..ROUNDS {
            pending.retain(|&i| lease_is_long(claims[i]));
            if pending.is_empty() {
                break;
            }
            let by_pk: HashMap<&str, usize> = pending
                .iter()
                .map(|&i| (claims[i].pk.as_str(), i))
                .collect();
            let requests: Result<Vec<WriteRequest>, StoreError> = pending
                .iter()
                .map(|&i| self.completed_put(claims[i]))
                .collect();
            let Ok(requests) = requests else { break };
            let call = self
                .client
                .batch_write_item()
                .request_items(self.table.clone(), requests)
                .send();
            let unprocessed = match tokio::time::timeout(LEASE_GUARD / 2, call).await {
                Ok(Ok(out)) => out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "dedupe batch completion failed; completing one by one");
                    break;
                }
                Err(_) => {
                    tracing::warn!("dedupe batch completion timed out; completing one by one");
                    break;
                }
            };
            let not_written: Vec<usize> = unprocessed
                .iter()
                .filter_map(|w| w.put_request.as_ref()?.item.get("pk")?.as_s().ok())
                .filter_map(|pk| by_pk.get(pk.as_str()).copied())
                .collect();
            written.extend(pending.iter().copied().filter(|i| !not_written.contains(i)));
            pending = not_written;
            if !pending.is_empty() {
                tokio::time::sleep(jitter(round)).await;
            }
        }
        (written, pending)
    }

    /// The completed item of a fresh claim, as the conditional completion would leave it.
    fn completed_put(&self, claim: &Claim) -> Result<WriteRequest, StoreError> {
        let h = claim
            .held
            .as_ref()
            .ok_or_else(|| StoreError::Conflict("claim without its item".into()))?;
        let item: Item = HashMap::from([
            ("pk".to_string(), s(&claim.pk)),
            ("status".into(), s(ClaimStatus::Completed.as_str())),
            ("token".into(), s(&claim.token)),
            ("expiresAt".into(), n(self.expires_at())),
            ("fingerprint".into(), s(&h.fingerprint)),
            ("contentAt".into(), n(h.content_at)),
            ("requestId".into(), s(&h.request_id)),
            ("updatedAt".into(), n(now_ms())),
        ]);
        let put = PutRequest::builder()
            .set_item(Some(item))
            .build()
            .map_err(|e| build_error("DynamoDB completion", e))?;
        Ok(WriteRequest::builder().put_request(put).build())
    }
}

/// True while nobody may take `claim` over for at least [`LEASE_GUARD`].
fn lease_is_long(claim: &Claim) -> bool {
    claim
        .held
        .as_ref()
        .is_some_and(|h: &Held| now_ms() + (LEASE_GUARD.as_millis() as u64) < h.until_ms)
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
fn jitter(round: usize) -> Duration {
    let ms = 20 + rand::random::<u64>() % 40;
    Duration::from_millis(ms << round.min(4))
}
