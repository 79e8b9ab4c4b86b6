//! Completions of many claims in few calls ([`DedupeStore::complete_many`]).
//!
//! A completion turns the item the claim wrote `COMPLETED`. While the claim's lease
//! (`inProgressUntil`, its holder's deadline, or the window's end `expiresAt` if sooner) is more
//! than [`LEASE_GUARD`] away, nobody else may change the item: every other claim and take waits
//! for `inProgressUntil < now` or `expiresAt < now`, and release and park need our token. So the
//! completed item is written whole and unconditionally, 25 to a `BatchWriteItem` (one write unit
//! each), each call bounded to half the guard. Nearer the lease's end (or for a claim whose item
//! we do not know, a redrive's take) the completion keeps its condition on the token, 100 to a
//! `TransactWriteItems` (two write units each; a lost claim cancels the call and its reason
//! answers `false` for that claim, the rest go again). Unprocessed items and failed calls
//! complete one at a time ([`DedupeStore::complete`]).

use super::batch::{ROUNDS, after_cancel, jitter};
use super::claims::{COMPLETE_IF, COMPLETE_SET};
use super::{Claim, ClaimStatus, DedupeStore, Held, StoreError};
use crate::clock::now_ms;
use crate::store::dynamo::{Transacted, build_error, n, s, transact};
use crate::store::item::Item;
use aws_sdk_dynamodb::types::{PutRequest, TransactWriteItem, Update, WriteRequest};
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::time::Duration;

/// Puts per `BatchWriteItem` (DynamoDB's limit).
const BATCH_WRITE_MAX: usize = 25;
/// Updates per `TransactWriteItems` (DynamoDB's limit).
const TRANSACT_MAX: usize = 100;
/// A completion is written unconditionally only while its lease has more than this left.
pub const LEASE_GUARD: Duration = Duration::from_secs(10);

/// Claims answered (position, completed?) and positions left for the one-at-a-time call.
type Settled = (Vec<(usize, Result<bool, StoreError>)>, Vec<usize>);

impl DedupeStore {
    /// [`DedupeStore::complete`] for many claims, `concurrency` calls at a time; one answer per
    /// claim, in order (`false`: the claim was lost).
    pub async fn complete_many(
        &self,
        claims: &[&Claim],
        concurrency: usize,
    ) -> Vec<Result<bool, StoreError>> {
        let (whole, guarded): (Vec<usize>, Vec<usize>) =
            (0..claims.len()).partition(|&i| lease_is_long(claims[i]));
        let mut calls = Vec::new();
        for chunk in whole.chunks(BATCH_WRITE_MAX) {
            calls.push(self.put_completed(claims, chunk).boxed());
        }
        for chunk in guarded.chunks(TRANSACT_MAX) {
            calls.push(self.transact_completions(claims, chunk).boxed());
        }
        let settled: Vec<Settled> = futures::stream::iter(calls)
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut out: Vec<Option<Result<bool, StoreError>>> =
            (0..claims.len()).map(|_| None).collect();
        let mut left = Vec::new();
        for (answered, rest) in settled {
            for (i, r) in answered {
                out[i] = Some(r);
            }
            left.extend(rest);
        }
        let mut singles = Vec::with_capacity(left.len());
        for i in left {
            let claim = claims[i];
            singles.push(async move { (i, self.complete(claim).await) });
        }
        let singles: Vec<_> = futures::stream::iter(singles)
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (i, r) in singles {
            out[i] = Some(r);
        }
        out.into_iter().map(|r| r.unwrap_or(Ok(false))).collect()
    }

    /// Conditional completions of `chunk` (positions in `claims`) in transactions.
    async fn transact_completions(&self, claims: &[&Claim], chunk: &[usize]) -> Settled {
        let mut pending: Vec<usize> = chunk.to_vec();
        let mut answered = Vec::new();
        for round in 0..ROUNDS {
            if pending.is_empty() {
                break;
            }
            let items: Result<Vec<_>, _> = pending
                .iter()
                .map(|&i| self.completion_update(claims[i]))
                .collect();
            let Ok(items) = items else { break };
            let reasons =
                match transact(&self.client, items, "DynamoDB completion transaction").await {
                    Transacted::Done => {
                        answered.extend(pending.drain(..).map(|i| (i, Ok(true))));
                        break;
                    }
                    Transacted::Cancelled(reasons) if reasons.len() == pending.len() => reasons,
                    _ => break,
                };
            let conflicted;
            (pending, conflicted) = after_cancel(&pending, reasons, |i, _| {
                answered.push((i, Ok(false)));
                true
            });
            if conflicted {
                tokio::time::sleep(jitter(round)).await;
            }
        }
        (answered, pending)
    }

    /// [`DedupeStore::complete`]'s conditional update, inside a transaction.
    fn completion_update(&self, claim: &Claim) -> Result<TransactWriteItem, StoreError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .update_expression(COMPLETE_SET)
            .condition_expression(COMPLETE_IF)
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":done", s(ClaimStatus::Completed.as_str()))
            .expression_attribute_values(":inprog", s(ClaimStatus::InProgress.as_str()))
            .expression_attribute_values(":exp", n(self.expires_at()))
            .expression_attribute_values(":nowMs", n(now_ms()))
            .expression_attribute_values(":token", s(&claim.token))
            .build()
            .map_err(|e| build_error("DynamoDB completion transaction", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Writes the completed items of `chunk` (positions in `claims`) with `BatchWriteItem`,
    /// retrying unprocessed ones while their leases allow.
    async fn put_completed(&self, claims: &[&Claim], chunk: &[usize]) -> Settled {
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
        (
            written.into_iter().map(|i| (i, Ok(true))).collect(),
            pending,
        )
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
